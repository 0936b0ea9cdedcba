"""``newsletter inbound`` over the wire: a real listener, a real SMTP client, replies to a real aiosmtpd sink."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import signal
import smtplib
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from newsletter import inbound, subscriptions
from newsletter.db.models import Delivery, Subscriber, SubscriptionEvent
from newsletter.inbound import InboundHandler, ReplyLimit, listening
from newsletter.records import NewSubscriber, Preferences
from newsletter.runtime import Runtime
from newsletter.settings import Settings
from newsletter.subscriptions import Via
from tests.conftest import Received, SmtpSink, free_port

SECRET = "test-secret-key-0123456789abcdefghij"
LIST = "digest@example.org"
CONFIRM_LINK = re.compile(r"https://digest\.example\.org/confirm/([\w.-]+)")
UNSUBSCRIBE_LINK = re.compile(r"https://digest\.example\.org/unsubscribe/([\w.-]+)")


def settings_for(database_url: str, sink: SmtpSink, **extra: Any) -> Settings:
    return Settings(_env_file=None, database_url=database_url, secret_key=SECRET, from_address=LIST,
                    base_url="https://digest.example.org", email_backend="smtp", smtp_host=sink.host,
                    smtp_port=sink.port, smtp_security="none", **extra)


@dataclass
class Listener:
    port: int
    runtime: Runtime
    sink: SmtpSink

    def send(self, body: str, *, subject: str = "", sender: str = "ada@example.org", from_header: str | None = None,
             headers: str = "", to: str = LIST, message_id: str = "<cmd.1@mail.example.org>") -> None:
        """One message over SMTP; returns once the listener answered the final dot (replies are sent by then)."""
        raw = (f"From: {from_header or sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
               f"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\n{headers}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}")
        self.send_raw(raw.replace("\r\n", "\n").replace("\n", "\r\n").encode(), sender=sender, to=to)

    def send_raw(self, data: bytes, *, sender: str, to: str = LIST) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.sendmail(sender, [to], data)

    def mail_to(self, address: str) -> list[Received]:
        return [r for r in self.sink.received if r.recipients == [address]]

    def only_reply_to(self, address: str) -> str:
        replies = [r.message for r in self.mail_to(address) if r.message["Subject"] == "Your email to Paper digest"]
        assert len(replies) == 1, [r.message["Subject"] for r in self.mail_to(address)]
        return str(replies[0].get_content()).replace("\r\n", "\n")

    def subscriber(self, email: str) -> Subscriber | None:
        with self.runtime.sessions() as session:
            row = session.scalar(select(Subscriber).where(Subscriber.email == email))
            if row is not None:
                session.expunge(row)
            return row


@pytest.fixture
def listener(sqlite_url: str, smtp_server: SmtpSink) -> Iterator[Listener]:
    runtime = Runtime.build(settings_for(sqlite_url, smtp_server))
    port = free_port()
    with listening(InboundHandler(runtime), host="127.0.0.1", port=port):
        yield Listener(port, runtime, smtp_server)
    runtime.close()


def add_active(listener: Listener, email: str, *, topics: tuple[str, ...] = (), categories: tuple[str, ...] = ()) -> int:
    with listener.runtime.sessions.begin() as session:
        row = subscriptions.add(session, listener.runtime.settings, NewSubscriber(
            email=email, preferences=Preferences.from_lists(topics=topics, categories=categories)))
        return row.id


def confirm_from_inbox(listener: Listener, address: str) -> None:
    links = [m for r in listener.mail_to(address) for m in CONFIRM_LINK.findall(str(r.message.get_content()))]
    assert len(links) == 1, links
    with listener.runtime.sessions.begin() as session:
        subscriptions.confirm(session, listener.runtime.settings, links[0])


def unsubscribe_token(subscriber_id: int, settings: Settings) -> str:
    match = UNSUBSCRIBE_LINK.fullmatch(subscriptions.unsubscribe_url(settings, subscriber_id))
    assert match
    return match.group(1)


# --- joining and changing ----------------------------------------------------------------------


def test_subscribe_by_email_needs_the_confirmation_link(listener: Listener) -> None:
    listener.send("subscribe\n\n-- \nAda", subject="hello", headers="Reply-To: someone-else@example.net\n")
    assert listener.subscriber("ada@example.org").status == "pending"  # type: ignore[union-attr]
    reply = listener.only_reply_to("ada@example.org")
    assert "check your inbox for a confirmation link" in reply and "topics: a, b; c" in reply  # the command list
    message = next(r.message for r in listener.mail_to("ada@example.org") if r.message["Subject"].startswith("Your email"))
    assert message["In-Reply-To"] == "<cmd.1@mail.example.org>" and message["Auto-Submitted"] == "auto-replied"
    assert listener.mail_to("someone-else@example.net") == []  # never to a Reply-To

    confirm_from_inbox(listener, "ada@example.org")
    assert listener.subscriber("ada@example.org").status == "active"  # type: ignore[union-attr]


def test_a_topic_and_category_change_waits_for_its_confirmation(listener: Listener) -> None:
    add_active(listener, "ada@example.org", topics=("graphs",), categories=("cs.AI", "stat.ML"))
    listener.send("topics: robotics; diffusion models^2\nadd CS.lg\ndel cs.AI\n", subject="Re: Your paper digest")
    row = listener.subscriber("ada@example.org")
    assert row is not None and row.status == "active"
    assert [t["phrase"] for t in row.preferences.topics] == ["graphs"] and row.preferences.categories == ["cs.AI", "stat.ML"]
    assert "check your inbox for a confirmation link" in listener.only_reply_to("ada@example.org")

    confirm_from_inbox(listener, "ada@example.org")
    row = listener.subscriber("ada@example.org")
    assert row is not None
    assert [(t["phrase"], t["weight"]) for t in row.preferences.topics] == [("robotics", 1.0), ("diffusion models", 2.0)]
    assert row.preferences.categories == ["stat.ML", "cs.LG"]


def test_a_bad_category_changes_nothing_and_the_reply_does_not_repeat_it(listener: Listener) -> None:
    listener.send("add http://cheap-pills.example/buy\n")
    assert listener.subscriber("ada@example.org") is None
    reply = listener.only_reply_to("ada@example.org")
    assert "arXiv category" in reply and "Nothing was changed" in reply and "pills" not in reply
    assert not [r for r in listener.mail_to("ada@example.org") if CONFIRM_LINK.search(str(r.message.get_content()))]


# --- leaving -----------------------------------------------------------------------------------


def test_the_list_unsubscribe_mailto_unsubscribes_with_its_token(listener: Listener) -> None:
    subscriber_id = add_active(listener, "ada@example.org")
    listener.send("add cs.LG\n", subject=f"unsubscribe {unsubscribe_token(subscriber_id, listener.runtime.settings)}")
    row = listener.subscriber("ada@example.org")
    assert row is not None and row.status == "unsubscribed" and row.preferences.categories == []
    reply = listener.only_reply_to("ada@example.org")
    assert "You are unsubscribed" in reply and "nothing else was changed" in reply
    assert len(listener.mail_to("ada@example.org")) == 1  # no confirmation link for the change


def test_a_token_works_only_from_its_own_address(listener: Listener) -> None:
    ada = add_active(listener, "ada@example.org")
    add_active(listener, "bo@example.org")
    listener.send("", subject=f"unsubscribe {unsubscribe_token(ada, listener.runtime.settings)}", sender="bo@example.org")
    assert listener.subscriber("ada@example.org").status == "active"  # type: ignore[union-attr]
    assert listener.subscriber("bo@example.org").status == "active"  # type: ignore[union-attr]
    assert "could not tell" in listener.only_reply_to("bo@example.org")
    assert listener.mail_to("ada@example.org") == []


def test_replying_unsubscribe_to_a_digest_unsubscribes(listener: Listener) -> None:
    subscriber_id = add_active(listener, "ada@example.org")
    digest_id = f"<digest.20261201.{subscriber_id}.0123456789abcdef@example.org>"
    with listener.runtime.sessions.begin() as session:
        session.add(Delivery(subscriber_id=subscriber_id, issue_date=dt.date(2026, 12, 1), status="sent", message_id=digest_id,
                             sent_at=dt.datetime(2026, 12, 1, 6, 0)))
    add_active(listener, "mallory@example.org")
    # The same Message-ID from another address (it saw a forwarded digest) proves nothing.
    listener.send("unsubscribe\n", sender="mallory@example.org", headers=f"In-Reply-To: {digest_id}\n")
    assert listener.subscriber("ada@example.org").status == "active"  # type: ignore[union-attr]
    assert listener.subscriber("mallory@example.org").status == "active"  # type: ignore[union-attr]

    listener.send("Unsubscribe\n\nOn Tue, 1 Dec 2026, Paper digest wrote:\n> Your papers\n",
                  subject="Re: Your paper digest for 1 December",
                  headers=f"In-Reply-To: {digest_id}\nReferences: {digest_id}\n")
    assert listener.subscriber("ada@example.org").status == "unsubscribed"  # type: ignore[union-attr]
    assert "You are unsubscribed" in listener.only_reply_to("ada@example.org")


def test_without_a_token_nothing_changes_and_the_reply_says_how(listener: Listener) -> None:
    subscriber_id = add_active(listener, "ada@example.org")
    listener.send("unsubscribe\n")
    listener.send("unsubscribe\n", sender="carol@example.org")
    assert listener.subscriber("ada@example.org").status == "active"  # type: ignore[union-attr]
    assert listener.subscriber("carol@example.org") is None
    to_ada, to_carol = listener.only_reply_to("ada@example.org"), listener.only_reply_to("carol@example.org")
    assert "could not tell" in to_ada
    # To whoever sent it, the answer is the same whether the address is subscribed or not: only the link differs.
    flat = " ".join(to_ada.split())  # the reply is wrapped at 76 columns
    assert re.sub(r"Or open this link to unsubscribe this address: \S+", "", flat).split() == to_carol.split()
    # Only the address's owner reads its reply: it carries the address's own unsubscribe link, and the link works.
    links = UNSUBSCRIBE_LINK.findall(to_ada)
    assert links == [unsubscribe_token(subscriber_id, listener.runtime.settings)]
    assert UNSUBSCRIBE_LINK.findall(to_carol) == []
    with listener.runtime.sessions.begin() as session:
        assert subscriptions.unsubscribe_by_token(session, listener.runtime.settings, links[0], via=Via.WEB)


# --- no answers --------------------------------------------------------------------------------


def nothing_recorded(listener: Listener) -> bool:
    with listener.runtime.sessions() as session:
        return (session.scalar(select(func.count()).select_from(Subscriber)) == 0
                and session.scalar(select(func.count()).select_from(SubscriptionEvent)) == 0)


def test_mail_from_our_own_address_gets_no_answer(listener: Listener) -> None:
    listener.send("subscribe\n", sender="attacker@evil.example", from_header=f"Paper digest <{LIST}>")
    listener.send("subscribe\n", sender=LIST)
    assert listener.sink.received == [] and nothing_recorded(listener)


def test_an_auto_reply_gets_no_answer(listener: Listener) -> None:
    listener.send("I am out of the office until Monday.\n", subject="Auto: Your email to Paper digest",
                  headers="Auto-Submitted: auto-replied\n")
    listener.send("subscribe\n", headers="Precedence: bulk\n")
    assert listener.sink.received == [] and nothing_recorded(listener)


def test_a_bounce_gets_no_answer(listener: Listener) -> None:
    bounce = b"""From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r
