"""Text → terms: lower-case word tokens, English stop words dropped, Snowball-stemmed. Pure."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import Stemmer

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


def name_keys(name: str) -> tuple[str, ...]:
    """Keys an author name is matched by: the full name and 'initial surname', accents and case folded."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    parts = re.findall(r"[a-z]+", folded)
    if not parts:
        return ()
    if len(parts) == 1:
        return (parts[0],)
    short = f"{parts[0][0]} {parts[-1]}"
    return (" ".join(parts), short) if len(parts[0]) > 1 else (short,)
