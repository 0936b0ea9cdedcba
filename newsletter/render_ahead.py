"""Claiming, rendering (and planning) in a second process, ahead of the sending: a big run uses both cores.

Sending is CPU-bound in Python (the SMTP client's own work, the ledger's commits), and so is
rendering (Jinja, MIME, about 0.5 ms a message) and planning (scoring, about 0.3 ms a subscriber):
in one process they share one core, however many the machine has. For a big run a child process
starts at once; the sender plans the first few digests (``pipeline``) and starts sending them,
rendered in its own thread, while the child imports (~1 s). Told to go, the child claims the due
deliveries (under the sender's lease holder, so the sender's lease renewal and final release cover
them), renders them and hands them over, a batch at a time, at most two batches ahead of the
sending: memory stays flat at any list size. Whenever nothing planned is left to claim, it plans
the next batch of subscribers due (``go(plan_at=…)``), until nobody is; then it says what it planned
and is done. The sender switches to its batches as soon as it speaks.

Planning beside the sending is sound on SQLite because a planning batch does not hold the
database's write lock while it scores (``plan.plan_in_batches``): the sender's commits would wait on it.

What can go wrong, and what happens:
- the child raises (a database error, a bug): the error reaches the sender as the reason the run
  stops; what was claimed and not sent is released, and the next run sends it;
- the child dies (killed, out of memory): the same, with its exit status;
- the sender stops (the relay went away, SIGTERM, Ctrl-C) or planning fails: the child is told to
  stop, is waited for a few seconds and then killed, before the sender releases its leases;
- logging in the child reaches the parent's loggers, and so its handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import logging.handlers
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from newsletter.db.engine import sqlite_file
from newsletter.errors import NewsletterError
from newsletter.runtime import Runtime
from newsletter.send.dispatch import OutboundMessage, one_line
from newsletter.settings import Settings

if TYPE_CHECKING:
    from newsletter.plan import PlanReport

logger = logging.getLogger(__name__)
FIRST_BATCH = 100  # a small first batch: the sending starts sooner
POLL_S = 0.5  # how often each side looks whether the other is still there
PLAN_BATCH = 1_000  # subscribers the child plans at a time: each batch is claimed as soon as it is committed
STOP_WAIT_S = 10.0  # a stopped child finishes the batch it is rendering within this, or is terminated
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "QUOTA PERIOD" or "max PERIOD" (cgroup v2)


def worthwhile(runtime: Runtime, *, due: int) -> bool:
    """Whether a run with ``due`` digests to send gains from a second process: enough of them (the child's
    start-up is ~0.7 s of CPU), a second core, and a database another process can open (an SQLite file, not in memory)."""
    unknown_file = runtime.engine.dialect.name == "sqlite" and sqlite_file(runtime.engine) is None  # in memory, or a URI
    return due >= runtime.settings.render_ahead_from and usable_cpus() > 1 and not unknown_file


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity mask (taskset), capped by a cgroup v2 CPU quota
    (``docker run --cpus=1`` on a 16-core host is one CPU: a second process would only compete for it)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(int(quota) // int(period), 1))
    except (OSError, ValueError):  # no cgroup v2 here, or a file of another shape: the mask alone
        pass
    return count


class RenderAhead:
    """The child process, started early and told to begin by ``batches()``. A context manager: leaving
    it stops the child (and waits for it), whatever happened.

    One pipe carries everything from the child (batches, its log records, "done", an error). It is
    a pipe whose writing end only the child holds, so a child that dies mid-batch is an end of file
    here, never a read that waits forever; and the child's write of a batch waits while this side is
    not reading, so the child is at most two batches ahead (the one it hands over, the one it renders).
    A second pipe carries this side's word to the child ("go", "stop"): pipes, not multiprocessing's
    events, whose semaphores a SIGKILLed sender would leave behind (the resource tracker then printed a
    warning about them into the sender's log, after the crash it was about).
    """

    def __init__(self, runtime: Runtime, *, plan_at: dt.datetime | None = None) -> None:
        """``plan_at``: the child also plans the digests still due at that moment (aware), a batch whenever
        nothing planned is left to claim; ``planned`` then has what it planned, once it is done."""
        context = multiprocessing.get_context("spawn")  # not fork: the parent has threads and open connections
        self._from_child, to_parent = context.Pipe(duplex=False)
        from_parent, self._to_child = context.Pipe(duplex=False)
        self._child = context.Process(target=_child_main, name="newsletter-render-ahead", daemon=True,
                                      args=(runtime.settings, runtime.holder, to_parent, from_parent,
                                            logging.getLogger().getEffectiveLevel()))
        self._to_parent, self._from_parent = to_parent, from_parent
        self._told = False
        self.plan_at = plan_at
        self.planned: PlanReport | None = None  # what the child planned (``go(plan_at=…)``), once it said so

    def __enter__(self) -> RenderAhead:
        # Ignored while it starts (the child inherits it): a Ctrl-C during its imports would print a traceback there.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
        try:
            self._child.start()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self._to_parent.close()  # ours closed: the child's end is the only one left
        self._from_parent.close()
        logger.info("claiming and rendering ahead of the sending in process %s", self._child.pid)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def go(self) -> None:
        """Tell the child to start claiming (and planning, with ``plan_at``). Idempotent."""
        if not self._told:
            self._told = True
            self._tell(("go", self.plan_at))

    def ready(self) -> bool:
        """Whether the child has said anything yet (a batch, mostly): it has started."""
        try:
            return self._from_child.poll(0)
        except (EOFError, OSError):
            return True

    async def batches(self, *, stopped: Callable[[], bool] = lambda: False) -> AsyncGenerator[list[OutboundMessage], None]:
        """Claimed and rendered batches from the child, until nothing is due (nor, with ``plan_at``, left to
        plan), or ``stopped()`` (SIGTERM, Ctrl-C: looked at while waiting too, since planning a stretch of quiet
        days hands over nothing for a while)."""
        self.go()
        try:
            while True:
                kind, value = await asyncio.to_thread(self._next, stopped)
                if kind == "batch":
                    yield value
                elif kind == "done":
                    return
                else:
                    raise NewsletterError(value)
        finally:
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the child: it finishes the batch in hand, or is terminated after STOP_WAIT_S. Idempotent."""
        if self._child.pid is None:  # never started
            return
        self._tell("stop")
        deadline = time.monotonic() + STOP_WAIT_S
        while self._child.is_alive() and time.monotonic() < deadline:
            self._drain(wait_s=0.1)  # so that it is not stuck handing over a batch
            self._child.join(timeout=0.1)
        self._drain(wait_s=0)  # what it said as it ended
        if self._child.is_alive():
            logger.warning("the rendering process did not stop within %.0f s; killing it", STOP_WAIT_S)
            self._child.kill()  # it ignores SIGTERM (sent to the whole group by timeout(1) and systemd)
            self._child.join(timeout=STOP_WAIT_S)
        self._from_child.close()
        self._to_child.close()

    def _drain(self, *, wait_s: float) -> None:
        """Read whatever the child wrote, keeping only what it planned (a child stopped while planning says so as
        it ends). Anything may come out of a pipe a dying child wrote half a batch into (or that a cancelled read
        left mid-message): it is thrown away."""
        with contextlib.suppress(Exception):
            while self._from_child.poll(wait_s):
                kind, value = self._from_child.recv()
                if kind == "planned":
                    self.planned = value

    def _tell(self, order: object) -> None:
        with contextlib.suppress(OSError):  # the child is gone already (closed, or it died): nothing to tell
            self._to_child.send(order)

    def _next(self, stopped: Callable[[], bool]) -> tuple[str, Any]:
        """The child's next batch, "done" or error; its log records on the way go to our loggers."""
        while True:
            if stopped():
                self._tell("stop")
                return "done", None
            try:
                if self._from_child.poll(POLL_S):
                    kind, value = self._from_child.recv()
                    if kind == "planned":
                        self.planned = value
                    elif kind != "log":
                        return kind, value
                    else:
                        logging.getLogger(value.name).handle(value)
                    continue
                if self._child.is_alive():
                    continue
            except (EOFError, OSError):  # every writer gone (it died or ended without a word), or it died mid-message
                pass
            self._child.join(timeout=POLL_S)
            return "error", (f"the rendering process (pid {self._child.pid}) {_ended(self._child.exitcode)}; "
                             "what it claimed is released and sent by the next run")


def _ended(exitcode: int | None) -> str:
    """How a child process ended, in words: "was killed (SIGKILL)" reads better than "exit status -9"."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed ({signal.Signals(-exitcode).name})"
    return f"stopped (exit status {exitcode})"


class _Sender:
    """What ``QueueHandler`` needs of a queue, over the pipe: the child's log records go to the parent."""

    def __init__(self, to_parent: Connection) -> None:
        self.to_parent = to_parent

    def put_nowait(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):  # the parent is gone (killed): nobody to tell
            self.to_parent.send(("log", record))


class _Orders:
    """The parent's word, as the child reads it: "go" (with the moment to plan at, if it plans too), "stop"
    when the run ends early. The parent gone (its end of the pipe closed: it died, or closed) is a stop too."""

    def __init__(self, from_parent: Connection) -> None:
        self.from_parent = from_parent
        self.go = self.stopped = False
        self.plan_at: dt.datetime | None = None

    def _read(self, timeout: float) -> None:
        try:
            while not self.stopped and self.from_parent.poll(timeout):
                order = self.from_parent.recv()
                if isinstance(order, tuple) and order[0] == "go":
                    self.go, self.plan_at = True, order[1]
                self.stopped = self.stopped or order == "stop"
                timeout = 0
        except (EOFError, OSError):
            self.stopped = True

    def wait_for_go(self, timeout: float) -> bool:
        self._read(timeout)
        return self.go

    def is_set(self) -> bool:
        """Whether to stop (the name ``threading.Event`` has, as the sender's own stop)."""
        self._read(0)
        return self.stopped


def _child_main(settings: Settings, holder: str, to_parent: Connection, from_parent: Connection, log_level: int) -> None:
    # Ctrl-C, and the SIGTERM of timeout(1) or systemd, reach the whole process group: the parent stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(_Sender(to_parent))]  # type: ignore[arg-type]
    root.setLevel(log_level)
    stop = _Orders(from_parent)
    try:
        runtime = Runtime.build(settings)
        runtime.holder = holder  # claims are the sender's: its lease renewal and release cover them
        for name in runtime.templates.list_templates():  # compiled while the parent plans
            runtime.templates.get_template(name)
        parent = multiprocessing.parent_process()
        while not stop.wait_for_go(POLL_S):
            if stop.is_set() or (parent is not None and not parent.is_alive()):
                return
        if _render_until_done(runtime, to_parent, stop):
            to_parent.send(("done", None))
        runtime.engine.dispose()
    except BaseException as exc:  # the parent stops the run with this as the reason
        if not stop.is_set():  # one line, as the run's error says it; the traceback for who asks (DEBUG)
            logger.error("rendering ahead of the sending failed: %s", one_line(exc), exc_info=logger.isEnabledFor(logging.DEBUG))
            with contextlib.suppress(OSError):
                to_parent.send(("error", f"rendering ahead of the sending failed: {one_line(exc)}"))


def _render_until_done(runtime: Runtime, to_parent: Connection, stop: _Orders) -> bool:
    """Claim, render and hand over batches until none is due (planning the next batch of digests, with
    ``plan_at``, whenever none is); False if told to stop on the way."""
    from newsletter.deliver import CLAIM_BATCH, BatchBuilder
    from newsletter.plan import PlanReport, plan_in_batches

    builder = BatchBuilder(runtime)
    limit = FIRST_BATCH
    parent = multiprocessing.parent_process()
    planning = None if stop.plan_at is None else plan_in_batches(runtime, now=stop.plan_at, stopped=stop.is_set,
                                                                 batch=PLAN_BATCH)
    planned = PlanReport()
    try:
        with runtime.sessions() as session:
            # A parent gone (its pipe ended, or it is no longer alive): claiming under its name after it died would
            # hold rows from the next run.
            while not stop.is_set() and (parent is None or parent.is_alive()):
                batch = builder.claim_and_build(session, now=dt.datetime.now(dt.UTC), subscriber_id=None,
                                                delivery_ids=None, limit=limit,
                                                not_due_at=stop.plan_at if planning is not None else None)
                if batch:
                    limit = CLAIM_BATCH
                    to_parent.send(("batch", batch))  # waits while the parent is not reading
                    continue
                if planning is None:  # after a short batch, one more look: deliveries that came due meanwhile
                    return True
                # Nothing planned is left to claim: plan the next batch of digests (after the last, one more look).
                if (report := next(planning, None)) is None:
                    planning = None
                else:
                    planned = report
    finally:
        if stop.plan_at is not None:
            with contextlib.suppress(OSError):
                to_parent.send(("planned", planned))
    return False
