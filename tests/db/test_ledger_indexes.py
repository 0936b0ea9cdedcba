"""What every send runs on the ledger finds its rows by index, not by reading every delivery.

``deliver.send_due`` expires stale deliveries, renews its leases and releases them once per send, and a
worker sends a batch of 500 at a time: at 10 M deliveries a scan of the table in each cost seconds a
batch. These run the ledger's own statements (captured as it executes them) under EXPLAIN, on a ledger
caught mid-send and analyzed, so the planner chooses as it would in production.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterator

import pytest
from psycopg import sql
from sqlalchemy import Engine, event, insert, select, text
from sqlalchemy.orm import Session

from newsletter.db import ledger, migrate
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, DeliveryStatus, Subscriber

DELIVERIES = 20_000  # enough that reading the table costs the planner more than an index lookup
BATCH = 500  # deliver.CLAIM_BATCH: what one sender holds at a time
HOLDER = "worker-host:4242:5f3a"
NOW = dt.datetime(2026, 12, 3, 7, 30)


@contextlib.contextmanager
def mid_send(database_url: str) -> Iterator[Engine]:
    """A ledger (migrated to head) with half its deliveries sent, one batch held by HOLDER, the rest pending;
    planned an hour ago; analyzed."""
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    planned = NOW - dt.timedelta(hours=1)
    with Session(engine) as session:
        session.execute(insert(Subscriber), [{"email": f"reader{n:05d}@example.org"} for n in range(DELIVERIES)])
        ids = list(session.scalars(select(Subscriber.id).order_by(Subscriber.id)))
        sent, held = set(ids[: DELIVERIES // 2]), set(ids[DELIVERIES // 2 : DELIVERIES // 2 + BATCH])
        session.execute(insert(Delivery), [
            {"subscriber_id": i, "issue_date": NOW.date(), "message_id": f"<{i}@digest.example.org>", "created_at": planned,
             "status": DeliveryStatus.SENT if i in sent else DeliveryStatus.PENDING,
             "leased_by": HOLDER if i in held else None, "lease_until": NOW + dt.timedelta(minutes=5) if i in held else None}
            for i in ids])
        session.commit()
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()
    try:
        yield engine
    finally:
        engine.dispose()


def executed_by(engine: Engine, call: Callable[[Session], object]) -> list[tuple[str, object]]:
    """The statements ``call`` sends to the database, with their parameters (its changes are rolled back)."""
    seen: list[tuple[str, object]] = []

    def record(_connection, _cursor, statement, parameters, _context, _executemany) -> None:  # noqa: ANN001
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with make_sessionmaker(engine)() as session:
            call(session)
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def plan_of(engine: Engine, call: Callable[[Session], object]) -> str:
    [(statement, parameters)] = executed_by(engine, call)
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(explain + statement, parameters).all()  # type: ignore[arg-type]
        connection.rollback()
    return "\n".join(str(row[-1]) for row in rows)


def generic_plan_of(engine: Engine, call: Callable[[Session], object]) -> str:
    """The plan PostgreSQL makes of the statement once for any parameters, as it may for a prepared one."""
    [(statement, parameters)] = executed_by(engine, call)
    assert isinstance(parameters, dict)
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement)))
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", statement)
    with engine.connect() as connection:
        connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        connection.exec_driver_sql(f"PREPARE ledger_statement AS {numbered}")
        types = connection.exec_driver_sql(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'ledger_statement'").scalar_one()
        # EXECUTE's arguments as literals: PostgreSQL takes no parameters in a utility statement.
        raw = connection.connection.dbapi_connection
        arguments = ", ".join(f"{sql.Literal(parameters[name]).as_string(raw)}::{kind}"  # type: ignore[arg-type]
                              for name, kind in zip(names, types, strict=True))
        rows = connection.exec_driver_sql(f"EXPLAIN EXECUTE ledger_statement({arguments})").all()
        connection.rollback()
    return "\n".join(row[0] for row in rows)


EACH_SEND = {
    "expire_stale": (lambda s: ledger.expire_stale(s, now=NOW, window=dt.timedelta(hours=24)), "ix_deliveries_unsent_created_at"),
    "renew_leases": (lambda s: ledger.renew_leases(s, holder=HOLDER, until=NOW + dt.timedelta(minutes=10)), "ix_deliveries_leased_by"),
    "release_leases": (lambda s: ledger.release_leases(s, holder=HOLDER), "ix_deliveries_leased_by"),
}


@pytest.mark.parametrize("statement", EACH_SEND)
def test_each_send_finds_its_rows_by_a_partial_index(database_url: str, statement: str) -> None:
    call, index = EACH_SEND[statement]
    with mid_send(database_url) as engine:
        plan = plan_of(engine, call)
    assert index in plan, plan
    assert "Seq Scan" not in plan and "SCAN deliveries" not in plan, plan


@pytest.mark.postgres
@pytest.mark.parametrize("statement", EACH_SEND)
def test_the_partial_indexes_serve_a_generic_plan_too(postgres_url: str, statement: str) -> None:
    """psycopg prepares a statement once it has run five times (a worker runs these every batch), and
    PostgreSQL may then plan it once for any parameters: the index must match without knowing them."""
    call, index = EACH_SEND[statement]
    with mid_send(postgres_url) as engine:
        plan = generic_plan_of(engine, call)
    assert index in plan, plan
    assert "Seq Scan" not in plan, plan
