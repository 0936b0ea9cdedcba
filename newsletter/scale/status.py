"""The queue section of ``newsletter status``: jobs per queue and the workers seen lately."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

WORKER_SEEN_S = 60  # a worker heartbeats every few seconds (scale.worker.HEARTBEAT_S); a minute of silence is not running

JOBS_PER_QUEUE = text("""
SELECT queue_name,
       count(*) FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())) AS waiting,
       count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'doing') AS running,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM scale.procrastinate_jobs
WHERE status IN ('todo', 'doing', 'failed')
GROUP BY queue_name ORDER BY queue_name
""")
WORKERS_SEEN = text("SELECT id, last_heartbeat FROM scale.procrastinate_workers "
                    "WHERE last_heartbeat > now() - make_interval(secs => :seconds) ORDER BY id")


def queue_status(session: Session) -> dict[str, Any] | None:
    """Jobs waiting (due now), scheduled (later: follow-ups, backoffs), running and failed, per queue, and the
    workers whose heartbeat is under a minute old. None when this database has no job queue (SQLite, or
    PostgreSQL not migrated to 0009): ``newsletter status`` then has no queue section."""
    if session.get_bind().dialect.name != "postgresql" or session.scalar(text("SELECT to_regclass('scale.procrastinate_jobs')")) is None:
        return None
    queues = {row.queue_name: {"waiting": row.waiting, "scheduled": row.scheduled, "running": row.running, "failed": row.failed}
              for row in session.execute(JOBS_PER_QUEUE)}
    workers = [{"id": row.id, "last_heartbeat": row.last_heartbeat.isoformat(timespec="seconds")}
               for row in session.execute(WORKERS_SEEN, {"seconds": WORKER_SEEN_S})]
    return {"queues": queues, "workers_seen": len(workers), "workers": workers}


__all__ = ["queue_status"]
