"""Rendering a digest: what the subscriber reads, and bytes that cannot be forged by a title."""

from __future__ import annotations

import datetime as dt
import html
import re
from dataclasses import replace
from email import message_from_bytes
from email.policy import default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.records import Digest, Paper, RankedPaper
from newsletter.render.digest import DigestRenderer, make_environment, render_digest, short_authors, tldr
from newsletter.render.mime import DkimKey, build_message, header_text

ENV = make_environment()
DATE = dt.date(2026, 11, 23)
HEADERS = sorted([b"From", b"To", b"Subject", b"Date", b"Message-ID", b"List-Id", b"List-Unsubscribe",
                  b"List-Unsubscribe-Post", b"MIME-Version", b"Content-Type"])


def paper(n: int = 1, **fields) -> Paper:
    values = dict(id=n, key=f"2611.1000{n}", arxiv_id=f"2611.1000{n}", title=f"Fast Sampling for Diffusion Models {n}",
                  abstract="We sample faster, e.g. by skipping steps. Then we prove it works. " * 5,
                  authors=("Ada Lovelace", "Alan Turing"), categories=("cs.LG", "cs.CV"),
                  abs_url=f"https://arxiv.org/abs/2611.1000{n}", pdf_url=f"https://arxiv.org/pdf/2611.1000{n}")
    return Paper(**(values | fields))


def digest(*papers: Paper, reasons=("topic: “diffusion models”", "in cs.LG"), feedback: bool = True) -> Digest:
    papers = papers or (paper(),)
    return Digest(email="ada@example.org", issue_date=DATE,
                  papers=tuple(RankedPaper(p, 7.5 - i, reasons) for i, p in enumerate(papers)),
                  unsubscribe_url="https://digest.example.org/unsubscribe/tok",
                  preferences_url="https://digest.example.org/preferences/tok",
                  view_url="https://digest.example.org/digest/2026-11-23/tok",
                  message_id="<digest.20261123.1.abc@example.org>",
                  feedback_urls=tuple(f"https://digest.example.org/feedback/fb{p.id}/{p.id}" for p in papers) if feedback else ())


def message_bytes(email, **kw) -> bytes:
    return build_message(email, from_address="digest@example.org", list_name="Paper digest", list_id="digest.example.org",
                         date=dt.datetime(2026, 11, 23, 7), **kw)


def test_every_part_of_a_paper_and_of_the_page_is_in_both_versions() -> None:
    rich = paper(2, authors=tuple(f"Author {i}" for i in range(7)), tldr="One line that says it all.", upvotes=42,
                 code_url="https://github.com/lab/code", project_url="https://lab.example.org/p")
    trending = [paper(3, title="Everyone Reads This", upvotes=99)]
    email = render_digest(digest(paper(1), rich), env=ENV, list_name="Paper digest", trending=trending)
    for body in (email.html, email.text):
        for expected in ("Fast Sampling for Diffusion Models 1", "https://arxiv.org/abs/2611.10001", "Ada Lovelace, Alan Turing",
                         "We sample faster, e.g. by skipping steps.", "cs.LG, cs.CV", "https://arxiv.org/pdf/2611.10001",
                         "Author 0, Author 1, Author 2, Author 3, Author 4 et al.", "One line that says it all.",
                         "https://github.com/lab/code", "https://lab.example.org/p", "42 upvotes", "diffusion models",
                         "Everyone Reads This", "99", "Monday, 23 November 2026", "2 papers picked for you",
                         "https://digest.example.org/unsubscribe/tok", "https://digest.example.org/preferences/tok",
                         "https://digest.example.org/digest/2026-11-23/tok", "https://digest.example.org/feedback/fb2/2/up",
                         "https://digest.example.org/feedback/fb2/2/down", "More like this", "Less like this"):
            assert expected in body.replace("&amp;", "&"), expected
    assert "Then we prove it works" not in email.html, "the TL;DR is one sentence, not the abstract"
    assert email.subject == "Paper digest · 23 Nov: Fast Sampling for Diffusion Models 1 (+1 more)"
    assert "Trending today" in email.html and "TRENDING TODAY" in email.text


