"""The message as it goes over DATA: the sender prepares it itself (``data_on_the_wire``), not with
aiosmtplib's two regular expressions, so it must be byte for byte what aiosmtplib would have sent,
and reach a real server as the same message."""

from __future__ import annotations

import asyncio
import re

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from newsletter.records import Envelope
from newsletter.send.mailer import SmtpMailer, crlf_only, data_on_the_wire
from tests.send.test_one_bad_delivery import relay  # noqa: F401  (a fixture: a real aiosmtpd that keeps what arrives)


def aiosmtplib_wire(message: bytes) -> bytes:
    """What aiosmtplib's DATA writes for ``message`` (SMTPProtocol.execute_data_command)."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


# Line endings of every kind, dots and a byte that is neither, in any order: where the two could differ.
tricky = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"a", b"\r\n.", b"\n.\n", b"\xc3\xa9"]),
                  max_size=40).map(b"".join)


@given(tricky)
def test_the_wire_form_is_aiosmtplibs_for_any_line_endings_and_dots(message: bytes) -> None:
    assert data_on_the_wire(message) == aiosmtplib_wire(message)


@given(st.binary(max_size=300))
def test_the_wire_form_is_aiosmtplibs_for_any_bytes(message: bytes) -> None:
    assert data_on_the_wire(message) == aiosmtplib_wire(message)


LONE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@given(tricky)
def test_crlf_only_finds_any_lone_carriage_return_or_line_feed(message: bytes) -> None:
    assert crlf_only(message) == (LONE_ENDING.search(message) is None)


@given(tricky)
def test_a_message_found_crlf_only_where_it_was_built_goes_out_as_aiosmtplib_would_send_it(message: bytes) -> None:
    if crlf_only(message):
        assert data_on_the_wire(message, known_crlf_only=True) == aiosmtplib_wire(message)


MESSAGES = [
    b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",  # a lone "." line would end DATA early
    b"Subject: bare line feeds\n\nline one\nline two\n.dot after LF",  # no CRLF at all, no final line ending
    b"Subject: bare carriage returns\r\rline\r.dot\r",
    b".leading dot on the very first line\r\n",
]


def test_a_real_server_receives_what_aiosmtplib_itself_would_deliver(relay) -> None:  # noqa: F811  (the fixture imported above)
    sink, port = relay

    async def both() -> None:
        async with SmtpMailer(host="127.0.0.1", port=port, security="none", timeout_s=10) as mailer:
            for i, data in enumerate(MESSAGES):
                await mailer.send(Envelope("digest@example.org", f"ours{i}@example.org", f"<{i}@x>", data))
        for data in MESSAGES:  # the library's own path, for the same bytes
            await aiosmtplib.send(data, sender="digest@example.org", recipients=["lib@example.org"],
                                  hostname="127.0.0.1", port=port, use_tls=False, start_tls=False)

    asyncio.run(both())
    contents = [arrival.raw for arrival in sink.arrivals]
    ours, theirs = contents[: len(MESSAGES)], contents[len(MESSAGES):]
    assert len(ours) == len(theirs) == len(MESSAGES)
    assert ours == theirs
    assert ours[0] == b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n"  # un-stuffed, whole
