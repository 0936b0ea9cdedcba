"""``newsletter inbound``: an SMTP listener for the list's own address that answers email commands.

In production a relay forwards the list address (``NEWSLETTER_COMMANDS_ADDRESS``, else the From
address) to this listener; it accepts mail only for that address (any other recipient gets 550) and
at most ``MAX_MESSAGE_BYTES`` a message. Each message is read (``newsletter.email_commands``), its
commands applied through ``newsletter.subscriptions`` in one transaction in a worker thread, and
after the commit the reply and any confirmation email are handed to the relay
(``newsletter.notices``) before the final dot is answered: relays wait ten minutes for that answer,
our relay timeout is a minute. (An IMAP poller, the other way to get the mail here, is not built.)

**What a From line can do.** Nothing without proof. ``subscribe``, ``topics:``, ``add`` and ``del``
only ask for a confirmation link, sent to the From address (a forged From gets its owner a link
they ignore). ``unsubscribe`` takes effect when the message carries proof that it comes from the
subscriber: an unsubscribe token (``unsubscribe TOKEN`` in the subject, as the List-Unsubscribe
mailto: writes it, or a quoted ``/unsubscribe/TOKEN`` link), or In-Reply-To/References naming the
Message-ID of a digest we sent (unguessable: it has a random part), in both cases of the From
address's own subscription. Without proof the reply says how, with the address's unsubscribe link
if it has a subscription: that reply goes only to the address, so only its owner reads it, and to
whoever sent the command it looks the same whether the address is subscribed or not.

**Replies.** One per message, to the From address, never to a Reply-To (a Reply-To would let anyone
point our replies at a third party); fixed wording, never the sender's text or subject (a forged
From must not turn us into a relay for someone else's words); ``In-Reply-To`` the command's
Message-ID; marked ``Auto-Submitted: auto-replied``. No reply at all to automatic mail
(``email_commands.is_automatic``: bounces, auto-replies, lists, our own address), so no loop, and at
most ``REPLIES_PER_ADDRESS_PER_HOUR`` replies to one address per hour, counted in this process
(a restart forgets; it is a brake on loops the guard did not catch, not an accounting). Commands are
still applied past it: an unsubscribe must never be lost, and confirmation emails have their own
daily limit in the service.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.orm import Session

from newsletter import email_commands, logs, notices, records, subscriptions, tokens
from newsletter.db import ledger, repo
from newsletter.db.models import Subscriber, SubscriberStatus
from newsletter.email_commands import Commands, Verb
from newsletter.errors import ConfigError, InvalidInput, NotFound
from newsletter.runtime import Runtime
from newsletter.settings import Settings
from newsletter.subscriptions import Notice, Via
from newsletter.validate import normalize_email

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1_048_576  # commands are a few lines; a reply quoting a digest is ~100 KB
REPLIES_PER_ADDRESS_PER_HOUR = 5  # a person sends one or two; more is a loop the guard missed
REPLY_WINDOW_S = 3600.0
MAX_TOKENS_CHECKED = 10  # unsubscribe tokens tried per message: each is an HMAC and a row read
SMTP_LIBRARY_LOG = "mail.log"  # aiosmtpd's logger: about 15 INFO lines a message (connection, envelope, each command)

CHECK_INBOX = ("We got your request. To make sure it came from you, we have sent a separate email to this "
               "address: check your inbox for a confirmation link and open it. Nothing changes until you do.")
UNSUBSCRIBED = ("You are unsubscribed: no more digests will be sent to this address. To come back, send "
                "\"subscribe\" (it needs confirming again).")
NOT_PROVEN = ("We could not tell that this request came from the subscriber, so nothing was changed. To "
              "unsubscribe, reply \"unsubscribe\" to one of your digests, or use the unsubscribe link at the "
              "foot of any digest.")
UNSUBSCRIBE_LINK = "Or open this link to unsubscribe this address: {url}"
CHANGE_NOT_MADE = ("You asked to unsubscribe and to change your subscription in one email: only the "
                   "unsubscribe was considered, nothing else was changed.")
NOTHING_CHANGED = "Nothing was changed; please send the commands again, corrected."
HELP = "The commands this address understands are listed below."
NOT_UNDERSTOOD = ("This email did not start with a command we understand, so nothing was done. The commands "
                  "are listed below: put them at the top of the email, one per line, or in the subject.")
TRUNCATED = (f"Only the first {email_commands.MAX_COMMANDS} commands and {email_commands.MAX_LINES} lines of an "
             "email are read: the rest of this one was ignored.")
REPLY_SUBJECT = "Your email to {list_name}"


class ReplyLimit:
    """At most ``per_window`` replies to one address per ``window_s``, in this process. Not thread-safe:
    used from the listener's event loop only."""

    def __init__(self, *, per_window: int = REPLIES_PER_ADDRESS_PER_HOUR, window_s: float = REPLY_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window, self.window_s, self.clock = per_window, window_s, clock
        self._sent: dict[str, collections.deque[float]] = {}

    def allow(self, address: str) -> bool:
        """True, and counted, when one more reply to ``address`` is within the limit."""
        now = self.clock()
        if len(self._sent) > 10_000:  # forget quiet addresses, so a flood of senders cannot grow this forever
            self._sent = {a: d for a, d in self._sent.items() if d and d[-1] > now - self.window_s}
        sent = self._sent.setdefault(address, collections.deque())
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        if len(sent) >= self.per_window:
            return False
        sent.append(now)
        return True


@dataclass(frozen=True, slots=True)
class Handled:
    """What one message came to: for the log line and for what to send after the commit."""

    outcome: str  # one line for the log; never the message's text
    sender: str | None = None  # the normalised From address; None: no reply at all
    reply: tuple[str, ...] = ()  # the reply's lines (fixed wording and our own links)
    notices: tuple[Notice, ...] = ()
    in_reply_to: str | None = None
    verbs: tuple[Verb, ...] = ()


# --- one message -------------------------------------------------------------------------------


def own_addresses(settings: Settings) -> set[str]:
    return {a.lower() for a in (settings.list_address, settings.from_address) if a}


def _printable(text: str | None) -> str:
    """An envelope address for the log: no control characters, not too long."""
    return re.sub(r"[^\x21-\x7e]", "?", text or "")[:120] or "<>"


def _proven_subscriber(session: Session, settings: Settings, *, sender: str, commands: Commands,
                       message: Message) -> int | None:
    """The id of the sender's subscription if the message proves it comes from its owner (see the module docstring)."""
    for token in commands.tokens[:MAX_TOKENS_CHECKED]:
        try:
            subscriber_id = tokens.read_token(token, secret_key=settings.secret_key or "", purpose=tokens.UNSUBSCRIBE)
        except InvalidInput:
            continue
        row = session.get(Subscriber, subscriber_id)
        if row is not None and row.email == sender:
            return subscriber_id
    referenced = email_commands.message_ids(message)
    if not referenced:
        return None
    return ledger.subscriber_of_message(session, message_ids=referenced, email=sender)


def _find(session: Session, email: str) -> Subscriber | None:
    try:
        return repo.get_subscriber(session, email=email)
    except NotFound:
        return None


def _wanted(settings: Settings, row: Subscriber | None, sender: str, commands: Commands) -> records.NewSubscriber:
    """The subscription the commands ask for: the current one changed, or a new one with the defaults."""
    if row is not None and row.status in subscriptions.ACTIVE_STATUSES:
        new = subscriptions.as_new_subscriber(row)
    else:
        new = records.NewSubscriber(email=sender, max_papers=settings.default_max_papers,
                                    status=SubscriberStatus.PENDING.value)
    preferences = new.preferences
    for command in commands.commands:
        if command.verb == Verb.TOPICS:
            preferences = dataclasses.replace(preferences, topics=command.topics)
        elif command.verb == Verb.ADD:
            # At most as many as the preferences page takes (web.forms.MAX_ITEMS): 20 "add" lines of 50
            # would otherwise store 1,000, and every later "Save" of that page would be refused.
            categories = tuple(dict.fromkeys(preferences.categories + command.categories))[:MAX_CATEGORIES]
            preferences = dataclasses.replace(preferences, categories=categories)
        elif command.verb == Verb.DELETE:
            categories = tuple(c for c in preferences.categories if c not in command.categories)
            preferences = dataclasses.replace(preferences, categories=categories)
    return dataclasses.replace(new, preferences=preferences)


MAX_CATEGORIES = 30


def _unsubscribe(session: Session, settings: Settings, *, sender: str, commands: Commands,
                 message: Message) -> tuple[str, list[str]]:
    subscriber_id = _proven_subscriber(session, settings, sender=sender, commands=commands, message=message)
    if subscriber_id is not None:
        subscriptions.unsubscribe(session, settings, subscriber_id, via=Via.EMAIL)
        return "unsubscribed", [UNSUBSCRIBED]
    lines = [NOT_PROVEN]
    row = _find(session, sender)
    if row is not None and row.status != SubscriberStatus.UNSUBSCRIBED:
        lines.append(UNSUBSCRIBE_LINK.format(url=subscriptions.unsubscribe_url(settings, row.id)))
    return "unsubscribe without proof: instructions sent", lines


def apply(session: Session, settings: Settings, *, sender: str, commands: Commands,
          message: Message) -> tuple[str, list[str], list[Notice]]:
    """Apply a message's commands for ``sender`` in ``session`` (the caller commits): the outcome for
    the log, the reply's lines and the notices to send after the commit."""
    verbs = set(commands.verbs)
    changes = verbs & set(email_commands.CHANGES)
    lines: list[str] = []
    found: list[Notice] = []
    if Verb.UNSUBSCRIBE in verbs:
        outcome, lines = _unsubscribe(session, settings, sender=sender, commands=commands, message=message)
        if changes:
            lines.append(CHANGE_NOT_MADE)
    elif commands.errors:  # a command with bad arguments: none of the others is half-applied either
        outcome, lines = "invalid commands: nothing changed", [*commands.errors, NOTHING_CHANGED]
    elif changes:
        row = _find(session, sender)
        new = _wanted(settings, row, sender, commands)
        ask = subscriptions.request_change if changes - {Verb.SUBSCRIBE} else subscriptions.request_subscription
        notice = ask(session, settings, new, via=Via.EMAIL)
        found = [notice] if notice is not None else []
        outcome = "confirmation requested" if notice is not None else "confirmation requested (none sent: daily limit)"
        lines = [CHECK_INBOX]
    elif Verb.HELP in verbs:
        outcome, lines = "help", [HELP]
    else:
        outcome, lines = "no command understood: help sent", [NOT_UNDERSTOOD]
    if commands.truncated:
        lines.append(TRUNCATED)
    return outcome, lines, found


def handle_message(runtime: Runtime, *, envelope_sender: str | None, data: bytes) -> Handled:
    """Read one message and apply its commands in one transaction (blocking: run it in a worker thread).

    A message that cannot be read is dropped (asking the relay to retry would bring it back for
    days); a database failure raises, so the relay tries again later."""
    settings = runtime.settings
    try:
        message = message_from_bytes(data, policy=default)
        reason = email_commands.is_automatic(message, envelope_sender, own_addresses(settings))
        if reason is not None:
            return Handled(f"not answered: {reason}")
        sender = normalize_email(email_commands.from_address(message) or "")
        commands = email_commands.parse(message)
    except InvalidInput:
        return Handled("not answered: no single valid From address")
    except Exception as exc:  # a message the email package chokes on: trying again cannot help
        return Handled(f"not answered: unreadable message ({type(exc).__name__})")
    with runtime.sessions.begin() as session:
        outcome, lines, found = apply(session, settings, sender=sender, commands=commands, message=message)
    return Handled(outcome, sender, tuple(lines), tuple(found), email_commands.message_id(message), commands.verbs)


# --- the listener ------------------------------------------------------------------------------


class InboundHandler:
    """aiosmtpd's handler: accepts mail for the list address only, applies it, answers it."""

    def __init__(self, runtime: Runtime, *, reply_limit: ReplyLimit | None = None) -> None:
        self.runtime = runtime
        self.list_address = runtime.settings.list_address.lower()
        self.reply_limit = reply_limit or ReplyLimit()

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope,  # noqa: N802 - aiosmtpd's hook
                          address: str, rcpt_options: list[str]) -> str:
        if address.strip().lower() != self.list_address:
            return "550 5.1.1 No such mailbox here: this server only takes email commands for the list"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:  # noqa: N802
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        started = time.monotonic()
        try:
            handled = await asyncio.to_thread(handle_message, self.runtime, envelope_sender=envelope.mail_from, data=data)
        except Exception:  # the database is locked or gone: nothing was committed, the relay tries again later
            log.exception("message from %s not handled", _printable(envelope.mail_from))
            return "451 4.3.0 Temporary failure, please try again later"
        sent = await self.answer(handled)
        log.info("from %s: %s [%s] %d sent in %.2f s", handled.sender or _printable(envelope.mail_from), handled.outcome,
                 " ".join(handled.verbs) or "-", sent, time.monotonic() - started)
        return "250 OK"

    async def answer(self, handled: Handled) -> int:
        """Send the reply (within the per-address limit) and the notices; returns how many were taken."""
        runtime = self.runtime
        envelopes = [notices.notice_message(runtime, n) for n in handled.notices]
        if handled.sender and handled.reply and self.reply_limit.allow(handled.sender):
            subject = REPLY_SUBJECT.format(list_name=runtime.settings.list_name)
            envelopes.insert(0, notices.reply_message(runtime, to=handled.sender, subject=subject, lines=handled.reply,
                                                      in_reply_to=handled.in_reply_to))
        return await notices.send(runtime, envelopes)


