"""Small helpers for text people read: counts with the right plural, text cut at a word with an ellipsis,
text from outside (feeds, what people type) made inert."""

from __future__ import annotations

import re

ELLIPSIS = "…"
WHITESPACE = re.compile(r"\s+")
# Control characters, bidi overrides and zero-width characters can rewrite a terminal, reorder what a
# reader sees or hide text. Ingest and the preference forms strip them where text comes in; the CLI and
# the email strip them again from whatever they show, whoever wrote it (a row stored before, a bug).
# Terminal escape sequences go whole (CSI such as ESC[2J, OSC such as ESC]0;title BEL), so none of their text is left.
ESCAPE_SEQUENCE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?")
# C0 and C1 controls (line breaks and tabs become spaces); bidi embeddings, overrides, isolates and marks;
# zero-width characters.
INVISIBLE = dict.fromkeys([*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F,
                           *range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0x200B, 0x200E), 0x2060, 0xFEFF])
INVISIBLE |= dict.fromkeys(map(ord, "\t\n\v\f\r\x85"), " ")
# A lone UTF-16 surrogate (JSON's "\ud800") is no character: it cannot be stored or sent as UTF-8, and one in a
# trending file lost the whole file. It becomes the replacement character.
INVISIBLE |= dict.fromkeys(range(0xD800, 0xE000), "\ufffd")


def inert(text: str) -> str:
    """``text`` inert on a terminal and in an email: escape sequences, control, bidi and zero-width characters
    removed, line breaks and tabs made spaces, lone surrogates made U+FFFD. The common case (none of them)
    costs one C call."""
    return text if text.isprintable() else ESCAPE_SEQUENCE.sub("", text).translate(INVISIBLE)


def plain_text(value: str) -> str:
    """``value`` inert, with whitespace folded: what is stored of text from outside. For text people type
    too (topics, names), where "<" is not HTML."""
    return WHITESPACE.sub(" ", inert(value)).strip()


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
