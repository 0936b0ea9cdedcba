"""Daemon heartbeats: one row per daemon process (``host:pid``), written at every tick and after every job.

``newsletter status`` reads them to tell a live daemon from a silent one: ``beat_at`` old and
``stopped_at`` empty means it died. ``jobs`` holds, per job id, ``{"next_run_at", "last_run_at",
"last_seconds", "last_result", "last_error"}`` (ISO strings in UTC). Times are naive UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from newsletter.db.models import DaemonHeartbeat


def beat(
    session: Session, *, daemon_id: str, started_at: dt.datetime, now: dt.datetime, jobs: dict[str, Any], stopped: bool = False,
) -> None:
    """Insert or update the row of ``daemon_id`` (the caller commits); ``stopped`` records a clean shutdown."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = {"started_at": started_at, "beat_at": now, "stopped_at": now if stopped else None, "jobs": jobs}
    session.execute(insert(DaemonHeartbeat).values(id=daemon_id, **values)
                    .on_conflict_do_update(index_elements=["id"], set_=values))


def forget_silent(session: Session, *, before: dt.datetime) -> int:
    """Delete the rows of daemons that have not beaten since ``before`` (the caller commits); returns how many."""
    result = session.execute(delete(DaemonHeartbeat).where(DaemonHeartbeat.beat_at < before))
    return getattr(result, "rowcount", 0) or 0


__all__ = ["beat", "forget_silent"]
