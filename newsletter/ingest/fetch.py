"""All feed IO: bytes from a URL (httpx) or a local file. Nothing else in the package fetches.

Polite: conditional GET (ETag / Last-Modified), gzip, a User-Agent with a contact address, retries
with exponential backoff on 429 and 5xx honouring ``Retry-After``, and a minimum interval between
requests to the same host (arXiv's API asks for 3 s). Safe: a size cap enforced while streaming
(so a gzip bomb stops at the cap), a time cap on the whole fetch, and URLs that resolve to private,
loopback or link-local addresses refused unless the admin allows them, at every redirect hop too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from newsletter import __version__
from newsletter.errors import FeedError
from newsletter.settings import Settings

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


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def make_client(*, timeout_s: float, contact_email: str | None = None) -> httpx.Client:
    contact = f"; mailto:{contact_email}" if contact_email else ""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,  # followed by hand, so every hop is checked for private addresses
        headers={"User-Agent": f"newsletter/{__version__} (self-hosted paper digest{contact})"},
    )


def check_public(url: str) -> None:
    """Refuse a URL whose host resolves to a private, loopback, link-local or reserved address."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise FeedError(f"{url}: cannot resolve host {host!r} ({exc.strerror}); check the URL") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
            raise FeedError(
                f"{url}: refused, {host} resolves to the non-public address {ip}; "
                "set NEWSLETTER_ALLOW_PRIVATE_SOURCES=true if this source is meant to be internal"
            )


@dataclass
class Fetcher:
    """Fetches with the politeness and safety rules above; one per ingest run (it remembers hosts)."""

    client: httpx.Client
    max_bytes: int
    time_cap_s: float = 60.0
    retries: int = 3
    host_interval_s: float = 1.0
    max_retry_after_s: float = 120.0
    allow_private: bool = False
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _last_request: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.Client) -> Fetcher:
        return cls(client=client, max_bytes=settings.max_feed_bytes, time_cap_s=settings.fetch_timeout_s * 2,
                   retries=settings.fetch_retries, host_interval_s=settings.host_interval_s,
                   allow_private=settings.allow_private_sources)

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
            self._wait_for_host(location, max(self.host_interval_s, min_interval_s))
            outcome = self._get_once(location, headers)
            if isinstance(outcome, Fetched):
                return outcome
            status, retry_after = outcome
            if attempt == self.retries:
                raise FeedError(f"{location}: the server answered HTTP {status} {self.retries + 1} times; try again later")
            delay = retry_after if retry_after is not None else BACKOFF_BASE_S * 2**attempt * (1 + random.random() / 2)
            if delay > self.max_retry_after_s:
                raise FeedError(f"{location}: the server asks us to come back in {delay:.0f} s (HTTP {status}); try again later")
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _wait_for_host(self, url: str, interval_s: float) -> None:
        host = urlsplit(url).netloc
        last = self._last_request.get(host)
        if last is not None:
            wait = interval_s - (self.clock() - last)
            if wait > 0:
                self.sleep(wait)
        self._last_request[host] = self.clock()

    def _get_once(self, location: str, headers: dict[str, str]) -> Fetched | tuple[int, float | None]:
        """The response as Fetched, or (status, Retry-After seconds) when it is worth retrying."""
        started = self.clock()
        url = location
        try:
            for _ in range(MAX_REDIRECTS + 1):
                if not self.allow_private:
                    check_public(url)
                with self.client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code == 304:
                        return Fetched(location, b"", etag=headers.get("If-None-Match"),
                                       last_modified=headers.get("If-Modified-Since"), not_modified=True)
                    if response.status_code in RETRY_STATUSES:
                        return response.status_code, retry_after_s(response.headers.get("retry-after"))
                    if response.status_code >= 400:
                        raise FeedError(f"{location}: the server answered HTTP {response.status_code}; check the URL")
                    body = self._read_capped(location, response, started)
                    return Fetched(location, body, content_type=response.headers.get("content-type"),
                                   etag=response.headers.get("etag"), last_modified=response.headers.get("last-modified"))
            raise FeedError(f"{location}: more than {MAX_REDIRECTS} redirects; check the URL")
        except httpx.TimeoutException:
            raise FeedError(f"{location}: no answer within {self.client.timeout.read} s; try again later") from None
        except httpx.RemoteProtocolError as exc:
            raise FeedError(f"{location}: the download broke off ({exc}); nothing was stored, try again later") from None
        except httpx.DecodingError as exc:
            raise FeedError(f"{location}: the compressed response is corrupt ({exc}); try again later") from None
        except httpx.TransportError as exc:
            raise FeedError(f"{location}: cannot connect ({exc}); check the URL and the network") from None

    def _read_capped(self, location: str, response: httpx.Response, started: float) -> bytes:
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
            if self.clock() - started > self.time_cap_s:
                raise FeedError(f"{location}: the download took longer than {self.time_cap_s:.0f} s; try again later")
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
    if not file.is_file():
        raise FeedError(f"{path}: no such file (give an http(s) URL or the path of a feed file)")
    size = file.stat().st_size
    if size > max_bytes:
        raise FeedError(f"{path}: {size:,} bytes is larger than {max_bytes:,}; raise NEWSLETTER_MAX_FEED_BYTES")
    return Fetched(str(file), file.read_bytes())
