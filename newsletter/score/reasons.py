"""Why each paper was picked, in words the reader recognises, for every pick of a day at once. Pure.

A reason names something the reader gave us or can check at a glance: their own topic phrase
(``topic: “diffusion models”``), a phrase of the paper that matches a topic or their description
(``matches “sequential recommendation”: “session-based recommendation”``), their followed author,
their seed paper's title, the interest closest to a pick the semantic ranker found
(``close in meaning to “keeping LLMs up to date”``), its upvotes, their categories. Never a single
generic word: a word in a fifth of the day's papers, or academic filler ("method", "data",
"learning"), is no evidence on its own.

The work is done per distinct (interest, paper), not per pick: a day has a few hundred distinct
topics and a few thousand papers, while 100,000 subscribers have a million picks. Which topics and
which words of a description a pick shares with its paper comes from the scorer's own interned
matrices (``lexical._Queries``) and one sorted lookup of (paper, term) pairs for all picks at once;
words are only looked at, and phrases cut from the paper, once per distinct (interest, paper) shown.
Each pick's reasons are a row of ids into a table of distinct strings until the tuples are made.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.sparse as sp

from newsletter.records import Example, Profile
from newsletter.score import text
from newsletter.score.semantic import sentence_phrase
from newsletter.wording import ELLIPSIS

if TYPE_CHECKING:
    from newsletter.score.lexical import PaperIndex, TopPicks, _Queries

GENERIC_DOCUMENT_SHARE = 0.2  # a word in a fifth of the day's papers tells a reader nothing about one of them
MIN_PAPERS_FOR_SHARE = 20  # below that, document frequency is noise and only the filler list counts
# Words abstracts use whatever their subject: on their own they are never a reason.
ACADEMIC_FILLER = frozenset(text.stem(word) for word in """
    text sample samples sampling learning learn learned model models modeling data method methods approach task tasks
    performance result results framework system systems problem problems analysis paper work study experiment
    experiments experimental efficient effective effectively novel new existing large small high low different various
    multiple several key important significant significantly improve improved improves improvement achieve achieves
    demonstrate show provide present introduce use set case level number way able across within time first one two
    three benchmark benchmarks dataset datasets evaluation evaluate training train trained setting settings technique
    techniques application applications general information process state art better best strong simple real world
    recent prior previous propose proposed challenge challenges challenging address enable enables outperform
    outperforms baseline baselines quality scale including include leverage further extensive empirical theoretical
    make makes need needs good many much often without given thus order help faster cheaper easier larger smaller
    stronger higher lower improving efficiently keep keeps old""".split())
MAX_PHRASE_WORDS = 4  # a phrase of the paper, not a sentence
MAX_PHRASE_CHARS = 48
INTEREST_CHARS = 48  # a description quoted in a reason, cut at a word
SEED_TITLE_CHARS = 60
MAX_PARTIAL_TOPICS = 2  # "matches …" reasons per pick, strongest first
EXAMPLE_REASON_OVERLAP = 4  # shared telling words for "similar to your seed paper …"
_COMPOUND_GAP = re.compile(r"-[A-Za-z]+[ -]")  # the stop word inside a compound: "session-based recommendation"
_PUNCTUATION = re.compile(r"[,.;:()\[\]{}!?\"“”]")  # what ends a phrase between two of its words


def clip(phrase: str, width: int) -> str:
    """``phrase`` in at most ``width`` characters, never cut inside a word (a word longer than that is kept whole)."""
    if len(phrase) <= width:
        return phrase
    cut = phrase[: width - 1]
    if phrase[len(cut)] != " ":
        head, space, _ = cut.rpartition(" ")
        cut = head if space else phrase.split(" ", 1)[0]
    return cut.rstrip(" ,;:.-–—") + ELLIPSIS


def quoted(phrase: str) -> str:
    return f"“{phrase}”"


class _Token(NamedTuple):
    term: str  # stemmed, as in ``PaperIndex.sequences``
    field: int  # 0 title, 1 abstract
    start: int
    end: int


class IndexWords:
    """What reasons need of a day's index, worked out once per index and kept on it."""

    def __init__(self, index: PaperIndex) -> None:
        self.index = index
        n_papers = len(index.papers)
        share = np.bincount(index.weights.indices, minlength=index.weights.shape[1]) / max(n_papers, 1)
        filler = np.zeros(index.weights.shape[1], dtype=bool)
        for term in ACADEMIC_FILLER & index.vocabulary.keys():
            filler[index.vocabulary[term]] = True
        self.generic = filler | ((share >= GENERIC_DOCUMENT_SHARE) if n_papers >= MIN_PAPERS_FOR_SHARE else False)
        weights = index.weights.tocsr()
        weights.sort_indices()
        # Every (paper, term) of the index as one sorted key: "does paper r hold term t" for millions of
        # pairs is one searchsorted, with no rows of the paper matrix copied per pick.
        self.n_terms = weights.shape[1]
        self.paper_keys = np.repeat(np.arange(weights.shape[0], dtype=np.int64), np.diff(weights.indptr)) * self.n_terms \
            + weights.indices
        self.paper_weights = weights.data
        self.partial_reasons: dict[tuple[str, int], str] = {}
        self.terms = list(index.vocabulary)  # column → term: columns were numbered in insertion order
        self._tokens: dict[int, list[_Token]] = {}
        self._positions: dict[int, dict[str, list[int]]] = {}
        self._phrases: dict[tuple[int, tuple[str, ...]], str] = {}
        self._weights: dict[int, dict[int, float]] = {}

    @classmethod
    def of(cls, index: PaperIndex) -> IndexWords:
        found = index.reason_cache.get("words")
        if not isinstance(found, IndexWords):
            found = index.reason_cache["words"] = cls(index)
        return found

    def is_generic(self, term: str) -> bool:
        column = self.index.vocabulary.get(term)
        return term in ACADEMIC_FILLER if column is None else bool(self.generic[column])

    def lookup(self, rows: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each (paper row, vocabulary column): whether the paper holds the term, and its BM25 weight there."""
        keys = rows.astype(np.int64) * self.n_terms + columns
        at = np.minimum(np.searchsorted(self.paper_keys, keys), max(len(self.paper_keys) - 1, 0))
        held = self.paper_keys[at] == keys if len(self.paper_keys) else np.zeros(len(keys), dtype=bool)
        return held, np.where(held, self.paper_weights[at] if len(self.paper_weights) else 0.0, 0.0)

    def weights(self, row: int) -> dict[int, float]:
        found = self._weights.get(row)
        if found is None:
            start, end = self.index.weights.indptr[row], self.index.weights.indptr[row + 1]
            found = self._weights[row] = dict(zip(self.index.weights.indices[start:end].tolist(),
                                                  self.index.weights.data[start:end].tolist(), strict=True))
        return found

    def tokens(self, row: int) -> list[_Token]:
        """The paper's content words in index order, with where each stands in its title or abstract."""
        cached = self._tokens.get(row)
        if cached is not None:
            return cached
        paper = self.index.papers[row]
        terms = self.index.sequences[row]  # the same words, stemmed, in the same order: no stemming again
        found: list[_Token] = []
        positions: dict[str, list[int]] = {}
        stop_words, make = text.STOP_WORDS, tuple.__new__
        for field, written in enumerate((paper.title, paper.abstract)):
            for match in text.TOKEN.finditer(written.lower()):
                word = match.group()
                if word not in stop_words and len(word) > 1:
                    term = terms[len(found)]
                    positions.setdefault(term, []).append(len(found))
                    found.append(make(_Token, (term, field, match.start(), match.end())))
        self._tokens[row], self._positions[row] = found, positions
        return found

    def positions(self, row: int) -> dict[str, list[int]]:
        """Where each term of the paper stands in ``tokens(row)``."""
        self.tokens(row)
        return self._positions[row]

    def phrase(self, row: int, anchors: Sequence[str]) -> str:
        """``_phrase``, cached per day: many subscribers' interests meet the same words of the same paper."""
        key = (row, tuple(anchors))
        found = self._phrases.get(key)
        if found is None:
            found = self._phrases[key] = self._phrase(row, anchors)
        return found

    def _phrase(self, row: int, anchors: Sequence[str]) -> str:
        """A short phrase of the paper around its best occurrence of ``anchors[0]`` (stems), as written there, with
        as many of the other anchors as stand beside it."""
        tokens = self.tokens(row)
        wanted = set(anchors)
        best, best_hits = -1, 0
        for position in self.positions(row).get(anchors[0], ()):  # centred on the first anchor; the others may join it
            token = tokens[position]
            near = {t.term for t in tokens[max(position - 2, 0) : position + 3] if t.field == token.field} & wanted
            if best < 0 or len(near) > best_hits or (len(near) == best_hits and token.field < tokens[best].field):
                best, best_hits = position, len(near)
        if best < 0:
            return ""
        first = last = best
        while last + 1 < len(tokens) and last - first + 1 < MAX_PHRASE_WORDS and tokens[last + 1].term in wanted \
                and self._joined(row, tokens[last], tokens[last + 1]):
            last += 1
        while first > 0 and last - first + 1 < MAX_PHRASE_WORDS and tokens[first - 1].term in wanted \
                and self._joined(row, tokens[first - 1], tokens[first]):
            first -= 1
        if first == last:  # one word: add the words written right beside it ("LLM Agents", "Lifelong Model Editing")
            while last + 1 < len(tokens) and last - first + 1 < MAX_PHRASE_WORDS \
                    and self._joined(row, tokens[last], tokens[last + 1], adjacent=True):
                last += 1
            if first == last and first > 0 and self._joined(row, tokens[first - 1], tokens[first], adjacent=True):
                first -= 1
        written = (self.index.papers[row].title, self.index.papers[row].abstract)[tokens[first].field]
        return clip(written[tokens[first].start : tokens[last].end], MAX_PHRASE_CHARS)

    def _joined(self, row: int, left: _Token, right: _Token, *, adjacent: bool = False) -> bool:
        """Two words of one phrase: same field, no punctuation and at most two stop words between them
        (when ``adjacent``: only a space, a hyphen or a hyphenated stop word, as in "session-based")."""
        if left.field != right.field:
            return False
        gap = (self.index.papers[row].title, self.index.papers[row].abstract)[left.field][left.end : right.start]
        if adjacent:
            return gap in (" ", "-") or bool(_COMPOUND_GAP.fullmatch(gap))
        return len(gap) <= 16 and len(gap.split()) <= 2 and not _PUNCTUATION.search(gap)

    def partial_reason(self, phrase_text: str, row: int) -> str:
        """``matches “topic”: “phrase of the paper”`` for a topic found in part, "" when what it shares says nothing."""
        key = (phrase_text, row)
        found = self.partial_reasons.get(key)
        if found is None:
            weights = self.weights(row)
            present = [t for t in dict.fromkeys(text.phrase_terms(phrase_text)) if self.index.vocabulary.get(t, -1) in weights]
            specific = [t for t in present if not self.is_generic(t)]
            # The rarest shared word leads the phrase; two of the topic's words written together ("language
            # models" for "large language models") say something even when each is common, one alone never does.
            present.sort(key=lambda t: (self.is_generic(t), -self.index.idf[self.index.vocabulary[t]]))
            phrase = self.phrase(row, present) if present else ""
            joined = len({t for t in text.phrase_terms(phrase) if t in present}) > 1
            found = f"matches {quoted(phrase_text)}: {quoted(phrase)}" if phrase and (specific or joined) else ""
            self.partial_reasons[key] = found
        return found


class _Strings:
    """Distinct reason strings, each an id: a pick's reasons are a row of ids."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.values: list[str] = []

    def id(self, value: str) -> int:
        found = self.ids.get(value)
        if found is None:
            found = self.ids[value] = len(self.values)
            self.values.append(value)
        return found


# Columns of the per-pick id matrix, in the order reasons are shown.
_FOLLOWED, _TOPICS, _PARTIAL_1, _PARTIAL_2, _DESCRIBE, _EXAMPLE, _SEMANTIC, _TRENDING, _CATEGORIES = range(9)
_COLUMNS = 9
_NAMED = [_FOLLOWED, _TOPICS, _PARTIAL_1, _DESCRIBE, _EXAMPLE, _SEMANTIC]  # reasons that say why it is relevant


@dataclass
class _Picks:
    """Every pick of a call, flat and in profile order (a profile's picks in its digest's order)."""

    profile: np.ndarray
    slot: np.ndarray
    row: np.ndarray
    ids: np.ndarray  # picks × _COLUMNS reason-string ids, -1 for none
    strings: _Strings

    def set(self, picks: np.ndarray, column: int, reason_ids: np.ndarray) -> None:
        self.ids[picks, column] = reason_ids


def build_reasons(index: PaperIndex, profiles: Sequence[Profile], top: TopPicks, queries: _Queries, *,
                  semantic_min_similarity: float) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Every pick's reasons in one list (profile by profile, each in its digest's order), and each profile's
    number of picks: a profile's picks are its leading entries of ``top.rows``."""
    words = IndexWords.of(index)
    valid = np.cumprod(top.rows >= 0, axis=1).astype(bool)
    profile, slot = np.nonzero(valid)
    picks = _Picks(profile, slot, top.rows[profile, slot], np.full((len(profile), _COLUMNS), -1, dtype=np.int32), _Strings())
    if len(profile):
        topic_strength, strongest_topic = _topic_reasons(words, queries, picks)
        describe_strength = _describe_reasons(words, queries, picks)
        _followed_reasons(index, profiles, top, picks)
        _example_reasons(index, words, profiles, picks)
        _semantic_reasons(queries, top, picks, topic_strength, strongest_topic, describe_strength, semantic_min_similarity)
        _semantic_example_reasons(index, words, profiles, top, picks, semantic_min_similarity)
        _fallback_reasons(queries, picks, topic_strength, strongest_topic, describe_strength)
        _trending_reasons(index, picks)
        _category_reasons(index, profiles, picks)
    return _as_tuples(picks.ids, picks.strings.values), valid.sum(axis=1)


def _as_tuples(ids: np.ndarray, values: list[str]) -> list[tuple[str, ...]]:
    """Each row of ids as a tuple of its strings, built a column at a time for rows with the same reasons present."""
    out = np.empty(len(ids), dtype=object)
    out[:] = [()]
    pattern = (ids >= 0) @ (1 << np.arange(ids.shape[1]))
    for shape in np.unique(pattern).tolist():
        rows = np.flatnonzero(pattern == shape)
        columns = [[values[i] for i in ids[rows, c].tolist()] for c in range(ids.shape[1]) if shape >> c & 1]
        if columns:
            out[rows] = np.fromiter(zip(*columns, strict=True), dtype=object, count=len(rows))
    return out.tolist()


def _pairs(by_profile: sp.csr_matrix, pick_profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pick, value) for every value (topic, sentence …) of each pick's profile, grouped by pick."""
    starts, ends = by_profile.indptr[pick_profile], by_profile.indptr[pick_profile + 1]
    counts = ends - starts
    pair_pick = np.repeat(np.arange(len(pick_profile)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return pair_pick, by_profile.indices[np.repeat(starts, counts) + offsets]


def _topic_reasons(words: IndexWords, queries: _Queries, picks: _Picks) -> tuple[np.ndarray, np.ndarray]:
    """``topic: “a”, “b”`` for topics found whole, ``matches “topic”: “phrase”`` for the two strongest partial ones.

    Whether a topic is found whole or in part is worked out with sparse products over the distinct
    (topic, paper) pairs of the picks; words are only looked at for the partial matches shown.
    Returns each pick's strongest topic (strength, id): it names the interest behind a semantic pick.
    """
    index = words.index
    n_papers = len(index.papers)
    pair_pick, pair_topic = _pairs(queries.by_topic, picks.profile)
    key = pair_topic.astype(np.int64) * n_papers + picks.row[pair_pick]
    unique, inverse = _distinct(key, len(queries.topic_texts) * n_papers)
    topic, row = unique // n_papers, unique % n_papers
    terms = queries.topic_terms[topic]  # distinct (topic, paper) pairs × vocabulary: the topic's words
    pair_of_term = np.repeat(np.arange(len(unique)), np.diff(terms.indptr))
    held, weight = words.lookup(row[pair_of_term], terms.indices)
    present = np.bincount(pair_of_term, weights=held, minlength=len(unique))
    strength = np.bincount(pair_of_term, weights=weight, minlength=len(unique))
    specific = np.bincount(pair_of_term, weights=held & ~words.generic[terms.indices], minlength=len(unique))
    lengths = np.asarray([len(text.phrase_terms(t)) for t in queries.topic_texts], dtype=np.int64)[topic]
    found_whole = np.asarray(queries.topic_phrases[topic, row]).ravel() > 0 if len(topic) else np.zeros(0, dtype=bool)
    verbatim = (present > 0) & (((lengths == 1) & (present == 1)) | found_whole)
    # A match in part must hold the topic's most telling word (its rarest in the day's papers): "neural
    # networks" in a paper is no match for "graph neural networks", whose reader asked for graphs.
    telling = np.bincount(pair_of_term, weights=held & (index.idf[terms.indices] >= _rarest_idf(index, queries)[topic][pair_of_term]),
                          minlength=len(unique)) > 0
    partial = (present > 0) & ~verbatim & ((specific > 0) | (present > 1)) & telling

    n_picks = len(picks.row)
    pair_strength = strength[inverse]
    order = _strongest_first(pair_pick, pair_strength)
    first = np.ones(len(order), dtype=bool)
    first[1:] = pair_pick[order][1:] != pair_pick[order][:-1]
    topic_strength, strongest = np.zeros(n_picks), np.full(n_picks, -1)
    topic_strength[pair_pick[order][first]] = pair_strength[order][first]
    strongest[pair_pick[order][first]] = pair_topic[order][first]

    texts = queries.topic_texts
    whole = np.flatnonzero(verbatim[inverse])  # pairs of topics found whole, in each profile's own order
    _name_topics(picks, pair_pick[whole], pair_topic[whole], texts)

    shown = order[partial[inverse[order]]]
    place = _rank_within(pair_pick[shown])
    shown, place = shown[place < MAX_PARTIAL_TOPICS], place[place < MAX_PARTIAL_TOPICS]
    needed, needed_inverse = np.unique(inverse[shown], return_inverse=True)
    reason_ids = np.asarray([picks.strings.id(r) if (r := words.partial_reason(texts[t], w)) else -1
                             for t, w in zip(topic[needed].tolist(), row[needed].tolist(), strict=True)], dtype=np.int64)
    for column, wanted in ((_PARTIAL_1, 0), (_PARTIAL_2, 1)):
        chosen = place == wanted
        picks.set(pair_pick[shown[chosen]], column, reason_ids[np.ravel(needed_inverse)[chosen]])
    return topic_strength, strongest


def _rarest_idf(index: PaperIndex, queries: _Queries) -> np.ndarray:
    """Each topic's highest idf among its words in the day's vocabulary (0 for a topic with none)."""
    terms = queries.topic_terms
    found = np.zeros(terms.shape[0])
    starts = terms.indptr[:-1][np.diff(terms.indptr) > 0]
    if len(starts):  # reduceat over each non-empty row: an empty row starts where the next one does
        found[np.diff(terms.indptr) > 0] = np.maximum.reduceat(index.idf[terms.indices], starts)
    return found


def _name_topics(picks: _Picks, pick_of: np.ndarray, topic_of: np.ndarray, texts: list[str]) -> None:
    """``topic: “a”, “b”``: one string per distinct combination of topics (the pairs are grouped by pick)."""
    place = _rank_within(pick_of)
    count = np.bincount(pick_of, minlength=len(picks.row))[pick_of]
    width = len(texts) + 1
    if width ** int(count.max(initial=1)) >= 2**62:  # too many to number as one integer: by hand
        combination: dict[int, list[str]] = {}
        for pick, topic in zip(pick_of.tolist(), topic_of.tolist(), strict=True):
            combination.setdefault(pick, []).append(quoted(texts[topic]))
        for pick, names in combination.items():
            picks.ids[pick, _TOPICS] = picks.strings.id("topic: " + ", ".join(names))
        return
    # A pick's topics as the digits of one number in base (topics + 1), in the profile's order.
    number = np.zeros(len(picks.row), dtype=np.int64)
    np.add.at(number, pick_of, (topic_of.astype(np.int64) + 1) * width ** place.astype(np.int64))
    named = np.flatnonzero(number)
    unique, inverse = np.unique(number[named], return_inverse=True)
    reason_ids = []
    for value in unique.tolist():
        names = []
        while value:
            value, digit = divmod(value, width)
            names.append(quoted(texts[digit - 1]))
        reason_ids.append(picks.strings.id("topic: " + ", ".join(names)))
    picks.set(named, _TOPICS, np.asarray(reason_ids, dtype=np.int64)[np.ravel(inverse)])


DENSE_KEYS = 1 << 24  # distinct-value tables up to 16 M entries (64 MB) are cheaper than sorting millions of keys


def _distinct(keys: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for keys in [0, space): a table instead of a sort when it is small."""
    if space > DENSE_KEYS:
        unique, inverse = np.unique(keys, return_inverse=True)
        return unique, np.ravel(inverse)
    seen = np.zeros(space, dtype=bool)
    seen[keys] = True
    unique = np.flatnonzero(seen)
    position = np.zeros(space, dtype=np.int64)
    position[unique] = np.arange(len(unique))
    return unique, position[keys]


def _strongest_first(groups: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """The order of entries by group (a sorted array), then strongest first, ties in their given order."""
    if not len(groups):
        return np.zeros(0, dtype=np.int64)
    spread = float(np.max(np.abs(strength))) + 1.0
    # One float key instead of a two-key lexsort: the group, less a fraction for the strength.
    return np.argsort(groups - strength / (2 * spread), kind="stable")


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2 … within each run of equal values of an array sorted by group."""
    if not len(groups):
        return np.zeros(0, dtype=np.int64)
    starts = np.ones(len(groups), dtype=bool)
    starts[1:] = groups[1:] != groups[:-1]
    return np.arange(len(groups)) - np.maximum.accumulate(np.where(starts, np.arange(len(groups)), 0))


def _describe_reasons(words: IndexWords, queries: _Queries, picks: _Picks) -> np.ndarray:
    """``matches your description: “phrase”`` around the most telling word it shares with the paper.

    Returns how strongly each pick matches the description (its part of the BM25 score).
    """
    index = words.index
    n_picks = len(picks.row)
    pair_pick, pair_sentence = _pairs(queries.by_sentence, picks.profile)
    terms = queries.sentence_terms[pair_sentence]  # picks with a sentence × its words in the day's vocabulary
    pick_of = np.repeat(pair_pick, np.diff(terms.indptr))
    held, weight = words.lookup(picks.row[pick_of], terms.indices)
    strength = np.bincount(pick_of, weights=weight * terms.data, minlength=n_picks)
    pick_of, columns = pick_of[held], terms.indices[held]
    # The most telling shared word leads the phrase: one that is not generic, the rarest of those.
    value = np.where(words.generic[columns], -1.0, index.idf[columns])
    order = _strongest_first(pick_of, value)
    best = order[(_rank_within(pick_of[order]) == 0) & (value[order] >= 0)]
    anchor = np.full(n_picks, -1, dtype=np.int64)
    anchor[pick_of[best]] = columns[best]
    chosen = np.flatnonzero(anchor >= 0)
    if len(chosen):
        key = picks.row[chosen].astype(np.int64) * words.n_terms + anchor[chosen]
        unique, inverse = _distinct(key, len(index.papers) * words.n_terms)
        reason_ids = []
        for row, column in zip(*(part.tolist() for part in np.divmod(unique, words.n_terms)), strict=True):
            phrase = words.phrase(row, [words.terms[column]])
            reason_ids.append(picks.strings.id("matches your description: " + quoted(phrase)) if phrase else -1)
        picks.set(chosen, _DESCRIBE, np.asarray(reason_ids, dtype=np.int64)[np.ravel(inverse)])
    return strength


def _followed_reasons(index: PaperIndex, profiles: Sequence[Profile], top: TopPicks, picks: _Picks) -> None:
    """``by Ada Lovelace (followed author)``, the names as the paper writes them."""
    said: dict[tuple[tuple[str, ...], int], int] = {}
    for pick in np.flatnonzero(top.followed[picks.profile, picks.slot]).tolist():
        authors, row = profiles[picks.profile[pick]].preferences.authors, int(picks.row[pick])
        found = said.get((authors, row))
        if found is None:
            names = index.author_names[row]
            keys = [text.name_keys(a) for a in authors]
            by = [names[k[0]] for k in keys if k and k[0] in names]
            found = said[(authors, row)] = picks.strings.id("by " + ", ".join(dict.fromkeys(by)) + " (followed author)")
        picks.ids[pick, _FOLLOWED] = found


def _example_reasons(index: PaperIndex, words: IndexWords, profiles: Sequence[Profile], picks: _Picks) -> None:
    """``similar to your seed paper “Title”`` when the paper shares enough of its telling words."""
    has_examples = np.asarray([bool(p.examples) for p in profiles], dtype=bool)
    telling = _TellingTerms(index)
    for pick in np.flatnonzero(has_examples[picks.profile]).tolist():
        columns = words.weights(int(picks.row[pick])).keys()
        for example in profiles[picks.profile[pick]].examples:
            if example.weight > 0 and len(telling.of(example) & columns) >= EXAMPLE_REASON_OVERLAP:
                picks.ids[pick, _EXAMPLE] = picks.strings.id(f"similar to {_example_name(example)}")
                break


def _sentence_name(sentence: str) -> str:
    """The reader's sentence as a reason quotes it: at most INTEREST_CHARS, without its full stop."""
    return clip(sentence.strip().rstrip(".!?;:"), INTEREST_CHARS)


def _semantic_reasons(queries: _Queries, top: TopPicks, picks: _Picks, topic_strength: np.ndarray,
                      strongest_topic: np.ndarray, describe_strength: np.ndarray, threshold: float) -> None:
    """``close in meaning to “interest”`` for a pick the semantic ranker found close: the reader's interest
    (topic or description) that shares most with the paper, else their description, else their first topic."""
    if top.similarity is None:
        return
    close = np.flatnonzero(top.similarity[picks.profile, picks.slot] >= threshold)
    # Plain lists for the loop: at 100,000 subscribers ~220,000 picks are close in meaning, and reading
    # numpy arrays an element at a time cost a second more than the rest of it.
    columns = zip(close.tolist(), picks.profile[close].tolist(), strongest_topic[close].tolist(),
                  describe_strength[close].tolist(), topic_strength[close].tolist(),
                  picks.ids[close][:, [_TOPICS, _PARTIAL_1, _PARTIAL_2]].tolist(), strict=True)
    reason_of: dict[str, int] = {}  # the interest named → its reason's string id
    chosen: list[tuple[int, int]] = []
    for pick, profile, topic, describing, topical, named in columns:
        sentence = queries.sentence_of(profile)
        if sentence and (describing > topical or topic < 0 or topical <= 0):
            name = _sentence_name(sentence_phrase(sentence))  # the embedded phrase, not "I work on…"
        else:
            name = queries.topic_texts[topic] if topic >= 0 else ""
        # A topic found whole or in part already names it: saying it twice adds nothing.
        if name and not any(quoted(name) in picks.strings.values[i] for i in named if i >= 0):
            if (reason := reason_of.get(name)) is None:
                reason = reason_of[name] = picks.strings.id(f"close in meaning to {quoted(name)}")
            chosen.append((pick, reason))
    if chosen:
        targets, reasons = zip(*chosen, strict=True)
        picks.ids[list(targets), _SEMANTIC] = reasons


def _semantic_example_reasons(index: PaperIndex, words: IndexWords, profiles: Sequence[Profile], top: TopPicks,
                              picks: _Picks, threshold: float) -> None:
    """``close in meaning to your seed paper “Title”`` for a pick the semantic ranker found close when the
    reader's only interests are example papers (seeds, "more like this"): no topic or sentence to name,
    and too few shared words for "similar to". The example named is the one sharing most telling words."""
    if top.similarity is None:
        return
    close = top.similarity[picks.profile, picks.slot] >= threshold
    unnamed = ~(picks.ids[:, _NAMED] >= 0).any(axis=1)
    telling = _TellingTerms(index)
    for pick in np.flatnonzero(close & unnamed).tolist():
        liked = [e for e in profiles[picks.profile[pick]].examples if e.weight > 0]
        if not liked:
            continue
        columns = words.weights(int(picks.row[pick])).keys()
        shared = [len(telling.of(e) & columns) for e in liked]
        example = liked[shared.index(max(shared))]  # the first of equals: seeds come before liked papers
        picks.ids[pick, _SEMANTIC] = picks.strings.id(f"close in meaning to {_example_name(example)}")


class _TellingTerms:
    """Each example paper's most telling words (``lexical.example_terms``), worked out once per paper."""

    def __init__(self, index: PaperIndex) -> None:
        self.index = index
        self.found: dict[str, set[int]] = {}

    def of(self, example: Example) -> set[int]:
        from newsletter.score.lexical import example_terms

        if example.paper.key not in self.found:
            self.found[example.paper.key] = set(example_terms(self.index, example.paper))
        return self.found[example.paper.key]


def _example_name(example: Example) -> str:
    """``your seed paper “Title”`` or ``a paper you liked “Title”``, the title clipped between words."""
    what = "your seed paper" if example.kind == "seed" else "a paper you liked"
    return f"{what} {quoted(clip(example.paper.title, SEED_TITLE_CHARS))}"


def _fallback_reasons(queries: _Queries, picks: _Picks, topic_strength: np.ndarray, strongest_topic: np.ndarray,
                      describe_strength: np.ndarray) -> None:
    """A pick matched only through common words still names the interest it matched, never the words."""
    said = (picks.ids[:, _NAMED] >= 0).any(axis=1)
    for pick in np.flatnonzero(~said & ((topic_strength > 0) | (describe_strength > 0))).tolist():
        if topic_strength[pick] >= describe_strength[pick]:
            name = "your topic " + quoted(queries.topic_texts[int(strongest_topic[pick])])
        else:
            name = "your description " + quoted(_sentence_name(queries.sentence_of(int(picks.profile[pick]))))
        picks.ids[pick, _PARTIAL_1] = picks.strings.id(f"shares words with {name}")


def _trending_reasons(index: PaperIndex, picks: _Picks) -> None:
    by_row = np.asarray([picks.strings.id(f"trending: {p.upvotes:,} upvotes") if p.upvotes else -1 for p in index.papers],
                        dtype=np.int64)
    picks.ids[:, _TRENDING] = by_row[picks.row]


def _category_reasons(index: PaperIndex, profiles: Sequence[Profile], picks: _Picks) -> None:
    """``in cs.RO``: the paper's categories among those the reader chose."""
    chosen: dict[tuple[str, ...], int] = {}
    signature = np.asarray([chosen.setdefault(tuple(sorted({c.lower() for c in p.preferences.categories})), len(chosen))
                            for p in profiles], dtype=np.int64)
    wanted = np.flatnonzero(signature[picks.profile] != chosen.get((), -1))
    if not len(wanted):
        return
    n_papers, names = len(index.papers), list(chosen)
    unique, inverse = _distinct(signature[picks.profile[wanted]] * n_papers + picks.row[wanted], len(chosen) * n_papers)
    reason_ids = []
    for value in unique.tolist():
        categories = set(names[value // n_papers])
        inside = [c for c in index.papers[value % n_papers].categories if c.lower() in categories]
        reason_ids.append(picks.strings.id("in " + ", ".join(inside)) if inside else -1)
    picks.set(wanted, _CATEGORIES, np.asarray(reason_ids, dtype=np.int64)[np.ravel(inverse)])
