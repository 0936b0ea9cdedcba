"""Learning from a reader: a model per subscriber from their "more / less like this" clicks (score.learn)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from newsletter.plan import rank_learned
from newsletter.records import Example, Paper, Preferences, Profile, RankedPaper
from newsletter.score import PaperIndex, learn, rank_papers
from newsletter.score.lexical import FOLLOWED_PLACEMENT
from newsletter.score.minilm import DIMENSIONS
from tests.conftest import FIXTURES

GRAPHS, VISION = 0, 1  # the embedding directions of the two kinds of paper below


def direction(kind: int, seed: int) -> np.ndarray:
    """A unit vector near axis ``kind``, a little noise apart from its neighbours."""
    vector = np.random.default_rng(seed).normal(0, 0.05, DIMENSIONS)
    vector[kind] += 1.0
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def paper(key: str) -> Paper:
    """A paper on "representation learning" whose other words are its own: its words say nothing of its kind."""
    number = sum(ord(c) * 31**i for i, c in enumerate(key))
    words = " ".join("zq" + "".join(chr(97 + (number // 26**k + j) % 26) for k in range(5)) for j in range(8))
    return Paper(key, f"Representation learning {words[:20]}", f"We study representation learning. {words}.")


def ratings(liked: list[Paper], disliked: list[Paper]) -> tuple[Example, ...]:
    return (*(Example(p, 1.0, "liked") for p in liked), *(Example(p, -1.0, "disliked") for p in disliked))


def reader(examples: tuple[Example, ...] = (), max_papers: int = 4) -> Profile:
    return Profile(1, "ada@example.org", Preferences.from_lists(topics=["representation learning"]), max_papers,
                   examples=examples)


def test_the_model_fits_separable_data_and_generalises() -> None:
    liked = np.stack([direction(GRAPHS, s) for s in range(8)])
    disliked = np.stack([direction(VISION, s) for s in range(8, 16)])
    model = learn.fit(np.vstack([liked, disliked]), np.array([True] * 8 + [False] * 8))
    assert model is not None and model.ratings == 16
    assert (model.logits(liked) > 0).all() and (model.logits(disliked) < 0).all()
    unseen = np.stack([direction(GRAPHS, 100), direction(VISION, 101)])
    assert model.logits(unseen)[0] > 0 > model.logits(unseen)[1]
    stiff = learn.fit(np.vstack([liked, disliked]), np.array([True] * 8 + [False] * 8), l2=100.0)
    assert stiff is not None and np.linalg.norm(stiff.coef) < np.linalg.norm(model.coef), "L2 keeps the weights small"


def test_no_model_below_ten_ratings_or_with_one_kind_of_click() -> None:
    vectors = np.stack([direction(GRAPHS if i % 2 else VISION, i) for i in range(12)])
    both_ways = np.array([i % 2 == 1 for i in range(12)])
    assert learn.fit(vectors[:9], both_ways[:9]) is None, "nine ratings are not enough"
    assert learn.fit(vectors[:10], both_ways[:10]) is not None, "ten, both ways, are"
    assert learn.fit(vectors, np.ones(12, dtype=bool)) is None, "all 'more like this': nothing to separate"
    assert learn.fit(vectors, np.zeros(12, dtype=bool)) is None, "all 'less like this': Rocchio keeps them"
    papers = [paper(f"p{i}") for i in range(12)]
    by_key = {p.key: v for p, v in zip(papers, vectors, strict=True)}
    seeds = tuple(Example(p, 1.0, "seed") for p in papers[:4])  # seeds are not ratings
    examples = seeds + ratings([p for p in papers[4:] if p.key in ("p5", "p7", "p9", "p11")], [papers[4], papers[6], papers[8]])
    assert learn.fit_reader(examples, by_key) is None
    models, asked = learn.prepare([reader(examples)], by_key)
    assert models == {} and asked == [reader(examples)], "without a model the ranker sees the profile as it is"


def test_the_weight_grows_with_the_ratings_and_is_capped() -> None:
    assert learn.blend_weight(learn.MIN_RATINGS - 1) == 0.0
    assert learn.blend_weight(learn.MIN_RATINGS) == pytest.approx(learn.MAX_WEIGHT / 2)
    assert learn.blend_weight(learn.MIN_RATINGS) < learn.blend_weight(learn.FULL_WEIGHT_RATINGS - 1)
    assert learn.blend_weight(learn.FULL_WEIGHT_RATINGS) == learn.blend_weight(500) == learn.MAX_WEIGHT


def test_rerank_moves_what_the_model_likes_up_and_keeps_followed_authors_first() -> None:
    picks = [RankedPaper(paper("followed"), 0.1, ("followed author",), FOLLOWED_PLACEMENT),
             *(RankedPaper(paper(f"v{i}"), 3.0 - 0.1 * i, ()) for i in range(4)),
             *(RankedPaper(paper(f"g{i}"), 2.0 - 0.1 * i, ()) for i in range(4))]
    learned = {p.paper.key: (2.0 if p.paper.key.startswith("g") else -1.0) for p in picks}
    out = learn.rerank(picks, learned=learned, boost={}, weight=1.0, limit=5)
    assert [p.paper.key for p in out] == ["followed", "g0", "g1", "g2", "g3"]
    assert out[1].score == pytest.approx(2.0 + 2.0), "the pick's score is the blended one"
    trending = learn.rerank(picks, learned=learned, boost={"v1": 2.0}, weight=1.0, limit=3)
    assert [p.paper.key for p in trending] == ["followed", "g0", "v1"], "the trending/age boost still counts"
    unchanged = learn.rerank(picks, learned=learned, boost={}, weight=0.0, limit=5)
    assert [p.paper.key for p in unchanged] == ["followed", "v0", "v1", "v2", "v3"]


def test_a_reader_with_a_model_gets_what_they_liked_and_others_are_untouched() -> None:
    # 30 papers that match "representation learning" equally well in words; only their vectors tell them apart,
    # and the vision papers come first in the feed (the lexical ranker breaks ties in feed order).
    papers = [paper(f"v{i}") for i in range(15)] + [paper(f"g{i}") for i in range(15)]
    vectors = {p.key: direction(GRAPHS if p.key.startswith("g") else VISION, i) for i, p in enumerate(papers)}
    rated = ratings([papers[15 + i] for i in range(6)], [papers[i] for i in range(6)])  # 12 clicks, both ways
    index = PaperIndex.build(papers)
    candidates = np.stack([vectors[p.key] for p in papers])
    neutral = lambda profiles: np.zeros((len(profiles), len(papers)), dtype=np.float32)  # noqa: E731 - no semantic opinion

    def keys(profile: Profile) -> list[str]:
        hidden = {e.paper.key for e in profile.examples}  # as in a digest: the rated papers were sent already
        shown = Profile(profile.subscriber_id, profile.email, profile.preferences, profile.max_papers,
                        frozenset(hidden), profile.examples)
        [picks] = rank_learned(index, [shown], similarity=neutral, vectors=vectors, min_score=0.0)
        return [p.paper.key for p in picks]

    learner = keys(reader(rated))
    assert all(k.startswith("g") for k in learner), learner
    too_few = keys(reader(rated[:9]))  # 9 ratings: Rocchio only, and no vector difference for it to see here
    [plain] = rank_papers(index, [Profile(1, "a", reader().preferences, 4, frozenset(e.paper.key for e in rated[:9]),
                                          rated[:9])], min_score=0.0, semantic=neutral([0]))
    assert too_few == [p.paper.key for p in plain]
    assert learn.apply([[]], [reader()], {}, keys=[p.key for p in papers], candidates=candidates,
                       boost=index.boost) == [[]], "no model: picks untouched"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # embedding 60 papers once is enough
def test_clicks_through_the_cli_teach_the_digest(cli, configured, monkeypatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SEMANTIC")  # the suite's default is off (tests/conftest.py); the product's is on
    assert cli("init").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "prediction", "--max-papers", "10").code == 0

    def picks() -> list[str]:
        result = cli("digest", "--dry-run", "--json")
        assert result.code == 0, result.err
        return [p["arxiv_id"] for p in json.loads(result.out)[0]["papers"]]

    before = picks()
    liked = ["2611.10017", "2611.10036", "2611.10044", "2611.10055"]  # time-series forecasting
    disliked = ["2611.10019", "2611.10020", "2611.10035", "2611.10024", "2611.10004", "2611.10045", "2611.10040"]
    for arxiv_id, vote in [*((i, "up") for i in liked), *((i, "down") for i in disliked)]:
        assert cli("feedback", "ada@example.org", arxiv_id, vote).code == 0
    learned = picks()
    monkeypatch.setattr(learn, "MIN_RATINGS", 1_000)  # the same clicks, Rocchio alone
    rocchio = picks()
    time_series = {"2611.10034", "2611.10038", "2611.10047", "2611.10059"}  # the ones they did not rate
    assert not time_series & set(before), "'prediction' alone finds other papers first"
    assert set(learned[:4]) == time_series, "the time-series papers they did not rate lead their digest"
    assert not (set(disliked) | set(liked)) & set(learned), "what they rated they have seen: it is not sent as news"
    assert learned != rocchio, "the model, not only Rocchio, set that order"
