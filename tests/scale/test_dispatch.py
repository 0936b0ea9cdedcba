"""NEWSLETTER_DISPATCH=procrastinate through the commands a user runs: `digest` plans and queues, `status`
shows the queue, `newsletter worker` sends; on SQLite it is a one-line error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 90


def test_procrastinate_on_sqlite_is_a_one_line_error(cli, env, tmp_path: Path) -> None:
    env(database_url=f"sqlite:///{tmp_path / 'x.db'}", dispatch="procrastinate")
    result = cli("status")
    assert result.code != 0
    assert result.err.strip().count("\n") == 0
    assert "NEWSLETTER_DISPATCH" in result.err and "PostgreSQL" in result.err


@pytest.mark.postgres
def test_digest_queues_batches_and_a_worker_sends_them(cli, env, postgres_url: str, smtp_server, tmp_path: Path) -> None:
    values = dict(database_url=postgres_url, dispatch="procrastinate", secret_key="test-secret-key-0123456789abcdefghij",
                  from_address="digest@example.org", email_backend="smtp", smtp_host=smtp_server.host,
                  smtp_port=smtp_server.port, smtp_security="none", smtp_pool_size=1, lease_s=5, log_level="WARNING")
    env(**values)
    assert cli("init").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    for n, topic in enumerate(["diffusion models", "large language models", "reinforcement learning"]):
        assert cli("subscribers", "add", f"reader{n}@example.org", "--topic", topic).code == 0

    queued = cli("digest")
    assert queued.code == 0, queued.err
    assert "queued 1 send batch for the workers" in queued.out
    assert smtp_server.received == [], "with the job queue, digest plans and queues; workers send"
    status = cli("status", "--json")
    report = json.loads(status.out)
    [(queue, counts)] = report["queue"]["queues"].items()
    assert queue == f"send:{smtp_server.host}:{smtp_server.port}" and counts["waiting"] == 1
    assert any("no worker seen" in problem for problem in report["needs_a_person"]) and status.code == 1

    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in {**values, "log_level": "INFO"}.items()})
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "newsletter", "worker"], cwd=REPO, env=environ,
                                  stdout=subprocess.DEVNULL, stderr=log)
    try:
        started = time.monotonic()
        while len(smtp_server.received) < 3 and time.monotonic() - started < DEADLINE_S and worker.poll() is None:
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert sorted(r.recipients[0] for r in smtp_server.received) == [f"reader{n}@example.org" for n in range(3)], \
        (tmp_path / "worker.log").read_text()[-2000:]
    assert worker.returncode == 0
    assert cli("digest").out.count("queued 0 send batches") == 1, "nothing is queued twice"
    logged = (tmp_path / "worker.log").read_text()
    assert f"send batch of 3 on {queue}: sent 3 (took" in logged, logged[-2000:]
    assert "delivery_ids=<3 ids>" in logged and "delivery_ids=[" not in logged, "the ids once as a count, not as a list"


def test_a_json_log_line_of_a_send_batch_carries_its_ids_as_a_count() -> None:
    """procrastinate's ``job`` field holds the arguments twice (``task_kwargs`` and ``call_string``)."""
    import logging

    from newsletter.scale.worker import BatchesInBrief

    ids = list(range(1, 501))
    record = logging.makeLogRecord({"name": "procrastinate.worker", "msg": f"Starting job send_batch[7](delivery_ids={ids})",
                                    "job": {"id": 7, "task_kwargs": {"delivery_ids": ids},
                                            "call_string": f"send_batch[7](delivery_ids={ids}, relay_failures=0)"}})
    assert BatchesInBrief().filter(record)
    assert record.msg == "Starting job send_batch[7](delivery_ids=<500 ids>)"
    assert record.job["task_kwargs"]["delivery_ids"] == "<500 ids>"  # type: ignore[attr-defined]
    assert record.job["call_string"] == "send_batch[7](delivery_ids=<500 ids>, relay_failures=0)"  # type: ignore[attr-defined]
