"""The vectorised ranker picks exactly what a straightforward implementation of the same definition picks."""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from newsletter.ingest.feeds import parse_feed
from newsletter.paths import PACKAGE_DIR
from newsletter.records import Preferences, Profile
from newsletter.score import PaperIndex, lexical
from newsletter.score import text as t

MIN_SCORE = 1.5


def reference_picks(papers, profiles, *, min_score: float) -> list[list[tuple[str, float]]]:
    """Loop over profile × paper × term: BM25 straight from the formula in lexical's docstring."""
    sequences, bags, lengths = [], [], []
    for paper in papers:
        title = [w for w in t.words(paper.title) if w not in t.STOP_WORDS and len(w) > 1]
        abstract = [w for w in t.words(paper.abstract) if w not in t.STOP_WORDS and len(w) > 1]
        sequence = [t.stem(w) for w in title + abstract]
        bag = Counter(sequence) + Counter({term: lexical.TITLE_REPEAT - 1 for term in sequence[: len(title)]})
        sequences.append(sequence)
        bags.append(bag)
        lengths.append(sum(bag.values()))
    df = Counter(term for bag in bags for term in bag)
    avg = sum(lengths) / len(lengths)

    def bm25(term: str, i: int) -> float:
        tf = bags[i].get(term, 0)
        if not tf:
            return 0.0
        idf = math.log1p((len(papers) - df[term] + 0.5) / (df[term] + 0.5))
        return idf * tf * (lexical.K1 + 1) / (tf + lexical.K1 * (1 - lexical.B + lexical.B * lengths[i] / max(avg, 1.0)))

    def holds(i: int, phrase: tuple[str, ...]) -> bool:
        seq = sequences[i]
        return bool(phrase) and any(tuple(seq[j : j + len(phrase)]) == phrase for j in range(len(seq)))

    vectors = [{term: bm25(term, i) for term in bags[i]} for i in range(len(papers))]

    def cosine(a: int, b: int) -> float:
        dot = sum(w * vectors[b].get(term, 0.0) for term, w in vectors[a].items())
        norm = math.sqrt(sum(w * w for w in vectors[a].values())) * math.sqrt(sum(w * w for w in vectors[b].values()))
        return dot / norm if norm else 0.0

    first = list(range(len(papers)))  # the earliest paper each one nearly duplicates
    for b in range(len(papers)):
        for a in range(b):
            if cosine(a, b) >= lexical.NEAR_DUPLICATE_SIMILARITY:
                first[b] = first[a]
                break
    boost = [lexical.TRENDING_WEIGHT * math.log1p(p.upvotes or 0) for p in papers]

    results = []
    for profile in profiles:
        prefs = profile.preferences
        weights: Counter[str] = Counter()
        for topic in prefs.topics:
            phrase = t.phrase_terms(topic.phrase)
            for term in phrase:
                if term in df:
                    weights[term] += topic.weight / len(phrase)
        for term in {x for x in t.terms(prefs.describe) if x in df}:
            weights[term] += lexical.DESCRIBE_WEIGHT
        followed_keys = {t.name_keys(a)[0] for a in prefs.authors if t.name_keys(a)}
        scored = []
        for i, paper in enumerate(papers):
            score = sum(w * bm25(term, i) for term, w in weights.items())
            score += sum(lexical.PHRASE_BONUS * topic.weight for topic in prefs.topics
                         if len(t.phrase_terms(topic.phrase)) > 1 and holds(i, t.phrase_terms(topic.phrase)))
            excluded = any(holds(i, form) for x in prefs.exclude for form in t.exclusion_forms(x))
            allowed = not prefs.categories or bool({c.lower() for c in paper.categories} & {c.lower() for c in prefs.categories})
            followed = any(k in followed_keys for name in paper.authors for k in t.name_keys(name))
            seeds = {e.paper.key for e in profile.examples if e.kind == "seed"}
            if excluded or paper.key in profile.already_sent or paper.key in seeds:
                continue
            if (allowed and score >= min_score) or followed:
                ranked = score + boost[i] + (lexical.FOLLOWED_AUTHOR_BOOST if followed else 0)
                scored.append((-ranked, i, paper.key, score))
        scored.sort()
        picked, groups = [], set()
        for _, i, key, score in scored:
            if first[i] not in groups:
                groups.add(first[i])
                picked.append((key, score))
        results.append(picked[: profile.max_papers])
    return results


