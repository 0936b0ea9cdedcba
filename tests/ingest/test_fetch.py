"""The fetcher against real local servers: politeness (conditional GET, retries, spacing) and safety caps."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from newsletter.errors import FeedError
from newsletter.ingest.fetch import Fetcher, make_client, retry_after_s
from tests.conftest import FIXTURES

FEED = (FIXTURES / "arxiv_cs_lg.rss").read_bytes()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(timeout_s=2.0, contact_email="admin@example.org") as c:
        yield c


def fetcher(client: httpx.Client, **overrides) -> Fetcher:
    options = {"client": client, "max_bytes": 20_000_000, "allow_private": True, "host_interval_s": 0.0} | overrides
    return Fetcher(**options)


def test_conditional_get_sends_the_etag_back_and_understands_304(client, httpserver: HTTPServer) -> None:
    def handler(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(FEED, headers={"ETag": '"v1"', "Last-Modified": "Mon, 23 Nov 2026 05:00:00 GMT"},
                        content_type="application/rss+xml")

    httpserver.expect_request("/rss").respond_with_handler(handler)
    first = fetcher(client).get(httpserver.url_for("/rss"))
    assert (first.etag, first.last_modified, len(first.body)) == ('"v1"', "Mon, 23 Nov 2026 05:00:00 GMT", len(FEED))
    second = fetcher(client).get(httpserver.url_for("/rss"), etag=first.etag, last_modified=first.last_modified)
    assert second.not_modified and second.body == b""
    request = httpserver.log[-1][0]
    assert request.headers["If-Modified-Since"] == "Mon, 23 Nov 2026 05:00:00 GMT"


def test_requests_say_who_we_are_and_accept_gzip(client, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rss").respond_with_data(gzip.compress(FEED), headers={"Content-Encoding": "gzip"})
    assert fetcher(client).get(httpserver.url_for("/rss")).body == FEED
    request = httpserver.log[-1][0]
    assert "gzip" in request.headers["Accept-Encoding"]
    assert request.headers["User-Agent"].startswith("newsletter/") and "mailto:admin@example.org" in request.headers["User-Agent"]


def test_429_is_retried_after_the_time_retry_after_asks(client, httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/api").respond_with_data("slow down", status=429, headers={"Retry-After": "1"})
    httpserver.expect_ordered_request("/api").respond_with_data(FEED, content_type="application/atom+xml")
    started = time.monotonic()
    fetched = fetcher(client).get(httpserver.url_for("/api"))
    assert fetched.body == FEED
    assert time.monotonic() - started >= 1.0
    assert len(httpserver.log) == 2


def test_5xx_is_retried_with_backoff_then_reported(client, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/down").respond_with_data("oops", status=503)
    sleeps: list[float] = []
    with pytest.raises(FeedError, match=r"/down: the server answered HTTP 503 3 times; try again later"):
        fetcher(client, retries=2, sleep=sleeps.append).get(httpserver.url_for("/down"))
    assert len(httpserver.log) == 3
    assert 1.0 <= sleeps[0] <= 1.5 and 2.0 <= sleeps[1] <= 3.0, sleeps


def test_a_retry_after_beyond_the_cap_is_reported_not_waited_for(client, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api").respond_with_data("", status=429, headers={"Retry-After": "3600"})
    with pytest.raises(FeedError, match="asks us to come back in 3600 s"):
        fetcher(client).get(httpserver.url_for("/api"))


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now
    assert retry_after_s("soon") is None


def test_a_slow_server_hits_the_timeout(httpserver: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.5)
        return Response(FEED)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    with make_client(timeout_s=0.3) as quick, pytest.raises(FeedError, match="/slow: no answer within 0.3 s"):
        fetcher(quick).get(httpserver.url_for("/slow"))


def test_an_oversized_response_is_refused_by_its_length_or_while_streaming(client, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/big").respond_with_data(b"x" * 50_000)
    with pytest.raises(FeedError, match="/big: 50,000 bytes is larger than 10,000"):
        fetcher(client, max_bytes=10_000).get(httpserver.url_for("/big"))
    endless = (b"x" * 4096 for _ in range(10_000))  # chunked, no Content-Length: 40 MB if read to the end
    httpserver.expect_request("/endless").respond_with_response(Response(endless))
    with pytest.raises(FeedError, match="/endless: larger than 10,000 bytes"):
        fetcher(client, max_bytes=10_000).get(httpserver.url_for("/endless"))


def test_a_gzip_bomb_stops_at_the_cap(client, httpserver: HTTPServer) -> None:
    bomb = gzip.compress(b"\0" * 30_000_000)  # 30 MB of zeros in ~30 KB
    httpserver.expect_request("/bomb").respond_with_data(bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(FeedError, match="larger than 1,000,000 bytes"):
        fetcher(client, max_bytes=1_000_000).get(httpserver.url_for("/bomb"))


def test_a_truncated_download_is_reported(client) -> None:
    """A raw server that promises 100,000 bytes, sends 500 and hangs up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nContent-Length: 100000\r\n\r\n" + FEED[:500])
        connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/rss"
    with pytest.raises(FeedError, match="the download broke off"):
        fetcher(client).get(url)
    thread.join(5)
    listener.close()


def test_requests_to_one_host_are_spaced(client, httpserver: HTTPServer) -> None:
    seen: list[float] = []

    def stamp(request: Request) -> Response:
        seen.append(time.monotonic())
        return Response(FEED)

    httpserver.expect_request("/a").respond_with_handler(stamp)
    polite = fetcher(client, host_interval_s=0.4)
    polite.get(httpserver.url_for("/a"))
    polite.get(httpserver.url_for("/a"))
    assert seen[1] - seen[0] >= 0.4


def test_private_and_loopback_addresses_are_refused_unless_allowed(client, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rss").respond_with_data(FEED)
    for url in (httpserver.url_for("/rss"), "http://169.254.169.254/latest/meta-data/", "http://10.0.0.8/feed"):
        with pytest.raises(FeedError, match="refused, .* resolves to the non-public address"):
            fetcher(client, allow_private=False).get(url)
    assert httpserver.log == []
    assert fetcher(client, allow_private=True).get(httpserver.url_for("/rss")).body == FEED


def test_a_local_file_is_read_with_the_size_cap(tmp_path) -> None:
    path = tmp_path / "feed.rss"
    path.write_bytes(FEED)
    with make_client(timeout_s=1) as c:
        assert fetcher(c).get(str(path)).body == FEED
        with pytest.raises(FeedError, match="is larger than 1,000"):
            fetcher(c, max_bytes=1000).get(str(path))


def test_a_server_that_drips_hits_the_time_cap_for_the_whole_fetch(client, httpserver: HTTPServer) -> None:
    def drip():
        for _ in range(20):
            time.sleep(0.2)  # each chunk well inside the read timeout, the whole far past the cap
            yield b"<rss>"

    httpserver.expect_request("/drip").respond_with_response(Response(drip()))
    with pytest.raises(FeedError, match="/drip: the download took longer than 1 s"):
        fetcher(client, time_cap_s=1.0).get(httpserver.url_for("/drip"))
