"""All SMTP lives here. A ``Mailer`` delivers one message at a time and classifies what went wrong.

Implementations: ``SmtpMailer`` (aiosmtplib, one connection reused for many messages),
``FileMailer`` (one ``.eml`` per message), ``ConsoleMailer`` and ``RecordingMailer`` (tests and
``--dry-run``). ``SmtpMailer`` can also ``announce`` a message (MAIL and RCPT) before ``send`` hands it
over, so the sender commits the delivery's ``sending`` while those round trips run. Each ``send``
either returns (the relay took the message) or raises one of:

- ``TemporaryFailure``: 4xx, or 552 in answer to RCPT (RFC 5321 §4.5.3.1.10); retry later;
- ``PermanentFailure``: any other 5xx, or an address this relay cannot take; never retry;
- ``UnknownOutcome``: the connection was lost after the message's final dot and before the reply;
- ``DeliveryError``: the relay or the outbox cannot be used at all; the run stops, the rest stays pending.

Anything else a mailer raises is a bug: the run stops too (see ``newsletter.send.dispatch``).
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from newsletter.errors import ConfigError, DeliveryError
from newsletter.records import Envelope
from newsletter.settings import Settings


class TemporaryFailure(Exception):
    """The relay said 'not now', or the connection was lost before the message was handed over."""

    def __init__(self, detail: str, *, connection_lost: bool = False) -> None:
        super().__init__(detail)
        self.connection_lost = connection_lost  # worth one immediate try on a fresh connection


class PermanentFailure(Exception):
    """The relay said 'never' for this recipient, or this recipient cannot be sent to at all."""

    def __init__(self, detail: str, *, bounce: bool = True) -> None:
        super().__init__(detail)
        self.bounce = bounce  # the relay refused the address: it counts toward NEWSLETTER_BOUNCE_LIMIT


class UnknownOutcome(Exception):
    """The relay may or may not have accepted the message."""


class Mailer(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def send(self, envelope: Envelope) -> None: ...


@runtime_checkable
class AnnouncingMailer(Mailer, Protocol):
    """A mailer that can open a message's transaction before it hands the message over (``SmtpMailer``):
    the envelope's round trips to the relay then overlap the ledger's commit of the delivery's start."""

    async def announce(self, envelope: Envelope) -> None: ...

    async def withdraw(self) -> None: ...


def wire_address(address: str) -> tuple[str, bool]:
    """The address as it goes into SMTP and the To header, and whether it needs SMTPUTF8 (RFC 6531).

    The domain is always in its ASCII form (IDNA: ``bücher.example`` → ``xn--bcher-kva.example``);
    only a local part with non-ASCII characters (``jürgen@…``) needs a relay that offers SMTPUTF8.
    Raises ``PermanentFailure`` for an address that cannot be written at all.
    """
    if address.isascii():
        return address, False
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PermanentFailure(f"cannot send to {address!r}: {exc}", bounce=False) from None
    if valid.ascii_email:
        return valid.ascii_email, False
    return f"{valid.local_part}@{valid.ascii_domain}", True


