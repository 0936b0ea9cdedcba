"""The subscription service (double opt-in, changes, leaving, forgetting) on the real SQLite schema."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import func, select

from newsletter import records, subscriptions, tokens
from newsletter.db.models import Delivery, Subscriber, SubscriptionEvent
from newsletter.errors import InvalidInput
from newsletter.settings import Settings
from newsletter.subscriptions import NoticeKind, UsedLink, Via
from newsletter.tokens import ExpiredLink

SETTINGS = Settings(secret_key="s" * 40, from_address="digest@example.org", base_url="https://digest.example.org",
                    _env_file=None)  # type: ignore[call-arg]
NOON = dt.datetime(2026, 12, 1, 12, 0)


def ask(email: str, *topics: str, hour: int = 7) -> records.NewSubscriber:
    return records.NewSubscriber(email=email, preferences=records.Preferences.from_lists(topics=list(topics)),
                                 timezone="Europe/Berlin", send_hour=hour, status="pending")


def token_of(url: str) -> str:
    match = re.fullmatch(r"https://digest\.example\.org/confirm/([\w.-]+)", url)
    assert match, url
    return match.group(1)


def test_a_new_address_waits_for_its_confirmation_then_is_scheduled(sessions) -> None:
    with sessions.begin() as session:
        notice = subscriptions.request_subscription(session, SETTINGS, ask("ada@example.org", "diffusion models"), via=Via.WEB,
                                                    now=NOON)
    assert notice is not None and notice.kind == NoticeKind.CONFIRM and notice.to == "ada@example.org"
    with sessions() as session:
        row = session.scalar(select(Subscriber))
        assert (row.status, row.next_send_at) == ("pending", None)
    with sessions.begin() as session:
        confirmed = subscriptions.confirm(session, SETTINGS, token_of(notice.url), now=NOON)
        assert confirmed.status == "active"
        assert [t.phrase for t in subscriptions.as_new_subscriber(confirmed).preferences.topics] == ["diffusion models"]
        # 12:00 UTC is 13:00 in Berlin, past 07:00: the first digest is tomorrow's.
        assert confirmed.next_send_at == dt.datetime(2026, 12, 2, 6, 0)
    with sessions.begin() as session, pytest.raises(UsedLink):
        subscriptions.confirm(session, SETTINGS, token_of(notice.url), now=NOON)


def test_only_the_latest_link_works_and_links_expire(sessions) -> None:
    with sessions.begin() as session:
        first = subscriptions.request_subscription(session, SETTINGS, ask("bo@example.org"), via=Via.WEB, now=NOON)
        second = subscriptions.request_subscription(session, SETTINGS, ask("bo@example.org"), via=Via.WEB, now=NOON)
    assert first and second
    with sessions.begin() as session, pytest.raises(UsedLink):
        subscriptions.confirm(session, SETTINGS, token_of(first.url))
    with sessions() as session:
        row = session.scalar(select(Subscriber))
        old = tokens.confirm_token(secret_key=SETTINGS.secret_key, subscriber_id=row.id, nonce=row.token_nonce,
                                   issued_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=73))
    with sessions.begin() as session, pytest.raises(ExpiredLink, match="72 hours"):
        subscriptions.confirm(session, SETTINGS, old)
    with sessions.begin() as session, pytest.raises(InvalidInput):
        subscriptions.confirm(session, SETTINGS, token_of(second.url)[:-3] + "abc")


def test_an_active_address_is_never_knocked_back_to_pending(sessions) -> None:
    with sessions.begin() as session:
        subscriptions.add(session, SETTINGS, ask("cy@example.org", "graphs").__class__(
            email="cy@example.org", preferences=records.Preferences.from_lists(topics=["graphs"])), now=NOON)
    with sessions.begin() as session:
        notice = subscriptions.request_subscription(session, SETTINGS, ask("cy@example.org", "spam topic"), via=Via.WEB, now=NOON)
    assert notice is not None and notice.kind == NoticeKind.ALREADY_SUBSCRIBED and "/preferences/" in notice.url
    with sessions() as session:
        row = session.scalar(select(Subscriber))
        assert row.status == "active" and row.pending_change is None
        assert [t["phrase"] for t in row.preferences.topics] == ["graphs"]


def test_at_most_three_notes_a_day_to_one_address(sessions) -> None:
    sent = []
    for minute in range(6):
        with sessions.begin() as session:
            sent.append(subscriptions.request_subscription(session, SETTINGS, ask("dee@example.org"), via=Via.WEB,
                                                           now=NOON + dt.timedelta(minutes=minute)))
    assert [n is not None for n in sent] == [True, True, True, False, False, False]
    with sessions.begin() as session:  # a day later the address may get one again
        assert subscriptions.request_subscription(session, SETTINGS, ask("dee@example.org"), via=Via.WEB,
                                                  now=NOON + dt.timedelta(hours=25)) is not None


def test_a_change_by_email_waits_for_confirmation(sessions) -> None:
    with sessions.begin() as session:
        row = subscriptions.add(session, SETTINGS, records.NewSubscriber(
            email="eve@example.org", preferences=records.Preferences.from_lists(topics=["graphs"])), now=NOON)
        notice = subscriptions.request_change(session, SETTINGS, ask("eve@example.org", "robotics"), via=Via.EMAIL, now=NOON)
        subscriber_id = row.id
    assert notice is not None and notice.change
    with sessions() as session:
        assert [t["phrase"] for t in session.get(Subscriber, subscriber_id).preferences.topics] == ["graphs"]
        pending = subscriptions.pending_confirmation(session, SETTINGS, token_of(notice.url))
        assert pending.subscribed and [t.phrase for t in pending.change.preferences.topics] == ["robotics"]
    with sessions.begin() as session:
        subscriptions.confirm(session, SETTINGS, token_of(notice.url), now=NOON)
    with sessions() as session:
        assert [t["phrase"] for t in session.get(Subscriber, subscriber_id).preferences.topics] == ["robotics"]


def test_unsubscribe_then_coming_back_needs_a_new_confirmation(sessions) -> None:
    with sessions.begin() as session:
        row = subscriptions.add(session, SETTINGS, records.NewSubscriber(email="fay@example.org"), now=NOON)
        subscriber_id = row.id
    with sessions.begin() as session:
        assert subscriptions.unsubscribe(session, SETTINGS, subscriber_id, via=Via.ONE_CLICK, now=NOON)
        assert not subscriptions.unsubscribe(session, SETTINGS, subscriber_id, via=Via.ONE_CLICK, now=NOON)
    with sessions.begin() as session:
        notice = subscriptions.request_subscription(session, SETTINGS, ask("fay@example.org"), via=Via.WEB, now=NOON)
        assert notice is not None and notice.kind == NoticeKind.CONFIRM
        assert session.get(Subscriber, subscriber_id).status == "unsubscribed"
    with sessions.begin() as session:
        assert subscriptions.confirm(session, SETTINGS, token_of(notice.url), now=NOON).status == "active"


def test_forget_keeps_only_a_hash_and_refuses_an_admin_re_add(sessions) -> None:
    with sessions.begin() as session:
        row = subscriptions.add(session, SETTINGS, records.NewSubscriber(email="gus@example.org"), now=NOON)
        session.add(Delivery(subscriber_id=row.id, issue_date=dt.date(2026, 12, 1), message_id="<m@x>"))
    with sessions.begin() as session:
        subscriptions.forget(session, SETTINGS, "gus@example.org", now=NOON)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 0
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert session.scalar(select(func.count()).select_from(SubscriptionEvent).where(
            SubscriptionEvent.subscriber_id.is_not(None))) == 0
        assert subscriptions.is_forgotten(session, SETTINGS, "GUS@example.org")
    with sessions.begin() as session, pytest.raises(InvalidInput, match="forgotten"):
        subscriptions.add(session, SETTINGS, records.NewSubscriber(email="gus@example.org"), now=NOON)
    with sessions.begin() as session:  # its owner can come back through the confirmation round trip
        notice = subscriptions.request_subscription(session, SETTINGS, ask("gus@example.org"), via=Via.WEB, now=NOON)
        assert notice is not None
        subscriptions.confirm(session, SETTINGS, token_of(notice.url), now=NOON)
        assert not subscriptions.is_forgotten(session, SETTINGS, "gus@example.org")


def test_an_import_records_one_event_per_address_and_keeps_no_address(sessions) -> None:
    people = [records.NewSubscriber(email=f"p{n}@example.org") for n in range(3)]
    with sessions.begin() as session:
        assert subscriptions.import_subscribers(session, SETTINGS, people, now=NOON) == 3
    with sessions() as session:
        events = session.scalars(select(SubscriptionEvent)).all()
        assert [(e.kind, e.via) for e in events] == [("confirmed", "import")] * 3
        assert {e.address_hash for e in events} == {subscriptions.address_hash(SETTINGS, p.email) for p in people}
        assert session.scalar(select(func.count()).select_from(Subscriber).where(Subscriber.status == "active")) == 3
    with sessions.begin() as session:
        assert subscriptions.remove(session, "P1@example.org") == "p1@example.org"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 2


@pytest.mark.postgres
def test_two_sign_ups_of_one_new_address_at_once_both_answer(postgres_url: str) -> None:
    """A double click: the second insert meets the first one's unique key and goes on with its row (no 500)."""
    import threading

    from newsletter.db import migrate
    from newsletter.db.engine import make_engine, make_sessionmaker

    engine = make_engine(postgres_url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    first = sessions()
    first.begin()
    assert subscriptions.request_subscription(first, SETTINGS, ask("twice@example.org"), via=Via.WEB, now=NOON) is not None
    answers: list[object] = []

    def second() -> None:  # blocks on the unique index until the first commits
        with sessions.begin() as session:
            answers.append(subscriptions.request_subscription(session, SETTINGS, ask("twice@example.org"), via=Via.WEB, now=NOON))

    racer = threading.Thread(target=second)
    racer.start()
    racer.join(1.0)
    assert racer.is_alive(), "the second insert waits for the first transaction"
    first.commit()
    first.close()
    racer.join(30)
    assert len(answers) == 1 and answers[0] is not None and answers[0].kind == NoticeKind.CONFIRM
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
    engine.dispose()
