"""All feed IO: bytes from a URL (httpx) or a local file. Nothing else in the package fetches.

The size cap is enforced while streaming, so an oversized or endless response costs at most
``max_bytes`` of memory; the time cap is httpx's per-operation timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from newsletter import __version__
from newsletter.errors import FeedError


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
        follow_redirects=True,
        headers={"User-Agent": f"newsletter/{__version__} (self-hosted paper digest{contact})"},
    )


def fetch(
    location: str,
    *,
    client: httpx.Client,
    max_bytes: int,
    etag: str | None = None,
    last_modified: str | None = None,
) -> Fetched:
    """Fetch ``location`` (an http(s) URL or a file path) as bytes, or raise FeedError saying why."""
    if not is_url(location):
        return _read_file(location.removeprefix("file://"), max_bytes=max_bytes)
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        with client.stream("GET", location, headers=headers) as response:
            if response.status_code == 304:
                return Fetched(location, b"", etag=etag, last_modified=last_modified, not_modified=True)
            if response.status_code >= 400:
                raise FeedError(f"{location}: the server answered HTTP {response.status_code}; check the URL")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FeedError(
                        f"{location}: larger than {max_bytes:,} bytes; raise NEWSLETTER_MAX_FEED_BYTES if it is genuine"
                    )
            return Fetched(
                location,
                bytes(body),
                content_type=response.headers.get("content-type"),
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
            )
    except httpx.TimeoutException:
        raise FeedError(f"{location}: no answer within {client.timeout.read}s; try again later") from None
    except httpx.RemoteProtocolError as exc:
        raise FeedError(f"{location}: the download broke off ({exc}); try again later") from None
    except httpx.TransportError as exc:
        raise FeedError(f"{location}: cannot connect ({exc}); check the URL and the network") from None


def _read_file(path: str, *, max_bytes: int) -> Fetched:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FeedError(f"{path}: no such file (give an http(s) URL or the path of a feed file)")
    size = file.stat().st_size
    if size > max_bytes:
        raise FeedError(f"{path}: {size:,} bytes is larger than {max_bytes:,}; raise NEWSLETTER_MAX_FEED_BYTES")
    return Fetched(str(file), file.read_bytes())
