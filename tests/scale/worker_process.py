"""``newsletter worker`` until the CLI has the command: ``python -m tests.scale.worker_process [--concurrency N] [--queues Q ...]``.

Settings come from the environment, as the command's would.
"""

from __future__ import annotations

import argparse
import sys

from newsletter.errors import NewsletterError
from newsletter.scale.worker import run_worker
from newsletter.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--queues", nargs="*", default=None)
    args = parser.parse_args()
    try:
        return run_worker(load_settings(), concurrency=args.concurrency, queues=args.queues)
    except NewsletterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
