"""Planning and claiming at their edges: unscheduled rows, unsent digests overtaken by the next, unsubscribes mid-send."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import make_url, select, update

from newsletter.db import ledger
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, DeliveryItem, Subscriber
from newsletter.plan import plan_due
from newsletter.runtime import Runtime
from newsletter.settings import load_settings
from tests.conftest import FIXTURES


def at(moment: dt.datetime) -> str:
    return moment.isoformat()


def next_send(url: str, email: str) -> dt.datetime:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        when = session.scalar(select(Subscriber.next_send_at).where(Subscriber.email == email))
    engine.dispose()
    assert when is not None
    return when.replace(tzinfo=dt.UTC)


def readers_due(cli, count: int) -> dt.datetime:  # noqa: ANN001
    """``count`` readers r0, r1, … of the same schedule, papers ingested; the moment they are all due."""
    assert cli("init").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    for n in range(count):
        assert cli("subscribers", "add", f"r{n}@example.org", "--topic", "diffusion models").code == 0
    return next_send(load_settings().database_url, "r0@example.org") + dt.timedelta(minutes=1)


def plan_while_scoring(monkeypatch, *, now: dt.datetime, beside: Callable[[], object]) -> int:  # noqa: ANN001
    """Plan everyone due at ``now``, running ``beside()`` (another process's doing) as each batch is scored;
    the number of digests planned."""
    import newsletter.plan as plan_module

    score = plan_module.score_subscribers

    def score_with_something_beside(*args: object, **kwargs: object):  # noqa: ANN202
        beside()
        return score(*args, **kwargs)

    monkeypatch.setattr(plan_module, "score_subscribers", score_with_something_beside)
    runtime = Runtime.build(load_settings())
    try:
        return plan_due(runtime, now=now).due
    finally:
        runtime.engine.dispose()


def test_a_subscriber_without_a_next_send_moment_is_scheduled_and_then_served(cli, configured) -> None:
    """Rows from before schedules existed (an upgraded database) carry no next send moment."""
    assert cli("init").code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    engine = make_engine(configured)
    with make_sessionmaker(engine)() as session:
        session.execute(update(Subscriber).values(next_send_at=None))
        session.commit()
    engine.dispose()
    first = cli("digest", "--allow-future", "--at", at(dt.datetime.now(dt.UTC)))
    assert first.code == 0 and "nobody is due at " in first.out, first.out
    due = next_send(configured, "ada@example.org")
    second = cli("digest", "--allow-future", "--at", at(due + dt.timedelta(minutes=1)))
    assert second.code == 0 and "deliveries: sent 1" in second.out, second.out


def test_an_unsent_digest_gives_way_to_the_next_and_its_papers_roll_into_it(cli, configured) -> None:
    assert cli("init").code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "language models", "--max-papers", "3").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    runtime = Runtime.build(load_settings())
    try:
        day_one = next_send(configured, "ada@example.org") + dt.timedelta(minutes=1)
        plan_due(runtime, now=day_one)  # planned, never sent (the relay was down all day)
        with runtime.sessions() as session:
            [first] = session.scalars(select(Delivery)).all()
            first_papers = set(session.scalars(select(DeliveryItem.paper_id).where(DeliveryItem.delivery_id == first.id)))
        plan_due(runtime, now=day_one + dt.timedelta(days=1))
        with runtime.sessions() as session:
            rows = {d.issue_date: d for d in session.scalars(select(Delivery))}
            second = rows[max(rows)]
            second_papers = set(session.scalars(select(DeliveryItem.paper_id).where(DeliveryItem.delivery_id == second.id)))
    finally:
        runtime.close()
    older = rows[min(rows)]
    assert (older.status, older.last_error) == ("expired", "superseded by a newer digest")
    assert second.status == "pending"
    assert first_papers and first_papers == second_papers, "the papers nobody received come in the next digest"


def test_a_subscriber_who_leaves_after_their_digest_was_claimed_does_not_get_it(cli, configured) -> None:
    assert cli("init").code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "language models").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    runtime = Runtime.build(load_settings())
    try:
        plan_due(runtime, now=next_send(configured, "ada@example.org") + dt.timedelta(minutes=1))
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with runtime.sessions() as session:
            [claimed] = ledger.claim_due(session, now=now, holder="me", lease=dt.timedelta(minutes=5), limit=10)
            session.execute(update(Subscriber).values(status="unsubscribed"))
            session.commit()
            sender = ledger.Ledger(session.connection(), policy=ledger.RetryPolicy(), holder="me")
            assert sender.started([claimed.id], now=now) == set(), "not marked sending: the worker skips it"
            session.commit()
            assert session.scalar(select(Delivery.status)) == "pending"
    finally:
        runtime.close()


def test_leaving_cancels_the_digests_planned_and_not_sent_however_one_leaves(cli, configured) -> None:
    """They were left pending: a day later they expired and `status` paged the operator for people who left,
    or the old digest went out to someone who signed up again within the day."""
    from newsletter import subscriptions
    from newsletter.subscriptions import Via

    assert cli("init").code == 0
    for name in ("ada", "bob", "cy"):
        assert cli("subscribers", "add", f"{name}@example.org", "--topic", "language models").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    settings = load_settings()
    runtime = Runtime.build(settings)
    try:
        plan_due(runtime, now=next_send(configured, "ada@example.org") + dt.timedelta(minutes=1))
        with runtime.sessions() as session:
            ledger.claim_due(session, now=dt.datetime.now(dt.UTC).replace(tzinfo=None), holder="a sender",
                             lease=dt.timedelta(minutes=5), limit=10)  # claimed by a sender, not sent yet
            session.commit()
            ada = session.scalar(select(Subscriber.id).where(Subscriber.email == "ada@example.org"))
            assert subscriptions.unsubscribe(session, settings, ada, via=Via.WEB)  # the one-click link
            session.execute(update(Subscriber).where(Subscriber.email == "cy@example.org").values(status="paused"))  # by hand
            session.commit()
        assert cli("subscribers", "pause", "bob@example.org").code == 0

        def statuses() -> dict[str, str]:
            with runtime.sessions() as session:
                return {email: status for email, status in session.execute(select(Subscriber.email, Delivery.status).join(Delivery))}

        assert statuses() == {"ada@example.org": "cancelled", "bob@example.org": "cancelled", "cy@example.org": "pending"}
        with runtime.sessions() as session:  # the claim ended
            session.execute(update(Delivery).values(leased_by=None, lease_until=None))
            session.commit()
        swept = cli("digest", "--json")  # a status changed by hand is caught by the next sender
        assert swept.code == 0 and json.loads(swept.out)["outcomes"] == {}, swept.out
        assert statuses() == {"ada@example.org": "cancelled", "bob@example.org": "cancelled", "cy@example.org": "cancelled"}
        assert cli("status").code == 0, "nothing expired, nothing to page anyone about"
    finally:
        runtime.close()


def test_many_unsent_digests_give_way_at_once(cli, configured) -> None:
    """The same as above for many subscribers in one planning batch (one statement, many parameter sets)."""
    assert cli("init").code == 0
    for i in range(5):
        assert cli("subscribers", "add", f"r{i}@example.org", "--topic", "language models", "--max-papers", "2").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    runtime = Runtime.build(load_settings())
    try:
        day_one = next_send(configured, "r0@example.org") + dt.timedelta(minutes=1)
        plan_due(runtime, now=day_one)
        plan_due(runtime, now=day_one + dt.timedelta(days=1))
        with runtime.sessions() as session:
            statuses = sorted(session.scalars(select(Delivery.status)))
    finally:
        runtime.close()
    assert statuses == ["expired"] * 5 + ["pending"] * 5


def test_a_dry_run_after_todays_digest_went_out_labels_the_next_one(cli, configured) -> None:
    """It labelled today's date, whose digest had gone already, on the papers of the next."""
    assert cli("init").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--timezone", "Asia/Tokyo",
               "--hour", "7").code == 0
    due = next_send(configured, "ada@example.org")
    today = due.astimezone(ZoneInfo("Asia/Tokyo")).date()
    before = json.loads(cli("digest", "--dry-run", "--json", "--at", at(due + dt.timedelta(minutes=1))).out)
    assert before[0]["issue_date"] == today.isoformat(), "due now and not sent: today's"
    assert "deliveries: sent 1" in cli("digest", "--allow-future", "--at", at(due + dt.timedelta(minutes=1))).out
    after = json.loads(cli("digest", "--dry-run", "--json", "--at", at(due + dt.timedelta(hours=2))).out)
    assert after[0]["issue_date"] == (today + dt.timedelta(days=1)).isoformat()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite runs one planner at a time
