"""A real uvicorn server over SQLite: a request waiting for a locked database holds up nobody else."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx

from tests.web.conftest import Site


def test_a_locked_database_stalls_only_the_request_that_writes(server: str, site: Site, sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    lock = sqlite3.connect(path, isolation_level=None, timeout=1)
    lock.execute("BEGIN EXCLUSIVE")  # another process writing, for as long as the test wants
    posted: list[httpx.Response] = []
    writer = threading.Thread(target=lambda: posted.append(httpx.post(server + site.link(site.paper_ids[0]), timeout=60)))
    try:
        writer.start()
        time.sleep(0.5)  # the POST is now waiting for the lock (SQLite's busy timeout is 30 s)
        with httpx.Client(base_url=server, timeout=10) as client:
            assert client.get("/nowhere").status_code == 404
            page = client.get(site.link(site.paper_ids[1]))  # reads: WAL lets them past the writer's lock
            assert page.status_code == 200 and "Attention" in page.text
        assert writer.is_alive() and not posted, "those answered while the POST was still waiting for the lock"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    writer.join(30)
    assert posted and posted[0].status_code == 200
    assert site.feedback() == [(site.subscriber_id, site.paper_ids[0], 1)]
