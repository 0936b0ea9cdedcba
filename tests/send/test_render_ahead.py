"""A big run claims and renders in a second process, ahead of the sending (``newsletter.render_ahead``).

What is checked is what a user would see: every digest sent once; the rendering really done by
another process (the parent's renderer is broken here and nothing fails); and when that process
fails or is killed, the run stops with one reason, nothing is left claimed, and the next run sends
the rest once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy import update as sa_update

import newsletter.deliver
from newsletter import render_ahead
from newsletter.db import repo
from newsletter.db.models import Delivery, DeliveryItem, Subscriber
from newsletter.deliver import send_due
from newsletter.plan import plan_due
from newsletter.records import NewSubscriber, Preferences
from newsletter.runtime import Runtime
from newsletter.send.mailer import RecordingMailer
from newsletter.settings import Settings
from tests.conftest import FIXTURES, fixed_send_moment
from tests.send.test_no_hang import add_readers, environment, relay, run_cli, statuses  # noqa: F401  (relay: a fixture)

SECRET = "test-secret-key-0123456789abcdefghij"


def test_a_big_digest_run_renders_in_a_second_process_and_sends_each_digest_once(cli, env, sqlite_url, tmp_path,
                                                                                  relay) -> None:  # noqa: F811  (the fixture imported above)
    settings = dict(database_url=sqlite_url, secret_key=SECRET, from_address="digest@example.org", email_backend="smtp",
                    smtp_host="127.0.0.1", smtp_port=relay.port, smtp_security="none", render_ahead_from=30)
    env(**settings)
    readers = add_readers(cli, tmp_path, 40)

    done = run_cli(environment(**settings), tmp_path, "digest")
    assert done.returncode == 0, done.stderr
    assert "sent 40" in done.stdout
    assert relay.per_recipient() == Counter(dict.fromkeys(readers, 1))
    assert set(statuses(sqlite_url).values()) == {"sent"}


def runtime_with_readers(tmp_path: Path, sqlite_url: str, count: int, **overrides: object) -> tuple[Runtime, dt.datetime]:
    """``count`` readers due at the returned moment, their digests planned, papers ingested (via the CLI's own steps)."""
    from newsletter.db import migrate
    from newsletter.db.models import utcnow
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.ingest.run import ingest_sources
    from newsletter.ingest.sources import SourceSpec

    settings = Settings(database_url=sqlite_url, secret_key=SECRET, from_address="digest@example.org",
                        semantic=False, _env_file=None, **overrides)  # type: ignore[arg-type]
    runtime = Runtime.build(settings)
    migrate.upgrade(runtime.engine)
    with make_client(timeout_s=5) as client:
        ingest_sources([SourceSpec(str(FIXTURES / "arxiv_cs_lg.rss"), "arxiv-rss")], sessions=runtime.sessions,
                       fetcher=Fetcher(client=client, max_bytes=10_000_000), now=utcnow())
    with runtime.sessions() as session:
        repo.import_subscribers(session, subscribers=[
            NewSubscriber(email=f"reader{i:03d}@example.org", max_papers=2,
                          preferences=Preferences.from_lists(topics=["diffusion models", "language models"]))
            for i in range(count)])
        session.commit()
    now = dt.datetime.fromisoformat(fixed_send_moment(sqlite_url))
    plan = plan_due(runtime, now=now)
    assert plan.due == count and plan.empty == 0
    return runtime, now


def delivery_states(runtime: Runtime) -> Counter[tuple[str, bool]]:
    """(status, still claimed) → count."""
    with runtime.sessions() as session:
        return Counter((status, holder is not None) for status, holder in session.execute(
            select(Delivery.status, Delivery.leased_by)))


def broken_renderer(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("rendered in the sending process")


def child_started_first(monkeypatch) -> None:  # noqa: ANN001
    """The sending waits for the rendering process's first word instead of rendering here while it starts:
    what is checked is then all the child's doing."""
    monkeypatch.setattr(render_ahead.RenderAhead, "ready", lambda self: self._from_child.poll(60))  # noqa: SLF001


def test_the_messages_are_rendered_by_the_other_process(sqlite_url, tmp_path, monkeypatch, caplog) -> None:
    runtime, _ = runtime_with_readers(tmp_path, sqlite_url, 250)
    monkeypatch.setattr(newsletter.deliver, "message_for", broken_renderer)  # here only: the child imports its own
    child_started_first(monkeypatch)
    mailer = RecordingMailer()
    caplog.set_level(logging.INFO, logger="newsletter.render_ahead")
    with render_ahead.RenderAhead(runtime) as ahead:
        report = asyncio.run(send_due(runtime, mailers=[mailer], ahead=ahead))

    assert report.error is None and report.outcomes == Counter(sent=250)
    assert sorted(e.recipient for e in mailer.sent) == [f"reader{i:03d}@example.org" for i in range(250)]
    assert all(b"Subject:" in e.data and e.message_id.encode() in e.data for e in mailer.sent)
    # Checked where they were built, so the sender skips scanning them for lone line endings.
    assert all(e.crlf_only and b"\n" not in e.data.replace(b"\r\n", b"") for e in mailer.sent)
    started = [r for r in caplog.records if "ahead of the sending in process" in r.getMessage()]
    assert started and str(os.getpid()) not in started[0].getMessage().split()
    assert not multiprocessing.active_children(), "the child is gone once the run is over"
    assert delivery_states(runtime) == Counter({("sent", False): 250})


def test_a_failing_render_process_stops_the_run_with_its_reason_and_the_next_run_sends_everything(
        sqlite_url, tmp_path, caplog) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    runtime, _ = runtime_with_readers(tmp_path, sqlite_url, 120, dkim_private_key_path=key_path)
    key_path.unlink()  # the sender has read it; the child, starting now, cannot
    caplog.set_level(logging.INFO)
    monkeypatch = pytest.MonkeyPatch()
    child_started_first(monkeypatch)  # nothing is rendered here, where the key was read
    with render_ahead.RenderAhead(runtime) as ahead:
        report = asyncio.run(send_due(runtime, mailers=[RecordingMailer()], ahead=ahead))

    assert report.error is not None and "\n" not in report.error
    assert report.error.startswith("rendering ahead of the sending failed: NEWSLETTER_DKIM_PRIVATE_KEY_PATH: cannot read")
    assert not report.outcomes
    assert delivery_states(runtime) == Counter({("pending", False): 120}), "nothing sent, nothing left claimed"
    child_said = [r for r in caplog.records if r.getMessage().startswith("rendering ahead of the sending failed: ")]
    assert child_said and child_said[0].process != os.getpid(), "the child's own log record reached our loggers"
    assert "\n" not in child_said[0].getMessage(), "one line: no traceback on a user's terminal"

    monkeypatch.undo()
    mailer = RecordingMailer()  # the next run (rendering here: the key is back in the sender's runtime)
    again = asyncio.run(send_due(runtime, mailers=[mailer]))
    assert again.error is None and again.outcomes == Counter(sent=120)
    assert Counter(e.recipient for e in mailer.sent) == Counter({f"reader{i:03d}@example.org": 1 for i in range(120)})


def test_a_killed_render_process_stops_the_run_and_the_next_run_sends_the_rest_once(sqlite_url, tmp_path) -> None:
    runtime, _ = runtime_with_readers(tmp_path, sqlite_url, 1_300)
    mailer = RecordingMailer()
    with render_ahead.RenderAhead(runtime) as ahead:
        def kill_the_child_once(done: int) -> None:
            if done == 1:
                os.kill(ahead._child.pid, signal.SIGKILL)  # noqa: SLF001

        report = asyncio.run(send_due(runtime, mailers=[mailer], ahead=ahead, progress=kill_the_child_once))

    assert report.error is not None
    # Killed between messages on the pipe or in the middle of one (the read ends mid-message): the same one line.
    assert report.error.startswith(f"the rendering process (pid {ahead._child.pid}) was killed (SIGKILL); "), report.error  # noqa: SLF001
    sent_first = report.outcomes["sent"]
    assert 1 <= sent_first < 1_300 and set(report.outcomes) == {"sent"}
    states = delivery_states(runtime)
    assert states == Counter({("sent", False): sent_first, ("pending", False): 1_300 - sent_first}), states

    again = asyncio.run(send_due(runtime, mailers=[mailer]))
    assert again.error is None and again.outcomes == Counter(sent=1_300 - sent_first)
    assert Counter(e.recipient for e in mailer.sent) == Counter({f"reader{i:03d}@example.org": 1 for i in range(1_300)})


@pytest.mark.parametrize(("due", "from_", "url", "worth"), [
    (999, 1000, "file", False), (1000, 1000, "file", True), (5, 0, "file", True), (5000, 1000, "memory", False),
    (5000, 1000, "uri", False)])
def test_only_a_big_run_on_a_database_another_process_can_open_uses_a_second_process(
        tmp_path, monkeypatch, due, from_, url, worth) -> None:
    database = {"file": f"sqlite:///{tmp_path}/x.db", "memory": "sqlite://",
                "uri": f"sqlite:///file:{tmp_path}/x.db?uri=true"}[url]  # a URI: memory or file, not known for sure
    runtime = Runtime.build(Settings(database_url=database, render_ahead_from=from_, _env_file=None))
    monkeypatch.setattr(render_ahead, "usable_cpus", lambda: 2)
    assert render_ahead.worthwhile(runtime, due=due) is worth
    monkeypatch.setattr(render_ahead, "usable_cpus", lambda: 1)
    assert render_ahead.worthwhile(runtime, due=due) is False  # one core: nothing to gain


@pytest.mark.parametrize(("cpu_max", "cap"), [
    ("50000 100000\n", 1), ("100000 100000\n", 1), ("250000 100000\n", 2), ("max 100000\n", None), ("odd\n", None), (None, None)])
def test_a_cgroup_cpu_quota_caps_the_cpus_counted_for_a_second_process(tmp_path, cpu_max, cap) -> None:
    mask = len(os.sched_getaffinity(0))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert render_ahead.usable_cpus(path) == (mask if cap is None else min(mask, cap))


def test_a_run_with_only_deliveries_left_over_counts_them_and_renders_ahead(sqlite_url, tmp_path, monkeypatch) -> None:
    """A run after a crash has no subscriber due (they were planned) but a whole list to send: it counts."""
    from newsletter.pipeline import run_digest

    planned, now = runtime_with_readers(tmp_path, sqlite_url, 60, render_ahead_from=50)
    mailer = RecordingMailer()
    runtime = Runtime.build(planned.settings, connect=lambda: mailer)
    monkeypatch.setattr(render_ahead, "usable_cpus", lambda: 2)
    monkeypatch.setattr(newsletter.deliver, "message_for", broken_renderer)  # here only: the child imports its own
    child_started_first(monkeypatch)

    run = asyncio.run(run_digest(runtime, now=now))
    assert not run.picks, "nobody was due: the 60 deliveries were planned by an earlier run"
    assert run.errors == [] and run.outcomes == Counter(sent=60)
    assert Counter(e.recipient for e in mailer.sent) == Counter({f"reader{i:03d}@example.org": 1 for i in range(60)})


def test_the_first_messages_go_out_while_the_rendering_process_starts_and_each_digest_goes_once(
        sqlite_url, tmp_path, monkeypatch) -> None:
    """The child's start (~1 s of imports) is not waited for: batches are rendered here until it speaks."""
    runtime, _ = runtime_with_readers(tmp_path, sqlite_url, 400)
    rendered_here = []

    def counted(*args: object, **kwargs: object) -> object:
        rendered_here.append(1)
        return message_for(*args, **kwargs)

    message_for = newsletter.deliver.message_for
    monkeypatch.setattr(newsletter.deliver, "message_for", counted)
    asked = []

    def ready(self: render_ahead.RenderAhead) -> bool:  # not before two batches were rendered here
        asked.append(1)
        return len(asked) > 2 and self._from_child.poll(60)  # noqa: SLF001

    monkeypatch.setattr(render_ahead.RenderAhead, "ready", ready)
    mailer = RecordingMailer()
    with render_ahead.RenderAhead(runtime) as ahead:
        report = asyncio.run(send_due(runtime, mailers=[mailer], ahead=ahead))

    assert report.error is None and report.outcomes == Counter(sent=400)
    assert len(rendered_here) == 2 * render_ahead.FIRST_BATCH, "two small batches here, the rest in the child"
    assert Counter(e.recipient for e in mailer.sent) == Counter({f"reader{i:03d}@example.org": 1 for i in range(400)})
    assert delivery_states(runtime) == Counter({("sent", False): 400})


def test_a_big_run_plans_in_the_rendering_process_beside_the_sending(sqlite_url, tmp_path, monkeypatch) -> None:
    """Everyone due is planned once and sent once, the first few planned here and the rest by the child, and
    the run's counts say so; with the picks asked for (--json, --verbose) everything is planned here."""
    from newsletter import pipeline

    planned, now = runtime_with_readers(tmp_path, sqlite_url, 1, render_ahead_from=50)  # reader000, planned already
    with planned.sessions() as session:
        repo.import_subscribers(session, subscribers=[
            NewSubscriber(email=f"reader{i:03d}@example.org", max_papers=2, preferences=Preferences.from_lists(
                topics=["diffusion models", "language models"] if i % 4 else ["zebra husbandry"]))
            for i in range(1, 121)])
        session.commit()
        due_at = dict(session.execute(select(Subscriber.id, Subscriber.next_send_at).where(Subscriber.id > 1)).all())
    now = dt.datetime.fromisoformat(fixed_send_moment(sqlite_url))
    monkeypatch.setattr(render_ahead, "usable_cpus", lambda: 2)
    monkeypatch.setattr(pipeline, "FIRST_PLAN_BATCH", 10)
    planned_here = []
    plan_due = pipeline.plan_due

    def counted_plan(*args: object, **kwargs: object):  # noqa: ANN202
        report = plan_due(*args, **kwargs)
        planned_here.append(report.due)
        return report

    monkeypatch.setattr(pipeline, "plan_due", counted_plan)
    mailer = RecordingMailer()
    runtime = Runtime.build(planned.settings, connect=lambda: mailer)
    with_papers = {f"reader{i:03d}@example.org" for i in range(1, 121) if i % 4}  # the others' topic: nothing today

    run = asyncio.run(pipeline.run_digest(runtime, now=now, keep_picks=False))
    assert run.errors == []
    assert planned_here == [10], "ten planned here, the other 110 in the rendering process"
    assert (run.due, run.served) == (120, 90) and not run.picks, "the counts of both, without the picks"
    assert run.outcomes == Counter(sent=91), "with reader000's, planned before"
    assert Counter(e.recipient for e in mailer.sent) == Counter(dict.fromkeys([*with_papers, "reader000@example.org"], 1))
    with runtime.sessions() as session:
        assert Counter(session.scalars(select(Delivery.status))) == Counter(sent=91, empty=30)

    with runtime.sessions() as session:  # the same again, the picks asked for
        session.execute(DeliveryItem.__table__.delete())
        session.execute(Delivery.__table__.delete().where(Delivery.subscriber_id > 1))
        reschedule = sa_update(Subscriber).where(Subscriber.id == bindparam("subscriber")).values(next_send_at=bindparam("at"))
        session.connection().execute(reschedule,
                                     [{"subscriber": i, "at": at} for i, at in due_at.items()])
        session.commit()
    planned_here.clear()
    mailer.sent.clear()
    run = asyncio.run(pipeline.run_digest(runtime, now=now))
    assert planned_here == [120] and len(run.picks) == 120 and (run.due, run.served) == (120, 90)
    assert sorted(e.recipient for e in mailer.sent) == sorted(with_papers)


def test_planning_beside_the_sending_still_lets_an_older_unsent_digest_give_way(sqlite_url, tmp_path, monkeypatch) -> None:
    """Yesterday's digests never went out (the relay was down): today's big run sends each reader today's only,
    planned or not yet planned when the sending started; yesterday's give way to them (its papers roll over)."""
    from newsletter import pipeline

    planned, day_one = runtime_with_readers(tmp_path, sqlite_url, 60, render_ahead_from=50)
    monkeypatch.setattr(render_ahead, "usable_cpus", lambda: 2)
    monkeypatch.setattr(pipeline, "FIRST_PLAN_BATCH", 10)
    mailer = RecordingMailer()
    runtime = Runtime.build(planned.settings, connect=lambda: mailer)
    day_two = day_one + dt.timedelta(days=1)

    run = asyncio.run(pipeline.run_digest(runtime, now=day_two, keep_picks=False))
    assert run.errors == [] and run.due == 60 and run.outcomes == Counter(sent=60)
    assert Counter(e.recipient for e in mailer.sent) == Counter({f"reader{i:03d}@example.org": 1 for i in range(60)})
    with runtime.sessions() as session:
        states = Counter(session.execute(select(Delivery.issue_date, Delivery.status)).all())
    assert states == Counter({(day_one.date(), "expired"): 60, (day_two.date(), "sent"): 60}), states


def test_stopping_a_big_run_stops_the_planning_beside_it_and_the_next_run_sends_the_rest_once(
        sqlite_url, tmp_path, monkeypatch) -> None:
    """SIGTERM or Ctrl-C once the sender waits on the rendering process, which plans a long stretch of quiet
    days (nothing to hand over, so the sender only waits on it): it is told at once and stops planning between
    batches; nothing is left claimed, and the next run plans everyone else, and sends each digest once."""
    from newsletter import pipeline

    planned, _ = runtime_with_readers(tmp_path, sqlite_url, 1, render_ahead_from=50)
    with planned.sessions() as session:
        repo.import_subscribers(session, subscribers=[
            NewSubscriber(email=f"reader{i:04d}@example.org", max_papers=2, preferences=Preferences.from_lists(
                topics=["diffusion models", "language models"] if i <= 10 else ["zebra husbandry"]))
            for i in range(1, 2_501)])
        session.commit()
    now = dt.datetime.fromisoformat(fixed_send_moment(sqlite_url))
    monkeypatch.setattr(render_ahead, "usable_cpus", lambda: 2)
    monkeypatch.setattr(pipeline, "FIRST_PLAN_BATCH", 10)  # reader0001-0010, here; the quiet rest in the child
    mailer = RecordingMailer()
    runtime = Runtime.build(planned.settings, connect=lambda: mailer)

    async def stopped_once_the_sender_waits_on_the_planning() -> pipeline.DigestRun:
        stop = asyncio.Event()  # set with the 11th message, the last planned when the rendering process started
        return await pipeline.run_digest(runtime, now=now, keep_picks=False, stop=stop,
                                         progress=lambda done: stop.set() if done >= 11 else None)

    first = asyncio.run(stopped_once_the_sender_waits_on_the_planning())
    assert first.errors == [] and first.outcomes["sent"] >= 11
    assert first.due < 2_500, "planning stopped too"
    assert delivery_states(runtime)[("pending", True)] == 0, "nothing left claimed"

    again = asyncio.run(pipeline.run_digest(runtime, now=now, keep_picks=False))
    assert again.errors == [] and first.due + again.due == 2_500
    assert Counter(e.recipient for e in mailer.sent) == Counter(
        {"reader000@example.org": 1, **{f"reader{i:04d}@example.org": 1 for i in range(1, 11)}})