def test_css_is_inlined_and_dark_mode_rules_kept() -> None:
    page = render_digest(digest(), env=ENV, list_name="Paper digest").html
    card = re.search(r'<td class="card" style="([^"]+)"', page)
    assert card and "background-color: #ffffff" in card.group(1)
    assert "prefers-color-scheme: dark" in page
    assert 'class="preheader"' in page and "display: none" in page


def test_titles_and_reasons_are_escaped_and_cannot_forge_a_slot() -> None:
    renderer = DigestRenderer(env=ENV, list_name="Paper digest", issue_date=DATE)
    forged = f"@@{renderer.slots.token}:email@@"  # even knowing the token, a title is escaped text, not a slot name
    braces = "{email} {0} }{ {{x}}"  # the renderer fills str.format templates: a value is never read as one
    email = renderer.render(digest(paper(title='<script>alert("x")</script> Attention {email}'),
                                   reasons=(f"<b>{forged}</b>", braces)))
    assert "<script>alert" not in email.html and "&lt;script&gt;" in email.html
    assert "&lt;b&gt;" in email.html
    assert braces in email.html and braces in email.text and "Attention {email}" in email.text
    assert re.search(r"@media[^{}]*\{[^{}]*\{", email.html)  # the template's own braces (kept styles) stay single
    fresh = DigestRenderer(env=ENV, list_name="Paper digest", issue_date=DATE)
    assert fresh.slots.token != renderer.slots.token


def cards(body: str, marker: str) -> list[str]:
    """The body cut into one piece per paper (each starts at its title)."""
    return body.split(marker)[1:]


def test_each_paper_has_feedback_links_with_its_own_token() -> None:
    renderer = DigestRenderer(env=ENV, list_name="Paper digest", issue_date=DATE)
    first = renderer.render(digest(paper(1), paper(2)))
    links = ("https://d.example.org/feedback/B/2", "https://d.example.org/feedback/A/1")
    second = renderer.render(replace(digest(paper(2), paper(1)), feedback_urls=links))
    for email, expected in ((first, ("https://digest.example.org/feedback/fb1/1", "https://digest.example.org/feedback/fb2/2")),
                            (second, links)):
        html_cards, text_cards = cards(email.html, 'class="paper-title"'), cards(email.text, "\n* ")
        for html_card, text_card, link in zip(html_cards, text_cards, expected, strict=True):
            assert re.findall(r'href="([^"]+)"[^>]*>(?:More|Less) like this', html_card) == [f"{link}/up", f"{link}/down"]
            assert re.findall(r"(?:More|Less) like this: (\S+)", text_card) == [f"{link}/up", f"{link}/down"]
    assert len(renderer._cards) == 2, "the cards are still shared; only the links differ"


def test_a_digest_without_feedback_links_shows_none() -> None:
    email = render_digest(digest(paper(1), paper(2), feedback=False), env=ENV, list_name="Paper digest")
    assert "like this" not in email.html and "like this" not in email.text
    assert 'href=""' not in email.html
    with pytest.raises(ValueError):  # a link per paper, or none at all
        render_digest(replace(digest(paper(1), paper(2)), feedback_urls=("https://d.example.org/feedback/A/1",)),
                      env=ENV, list_name="Paper digest")


def test_a_paper_without_links_renders_no_none_and_only_web_links() -> None:
    bare = paper(1, abs_url=None, pdf_url=None, code_url=None, project_url=None, upvotes=None, authors=(), categories=())
    odd = paper(2, abs_url="javascript:alert(1)", pdf_url="", code_url="None", project_url="data:text/html,x")
    trending = [paper(3, title="Trending Without Links", abs_url=None, upvotes=None)]
    email = render_digest(digest(bare, odd), env=ENV, list_name="Paper digest", trending=trending)
    for body in (email.html, email.text):
        assert "None" not in body
        assert "javascript:" not in body and "data:text" not in body
        assert "Fast Sampling for Diffusion Models 1" in body and "Trending Without Links" in body
    assert 'href=""' not in email.html
    hrefs = re.findall(r'href="([^"]*)"', email.html)
    assert hrefs and all(h.startswith("https://") for h in hrefs), hrefs
    assert "PDF" not in email.text and "\n  \n" not in email.text, "no empty link or author lines"