class SmtpMailer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 60.0,
        tls_context: ssl.SSLContext | None = None,
        allow_plaintext_auth: bool = False,
    ) -> None:
        if security == "none" and username and not allow_plaintext_auth:
            raise ConfigError(
                "NEWSLETTER_SMTP_USERNAME is set but NEWSLETTER_SMTP_SECURITY=none would send the password in clear; "
                "use starttls or tls, or set NEWSLETTER_SMTP_ALLOW_PLAINTEXT_AUTH=true if the relay is on a trusted network"
            )
        self.host, self.port, self.security = host, port, security
        self.username, self.password, self.timeout_s = username, password, timeout_s
        self.tls_context = tls_context
        self._smtp: aiosmtplib.SMTP | None = None
        self._announced: tuple[Envelope, aiosmtplib.SMTP] | None = None  # MAIL and RCPT done, the message not sent yet

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._smtp is not None and self._smtp.is_connected:
            try:
                await self._smtp.quit()
            except aiosmtplib.SMTPException:
                self._smtp.close()
        self._smtp = None

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout_s,
            use_tls=self.security == "tls",
            # starttls: required (a relay without it is an error, never a silent plaintext fallback);
            # none: not even attempted.
            start_tls=True if self.security == "starttls" else False,
            tls_context=self.tls_context,
            username=self.username,
            password=self.password,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"SMTP relay {self.host}:{self.port} refused the login ({exc.code} {exc.message}); "
                "check NEWSLETTER_SMTP_USERNAME and NEWSLETTER_SMTP_PASSWORD"
            ) from None
        except aiosmtplib.SMTPException as exc:
            if self.security == "starttls" and "STARTTLS" in str(exc):  # reached, but it offers no STARTTLS
                raise DeliveryError(
                    f"SMTP relay {self.host}:{self.port} does not offer STARTTLS, so the mail would go unencrypted; "
                    "use NEWSLETTER_SMTP_SECURITY=tls for a relay that speaks TLS from the start (often port 465), "
                    "or none for a local relay you trust"
                ) from None
            raise self._unreachable(exc) from None
        except (OSError, ssl.SSLError) as exc:
            raise self._unreachable(exc) from None
        self._smtp = smtp
        return smtp

    def _unreachable(self, exc: Exception) -> DeliveryError:
        return DeliveryError(
            f"cannot reach SMTP relay {self.host}:{self.port} with security={self.security} ({exc}); "
            "check NEWSLETTER_SMTP_HOST, NEWSLETTER_SMTP_PORT and NEWSLETTER_SMTP_SECURITY"
        )

    async def announce(self, envelope: Envelope) -> None:
        """Open the message's transaction (MAIL and RCPT) without handing the message over.

        The caller records the delivery ``sending`` meanwhile, then calls ``send`` (the message itself),
        or ``withdraw`` when it must not be sent after all. Raises as ``send`` does for a refusal or a
        lost connection; either way nothing is open afterwards, and ``send`` starts afresh.
        """
        self._announced = None
        smtp = self._smtp if self._smtp is not None and self._smtp.is_connected else await self._connect()
        recipient, smtputf8 = wire_address(envelope.recipient)
        try:
            if smtputf8:
                await self._require_smtputf8(smtp, envelope.recipient)
            await smtp.mail(envelope.sender, options=["SMTPUTF8"] if smtputf8 else None, encoding="utf-8")
            await smtp.rcpt(recipient, encoding="utf-8")
        except aiosmtplib.SMTPRecipientRefused as exc:
            await self._reset(smtp)
            raise _classify(exc.code, exc.message, in_rcpt=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(smtp)
            raise _classify(exc.code, exc.message, in_rcpt=False) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            self._drop()
            raise TemporaryFailure(f"connection lost before the message was sent ({exc})", connection_lost=True) from None
        self._announced = (envelope, smtp)

    async def withdraw(self) -> None:
        """Close an announced transaction without sending its message (RSET)."""
        if self._announced is not None:
            _, smtp = self._announced
            self._announced = None
            await self._reset(smtp)

    async def send(self, envelope: Envelope) -> None:
        if self._announced is None or self._announced[0] is not envelope or self._announced[1] is not self._smtp:
            await self.withdraw()
            await self.announce(envelope)
        assert self._announced is not None
        _, smtp = self._announced
        self._announced = None
        try:
            await self._hand_over(smtp, data_on_the_wire(envelope.data, known_crlf_only=envelope.crlf_only))
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(smtp)
            raise _classify(exc.code, exc.message, in_rcpt=False) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            self._drop()
            raise UnknownOutcome(f"connection lost while the relay was taking the message ({exc})") from None

    async def _hand_over(self, smtp: aiosmtplib.SMTP, wire: bytes) -> None:
        """DATA, the message as the wire carries it (``data_on_the_wire``), and the relay's reply to it.

        What ``aiosmtplib.SMTP.data`` does, through its public ``execute_command`` and protocol, except for
        preparing the message: it runs two regular expressions over it, ~0.4 ms for a 30 KB digest, the
        largest single cost of the sending process (which a big run waits on); ``data_on_the_wire`` makes
        the same bytes in ~0.03 ms (~0.09 ms when it must check the line endings itself).
        """
        response = await smtp.execute_command(b"DATA")
        if response.code != 354:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        if smtp.protocol is None:  # closed while DATA's reply was read
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        try:
            smtp.protocol.write(wire)
            response = await smtp.protocol.read_response(timeout=self.timeout_s)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            smtp.close()  # as SMTP.data does: a reply given up on must not be paired with the next command
            raise
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)

    async def _require_smtputf8(self, smtp: aiosmtplib.SMTP, recipient: str) -> None:
        if smtp.is_ehlo_or_helo_needed:  # aiosmtplib greets lazily, at the first MAIL
            await smtp.ehlo()
        if not smtp.supports_extension("smtputf8"):
            raise PermanentFailure(f"cannot send to {recipient}: the relay {self.host}:{self.port} does not offer SMTPUTF8, "
                                   "which an address with non-ASCII characters before the @ needs", bounce=False)

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        """RSET after a refusal so the next message starts clean; reconnect next time if that fails."""
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        self._announced = None
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None


