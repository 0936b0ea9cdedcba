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
a followed author is always picked, first. ``rank_papers`` adds each pick's reasons with
``score.reasons``, from the same interned matrices (``_Queries``) and for every pick at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from newsletter.records import Paper, Profile, RankedPaper
from newsletter.score import text
from newsletter.score.reasons import build_reasons

K1 = 1.2  # BM25 term-frequency saturation (the usual 1.2–2.0)
B = 0.75  # BM25 length normalisation
TITLE_REPEAT = 2  # a word in the title says more about the paper than one in the abstract
DESCRIBE_WEIGHT = 0.5  # the free-text sentence is looser than chosen topics
PHRASE_BONUS = 2.0  # "graph neural network" verbatim beats the three words scattered
FOLLOWED_AUTHOR_BOOST = 1e6  # followed authors rank above every topical match
SEMANTIC_WEIGHT = 1.0  # weight of the semantic z-score against the lexical one (best on the labelled set)
SEMANTIC_MIN_SIMILARITY = 0.45  # cosine at which a paper counts as on topic with no word in common
TRENDING_WEIGHT = 0.1  # per log(1 + upvotes): 100 upvotes add ~0.46, a paper without upvote data adds nothing
# A tie-breaker among papers about as relevant, not a ranking of its own: the fused score is a sum of two
# z-scores, and 0.3 (1.1–1.5 for the demo's 34–150 upvotes) put popular papers above clearly better ones
# (nDCG@10 on the labelled tuning profiles with the demo's trending data: 0.815 at 0.3, 0.836 at 0.1, 0.837 at 0).
RECENCY_PENALTY_PER_DAY = 0.2  # a paper first seen three days ago ranks ~0.6 lower than today's
NEAR_DUPLICATE_SIMILARITY = 0.85  # cosine of two papers' BM25 vectors above which only the better one is picked
EXTRA_CANDIDATES = 5  # looked at beyond max_papers, to replace near-duplicates
EXAMPLE_TERMS = 15  # an example paper stands for its 15 most telling words (tf·idf over the day's papers)
EXAMPLE_WEIGHT = 3.0  # the weight those words share: an example counts about as much as a three-word topic
SCORING_THREADS = 2  # the machines this runs on have two cores
FOLLOWED_PLACEMENT = "followed author: always placed first"
CHUNK_SUBSCRIBERS = 2048  # profiles per dense block: 2048 × 2000 papers × 4 B = 16 MB an array


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
    key_rows: dict[str, int] = field(default_factory=dict)  # paper key → row
    idf: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per vocabulary column
    boost: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # trending minus age, per paper
    trending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # the trending part of boost
    duplicate_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # row of the first of its near-duplicates
    _phrase_rows: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)
    # What ``score.reasons`` works out once per index: generic words, each paper's words and phrases.
    reason_cache: dict[str, object] = field(default_factory=dict)

    @classmethod
    def build(cls, papers: Sequence[Paper], *, now: dt.datetime | None = None, trending_weight: float = TRENDING_WEIGHT,
              recency_penalty_per_day: float = RECENCY_PENALTY_PER_DAY) -> PaperIndex:
        """Index the day's papers; ``now`` (naive UTC) turns their age into the recency penalty."""
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
        weights, idf = _bm25(tf, np.asarray(lengths, dtype=np.float64))
        index = cls(papers, vocabulary, weights, sequences, idf=idf)
        index._index_metadata()
        index.trending, index.boost = _boost(papers, now, trending_weight, recency_penalty_per_day)
        index.duplicate_of = _near_duplicates(index.weights)
        return index

    def as_of(self, now: dt.datetime | None, *, trending_weight: float = TRENDING_WEIGHT,
              recency_penalty_per_day: float = RECENCY_PENALTY_PER_DAY) -> PaperIndex:
        """The same papers' index with the boost (trending, age) as of ``now``: the text part is shared,
        so windows that differ only by their end moment (send minutes) cost a boost, not an index."""
        # The text-derived caches are shared; "placements" (trending, age) is the boost's, so it is not.
        index = dataclasses.replace(self, reason_cache={k: v for k, v in self.reason_cache.items() if k != "placements"})
        index.trending, index.boost = _boost(self.papers, now, trending_weight, recency_penalty_per_day)
        return index

    def _index_metadata(self) -> None:
        categories: dict[str, list[int]] = {}
        authors: dict[str, list[int]] = {}
        self.key_rows = {paper.key: row for row, paper in enumerate(self.papers)}
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

    def excluded(self, exclude: Sequence[str]) -> set[str]:
        """Keys of the papers that hold any of these excluded phrases, matched as the ranking matches them."""
        return {self.papers[row].key for phrase in exclude for row in self.exclusion_rows(phrase.lower())}

    def exclusion_rows(self, phrase: str) -> np.ndarray:
        """Rows of papers that hold an excluded phrase in any of its forms (``text.exclusion_forms``)."""
        found = [self.phrase_rows(form) for form in text.exclusion_forms(phrase)]
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)

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
            found = np.asarray(sorted(r for r in candidates if text.contains_phrase(self.sequences[r], phrase)), dtype=np.int64)
        self._phrase_rows[phrase] = found
        return found


