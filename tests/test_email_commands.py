"""Reading email commands and the loop guard, on messages as mail clients and mail systems write them."""

from __future__ import annotations

import ast
import base64
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter import email_commands
from newsletter.email_commands import MAX_COMMANDS, Verb, is_automatic, parse

TOKEN = "MQ.x3Fk2Jq0mZl9c8TgXb7YuNrVwEs"  # the shape of an unsubscribe token (URLSafeSerializer)
OWN = {"digest@example.org", "commands@example.org"}


def mail(raw: str) -> EmailMessage:
    """A message as the listener gets it: bytes with CRLF line ends, parsed with the default policy."""
    message = message_from_bytes(raw.lstrip("\n").replace("\n", "\r\n").encode("utf-8"), policy=default)
    assert isinstance(message, EmailMessage)
    return message


def plain(body: str, *, subject: str = "", headers: str = "") -> EmailMessage:
    return mail(f"From: Ada Lovelace <ada@example.org>\nTo: digest@example.org\nSubject: {subject}\n"
                f"Message-ID: <cmd1@mail.example.org>\n{headers}Content-Type: text/plain; charset=utf-8\n\n{body}")


# --- the grammar -------------------------------------------------------------------------------


def test_a_subject_command_is_read_under_reply_and_forward_prefixes_and_list_tags() -> None:
    found = parse(plain("", subject=f"Re: Fwd: RE[2]: [Paper digest] AW: unsubscribe {TOKEN}"))
    assert found.verbs == (Verb.UNSUBSCRIBE,) and found.tokens == (TOKEN,)


def test_the_list_unsubscribe_mailto_subject_carries_the_token() -> None:
    # mailto:<list>?subject=unsubscribe%20<TOKEN>, as a mail client sends it.
    found = parse(plain("", subject=f"unsubscribe {TOKEN}"))
    assert found.commands[0].token == TOKEN


def test_an_ordinary_subject_is_not_a_command_and_body_commands_still_count() -> None:
    found = parse(plain("subscribe\nadd cs.LG\n", subject="Re: Your paper digest for 1 December"))
    assert found.verbs == (Verb.SUBSCRIBE, Verb.ADD) and not found.errors


def test_every_command_and_its_synonyms() -> None:
    body = ("subscribe\njoin\ntopics: diffusion models, graph neural networks^2; sampling\nTopics:robotics\n"
            "add cs.LG cs.CV\ndel cs.CV\ndelete hep-th\nremove math.ST\nunsubscribe\ncancel\nleave\nhelp\n")
    found = parse(plain(body))
    assert found.verbs == (Verb.SUBSCRIBE, Verb.SUBSCRIBE, Verb.TOPICS, Verb.TOPICS, Verb.ADD, Verb.DELETE, Verb.DELETE,
                           Verb.DELETE, Verb.UNSUBSCRIBE, Verb.UNSUBSCRIBE, Verb.UNSUBSCRIBE, Verb.HELP)
    topics = found.commands[2].topics
    assert [(t.phrase, t.weight) for t in topics] == [("diffusion models", 1.0), ("graph neural networks", 2.0),
                                                      ("sampling", 1.0)]
    assert [t.phrase for t in found.commands[3].topics] == ["robotics"]
    assert found.commands[4].categories == ("cs.LG", "cs.CV")


def test_categories_are_normalised_and_anything_else_is_refused_in_fixed_words() -> None:
    assert parse(plain("add CS.lg, hep-th; ASTRO-PH.co\n")).commands[0].categories == ("cs.LG", "hep-th", "astro-ph.CO")
    found = parse(plain("add <a href=http://spam.example>cheap pills</a>\n"))
    assert found.commands == () and found.errors
    assert all("pills" not in e and "spam" not in e for e in found.errors)  # replies never carry the sender's text
    assert parse(plain("add\n")).errors


def test_a_bad_topic_weight_is_an_error_not_a_command() -> None:
    found = parse(plain("topics: diffusion^99, sampling\n"))
    assert found.commands == () and found.errors and "99" not in found.errors[0]


def test_reading_stops_at_prose_a_signature_and_quoted_text() -> None:
    assert parse(plain("\n\nadd cs.LG\nThanks a lot for the service!\nsubscribe\n")).verbs == (Verb.ADD,)
    assert parse(plain("add cs.LG\n-- \nAda\nunsubscribe\n")).verbs == (Verb.ADD,)
    assert parse(plain("add cs.LG\n--\nhelp\n")).verbs == (Verb.ADD,)
    assert parse(plain("> unsubscribe\nadd cs.LG\n")).verbs == ()
    assert parse(plain("Hello,\nunsubscribe\n")).verbs == ()
    assert parse(plain("help me understand the ranking\n")).verbs == ()  # "help" with words after it is a letter


