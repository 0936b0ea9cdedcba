"""BM25 ranking of one day's papers for many subscribers at once.

Every subscriber is a sparse query row; every paper a sparse row of BM25 term weights, so the
scores of a chunk of subscribers are one sparse matrix product. Phrases, exclusions, categories and
followed authors are also sparse matrices (subscriber × unique phrase/category/author, and
phrase/category/author × paper), never a Python loop over subscriber × paper.

The score of a paper for a subscriber is

    Σ over query terms t:  w_t · idf(t) · tf(t)·(k1+1) / (tf(t) + k1·(1 − b + b·len/avg_len))
    + PHRASE_BONUS · topic weight      for each multi-word topic phrase found verbatim (stemmed)

with w_t the topic's weight divided by its number of terms for topic terms, and DESCRIBE_WEIGHT
for words of the sentence about their work. Title words count TITLE_REPEAT times. A paper with an excluded phrase, outside the
subscriber's categories (when they chose any) or already sent to them is never picked; a paper by
a followed author is always picked, first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from newsletter.records import Paper, Profile, RankedPaper
from newsletter.score import text

K1 = 1.2  # BM25 term-frequency saturation (the usual 1.2–2.0)
B = 0.75  # BM25 length normalisation
TITLE_REPEAT = 2  # a word in the title says more about the paper than one in the abstract
DESCRIBE_WEIGHT = 0.5  # the free-text sentence is looser than chosen topics
PHRASE_BONUS = 2.0  # "graph neural network" verbatim beats the three words scattered
FOLLOWED_AUTHOR_BOOST = 1e6  # followed authors rank above every topical match
SEMANTIC_WEIGHT = 1.0  # weight of the semantic z-score against the lexical one (best on the labelled set)
SEMANTIC_MIN_SIMILARITY = 0.45  # cosine at which a paper counts as on topic with no word in common
CHUNK_SUBSCRIBERS = 4096  # rows per dense score block: 4096 × 2000 papers × 8 B = 64 MB


@dataclass
class PaperIndex:
    """The day's candidate papers, tokenised and weighted once for every subscriber."""

    papers: Sequence[Paper]
    vocabulary: dict[str, int]
    weights: sp.csr_matrix  # papers × terms, BM25 weights
    sequences: list[tuple[str, ...]]  # stemmed terms in order, for phrase checks
    categories: dict[str, np.ndarray] = field(default_factory=dict)  # category → paper rows
    authors: dict[str, np.ndarray] = field(default_factory=dict)  # name key → paper rows
    author_names: list[dict[str, str]] = field(default_factory=list)  # per paper: key → name as written
    _phrase_rows: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, papers: Sequence[Paper]) -> PaperIndex:
        vocabulary: dict[str, int] = {}
        rows, cols, counts, lengths, sequences = [], [], [], [], []
        for row, paper in enumerate(papers):
            title_words = [w for w in text.words(paper.title) if w not in text.STOP_WORDS and len(w) > 1]
            abstract_words = [w for w in text.words(paper.abstract) if w not in text.STOP_WORDS and len(w) > 1]
            sequence = tuple(text.stem(w) for w in [*title_words, *abstract_words])
            sequences.append(sequence)
            bag = Counter(sequence) + Counter({t: TITLE_REPEAT - 1 for t in sequence[: len(title_words)]})
            for term, count in bag.items():
                rows.append(row)
                cols.append(vocabulary.setdefault(term, len(vocabulary)))
                counts.append(count)
            lengths.append(sum(bag.values()))
        shape = (len(papers), max(len(vocabulary), 1))
        tf = sp.csr_matrix((np.asarray(counts, dtype=np.float64), (rows, cols)), shape=shape)
        index = cls(papers, vocabulary, _bm25(tf, np.asarray(lengths, dtype=np.float64)), sequences)
        index._index_metadata()
        return index

    def _index_metadata(self) -> None:
        categories: dict[str, list[int]] = {}
        authors: dict[str, list[int]] = {}
        for row, paper in enumerate(self.papers):
            for category in paper.categories:
                categories.setdefault(category.lower(), []).append(row)
            names: dict[str, str] = {}
            for name in paper.authors:
                for key in text.name_keys(name):
                    authors.setdefault(key, []).append(row)
                    names[key] = name
            self.author_names.append(names)
        self.categories = {k: np.unique(v) for k, v in categories.items()}
        self.authors = {k: np.unique(v) for k, v in authors.items()}

    def phrase_rows(self, phrase: tuple[str, ...]) -> np.ndarray:
        """Rows of papers whose text holds the stemmed phrase contiguously (cached per phrase)."""
        if phrase in self._phrase_rows:
            return self._phrase_rows[phrase]
        columns = [self.vocabulary.get(t) for t in phrase]
        if not phrase or None in columns:
            found = np.empty(0, dtype=np.int64)
        else:
            # Only papers holding every word can hold the phrase: intersect the term columns first.
            csc = self.weights.tocsc() if len(phrase) > 1 else None
            candidates = set(self.weights[:, columns[0]].nonzero()[0])
            for column in columns[1:]:
                candidates &= set(csc[:, column].nonzero()[0])  # type: ignore[index]
            found = np.asarray(sorted(r for r in candidates if _contains(self.sequences[r], phrase)), dtype=np.int64)
        self._phrase_rows[phrase] = found
        return found


