"""Benchmark: ranking quality on a hand-labelled set (bench/data/relevance_labels.json, see its note).

    pip install -e '.[bench,semantic]'; python bench/relevance.py

For 12 subscriber profiles × the 211 papers of the bundled sample feed, prints nDCG@10 and P@10
(share of the top 10 graded 1 or 2) for: exact keyword match, BM25 (rank-bm25), TF-IDF cosine
(scikit-learn), the semantic model alone (all-MiniLM-L6-v2), and ours, lexical only and with the
semantic extra. Targets (issue 4): ours with the extra >= best single baseline + 0.05 nDCG@10;
ours lexical-only >= TF-IDF cosine.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from newsletter.ingest.feeds import parse_feed
from newsletter.paths import PACKAGE_DIR
from newsletter.records import Preferences, Profile
from newsletter.score import PaperIndex, rank_papers

K = 10
LABELS = Path(__file__).parent / "data" / "relevance_labels.json"


def ndcg(ranked: list[int], grades: dict[int, int]) -> float:
    gains = [grades.get(p, 0) for p in ranked[:K]]
    dcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(grades.values(), reverse=True)[:K]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def precision(ranked: list[int], grades: dict[int, int]) -> float:
    return sum(1 for p in ranked[:K] if grades.get(p, 0) > 0) / K


def query_text(profile: dict) -> str:
    return " ".join(profile["topics"]) + " " + profile["describe"]


def top(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")[:K]]


def main() -> None:
    papers = list(parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers)
    texts = [f"{p.title}. {p.abstract}" for p in papers]
    profiles = json.loads(LABELS.read_text())["profiles"]
    grades = [{int(k): v for k, v in p["grades"].items()} for p in profiles]
    rankings: dict[str, list[list[int]]] = {}

    lowered = [t.lower() for t in texts]
    rankings["exact keyword match"] = [
        top(np.array([sum(t.count(topic.lower()) for topic in p["topics"]) for t in lowered], dtype=float)) for p in profiles]

    from rank_bm25 import BM25Okapi

    tokenize = lambda text: re.findall(r"[a-z0-9]+", text.lower())  # noqa: E731
    bm25 = BM25Okapi([tokenize(t) for t in texts])
    rankings["BM25 (rank-bm25)"] = [top(bm25.get_scores(tokenize(query_text(p)))) for p in profiles]

    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(stop_words="english", sublinear_tf=True)
    matrix = tfidf.fit_transform(texts)
    rankings["TF-IDF cosine"] = [top((matrix @ tfidf.transform([query_text(p)]).T).toarray().ravel()) for p in profiles]

    ours_profiles = [Profile(i, p["id"], Preferences.from_lists(topics=p["topics"], exclude=p["exclude"], describe=p["describe"]), K)
                     for i, p in enumerate(profiles)]
    index = PaperIndex.build(papers)
    position = {paper.key: i for i, paper in enumerate(papers)}
    rankings["ours, lexical"] = [[position[r.paper.key] for r in picks]
                                 for picks in rank_papers(index, ours_profiles, min_score=0.0)]

    try:
        from newsletter.score.semantic import SemanticModel
    except ImportError:
        SemanticModel = None  # noqa: N806
    if SemanticModel is not None and SemanticModel.available():
        model = SemanticModel.load()
        # The baseline: the model used the usual way, one text per paper and one per profile.
        plain = model.embed([query_text(p) for p in profiles]) @ model.embed(texts).T
        rankings["semantic alone (MiniLM)"] = [top(row) for row in plain]
        # Ours embeds title and abstract apart, and each stated interest apart (score.semantic).
        similarity = model.embed_profiles([p.preferences for p in ours_profiles]) @ model.embed_papers(papers).T
        rankings["ours' embeddings alone"] = [top(row) for row in similarity]
        rankings["ours, with semantic"] = [[position[r.paper.key] for r in picks] for picks in
                                           rank_papers(index, ours_profiles, min_score=0.0, semantic=similarity)]
    else:
        print("(the semantic extra is not installed: pip install -e '.[semantic]')")

    print(f"{'ranker':<26} {'nDCG@10':>8} {'P@10':>6}")
    results = {}
    for name, ranked in rankings.items():
        n = float(np.mean([ndcg(r, g) for r, g in zip(ranked, grades, strict=True)]))
        p = float(np.mean([precision(r, g) for r, g in zip(ranked, grades, strict=True)]))
        results[name] = n
        print(f"{name:<26} {n:8.3f} {p:6.3f}")
    baselines = {k: v for k, v in results.items() if not k.startswith("ours")}
    best = max(baselines, key=baselines.get)
    print(f"best single baseline: {best} ({baselines[best]:.3f})")
    if "ours, with semantic" in results:
        fused = results["ours, with semantic"]
        print(f"ours with semantic - best baseline: {fused - baselines[best]:+.3f} (target >= +0.05)")
        own = results["ours' embeddings alone"]
        print(f"ours with semantic - ours' embeddings alone: {fused - own:+.3f}")
    print(f"ours lexical - TF-IDF cosine: {results['ours, lexical'] - results['TF-IDF cosine']:+.3f} (target >= 0)")
    per_profile = [ndcg(r, g) for r, g in zip(rankings["ours, lexical"], grades, strict=True)]
    print("ours lexical per profile:", ", ".join(f"{p['id']} {v:.2f}" for p, v in zip(profiles, per_profile, strict=True)))


if __name__ == "__main__":
    main()
