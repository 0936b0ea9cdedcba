"""An aiosmtpd handler that misbehaves on purpose: temporary and permanent refusals, dropped
connections, stalls. Every message it accepts is recorded with the time it arrived."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


def share(address: str, percent: float) -> bool:
    """A stable pseudo-random ``percent`` of addresses."""
    return int(hashlib.sha256(address.encode()).hexdigest(), 16) % 10_000 < percent * 100


@dataclass
class FaultySink:
    temporary: Callable[[str], bool] = lambda address: False  # 451 on RCPT, the first time only
    always_temporary: Callable[[str], bool] = lambda address: False  # 451 on RCPT, every time
    permanent: dict[str, str] = field(default_factory=dict)  # address → "550 ..." reply, every time
    drop_rcpt_every: int = 0  # close the connection at RCPT of every Nth transaction (before DATA)
    drop_data_every: int = 0  # close the connection after DATA arrived, before replying (message not kept)
    stall_for: dict[str, float] = field(default_factory=dict)  # address → seconds to sit on DATA
    refuse_data: dict[str, str] = field(default_factory=dict)  # address → "5xx ..." reply to its message, every time
    received: list[tuple[str, str, float]] = field(default_factory=list)  # (recipient, Message-ID, monotonic time)
    sessions: int = 0
    _refused_once: set[str] = field(default_factory=set)
    _transactions: int = 0
    _data: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        with self._lock:
            self._transactions += 1
            drop = self.drop_rcpt_every and self._transactions % self.drop_rcpt_every == 0
        if drop:
            server.transport.close()
            return "421 closing"
        if address in self.permanent:
            return self.permanent[address]
        if self.always_temporary(address):
            return "451 4.3.0 mailbox temporarily unavailable"
        if self.temporary(address) and address not in self._refused_once:
            self._refused_once.add(address)
            return "451 4.7.1 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        recipient = envelope.rcpt_tos[0]
        if recipient in self.stall_for:
            await asyncio.sleep(self.stall_for.pop(recipient))
        with self._lock:
            self._data += 1
            drop = self.drop_data_every and self._data % self.drop_data_every == 0
        if drop:
            server.transport.close()
            return "451 lost"
        if recipient in self.refuse_data:
            return self.refuse_data[recipient]
        message_id = next((line.split(b":", 1)[1].strip().decode() for line in envelope.original_content.split(b"\r\n")
                           if line.lower().startswith(b"message-id:")), "")
        self.received.append((recipient, message_id, time.monotonic()))
        return "250 OK queued"

    def per_recipient(self) -> Counter[str]:
        return Counter(r for r, _, _ in self.received)