def test_text_from_outside_is_escaped_and_inert() -> None:
    hostile = '<script>alert("x")</script> [/] [bold red]Diffusion\x1b[2J\x07 \u202eevil'
    trending = [paper(3, title=hostile + " trending", upvotes=5)]
    email = render_digest(digest(paper(1, title=hostile, authors=("Ada\x1b[31m Lovelace",), tldr="Fast\x00er.",
                                       categories=("cs.LG\r\nBcc: x",)), reasons=("topic: \x1b]8;;x\x07“diffusion”",)),
                          env=ENV, list_name="Paper digest", trending=trending)
    assert "<script" not in email.html.lower()
    assert email.html.count("&lt;script&gt;alert(") == 3, "title, preheader and trending, each escaped"
    assert "&lt;/script&gt; [/] [bold red]Diffusion evil" in email.html
    assert '<script>alert("x")</script> [/] [bold red]Diffusion evil' in email.text, "plain text shows the title as it is"
    for body in (email.html, email.text):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", body), "no terminal escapes, NUL, CR or bidi override"
        assert "Ada Lovelace" in body and "Faster." in body and "diffusion" in body
        assert "[2J" not in body and "[31m" not in body and "]8;;" not in body, "escape sequences go whole"
    preheader = re.search(r'class="preheader"[^>]*>([^<]*)<', email.html).group(1)
    assert preheader.startswith("&lt;script&gt;")


def test_cards_are_rendered_once_per_day_whoever_gets_them() -> None:
    renderer = DigestRenderer(env=ENV, list_name="Paper digest", issue_date=DATE)
    first = renderer.render(digest(paper(1), paper(2)))
    second = renderer.render(digest(paper(2), paper(1), reasons=("by Ada Lovelace (followed author)",)))
    assert len(renderer._cards) == 2
    assert first.html.index("Models 1") < first.html.index("Models 2")
    assert second.html.index("Models 2") < second.html.index("Models 1")
    assert "followed author" in second.html and "followed author" not in first.html


def test_short_authors_and_tldr_fallback() -> None:
    assert short_authors(("A", "B", "C", "D", "E")) == "A, B, C, D, E"
    assert short_authors(("A", "B", "C", "D", "E", "F")) == "A, B, C, D, E et al."
    assert tldr(paper(tldr="Given.")) == "Given."
    background_first = "Sampling is slow in practice today. We propose a solver, i.e. a faster one, for diffusion models."
    assert tldr(paper(abstract=background_first)) == "We propose a solver, i.e. a faster one, for diffusion models."


def test_each_card_names_its_arxiv_id_and_listing_date() -> None:
    listed = paper(1, published_at=dt.datetime(2026, 11, 20, 5))
    unlisted = paper(2, arxiv_id=None, key="https://blog.example.org/post", published_at=None, first_seen_at=None)
    email = render_digest(digest(listed, unlisted), env=ENV, list_name="Paper digest")
    for body, marker in ((email.html, 'class="paper-title"'), (email.text, "\n* ")):
        first, second = cards(body, marker)
        assert "arXiv:2611.10001 · listed 20 Nov 2026" in first
        assert "arXiv:" not in second and "listed" not in second, "no id, no date: no empty line either"


def test_a_trending_paper_already_picked_is_not_repeated() -> None:
    picked, other = paper(1, upvotes=80), paper(3, title="Everyone Reads This", upvotes=99)
    renderer = DigestRenderer(env=ENV, list_name="Paper digest", issue_date=DATE, trending=[other, picked])
    email = renderer.render(digest(picked))
    for body, heading in ((email.html, "Trending today"), (email.text, "TRENDING TODAY")):
        trending = body.split(heading, 1)[1]
        assert "Everyone Reads This" in trending and "Diffusion Models 1" not in trending
    only_picked = renderer.render(digest(picked, other))
    assert "Trending today" not in only_picked.html and "TRENDING TODAY" not in only_picked.text
    assert "Trending today" in renderer.render(digest(paper(2))).html, "someone else still sees both"