def _boost(papers: Sequence[Paper], now: dt.datetime | None, trending_weight: float,
           per_day: float) -> tuple[np.ndarray, np.ndarray]:
    """(trending, trending minus age): the boost is added to a relevant paper's score, never making one relevant."""
    upvotes = np.asarray([p.upvotes or 0 for p in papers], dtype=np.float32)
    trending = (trending_weight * np.log1p(np.maximum(upvotes, 0))).astype(np.float32)
    boost = trending.copy()
    if now is not None:
        ages = np.asarray([max((now - (p.first_seen_at or now)).total_seconds() / 86_400, 0.0) for p in papers],
                          dtype=np.float32)
        boost -= per_day * ages
    return trending, boost.astype(np.float32)


def _near_duplicates(weights: sp.csr_matrix) -> np.ndarray:
    """For each paper, the first paper (in feed order) it nearly duplicates, or itself."""
    norms = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=1)).ravel())
    unit = sp.diags(1 / np.where(norms == 0, 1, norms)) @ weights
    similar = (unit @ unit.T).tocoo()
    first = np.arange(weights.shape[0])
    close = (similar.data >= NEAR_DUPLICATE_SIMILARITY) & (similar.row < similar.col)
    for a, b in sorted(zip(similar.row[close].tolist(), similar.col[close].tolist(), strict=True)):
        first[b] = first[a]  # pairs come in order, so a chain points at its earliest paper
    return first


