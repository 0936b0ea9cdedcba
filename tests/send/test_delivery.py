"""Delivery against a real aiosmtpd server with injected faults: every recipient gets one message."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Subscriber
from tests.conftest import FIXTURES, free_port
from tests.send.faults import FaultySink, share

RECIPIENTS = 1200


@pytest.fixture
def sink() -> Iterator[FaultySink]:
    handler = FaultySink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.port = port  # type: ignore[attr-defined]
    yield handler
    controller.stop()


@pytest.fixture
def list_ready(cli, env, sqlite_url, tmp_path: Path, sink: FaultySink):
    """RECIPIENTS active subscribers who all match today's papers, and settings pointing at the sink."""
    env(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij", from_address="digest@example.org", email_backend="smtp",
        smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security="none", smtp_timeout_s=15, retry_base_s=0)  # type: ignore[attr-defined]
    rows = "".join(f"reader{i}@lab{i % 7}.example.org,diffusion models;language models,,,,,,,,3\n" for i in range(RECIPIENTS))
    path = tmp_path / "list.csv"
    path.write_text("email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n" + rows)
    assert cli("subscribers", "import", str(path)).code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    return [f"reader{i}@lab{i % 7}.example.org" for i in range(RECIPIENTS)]


def deliveries(url: str) -> dict[str, Delivery]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = {email: d for d, email in session.execute(
            select(Delivery, Subscriber.email).join(Subscriber, Subscriber.id == Delivery.subscriber_id))}
    engine.dispose()
    return rows


