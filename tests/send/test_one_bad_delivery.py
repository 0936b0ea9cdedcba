"""One delivery that cannot be built or sent fails alone, with its reason; everyone else gets their digest.

Internationalised addresses go end to end: the domain in IDNA (``xn--…``) everywhere, a local part with
non-ASCII characters over SMTPUTF8 when the relay offers it, and when it does not, that one delivery
fails (not the run, not a bounce).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, text

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Subscriber
from newsletter.plan import plan_due
from newsletter.runtime import Runtime
from newsletter.settings import load_settings
from tests.conftest import FIXTURES, fixed_send_moment, free_port

IDN = "jürgen@bücher.example"  # non-ASCII before and after the @
IDN_DOMAIN_ONLY = "zoe@bücher.example"  # ASCII before the @: needs no SMTPUTF8, only IDNA
READERS = [f"reader{i}@lab.example.org" for i in range(48)] + [IDN_DOMAIN_ONLY]  # 49; all sort after "jürgen"
HEADER = "email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n"


@dataclass
class Arrival:
    mail_from: str
    recipients: list[str]
    smtp_utf8: bool
    raw: bytes


@dataclass
class RecordingSink:
    """What a real aiosmtpd server received, envelope and bytes as they came."""

    arrivals: list[Arrival] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook
        self.arrivals.append(Arrival(envelope.mail_from, list(envelope.rcpt_tos), envelope.smtp_utf8, envelope.original_content))
        return "250 OK"

    def recipients(self) -> list[str]:
        return [r for a in self.arrivals for r in a.recipients]


def start_sink(*, smtputf8: bool) -> tuple[RecordingSink, Controller, int]:
    sink, port = RecordingSink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    return sink, controller, port


@pytest.fixture
def relay(request) -> Iterator[tuple[RecordingSink, int]]:
    sink, controller, port = start_sink(smtputf8=getattr(request, "param", False))
    yield sink, port
    controller.stop()


def add_list(cli, tmp_path: Path, emails: list[str]) -> None:
    rows = "".join(f"{e},diffusion models;language models,,,,,,,,3\n" for e in emails)
    (tmp_path / "list.csv").write_text(HEADER + rows, encoding="utf-8")
    result = cli("subscribers", "import", str(tmp_path / "list.csv"))
    assert result.code == 0, result.err
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0


@pytest.fixture
def smtp_settings(env, sqlite_url: str):
    def point_at(port: int) -> None:
        env(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij", from_address="digest@example.org",
            email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", smtp_timeout_s=30)

    return point_at


def ledger(url: str) -> list[tuple[str, str, str | None, int]]:
    """(email, status, last error, bounce count) in delivery order."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = [(email, status, error, bounces) for email, status, error, bounces in session.execute(
            select(Subscriber.email, Delivery.status, Delivery.last_error, Subscriber.bounce_count)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id).order_by(Delivery.id))]
    engine.dispose()
    return rows


def plan(url: str) -> None:
    """Record the due deliveries without sending them (what `digest` does before it sends)."""
    engine = make_engine(url)
    at = dt.datetime.fromisoformat(fixed_send_moment(url).replace("Z", "+00:00"))
    plan_due(Runtime.build(load_settings(), engine=engine), now=at)
    engine.dispose()


