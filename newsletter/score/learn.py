"""Learning from a reader: a small model per subscriber, fitted to their "more / less like this" clicks.

Rocchio (``score.lexical``, ``score.semantic``) turns each click into words and a vector added to
the profile: the tenth click moves the profile as much as the first. Once a subscriber has rated
``MIN_RATINGS`` papers, both ways, a logistic regression on the rated papers' sentence embeddings
(384-d MiniLM vectors) says what separates what they liked from what they did not, as Scholar
Inbox does. It re-ranks their candidates: the ranker's usual picks (a wider pool of them) are
re-ordered by

    score + trending/age boost + weight(ratings) · z(model logit)

where the logit is z-scored over the day's candidates, so it speaks in the same units as the fused
lexical + semantic score (itself a sum of z-scores), and the weight grows with the number of
ratings up to ``MAX_WEIGHT``. The lexical score enters through that blend, not as a feature: a
rated paper from an earlier day has no lexical score against today's index (BM25's idf is the
day's), and on the tuning split of ``bench/learning.py`` a lexical feature did worse (nDCG@10
after 50 clicks 0.918 against 0.931 without it).
The model only re-orders papers the ranker found eligible; exclusions, categories, papers
already sent and followed authors (always first) are the ranker's, never the model's.

Why scipy and not scikit-learn: scikit-learn is not a default dependency, and L2-regularised
logistic regression is a loss and its gradient handed to L-BFGS (``scipy.optimize.minimize``),
about twenty lines. Pure: vectors and records in, a model and picks out; no database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from newsletter.records import Example, Profile, RankedPaper
from newsletter.score.lexical import FOLLOWED_PLACEMENT

MIN_RATINGS = 10  # clicks before a model is fitted: fewer say too little about 384 dimensions
L2 = 1.0  # ridge penalty on the weights (not the intercept), in units of the summed log-loss
MAX_WEIGHT = 1.0  # the model's z-score weighs at most as much as the lexical or the semantic z-score
FULL_WEIGHT_RATINGS = 30  # ratings at which the model reaches MAX_WEIGHT (it grows linearly from MIN_RATINGS)
POOL = 50  # the ranker's picks re-ordered for a subscriber with a model (the digest keeps max_papers)
RATED = ("liked", "disliked")  # Example kinds that are ratings (seeds are not: nobody rated them down)


@dataclass(frozen=True)
class ReaderModel:
    """One subscriber's logistic regression: P(liked | paper vector) = σ(vector · coef + intercept)."""

    coef: np.ndarray  # one weight per embedding dimension
    intercept: float
    ratings: int  # how many clicks it was fitted on

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """The log-odds of "liked" for each row of ``vectors`` (papers × dimensions)."""
        return np.asarray(vectors, dtype=np.float64) @ self.coef + self.intercept

    @property
    def weight(self) -> float:
        """How much the model counts in the blend: grows with the ratings, capped at MAX_WEIGHT."""
        return blend_weight(self.ratings)


def blend_weight(ratings: int) -> float:
    """0 below MIN_RATINGS, then linear from MAX_WEIGHT / 2 to MAX_WEIGHT at FULL_WEIGHT_RATINGS."""
    if ratings < MIN_RATINGS:
        return 0.0
    progress = min((ratings - MIN_RATINGS) / max(FULL_WEIGHT_RATINGS - MIN_RATINGS, 1), 1.0)
    return MAX_WEIGHT * (0.5 + 0.5 * progress)


def fit(vectors: np.ndarray, liked: np.ndarray, *, l2: float | None = None) -> ReaderModel | None:
    """Fit the model to rated papers (``vectors``: papers × dimensions; ``liked``: True / False per row).

    None (no model: the ranking stays as Rocchio makes it) below MIN_RATINGS, or when every rating
    goes the same way: one class has no boundary to learn, and Rocchio already follows it.
    ``l2``: the ridge penalty, L2 unless given.
    """
    penalty = L2 if l2 is None else l2
    x = np.asarray(vectors, dtype=np.float64)
    y = np.asarray(liked, dtype=bool).astype(np.float64)
    if len(y) < MIN_RATINGS or y.min() == y.max():
        return None

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, intercept = theta[:-1], theta[-1]
        z = x @ coef + intercept
        # log(1 + e^z) - y·z, summed: the log-loss, written so that large |z| never overflows
        value = float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * penalty * coef @ coef)
        residual = 1.0 / (1.0 + np.exp(-z)) - y
        return value, np.append(x.T @ residual + penalty * coef, residual.sum())

    from scipy.optimize import minimize  # here: a fifth of a second of every command's start, for the few who rated

    result = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    return ReaderModel(coef=result.x[:-1], intercept=float(result.x[-1]), ratings=len(y))