def digest(cli) -> dict:
    result = cli("digest", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["outcomes"]


def test_temporary_refusals_are_retried_until_everyone_has_exactly_one(cli, list_ready, sink, sqlite_url) -> None:
    sink.temporary = lambda address: share(address, 10)
    refused = [a for a in list_ready if share(a, 10)]
    assert 80 < len(refused) < 160
    first = digest(cli)
    assert first == {"sent": RECIPIENTS - len(refused), "retry": len(refused)}
    assert {deliveries(sqlite_url)[a].status for a in refused} == {"retry"}
    second = digest(cli)
    assert second == {"sent": len(refused)}
    assert set(sink.per_recipient().values()) == {1} and len(sink.per_recipient()) == RECIPIENTS
    assert digest(cli) == {}


def test_permanent_refusals_fail_at_once_are_never_retried_and_suppress(cli, list_ready, sink, sqlite_url) -> None:
    gone = [a for a in list_ready if share(a, 2)]
    sink.permanent = {a: "550 5.1.1 no such user here" for a in gone[:-2]}
    full = gone[-2:]
    sink.permanent |= {a: "552 5.2.2 mailbox full" for a in full}  # 552 at RCPT: temporary, as RFC 5321 says
    first = digest(cli)
    assert first == {"sent": RECIPIENTS - len(gone), "failed": len(gone) - 2, "retry": 2}
    rows = deliveries(sqlite_url)
    assert all(rows[a].status == "failed" and "5.1.1" in rows[a].last_error for a in gone[:-2])
    assert digest(cli) == {"retry": 2}, "the 550s are not tried again; the 552s are"
    assert not any(a in sink.per_recipient() for a in gone)
    subscribers = {s["email"]: s for s in json.loads(cli("subscribers", "list", "--json").out)}
    assert {subscribers[a]["status"] for a in gone[:-2]} == {"bounced"}
    assert {subscribers[a]["status"] for a in full} == {"active"}


def test_a_plain_5xx_counts_a_bounce_and_suppresses_after_the_limit(cli, env, list_ready, sink, sqlite_url) -> None:
    env(bounce_limit=1)
    victim = list_ready[5]
    sink.permanent = {victim: "554 5.7.1 rejected for policy reasons"}
    digest(cli)
    assert deliveries(sqlite_url)[victim].status == "failed"
    assert json.loads(cli("subscribers", "show", victim, "--json").out)["status"] == "bounced"


def test_a_refusal_of_the_message_itself_is_no_bounce_of_the_address(cli, env, list_ready, sink, sqlite_url) -> None:
    """After RCPT was accepted, "too much mail data" (a message over the relay's size limit) or a content code
    is about the message, ours to fix: it fails, but never suppresses the subscriber. An address refused at
    DATA ("5.1.1 user unknown") is still the address's."""
    env(bounce_limit=1)
    too_big, bad_content, unknown, full = list_ready[5], list_ready[6], list_ready[7], list_ready[8]
    sink.refuse_data = {too_big: "552 Error: Too much mail data", bad_content: "554 5.6.0 message content rejected",
                        unknown: "550 5.1.1 user unknown", full: "552 5.2.2 mailbox full"}
    digest(cli)
    rows = deliveries(sqlite_url)
    assert [rows[a].status for a in (too_big, bad_content, unknown)] == ["failed"] * 3
    assert rows[full].status == "retry", "a full mailbox is temporary, at DATA as at RCPT"
    assert "Too much mail data" in rows[too_big].last_error
    shown = {a: json.loads(cli("subscribers", "show", a, "--json").out)["status"] for a in (too_big, bad_content, unknown)}
    assert shown == {too_big: "active", bad_content: "active", unknown: "bounced"}


def test_dropped_connections_lose_nothing_and_double_nothing(cli, list_ready, sink, sqlite_url) -> None:
    sink.drop_rcpt_every = 500  # before the message: tried again at once on a fresh connection
    sink.drop_data_every = 450  # after the message arrived, unanswered: unknown, retried once next run
    first = digest(cli)
    assert first["sent"] + first.get("unknown", 0) == RECIPIENTS and first.get("unknown", 0) == RECIPIENTS // 450
    second = digest(cli)
    assert second == {"sent": RECIPIENTS // 450}
    counts = sink.per_recipient()
    assert len(counts) == RECIPIENTS and set(counts.values()) == {1}
    assert sink.sessions >= 1 + RECIPIENTS // 500


def test_a_stalling_server_hits_the_timeout_and_the_run_finishes(cli, env, list_ready, sink, sqlite_url) -> None:
    # The timeout leaves a loaded machine room to answer every other command; the stall is far longer.
    # Without the timeout the stalled message would be answered (and "sent") after the stall.
    env(smtp_timeout_s=5)
    sink.stall_for = {list_ready[3]: 120.0}
    first = digest(cli)
    assert first == {"sent": RECIPIENTS - 1, "unknown": 1}
    assert list_ready[3] not in sink.per_recipient()
    assert "connection lost while the relay was taking the message" in deliveries(sqlite_url)[list_ready[3]].last_error
    assert digest(cli) == {"sent": 1}


def test_a_relay_that_stalls_on_every_message_stops_the_run_instead_of_marking_everyone_unknown(
        cli, env, list_ready, sink, sqlite_url) -> None:
    """A relay that took each message and never answered made a run go on for hours, 4 subscribers "unknown" (to be
    sent again, maybe twice) per timeout, until all were: it is stopped once each connection's message went so."""
    env(smtp_timeout_s=3, smtp_pool_size=2)
    sink.stall_for = {address: 60.0 for address in list_ready}
    result = cli("digest", "--json")
    assert result.code == 1
    outcomes = json.loads(result.out)["outcomes"]
    assert outcomes.get("unknown", 0) == 2 and not outcomes.get("sent"), outcomes
    assert "the relay took 2 messages in a row without confirming them" in result.err and "may be stalled" in result.err
    statuses = [d.status for d in deliveries(sqlite_url).values()]
    assert statuses.count("pending") == RECIPIENTS - 2, "the rest wait for a relay that answers"


def test_a_pool_of_connections_each_carries_many_messages(cli, env, list_ready, sink) -> None:
    env(smtp_pool_size=3)
    assert digest(cli) == {"sent": RECIPIENTS}
    assert sink.sessions == 3


def test_starttls_required_but_not_offered_is_an_error_not_a_downgrade(cli, env, list_ready, sink, sqlite_url) -> None:
    env(smtp_security="starttls")
    result = cli("digest")
    # It was reached: the error says what it lacks and what to set, not "cannot reach".
    assert result.code == 1 and "does not offer STARTTLS" in result.err and "NEWSLETTER_SMTP_SECURITY=tls" in result.err
    assert "cannot reach" not in result.err
    assert sink.received == [] and deliveries(sqlite_url) == {}


def test_the_rate_limit_holds_across_a_restart(cli, env, list_ready, sink, sqlite_url) -> None:
    env(smtp_rate_per_s=40)
    # Keep it short: the first run sends to 60 of the list, the restart right after it to 60 more.
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        for subscriber in session.scalars(select(Subscriber).where(Subscriber.id > 60)):
            subscriber.status = "paused"
        session.commit()
    digest(cli)  # 60 messages at 40/s
    with make_sessionmaker(engine)() as session:  # a restart right away, with 60 more to send
        for subscriber in session.scalars(select(Subscriber).where(Subscriber.id > 60, Subscriber.id <= 120)):
            subscriber.status = "active"
        session.commit()
    engine.dispose()
    digest(cli)
    times = sorted(t for _, _, t in sink.received)
    assert len(times) == 120
    busiest = max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))
    assert busiest <= 40, f"{busiest} messages in one second"