def _bm25(tf: sp.csr_matrix, lengths: np.ndarray) -> sp.csr_matrix:
    n_papers = tf.shape[0]
    document_frequency = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log1p((n_papers - document_frequency + 0.5) / (document_frequency + 0.5))
    avg_length = lengths.mean() if n_papers else 1.0
    norm = K1 * (1 - B + B * lengths / max(avg_length, 1.0))
    weights = tf.copy()
    row_norm = np.repeat(norm, np.diff(tf.indptr))
    weights.data = idf[tf.indices] * tf.data * (K1 + 1) / (tf.data + row_norm)
    return weights


def _contains(sequence: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    width = len(phrase)
    first = phrase[0]
    return any(sequence[i : i + width] == phrase for i, term in enumerate(sequence) if term == first)


@dataclass
class _Queries:
    """Sparse matrices describing a chunk of subscribers against an index."""

    terms: sp.csr_matrix  # subscribers × vocabulary, query weights
    phrase_bonus: np.ndarray  # subscribers × papers
    excluded: np.ndarray  # subscribers × papers, bool
    allowed: np.ndarray  # subscribers × papers, bool (category filter)
    followed: np.ndarray  # subscribers × papers, bool
    already_sent: np.ndarray  # subscribers × papers, bool


def _row_mask(index: PaperIndex, groups: list[list[np.ndarray]]) -> np.ndarray:
    mask = np.zeros((len(groups), len(index.papers)), dtype=bool)
    for row, arrays in enumerate(groups):
        for paper_rows in arrays:
            mask[row, paper_rows] = True
    return mask


def _queries(index: PaperIndex, profiles: Sequence[Profile]) -> _Queries:
    rows, cols, values = [], [], []
    n_papers = len(index.papers)
    phrase_bonus = np.zeros((len(profiles), n_papers))
    excluded, allowed_groups, followed, sent = [], [], [], []
    key_rows = {p.key: r for r, p in enumerate(index.papers)}
    allowed = np.ones((len(profiles), n_papers), dtype=bool)
    for row, profile in enumerate(profiles):
        prefs = profile.preferences
        weights: dict[int, float] = {}
        for topic in prefs.topics:
            phrase = text.phrase_terms(topic.phrase)
            for term in phrase:
                column = index.vocabulary.get(term)
                if column is not None:
                    # A topic's words share its weight: one word of "marine biology of coral reefs" is a
                    # quarter of a match, not a whole one.
                    weights[column] = max(weights.get(column, 0.0), topic.weight / len(phrase))
            if len(phrase) > 1:
                phrase_bonus[row, index.phrase_rows(phrase)] += PHRASE_BONUS * topic.weight
        for term in text.terms(prefs.describe):
            column = index.vocabulary.get(term)
            if column is not None:
                weights.setdefault(column, DESCRIBE_WEIGHT)
        rows += [row] * len(weights)
        cols += list(weights)
        values += list(weights.values())
        excluded.append([index.phrase_rows(text.phrase_terms(x)) for x in prefs.exclude])
        if prefs.categories:
            allowed_groups.append((row, [index.categories.get(c.lower(), np.empty(0, dtype=np.int64)) for c in prefs.categories]))
        followed.append([index.authors.get(text.name_keys(a)[0], np.empty(0, dtype=np.int64))
                         for a in prefs.authors if text.name_keys(a)])
        sent.append([np.asarray([key_rows[k] for k in profile.already_sent if k in key_rows], dtype=np.int64)])
    for row, arrays in allowed_groups:
        allowed[row] = False
        for paper_rows in arrays:
            allowed[row, paper_rows] = True
    terms = sp.csr_matrix((values, (rows, cols)), shape=(len(profiles), index.weights.shape[1]))
    return _Queries(terms, phrase_bonus, _row_mask(index, excluded), allowed, _row_mask(index, followed),
                    _row_mask(index, sent))


def rank_papers(
    index: PaperIndex, profiles: Sequence[Profile], *, min_score: float, semantic: np.ndarray | None = None,
) -> list[list[RankedPaper]]:
    """Each profile's picks, best first: at most ``max_papers``, each with its reasons.

    ``semantic`` (profiles × papers cosine similarities, from ``score.semantic``) is fused with the
    lexical score when given: each is turned into a z-score over the day's papers for that profile
    and they are added (``SEMANTIC_WEIGHT``); a paper is eligible above ``min_score`` lexically or
    above ``SEMANTIC_MIN_SIMILARITY`` in meaning.
    """
    picks: list[list[RankedPaper]] = []
    weights_t = index.weights.T.tocsr()
    for start in range(0, len(profiles), CHUNK_SUBSCRIBERS):
        chunk = profiles[start : start + CHUNK_SUBSCRIBERS]
        if not index.papers:
            picks += [[] for _ in chunk]
            continue
        q = _queries(index, chunk)
        scores = np.asarray((q.terms @ weights_t).todense()) + q.phrase_bonus
        on_topic = scores >= min_score
        similarity = None
        if semantic is not None:
            similarity = semantic[start : start + len(chunk)]
            on_topic |= similarity >= SEMANTIC_MIN_SIMILARITY
            scores = _zscore(scores) + SEMANTIC_WEIGHT * _zscore(similarity)
        eligible = ~q.excluded & ~q.already_sent & ((q.allowed & on_topic) | q.followed)
        ranked = np.where(eligible, scores + q.followed * FOLLOWED_AUTHOR_BOOST, -np.inf)
        for row, profile in enumerate(chunk):
            picks.append(_top(index, profile, ranked[row], scores[row], q.followed[row],
                              None if similarity is None else similarity[row]))
    return picks


def _zscore(values: np.ndarray) -> np.ndarray:
    spread = values.std(axis=1, keepdims=True)
    return (values - values.mean(axis=1, keepdims=True)) / np.where(spread == 0, 1, spread)


def _top(index: PaperIndex, profile: Profile, ranked: np.ndarray, scores: np.ndarray,
         followed: np.ndarray, similarity: np.ndarray | None) -> list[RankedPaper]:
    count = min(profile.max_papers, int(np.isfinite(ranked).sum()))
    if count == 0:
        return []
    best = np.argpartition(-ranked, count - 1)[:count]
    best = best[np.lexsort((best, -ranked[best]))]  # score descending, ties by feed order: deterministic
    return [
        RankedPaper(paper=index.papers[r], score=float(scores[r]),
                    reasons=explain(index, profile, int(r), bool(followed[r]),
                                    None if similarity is None else float(similarity[r])))
        for r in best
    ]


def explain(index: PaperIndex, profile: Profile, row: int, followed: bool,
            similarity: float | None = None) -> tuple[str, ...]:
    """Why this paper was picked, in words a subscriber reads at a glance."""
    prefs = profile.preferences
    paper_terms = set(index.sequences[row])
    reasons: list[str] = []
    if followed:
        names = index.author_names[row]
        by = [names[text.name_keys(a)[0]] for a in prefs.authors if text.name_keys(a) and text.name_keys(a)[0] in names]
        reasons.append("by " + ", ".join(dict.fromkeys(by)) + " (followed author)")
    phrases_matched, covered = [], set()
    for topic in prefs.topics:
        phrase = text.phrase_terms(topic.phrase)
        if phrase and set(phrase) <= paper_terms and (len(phrase) == 1 or row in index.phrase_rows(phrase)):
            phrases_matched.append(topic.phrase)
            covered |= set(phrase)
    if phrases_matched:
        reasons.append("topic: " + ", ".join(f"“{p}”" for p in phrases_matched))
    # Say it in the subscriber's own words: "mentions generation", not the stem "generat".
    typed = [w for topic in prefs.topics for w in text.words(topic.phrase)] + text.words(prefs.describe)
    own_words: dict[str, str] = {}
    for word in typed:
        if word not in text.STOP_WORDS and len(word) > 1:
            own_words.setdefault(text.stem(word), word)
    other = [word for term, word in own_words.items() if term in paper_terms and term not in covered]
    if other:
        reasons.append("mentions " + ", ".join(other[:6]))
    if similarity is not None and similarity >= SEMANTIC_MIN_SIMILARITY:
        reasons.append(f"close in meaning to your interests ({similarity:.2f})")
    if prefs.categories:
        inside = [c for c in index.papers[row].categories if c.lower() in {x.lower() for x in prefs.categories}]
        if inside:
            reasons.append("in " + ", ".join(inside))
    return tuple(reasons)
