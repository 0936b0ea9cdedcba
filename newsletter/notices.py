"""Short transactional emails: confirmation links, "already subscribed" notes, replies to email commands.

Plain text from ``templates/notices/``; they carry links and fixed wording, never text a visitor
typed (a sign-up form cannot be used to send someone else a message). Every one is marked
``Auto-Submitted`` (RFC 3834), so auto-responders do not answer it and ``newsletter inbound`` never
answers one back: no mail loops.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from newsletter.errors import DeliveryError
from newsletter.records import Envelope
from newsletter.render.mime import header_text, sign
from newsletter.runtime import Runtime
from newsletter.send.mailer import PermanentFailure, TemporaryFailure, UnknownOutcome, wire_address
from newsletter.subscriptions import Notice, NoticeKind

log = logging.getLogger(__name__)

SUBJECTS = {
    NoticeKind.CONFIRM: "Confirm your subscription to {list_name}",
    NoticeKind.ALREADY_SUBSCRIBED: "You are already subscribed to {list_name}",
}
CHANGE_SUBJECT = "Confirm the change to your {list_name} subscription"


def _message(runtime: Runtime, *, to: str, subject: str, body: str, auto: str, in_reply_to: str | None = None) -> Envelope:
    settings = runtime.settings
    settings.require("from_address", purpose="sending emails")
    message = EmailMessage()
    message["From"] = f"{settings.list_name} <{settings.from_address}>"
    message["Subject"] = subject
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message_id = make_msgid(domain=settings.from_domain)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = auto  # RFC 3834: auto-generated (notices) or auto-replied (command replies)
    message["Precedence"] = "bulk"  # older auto-responders look at this instead
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message.set_content(body)
    # To as the digests write it (render.mime): the domain in IDNA form, UTF-8 only for a local part that needs
    # it (RFC 6532). The stdlib would put encoded words inside the address, which RFC 2047 forbids.
    try:
        shown, _ = wire_address(to)
    except PermanentFailure:  # addresses are validated where they come in; the relay will say what is wrong
        shown = to
    data = f"To: {header_text(shown)}\r\n".encode() + message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    if runtime.dkim is not None:
        data = sign(data, runtime.dkim)
    return Envelope(settings.from_address or "", to, message_id, data)


def notice_message(runtime: Runtime, notice: Notice) -> Envelope:
    settings = runtime.settings
    subject = (CHANGE_SUBJECT if notice.change else SUBJECTS[notice.kind]).format(list_name=settings.list_name)
    body = runtime.templates.get_template(f"notices/{notice.kind.value}.txt.j2").render(
        to=notice.to, url=notice.url, change=notice.change, list_name=settings.list_name,
        hours=round(settings.confirm_link_hours))
    return _message(runtime, to=notice.to, subject=subject, body=body, auto="auto-generated")


def reply_message(runtime: Runtime, *, to: str, subject: str, lines: Sequence[str], in_reply_to: str | None) -> Envelope:
    """The answer to an email command: what was done, then the list of commands."""
    settings = runtime.settings
    body = runtime.templates.get_template("notices/reply.txt.j2").render(
        lines=lines, list_name=settings.list_name, list_address=settings.list_address)
    return _message(runtime, to=to, subject=subject, body=body, auto="auto-replied", in_reply_to=in_reply_to)


async def send(runtime: Runtime, envelopes: Sequence[Envelope]) -> int:
    """Send over one connection; returns how many were taken. A failure is logged and skipped: these
    are answers to a request, and the person can ask again (nothing is lost from the ledger)."""
    if not envelopes:
        return 0
    sent = 0
    try:
        async with runtime.connect() as mailer:
            for envelope in envelopes:
                try:
                    await mailer.send(envelope)
                    sent += 1
                except (TemporaryFailure, PermanentFailure, UnknownOutcome) as exc:
                    log.warning("notice to %s not sent: %s", envelope.recipient, exc)
    except DeliveryError as exc:
        log.error("notices not sent, the relay cannot be used: %s", exc)
    return sent


async def send_notices(runtime: Runtime, notices: Sequence[Notice | None]) -> int:
    return await send(runtime, [notice_message(runtime, n) for n in notices if n is not None])
