"""Small helpers for text people read: counts with the right plural, text cut at a word with an ellipsis,
text from outside (feeds, what people type) made inert."""

from __future__ import annotations

import re
import unicodedata

ELLIPSIS = "…"
# Control characters, bidi overrides and zero-width characters: they can rewrite a terminal, reorder
# what a reader sees or hide text. Ingest strips them from feeds; the CLI strips them again from
# anything it prints, whoever typed it.
_INVISIBLE = {0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
WHITESPACE = re.compile(r"\s+")
# Terminal escape sequences whole (CSI such as ESC[2J, OSC such as ESC]0;title BEL), so none of their text is left.
ESCAPE_SEQUENCE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?")
# Text from outside is inert: C0 and C1 controls go (line breaks and tabs become spaces), and so do the
# characters that reorder or hide text: bidi embeddings, overrides, isolates and marks, zero-width ones.
INVISIBLE = dict.fromkeys([*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F,
                           *range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0x200B, 0x200E), 0x2060, 0xFEFF])
INVISIBLE |= dict.fromkeys(map(ord, "\t\n\v\f\r\x85"), " ")


def plain_text(value: str) -> str:
    """``value`` inert on a terminal and in an email: escape sequences, control, bidi and zero-width characters
    removed, whitespace folded. For text people type too (topics, names), where "<" is not HTML."""
    return WHITESPACE.sub(" ", ESCAPE_SEQUENCE.sub("", value).translate(INVISIBLE)).strip()


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 seed paper``, ``3 seed papers``, ``1,200 invalid rows``."""
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut at a word boundary with an ellipsis when it is longer."""
    if len(text) <= width:
        return text
    cut = text[: max(width - 1, 1)]
    space = cut.rfind(" ")
    if text[len(cut)] != " " and space >= width // 2:  # back to a word boundary unless too far; else cut the long word
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + ELLIPSIS


def inert(text: str) -> str:
    """``text`` without control, bidi-override and zero-width characters (newlines and tabs become spaces)."""
    if text.isprintable():
        return text
    return "".join(
        " " if char in "\n\t\r" else char
        for char in text
        if char in "\n\t\r" or not (unicodedata.category(char) in ("Cc", "Cf") and (ord(char) < 0x100 or ord(char) in _INVISIBLE))
    )