def fit_reader(examples: Sequence[Example], vectors: Mapping[str, np.ndarray], *, l2: float | None = None) -> ReaderModel | None:
    """A subscriber's model from their examples (only ratings count, not seeds); ``vectors``: paper key → vector.

    Rated papers without a vector are left out (and do not count towards MIN_RATINGS).
    """
    rated = [e for e in examples if e.kind in RATED and e.paper.key in vectors]
    if not rated:
        return None
    return fit(np.stack([vectors[e.paper.key] for e in rated]), np.asarray([e.weight > 0 for e in rated]), l2=l2)


def zscore(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    spread = values.std() if values.size else 0.0
    return (values - (values.mean() if values.size else 0.0)) / (spread or 1.0)


def rerank(picks: Sequence[RankedPaper], *, learned: Mapping[str, float], boost: Mapping[str, float],
           weight: float, limit: int) -> list[RankedPaper]:
    """The ranker's ``picks`` (a pool, best first) re-ordered by the blend, the best ``limit`` kept.

    ``learned``: paper key → the model's logit z-scored over the day's candidates; ``boost``: paper
    key → the trending/age boost the ranker added to its order. Picks by a followed author stay
    first, in the ranker's order. Each re-ordered pick's score becomes the blended score.
    """
    followed = [p for p in picks if p.placement == FOLLOWED_PLACEMENT]
    others = [replace(p, score=p.score + weight * learned.get(p.paper.key, 0.0))
              for p in picks if p.placement != FOLLOWED_PLACEMENT]
    others.sort(key=lambda p: -(p.score + boost.get(p.paper.key, 0.0)))  # stable: ties keep the ranker's order
    return [*followed, *others][:limit]


def prepare(profiles: Sequence[Profile], vectors: Mapping[str, np.ndarray]) -> tuple[dict[int, ReaderModel], list[Profile]]:
    """Each profile's model (by position, for those who have one), and the profiles as the ranker is to see them.

    A subscriber with a model is asked for ``POOL`` picks (the model re-orders them, ``apply`` keeps
    their ``max_papers``), and their "less like this" papers leave Rocchio for the model: subtracting
    a disliked paper's words and vector from the profile also takes away the topic words it shares
    with what they like, and after a few dozen clicks, mostly "less", that pulled the ranking down
    (``bench/learning.py``: nDCG@10 0.88 with no feedback, 0.80 after 50 clicks on the tuning split).
    Their seeds and liked papers stay in Rocchio. Everyone else is returned as given.
    """
    models = {row: model for row, profile in enumerate(profiles)
              if (model := fit_reader(profile.examples, vectors)) is not None}
    # The dislikes go to the model, out of the examples; they stay papers the reader has seen (never news to them).
    asked = [replace(profile, max_papers=max(profile.max_papers, POOL),
                     examples=tuple(e for e in profile.examples if e.kind != "disliked"),
                     already_sent=profile.already_sent | {e.paper.key for e in profile.examples if e.kind == "disliked"})
             if row in models else profile
             for row, profile in enumerate(profiles)]
    return models, asked


def apply(ranked: Sequence[list[RankedPaper]], profiles: Sequence[Profile], models: Mapping[int, ReaderModel], *,
          keys: Sequence[str], candidates: np.ndarray, boost: np.ndarray) -> list[list[RankedPaper]]:
    """Re-order the picks of the profiles with a model (``ranked`` from the profiles ``prepare`` returned).

    ``keys``, ``candidates`` and ``boost``: the day's candidate papers, their vectors (rows) and their
    trending/age boost, in the same order. Profiles without a model keep their picks untouched.
    """
    out = list(ranked)
    if not models:
        return out
    boosts = dict(zip(keys, np.asarray(boost, dtype=np.float64).tolist(), strict=True))
    for row, model in models.items():
        learned = dict(zip(keys, zscore(model.logits(candidates)).tolist(), strict=True))
        out[row] = rerank(ranked[row], learned=learned, boost=boosts, weight=model.weight, limit=profiles[row].max_papers)
    return out


__all__ = ["MIN_RATINGS", "POOL", "ReaderModel", "apply", "blend_weight", "fit", "fit_reader", "prepare", "rerank", "zscore"]
