"""Whatever breaks while sending, `newsletter digest` stops with one line and a non-zero status, never hangs;
what was not sent stays pending, and a later run sends it, once.

Every run here is the real CLI in a subprocess with a hard timeout, so a hang fails the test instead
of stalling the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Subscriber
from tests.conftest import FIXTURES, fixed_send_moment, free_port
from tests.send.faults import FaultySink

HARD_TIMEOUT_S = 180  # a run of a few dozen digests takes seconds; only a hang gets near this
HEADER = "email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n"

# The real CLI with a mailer that raises a bug-like exception at its third message (one connection of the pool).
EXPLODING_CLI = """
import sys
from newsletter.send import mailer

real_factory = mailer.mailer_factory
sends = 0

def exploding(cls):
    class Exploding(cls):
        async def send(self, envelope):
            global sends
            sends += 1
            if sends == 3:
                raise RuntimeError("boom at the third message")
            await super().send(envelope)
    return Exploding

def factory(settings):
    make = real_factory(settings)
    made = []
    def connect():
        mailer_object = make()
        if not made:  # only the first connection of the pool misbehaves
            mailer_object.__class__ = exploding(type(mailer_object))
        made.append(mailer_object)
        return mailer_object
    return connect

mailer.mailer_factory = factory
from newsletter.cli import main
sys.exit(main(["digest", *sys.argv[1:]]))
"""


def run_cli(environ: dict[str, str], cwd: Path, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    if args[:1] == ("digest",) or script:  # at the moment every subscriber is due (they send at their own hour)
        args = (*(args or ()), "--allow-future", "--at", fixed_send_moment(environ["NEWSLETTER_DATABASE_URL"]))
    command = [sys.executable, "-c", script, *args[1:]] if script else [sys.executable, "-m", "newsletter", *args]
    return subprocess.run(command, env=environ, cwd=cwd, capture_output=True, text=True, timeout=HARD_TIMEOUT_S)


def environment(**settings: object) -> dict[str, str]:
    return {**os.environ, **{f"NEWSLETTER_{k.upper()}": str(v) for k, v in settings.items()}}


def add_readers(cli, tmp_path: Path, count: int) -> list[str]:
    emails = [f"reader{i:02d}@example.org" for i in range(count)]
    (tmp_path / "list.csv").write_text(HEADER + "".join(f"{e},diffusion models;language models,,,,,,,,3\n" for e in emails))
    assert cli("subscribers", "import", str(tmp_path / "list.csv")).code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    return emails


def statuses(url: str) -> dict[str, str]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = dict(session.execute(
            select(Subscriber.email, Delivery.status).join(Delivery, Delivery.subscriber_id == Subscriber.id)).all())
    engine.dispose()
    return rows


def digest_disturbed(environ: dict[str, str], cwd: Path, url: str, sink: FaultySink, *, after: int,
                     disturb: Callable[[subprocess.Popen[str]], object]) -> tuple[int, str]:
    """`newsletter digest` in a process, ``disturb``ed once the sink has ``after`` messages; (exit status, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "newsletter", "digest", "--allow-future", "--at", fixed_send_moment(url)],
                               env=environ, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a terminal's job or a service has
    try:
        deadline = time.monotonic() + HARD_TIMEOUT_S
        while len(sink.received) < after and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        disturb(process)
        _, stderr = process.communicate(timeout=HARD_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def eml_counts(outbox: Path) -> Counter[str]:
    return Counter(path.parent.name for path in outbox.rglob("*.eml"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: room for a few digests only."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root and mount permission): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_outbox_disk_stops_the_run_with_one_line_and_a_later_run_sends_the_rest_once(
        cli, env, sqlite_url, tmp_path, small_disk) -> None:
    outbox = small_disk / "outbox"
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend="file", outbox_dir=outbox)
    env(**settings)
    readers = add_readers(cli, tmp_path, 20)

    first = run_cli(environment(**settings), tmp_path, "digest")
    assert first.returncode == 1
    line = one_error_line(first.stderr)
    assert line.startswith(f"error: cannot write to {outbox}/") and "No space left on device" in line
    after_first = statuses(sqlite_url)
    assert set(after_first.values()) == {"sent", "pending"}, after_first
    sent = {e for e, s in after_first.items() if s == "sent"}
    assert 0 < len(sent) < len(readers)
    assert set(eml_counts(outbox)) == {e.replace("@", "_") for e in sent} and not list(outbox.rglob("*.tmp"))

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # room again
    second = run_cli(environment(**settings), tmp_path, "digest")
    assert second.returncode == 0, second.stderr
    assert set(statuses(sqlite_url).values()) == {"sent"}
    assert eml_counts(outbox) == Counter({e.replace("@", "_"): 1 for e in readers})


def test_a_run_that_could_write_no_message_does_not_say_there_was_nothing_to_send(
        cli, env, sqlite_url, tmp_path, small_disk) -> None:
    """The summary said "deliveries: nothing to send", then the write error: nothing was sent because it stopped."""
    subprocess.run(["mount", "-o", "remount,size=4k", str(small_disk)], check=True)  # not one digest fits
    (small_disk / "filler").write_bytes(b"x" * 4096)
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend="file", outbox_dir=small_disk / "outbox")
    env(**settings)
    add_readers(cli, tmp_path, 3)
    run = run_cli(environment(**settings), tmp_path, "digest")
    assert run.returncode == 1 and "nothing to send" not in run.stdout, run.stdout
    assert "deliveries: none sent, the run stopped (below)" in run.stdout and "error: " in run.stderr