@pytest.fixture(scope="module")
def papers():
    """The sample feed with upvotes on a third of the papers and two near-duplicates of a diffusion paper."""
    listed = list(parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers)
    rng = random.Random(5)
    listed = [replace(p, upvotes=rng.randint(1, 300)) if rng.random() < 0.33 else p for p in listed]
    twin = replace(listed[9], key="2611.99999", arxiv_id="2611.99999", title=listed[9].title + " (extended version)")
    triplet = replace(listed[9], key="2611.99998", arxiv_id="2611.99998", abstract=listed[9].abstract + " Code is available.")
    return tuple(listed + [twin, triplet])


def sample_profiles(papers, count: int) -> list[Profile]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from score import make_profiles  # the benchmark's generator: topics, sentences, exclusions, categories, authors

    rng = random.Random(3)
    profiles = make_profiles(count, list(papers), rng)
    keys = [p.key for p in papers]
    extra = [
        Profile(count, "a@x", Preferences.from_lists(topics=["diffusion models", "Diffusion Models"], exclude=["video", "time series"]), 7,
                frozenset(rng.sample(keys, 30))),
        Profile(count + 1, "b@x", Preferences.from_lists(topics=["reinforcement learning"], categories=["cs.RO"],
                                                         authors=[papers[5].authors[0], "J. Nobody"]), 5),
        Profile(count + 2, "c@x", Preferences.from_lists(describe="I build question answering systems that retrieve documents."), 10),
        Profile(count + 3, "d@x", Preferences.from_lists(), 3),
    ]
    return profiles + extra


def test_the_fast_path_picks_what_the_definition_picks(papers) -> None:
    profiles = sample_profiles(papers, 60)
    fast = lexical.rank_papers(PaperIndex.build(papers), profiles, min_score=MIN_SCORE)
    slow = reference_picks(papers, profiles, min_score=MIN_SCORE)
    assert sum(len(p) for p in slow) > 200, "the sample must pick plenty to compare"
    for profile, got, want in zip(profiles, fast, slow, strict=True):
        assert [p.paper.key for p in got] == [key for key, _ in want], profile.preferences
        for pick, (_, score) in zip(got, want, strict=True):
            assert pick.score == pytest.approx(score, rel=1e-4, abs=1e-4)


def test_chunks_and_threads_do_not_change_the_result(papers, monkeypatch) -> None:
    profiles = sample_profiles(papers, 120)
    index = PaperIndex.build(papers)
    whole = lexical.select_top(index, profiles, min_score=MIN_SCORE)
    monkeypatch.setattr(lexical, "CHUNK_SUBSCRIBERS", 7)
    chunked = lexical.select_top(index, profiles, min_score=MIN_SCORE)
    assert (whole.rows == chunked.rows).all() and (whole.scores == chunked.scores).all()


def test_near_duplicates_are_never_both_picked(papers) -> None:
    profile = Profile(1, "a@x", Preferences.from_lists(topics=["diffusion models", "inference-time alignment"]), 10)
    [picks] = lexical.rank_papers(PaperIndex.build(papers), [profile], min_score=MIN_SCORE)
    keys = [p.paper.key for p in picks]
    assert "2611.10009" in keys and "2611.99999" not in keys and "2611.99998" not in keys
    assert len(keys) == 10


def test_upvotes_reorder_relevant_papers_and_are_a_reason(papers) -> None:
    profile = Profile(1, "a@x", Preferences.from_lists(topics=["time series forecasting"]), 10)
    index = PaperIndex.build(papers)
    [picks] = lexical.rank_papers(index, [profile], min_score=MIN_SCORE)
    trending = [p for p in picks if p.paper.upvotes]
    assert trending and all(f"trending: {p.paper.upvotes} upvotes" in p.reasons for p in trending)
    quiet = PaperIndex.build([replace(p, upvotes=None) for p in papers])
    [unboosted] = lexical.rank_papers(quiet, [profile], min_score=MIN_SCORE)
    wider = lexical.rank_papers(quiet, [replace(profile, max_papers=40)], min_score=MIN_SCORE)[0]
    assert {p.paper.key for p in picks} <= {p.paper.key for p in wider}
    assert [p.paper.key for p in picks] != [p.paper.key for p in unboosted], "upvotes must change the order"


def test_older_papers_rank_lower_than_equally_relevant_new_ones(papers) -> None:
    import datetime as dt

    now = dt.datetime(2026, 11, 23, 12)
    original = papers[9]
    older = replace(original, key="2611.55555", first_seen_at=now - dt.timedelta(days=3))
    newer = replace(original, first_seen_at=now)
    index = PaperIndex.build([older, newer], now=now)
    assert index.boost[0] < index.boost[1]
    assert index.duplicate_of.tolist() == [0, 0], "identical texts are near-duplicates"
