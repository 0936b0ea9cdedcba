"""The TL;DR of a paper: the trending API's summary, else the abstract's sentence that says what is new. Pure.

An abstract usually opens with background ("Deep neural networks are being adopted …") and only
later says what the paper does ("We propose …", "Our method achieves …"). ``best_sentence`` scores
each sentence by cue phrases of a contribution or a result, by where it sits and by its length, and
picks the best; ties go to the earlier sentence. The cue weights were tuned on
``bench/data/tldr_labels.json`` after those labels were written (``bench/tldr.py`` prints the hit rate).
"""

from __future__ import annotations

import re

from newsletter.wording import shorten

TLDR_CHARS = 300  # about three lines in a phone's mail app

# A sentence ends at . ! or ? followed by a space and an upper-case letter, a digit or an opening
# bracket/quote. Not after abbreviations that end in a full stop ("e.g.", "i.e.", "et al.", "Fig. 3").
_ABBREVIATIONS = frozenset(("e.g.", "i.e.", "etc.", "vs.", "cf.", "fig.", "figs.", "eq.", "eqs.", "sec.", "no.",
                  "approx.", "resp.", "dr.", "prof.", "mr.", "ms.", "st.", "al.", "ref.", "refs.", "viz.", "ca."))
_INITIALS = re.compile(r"(?:[a-z]\.){2,3}")  # "U.S.", "e.g" variants without a listed spelling
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")

# (pattern, weight): what a sentence that states the contribution or the result says.
_WE = r"\b(?:we|this (?:paper|work|study|survey|article)|in this (?:paper|work|study)|our (?:paper|work|study))\b"
CONTRIBUTION_CUES: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), weight) for pattern, weight in (
        # "We propose X", "This paper introduces X": what the paper is.
        (_WE + r"[^.;:]{0,100}?(?<!our )(?<!the )(?<!recently )"
         r"\b(?:propos|introduc|present|develop|design|devis|formulat|extend|pioneer|discover)(?:e|es|ed|ing|s)?\b", 3.0),
        # "We study / investigate / argue ...": what the paper is about, less often what it brings.
        (_WE + r"[^.;:]{0,40}?\b(?:stud|investigat|examin|argu|address|tackl|provid)(?:e|es|ed|ies|y)\b", 2.0),
        # "We show / find / prove that ...", "Our findings ...": what it found.
        (_WE + r"[^.;:]{0,30}?\b(?:show|demonstrat|find|found|prove|establish|reveal|identif)(?:e|es|ed|s|y|ies)?\b", 1.5),
        (r"\bour (?:findings|results|main contributions?)\b", 1.5),
        (r"\b(?:novel|new|first|unified|general)\b", 0.5),
        (r"\b(?:called|named|dubbed|termed)\b|\b[A-Z][A-Za-z0-9]*[A-Z][A-Za-z0-9-]*\b", 0.5),
        (r"\b(?:outperform|surpass|state[- ]of[- ]the[- ]art|sota)", 0.5),
    ))
# Sentences that set the scene, add a detail or point elsewhere rather than say what is new.
BACKGROUND_CUES: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), weight) for pattern, weight in (
        # A follow-on sentence: the main claim came before it.
        (r"^(?:moreover|furthermore|additionally|in addition|also|finally|then|subsequently|specifically|"
         r"for example|for instance|in particular|notably|for testing|to evaluate|to facilitate|initially|"
         r"more specifically|as special cases|these|it|its|they|this(?! (?:paper|work|study|survey|article)))\b", 1.5),
        (r"\b(?:also|then)\b", 1.0),
        (r"^(?:however|although|despite|while|yet|but|unfortunately)\b", 1.0),
        (r"\b(?:existing|prior|previous|recent|current|traditional|conventional) (?:work|works|method|methods|"
         r"approach|approaches|studies|research|systems|models)\b", 1.0),
        (r"\b(?:experiments?|experimental results|empirical results|extensive|evaluat|benchmark|validat)", 0.75),
        (r"\b(?:code|data|models?|datasets?) (?:is|are|will be) (?:publicly |freely )?(?:available|released)\b", 2.0),
        (r"https?://|github\.com|\bwebsite\b", 2.0),
        (r"^[A-Z][a-z]+:", 1.0),  # "Background:", "Methods:" of a structured abstract
    ))
