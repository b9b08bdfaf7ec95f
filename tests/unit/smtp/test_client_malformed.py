"""The client core does not trust malformed replies (issue 16): bytes in, MalformedReplyError out.

Before, ``250 ok<LF>`` and ``250 o<NUL>k`` were taken as 250 and smtpc marked the message
delivered. Every case here must raise, so that smtpc defers the message instead.
"""

from __future__ import annotations

import pytest

from meta1py.smtp.client import ClientConnection, MalformedReplyError
from meta1py.smtp.errors import SmtpProtocolError
from meta1py.smtp.events import NEED_DATA, ReplyReceived


def _at_end_of_data(reply: bytes) -> ClientConnection:
    """A client that sent a message and is waiting for the reply to its end of data."""
    c = ClientConnection()
    c.receive_data(b"220 mx ESMTP\r\n")
    assert isinstance(c.next_event(), ReplyReceived)
    c.ehlo("client.test")
    c.receive_data(b"250-mx\r\n250 PIPELINING\r\n")
    assert isinstance(c.next_event(), ReplyReceived)
    c.mail("a@client.test")
    c.rcpt("b@mx.test")
    c.data()
    c.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
    for _ in range(3):
        assert isinstance(c.next_event(), ReplyReceived)
    c.send_data(b"Subject: x\r\n\r\nbody\r\n")
    c.end_data()
    if reply:
        c.receive_data(reply)
    return c


GOOD = [
    (b"250 2.0.0 queued as X\r\n", 250, "2.0.0", ("queued as X",)),
    (b"250\r\n", 250, None, ("",)),
    (b"250 ok\ttab\r\n", 250, None, ("ok\ttab",)),
    (b"250-first\r\n250 2.0.0 last\r\n", 250, None, ("first", "2.0.0 last")),
    (b"452 4.3.1 full\r\n", 452, "4.3.1", ("full",)),
    ("250 2.0.0 d\u00e9j\u00e0\r\n".encode(), 250, "2.0.0", ("d\u00e9j\u00e0",)),
]


@pytest.mark.parametrize(("data", "code", "enhanced", "lines"), GOOD)
def test_well_formed_replies_are_read(
    data: bytes, code: int, enhanced: str | None, lines: tuple[str, ...]
) -> None:
    event = _at_end_of_data(data).next_event()
    assert isinstance(event, ReplyReceived) and event.command == "DATA_END"
    assert (event.reply.code, event.reply.enhanced, event.reply.lines) == (code, enhanced, lines)


BAD = {
    "bare LF": (b"250 ok\n", "bare LF"),
    "bare LF after a good line": (b"250-a\r\n250 ok\n", "bare LF"),
    "NUL": (b"250 o\x00k\r\n", "NUL"),
    "bare CR": (b"250 o\rk\r\n", "bare CR"),
    "control character": (b"250 o\x1bk\r\n", "control character"),
    "code 999": (b"999 ok\r\n", "reply code"),
    "code 199": (b"199 ok\r\n", "reply code"),
    "code 099": (b"099 ok\r\n", "reply code"),
    "non-numeric code": (b"abc ok\r\n", "reply code"),
    "two digits": (b"25 ok\r\n", "reply code"),
    "no separator": (b"250ok\r\n", "reply code"),
    "code changes": (b"250-a\r\n251 b\r\n", "changed"),
    "CRLF-less line over the cap": (b"250 " + b"A" * 5000, "longer than"),
    "terminated line over the cap": (b"250 " + b"A" * 5000 + b"\r\n", "longer than"),
}


@pytest.mark.parametrize(("data", "words"), list(BAD.values()), ids=list(BAD))
def test_malformed_replies_raise(data: bytes, words: str) -> None:
    c = _at_end_of_data(data)
    with pytest.raises(MalformedReplyError, match=words):
        c.next_event()


def test_malformed_reply_error_is_a_protocol_error() -> None:
    assert issubclass(MalformedReplyError, SmtpProtocolError)


def test_an_endless_line_is_not_buffered() -> None:
    c = _at_end_of_data(b"")
    assert c.next_event() is NEED_DATA
    # 1 MiB in 64 KiB reads, no line end: the reader keeps nothing past the cap.
    for _ in range(16):
        c.receive_data(b"A" * 65536)
        assert c._parser.buffered <= 2048
    with pytest.raises(MalformedReplyError, match="longer than 2048 bytes"):
        c.next_event()


def test_an_endless_line_split_across_reads() -> None:
    c = _at_end_of_data(b"250 " + b"x" * 1000)
    assert c.next_event() is NEED_DATA
    c.receive_data(b"x" * 1000)
    assert c.next_event() is NEED_DATA
    c.receive_data(b"x" * 1000)
    with pytest.raises(MalformedReplyError):
        c.next_event()


def test_replies_before_an_overlong_line_are_still_read() -> None:
    c = ClientConnection()
    c.receive_data(b"220 mx ESMTP\r\n" + b"A" * 70000)
    event = c.next_event()
    assert isinstance(event, ReplyReceived) and event.reply.code == 220
    with pytest.raises(MalformedReplyError):
        c.next_event()


def test_cap_is_a_constructor_argument() -> None:
    c = ClientConnection(max_reply_line_bytes=600)
    c.receive_data(b"220 " + b"x" * 590 + b"\r\n")
    assert isinstance(c.next_event(), ReplyReceived)
    c = ClientConnection(max_reply_line_bytes=600)
    c.receive_data(b"220 " + b"x" * 600 + b"\r\n")
    with pytest.raises(MalformedReplyError):
        c.next_event()


def test_too_many_lines() -> None:
    c = ClientConnection(max_reply_lines=3)
    c.receive_data(b"220-a\r\n" * 4 + b"220 b\r\n")
    with pytest.raises(MalformedReplyError, match="lines"):
        c.next_event()
