"""Email commands, read from a message: what ``newsletter inbound`` is asked to do. Pure: no database, no network.

The grammar is arXiv's and Mailman's: one command per line, in the subject or the first lines of the
plain-text body (an HTML-only message is reduced to its text). Reading stops at the first line that
is not a command, at a signature (``-- ``) and at quoted text (``>``), so a reply's quoted digest and
a signature are never read as commands; blank lines are skipped.

    subscribe                    ask for a confirmation link (also: join)
    topics: a, b; c              replace the topics (commas or semicolons; "topic^2" weights one)
    add cs.LG [cs.CV ...]        follow arXiv categories
    del cs.LG [...]              stop following them (also: delete, remove)
    unsubscribe [TOKEN]          stop all mail (also: cancel, leave); the token is the one of an
                                 unsubscribe link, as the List-Unsubscribe mailto: puts it in the subject
    help                         the list of commands

Only the first ``MAX_LINES`` lines and ``MAX_TEXT_CHARS`` characters of the body are read, and at most
``MAX_COMMANDS`` commands are kept; ``Commands.truncated`` says when some were left unread.

``is_automatic`` is the loop guard: why a message must get no answer at all.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import getaddresses
from html.parser import HTMLParser

from newsletter.errors import InvalidInput
from newsletter.records import Topic
from newsletter.validate import check_category

MAX_COMMANDS = 20  # a person sends two or three; more is a script or an attack, and each may cost a write
MAX_LINES = 100  # of the body: commands come first, whatever follows is a letter or a quoted digest
MAX_TEXT_CHARS = 65_536  # of the body's text, also for scanning it for unsubscribe links
MAX_TOPICS = 50  # in one "topics:" line
MAX_TOPIC_CHARS = 200  # one topic phrase; a longer one is a sentence, not a topic
MAX_CATEGORIES = 50  # in one "add" line


class Verb(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    TOPICS = "topics"
    ADD = "add"
    DELETE = "del"
    UNSUBSCRIBE = "unsubscribe"
    HELP = "help"


VERBS = {
    "subscribe": Verb.SUBSCRIBE, "join": Verb.SUBSCRIBE,
    "topics": Verb.TOPICS, "topic": Verb.TOPICS,
    "add": Verb.ADD,
    "del": Verb.DELETE, "delete": Verb.DELETE, "remove": Verb.DELETE,
    "unsubscribe": Verb.UNSUBSCRIBE, "cancel": Verb.UNSUBSCRIBE, "leave": Verb.UNSUBSCRIBE,
    "help": Verb.HELP, "?": Verb.HELP,
}
CHANGES = (Verb.SUBSCRIBE, Verb.TOPICS, Verb.ADD, Verb.DELETE)

# An itsdangerous URLSafeSerializer token: base64url payload, a dot, base64url signature.
TOKEN = r"[A-Za-z0-9_-]{1,100}\.[A-Za-z0-9_-]{10,100}"
TOKEN_ALONE = re.compile(rf"^{TOKEN}$")
UNSUBSCRIBE_LINK = re.compile(rf"/unsubscribe/({TOKEN})(?![A-Za-z0-9_.-])")
# "Re:", "Fwd:", "AW:" (German), "SV:" (Nordic), "Antw:" (Dutch), with Outlook's "RE[2]:", and "[tags]".
REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw|tr)\s*(?:\[\d+\])?\s*:|\[[^\]]{0,80}\])\s*", re.I)
AUTOMATIC_SENDERS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply", "do-not-reply")


@dataclass(frozen=True, slots=True)
class Command:
    verb: Verb
    topics: tuple[Topic, ...] = ()  # TOPICS
    categories: tuple[str, ...] = ()  # ADD, DELETE
    token: str | None = None  # UNSUBSCRIBE: the token that followed it, if any


@dataclass(frozen=True, slots=True)
class Commands:
    """What one message asks for, in order, and what was wrong with it."""

    commands: tuple[Command, ...] = ()
    # Unsubscribe tokens of "/unsubscribe/TOKEN" links anywhere in the text read, quoted parts included.
    link_tokens: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # fixed wording, never the sender's text: replies must not carry it
    truncated: bool = False  # more lines or commands than the caps; the rest was not read

    @property
    def verbs(self) -> tuple[Verb, ...]:
        return tuple(c.verb for c in self.commands)

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every unsubscribe token the message carries: after a command first, then in links."""
        return tuple(dict.fromkeys([c.token for c in self.commands if c.token] + list(self.link_tokens)))


# --- one line ----------------------------------------------------------------------------------


class NotACommand(Exception):
    pass


def normal_category(text: str) -> str:
    """``CS.lg`` → ``cs.LG``: archives are lower case, two-letter subject classes upper case
    (cs.LG, math.ST, astro-ph.CO); longer ones (cond-mat.mes-hall) stay as they are."""
    archive, dot, subject = text.partition(".")
    return archive.lower() + dot + (subject.upper() if len(subject) == 2 else subject)