@contextlib.contextmanager
def listening(handler: InboundHandler, *, host: str, port: int) -> Iterator[Controller]:
    """The listener on ``host:port`` (in its own thread) while the block runs; aiosmtpd's own log says
    only warnings meanwhile (the one line per message is ours)."""
    controller = Controller(handler, hostname=host, port=port, data_size_limit=MAX_MESSAGE_BYTES, enable_SMTPUTF8=True,
                            server_hostname=handler.runtime.settings.from_domain)
    library_log = logging.getLogger(SMTP_LIBRARY_LOG)
    level_before = library_log.level
    library_log.setLevel(logging.WARNING)
    try:
        try:
            controller.start()
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"newsletter inbound cannot listen on {host}:{port}: {exc}") from None
        try:
            yield controller
        finally:
            controller.stop()
    finally:
        library_log.setLevel(level_before)


def run(settings: Settings, *, host: str, port: int) -> None:
    """Listen for email commands on ``host:port`` until SIGINT or SIGTERM."""
    logs.configure(log_format=settings.log_format, level=settings.log_level)
    settings.require("secret_key", "from_address", purpose="answering email commands")
    runtime = Runtime.build(settings)
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        previous[number] = signal.signal(number, lambda *_: stop.set())
    try:
        with listening(InboundHandler(runtime), host=host, port=port):
            log.info("listening on %s:%d for email commands to %s", host, port, settings.list_address)
            while not stop.wait(0.5):
                pass
            log.info("stopping")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        runtime.close()


__all__ = ["MAX_MESSAGE_BYTES", "REPLIES_PER_ADDRESS_PER_HOUR", "Handled", "InboundHandler", "ReplyLimit", "apply",
           "handle_message", "listening", "run"]
