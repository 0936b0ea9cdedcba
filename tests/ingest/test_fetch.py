"""The fetcher against real local servers: politeness (conditional GET, retries, spacing) and safety caps."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from newsletter.errors import FeedError
from newsletter.ingest.fetch import Fetcher, make_client, retry_after_s
from newsletter.ingest.network import is_public
from newsletter.settings import load_settings
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


def stamped(arrived: list[float], response: Response):
    """A handler that notes when each request arrives, as the server sees it."""
    return lambda request: arrived.append(time.monotonic()) or response


def test_429_is_retried_after_the_time_retry_after_asks(client, httpserver: HTTPServer) -> None:
    arrived: list[float] = []
    httpserver.expect_ordered_request("/api").respond_with_handler(
        stamped(arrived, Response("slow down", status=429, headers={"Retry-After": "1"})))
    httpserver.expect_ordered_request("/api").respond_with_handler(
        stamped(arrived, Response(FEED, content_type="application/atom+xml")))
    fetched = fetcher(client).get(httpserver.url_for("/api"))
    assert fetched.body == FEED
    # The 429 left the server after arrived[0], so a wait counted from it is a lower bound, on any load.
    assert arrived[1] - arrived[0] >= 1.0


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


def test_retry_after_is_honoured_up_to_the_configured_cap(client, env, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api").respond_with_data("", status=429, headers={"Retry-After": "90"})
    env(allow_private_sources="true", host_interval_s=0)
    sleeps: list[float] = []
    polite = replace(Fetcher.from_settings(load_settings(), client), sleep=sleeps.append)
    assert polite.max_retry_after_s == 60  # NEWSLETTER_MAX_RETRY_AFTER_S's default
    with pytest.raises(FeedError, match=r"/api: the server asks us to come back in 90 s \(HTTP 429\), longer than "
                                        r"NEWSLETTER_MAX_RETRY_AFTER_S \(60 s\); try again later"):
        polite.get(httpserver.url_for("/api"))
    assert sleeps == [] and len(httpserver.log) == 1, "refused at once, not waited for"

    env(max_retry_after_s=100)
    patient = replace(Fetcher.from_settings(load_settings(), client), sleep=sleeps.append, retries=1)
    with pytest.raises(FeedError, match="answered HTTP 429 2 times"):
        patient.get(httpserver.url_for("/api"))
    assert sleeps == [90.0]


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now
    assert retry_after_s("soon") is None


def test_a_slow_server_hits_the_timeout(httpserver: HTTPServer) -> None:
    gave_up = threading.Event()

    def slow(request: Request) -> Response:
        gave_up.wait(30)  # answers only once the client has given up, however slow the machine
        return Response(FEED)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    try:
        with make_client(timeout_s=0.3) as quick, pytest.raises(FeedError, match="/slow: no answer within 0.3 s"):
            fetcher(quick).get(httpserver.url_for("/slow"))
    finally:
        gave_up.set()


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


def slow_to_finish(arrived: list[float], finished: list[float], seconds: float):
    """A handler whose response takes ``seconds`` to send, noting when each request arrives and when the
    response is all but sent: its last bytes leave after the note, so the client has them later still."""

    def handler(request: Request) -> Response:
        arrived.append(time.monotonic())

        def body():
            yield FEED[:1000]
            time.sleep(seconds)
            finished.append(time.monotonic())
            yield FEED[1000:]

        return Response(body(), content_type="application/rss+xml")

    return handler


def test_requests_to_one_host_are_spaced_from_the_end_of_the_previous_exchange(client, httpserver: HTTPServer) -> None:
    arrived: list[float] = []
    finished: list[float] = []
    # A slow download: counted from when the first request was sent, the second would come 0.3 s early.
    httpserver.expect_request("/a").respond_with_handler(slow_to_finish(arrived, finished, 0.3))
    polite = fetcher(client, host_interval_s=0.4)
    assert polite.get(httpserver.url_for("/a")).body == FEED
    assert polite.get(httpserver.url_for("/a")).body == FEED
    assert arrived[1] - finished[0] >= 0.4, "the server must see the interval between one exchange and the next"


def test_private_and_loopback_addresses_are_refused_unless_allowed(client, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rss").respond_with_data(FEED)
    with pytest.raises(FeedError, match=r"/rss: refused, localhost resolves to the non-public address (127.0.0.1|::1); "
                                        "set NEWSLETTER_ALLOW_PRIVATE_SOURCES=true"):
        fetcher(client, allow_private=False).get(httpserver.url_for("/rss"))
    assert httpserver.log == []
    assert fetcher(client, allow_private=True).get(httpserver.url_for("/rss")).body == FEED


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
    "http://10.0.0.8/feed",
    "http://100.64.0.1/feed",  # carrier-grade NAT
    "http://100.100.100.200/latest/meta-data/",  # a cloud metadata address inside 100.64.0.0/10
    "http://[2002:7f00:1::]/feed",  # 6to4 of 127.0.0.1
    "http://[::ffff:127.0.0.1]/feed",  # IPv4-mapped
    "http://[64:ff9b::a9fe:a9fe]/feed",  # NAT64 of 169.254.169.254
    "http://[::7f00:1]/feed",  # IPv4-compatible 127.0.0.1
    "http://224.0.0.1/feed",  # multicast
    "http://0.0.0.0/feed",
])
def test_non_public_addresses_are_refused_before_connecting(client, url: str) -> None:
    with pytest.raises(FeedError, match="refused, .* resolves to the non-public address"):
        fetcher(client, allow_private=False).get(url)


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("2002:808:808::", True), ("64:ff9b::808:808", True),
    ("100.64.0.1", False), ("100.100.100.200", False), ("192.168.1.1", False), ("192.0.2.1", False),
    ("2002:7f00:1::", False), ("2002:a00:1::", False), ("64:ff9b::7f00:1", False), ("::ffff:10.0.0.1", False),
    ("::7f00:1", False), ("fe80::1", False), ("fc00::1", False), ("ff02::1", False), ("2001:db8::1", False),
])
def test_public_means_global_and_an_embedded_ipv4_address_must_be_global_too(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_the_connection_goes_to_the_address_that_was_checked(httpserver: HTTPServer, monkeypatch) -> None:
    """DNS rebinding: the name answers a "public" address first, then 127.0.0.1 to every later question.

    Nothing leaves this machine: 127.0.0.2 stands in for the public address (the check is told it is
    public), and it serves the public content; the loopback server on 127.0.0.1 holds the secret.
    """
    import http.server

    from newsletter.ingest import network

    httpserver.expect_request("/rss").respond_with_data(b"loopback secret")

    class Public(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's hook
            body = FEED
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    public = http.server.HTTPServer(("127.0.0.2", httpserver.port), Public)
    threading.Thread(target=public.serve_forever, daemon=True).start()
    stand_in = ipaddress.ip_address("127.0.0.2")
    real_is_public = network.is_public
    monkeypatch.setattr(network, "is_public", lambda address: address == stand_in or real_is_public(address))
    system_resolver = socket.getaddrinfo
    asked: list[str] = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.test":
            return system_resolver(host, port, *args, **kwargs)
        asked.append(host)
        return system_resolver("127.0.0.2" if len(asked) == 1 else "127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        with make_client(timeout_s=5.0) as client:
            fetched = fetcher(client, allow_private=False).get(f"http://rebind.test:{httpserver.port}/rss")
    finally:
        public.shutdown()
        public.server_close()
    assert fetched.body == FEED, "the content comes from the address that was checked"
    assert httpserver.log == [], "the loopback server must never be reached"
    assert asked == ["rebind.test"], "the name is resolved once, for the check and the connection both"


def test_a_local_file_is_read_with_the_size_cap(tmp_path) -> None:
    path = tmp_path / "feed.rss"
    path.write_bytes(FEED)
    with make_client(timeout_s=1) as c:
        assert fetcher(c).get(str(path)).body == FEED
        with pytest.raises(FeedError, match="is larger than 1,000"):
            fetcher(c, max_bytes=1000).get(str(path))


class HeaderDripper:
    """A raw HTTP server that sends a status line, then one header line a second, and never ends the headers.

    It notes when it accepted the connection and when it saw the client hang up (or gave up itself).
    """

    def __init__(self, lines: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/feed"
        self.lines, self.sent = lines, 0
        self.accepted_at = self.ended_at = 0.0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        connection, _ = self.listener.accept()
        self.accepted_at = time.monotonic()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\n")
        connection.settimeout(1.0)
        try:
            while self.sent < self.lines:
                connection.sendall(f"X-Drip-{self.sent}: {self.sent}\r\n".encode())
                self.sent += 1
                try:
                    if connection.recv(1) == b"":  # the client hung up
                        break
                except TimeoutError:
                    pass  # a second without news: next line
        except OSError:
            pass
        self.ended_at = time.monotonic()
        connection.close()
        self.listener.close()


def test_a_server_that_drips_its_headers_is_stopped_at_the_time_cap() -> None:
    server = HeaderDripper(lines=15)
    # Each line comes well within the 5 s read timeout; only the cap on the whole exchange can stop it.
    with make_client(timeout_s=5.0) as patient, pytest.raises(FeedError, match="/feed: the download took longer than 2 s"):
        fetcher(patient, time_cap_s=2.0).get(server.url)
    server.thread.join(30)
    assert server.sent >= 2, "the server was dripping"
    # As the server saw it: the connection ended at the cap (a generous margin for a loaded machine; 15 s without it).
    assert server.ended_at - server.accepted_at < 2.0 + 3.0


def test_a_server_that_drips_hits_the_time_cap_for_the_whole_fetch(client, httpserver: HTTPServer) -> None:
    def drip():
        for _ in range(20):
            time.sleep(0.2)  # each chunk well inside the read timeout, the whole far past the cap
            yield b"<rss>"

    httpserver.expect_request("/drip").respond_with_response(Response(drip()))
    with pytest.raises(FeedError, match="/drip: the download took longer than 1 s"):
        fetcher(client, time_cap_s=1.0).get(httpserver.url_for("/drip"))


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.org/feed.rss"])
def test_a_redirect_to_anything_but_http_is_refused_and_named(client, httpserver: HTTPServer, target: str) -> None:
    """It said "cannot connect (Request URL is missing an 'http://' or 'https://' protocol)"."""
    httpserver.expect_request("/feed.rss").respond_with_response(Response(status=302, headers={"Location": target}))
    url = httpserver.url_for("/feed.rss")
    with pytest.raises(FeedError) as refused:
        fetcher(client).get(url)
    assert str(refused.value) == f"{url}: refused, the server redirects to {target}, which is not an http(s) URL; check the URL"