def test_a_trending_paper_holding_a_phrase_the_reader_excludes_is_not_shown_to_them() -> None:
    """"Trending today" listed papers the reader had excluded ("not reinforcement learning"), under their picks."""
    excluded = paper(3, title="Offline Reinforcement Learning at Scale", upvotes=99,
                     abstract="We study offline reinforcement-learning agents. " * 3)
    other = paper(4, title="Everyone Reads This", upvotes=50)
    renderer = DigestRenderer(env=ENV, list_name="Paper digest", issue_date=DATE, trending=[excluded, other])
    mine = renderer.render(replace(digest(paper(1)), exclude=("reinforcement learning",)))
    for body, heading in ((mine.html, "Trending today"), (mine.text, "TRENDING TODAY")):
        trending = body.split(heading, 1)[1]
        assert "Everyone Reads This" in trending and "Offline Reinforcement" not in trending
    assert "Offline Reinforcement" in renderer.render(digest(paper(1))).html, "a reader who did not exclude it sees it"
    everything_excluded = renderer.render(replace(digest(paper(1)), exclude=("reinforcement learning", "everyone reads")))
    assert "Trending today" not in everything_excluded.html and "TRENDING TODAY" not in everything_excluded.text
    assert [p.key for p in renderer.trending_for(("Reinforcement Learning",))] == [other.key], "any case, any word form"


def test_the_plain_text_is_wrapped_and_signed_off_like_a_letter() -> None:
    long_title = "A Very Long Title About Diffusion Models That Goes On " * 3
    long_reasons = ("topic: “diffusion models”, “score-based generative models”, “consistency distillation”",
                    "matches “sampling”: “few-step sampling”", "trending: 1,204 upvotes", "in cs.LG, cs.CV")
    email = render_digest(digest(paper(1, title=long_title.strip(), abstract="We propose " + "a fast solver " * 30 + "."),
                                 reasons=long_reasons),
                          env=ENV, list_name="Paper digest", trending=[paper(3, title=long_title.strip(), upvotes=5)])
    lines = email.text.split("\n")
    assert all(len(line) <= 78 for line in lines if "://" not in line), [line for line in lines if len(line) > 78]
    assert max(len(line) for line in lines if "://" not in line) >= 60, "wrapped, not chopped into stubs"
    assert "-- " in lines and lines.index("-- ") > lines.index("TRENDING TODAY"), "the signature separator before the footer"
    why = email.text.split("Why: ", 1)[1].split("More like this")[0]
    assert " ".join(why.split()) == "; ".join(long_reasons), "reasons wrap between words, none is cut"
    assert "few-step sampling" in email.html and "consistency distillation" in email.html


def test_the_message_reads_back_as_multipart_alternative_with_list_headers() -> None:
    email = render_digest(digest(), env=ENV, list_name="Paper digest")
    raw = message_bytes(email)
    message = message_from_bytes(raw, policy=default)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message.get_body(("plain",)).get_content() == email.text.replace("\n", "\r\n") or \
        message.get_body(("plain",)).get_content().replace("\r\n", "\n") == email.text
    received_html = message.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert received_html.isascii() and "&#183;" in received_html, "7bit: other characters travel as character references"
    assert html.unescape(received_html) == html.unescape(email.html), "which HTML reads as the characters themselves"
    assert message.get_body(("html",))["Content-Transfer-Encoding"] == "7bit"
    assert message["Message-ID"] == "<digest.20261123.1.abc@example.org>"
    assert message["List-Id"] == "Paper digest <digest.example.org>"
    assert message["List-Unsubscribe"] == ("<https://digest.example.org/unsubscribe/tok>, "
                                           "<mailto:digest@example.org?subject=unsubscribe%20tok>"), \
        "the mailto carries the unsubscribe token: email commands act on it (newsletter inbound)"
    assert message["Reply-To"] is None, "replies go to the From address when it is also the commands address"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Date"] == "Mon, 23 Nov 2026 07:00:00 +0000"
    assert raw == message_bytes(email), "a resend carries the same bytes"
    head, body = raw.split(b"\r\n\r\n", 1)
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), "headers are folded"
    assert all(len(line) <= 998 for line in body.split(b"\r\n")), "no body line too long for SMTP"
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_a_part_that_cannot_travel_as_7bit_is_quoted_printable() -> None:
    one_long_line = "<p>" + "ünïcödé and a very long paragraph " * 40 + "</p>"  # one 1,300-character line
    email = replace(render_digest(digest(), env=ENV, list_name="Paper digest"), html=one_long_line, text="Grüße\n")
    message = message_from_bytes(message_bytes(email), policy=default)
    for subtype, sent in (("html", one_long_line), ("plain", "Grüße\n")):
        part = message.get_body((subtype,))
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content().replace("\r\n", "\n") == sent
    assert all(len(line) <= 76 for line in message_bytes(email).split(b"\r\n\r\n", 1)[1].split(b"\r\n"))


