"""Benchmark: `newsletter subscribers import` of N rows (default 100,000) into a fresh SQLite database.

    python bench/import_subscribers.py [--rows 100000] [--repeat 3]

Prints the median wall time of the whole command (parse, validate, insert) and rows/s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = ["diffusion models", "graph neural networks", "reinforcement learning", "large language models",
          "speech recognition", "robot manipulation", "federated learning", "causal inference"]


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(7)
    with path.open("w") as handle:
        handle.write("email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n")
        for i in range(rows):
            topics = ";".join(rng.sample(TOPICS, 2))
            handle.write(f"reader{i}@lab{i % 97}.example.org,{topics},video,cs.LG,,"
                         f"\"I work on {TOPICS[i % len(TOPICS)]}.\",Europe/Berlin,{i % 24},daily,10\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "subscribers.csv"
        write_csv(csv_path, args.rows)
        for run in range(args.repeat):
            env = {**os.environ, "NEWSLETTER_DATABASE_URL": f"sqlite:///{folder}/bench{run}.db"}
            subprocess.run([sys.executable, "-m", "newsletter", "init"], env=env, check=True, capture_output=True)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "newsletter", "subscribers", "import", str(csv_path), "--json"],
                           env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(f"import {args.rows:,} subscribers: median {median:.2f} s over {args.repeat} runs "
          f"({args.rows / median:,.0f} rows/s); runs: {', '.join(f'{t:.2f}' for t in times)}")


if __name__ == "__main__":
    main()