@pytest.fixture
def relay() -> Iterator[FaultySink]:
    sink, port = FaultySink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    sink.port = port  # type: ignore[attr-defined]
    yield sink
    controller.stop()


@pytest.mark.parametrize("backend", ["file", "smtp"])
def test_a_mailer_that_raises_stops_the_run_and_a_later_run_sends_the_rest_once(
        cli, env, sqlite_url, tmp_path, relay, backend) -> None:
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend=backend, outbox_dir=tmp_path / "outbox",
                    smtp_host="127.0.0.1", smtp_port=relay.port, smtp_security="none",  # type: ignore[attr-defined]
                    smtp_pool_size=3, smtp_timeout_s=30)
    env(**settings)
    readers = add_readers(cli, tmp_path, 40)

    first = run_cli(environment(**settings), tmp_path, "digest", script=EXPLODING_CLI)
    assert first.returncode == 1
    line = one_error_line(first.stderr)
    assert "RuntimeError: boom at the third message" in line and "stay pending" in line
    after_first = Counter(statuses(sqlite_url).values())
    assert after_first["unknown"] == 1, "whether the message that raised left is not known: it is retried once"
    assert after_first["pending"] > 0 and set(after_first) <= {"sent", "unknown", "pending"}, after_first

    second = run_cli(environment(**settings), tmp_path, "digest")
    assert second.returncode == 0, second.stderr
    assert set(statuses(sqlite_url).values()) == {"sent"}
    if backend == "file":
        assert eml_counts(tmp_path / "outbox") == Counter({e.replace("@", "_"): 1 for e in readers})
    else:
        assert relay.per_recipient() == Counter(dict.fromkeys(readers, 1))


def test_a_relay_that_goes_away_mid_run_stops_it_and_a_later_run_sends_the_rest(cli, env, sqlite_url, tmp_path) -> None:
    sink, port = FaultySink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port,
                    smtp_security="none", smtp_pool_size=2, smtp_timeout_s=10, smtp_rate_per_s=20)
    env(**settings)
    readers = add_readers(cli, tmp_path, 200)  # 10 s at 20 a second: the relay goes away long before the end
    returncode, stderr = digest_disturbed(environment(**settings), tmp_path, sqlite_url, sink, after=20,
                                          disturb=lambda _process: controller.stop())
    assert returncode == 1
    line = one_error_line(stderr)
    assert f"cannot reach SMTP relay 127.0.0.1:{port}" in line and "stay pending" in line
    after_first = Counter(statuses(sqlite_url).values())
    assert after_first["pending"] > 0 and set(after_first) <= {"sent", "unknown", "pending"}, after_first

    controller = Controller(sink, hostname="127.0.0.1", port=port)  # the relay is back
    controller.start()
    try:
        second = run_cli(environment(**settings), tmp_path, "digest")
    finally:
        controller.stop()
    assert second.returncode == 0, second.stderr
    assert set(statuses(sqlite_url).values()) == {"sent"}
    received = sink.per_recipient()
    assert set(received) == set(readers)
    assert sum(received.values()) - len(readers) <= after_first["unknown"], "only an unknown outcome may arrive twice"


