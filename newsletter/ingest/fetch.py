"""All feed IO: bytes from a URL (httpx) or a local file. Nothing else in the package fetches.

Polite: conditional GET (ETag / Last-Modified), gzip, a User-Agent with a contact address, retries
with exponential backoff on 429 and 5xx honouring ``Retry-After`` up to a cap, and a minimum interval
between requests to one host counted as the server sees it: from the end of the previous exchange
(its response read or closed) to the next request (arXiv's API asks for 3 s). Safe: a size cap
enforced while streaming (so a gzip bomb stops at the cap), a time cap on each whole exchange,
headers included, and connections only to public addresses unless the admin allows private ones,
at every redirect hop. ``network.py`` underneath does the address checks and keeps the time cap.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from newsletter import __version__
from newsletter.errors import FeedError
from newsletter.ingest import arxiv, network
from newsletter.settings import Settings
from newsletter.wording import shorten

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_S = 1.0  # first retry after ~1 s, then 2 s, 4 s ...
MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class Fetched:
    location: str
    body: bytes
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False  # 304: nothing new since the ETag / Last-Modified we sent


@dataclass(frozen=True, slots=True)
class _Retry:
    status: int
    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class _Redirect:
    url: str


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over ``network.GuardedBackend``: checked addresses, a deadline per exchange.

    HTTPTransport takes no network backend, so its connection pool is swapped for one that has ours,
    with httpx's default TLS context and limits. (With a transport given, httpx ignores the proxy
    environment variables: a proxy would connect to addresses we cannot check.)
    """

    def __init__(self) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=100, max_keepalive_connections=20,
            keepalive_expiry=5.0, network_backend=network.GuardedBackend(),
        )


def make_client(*, timeout_s: float, contact_email: str | None = None) -> httpx.Client:
    contact = f"; mailto:{contact_email}" if contact_email else ""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        transport=GuardedTransport(),
        follow_redirects=False,  # followed by hand, so that every hop is spaced and capped in time
        headers={"User-Agent": f"newsletter/{__version__} (self-hosted paper digest{contact})"},
    )


