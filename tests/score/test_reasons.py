"""Reasons name what the reader recognises, never a lone generic word, for every pick of a batch at once."""

from __future__ import annotations

import random
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from newsletter.ingest.feeds import parse_feed
from newsletter.paths import PACKAGE_DIR
from newsletter.records import Example, Paper, Preferences, Profile
from newsletter.score import PaperIndex, rank_papers
from newsletter.score import text as t
from newsletter.score.reasons import ACADEMIC_FILLER, IndexWords, clip

MIN_SCORE = 1.5
QUOTED = re.compile(r"“([^”]*)”")


@pytest.fixture(scope="module")
def papers():
    return parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers


@pytest.fixture(scope="module")
def index(papers) -> PaperIndex:
    return PaperIndex.build(papers)


def profile(n: int = 1, max_papers: int = 10, **prefs) -> Profile:
    return Profile(n, f"s{n}@example.org", Preferences.from_lists(**prefs), max_papers)


def paper(n: int, title: str, abstract: str, **fields) -> Paper:
    return Paper(key=f"2611.2000{n}", arxiv_id=f"2611.2000{n}", title=title, abstract=abstract, **fields)


def test_genericity_comes_from_the_days_papers_and_the_filler_list(index) -> None:
    words = IndexWords.of(index)
    share = lambda term: np.mean([term in set(s) for s in index.sequences])  # noqa: E731
    assert share("model") > 0.5 and words.is_generic("model"), "in most abstracts: says nothing"
    assert share("recommend") < 0.2 and not words.is_generic("recommend")
    assert share("text") < 0.2 and words.is_generic("text"), "filler, however rare today"
    assert all(words.is_generic(term) for term in (t.stem(w) for w in ("sample", "learning", "models", "data", "method")))
    tiny = IndexWords.of(PaperIndex.build([paper(1, "Graph sampling", "We sample graphs."), paper(2, "Graphs", "Graphs.")]))
    assert not tiny.is_generic("graph"), "two papers are too few to call a word common"
    assert tiny.is_generic("sampl")


def test_no_reason_is_a_lone_generic_word_for_thousands_of_profiles(papers, index) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from score import make_profiles  # the benchmark's generator: title bigrams, sentences, exclusions, authors

    profiles = make_profiles(3000, list(papers), random.Random(7))
    picks = [p for ranked in rank_papers(index, profiles, min_score=MIN_SCORE) for p in ranked]
    words = IndexWords.of(index)
    reasons = [r for p in picks for r in p.reasons]
    assert len(picks) > 10_000 and all(p.reasons for p in picks)
    assert not any(r.startswith("mentions") for r in reasons)
    kinds = {r.split(" ")[0].split(":")[0] for r in reasons}
    assert {"topic", "matches", "in", "by"} <= kinds, kinds
    for reason in reasons:
        if reason.startswith("matches"):
            phrase = QUOTED.findall(reason)[-1]  # the paper's phrase
            terms = t.terms(phrase)
            assert terms and not (len(terms) == 1 and words.is_generic(terms[0])), reason


def test_a_topic_found_in_part_names_the_topic_and_the_papers_phrase() -> None:
    filler = [paper(9 + i, f"Unrelated paper {i}", "We study protein folding with new kernels.") for i in range(3)]
    session = paper(1, "SessionRec: next session prediction", "We study session-based recommendation for shops.")
    index = PaperIndex.build([session, *filler])
    [picks] = rank_papers(index, [profile(topics=["sequential recommendation"])], min_score=0.1)
    assert picks[0].paper.key == session.key
    assert picks[0].reasons[0] == "matches “sequential recommendation”: “session-based recommendation”"


def test_a_whole_topic_is_named_as_typed_and_several_together(index) -> None:
    [picks] = rank_papers(index, [profile(topics=["time series forecasting", "large language models"])], min_score=MIN_SCORE)
    both = [p for p in picks if p.reasons[0].startswith("topic: “time series forecasting”, “large language models”")]
    assert both, [p.reasons for p in picks]


def test_a_description_is_matched_by_a_phrase_of_the_paper(index) -> None:
    [picks] = rank_papers(index, [profile(describe="I work on making LLM inference cheaper and faster.")], min_score=MIN_SCORE)
    described = [r for p in picks for r in p.reasons if r.startswith("matches your description: ")]
    assert described and any("llm" in QUOTED.findall(r)[0].lower() for r in described), described
    assert not any(QUOTED.findall(r)[0].lower() in {"faster", "cheaper", "making"} for r in described)


def test_a_semantic_pick_names_the_interest_closest_to_it(papers, index) -> None:
    prefs = dict(topics=["graph neural networks", "sequential recommendation"], describe="I work on keeping LLMs up to date.")
    reader = profile(**prefs)
    rows = {"recommend": next(i for i, p in enumerate(papers) if "sequential recommendation" in p.abstract.lower()
                              and "graph" not in p.abstract.lower()),
            "nothing": next(i for i, p in enumerate(papers) if not set(t.terms(" ".join(prefs["topics"]) + " " + prefs["describe"]))
                            & set(t.terms(p.title + " " + p.abstract)))}
    similarity = np.zeros((1, len(papers)), dtype=np.float32)
    similarity[0, list(rows.values())] = 0.9  # the semantic ranker finds both close
    [picks] = rank_papers(index, [reader], min_score=100.0, semantic=similarity)
    reasons = {p.paper.key: p.reasons for p in picks}
    recommend, nothing = papers[rows["recommend"]].key, papers[rows["nothing"]].key
    assert "topic: “sequential recommendation”" in reasons[recommend], "named once, by the topic found whole"
    assert not any(r.startswith("close in meaning") for r in reasons[recommend])
    # The sentence as it was embedded, its key phrase: not "close in meaning to “I work on keeping…”"
    assert "close in meaning to “keeping LLMs up to date”" in reasons[nothing], reasons[nothing]