def _topics(text: str) -> tuple[Topic, ...]:
    phrases = [p.strip() for p in re.split(r"[,;]", text) if p.strip()]
    if len(phrases) > MAX_TOPICS:
        raise InvalidInput(f"at most {MAX_TOPICS} topics, please")
    if any(len(p) > MAX_TOPIC_CHARS for p in phrases):
        raise InvalidInput(f"a topic is a few words (at most {MAX_TOPIC_CHARS} characters)")
    try:
        return tuple(Topic.parse(p) for p in phrases)
    except InvalidInput:
        raise InvalidInput("a topic's weight, after ^, must be a number from 0.1 to 10 (\"diffusion^2\")") from None


def _categories(text: str) -> tuple[str, ...]:
    names = [normal_category(n) for n in re.split(r"[\s,;]+", text) if n]
    if not names:
        raise InvalidInput("add and del need an arXiv category, such as: add cs.LG")
    if len(names) > MAX_CATEGORIES:
        raise InvalidInput(f"at most {MAX_CATEGORIES} categories, please")
    try:
        return tuple(check_category(n) for n in dict.fromkeys(names))
    except InvalidInput:
        raise InvalidInput("add and del take arXiv category names, such as cs.LG or hep-th") from None


def parse_line(line: str) -> Command:
    """One command line; raises ``NotACommand`` for anything else and ``InvalidInput`` for a command
    with bad arguments (its message is fixed wording, safe to put in a reply)."""
    head, _, rest = line.strip().partition(" ")
    word, colon, after_colon = head.partition(":")  # "topics:a" and "topics: a" alike
    verb = VERBS.get(word.lower().rstrip(".!"))
    if verb is None:
        raise NotACommand(line)
    rest = (after_colon + " " + rest).strip() if colon else rest.strip()
    if verb == Verb.TOPICS:
        return Command(verb, topics=_topics(rest))
    if verb in (Verb.ADD, Verb.DELETE):
        return Command(verb, categories=_categories(rest))
    if verb == Verb.UNSUBSCRIBE:
        # "unsubscribe TOKEN" (the mailto: subject); any other words after it are the person's, not a token.
        first = rest.split(maxsplit=1)[0] if rest else ""
        link = UNSUBSCRIBE_LINK.search(rest)
        token = first if TOKEN_ALONE.match(first) else link.group(1) if link else None
        return Command(verb, token=token)
    if rest and verb == Verb.HELP:
        raise NotACommand(line)  # "help me with …" is a letter
    return Command(verb)


MAX_SUBJECT_CHARS = 1_000  # a command or a token fits; "Re: " × 100,000 would cost a pass per prefix


def clean_subject(subject: str) -> str:
    """The subject without its "Re:", "Fwd:" and "[list]" prefixes."""
    previous = None
    while previous != subject:
        previous, subject = subject, REPLY_PREFIX.sub("", subject, count=1)
    return subject.strip()


# --- the body ----------------------------------------------------------------------------------


class _HtmlText(HTMLParser):
    """The text of an HTML body, one line per block, quoted blocks marked with ``>`` (as a plain-text
    reply quotes them), scripts and styles dropped."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "hr"})
    SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.quoted = 0
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "blockquote":
            self.quoted += 1
            self.lines.append("")
        elif tag in self.BLOCKS:
            self.lines.append("")
        if tag == "a":  # keep link targets: a quoted digest's unsubscribe link is in an href
            href = dict(attrs).get("href") or ""
            if "/unsubscribe/" in href:
                self.handle_data(f" {href} ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "blockquote":
            self.quoted = max(0, self.quoted - 1)
            self.lines.append("")
        elif tag in self.BLOCKS:
            self.lines.append("")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        for number, piece in enumerate(data.split("\n")):
            if number:
                self.lines.append("")
            if self.quoted and not self.lines[-1] and piece.strip():
                self.lines[-1] = "> "
            self.lines[-1] += piece


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "\n".join(line.strip() if not line.startswith(">") else line for line in parser.lines)


def _part_text(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else None
    except (LookupError, UnicodeError, ValueError, AssertionError):  # an unknown charset, broken base64
        content = None
    if isinstance(content, str):
        return content
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # a charset Python does not know: most mail is UTF-8 or ASCII anyway
        return payload.decode("utf-8", "replace")


def body_text(message: Message) -> str:
    """The body as text: the first plain-text part, else the first HTML part reduced to text.
    Attachments are never read."""
    plain = html = None
    for part in message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        kind = part.get_content_type()
        if kind == "text/plain" and plain is None:
            plain = part
        elif kind == "text/html" and html is None:
            html = part
    if plain is not None:
        return _part_text(plain)
    # Capped before parsing: HTMLParser is quadratic on some inputs (a megabyte of "<" took 16 s).
    return html_to_text(_part_text(html)[: 4 * MAX_TEXT_CHARS]) if html is not None else ""


def _stops_reading(line: str) -> bool:
    return line.startswith(">") or line.rstrip() == "--" or line.startswith("-- ")


def parse(message: Message) -> Commands:
    """The commands of a message: its subject first (a subject that is not a command is just a
    subject), then the body's first lines until the first that is not a command."""
    found: list[Command] = []
    errors: list[str] = []
    truncated = False

    def take(line: str) -> bool:
        """Read one line; False when it is not a command (reading stops there)."""
        nonlocal truncated
        try:
            command = parse_line(line)
        except NotACommand:
            return False
        except InvalidInput as exc:
            errors.append(str(exc))
            return True
        if len(found) < MAX_COMMANDS:
            found.append(command)
        else:
            truncated = True
        return True

    subject = clean_subject(_header(message, "Subject")[:MAX_SUBJECT_CHARS])
    if subject:
        take(subject)
    full = body_text(message)
    text = full[:MAX_TEXT_CHARS]
    lines = text.splitlines()
    stopped = False
    for line in lines[:MAX_LINES]:
        if not line.strip():
            continue
        if _stops_reading(line) or not take(line):
            stopped = True
            break
    if not stopped and (len(lines) > MAX_LINES or len(full) > MAX_TEXT_CHARS):
        truncated = True  # still reading commands when the caps ran out
    link_tokens = tuple(dict.fromkeys(UNSUBSCRIBE_LINK.findall(text)))
    return Commands(tuple(found), link_tokens, tuple(dict.fromkeys(errors)), truncated)