@pytest.mark.parametrize(("render_ahead_from", "signal_number", "name", "status"), [
    (0, signal.SIGINT, "Ctrl-C", 130), (1_000_000, signal.SIGINT, "Ctrl-C", 130),
    (0, signal.SIGTERM, "SIGTERM", 143),  # what timeout(1) and systemd send: it died like a crash
], ids=["rendering-in-a-second-process", "in-a-thread", "sigterm"])
def test_ctrl_c_stops_taking_messages_records_those_in_flight_and_a_later_run_sends_the_rest_once(
        cli, env, sqlite_url, tmp_path, relay, render_ahead_from, signal_number, name, status) -> None:
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend="smtp", smtp_host="127.0.0.1",
                    smtp_port=relay.port, smtp_security="none", smtp_pool_size=3,  # type: ignore[attr-defined]
                    smtp_rate_per_s=20, render_ahead_from=render_ahead_from)
    env(**settings)
    readers = add_readers(cli, tmp_path, 200)  # 10 s at 20 a second: Ctrl-C lands mid-run
    returncode, stderr = digest_disturbed(environment(**settings), tmp_path, sqlite_url, relay, after=20,
                                          disturb=lambda process: os.killpg(process.pid, signal_number))  # the whole group
    assert returncode == status
    line = one_error_line(stderr)
    assert line.startswith(f"error: interrupted ({name})") and "stays pending" in line
    after_first = Counter(statuses(sqlite_url).values())
    assert set(after_first) == {"sent", "pending"}, f"nothing left sending or unknown: {after_first}"
    assert after_first["sent"] == len(relay.received) < len(readers)

    second = run_cli(environment(**settings), tmp_path, "digest")
    assert second.returncode == 0, second.stderr
    assert relay.per_recipient() == Counter(dict.fromkeys(readers, 1)), "each once: nothing sent twice"


def processes_in(folder: Path) -> list[int]:
    """The pids of the processes whose working directory is ``folder`` (the command and any child of it), but
    this test's own (the fixtures work in the same folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and int(entry.name) != os.getpid() and Path(os.readlink(entry / "cwd")) == folder:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("render_ahead_from", [0, 1_000_000], ids=["rendering-in-a-second-process", "in-a-thread"])
def test_a_second_ctrl_c_stops_at_once_and_a_later_run_sends_everything(
        cli, env, sqlite_url, tmp_path, relay, render_ahead_from) -> None:
    """The relay sits on every message for 90 s. A second Ctrl-C waited for it (and printed nothing); it stops
    at once now, as a crash would, and the next run sends the rest and the messages that were in flight once
    more, with the same Message-ID."""
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend="smtp", smtp_host="127.0.0.1",
                    smtp_port=relay.port, smtp_security="none", smtp_pool_size=2, smtp_timeout_s=300,  # type: ignore[attr-defined]
                    render_ahead_from=render_ahead_from)
    env(**settings)
    readers = add_readers(cli, tmp_path, 12)
    relay.stall_for = dict.fromkeys(readers, 90.0)
    process = subprocess.Popen([sys.executable, "-m", "newsletter", "digest", "--allow-future", "--at",
                                fixed_send_moment(sqlite_url)], env=environment(**settings), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HARD_TIMEOUT_S
        while Counter(statuses(sqlite_url).values())["sending"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=45)  # half the relay's hold: it did not wait for it
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "error: stopped at once (Ctrl-C, then Ctrl-C)" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 30  # the rendering process sees its parent's pipe close and ends too
    while processes_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(tmp_path) == [], "nothing of the stopped run is left behind"

    relay.stall_for.clear()
    second = run_cli(environment(**settings), tmp_path, "digest")
    assert second.returncode == 0, second.stderr
    assert set(statuses(sqlite_url).values()) == {"sent"}
    assert set(relay.per_recipient()) == set(readers), "everyone has theirs"
