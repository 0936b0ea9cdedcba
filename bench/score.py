"""Benchmark: scoring N subscribers against 2,000 papers, top 10 each, with the reasons for every pick.

    python bench/score.py [--subscribers 100000] [--papers 2000] [--repeat 3]
    python bench/score.py --subscribers 1000000 --repeat 1

Papers are made from the sample feed's real abstracts (sentences of two or three recombined, so
every paper differs); subscribers get 1–4 topics from a pool of 300 phrases, and most a sentence
about their work (unique per subscriber), some exclusions, categories and followed authors. Prints
the median time of ``rank_papers`` (what ``newsletter digest`` runs: interning the profiles, the
sparse products, the top-k, the reasons of every pick and the ``RankedPaper`` records), of
``select_top`` alone (the picks without reasons) for comparison, each as wall and CPU time (the machine
may be shared: CPU time is what the run costs), and peak RSS. Targets (issues 4 and
11): 100,000 × 2,000 under 3 s for the picks and 600 MB; the whole ``newsletter digest --dry-run
--json`` for 100,000 subscribers under 20 s (``bench/dry_run.py``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import statistics
import time
from dataclasses import replace

from newsletter.ingest.feeds import parse_feed
from newsletter.paths import PACKAGE_DIR
from newsletter.records import Preferences, Profile
from newsletter.score import PaperIndex, rank_papers
from newsletter.score.lexical import select_top
from newsletter.score.text import phrase_terms

WORK = ["I work on", "My lab studies", "We build", "I research", "Our team ships", "I am interested in"]


def make_papers(count: int, rng: random.Random) -> list:
    seed = list(parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers)
    sentences = [s for p in seed for s in re.split(r"(?<=\.)\s", p.abstract) if len(s) > 40]
    papers = []
    for n in range(count):
        base = seed[n % len(seed)]
        abstract = " ".join(rng.sample(sentences, rng.randint(4, 8)))
        papers.append(replace(base, key=f"2612.{n:05d}", arxiv_id=f"2612.{n:05d}", abstract=abstract,
                              title=base.title if n < len(seed) else f"{base.title} ({n // len(seed)})"))
    return papers


def make_profiles(count: int, papers: list, rng: random.Random) -> list[Profile]:
    titles = [p.title for p in papers[:211]]
    words = [w for t in titles for w in re.findall(r"[A-Za-z][a-z]{3,}", t)]
    pairs = sorted({f"{a.lower()} {b.lower()}" for t in titles for a, b in zip(t.split(), t.split()[1:], strict=False)
                    if a.isalpha() and b.isalpha()})
    pairs = [pair for pair in pairs if phrase_terms(pair)]  # "and how" is no topic the product takes
    pool = rng.sample(pairs, min(300, len(pairs)))
    authors = sorted({a for p in papers[:211] for a in p.authors})
    profiles = []
    for n in range(count):
        profiles.append(Profile(n, f"r{n}@example.org", Preferences.from_lists(
            topics=rng.sample(pool, rng.randint(1, 4)),
            exclude=rng.sample(pool, 1) if rng.random() < 0.2 else [],
            categories=["cs.LG", "cs.CL"] if rng.random() < 0.3 else [],
            authors=[rng.choice(authors)] if rng.random() < 0.1 else [],
            describe=f"{rng.choice(WORK)} {' '.join(rng.sample(words, 4))}." if rng.random() < 0.7 else "",
        ), max_papers=10))
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--papers", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(11)
    papers = make_papers(args.papers, rng)
    index = PaperIndex.build(papers)
    profiles = make_profiles(args.subscribers, papers, rng)
    scoring, ranking = [], []  # (wall, CPU) seconds
    for _ in range(args.repeat):
        started, cpu = time.perf_counter(), time.process_time()
        top = select_top(index, profiles, min_score=1.5)
        scoring.append((time.perf_counter() - started, time.process_time() - cpu))
        index = PaperIndex.build(papers)  # a fresh index: reasons must not reuse the previous run's caches
        started, cpu = time.perf_counter(), time.process_time()
        ranked = rank_papers(index, profiles, min_score=1.5)
        ranking.append((time.perf_counter() - started, time.process_time() - cpu))
        index = PaperIndex.build(papers)
    picked = (top.rows >= 0).sum(axis=1)
    reasons = sum(len(p.reasons) for picks in ranked for p in picks)

    def median(times: list[tuple[float, float]]) -> str:
        return (f"median {statistics.median(t for t, _ in times):.2f} s wall, {statistics.median(c for _, c in times):.2f} s "
                f"CPU (runs {', '.join(f'{t:.2f}' for t, _ in times)})")

    print(f"{args.subscribers:,} subscribers × {args.papers:,} papers, top 10 (load {os.getloadavg()[0]:.1f}):\n"
          f"  with reasons (rank_papers): {median(ranking)}\n  picks alone (select_top):   {median(scoring)}\n"
          f"  {picked.mean():.1f} picks on average, {(picked == 0).mean():.0%} with none, "
          f"{reasons / max(picked.sum(), 1):.1f} reasons a pick; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