# Points back at what an earlier sentence described ("Repeating this process creates …"): the reader of a
# TL;DR never saw it. Read after ``standalone`` drops an opening it can drop ("To address this problem, we
# introduce X" shows as "We introduce X", which stands). "This paper / work / study" is the paper itself.
BACK_REFERENCE_CUE = (re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:this|these|such|that) (?:process(?:es)?|procedures?|approach(?:es)?|methods?|problems?|"
    r"issues?|limitations?|challenges?|phenomen(?:on|a)|settings?|loops?|gaps?|ideas?|observations?|insights?|"
    r"techniques?|strateg(?:y|ies)|schemes?|events?)\b", re.IGNORECASE), 1.0)
FIRST_SENTENCE_PENALTY = 0.5  # the first sentence is background far more often than not
MIN_WORDS, MAX_WORDS = 8, 60  # shorter says too little, longer is a paragraph in disguise
LENGTH_PENALTY = 1.0


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, not cut after "e.g.", "i.e.", "et al.", "Fig." or inside "3.5"."""
    sentences: list[str] = []
    start = 0
    for boundary in _BOUNDARY.finditer(text):
        before = text[start : boundary.start()].rstrip("\"'”’)]")
        last_word = before.rsplit(None, 1)[-1].lower().lstrip("([\"'“‘") if before.split() else ""
        if last_word in _ABBREVIATIONS or _INITIALS.fullmatch(last_word):
            continue  # "e.g. Transformers", "U.S. data": the full stop is the abbreviation's
        sentences.append(text[start : boundary.start()].strip())
        start = boundary.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


def sentence_score(sentence: str, position: int, count: int) -> float:
    """How well ``sentence`` (at ``position`` of ``count``) says what the paper does or finds."""
    score = sum(weight for cue, weight in CONTRIBUTION_CUES if cue.search(sentence))
    score -= sum(weight for cue, weight in BACKGROUND_CUES if cue.search(sentence))
    back_reference, weight = BACK_REFERENCE_CUE
    if back_reference.search(_BACK_REFERENCE.sub("", sentence, count=1)):
        score -= weight
    if position == 0 and count > 1:
        score -= FIRST_SENTENCE_PENALTY
    words = len(sentence.split())
    if words < MIN_WORDS or words > MAX_WORDS:
        score -= LENGTH_PENALTY
    return score


def best_sentence(abstract: str) -> int:
    """The index (in ``split_sentences(abstract)``) of the sentence that states the contribution or result."""
    sentences = split_sentences(abstract)
    if not sentences:
        return 0
    scores = [sentence_score(s, i, len(sentences)) for i, s in enumerate(sentences)]
    return max(range(len(sentences)), key=lambda i: (scores[i], -i))


# An opening that points back at sentences the reader of a TL;DR does not see ("To address these issues,
# we propose …"), dropped when what follows stands on its own (we, our, this paper …).
_BACK_REFERENCE = re.compile(
    r"^(?:conversely|however|moreover|furthermore|additionally|in addition|instead|therefore|thus|hence|"
    r"consequently|to this end|in contrast|in response|nevertheless|motivated by (?:this|these)[^,]{0,60}|"
    r"to (?:address|tackle|overcome|solve|fill|bridge|mitigate|alleviate|remedy|close|resolve|avoid) "
    r"(?:this|these|those|such|the above|both)\b[^,]{0,60}),\s+(?=(?:we|our|this|these|in this)\b)",
    re.IGNORECASE)


def standalone(sentence: str) -> str:
    """The sentence without an opening that refers to what came before it in the abstract."""
    rest = _BACK_REFERENCE.sub("", sentence, count=1)
    return rest[:1].upper() + rest[1:] if rest != sentence else sentence


def tldr_of(abstract: str, summary: str | None = None, *, limit: int = TLDR_CHARS) -> str:
    """The summary when there is one; else the abstract's best sentence, made to stand on its own and
    cut at a word within ``limit``."""
    if summary:
        return summary
    sentences = split_sentences(abstract)
    if not sentences:
        return ""
    return shorten(standalone(sentences[best_sentence(abstract)]), limit)


__all__ = ["best_sentence", "split_sentences", "standalone", "tldr_of"]
