"""Joining, tuning and leaving the list: the one module the CLI, the web front and email commands call.

**Double opt-in.** Anyone can type any address into a form or forge a From line, so a request to
subscribe (or to change topics by email) only records what was asked and returns a ``Notice``: a
confirmation email to the address, carrying a signed, timed, purpose-bound token
(``tokens.confirm_token``) that names the subscriber and their ``token_nonce``. Using the link
replaces the nonce, so a link works once, and only the latest one sent works. The request is kept
in ``pending_change`` until then; an active subscription is never knocked back to pending (its
owner gets an "already subscribed, here is your preferences link" note instead).

**The same answer for everyone.** ``request_subscription`` behaves the same towards its caller
whether the address is new, pending, active, unsubscribed or forgotten: it may or may not return a
notice to send (never when the address already had ``confirmations_per_address_per_day`` in the
last 24 h), and the caller says "check your inbox" in every case, sending the notice after answering.

**Who may do what without confirming.** The holder of a preferences link (it arrived in their
inbox) or the admin changes preferences directly (``update``); unsubscribing needs only the
unsubscribe link, the RFC 8058 one-click POST, or a reply carrying the token; the admin pauses,
resumes and forgets. Coming back after unsubscribing needs a new confirmation.

Errors here say what is wrong in words for a person (``InvalidInput``, ``NotFound``); they never
name a CLI command, since the web front shows them too. Nothing here sends mail or commits: the
caller commits, then sends the notices (``newsletter.notices``).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter import records, tokens
from newsletter.db import ledger, repo
from newsletter.db.models import (
    ForgottenAddress,
    Preferences,
    Subscriber,
    SubscriberStatus,
    SubscriptionEvent,
    SubscriptionEventKind,
    utcnow,
)
from newsletter.errors import ConfigError, InvalidInput, NotFound
from newsletter.settings import Settings


class Via(enum.StrEnum):
    """Through what a change came: recorded with every subscription event."""

    WEB = "web"
    EMAIL = "email"
    CLI = "cli"
    ONE_CLICK = "one-click"  # RFC 8058 List-Unsubscribe-Post
    IMPORT = "import"


class NoticeKind(enum.StrEnum):
    CONFIRM = "confirm"  # "confirm your subscription" (or the change asked for by email)
    ALREADY_SUBSCRIBED = "already-subscribed"  # "you are subscribed already; here is your preferences link"


@dataclass(frozen=True, slots=True)
class Notice:
    """An email the service wants sent once the transaction is committed. It carries no text a visitor
    typed: only the address, which link to give and what kind of note it is."""

    kind: NoticeKind
    to: str
    url: str  # the confirmation link, or the preferences link
    change: bool = False  # CONFIRM of a change to an existing subscription, not a new one


class UsedLink(InvalidInput):
    """A confirmation link that was used already, or replaced by a newer one."""


USED = ("this confirmation link has been used already, or a newer one was sent since; "
        "if you are not subscribed yet, sign up again to get a fresh link")
ACTIVE_STATUSES = (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED)


# --- addresses ---------------------------------------------------------------------------------


def address_hash(settings: Settings, email: str) -> str:
    """A keyed hash of a normalised address: what events and forgotten addresses keep instead of it.

    Keyed with the secret key, so the hashes of a leaked database cannot be checked against a list
    of addresses. (Changing NEWSLETTER_SECRET_KEY forgets the forgotten list's meaning: keep the key.)
    """
    settings.require("secret_key", purpose="handling subscriptions")
    key = hmac.new((settings.secret_key or "").encode(), b"address-hash", hashlib.sha256).digest()
    return hmac.new(key, email.strip().lower().encode(), hashlib.sha256).hexdigest()


def is_forgotten(session: Session, settings: Settings, email: str) -> bool:
    return session.get(ForgottenAddress, address_hash(settings, email)) is not None


def forgotten_among(session: Session, settings: Settings, emails: list[str]) -> set[str]:
    """The addresses of ``emails`` that asked to be forgotten (for imports)."""
    by_hash = {address_hash(settings, e): e for e in emails}
    found: set[str] = set()
    hashes = list(by_hash)
    for start in range(0, len(hashes), repo.IN_CHUNK):
        chunk = hashes[start : start + repo.IN_CHUNK]
        found.update(by_hash[h] for h in session.scalars(select(ForgottenAddress.address_hash)
                                                          .where(ForgottenAddress.address_hash.in_(chunk))))
    return found


def _event(session: Session, settings: Settings, *, email: str, kind: SubscriptionEventKind, via: Via,
           subscriber_id: int | None, now: dt.datetime) -> None:
    session.add(SubscriptionEvent(subscriber_id=subscriber_id, address_hash=address_hash(settings, email),
                                  kind=kind.value, via=via.value, at=now))


def _notes_sent_recently(session: Session, settings: Settings, email: str, now: dt.datetime) -> int:
    kinds = (SubscriptionEventKind.CONFIRMATION_SENT.value, SubscriptionEventKind.ALREADY_SUBSCRIBED_SENT.value)
    return session.scalar(select(func.count()).select_from(SubscriptionEvent).where(
        SubscriptionEvent.address_hash == address_hash(settings, email), SubscriptionEvent.kind.in_(kinds),
        SubscriptionEvent.at > now - dt.timedelta(hours=24))) or 0


# --- what a subscription is made of ------------------------------------------------------------


def change_data(new: records.NewSubscriber) -> dict[str, Any]:
    """A requested subscription as JSON, for ``pending_change``: everything but the address and status."""
    return {"preferences": repo.preferences_row(new.preferences), "timezone": new.timezone, "send_hour": new.send_hour,
            "send_minute": new.send_minute, "frequency": new.frequency, "send_weekday": new.send_weekday,
            "max_papers": new.max_papers}


def as_new_subscriber(row: Subscriber) -> records.NewSubscriber:
    """A stored subscription as the record forms and commands start from."""
    return records.NewSubscriber(email=row.email, preferences=repo.preferences_record(row.preferences), timezone=row.timezone,
                                 send_hour=row.send_hour, frequency=row.frequency, max_papers=row.max_papers,
                                 status=row.status, send_minute=row.send_minute, send_weekday=row.send_weekday)


def _apply(row: Subscriber, change: dict[str, Any], now: dt.datetime) -> bool:
    """Write a change onto the row; True when its schedule changed (``next_send_at`` was recomputed)."""
    schedule_before = repo.schedule_of(row)
    for name in ("timezone", "send_hour", "send_minute", "frequency", "send_weekday", "max_papers"):
        setattr(row, name, change[name])
    if row.preferences is None:
        row.preferences = Preferences(**change["preferences"])
    else:
        for name, value in change["preferences"].items():
            setattr(row.preferences, name, value)
    moved = repo.schedule_of(row) != schedule_before
    if moved or row.next_send_at is None:
        row.next_send_at = repo.first_send_at(repo.schedule_of(row), now=now)
    return moved


def _links(settings: Settings) -> str:
    settings.require("secret_key", purpose="links in emails")
    return settings.base_url.rstrip("/")


def preferences_url(settings: Settings, subscriber_id: int) -> str:
    token = tokens.make_token(secret_key=settings.secret_key or "", purpose=tokens.PREFERENCES, subscriber_id=subscriber_id)
    return f"{_links(settings)}/preferences/{token}"


def unsubscribe_url(settings: Settings, subscriber_id: int) -> str:
    token = tokens.make_token(secret_key=settings.secret_key or "", purpose=tokens.UNSUBSCRIBE, subscriber_id=subscriber_id)
    return f"{_links(settings)}/unsubscribe/{token}"


def _confirmation(session: Session, settings: Settings, row: Subscriber, *, via: Via, now: dt.datetime,
                  change: bool) -> Notice:
    row.token_nonce = secrets.token_hex(8)  # the links sent before this one stop working
    # Stamped with the wall clock, as it is read: ``now`` may be a planning instant (``--at``), not the time.
    token = tokens.confirm_token(secret_key=settings.secret_key or "", subscriber_id=row.id, nonce=row.token_nonce,
                                 issued_at=dt.datetime.now(dt.UTC))
    _event(session, settings, email=row.email, kind=SubscriptionEventKind.CONFIRMATION_SENT, via=via,
           subscriber_id=row.id, now=now)
    return Notice(NoticeKind.CONFIRM, row.email, f"{_links(settings)}/confirm/{token}", change=change)


# --- joining -----------------------------------------------------------------------------------


def request_subscription(session: Session, settings: Settings, new: records.NewSubscriber, *, via: Via,
                         now: dt.datetime | None = None) -> Notice | None:
    """Someone asks for ``new`` (a sign-up form, a "subscribe" email). See the module docstring: the
    caller answers the same whatever this returns, and sends the notice, if any, after committing."""
    now = now or utcnow()
    email = new.email
    if _notes_sent_recently(session, settings, email, now) >= settings.confirmations_per_address_per_day:
        return None  # no more mail to this address today, whoever is asking (and no row: a flood must not grow the table)
    _event(session, settings, email=email, kind=SubscriptionEventKind.REQUESTED, via=via, subscriber_id=None, now=now)
    row = session.scalar(select(Subscriber).where(Subscriber.email == email))
    if row is not None and row.status in ACTIVE_STATUSES:
        _event(session, settings, email=email, kind=SubscriptionEventKind.ALREADY_SUBSCRIBED_SENT, via=via,
               subscriber_id=row.id, now=now)
        return Notice(NoticeKind.ALREADY_SUBSCRIBED, email, preferences_url(settings, row.id))
    if row is None:
        try:  # a savepoint: two sign-ups of one new address at once (a double click) both get here
            with session.begin_nested():
                row = Subscriber(email=email, status=SubscriberStatus.PENDING.value, created_at=now, next_send_at=None)
                session.add(row)
        except IntegrityError:  # the other one inserted it first: go on with its row
            row = session.scalar(select(Subscriber).where(Subscriber.email == email))
            if row is None:
                raise
            if row.status in ACTIVE_STATUSES:
                return None
    row.pending_change = change_data(new)
    session.flush()
    return _confirmation(session, settings, row, via=via, now=now, change=False)


def request_change(session: Session, settings: Settings, new: records.NewSubscriber, *, via: Via,
                   now: dt.datetime | None = None) -> Notice | None:
    """A change asked for by email (``topics: …``, ``add cs.LG``): the From line proves nothing, so it
    waits for the confirmation link like a subscription. For an address we do not know, or one not
    subscribed now, it is a request to subscribe with those preferences."""
    now = now or utcnow()
    row = session.scalar(select(Subscriber).where(Subscriber.email == new.email))
    if row is None or row.status not in ACTIVE_STATUSES:
        return request_subscription(session, settings, new, via=via, now=now)
    if _notes_sent_recently(session, settings, new.email, now) >= settings.confirmations_per_address_per_day:
        return None
    _event(session, settings, email=new.email, kind=SubscriptionEventKind.REQUESTED, via=via, subscriber_id=row.id, now=now)
    row.pending_change = change_data(new)
    return _confirmation(session, settings, row, via=via, now=now, change=True)


@dataclass(frozen=True, slots=True)
class PendingConfirmation:
    """What a confirmation link would do, for the page with the button (a GET changes nothing)."""

    subscriber_id: int
    email: str
    change: records.NewSubscriber | None  # what will be applied; None: nothing but the confirmation
    subscribed: bool  # an active subscription whose change this confirms


def _read_confirmation(session: Session, settings: Settings, token: str) -> tuple[Subscriber, str]:
    settings.require("secret_key", purpose="confirmation links")
    subscriber_id, nonce = tokens.read_confirm_token(token, secret_key=settings.secret_key or "",
                                                     max_age=dt.timedelta(hours=settings.confirm_link_hours))
    row = session.get(Subscriber, subscriber_id)
    if row is None or row.token_nonce is None or not hmac.compare_digest(row.token_nonce, nonce):
        raise UsedLink(USED)
    return row, nonce


def _change_record(row: Subscriber) -> records.NewSubscriber | None:
    if not row.pending_change:
        return None
    change = row.pending_change
    return records.NewSubscriber(email=row.email, preferences=repo.preferences_record(Preferences(**change["preferences"])),
                                 timezone=change["timezone"], send_hour=change["send_hour"], frequency=change["frequency"],
                                 max_papers=change["max_papers"], send_minute=change["send_minute"],
                                 send_weekday=change["send_weekday"])


def pending_confirmation(session: Session, settings: Settings, token: str) -> PendingConfirmation:
    """What the link would confirm; raises ``ExpiredLink``, ``UsedLink`` or ``InvalidInput``. Changes nothing."""
    row, _ = _read_confirmation(session, settings, token)
    return PendingConfirmation(row.id, row.email, _change_record(row), row.status in ACTIVE_STATUSES)


def confirm(session: Session, settings: Settings, token: str, *, now: dt.datetime | None = None) -> Subscriber:
    """Use a confirmation link: the subscription (or the change) takes effect, and the link dies.

    The nonce is swapped by one conditional UPDATE, so of two racing POSTs of one link exactly one wins.
    """
    now = now or utcnow()
    row, nonce = _read_confirmation(session, settings, token)
    won = session.execute(update(Subscriber).where(Subscriber.id == row.id, Subscriber.token_nonce == nonce)
                          .values(token_nonce=secrets.token_hex(8)).execution_options(synchronize_session=False))
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise UsedLink(USED)
    session.refresh(row)
    if row.pending_change:
        _apply(row, row.pending_change, now)
        row.pending_change = None
    if row.status not in ACTIVE_STATUSES:
        row.status = SubscriberStatus.ACTIVE.value
        row.confirmed_at, row.unsubscribed_at, row.bounce_count = now, None, 0
        row.next_send_at = repo.first_send_at(repo.schedule_of(row), now=now)
    # Its owner came back: the forgotten mark has done its job (an admin could not do this for them).
    session.execute(delete(ForgottenAddress).where(ForgottenAddress.address_hash == address_hash(settings, row.email)))
    _event(session, settings, email=row.email, kind=SubscriptionEventKind.CONFIRMED, via=Via.WEB, subscriber_id=row.id, now=now)
    session.flush()
    return row


def add(session: Session, settings: Settings, new: records.NewSubscriber, *, via: Via = Via.CLI,
        now: dt.datetime | None = None) -> Subscriber:
    """The admin adds a subscriber directly (active, no confirmation): refused for a forgotten address."""
    now = now or utcnow()
    if settings.secret_key and is_forgotten(session, settings, new.email):
        raise InvalidInput(f"{new.email} asked to be forgotten; only its owner can subscribe it again, "
                           "through the sign-up page or a 'subscribe' email")
    row = repo.add_subscriber(session, new=new)
    if settings.secret_key:
        _event(session, settings, email=new.email, kind=SubscriptionEventKind.CONFIRMED, via=via, subscriber_id=row.id, now=now)
    return row


def import_subscribers(session: Session, settings: Settings, subscribers: list[records.NewSubscriber], *,
                       now: dt.datetime | None = None) -> int:
    """The admin's bulk import (active or paused, no confirmation), with one event each (via import).

    The caller has dropped forgotten addresses (``forgotten_among``) and reported them: an import
    never brings one back.
    """
    now = now or utcnow()
    imported = repo.import_subscribers(session, subscribers=subscribers)
    if settings.secret_key:  # keyed by address hash, like every event (stats count them; no row id needed)
        session.add_all([SubscriptionEvent(subscriber_id=None, address_hash=address_hash(settings, s.email),
                                           kind=SubscriptionEventKind.CONFIRMED.value, via=Via.IMPORT.value, at=now)
                         for s in subscribers])
    return imported


def remove(session: Session, email: str) -> str:
    """Delete a subscriber with their preferences and history (the address may come back later; see ``forget``)."""
    row = repo.get_subscriber(session, email=email)
    session.delete(row)
    session.flush()
    return row.email


# --- tuning ------------------------------------------------------------------------------------


def subscriber(session: Session, subscriber_id: int) -> Subscriber:
    row = session.get(Subscriber, subscriber_id)
    if row is None:
        raise NotFound("this subscription no longer exists (it was removed)")
    return row


def update_preferences(session: Session, settings: Settings, subscriber_id: int, new: records.NewSubscriber, *, via: Via,
           now: dt.datetime | None = None) -> bool:
    """Change a subscription's preferences and schedule directly (its preferences link, or the admin).

    Returns True when the schedule moved; the next digest is then planned at the new time (the
    first send moment after now), and one already planned for today keeps its place in the ledger.
    """
    now = now or utcnow()
    row = subscriber(session, subscriber_id)
    moved = _apply(row, change_data(new), now)
    if settings.secret_key:
        _event(session, settings, email=row.email, kind=SubscriptionEventKind.CHANGED, via=via, subscriber_id=row.id, now=now)
    session.flush()
    return moved


# --- leaving -----------------------------------------------------------------------------------


def unsubscribe(session: Session, settings: Settings, subscriber_id: int, *, via: Via, now: dt.datetime | None = None) -> bool:
    """Stop all mail to this subscriber from the next send on; True when it was subscribed (idempotent).

    A digest already planned or claimed for today is cancelled (and the send path re-checks the status
    when it marks a digest as sending, so one claimed meanwhile is not sent either).
    """
    now = now or utcnow()
    row = session.get(Subscriber, subscriber_id)
    if row is None or row.status == SubscriberStatus.UNSUBSCRIBED:
        return False
    row.status, row.unsubscribed_at, row.pending_change, row.token_nonce = SubscriberStatus.UNSUBSCRIBED.value, now, None, None
    session.flush()
    ledger.cancel_unsent(session, subscriber_ids=[row.id], now=now)  # a digest planned (even claimed) is not sent
    if settings.secret_key:
        _event(session, settings, email=row.email, kind=SubscriptionEventKind.UNSUBSCRIBED, via=via, subscriber_id=row.id, now=now)
    session.flush()
    return True


def unsubscribe_by_token(session: Session, settings: Settings, token: str, *, via: Via, now: dt.datetime | None = None) -> bool:
    """``unsubscribe`` for the holder of an unsubscribe link; raises ``InvalidInput`` for a bad token."""
    if not settings.secret_key:
        raise ConfigError("NEWSLETTER_SECRET_KEY is not set; unsubscribe links need it")
    subscriber_id = tokens.read_token(token, secret_key=settings.secret_key, purpose=tokens.UNSUBSCRIBE)
    return unsubscribe(session, settings, subscriber_id, via=via, now=now)


def pause(session: Session, settings: Settings, email: str, *, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    row = repo.get_subscriber(session, email=email)
    if row.status != SubscriberStatus.ACTIVE:
        raise InvalidInput(f"{row.email} is {row.status}, not active: only an active subscription can be paused")
    row.status = SubscriberStatus.PAUSED.value
    session.flush()
    ledger.cancel_unsent(session, subscriber_ids=[row.id], now=now)  # nothing while paused, today's digest neither
    if settings.secret_key:
        _event(session, settings, email=row.email, kind=SubscriptionEventKind.PAUSED, via=Via.CLI, subscriber_id=row.id, now=now)


def resume(session: Session, settings: Settings, email: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """Active again from the next send moment after now (papers of the pause are not all sent at once:
    the first digest covers the usual window before it). Returns that moment (naive UTC)."""
    now = now or utcnow()
    row = repo.get_subscriber(session, email=email)
    if row.status != SubscriberStatus.PAUSED:
        raise InvalidInput(f"{row.email} is {row.status}, not paused: only a paused subscription can be resumed")
    row.status = SubscriberStatus.ACTIVE.value
    row.next_send_at = repo.first_send_at(repo.schedule_of(row), now=now)
    if settings.secret_key:
        _event(session, settings, email=row.email, kind=SubscriptionEventKind.RESUMED, via=Via.CLI, subscriber_id=row.id, now=now)
    return row.next_send_at


def forget(session: Session, settings: Settings, email: str, *, now: dt.datetime | None = None) -> None:
    """Delete everything about the address (subscription, preferences, deliveries, feedback) but a keyed
    hash of it: an import or an admin's ``add`` of it is then refused; only its owner can come back,
    by confirming a new subscription. Events keep only the hash too."""
    now = now or utcnow()
    row = repo.get_subscriber(session, email=email)
    hashed = address_hash(settings, row.email)
    if session.get(ForgottenAddress, hashed) is None:
        session.add(ForgottenAddress(address_hash=hashed, forgotten_at=now))
    _event(session, settings, email=row.email, kind=SubscriptionEventKind.FORGOTTEN, via=Via.CLI, subscriber_id=None, now=now)
    session.delete(row)
    session.flush()


def record_feedback(session: Session, *, subscriber_id: int, paper_id: int, value: int) -> None:
    """"More / less like this" from a link or the admin; the latest word counts."""
    repo.record_feedback(session, subscriber_id=subscriber_id, paper_id=paper_id, value=value)
