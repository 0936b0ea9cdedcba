"""Benchmark: a 2,000-item arXiv RSS feed parsed and stored into a fresh SQLite database, then again.

    python bench/ingest.py [--items 2000] [--repeat 5]

Prints medians over the repeats: first ingest (all new); re-ingest of the same feed (all unchanged),
once parsed in full (an ad-hoc source) and once as a configured source (identical bytes are
recognised by their hash and not parsed again); and feedparser alone on the same bytes, for the ratio. Targets (issue 3): first ingest
under 2 s, re-ingest under 1 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import feedparser
import httpx

from newsletter.db import migrate, repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import utcnow
from newsletter.ingest.fetch import Fetcher
from newsletter.ingest.run import ingest_one
from newsletter.ingest.sources import SourceSpec
from newsletter.paths import PACKAGE_DIR


def build_feed(items: int) -> bytes:
    """The bundled sample feed's items repeated under fresh ids until there are ``items`` of them."""
    text = (PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_text()
    head, rest = text.split("<item>", 1)
    body, tail = ("<item>" + rest).rsplit("</item>", 1)
    originals = [chunk + "</item>" for chunk in body.split("</item>") if chunk.strip()]
    out = []
    for n in range(items):
        item = originals[n % len(originals)]
        old_id = item.split("<link>https://arxiv.org/abs/", 1)[1].split("<", 1)[0]
        out.append(item.replace(old_id, f"2612.{20000 + n:05d}"))
    return (head + "\n".join(out) + "</item>".join([""]) + tail).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    feed = build_feed(args.items)
    first, again, again_configured, parse_only = [], [], [], []
    with tempfile.TemporaryDirectory() as folder, httpx.Client() as client:
        path = Path(folder) / "feed.rss"
        path.write_bytes(feed)
        fetcher = Fetcher(client=client, max_bytes=50_000_000)
        spec = SourceSpec(str(path), "arxiv-rss")
        for run in range(args.repeat):
            for configured in (False, True):
                engine = make_engine(f"sqlite:///{folder}/bench{run}{configured}.db")
                migrate.upgrade(engine)
                sessions = make_sessionmaker(engine)
                if configured:  # as `newsletter sources add` leaves it: the last body's hash is remembered
                    with sessions() as session:
                        repo.add_source(session, url=spec.url, kind=spec.kind)
                        session.commit()
                started = time.perf_counter()
                report = ingest_one(spec, sessions=sessions, fetcher=fetcher, now=utcnow())
                if not configured:
                    first.append(time.perf_counter() - started)
                assert report.new == args.items and report.error is None, report
                started = time.perf_counter()
                report = ingest_one(spec, sessions=sessions, fetcher=fetcher, now=utcnow())
                (again_configured if configured else again).append(time.perf_counter() - started)
                assert report.unchanged == args.items or report.note == "same content as the last fetch", report
                engine.dispose()
            started = time.perf_counter()
            assert len(feedparser.parse(feed, sanitize_html=False, resolve_relative_uris=False).entries) == args.items
            parse_only.append(time.perf_counter() - started)
    rows = (("first ingest", first), ("re-ingest, parsed", again), ("re-ingest, configured", again_configured),
            ("feedparser alone", parse_only))
    for label, times in rows:
        median = statistics.median(times)
        print(f"{label:>22}: median {median:.3f} s  ({args.items / median:,.0f} items/s)  runs: "
              + ", ".join(f"{t:.3f}" for t in times))
    print(f"first ingest / feedparser alone: {statistics.median(first) / statistics.median(parse_only):.2f}x")


if __name__ == "__main__":
    main()
