"""Benchmark: how often the TL;DR is the sentence a reader would pick, against the first-sentence rule.

    python bench/tldr.py [--verbose]

Reads the hand labels of ``bench/data/tldr_labels.json`` (50 abstracts of
``../shared/data/seed_papers.json``, each with its best TL;DR sentence) and prints the hit rate of
``newsletter.render.tldr.best_sentence`` and of the abstract's first sentence (the rule before issue
11). ``--verbose`` lists the misses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from newsletter.render.tldr import best_sentence, split_sentences

HERE = Path(__file__).resolve().parent
LABELS = HERE / "data" / "tldr_labels.json"
PAPERS = HERE.parents[1] / "shared" / "data" / "seed_papers.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="print each miss of the new rule")
    args = parser.parse_args()
    if not PAPERS.is_file():
        raise SystemExit(f"{PAPERS} is missing: this benchmark reads the 211 papers' abstracts from ../shared/data/ "
                         "beside the repository (the team's shared folder)")
    labels: dict[str, str] = json.loads(LABELS.read_text(encoding="utf-8"))["labels"]
    abstracts = {p["title"]: p["abstract"] for p in json.loads(PAPERS.read_text(encoding="utf-8"))}
    ours = first = 0
    for title, wanted in labels.items():
        sentences = split_sentences(abstracts[title])
        assert wanted in sentences, f"the label of {title!r} is not one of its sentences: the splitter changed"
        ours += sentences[best_sentence(abstracts[title])] == wanted
        first += sentences[0] == wanted
        if args.verbose and sentences[best_sentence(abstracts[title])] != wanted:
            print(f"miss: {title}\n  picked: {sentences[best_sentence(abstracts[title])]}\n  wanted: {wanted}")
    total = len(labels)
    print(f"TL;DR hit rate on {total} labelled abstracts: contribution/result rule {ours / total:.0%} ({ours}/{total}), "
          f"first sentence {first / total:.0%} ({first}/{total})")


if __name__ == "__main__":
    main()
