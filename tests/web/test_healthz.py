"""``/healthz``: 200 with a small JSON body when the database answers, 503 when it does not."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.web.app import create_app
from tests.web.conftest import Front, front_settings


def test_healthy_when_the_database_answers(front: Front) -> None:
    answer = front.client.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok", "database": "ok"}
    assert answer.headers["cache-control"] == "no-store"


def test_unhealthy_when_it_does_not(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}"  # SQLite cannot even create it
    engine = make_engine(missing)
    app = create_app(settings=front_settings(missing, tmp_path / "outbox"), sessions=make_sessionmaker(engine))
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/healthz")
    engine.dispose()
    assert answer.status_code == 503 and answer.json() == {"status": "error", "database": "unavailable"}
