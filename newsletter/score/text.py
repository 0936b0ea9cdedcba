"""Text → terms: lower-case word tokens, English stop words dropped, Snowball-stemmed. Pure."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import Stemmer
from anyascii import anyascii

TOKEN = re.compile(r"[a-z0-9]+")  # hyphens and apostrophes split words: "self-supervised" → self, supervised
# Common English function words plus words every abstract uses; they carry no topic.
STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having he
    her here hers him his how i if in into is it its itself just me more most my no nor not now of off on once
    only or other our ours out over own same she should so some such than that the their theirs them then there
    these they this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours i'm my work working research interested interest papers paper study
    studies propose proposed approach approaches method methods show shows shown result results new novel use
    using used based via toward towards however thereby well also e.g i.e etc""".split()
)

_stemmer = Stemmer.Stemmer("english")
VOWELS = re.compile(r"[aeiouy]")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    return _stemmer.stemWord(word)


def words(text: str) -> list[str]:
    """Lower-case word tokens; hyphenated compounds are split ("self-supervised" → self, supervised)."""
    return TOKEN.findall(text.lower())


def terms(text: str) -> list[str]:
    """Stemmed content terms in order, stop words removed."""
    return [stem(w) for w in words(text) if w not in STOP_WORDS and len(w) > 1]


def phrase_terms(phrase: str) -> tuple[str, ...]:
    """A topic or exclusion phrase as a term sequence; stop words inside it are kept out too."""
    return tuple(terms(phrase))


def contains_phrase(sequence: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    """Whether the terms ``phrase`` (not empty) stand together, in order, in ``sequence``."""
    width = len(phrase)
    first = phrase[0]
    return any(sequence[i : i + width] == phrase for i, term in enumerate(sequence) if term == first)


def exclusion_forms(phrase: str) -> list[tuple[str, ...]]:
    """The term sequences an excluded phrase is found by: its own, and with each acronym in its other number.

    Snowball keeps the s of an acronym's plural that has no vowel ("llms", "gnns"), so "--exclude LLM" let
    papers about "LLMs" through. Only exclusions take both forms: merging the two terms everywhere made
    "llm" a word of a fifth of the sample's papers, too common to be a reason, and reasons got worse.
    """
    forms: list[tuple[str, ...]] = [()]
    for term in phrase_terms(phrase):
        other = (term[:-1] if term.endswith("s") and len(term) >= 3 else term + "s") if not VOWELS.search(term) else None
        forms = [(*form, choice) for form in forms for choice in ((term, other) if other else (term,))][:16]
    return forms if forms != [()] else []


def name_keys(name: str) -> tuple[str, ...]:
    """Keys an author name is matched by: the full name and 'initial surname', accents and case folded."""
    parts = re.findall(r"[a-z]+", _latin_folded(name).lower())
    if not parts:
        return ()
    if len(parts) == 1:
        return (parts[0],)
    short = f"{parts[0][0]} {parts[-1]}"
    return (" ".join(parts), short) if len(parts[0]) > 1 else (short,)


@lru_cache(maxsize=1 << 12)
def _latin_letter(char: str) -> str:
    """A Latin letter that has no accent to strip (Ł, ø, ß, æ, ı) as ASCII; anything else: nothing."""
    return anyascii(char) if unicodedata.name(char, "").startswith("LATIN ") else ""


def _latin_folded(name: str) -> str:
    """``name`` in ASCII: accents stripped ("José" → Jose) and Latin letters without one transliterated
    ("Łukasz" → Lukasz; dropped, they left "ukasz"). Other scripts are dropped, as before: a name written in
    both scripts ("Zhang Wei 张伟") keeps the keys of its Latin spelling."""
    return "".join(c if c.isascii() else _latin_letter(c) for c in unicodedata.normalize("NFKD", name))