# --- the loop guard ----------------------------------------------------------------------------


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError):  # a header the parser cannot make sense of
        return ""
    return str(value) if value is not None else ""


def _local_part(address: str) -> str:
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


def is_automatic(message: Message, envelope_sender: str | None, own_addresses: Iterable[str]) -> str | None:
    """Why this message must not be answered (a bounce, an auto-reply, a list's mail, our own), or None.

    An answer to any of these could start a mail loop or send mail to a third party; RFC 3834 asks
    responders not to answer them.
    """
    own = {a.strip().lower() for a in own_addresses if a}
    sender = (envelope_sender or "").strip().strip("<>").strip()
    if not sender:
        return "empty return path (a bounce or a delivery notification)"
    auto = _header(message, "Auto-Submitted").split(";")[0].strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto[:40]}"
    precedence = _header(message, "Precedence").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"Precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autogenerated"):
        if name in message:
            return f"{name} header (an auto-responder)"
    suppress = _header(message, "X-Auto-Response-Suppress").lower()
    if any(word in suppress for word in ("all", "autoreply", "oof")):
        return "X-Auto-Response-Suppress (the sender asks for no automatic answers)"
    if "List-Id" in message:
        return "List-Id header (a mailing list's message)"
    if message.get_content_type() == "multipart/report" or any(
            part.get_content_type() in ("message/delivery-status", "message/disposition-notification")
            for part in message.walk()):
        return "a delivery or read report"
    from_addresses = [a.lower() for _, a in getaddresses([_header(message, "From")]) if a]
    for address in (sender.lower(), *from_addresses):
        if address in own:
            return "sent from our own address"
        if _local_part(address) in AUTOMATIC_SENDERS or _local_part(address).endswith(("-bounces", "-owner")):
            return "sent by a mail system (mailer-daemon, postmaster, no-reply)"
    return None


def from_address(message: Message) -> str | None:
    """The one address of the From header, or None (none, several, or no @)."""
    addresses = [a for _, a in getaddresses([_header(message, "From")]) if a]
    return addresses[0] if len(addresses) == 1 and "@" in addresses[0] else None


def message_ids(message: Message, *, limit: int = 50) -> tuple[str, ...]:
    """The Message-IDs named by In-Reply-To and References, most recent first (replies append)."""
    text = _header(message, "In-Reply-To") + " " + " ".join(reversed(_header(message, "References").split()))
    return tuple(dict.fromkeys(re.findall(r"<[^<>\s]{1,250}>", text)))[:limit]


def message_id(message: Message) -> str | None:
    """The message's own Message-ID, for a reply's In-Reply-To; None when it is missing or malformed."""
    found = re.fullmatch(r"\s*(<[^<>\s]{1,250}>)\s*", _header(message, "Message-ID"))
    return found.group(1) if found else None


__all__ = ["CHANGES", "MAX_COMMANDS", "MAX_LINES", "MAX_TEXT_CHARS", "Command", "Commands", "Verb", "body_text",
           "clean_subject", "from_address", "html_to_text", "is_automatic", "message_id", "message_ids", "normal_category", "parse",
           "parse_line"]