def test_a_run_that_leaves_due_digests_unplanned_does_not_call_a_past_moment_the_next(cli, configured) -> None:
    """Beside another run that holds the due subscribers (PostgreSQL: their rows locked, skipped), it said "nobody
    is due at 13:01; the next digest is due at 13:00"."""
    assert cli("init").code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models").code == 0
    due = next_send(configured, "ada@example.org")
    engine = make_engine(configured)
    try:
        with engine.connect() as other_run:  # another run is planning her: her row is locked until it commits
            other_run.execute(select(Subscriber.id).with_for_update())
            result = cli("digest", "--allow-future", "--at", at(due + dt.timedelta(minutes=1)))
            other_run.rollback()
    finally:
        engine.dispose()
    assert result.code == 0 and "the next digest is due" not in result.out, result.out
    assert f"the digests due since {due:%Y-%m-%d %H:%M} UTC were not planned by it" in result.out


def test_digest_json_says_when_the_next_digest_is_due(cli, configured) -> None:
    """The text output said it after a run with nobody due; the data did not."""
    assert cli("init").code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models").code == 0
    due = next_send(configured, "ada@example.org")
    early = json.loads(cli("digest", "--json", "--allow-future", "--at", at(due - dt.timedelta(hours=1))).out)
    assert early["picks"] == [] and dt.datetime.fromisoformat(early["next_due_at"].replace("Z", "+00:00")) == due