def test_non_ascii_subjects_and_names_are_rfc2047_encoded() -> None:
    email = render_digest(digest(paper(title="Überraschend schnelle Diffusion 🚀")), env=ENV, list_name="Ärzte-Digest")
    raw = build_message(email, from_address="digest@example.org", list_name="Ärzte-Digest", list_id="digest.example.org",
                        date=dt.datetime(2026, 11, 23, 7))
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    message = message_from_bytes(raw, policy=default)
    assert str(message["Subject"]) == "Ärzte-Digest · 23 Nov: Überraschend schnelle Diffusion 🚀"
    assert message["From"].addresses[0].display_name == "Ärzte-Digest"


hostile_text = st.one_of(
    st.text(min_size=1, max_size=300),
    st.sampled_from(["Title\r\nBcc: victim@example.org", "Title\nX-Injected: yes", "Title%0d%0aBcc: x@example.org",
                     "=?utf-8?q?a=0D=0ABcc:_x@example.org?=", "Title\u2028X-Injected: yes", "🚀" * 500, "A" * 10_000,
                     "Title\x00\x1b[31m", " ".join(["word"] * 3000)]),
)


@settings(max_examples=80, deadline=None)
@given(title=hostile_text, list_name=hostile_text)
def test_no_title_or_list_name_can_add_a_header_or_break_the_line_limit(title: str, list_name: str) -> None:
    if not title.strip():
        title = "x"
    email = render_digest(digest(paper(title=title)), env=ENV, list_name=list_name)
    raw = build_message(email, from_address="digest@example.org", list_name=list_name, list_id="digest.example.org",
                        date=dt.datetime(2026, 11, 23, 7))
    head = raw.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0] for line in lines if line and not line[:1].isspace()]
    assert sorted(names) == HEADERS
    assert all(len(line) <= 998 for line in lines)
    assert head.isascii()
    message = message_from_bytes(raw, policy=default)
    subject = str(message["Subject"])
    assert "\n" not in subject and "\r" not in subject
    assert subject.replace(" ", "") == header_text(email.subject).replace(" ", "")


def test_dkim_signature_covers_the_list_headers_and_verifies() -> None:
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    raw = message_bytes(render_digest(digest(), env=ENV, list_name="Paper digest"),
                        dkim_key=DkimKey("digest", "example.org", pem))
    assert raw.startswith(b"DKIM-Signature:")
    signature = raw.split(b"\r\n\r\n", 1)[0].decode()
    signed = re.search(r"h=([^;]+);", signature.replace("\r\n", "").replace(" ", "")).group(1).lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "subject"} <= set(signed)
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: record)
    tampered = raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: nothing")
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: record)


@pytest.mark.parametrize("chars", [0, 89, 300])
def test_subject_keeps_the_date_and_shortens_long_titles(chars: int) -> None:
    email = render_digest(digest(paper(title="T" * chars or "Short")), env=ENV, list_name="Paper digest")
    assert email.subject.startswith("Paper digest · 23 Nov: ")
    assert len(email.subject) <= len("Paper digest · 23 Nov: ") + 91
