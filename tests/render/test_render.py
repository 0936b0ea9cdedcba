"""Rendering a digest: what the subscriber reads, and headers that cannot be forged by a title."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes
from email.policy import default

from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.records import Digest, Paper, RankedPaper
from newsletter.render.digest import make_environment, render_digest, short_authors, snippet
from newsletter.render.message import build_message

ENV = make_environment()


def digest(title: str = "Fast Sampling for Diffusion Models", authors: tuple[str, ...] = ("Ada Lovelace",)) -> Digest:
    paper = Paper(key="2611.10001", arxiv_id="2611.10001", title=title, abstract="We sample faster. " * 40,
                  authors=authors, categories=("cs.LG", "cs.CV"), abs_url="https://arxiv.org/abs/2611.10001",
                  pdf_url="https://arxiv.org/pdf/2611.10001")
    return Digest(email="ada@example.org", issue_date=dt.date(2026, 11, 23),
                  papers=(RankedPaper(paper, 7.5, ("topic: “diffusion models”", "in cs.LG")),),
                  unsubscribe_url="https://digest.example.org/unsubscribe/tok",
                  preferences_url="https://digest.example.org/preferences/tok",
                  message_id="<digest.20261123.1.abc@example.org>")


def test_html_and_text_carry_title_link_authors_snippet_reasons_and_footer() -> None:
    email = render_digest(digest(), env=ENV, list_name="Paper digest")
    for body in (email.html, email.text):
        assert "Fast Sampling for Diffusion Models" in body
        assert "https://arxiv.org/abs/2611.10001" in body
        assert "Ada Lovelace" in body
        assert "diffusion models" in body
        assert "https://digest.example.org/unsubscribe/tok" in body
        assert "https://digest.example.org/preferences/tok" in body
    assert '<a class="paper-title" href="https://arxiv.org/abs/2611.10001">' in email.html
    assert email.subject == "Paper digest · 23 Nov: Fast Sampling for Diffusion Models"


def test_titles_are_escaped_in_html() -> None:
    email = render_digest(digest(title='<script>alert("x")</script> Attention'), env=ENV, list_name="Paper digest")
    assert "<script>alert" not in email.html
    assert "&lt;script&gt;" in email.html


def test_authors_are_shortened_past_five_and_abstracts_cut_at_a_sentence() -> None:
    assert short_authors(("A", "B", "C", "D", "E")) == "A, B, C, D, E"
    assert short_authors(("A", "B", "C", "D", "E", "F")) == "A, B, C, D, E et al."
    cut = snippet("First sentence is here. " * 30)
    assert cut.endswith("here.") and len(cut) <= 320


def test_message_is_multipart_alternative_with_list_headers() -> None:
    email = render_digest(digest(), env=ENV, list_name="Paper digest")
    raw = build_message(email, from_address="digest@example.org", list_name="Paper digest",
                        list_id="digest.example.org", date=dt.datetime(2026, 11, 23, 7)).as_bytes()
    message = message_from_bytes(raw, policy=default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"] == "<digest.20261123.1.abc@example.org>"
    assert message["List-Unsubscribe"] == ("<https://digest.example.org/unsubscribe/tok>, "
                                           "<mailto:digest@example.org?subject=unsubscribe>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Date"] == "Mon, 23 Nov 2026 07:00:00 +0000"
    assert b"\r\n" in raw


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=400).filter(lambda t: t.strip()))
def test_no_title_can_add_a_header(title: str) -> None:
    email = render_digest(digest(title=title), env=ENV, list_name="Paper digest")
    raw = build_message(email, from_address="digest@example.org", list_name="Paper digest",
                        list_id="digest.example.org", date=dt.datetime(2026, 11, 23, 7)).as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n") if line and not line[:1].isspace()]
    assert sorted(names) == sorted([b"From", b"To", b"Subject", b"Date", b"Message-ID", b"List-Id", b"List-Unsubscribe",
                                    b"List-Unsubscribe-Post", b"Content-Type", b"MIME-Version"])
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
