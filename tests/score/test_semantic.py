"""The semantic extra: it finds papers that share meaning but not words, and says so. Runs in CI."""

from __future__ import annotations

import json
import os

import pytest

from newsletter.ingest.feeds import parse_feed
from newsletter.paths import PACKAGE_DIR
from newsletter.records import Preferences, Profile
from newsletter.score import PaperIndex, rank_papers
from newsletter.score.semantic import SemanticModel
from tests.conftest import FIXTURES


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    if not SemanticModel.available():
        reason = "the semantic extra is not installed (pip install '.[semantic]'); .ci/run installs it"
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
    assert any(r.startswith("close in meaning to your interests") for p in fused for r in p.reasons)


def test_embeddings_are_unit_length_and_deterministic(model, papers) -> None:
    first = model.embed_papers(papers[:5])
    assert first.shape == (5, 384)
    assert abs(float((first**2).sum(axis=1).mean()) - 1.0) < 1e-4
    assert (model.embed_papers(papers[:5]) == first).all()


def test_the_digest_uses_it_when_switched_on(cli, env, configured) -> None:
    env(semantic="true")
    cli("init")
    cli("subscribers", "add", "ada@example.org", "--topic", "lifelong learning", "--max-papers", "5")
    cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    result = cli("digest", "--dry-run", "--json")
    assert result.code == 0, result.err
    picks = json.loads(result.out)[0]["papers"]
    assert picks and any("close in meaning" in r for p in picks for r in p["reasons"])
