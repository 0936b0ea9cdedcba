"""Benchmark: ``newsletter digest --dry-run --json`` for N subscribers, as the user runs it (a subprocess).

    python bench/dry_run.py [--subscribers 100000] [--repeats 3] [--semantic] [--stages] [--profile] [--compare DIR]

The SQLite database is built with the product's own functions: the 211 papers of
``../shared/data/seed_papers.json`` (authors, categories and arXiv ids from the sample arXiv feed,
which lists the same papers) stored with ``repo.upsert_papers``, the sample trending data ingested
from ``demo_data/hf_daily_sample.json`` by ``ingest_sources``, and N subscribers made by
``bench/score.py``'s generator (1–4 topics from a pool of 300 phrases, most with a sentence about
their work, some exclusions, categories and followed authors) bulk-inserted by
``repo.import_subscribers``. Then the real command, start-up, SQL, scoring, reasons and JSON
printing included, ``--repeats`` times; prints the median wall time, the command's CPU time (user +
system: what the figure would be on a machine the command had to itself) and what the picks'
reasons look like. ``--compare DIR`` alternates each run with the same command importing the
``newsletter`` package from DIR first (a copy of another version), for a before/after under the same
load. ``--stages`` times the command's stages in this process (scoring, turning picks into data, JSON);
``--profile`` runs it once more under cProfile. Without ``--semantic`` the command ranks lexically
(``NEWSLETTER_SEMANTIC=false``); with it, as installed (sentence embeddings on): a first run embeds
the papers and every subscriber's interest texts once and stores them (a dry run keeps them), timed
apart; the repeats are what a dry run costs once they are stored. Target (issue 11): 100,000 subscribers under 20 s on two cores.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from score import make_profiles  # noqa: E402 - the scoring benchmark's subscriber generator

from newsletter.db import migrate, repo  # noqa: E402
from newsletter.db.engine import make_engine, make_sessionmaker  # noqa: E402
from newsletter.ingest.feeds import parse_feed  # noqa: E402
from newsletter.ingest.fetch import Fetcher, make_client  # noqa: E402
from newsletter.ingest.run import ingest_sources  # noqa: E402
from newsletter.ingest.sources import SourceSpec  # noqa: E402
from newsletter.paths import PACKAGE_DIR  # noqa: E402
from newsletter.records import NewSubscriber, Paper  # noqa: E402

SEED_PAPERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed_papers.json"
LISTED_AT = dt.datetime(2026, 11, 23, 5)  # naive UTC: when the papers were first seen
RUN_AT = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)  # the command's --at: the papers are hours old


def seed_papers() -> list[Paper]:
    """The shared 211 papers, with the metadata arXiv's listing of them carries."""
    listed = {p.title: p for p in parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers}
    if not SEED_PAPERS.is_file():
        raise SystemExit(f"{SEED_PAPERS} is missing: this benchmark reads the 211 papers from ../shared/data/ "
                         "beside the repository (the team's shared folder)")
    papers = []
    for n, entry in enumerate(json.loads(SEED_PAPERS.read_text(encoding="utf-8"))):
        known = listed.get(entry["title"])
        arxiv_id = known.arxiv_id if known and known.arxiv_id else f"2611.2{n:04d}"
        papers.append(Paper(key=arxiv_id, arxiv_id=arxiv_id, title=entry["title"], abstract=entry["abstract"],
                            authors=known.authors if known else (), categories=known.categories if known else ("cs.LG",),
                            version=1, announce_type="new", abs_url=f"https://arxiv.org/abs/{arxiv_id}",
                            pdf_url=f"https://arxiv.org/pdf/{arxiv_id}"))
    return papers