def test_a_semantic_pick_of_a_reader_with_only_seed_papers_names_the_closest_seed(papers, index) -> None:
    forecasting, recommending = papers[73], papers[87]  # Autoformer; Mamba4Rec
    reader = Profile(1, "s@x", Preferences(), 10, examples=(Example(forecasting, 1.0, "seed"), Example(recommending, 1.0, "seed")))
    rows = {"forecast": next(i for i, p in enumerate(papers) if i != 73 and "time series forecasting" in p.title.lower()),
            "recommend": next(i for i, p in enumerate(papers) if i != 87 and "sequential recommendation" in p.title.lower()),
            "none": next(i for i, p in enumerate(papers) if "sat solv" in p.title.lower())}
    similarity = np.zeros((1, len(papers)), dtype=np.float32)
    similarity[0, list(rows.values())] = 0.9  # the semantic ranker finds all three close
    [picks] = rank_papers(index, [reader], min_score=100.0, semantic=similarity)
    reasons = {p.paper.key: p.reasons for p in picks}
    assert all(reasons[papers[row].key] for row in rows.values()), "every pick says why"
    named = {name: [r for r in reasons[papers[row].key] if r.startswith(("similar to", "close in meaning"))]
             for name, row in rows.items()}
    assert all(len(found) == 1 for found in named.values()), named
    assert "“Autoformer" in named["forecast"][0] and "“Mamba4Rec" in named["recommend"][0], named
    assert named["none"][0].startswith("close in meaning to your seed paper “"), named


def test_followed_authors_seeds_trending_and_categories_keep_their_reasons(papers, index) -> None:
    author = papers[100].authors[0]
    [followed] = rank_papers(index, [profile(topics=["protein folding"], authors=[author], max_papers=3)], min_score=MIN_SCORE)
    assert followed[0].reasons[0] == f"by {author} (followed author)"
    seed = papers[73]
    seeded = Profile(1, "s@x", Preferences.from_lists(describe="Interested in new architectures."), 5,
                     examples=(Example(seed, 1.0, "seed"),))
    [picks] = rank_papers(index, [seeded], min_score=MIN_SCORE)
    assert any(r.startswith("similar to your seed paper “Autoformer") for p in picks for r in p.reasons)
    lifted = PaperIndex.build([replace(p, upvotes=1204) if i == 9 else p for i, p in enumerate(papers)])
    [picks] = rank_papers(lifted, [profile(topics=["diffusion models"], categories=["cs.LG"])], min_score=MIN_SCORE)
    upvoted = next(p for p in picks if p.paper.key == papers[9].key)
    assert "trending: 1,204 upvotes" in upvoted.reasons and upvoted.reasons[-1] == "in cs.LG"


def test_a_batch_gives_each_profile_what_it_gets_alone(index) -> None:
    prefs = [dict(topics=["graph neural networks"], describe="I build recommender systems for shops."),
             dict(topics=["speech recognition", "large language models"], categories=["cs.CL"]),
             dict(describe="Networks that keep old skills while learning new tasks.")]
    alone = [rank_papers(index, [profile(i, **p)], min_score=MIN_SCORE)[0] for i, p in enumerate(prefs)]
    together = rank_papers(index, [profile(i, **p) for i, p in enumerate(prefs)], min_score=MIN_SCORE)
    assert [[p.reasons for p in picks] for picks in together] == [[p.reasons for p in picks] for picks in alone]


@pytest.mark.parametrize(("phrase", "width", "expected"), [
    ("Autoformer: Decomposition Transformers with Auto-Correlation", 30, "Autoformer: Decomposition…"),
    ("short", 30, "short"),
    ("Supercalifragilisticexpialidocious and more", 10, "Supercalifragilisticexpialidocious…"),
])
def test_clip_never_cuts_inside_a_word(phrase: str, width: int, expected: str) -> None:
    assert clip(phrase, width) == expected


def test_the_filler_list_is_stemmed_like_the_index() -> None:
    assert {t.stem("learning"), t.stem("methods"), t.stem("samples")} <= ACADEMIC_FILLER


def test_a_match_in_part_holds_the_topics_most_telling_word(papers, index) -> None:
    """"neural networks" in a paper is no match for "graph neural networks": its reader asked for graphs."""
    [picks] = rank_papers(index, [profile(topics=["graph neural networks"])], min_score=0.1)
    partial = [(p.paper.title, r) for p in picks for r in p.reasons if r.startswith("matches “graph neural networks”")]
    assert partial, [p.reasons for p in picks]  # there are matches in part: the ones that hold "graph"
    assert all("graph" in r.split(":", 1)[1].lower() for _, r in partial), partial
    without_graph = [p for p in picks if "graph" not in (p.paper.title + " " + p.paper.abstract).lower()]
    assert not any(r.startswith("matches “graph neural networks”") for p in without_graph for r in p.reasons)
