"""The socket layer under ``fetch.py``: where a feed connection may go and how long an exchange may last.

httpx has no total timeout and resolves host names on its own, so ``fetch.make_client`` gives its
client this network backend: httpcore's sync backend with three changes.

- A host name is resolved once, every address it resolves to is checked, and the connection goes to
  a checked address. TLS still names the host (SNI and the certificate check use the host name, as
  does the Host header). A resolver that answers a public address to the check and then 127.0.0.1 to
  the connect (DNS rebinding) has no second question to answer.
- Public means ``ipaddress``'s ``is_global`` (not multicast), and an IPv6 address that carries an
  IPv4 one (IPv4-mapped, IPv4-compatible, 6to4, NAT64) must carry a public one.
- Every connect, TLS handshake, read and write gets at most the time left before the exchange's
  deadline, and once it has passed the next one raises ``DeadlinePassed``. A server that drips its
  headers or its body a line a second is cut off at the deadline (give or take one scheduling
  delay) with no watchdog thread. Only name resolution is not bounded: the system resolver has
  its own timeouts.

The rules for the exchange in progress are set by the Fetcher with ``exchange(...)`` around each
request. They live in a context variable because httpcore passes a network backend no per-request
arguments, and a kept-alive connection serves several exchanges.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible IPv6 (::a.b.c.d)
T = TypeVar("T")


class NonPublicAddress(Exception):
    def __init__(self, host: str, address: IPAddress) -> None:
        super().__init__(f"{host} resolves to the non-public address {address}")
        self.host, self.address = host, address


class UnresolvableHost(Exception):
    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve host {host!r} ({reason})")
        self.host, self.reason = host, reason


class DeadlinePassed(Exception):
    """The exchange ran past its deadline (raised instead of httpcore's per-operation timeouts)."""


@dataclass(frozen=True, slots=True)
class Rules:
    """What the exchange in progress may do: connect to private addresses, last until ``deadline``."""

    allow_private: bool = False
    deadline: float | None = None  # on ``clock``; None: only the client's per-operation timeouts
    clock: Callable[[], float] = time.monotonic

    def time_left(self, timeout: float | None) -> float | None:
        """``timeout`` shortened to the time left before the deadline; DeadlinePassed if none is."""
        if self.deadline is None:
            return timeout
        left = self.deadline - self.clock()
        if left <= 0:
            raise DeadlinePassed
        return left if timeout is None else min(timeout, left)

    def run(self, operation: Callable[[float | None], T], timeout: float | None) -> T:
        try:
            return operation(self.time_left(timeout))
        except httpcore.TimeoutException:
            if self.deadline is not None and self.clock() >= self.deadline:
                raise DeadlinePassed from None
            raise


_RULES: ContextVar[Rules | None] = ContextVar("newsletter_fetch_rules", default=None)
STRICT = Rules()  # outside a Fetcher's exchange: public addresses only, no deadline


def current_rules() -> Rules:
    return _RULES.get() or STRICT


@contextlib.contextmanager
def exchange(rules: Rules) -> Iterator[None]:
    """Apply ``rules`` to every connection and read made in this block (on this thread)."""
    token = _RULES.set(rules)
    try:
        yield
    finally:
        _RULES.reset(token)


def is_public(address: IPAddress) -> bool:
    """A global unicast address; an IPv6 one that embeds an IPv4 address must embed a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not address.is_multicast


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in NAT64 or address in IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (in the resolver's order), asked once."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHost(host, exc.strerror or str(exc)) from None
    except UnicodeError:  # "a..b", a label over 63 characters: the IDNA codec refuses it before any lookup
        raise UnresolvableHost(host, "not a valid host name (an empty label, or one longer than 63 characters)") from None
    addresses = []
    for family, _, _, _, sockaddr in found:
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) == 4 and sockaddr[3] and "%" not in address:
            address = f"{address}%{sockaddr[3]}"  # a link-local address needs its interface
        addresses.append(address)
    return list(dict.fromkeys(addresses))


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's sync backend, connecting only to checked addresses and keeping to the deadline."""

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        rules = current_rules()
        addresses = resolve(host, port)
        if not rules.allow_private:
            for address in addresses:
                ip = ipaddress.ip_address(address.split("%", 1)[0])
                if not is_public(ip):
                    raise NonPublicAddress(host, ip)
        failures = []
        for address in addresses:  # the checked addresses, never the host name again

            def connect(left: float | None, address: str = address) -> httpcore.NetworkStream:
                return super(GuardedBackend, self).connect_tcp(address, port, left, local_address, socket_options)

            try:
                return DeadlineStream(rules.run(connect, timeout))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failures.append(f"{address}: {exc or type(exc).__name__}")
        raise httpcore.ConnectError(f"{host} → " + "; ".join(failures))


class DeadlineStream(httpcore.NetworkStream):
    """A connected stream whose every operation keeps to the current exchange's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return current_rules().run(lambda left: self._stream.read(max_bytes, left), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        current_rules().run(lambda left: self._stream.write(buffer, left), timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        return DeadlineStream(current_rules().run(lambda left: self._stream.start_tls(ssl_context, server_hostname, left), timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
