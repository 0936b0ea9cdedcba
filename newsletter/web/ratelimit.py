"""Per-IP rate limits of the web front's POSTs, in memory.

Limits are counted per process (``limits``' memory storage): a server run as several worker processes
allows each of them the full rate. One ``newsletter serve`` is one process; behind several, put the
limit in the reverse proxy as well.

The visitor's address is the peer's, or, when the peer is ``NEWSLETTER_TRUSTED_PROXY``, the last
address in its ``X-Forwarded-For`` (the one that proxy saw connect; the ones before it are whatever
the client claimed). An IPv6 address counts as its /64: one home or phone holds a whole /64.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request

from newsletter.web.pages import Refused

POSTS_PER_IP_PER_MINUTE = 30  # any form: a person clicks "Preview" a few times a minute, a script hundreds
# RFC 8058 POSTs come from a mail provider's few servers, for all its users at once: a generous separate budget.
ONE_CLICK_PER_IP_PER_MINUTE = 600
IPV6_CLIENT_PREFIX = 64


@dataclass(frozen=True, slots=True)
class RateLimits:
    subscribe_per_hour: int
    posts_per_minute: int = POSTS_PER_IP_PER_MINUTE
    one_click_per_minute: int = ONE_CLICK_PER_IP_PER_MINUTE


def client_key(request: Request, *, trusted_proxy: str | None) -> str:
    """Who is asking, for counting: the address (an IPv6 one as its /64)."""
    peer = request.client.host if request.client else "unknown"
    address = peer
    if trusted_proxy is not None and peer == trusted_proxy:
        # Every X-Forwarded-For line, joined: a proxy may add its own line after the client's (HAProxy's
        # forwardfor), and the last entry is the one our proxy saw.
        forwarded = ",".join(request.headers.getlist("x-forwarded-for")).split(",")[-1].strip()
        address = forwarded or peer
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return peer  # not an address (a test client's name, or a proxy's garbage): count the peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 visitor on a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(ip)


class RateLimiter:
    def __init__(self, limits: RateLimits, *, trusted_proxy: str | None) -> None:
        self.trusted_proxy = trusted_proxy
        self.buckets: dict[str, RateLimitItem] = {
            "subscribe": RateLimitItemPerHour(limits.subscribe_per_hour),
            "post": RateLimitItemPerMinute(limits.posts_per_minute),
            "one-click": RateLimitItemPerMinute(limits.one_click_per_minute),
        }
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, request: Request, *buckets: str) -> None:
        """Count this request in each bucket; raise ``Refused`` (429, with Retry-After) when one is full."""
        key = client_key(request, trusted_proxy=self.trusted_proxy)
        for bucket in buckets:
            item = self.buckets[bucket]
            if not self.limiter.hit(item, bucket, key):
                reset = self.limiter.get_window_stats(item, bucket, key).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise Refused(429, "Too many requests",
                              f"Too many forms were sent from your network in a short time. Please try again in {_duration(wait)}.",
                              headers={"Retry-After": str(wait)})


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"