def test_an_address_the_relay_cannot_take_fails_alone_and_the_49_others_get_their_digest(
        cli, tmp_path, relay, smtp_settings, sqlite_url) -> None:
    sink, port = relay  # no SMTPUTF8 offered
    smtp_settings(port)
    add_list(cli, tmp_path, [IDN, *READERS])
    result = cli("digest", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["outcomes"] == {"sent": 49, "failed": 1}
    rows = ledger(sqlite_url)
    assert rows[0][0] == IDN, "the bad one is the first delivery of the run"
    email, status, error, bounces = rows[0]
    assert status == "failed" and "does not offer SMTPUTF8" in (error or "") and bounces == 0
    assert {status for _, status, _, _ in rows[1:]} == {"sent"}
    assert sorted(sink.recipients()) == sorted([*READERS[:-1], "zoe@xn--bcher-kva.example"])
    [zoe] = [a for a in sink.arrivals if a.recipients == ["zoe@xn--bcher-kva.example"]]
    assert not zoe.smtp_utf8 and b"\r\nTo: zoe@xn--bcher-kva.example\r\n" in zoe.raw and zoe.raw.isascii()
    assert cli("digest", "--json").code == 0 and len(sink.arrivals) == 49, "the failure is not retried"
    assert json.loads(cli("subscribers", "show", IDN, "--json").out)["status"] == "active", "not a bounce"


@pytest.mark.parametrize("relay", [True], indirect=True)
def test_an_internationalised_address_is_delivered_over_smtputf8(cli, tmp_path, relay, smtp_settings, sqlite_url) -> None:
    sink, port = relay  # SMTPUTF8 offered
    smtp_settings(port)
    add_list(cli, tmp_path, [IDN, IDN_DOMAIN_ONLY])
    result = cli("digest", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["outcomes"] == {"sent": 2}
    by_recipient = {a.recipients[0]: a for a in sink.arrivals}
    jurgen = by_recipient["jürgen@xn--bcher-kva.example"]
    assert jurgen.smtp_utf8 and "\r\nTo: jürgen@bücher.example\r\n".encode() in jurgen.raw
    zoe = by_recipient["zoe@xn--bcher-kva.example"]
    assert not zoe.smtp_utf8 and zoe.raw.isascii()


def test_the_file_backend_writes_an_internationalised_address(cli, configured, tmp_path) -> None:
    assert cli("subscribers", "add", IDN, "--topic", "diffusion models").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    result = cli("digest")
    assert result.code == 0, result.err
    [eml] = list((tmp_path / "outbox").rglob("*.eml"))
    assert "\r\nTo: jürgen@bücher.example\r\n".encode() in eml.read_bytes()


def test_a_digest_that_cannot_be_rendered_fails_alone_and_the_49_others_get_theirs(
        cli, tmp_path, relay, smtp_settings, sqlite_url) -> None:
    sink, port = relay
    smtp_settings(port)
    add_list(cli, tmp_path, ["alice@example.org", *READERS])
    plan(sqlite_url)
    engine = make_engine(sqlite_url)  # the first delivery's recorded reasons hold a number: rendering it raises
    with engine.begin() as connection:
        connection.execute(text("UPDATE delivery_items SET reasons = '[42]' WHERE delivery_id = (SELECT min(id) FROM deliveries)"))
    engine.dispose()
    result = cli("digest", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["outcomes"] == {"sent": 49, "failed": 1}
    [(email, status, error, bounces), *others] = ledger(sqlite_url)
    assert email == "alice@example.org" and status == "failed" and bounces == 0
    assert (error or "").startswith("the message could not be built (")
    assert {status for _, status, _, _ in others} == {"sent"} and len(sink.arrivals) == 49
    assert "alice@example.org" not in sink.recipients()


@pytest.mark.parametrize("count", [3, 12])
def test_when_no_digest_can_be_built_the_run_stops_and_everything_stays_pending(
        cli, tmp_path, relay, smtp_settings, sqlite_url, count) -> None:
    """A render bug that hits everyone is not one subscriber's data: failing them all would lose the day."""
    sink, port = relay
    smtp_settings(port)
    add_list(cli, tmp_path, READERS[:count])
    plan(sqlite_url)
    engine = make_engine(sqlite_url)
    with engine.begin() as connection:
        saved = connection.execute(text("SELECT delivery_id, paper_id, reasons FROM delivery_items")).all()
        connection.execute(text("UPDATE delivery_items SET reasons = '[42]'"))
    result = cli("digest")
    assert result.code == 1
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"error: none of the first {min(count, 10)} digests could be built")
    assert "the message could not be built (" in line and line.endswith("stay pending for the next run")
    assert {status for _, status, _, _ in ledger(sqlite_url)} == {"pending"} and sink.arrivals == []
    with engine.begin() as connection:  # the bug is fixed
        connection.execute(text("UPDATE delivery_items SET reasons = :reasons WHERE delivery_id = :d AND paper_id = :p"),
                           [{"reasons": r, "d": d, "p": p} for d, p, r in saved])
    engine.dispose()
    assert cli("digest").code == 0
    assert sorted(sink.recipients()) == sorted(READERS[:count])
    assert {status for _, status, _, _ in ledger(sqlite_url)} == {"sent"}
