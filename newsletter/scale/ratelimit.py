"""One relay's rate limit shared by every worker: a token bucket in PostgreSQL.

``send.dispatch.RateLimiter`` holds ``NEWSLETTER_SMTP_RATE_PER_S`` within one process; N workers would
send N times as fast. Here every message takes a token from its relay's row in
``scale.relay_rate_buckets``, in one statement that refills the bucket by the time elapsed (computed
by PostgreSQL on its own clock, so the workers' clocks do not matter) and takes a token:

- the bucket holds at most ``burst`` tokens (1 by default: messages are spaced evenly, at most
  ``per_second`` in any one-second window);
- a worker that finds it empty takes the token anyway, driving the count below zero: it has reserved
  the next free slot, and waits until then. One round trip per message, no retry loop, and workers are
  served in the order they asked.

The row is UNLOGGED (migration 0009): after a database crash the bucket starts full, which the relay's
limit allows. ``per_second`` 0: no limit, no SQL.
"""

from __future__ import annotations

import asyncio

import psycopg

TAKE_TOKEN = """
INSERT INTO scale.relay_rate_buckets AS bucket (relay, tokens, refilled_at)
VALUES (%(relay)s, %(burst)s - 1, clock_timestamp())
ON CONFLICT (relay) DO UPDATE SET
    tokens = LEAST(%(burst)s, bucket.tokens + %(rate)s * EXTRACT(EPOCH FROM clock_timestamp() - bucket.refilled_at)) - 1,
    refilled_at = clock_timestamp()
RETURNING tokens
"""


class SharedRateLimiter:
    """``send.dispatch.RateLimiter``'s interface (``acquire()`` before a send, ``release()`` after), across processes.

    A token is spent when it is taken, so ``release`` has nothing to give back.
    """

    def __init__(self, conninfo: str, *, relay: str, per_second: float, burst: float = 1.0) -> None:
        self.conninfo, self.relay, self.per_second, self.burst = conninfo, relay, per_second, burst
        self._connection: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on this process's connection

    async def acquire(self) -> float:
        """Wait for this relay's next free slot; returns the seconds waited (0 with no limit)."""
        if self.per_second <= 0:
            return 0.0
        async with self._lock:
            if self._connection is None or self._connection.closed:
                self._connection = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            cursor = await self._connection.execute(TAKE_TOKEN, {"relay": self.relay, "burst": self.burst,
                                                                 "rate": self.per_second})
            row = await cursor.fetchone()
        tokens = float(row[0]) if row else 0.0
        wait_s = -tokens / self.per_second if tokens < 0 else 0.0
        if wait_s:
            await asyncio.sleep(wait_s)
        return wait_s

    def release(self) -> None:
        """Nothing to give back: the token was spent when it was taken."""

    @property
    def limited(self) -> bool:
        return self.per_second > 0

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


__all__ = ["SharedRateLimiter"]