def test_a_reply_to_a_digest_reads_the_command_and_finds_the_quoted_unsubscribe_link() -> None:
    body = (f"unsubscribe\n\nOn Tue, 1 Dec 2026 at 07:00, Paper digest <digest@example.org> wrote:\n"
            f"> Your papers for 1 December\n> add cs.LG\n> Unsubscribe: https://digest.example.org/unsubscribe/{TOKEN}\n")
    found = parse(plain(body, subject="Re: Your paper digest for 1 December"))
    assert found.verbs == (Verb.UNSUBSCRIBE,)
    assert found.commands[0].token is None and found.link_tokens == (TOKEN,) and found.tokens == (TOKEN,)


def test_multipart_alternative_reads_the_plain_part() -> None:
    message = mail(f"""
From: ada@example.org
To: digest@example.org
Subject: commands
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

topics: diffusion models, sampling=0A
add cs.LG

--b1
Content-Type: text/html; charset=utf-8

<div>unsubscribe {TOKEN}</div>
--b1--
""")
    found = parse(message)
    assert found.verbs == (Verb.TOPICS, Verb.ADD) and found.tokens == ()


def test_an_html_only_message_is_reduced_to_text_and_its_quote_is_not_read() -> None:
    message = mail(f"""
From: ada@example.org
To: digest@example.org
Subject: Re: Your paper digest
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><head><style>div {{ color: red }}</style></head><body>
<div>unsubscribe</div><div><br></div>
<div class="gmail_quote"><div>On Tue, Paper digest wrote:</div>
<blockquote>subscribe<br>Diffusion &amp; sampling<br>
<a href="https://digest.example.org/unsubscribe/{TOKEN}">Unsubscribe</a></blockquote></div>
</body></html>
""")
    found = parse(message)
    assert found.verbs == (Verb.UNSUBSCRIBE,) and found.link_tokens == (TOKEN,)
    assert "color" not in email_commands.body_text(message)


def test_attachments_are_never_read() -> None:
    message = EmailMessage()
    message["From"], message["Subject"] = "ada@example.org", "hello"
    message.set_content("help\n")
    message.add_attachment(b"unsubscribe\nadd cs.LG\n", maintype="text", subtype="plain", filename="notes.txt")
    assert parse(message).verbs == (Verb.HELP,)


def test_non_ascii_subjects_bodies_and_charsets() -> None:
    body = base64.b64encode("topics: régularisation; 深層学習, Schrödinger-Brücken\n".encode()).decode()
    message = mail(f"""
From: =?utf-8?q?J=C3=BCrgen?= <juergen@example.org>
Subject: =?utf-8?q?Re=3A_add_cs=2ELG?=
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

{body}
""")
    found = parse(message)
    assert found.verbs == (Verb.ADD, Verb.TOPICS)
    assert [t.phrase for t in found.commands[1].topics] == ["régularisation", "深層学習", "Schrödinger-Brücken"]
    latin1 = message_from_bytes(b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
                                b"\r\ntopics: r\xe9seaux\r\n", policy=default)
    assert [t.phrase for t in parse(latin1).commands[0].topics] == ["réseaux"]
    unknown = message_from_bytes(b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain; charset=x-no-such\r\n"
                                 b"\r\nadd cs.LG\r\n", policy=default)
    assert parse(unknown).verbs == (Verb.ADD,)


def test_a_thousand_command_lines_keep_only_the_cap_and_say_the_rest_was_ignored() -> None:
    found = parse(plain("add cs.LG\n" * 1000))
    assert len(found.commands) == MAX_COMMANDS and found.truncated


def test_a_thousand_lines_of_prose_after_the_commands_are_not_truncation() -> None:
    found = parse(plain("add cs.LG\n\nDear list,\n" + "blah blah\n" * 1000))
    assert found.verbs == (Verb.ADD,) and not found.truncated


def test_blank_lines_past_the_line_cap_are_not_read() -> None:
    found = parse(plain("\n" * 150 + "unsubscribe\n"))
    assert found.commands == () and found.truncated


def test_text_past_the_size_cap_is_not_scanned_for_links() -> None:
    found = parse(plain("help\n\n" + "x" * 70_000 + f"\nhttps://digest.example.org/unsubscribe/{TOKEN}\n"))
    assert found.verbs == (Verb.HELP,) and found.link_tokens == ()


def test_headers_for_a_reply() -> None:
    message = plain("help", headers="In-Reply-To: <digest.20261201.42.0123456789abcdef@example.org>\n"
                                     "References: <older@x> <digest.20261201.42.0123456789abcdef@example.org>\n")
    assert email_commands.message_ids(message) == ("<digest.20261201.42.0123456789abcdef@example.org>", "<older@x>")
    assert email_commands.message_id(message) == "<cmd1@mail.example.org>"
    assert email_commands.message_id(plain("help", headers="")) == "<cmd1@mail.example.org>"
    assert email_commands.from_address(plain("help")) == "ada@example.org"
    assert email_commands.from_address(mail("From: a@example.org, b@example.org\nSubject: x\n\nhelp\n")) is None
    assert email_commands.from_address(mail("Subject: no from\n\nhelp\n")) is None