def crlf_only(message: bytes) -> bool:
    """Whether every line of ``message`` ends in CRLF: no lone CR, no lone LF."""
    endings = message.count(b"\r\n")
    return message.count(b"\n") == endings and message.count(b"\r") == endings


def data_on_the_wire(message: bytes, *, known_crlf_only: bool = False) -> bytes:
    """The message as SMTP's DATA carries it (RFC 5321 §4.5.2): every line ending CRLF (a lone CR or LF
    too), a final CRLF, a dot that starts a line doubled, and the closing dot. Byte for byte what
    aiosmtplib's DATA makes of it (a property test holds the two equal), with bytes.replace.
    ``known_crlf_only``: ``crlf_only(message)`` was found true where the message was built."""
    wire = message
    if not known_crlf_only and not crlf_only(message):
        wire = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    if wire.startswith(b"."):
        wire = b"." + wire
    return wire.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _classify(code: int, text: str, *, in_rcpt: bool) -> Exception:
    detail = f"{code} {text}".strip()
    # 552 for a full mailbox is temporary wherever it comes (RFC 5321 4.5.3.1.10 asks senders to read it as 452).
    if 400 <= code < 500 or (code == 552 and (in_rcpt or MAILBOX_FULL.search(text))):
        return TemporaryFailure(detail)
    # The address was accepted; the message itself is refused: too big (552 at DATA, 5.2.3, 5.3.4) or for its
    # content (5.6.x). Ours to fix, so it counts no bounce against the subscriber.
    if not in_rcpt and (code == 552 or ABOUT_THE_MESSAGE.search(text)):
        return PermanentFailure(detail, bounce=False)
    return PermanentFailure(detail)


MAILBOX_FULL = re.compile(r"\b5\.2\.2\b|mailbox full|quota", re.IGNORECASE)
ABOUT_THE_MESSAGE = re.compile(r"\b5\.(?:2\.3|3\.4|6\.\d{1,3})\b")  # RFC 3463 enhanced codes about a message, not a mailbox
SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


class FileMailer:
    """Writes each message to ``outbox_dir/<recipient>/<message-id>.eml`` (atomically: tmp + rename)."""

    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = outbox_dir
        self.written: list[Path] = []

    async def __aenter__(self) -> Self:
        try:
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(f"cannot create the outbox {self.outbox_dir} ({exc}); check NEWSLETTER_OUTBOX_DIR") from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, envelope: Envelope) -> None:
        folder = self.outbox_dir / SAFE_FILENAME.sub("_", envelope.recipient)
        path = folder / (SAFE_FILENAME.sub("_", envelope.message_id.strip("<>")) + ".eml")
        temporary = path.with_suffix(".tmp")
        try:
            folder.mkdir(exist_ok=True)
            temporary.write_bytes(envelope.data)
            os.replace(temporary, path)
        except OSError as exc:  # a full disk, a read-only outbox: no message can be written, stop the run
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise DeliveryError(f"cannot write to {path}: {exc.strerror or exc}") from None
        self.written.append(path)


class ConsoleMailer:
    """Prints each message to standard output (development)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, envelope: Envelope) -> None:
        sys.stdout.write(f"--- message for {envelope.recipient} (from {envelope.sender}) ---\n"
                         f"{envelope.data.decode('utf-8', 'replace')}\n")


class RecordingMailer:
    """Keeps every message in memory: tests and dry runs."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, envelope: Envelope) -> None:
        self.sent.append(envelope)


def mailer_factory(settings: Settings) -> Callable[[], Mailer]:
    """Makes a mailer (one connection, for smtp) of the backend NEWSLETTER_EMAIL_BACKEND names."""
    if settings.email_backend == "smtp":
        settings.require("smtp_host", purpose="NEWSLETTER_EMAIL_BACKEND=smtp")
        tls_context = None
        if settings.smtp_ca_file is not None:
            try:
                tls_context = ssl.create_default_context(cafile=str(settings.smtp_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise DeliveryError(f"NEWSLETTER_SMTP_CA_FILE: cannot load {settings.smtp_ca_file} ({exc})") from None
        return lambda: SmtpMailer(
            host=settings.smtp_host or "",
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout_s=settings.smtp_timeout_s,
            tls_context=tls_context,
            allow_plaintext_auth=settings.smtp_allow_plaintext_auth,
        )
    if settings.email_backend == "console":
        return ConsoleMailer
    return lambda: FileMailer(settings.outbox_dir)