def test_a_dry_run_after_an_early_only_digest_labels_the_next_day(cli, configured) -> None:
    """'digest --only' sent today's digest hours before her hour: the next one is tomorrow's, not today's."""
    assert cli("init").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--hour", "8").code == 0
    due = next_send(configured, "ada@example.org")  # 08:00 UTC
    early = due - dt.timedelta(hours=5)
    assert "sent 1" in cli("digest", "--only", "ada@example.org", "--allow-future", "--at", at(early)).out
    later = json.loads(cli("digest", "--dry-run", "--json", "--at", at(early + dt.timedelta(hours=1))).out)
    assert later[0]["issue_date"] == (due.date() + dt.timedelta(days=1)).isoformat()


def test_planning_stops_between_batches_when_told_and_the_rest_stays_due(cli, configured, monkeypatch) -> None:
    """Ctrl-C or SIGTERM during planning: what is planned is committed, the rest is planned by the next run."""
    import newsletter.plan as plan_module

    now = readers_due(cli, 5)
    monkeypatch.setattr(plan_module, "PLAN_BATCH", 2)
    asked = []

    def stopped() -> bool:  # told to stop once the first batch is planned
        asked.append(True)
        return len(asked) > 1

    runtime = Runtime.build(load_settings())
    try:
        first = plan_due(runtime, now=now, stopped=stopped)
        assert first.due == 2, "one batch, then it stopped"
        rest = plan_due(runtime, now=now)
        assert rest.due == 3
    finally:
        runtime.engine.dispose()


def test_planning_on_sqlite_scores_without_holding_the_write_lock(cli, configured, monkeypatch) -> None:
    """A sender beside the planner commits each message: it must not wait while a batch is scored."""
    import sqlite3

    if not configured.startswith("sqlite"):
        pytest.skip("PostgreSQL locks the rows it plans, not the database")
    now = readers_due(cli, 3)
    writes_while_scoring = []

    def write_beside() -> None:
        other = sqlite3.connect(make_url(configured).database, timeout=0, isolation_level=None)
        try:  # another process's write, not willing to wait at all
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE subscribers SET bounce_count = bounce_count WHERE id = 0")
            other.execute("COMMIT")
            writes_while_scoring.append("written")
        except sqlite3.OperationalError as exc:
            writes_while_scoring.append(str(exc))
        finally:
            other.close()

    assert plan_while_scoring(monkeypatch, now=now, beside=write_beside) == 3
    assert writes_while_scoring == ["written"]


def test_a_subscriber_changed_while_their_batch_was_scored_is_not_recorded_over(cli, configured, monkeypatch) -> None:
    """SQLite: the picks are recorded only for those whose next send moment is still the one read (another
    planner, or a change of schedule, got there first) and who are still active."""
    if not configured.startswith("sqlite"):
        pytest.skip("PostgreSQL holds the rows of the batch it scores: nobody changes them meanwhile")
    now = readers_due(cli, 4)
    moved_to = now + dt.timedelta(days=3)
    engine = make_engine(configured)

    def change_beside() -> None:
        with make_sessionmaker(engine)() as session:  # another process: a new hour for r1, r2 leaves
            session.execute(update(Subscriber).where(Subscriber.email == "r1@example.org").values(next_send_at=moved_to))
            session.execute(update(Subscriber).where(Subscriber.email == "r2@example.org").values(status="unsubscribed"))
            session.commit()

    assert plan_while_scoring(monkeypatch, now=now, beside=change_beside) == 2
    with make_sessionmaker(engine)() as session:
        planned = set(session.scalars(select(Subscriber.email).join(Delivery, Delivery.subscriber_id == Subscriber.id)))
        r1_next = session.scalar(select(Subscriber.next_send_at).where(Subscriber.email == "r1@example.org"))
    engine.dispose()
    assert planned == {"r0@example.org", "r3@example.org"}
    assert r1_next == moved_to.replace(tzinfo=None), "their new moment stands"