To: digest@example.org\r
Subject: Undelivered Mail Returned to Sender\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status; boundary="r1"\r
\r
--r1\r
Content-Type: text/plain\r
\r
subscribe\r
--r1\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.example.net\r
Final-Recipient: rfc822; ada@example.org\r
Action: failed\r
Status: 5.1.1\r
--r1--\r
"""
    listener.send_raw(bounce, sender="")  # MAIL FROM:<>
    assert listener.sink.received == [] and nothing_recorded(listener)


def test_a_thousand_line_command_mail_applies_at_most_the_cap_and_says_so(listener: Listener) -> None:
    names = ["".join(letters) for letters in product(string.ascii_lowercase, repeat=3)][:1000]
    listener.send("".join(f"add {name}\n" for name in names))
    assert "the rest of this one was ignored" in " ".join(listener.only_reply_to("ada@example.org").split())
    confirm_from_inbox(listener, "ada@example.org")
    row = listener.subscriber("ada@example.org")
    assert row is not None and row.preferences.categories == names[:20]


def test_text_that_is_no_command_gets_the_help(listener: Listener) -> None:
    listener.send("Hi, how do I change my topics?\n", subject="question")
    reply = listener.only_reply_to("ada@example.org")
    assert "did not start with a command" in reply and "unsubscribe" in reply
    assert "how do I" not in reply and listener.subscriber("ada@example.org") is None


def test_replies_to_one_address_are_limited_per_hour(listener: Listener) -> None:
    for number in range(inbound.REPLIES_PER_ADDRESS_PER_HOUR + 2):
        listener.send("help\n", message_id=f"<cmd.{number}@mail.example.org>")
    assert len(listener.mail_to("ada@example.org")) == inbound.REPLIES_PER_ADDRESS_PER_HOUR
    listener.send("help\n", sender="bo@example.org")
    assert len(listener.mail_to("bo@example.org")) == 1


def test_the_reply_limit_forgets_after_its_window() -> None:
    clock = [0.0]
    limit = ReplyLimit(per_window=2, window_s=60, clock=lambda: clock[0])
    assert [limit.allow("a@x.org") for _ in range(3)] == [True, True, False]
    assert limit.allow("b@x.org")
    clock[0] = 61.0
    assert limit.allow("a@x.org")


# --- the SMTP edge -----------------------------------------------------------------------------


def test_only_the_list_address_is_accepted(listener: Listener) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        listener.send("subscribe\n", to="someone@example.org")
    assert refused.value.recipients["someone@example.org"][0] == 550
    listener.send("help\n", to="DIGEST@Example.ORG")  # addresses are case-insensitive
    assert len(listener.mail_to("ada@example.org")) == 1


def test_a_message_is_one_line_of_log_without_the_smtp_librarys_own(listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    listener.send("help\n")
    assert len(listener.mail_to("ada@example.org")) == 1
    chatter = [r.getMessage() for r in caplog.records if r.name == "mail.log" and r.levelno < logging.WARNING]
    assert chatter == []  # aiosmtpd's envelope and SMTP commands: about 15 lines a message
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("newsletter")]
    assert len(ours) == 1 and ours[0].startswith("from ada@example.org: help [help] 1 sent in "), ours


def test_a_commands_address_is_the_one_accepted_and_our_own_too(sqlite_url: str, smtp_server: SmtpSink) -> None:
    runtime = Runtime.build(settings_for(sqlite_url, smtp_server, commands_address="commands@example.org"))
    port = free_port()
    with listening(InboundHandler(runtime), host="127.0.0.1", port=port):
        commands = Listener(port, runtime, smtp_server)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            commands.send("help\n", to=LIST)
        commands.send("subscribe\n", sender="loop@example.org", from_header="commands@example.org", to="commands@example.org")
        assert smtp_server.received == []
        commands.send("help\n", to="commands@example.org")
        reply = commands.only_reply_to("ada@example.org")
    runtime.close()
    assert "Commands for commands@example.org" in reply


def test_a_message_over_the_size_limit_is_refused(listener: Listener) -> None:
    with pytest.raises(smtplib.SMTPException):
        listener.send("subscribe\n" + "x" * (inbound.MAX_MESSAGE_BYTES + 10))
    assert listener.sink.received == [] and nothing_recorded(listener)


def test_a_database_failure_asks_the_relay_to_try_again(tmp_path: Path, smtp_server: SmtpSink) -> None:
    url = f"sqlite:///{tmp_path / 'not-migrated.db'}"  # no tables: every query fails
    runtime = Runtime.build(settings_for(url, smtp_server))
    port = free_port()
    with listening(InboundHandler(runtime), host="127.0.0.1", port=port), \
            pytest.raises(smtplib.SMTPDataError) as failed:
        Listener(port, runtime, smtp_server).send("subscribe\n")
    runtime.close()
    assert failed.value.smtp_code == 451 and smtp_server.received == []


def test_run_serves_until_sigterm(sqlite_url: str, smtp_server: SmtpSink, tmp_path: Path) -> None:
    port = free_port()
    environment = {**os.environ, "NEWSLETTER_DATABASE_URL": sqlite_url, "NEWSLETTER_SECRET_KEY": SECRET,
                   "NEWSLETTER_FROM_ADDRESS": LIST, "NEWSLETTER_BASE_URL": "https://digest.example.org",
                   "NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": smtp_server.host,
                   "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SMTP_SECURITY": "none"}
    code = ("from newsletter.inbound import run; from newsletter.settings import load_settings; "
            f"run(load_settings(), host='127.0.0.1', port={port})")
    process = subprocess.Popen([sys.executable, "-c", code], env=environment, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.05)
        Listener(port, Runtime.build(settings_for(sqlite_url, smtp_server)), smtp_server).send(
            "help\n\n-- \nAda, room 42-secret-marker", subject="subject-marker")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert len(smtp_server.received) == 1
    assert "listening on 127.0.0.1" in err and "ada@example.org: help" in err and "stopping" in err
    assert "secret-marker" not in err and "subject-marker" not in err  # neither body nor subject is logged


def test_the_mailto_a_real_digest_carries_unsubscribes(listener: Listener) -> None:
    """The List-Unsubscribe mailto as render/mime.py writes it, used as a mail client would: To and Subject from it."""
    import re as _re
    import urllib.parse
    from email import message_from_bytes
    from email.policy import default

    from newsletter.records import OutgoingEmail
    from newsletter.render.mime import build_message

    subscriber_id = add_active(listener, "ada@example.org")
    settings = listener.runtime.settings
    email = OutgoingEmail(to="ada@example.org", subject="Your papers", html="<p>x</p>", text="x", message_id="<d.1@example.org>",
                          unsubscribe_url=subscriptions.unsubscribe_url(settings, subscriber_id))
    raw = build_message(email, from_address=LIST, list_name="Paper digest", list_id="digest.example.org",
                        date=dt.datetime(2026, 12, 1, 7), commands_address=settings.list_address)
    header = message_from_bytes(raw, policy=default)["List-Unsubscribe"]
    mailto = _re.search(r"<mailto:([^?>]+)\?([^>]+)>", str(header))
    assert mailto, header
    to, query = mailto.group(1), urllib.parse.parse_qs(mailto.group(2))
    listener.send("", subject=query["subject"][0], to=to)
    row = listener.subscriber("ada@example.org")
    assert row is not None and row.status == "unsubscribed"


def test_add_lines_never_store_more_categories_than_the_preferences_page_takes(listener: Listener) -> None:
    names = ["".join(letters) for letters in product(string.ascii_lowercase, repeat=3)][:1000]
    listener.send("".join("add " + " ".join(names[line * 50:(line + 1) * 50]) + "\n" for line in range(20)))
    confirm_from_inbox(listener, "ada@example.org")
    row = listener.subscriber("ada@example.org")
    assert row is not None and row.preferences.categories == names[:30]