COMMAND_WORDS = st.sampled_from(["subscribe", "topics:", "add", "del", "unsubscribe", "help", "cancel", ">", "-- ",
                                  "cs.LG", "^2", ",", ";", "<br>", "<blockquote>", "=?utf-8?q?=C3=A9?=", "\n", "\r\n"])


@settings(max_examples=300, deadline=None)
@given(head=st.binary(max_size=300), body=st.lists(COMMAND_WORDS | st.text(max_size=20), max_size=200))
def test_any_message_is_read_without_an_exception_and_within_the_caps(head: bytes, body: list[str]) -> None:
    raw = b"From: a@example.org\r\n" + head + b"\r\n\r\n" + " ".join(body).encode("utf-8", "surrogateescape")
    for content_type in (b"", b"Content-Type: text/html\r\n"):
        message = message_from_bytes(content_type + raw, policy=default)
        found = parse(message)
        is_automatic(message, "a@example.org", OWN)
        assert len(found.commands) <= MAX_COMMANDS and len(found.errors) <= MAX_COMMANDS + 1


# --- the loop guard ----------------------------------------------------------------------------


def test_a_person_s_mail_may_be_answered() -> None:
    assert is_automatic(plain("help"), "ada@example.org", OWN) is None
    assert is_automatic(plain("help", headers="Auto-Submitted: no\n"), "ada@example.org", OWN) is None


@pytest.mark.parametrize(("headers", "why"), [
    ("Auto-Submitted: auto-replied\n", "Auto-Submitted"),
    ("Auto-Submitted: auto-generated; owner-email=x@example.org\n", "Auto-Submitted"),
    ("Precedence: bulk\n", "Precedence"),
    ("Precedence: junk\n", "Precedence"),
    ("Precedence: list\n", "Precedence"),
    ("X-Autoreply: yes\n", "auto-responder"),
    ("X-Autorespond: Out of office\n", "auto-responder"),
    ("X-Auto-Response-Suppress: All\n", "X-Auto-Response-Suppress"),
    ("List-Id: Another list <other.lists.example.org>\n", "mailing list"),
])
def test_automatic_mail_is_never_answered(headers: str, why: str) -> None:
    reason = is_automatic(plain("unsubscribe", headers=headers), "ada@example.org", OWN)
    assert reason is not None and why in reason


@pytest.mark.parametrize("sender", ["", "<>", None])
def test_an_empty_return_path_is_a_bounce(sender: str | None) -> None:
    assert "empty return path" in (is_automatic(plain("subscribe"), sender, OWN) or "")


def test_a_delivery_status_notification_is_a_bounce() -> None:
    bounce = mail("""
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: digest@example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="r1"

--r1
Content-Type: text/plain

subscribe
--r1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Final-Recipient: rfc822; gone@example.net
Action: failed
Status: 5.1.1
--r1--
""")
    assert is_automatic(bounce, "bounces@mx.example.net", OWN) == "a delivery or read report"
    plain_bounce = mail("From: MAILER-DAEMON@mx.example.net\nSubject: failure\n\nunsubscribe\n")
    assert "mail system" in (is_automatic(plain_bounce, "mailer-daemon@mx.example.net", OWN) or "")
    assert "mail system" in (is_automatic(plain("help"), "postmaster@example.net", OWN) or "")


@pytest.mark.parametrize("from_header", ["Paper digest <digest@example.org>", "DIGEST@Example.org",
                                         "commands@example.org", "\"ada@example.org\" <digest@example.org>"])
def test_mail_from_our_own_address_is_never_answered_even_forged(from_header: str) -> None:
    forged = mail(f"From: {from_header}\nTo: digest@example.org\nSubject: subscribe\n\nsubscribe\n")
    assert is_automatic(forged, "attacker@evil.example", OWN) == "sent from our own address"
    assert is_automatic(plain("help"), "digest@example.org", OWN) == "sent from our own address"


# --- purity ------------------------------------------------------------------------------------


def test_parsing_touches_neither_the_database_nor_the_network() -> None:
    tree = ast.parse(Path(email_commands.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    io = ("sqlalchemy", "aiosmtpd", "aiosmtplib", "smtplib", "socket", "httpx", "newsletter.db", "newsletter.send",
          "newsletter.subscriptions", "newsletter.runtime")
    assert not {m for m in imported if m.startswith(io)}


def test_a_huge_html_only_body_is_cut_before_it_is_parsed(monkeypatch) -> None:
    """HTMLParser is quadratic on some inputs: a megabyte of "<" took 16 s. Only the capped text reaches it."""
    from email.message import EmailMessage

    from newsletter import email_commands

    seen: list[int] = []
    real = email_commands.html_to_text
    monkeypatch.setattr(email_commands, "html_to_text", lambda html: seen.append(len(html)) or real(html[:100]))
    message = EmailMessage()
    message["From"] = "a@example.org"
    message.set_content("<" * 1_000_000, subtype="html")
    email_commands.body_text(message)
    assert seen and seen[0] <= 4 * email_commands.MAX_TEXT_CHARS