@dataclass
class Fetcher:
    """Fetches with the politeness and safety rules above; one per ingest run (it remembers hosts)."""

    client: httpx.Client
    max_bytes: int
    time_cap_s: float = 60.0  # one whole exchange: connect, headers, body, and the redirects it takes
    retries: int = 3
    host_interval_s: float = 1.0
    max_retry_after_s: float = 60.0  # a server asking for a longer wait fails this fetch instead
    allow_private: bool = False
    arxiv_hosts: frozenset[str] = arxiv.ARXIV_HOSTS  # whose feeds may create and revise arXiv papers
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _exchange_ended: dict[str, float] = field(default_factory=dict)  # host → when our last exchange with it ended

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.Client) -> Fetcher:
        api_host = urlsplit(settings.arxiv_api_url).hostname  # the configured arXiv API speaks for arXiv too
        return cls(client=client, max_bytes=settings.max_feed_bytes, time_cap_s=settings.fetch_timeout_s,
                   retries=settings.fetch_retries, host_interval_s=settings.host_interval_s,
                   max_retry_after_s=settings.max_retry_after_s, allow_private=settings.allow_private_sources,
                   arxiv_hosts=arxiv.ARXIV_HOSTS | ({api_host} if api_host else set()))

    def get(
        self, location: str, *, etag: str | None = None, last_modified: str | None = None, min_interval_s: float = 0.0
    ) -> Fetched:
        """Fetch ``location`` (an http(s) URL or a file path) as bytes, or raise FeedError saying why."""
        if not is_url(location):
            return read_file(location.removeprefix("file://"), max_bytes=self.max_bytes)
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        for attempt in range(self.retries + 1):
            outcome = self._get_once(location, headers, interval_s=max(self.host_interval_s, min_interval_s))
            if isinstance(outcome, Fetched):
                return outcome
            status, retry_after = outcome.status, outcome.retry_after_s
            if attempt == self.retries:
                raise FeedError(f"{location}: the server answered HTTP {status} {self.retries + 1} times; try again later")
            delay = retry_after if retry_after is not None else BACKOFF_BASE_S * 2**attempt * (1 + random.random() / 2)
            if delay > self.max_retry_after_s:
                raise FeedError(f"{location}: the server asks us to come back in {delay:.0f} s (HTTP {status}), "
                                f"longer than NEWSLETTER_MAX_RETRY_AFTER_S ({self.max_retry_after_s:g} s); try again later")
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _get_once(self, location: str, headers: dict[str, str], *, interval_s: float) -> Fetched | _Retry:
        """One attempt, redirects followed: the response, or what to retry after. The time cap is shared
        by the hops; the waits between requests to one host do not count against it."""
        url, budget_s = location, self.time_cap_s
        try:
            for _ in range(MAX_REDIRECTS + 1):
                host = urlsplit(url).netloc
                self._wait_for_host(host, interval_s)
                started = self.clock()
                try:
                    outcome = self._exchange(location, url, headers, deadline=started + budget_s)
                finally:
                    self._exchange_ended[host] = self.clock()  # the response is read or closed: the server is done
                budget_s -= self._exchange_ended[host] - started
                if not isinstance(outcome, _Redirect):
                    return outcome
                url = outcome.url
            raise FeedError(f"{location}: more than {MAX_REDIRECTS} redirects; check the URL")
        except network.DeadlinePassed:
            raise FeedError(f"{location}: the download took longer than {self.time_cap_s:g} s; try again later") from None
        except network.NonPublicAddress as exc:
            raise FeedError(f"{location}: refused, {exc}; "
                            "set NEWSLETTER_ALLOW_PRIVATE_SOURCES=true if this source is meant to be internal") from None
        except network.UnresolvableHost as exc:
            raise FeedError(f"{location}: {exc}; check the URL") from None
        except httpx.TimeoutException:
            raise FeedError(f"{location}: no answer within {self.client.timeout.read} s; try again later") from None
        except httpx.RemoteProtocolError as exc:
            raise FeedError(f"{location}: the download broke off ({exc}); nothing was stored, try again later") from None
        except httpx.DecodingError as exc:
            raise FeedError(f"{location}: the compressed response is corrupt ({exc}); try again later") from None
        except httpx.TransportError as exc:
            raise FeedError(f"{location}: cannot connect ({exc}); check the URL and the network") from None
        except httpx.InvalidURL as exc:  # a control character, a bad port: in the source's URL or a redirect's
            raise FeedError(f"{location}: not a valid URL ({exc}); check the URL") from None

    def _wait_for_host(self, host: str, interval_s: float) -> None:
        ended = self._exchange_ended.get(host)
        if ended is not None and (wait := interval_s - (self.clock() - ended)) > 0:
            self.sleep(wait)

    def _exchange(self, location: str, url: str, headers: dict[str, str], *, deadline: float) -> Fetched | _Retry | _Redirect:
        """One request and its response, all of it before ``deadline`` (see ``network``)."""
        rules = network.Rules(allow_private=self.allow_private, deadline=deadline, clock=self.clock)
        with network.exchange(rules), self.client.stream("GET", url, headers=headers) as response:
            if response.is_redirect and "location" in response.headers:
                target = urljoin(url, response.headers["location"])
                if urlsplit(target).scheme.lower() not in ("http", "https"):  # file:///etc/passwd, ftp:, javascript:
                    raise FeedError(f"{location}: refused, the server redirects to {shorten(target, 80)}, which is not "
                                    "an http(s) URL; check the URL")
                return _Redirect(target)
            if response.status_code == 304:
                return Fetched(location, b"", etag=headers.get("If-None-Match"),
                               last_modified=headers.get("If-Modified-Since"), not_modified=True)
            if response.status_code in RETRY_STATUSES:
                return _Retry(response.status_code, retry_after_s(response.headers.get("retry-after")))
            if response.status_code >= 400:
                raise FeedError(f"{location}: the server answered HTTP {response.status_code}; check the URL")
            body = self._read_capped(location, response)
            return Fetched(location, body, content_type=response.headers.get("content-type"),
                           etag=response.headers.get("etag"), last_modified=response.headers.get("last-modified"))

    def _read_capped(self, location: str, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes and not response.headers.get("content-encoding"):
            raise FeedError(f"{location}: {int(declared):,} bytes is larger than {self.max_bytes:,}; "
                            "raise NEWSLETTER_MAX_FEED_BYTES if it is genuine")
        body = bytearray()
        for chunk in response.iter_bytes():  # decoded: the cap also stops a gzip bomb
            body += chunk
            if len(body) > self.max_bytes:
                raise FeedError(f"{location}: larger than {self.max_bytes:,} bytes; "
                                "raise NEWSLETTER_MAX_FEED_BYTES if it is genuine")
        return bytes(body)


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def read_file(path: str, *, max_bytes: int) -> Fetched:
    file = Path(path).expanduser()
    try:
        if not file.exists():
            raise FeedError(f"{path}: no such file (give an http(s) URL or the path of a feed file)")
        if file.is_dir():
            raise FeedError(f"{path} is a folder: give the path of a feed file in it, or an http(s) URL")
        if not file.is_file():  # /dev/zero, a FIFO: reading would never end, or block
            raise FeedError(f"{path} is not a regular file (a device or a pipe): give the path of a feed file")
        size = file.stat().st_size
        if size > max_bytes:
            raise FeedError(f"{path}: {size:,} bytes is larger than {max_bytes:,}; raise NEWSLETTER_MAX_FEED_BYTES")
        return Fetched(str(file), file.read_bytes())
    except OSError as exc:  # a symlink loop, a name too long, no permission
        raise FeedError(f"{shorten(path, 200)}: cannot read it ({exc.strerror or exc}); check the path") from None