def _bm25(tf: sp.csr_matrix, lengths: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    n_papers = tf.shape[0]
    document_frequency = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log1p((n_papers - document_frequency + 0.5) / (document_frequency + 0.5))
    avg_length = lengths.mean() if n_papers else 1.0
    norm = K1 * (1 - B + B * lengths / max(avg_length, 1.0))
    weights = tf.copy()
    row_norm = np.repeat(norm, np.diff(tf.indptr))
    weights.data = idf[tf.indices] * tf.data * (K1 + 1) / (tf.data + row_norm)
    return weights, idf


class _Interned:
    """Distinct values (topic phrases, sentences, exclusions ...) across all profiles, each a column."""

    def __init__(self) -> None:
        self.ids: dict[object, int] = {}
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.values: list[float] = []

    def add(self, row: int, key: object, value: float = 1.0) -> None:
        self.rows.append(row)
        self.cols.append(self.ids.setdefault(key, len(self.ids)))
        self.values.append(value)

    def by_profile(self, n_profiles: int) -> sp.csr_matrix:
        """profiles × distinct values."""
        return sp.csr_matrix((np.asarray(self.values, dtype=np.float32), (self.rows, self.cols)),
                             shape=(n_profiles, max(len(self.ids), 1)))


def _rows_matrix(groups: Sequence[np.ndarray], n_papers: int, value: float = 1.0) -> sp.csr_matrix:
    """distinct values × papers, from each value's paper rows."""
    rows = np.repeat(np.arange(len(groups)), [len(g) for g in groups]) if groups else np.empty(0, dtype=np.int64)
    cols = np.concatenate(groups) if groups else np.empty(0, dtype=np.int64)
    return sp.csr_matrix((np.full(len(cols), value, dtype=np.float32), (rows, cols)),
                         shape=(max(len(groups), 1), max(n_papers, 1)))


@dataclass
class _Queries:
    """Every profile as rows of sparse matrices over the distinct values that profiles share.

    Building these is the only loop over subscribers, and it only looks strings up in dicts; the
    text work (stemming, phrase search) is done once per distinct topic, sentence or exclusion.
    Each paper-level mask is kept as two factors (profiles × values, values × papers) and multiplied
    per chunk: the product for all profiles at once can be nearly dense ("cs.LG" is everywhere).
    """

    terms: sp.csr_matrix  # profiles × vocabulary: query weights
    by_topic: sp.csr_matrix  # profiles × distinct topics (weights)
    topic_phrases: sp.csr_matrix  # distinct topics × papers: the verbatim-phrase bonus
    by_exclusion: sp.csr_matrix
    exclusion_papers: sp.csr_matrix
    by_category: sp.csr_matrix
    category_papers: sp.csr_matrix
    restricts_categories: np.ndarray  # profiles: chose categories at all
    by_author: sp.csr_matrix
    author_papers: sp.csr_matrix
    already_sent: sp.csr_matrix  # profiles × papers
    thresholds: np.ndarray  # profiles: their minimum score
    meaning_gates: np.ndarray  # profiles: the cosine at which a paper is on topic with no word in common
    # What reasons name: the distinct topic phrases and sentences, and which profile holds which.
    topic_texts: list[str] = field(default_factory=list)
    topic_terms: sp.csr_matrix = field(default_factory=lambda: sp.csr_matrix((0, 0)))  # distinct topics × vocabulary
    by_sentence: sp.csr_matrix = field(default_factory=lambda: sp.csr_matrix((0, 0)))
    sentence_terms: sp.csr_matrix = field(default_factory=lambda: sp.csr_matrix((0, 0)))  # distinct sentences × vocabulary
    sentence_texts: list[str] = field(default_factory=list)

    def sentence_of(self, profile: int) -> str:
        """The profile's sentence about their work, "" when none."""
        start, end = self.by_sentence.indptr[profile], self.by_sentence.indptr[profile + 1]
        return self.sentence_texts[self.by_sentence.indices[start]] if end > start else ""

    @classmethod
    def build(cls, index: PaperIndex, profiles: Sequence[Profile], *, min_score: float) -> _Queries:
        topics, sentences, exclusions, categories, authors, examples = (_Interned() for _ in range(6))
        sent_rows: list[int] = []  # (profile, paper row) pairs of papers already sent
        sent_papers: list[int] = []
        example_papers: dict[str, Paper] = {}
        thresholds = np.full(len(profiles), min_score, dtype=np.float32)
        key_rows = index.key_rows
        restricts = np.zeros(len(profiles), dtype=bool)
        add_topic, add_sentence, add_exclusion = topics.add, sentences.add, exclusions.add
        add_category, add_author = categories.add, authors.add
        for row, profile in enumerate(profiles):
            prefs = profile.preferences
            for topic in prefs.topics:
                add_topic(row, topic.phrase.lower(), topic.weight)
            if prefs.describe:
                add_sentence(row, prefs.describe)
            for phrase in prefs.exclude:
                add_exclusion(row, phrase.lower())
            if prefs.categories:
                restricts[row] = True
                for category in prefs.categories:
                    add_category(row, category.lower())
            for name in prefs.authors:
                add_author(row, name)
            # Papers already sent, and the ones the subscriber named (seeds) or rated, sent or not: not news to them.
            # (A paper rated from the command line came back as its own "similar to a paper you liked".)
            named = [e.paper.key for e in profile.examples]
            for key in (*profile.already_sent, *named):
                if key in key_rows:
                    sent_rows.append(row)
                    sent_papers.append(key_rows[key])
            for example in profile.examples:
                examples.add(row, example.paper.key, example.weight)
                example_papers.setdefault(example.paper.key, example.paper)
            if prefs.min_score is not None:
                thresholds[row] = prefs.min_score
        n, n_papers = len(profiles), len(index.papers)
        topic_terms, topic_phrases = _topic_matrices(index, list(topics.ids))
        by_topic = topics.by_profile(n)
        empty = np.empty(0, dtype=np.int64)
        author_rows = []
        for author_name in authors.ids:
            keys = text.name_keys(str(author_name))
            author_rows.append(index.authors.get(keys[0], empty) if keys else empty)
        by_sentence, sentence_terms = sentences.by_profile(n), _sentence_matrix(list(sentences.ids), index.vocabulary)
        terms = by_topic @ topic_terms + by_sentence @ sentence_terms
        if examples.ids:
            terms = terms + examples.by_profile(n) @ _example_matrix(index, [example_papers[str(k)] for k in examples.ids])
        return cls(
            terms=terms.tocsr(),
            by_topic=by_topic,
            topic_phrases=topic_phrases,
            by_exclusion=exclusions.by_profile(n),
            exclusion_papers=_rows_matrix([index.exclusion_rows(str(x)) for x in exclusions.ids], n_papers),
            by_category=categories.by_profile(n),
            category_papers=_rows_matrix([index.categories.get(str(c), empty) for c in categories.ids], n_papers),
            restricts_categories=restricts,
            by_author=authors.by_profile(n),
            author_papers=_rows_matrix(author_rows, n_papers),
            already_sent=sp.csr_matrix((np.ones(len(sent_rows), dtype=np.float32), (sent_rows, sent_papers)),
                                       shape=(n, max(n_papers, 1))),
            thresholds=thresholds,
            meaning_gates=meaning_gates(thresholds, min_score=min_score),
            topic_texts=[str(t) for t in topics.ids],
            topic_terms=topic_terms,
            by_sentence=by_sentence,
            sentence_terms=sentence_terms,
            sentence_texts=[str(x) for x in sentences.ids],
        )


def _topic_matrices(index: PaperIndex, phrases: list[object]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """distinct topics × vocabulary (each word weighs 1/len) and × papers (the verbatim-phrase bonus)."""
    rows, cols, values, phrase_groups = [], [], [], []
    for row, phrase_text in enumerate(phrases):
        phrase = text.phrase_terms(str(phrase_text))
        for term in phrase:
            column = index.vocabulary.get(term)
            if column is not None:
                # A topic's words share its weight: one word of "marine biology of coral reefs" is a
                # quarter of a match, not a whole one.
                rows.append(row)
                cols.append(column)
                values.append(1.0 / len(phrase))
        phrase_groups.append(index.phrase_rows(phrase) if len(phrase) > 1 else np.empty(0, dtype=np.int64))
    shape = (max(len(phrases), 1), index.weights.shape[1])
    terms = sp.csr_matrix((np.asarray(values, dtype=np.float32), (rows, cols)), shape=shape)
    return terms, _rows_matrix(phrase_groups, len(index.papers), PHRASE_BONUS)


def example_terms(index: PaperIndex, paper: Paper) -> dict[int, float]:
    """An example paper's most telling words in the day's vocabulary (column → tf·idf), at most EXAMPLE_TERMS."""
    counts = Counter(t for t in text.terms(f"{paper.title} {paper.title} {paper.abstract}") if t in index.vocabulary)
    weighted = {index.vocabulary[t]: c * index.idf[index.vocabulary[t]] for t, c in counts.items()}
    return dict(sorted(weighted.items(), key=lambda item: (-item[1], item[0]))[:EXAMPLE_TERMS])


def _example_matrix(index: PaperIndex, papers: list[Paper]) -> sp.csr_matrix:
    """distinct example papers × vocabulary: their telling words, sharing EXAMPLE_WEIGHT by tf·idf."""
    rows, cols, values = [], [], []
    for row, paper in enumerate(papers):
        terms = example_terms(index, paper)
        total = sum(terms.values()) or 1.0
        for column, weight in terms.items():
            rows.append(row)
            cols.append(column)
            values.append(EXAMPLE_WEIGHT * weight / total)
    return sp.csr_matrix((np.asarray(values, dtype=np.float32), (rows, cols)),
                         shape=(max(len(papers), 1), index.weights.shape[1]))


def _sentence_matrix(sentences: list[object], vocabulary: dict[str, int]) -> sp.csr_matrix:
    """distinct sentences × vocabulary: DESCRIBE_WEIGHT for each content word that occurs in the day's papers."""
    rows, cols = [], []
    for row, sentence in enumerate(sentences):
        for column in {vocabulary[t] for t in text.terms(str(sentence)) if t in vocabulary}:
            rows.append(row)
            cols.append(column)
    return sp.csr_matrix((np.full(len(rows), DESCRIBE_WEIGHT, dtype=np.float32), (rows, cols)),
                         shape=(max(len(sentences), 1), max(len(vocabulary), 1)))


@dataclass
class TopPicks:
    """The selection for a chunk of profiles, as arrays: no per-pick objects until they are needed."""

    rows: np.ndarray  # profiles × k paper rows, best first; -1 where fewer were eligible
    scores: np.ndarray  # profiles × k
    followed: np.ndarray  # profiles × k, bool
    similarity: np.ndarray | None  # profiles × k cosine, when the semantic ranker took part
    queries: _Queries | None = None  # the profiles as the scorer saw them: reasons reuse its interning


def select_top(
    index: PaperIndex, profiles: Sequence[Profile], *, min_score: float, semantic: np.ndarray | None = None,
) -> TopPicks:
    """The best ``max_papers`` eligible papers of each profile, vectorised over profiles and papers.

    Per chunk of profiles: one sparse × dense product gives every score; the masks (exclusions,
    papers already sent, followed authors, categories) are sparse and applied at their coordinates
    only, so a chunk costs a few passes over its dense block whatever a profile holds.
    """
    n, k = len(profiles), max((p.max_papers for p in profiles), default=1)
    n_papers = len(index.papers)
    if not n_papers or not n:
        return TopPicks(np.full((n, k), -1), np.zeros((n, k)), np.zeros((n, k), dtype=bool), None)
    k = min(k, n_papers)
    limits = np.asarray([p.max_papers for p in profiles])
    q = _Queries.build(index, profiles, min_score=min_score)
    weights_t = index.weights.T.toarray().astype(np.float32)  # vocabulary × papers: ~25 MB for 2,000 papers

    def chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        part = slice(start, min(start + CHUNK_SUBSCRIBERS, n))
        scores = np.asarray(q.terms[part] @ weights_t, dtype=np.float32)
        _add_at(scores, q.by_topic[part] @ q.topic_phrases)
        on_topic = scores >= q.thresholds[part, None]
        similarity = None
        if semantic is not None:
            similarity = semantic[part]
            on_topic |= similarity >= q.meaning_gates[part, None]
            scores = (_zscore(scores) + SEMANTIC_WEIGHT * _zscore(similarity)).astype(np.float32)
        ranked = np.where(on_topic, scores, np.float32(-np.inf))
        restricted = np.flatnonzero(q.restricts_categories[part])
        if restricted.size:
            block = ranked[restricted]
            block[(q.by_category[part][restricted] @ q.category_papers).toarray() == 0] = -np.inf
            ranked[restricted] = block
        rows, cols = (q.by_author[part] @ q.author_papers).nonzero()
        ranked[rows, cols] = scores[rows, cols] + FOLLOWED_AUTHOR_BOOST  # whatever the score or the category
        for mask in (q.by_exclusion[part] @ q.exclusion_papers, q.already_sent[part]):
            rows, cols = mask.nonzero()
            ranked[rows, cols] = -np.inf
        ranked += index.boost  # trending and recency reorder relevant papers; -inf stays -inf
        # argpartition of the negated block: on rows that are mostly -inf, selecting the low end is ~8x
        # faster than selecting the high end.
        wanted = min(k + EXTRA_CANDIDATES, n_papers)
        candidates = np.sort(np.argpartition(-ranked, wanted - 1, axis=1)[:, :wanted], axis=1)
        order = np.argsort(-np.take_along_axis(ranked, candidates, axis=1), axis=1, kind="stable")  # ties: feed order
        best = np.take_along_axis(candidates, order, axis=1)
        best, usable = _drop_near_duplicates(best, np.isfinite(np.take_along_axis(ranked, best, axis=1)), index.duplicate_of)
        best, usable = best[:, :k], usable[:, :k]
        best_ranked = np.take_along_axis(ranked, best, axis=1)
        valid = usable & (np.arange(k) < limits[part, None])
        return (np.where(valid, best, -1), np.take_along_axis(scores, best, axis=1), best_ranked > FOLLOWED_AUTHOR_BOOST / 2,
                None if similarity is None else np.take_along_axis(similarity, best, axis=1))

    # Chunks are independent and numpy / scipy release the GIL in these kernels: use both cores.
    with ThreadPoolExecutor(max_workers=SCORING_THREADS) as pool:
        results = list(pool.map(chunk, range(0, n, CHUNK_SUBSCRIBERS)))
    out_rows, out_scores, out_followed, similarities = zip(*results, strict=True)
    out_similarity = [s for s in similarities if s is not None]
    return TopPicks(np.vstack(out_rows), np.vstack(out_scores), np.vstack(out_followed),
                    np.vstack(out_similarity) if out_similarity else None, q)


def _drop_near_duplicates(best: np.ndarray, usable: np.ndarray, duplicate_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the best-ranked of near-duplicate papers in each row; the others move to the end, unusable.

    Only rows that hold a near-duplicate pair are touched, one at a time: they are rare.
    """
    groups = np.where(usable, duplicate_of[best], -1 - np.arange(best.shape[1]))  # unranked entries never collide
    for row in np.flatnonzero((np.diff(np.sort(groups, axis=1), axis=1) == 0).any(axis=1)):
        seen: set[int] = set()
        keep = []
        for i, group in enumerate(groups[row]):
            if group not in seen:
                seen.add(group)
                keep.append(i)
        dropped = [i for i in range(best.shape[1]) if i not in set(keep)]
        order = keep + dropped
        best[row], usable[row] = best[row, order], usable[row, order]
        usable[row, len(keep):] = False
    return best, usable


def meaning_gates(thresholds: np.ndarray, *, min_score: float) -> np.ndarray:
    """Each profile's cosine gate for a paper that shares no words, raised with its own minimum score.

    A subscriber's ``--min-score`` is in lexical (BM25) units; raising it made only the word matches
    stricter, while papers close in meaning passed as before. The gate keeps the proportion: a minimum
    score k times the installation's leaves 1/k of the distance from ``SEMANTIC_MIN_SIMILARITY`` to a
    perfect match (twice the default: 0.725). It never falls below ``SEMANTIC_MIN_SIMILARITY``: a lower
    minimum admits more word matches, and cosines below 0.45 are no evidence of anything (at 0.175,
    nine papers in ten of a day's listing passed for any topic).
    """
    if min_score <= 0:  # every paper passes on words already; the installation's gate stands
        return np.full(len(thresholds), SEMANTIC_MIN_SIMILARITY, dtype=np.float32)
    strictness = np.maximum(thresholds / np.float32(min_score), 1.0)
    return (1 - (1 - SEMANTIC_MIN_SIMILARITY) / strictness).astype(np.float32)


def _add_at(dense: np.ndarray, sparse: sp.csr_matrix) -> None:
    coo = sparse.tocoo()
    np.add.at(dense, (coo.row, coo.col), coo.data)


def rank_papers(
    index: PaperIndex, profiles: Sequence[Profile], *, min_score: float, semantic: np.ndarray | None = None,
) -> list[list[RankedPaper]]:
    """Each profile's picks, best first: at most ``max_papers``, each with its reasons.

    ``semantic`` (profiles × papers cosine similarities, from ``score.semantic``) is fused with the
    lexical score when given: each is turned into a z-score over the day's papers for that profile
    and they are added (``SEMANTIC_WEIGHT``); a paper is eligible above ``min_score`` lexically or
    above ``SEMANTIC_MIN_SIMILARITY`` in meaning.
    """
    top = select_top(index, profiles, min_score=min_score, semantic=semantic)
    if top.queries is None:  # no papers or no profiles: nothing picked
        return [[] for _ in profiles]
    reasons, counts = build_reasons(index, profiles, top, top.queries, semantic_min_similarity=SEMANTIC_MIN_SIMILARITY)
    valid = np.arange(top.rows.shape[1]) < counts[:, None]  # a profile's picks are its leading rows
    papers, placements = index.papers, _placements(index)
    flat = [RankedPaper(papers[row], score, why, FOLLOWED_PLACEMENT if by_followed else placements[row])
            for row, score, why, by_followed in zip(top.rows[valid].tolist(), top.scores[valid].tolist(), reasons,
                                                    top.followed[valid].tolist(), strict=True)]
    ends = np.cumsum(counts).tolist()
    picks = [flat[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    return picks


def _placements(index: PaperIndex) -> list[str]:
    """Each paper's placement when it is not by a followed author (the same for every subscriber)."""
    found = index.reason_cache.get("placements")
    if not isinstance(found, list):
        found = index.reason_cache["placements"] = [placement(index, row, False) for row in range(len(index.papers))]
    return found


def placement(index: PaperIndex, row: int, followed: bool) -> str:
    """What besides relevance set the paper's place in the digest ("" when nothing did)."""
    if followed:
        return FOLLOWED_PLACEMENT
    trending, age = float(index.trending[row]), float(index.trending[row] - index.boost[row])
    parts = ([f"trending +{trending:.2f}"] if trending >= 0.005 else []) + ([f"age −{age:.2f}"] if age >= 0.005 else [])
    return ", ".join(parts)


def _zscore(values: np.ndarray) -> np.ndarray:
    spread = values.std(axis=1, keepdims=True)
    return (values - values.mean(axis=1, keepdims=True)) / np.where(spread == 0, 1, spread)