def build_database(folder: str, subscribers: int) -> str:
    url = f"sqlite:///{folder}/dry_run.db"
    engine = make_engine(url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    papers = seed_papers()
    with sessions() as session:
        repo.upsert_papers(session, papers=papers, source_id=None, now=LISTED_AT)
        session.commit()
    with make_client(timeout_s=5) as client:
        ingest_sources([SourceSpec(str(PACKAGE_DIR / "demo_data" / "hf_daily_sample.json"), "hf-daily")],
                       sessions=sessions, fetcher=Fetcher(client=client, max_bytes=50_000_000), now=LISTED_AT)
    rng = random.Random(11)
    people = [NewSubscriber(email=profile.email, preferences=profile.preferences, max_papers=profile.max_papers)
              for profile in make_profiles(subscribers, papers, rng)]
    with sessions() as session:
        repo.import_subscribers(session, subscribers=people)
        session.commit()
    engine.dispose()
    return url


def command_env(url: str, pythonpath: str | None = None, *, semantic: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(NEWSLETTER_DATABASE_URL=url, NEWSLETTER_SEMANTIC="true" if semantic else "false")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def run_command(url: str, folder: str, pythonpath: str | None = None, *, semantic: bool = False) -> tuple[float, float, list[dict]]:
    """(wall seconds, CPU seconds, the printed picks) of one ``newsletter digest --dry-run --json``."""
    command = str(Path(sys.executable).with_name("newsletter"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([command, "digest", "--dry-run", "--json", "--at", RUN_AT.isoformat()],
                          env=command_env(url, pythonpath, semantic=semantic), cwd=folder, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"newsletter digest failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, json.loads(done.stdout)


def time_stages(url: str) -> None:
    """CPU seconds of the command's stages, run in this process without a profiler (which inflates Python
    code far more than C): planning (``preview_next``; its ``rank_papers`` inside it), turning the picks
    into data (``cli.picks_as_data``) and encoding them as the command prints them."""
    import newsletter.plan
    from newsletter.cli import picks_as_data
    from newsletter.runtime import Runtime
    from newsletter.settings import Settings

    spent = {"rank_papers (scoring + reasons)": 0.0}
    ranking = newsletter.plan.rank_papers

    def timed_rank_papers(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - rank_papers' own signature
        started = time.process_time()
        try:
            return ranking(*args, **kwargs)
        finally:
            spent["rank_papers (scoring + reasons)"] += time.process_time() - started

    newsletter.plan.rank_papers = timed_rank_papers  # type: ignore[assignment]  # this benchmark process only
    runtime = Runtime.build(Settings(database_url=url, semantic=False, _env_file=None))
    started = time.process_time()
    plan = newsletter.plan.preview_next(runtime, now=RUN_AT)
    spent["preview_next (all of planning)"] = time.process_time() - started
    started = time.process_time()
    data = [{"email": p.email, "issue_date": p.issue_date, "papers": picks_as_data(p.papers)} for p in plan.picks]
    spent["cli.picks_as_data"] = time.process_time() - started
    started = time.process_time()
    orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)
    spent["orjson.dumps, as cli._print_json into a pipe"] = time.process_time() - started
    started = time.process_time()
    json.dumps(data, ensure_ascii=False, default=str)
    spent["json.dumps (the standard library's C encoder), for comparison"] = time.process_time() - started
    newsletter.plan.rank_papers = ranking  # type: ignore[assignment]
    for stage, seconds in spent.items():
        print(f"  {stage:58} {seconds:6.2f} s CPU")


def profile_command(url: str, folder: str) -> None:
    """The same command in this process under cProfile: where its time goes. The command plans in a worker
    thread (``asyncio.to_thread``), which cProfile does not follow: here it runs in the calling thread."""
    import asyncio

    from typer.main import get_command

    from newsletter.cli import app

    async def in_this_thread(function, /, *args, **kwargs):  # noqa: ANN001, ANN202 - asyncio.to_thread's signature
        return function(*args, **kwargs)

    asyncio.to_thread = in_this_thread  # type: ignore[assignment]  # this benchmark process only

    os.environ.update(command_env(url))
    os.chdir(folder)
    profiler = cProfile.Profile()
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            profiler.runcall(get_command(app), ["digest", "--dry-run", "--json", "--at", RUN_AT.isoformat()],
                             standalone_mode=False)
        finally:
            sys.stdout = stdout
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(25)


def describe_reasons(picks: list[dict]) -> None:
    reasons = Counter(r.split(":")[0].split(" “")[0].split(" ")[0] for entry in picks for p in entry["papers"] for r in p["reasons"])
    served = [entry for entry in picks if entry["papers"]]
    count = sum(len(entry["papers"]) for entry in picks)
    print(f"{len(picks):,} subscribers, {len(served):,} with picks, {count:,} picks; reasons by kind: "
          + ", ".join(f"{kind} {n:,}" for kind, n in reasons.most_common()))
    for entry in served[:3]:
        for paper in entry["papers"][:2]:
            print(f"  {paper['title'][:60]}: {paper['reasons']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", action="store_true", help="also time its stages in this process (CPU seconds)")
    parser.add_argument("--profile", action="store_true", help="also run it once under cProfile")
    parser.add_argument("--compare", metavar="DIR", help="alternate with the package imported from DIR (before/after)")
    parser.add_argument("--semantic", action="store_true",
                        help="the default configuration (semantic ranker on): a first run embeds the papers and every "
                             "subscriber's interests once (stored), timed apart; the repeats find them stored")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        url = build_database(folder, args.subscribers)
        print(f"database with {args.subscribers:,} subscribers built in {time.perf_counter() - started:.1f} s")
        versions = {"this tree": None} | ({f"--compare {args.compare}": args.compare} if args.compare else {})
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
        if args.semantic:
            seconds, cpu, _ = run_command(url, folder, semantic=True)
            print(f"first run, embedding the papers and the subscribers' interests once: {seconds:.1f} s wall, {cpu:.1f} s CPU")
        for repeat in range(args.repeats):
            for name, pythonpath in versions.items():
                seconds, cpu, picks = run_command(url, folder, pythonpath, semantic=args.semantic)
                times[name].append((seconds, cpu))
                print(f"run {repeat + 1} ({name}): {seconds:.2f} s wall, {cpu:.2f} s CPU (load {os.getloadavg()[0]:.1f})")
                if name == "this tree":
                    describe_reasons(picks)
        for name, runs in times.items():
            if not runs:  # --repeats 0: only the stages and the profile
                continue
            print(f"newsletter digest --dry-run --json ({name}), {args.subscribers:,} subscribers × {len(seed_papers())} "
                  f"papers: median {statistics.median(t for t, _ in runs):.2f} s wall, "
                  f"{statistics.median(c for _, c in runs):.2f} s CPU (runs {', '.join(f'{t:.1f}' for t, _ in runs)}); "
                  "target < 20 s")
        if args.stages:
            print("stages, in this process:")
            time_stages(url)
        if args.profile:
            profile_command(url, folder)


if __name__ == "__main__":
    main()