def test_a_delivery_still_refused_after_the_retry_window_expires(cli, list_ready, sink, sqlite_url) -> None:
    victim = list_ready[7]
    sink.always_temporary = lambda address: address == victim
    assert digest(cli)["retry"] == 1
    row = deliveries(sqlite_url)[victim]
    assert row.status == "retry" and row.next_attempt_at is not None
    engine = make_engine(sqlite_url)  # a day passes
    with make_sessionmaker(engine)() as session:
        session.execute(update(Delivery).where(Delivery.id == row.id)
                        .values(created_at=row.created_at - dt.timedelta(hours=25)))
        session.commit()
    engine.dispose()
    assert digest(cli) == {"expired": 1}
    assert deliveries(sqlite_url)[victim].status == "expired"
    assert digest(cli) == {}


def test_the_redirect_switch_sends_everything_to_one_address(cli, env, list_ready, sink) -> None:
    env(redirect_all_to="qa@example.org")
    assert digest(cli) == {"sent": RECIPIENTS}
    assert set(sink.per_recipient()) == {"qa@example.org"}


def test_a_refused_redirect_address_bounces_no_subscriber_and_a_bad_one_stops_at_the_setting(
        cli, env, list_ready, sink, sqlite_url) -> None:
    """Every message went to the test address and its 550 was counted against each real subscriber: after the
    bounce limit they were all suppressed. And "bad" or "a@x, b@y" went out as the To: of every digest."""
    env(bounce_limit=1, redirect_all_to="nosuch@example.org")
    sink.permanent = {"nosuch@example.org": "550 5.1.1 no such user here"}
    assert digest(cli) == {"failed": RECIPIENTS}
    subscribers = json.loads(cli("subscribers", "list", "--json").out)
    assert {s["status"] for s in subscribers} == {"active"} and not any(s.get("bounce_count") for s in subscribers)
    for bad in ("bad", "me@example.org, other@example.net"):
        env(redirect_all_to=bad)
        result = cli("digest")
        assert result.code != 0 and "NEWSLETTER_REDIRECT_ALL_TO" in result.err and "is not one email address" in result.err
        assert len(result.err.strip().splitlines()) <= 2, result.err


def test_dkim_signs_when_a_key_is_configured(cli, env, list_ready, sink, tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "dkim.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    env(dkim_private_key_path=tmp_path / "dkim.pem", dkim_selector="news")
    captured: list[bytes] = []
    original = sink.handle_DATA

    async def keep(server, session, envelope):
        captured.append(envelope.original_content)
        return await original(server, session, envelope)

    sink.handle_DATA = keep  # type: ignore[method-assign]
    env(redirect_all_to="qa@example.org")
    digest(cli)
    assert captured and all(m.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;") and b"s=news;" in m[:600] for m in captured)


def test_a_dkim_key_file_that_is_no_key_stops_the_run_at_start_and_fails_nobody(cli, env, list_ready, sink, sqlite_url,
                                                                                 tmp_path) -> None:
    not_a_key = tmp_path / "passwd"
    not_a_key.write_text("root:x:0:0:root:/root:/bin/bash\n")
    env(dkim_private_key_path=not_a_key)
    result = cli("digest")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.startswith(f"error: NEWSLETTER_DKIM_PRIVATE_KEY_PATH: {not_a_key} is not a private key dkimpy can sign")
    assert not sink.per_recipient()
    assert {d.status for d in deliveries(sqlite_url).values()} <= {"pending"}, "no delivery failed for a setting"


def test_retries_back_off_exponentially_with_jitter() -> None:
    import datetime as dt

    from newsletter.db.ledger import RetryPolicy

    policy = RetryPolicy(base_s=60, max_delay_s=3600, window_s=86_400)
    now = created = dt.datetime(2026, 11, 23, 7)
    delays = [(policy.next_attempt(attempts=n, created_at=created, now=now) - now).total_seconds() for n in range(1, 9)]
    for n, delay in enumerate(delays, start=1):
        expected = min(60 * 2 ** (n - 1), 3600)
        assert 0.75 * expected <= delay <= 1.25 * expected
    assert policy.next_attempt(attempts=1, created_at=created, now=created + dt.timedelta(hours=24)) is None
