"""A minimal SMTP sink for benchmarks: accepts everything, counts messages. Run in its own process.

    python bench/smtp_sink.py PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiosmtpd.controller import Controller


class Count:
    def __init__(self) -> None:
        self.messages = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook
        self.messages += 1
        return "250 OK"


def main() -> None:
    controller = Controller(Count(), hostname="127.0.0.1", port=int(sys.argv[1]))
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
