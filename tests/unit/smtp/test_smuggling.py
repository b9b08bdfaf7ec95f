"""SMTP smuggling: no end-of-data variant but <CRLF>.<CRLF> ends the content.

Each variant is embedded in a pipelined session that hides a second
transaction behind it, and the session is fed split at every possible byte
position (and byte by byte). The hidden MAIL must never be seen as a command.
"""

from __future__ import annotations

import pytest
from smtp_policy import Policy

from meta1py.smtp import replies
from meta1py.smtp.events import EndOfData, MailFrom, StartTls
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.server import ServerConnection
from meta1py.smtp.state import State

VARIANTS = {
    "lf.lf": b"\n.\n",
    "cr.cr": b"\r.\r",
    "lf.crlf": b"\n.\r\n",
    "crlf.lf": b"\r\n.\n",
    "cr.crlf": b"\r.\r\n",
    "crlf.cr": b"\r\n.\r",
    "crlf.cr.lf": b"\r\n.\r.\n",
    "nul": b"\r\n.\x00\r\n",
    "nul-before-dot": b"\r\n\x00.\r\n",
    "bare-lf": b"\n",
    "bare-cr": b"\r",
    "lf-dot-crlf-lf": b"\n.\r\n\n",
}

SMUGGLED = b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\nevil\r\n"


def _session(variant: bytes) -> bytes:
    return (
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n"
        b"Subject: test\r\n\r\nbody" + variant + SMUGGLED + b"\r\n.\r\nQUIT\r\n"
    )


def _run(data: bytes, splits: list[int], bare_newline: str) -> Policy:
    conn = ServerConnection(
        "mx.test",
        extensions=Extensions(pipelining=True, chunking=True),
        bare_newline=bare_newline,  # type: ignore[arg-type]
    )
    policy = Policy(conn)
    policy.greet()
    prev = 0
    for cut in [*splits, len(data)]:
        if cut > prev:
            policy.feed(data[prev:cut])
        prev = cut
    return policy


def _check(policy: Policy, bare_newline: str) -> None:
    mails = [e for e in policy.events if isinstance(e, MailFrom)]
    assert [str(m.address) for m in mails] == ["a@b.example"]
    ends = [e for e in policy.events if isinstance(e, EndOfData)]
    assert len(ends) == 1
    if bare_newline == "reject":
        assert ends[0].error == replies.bare_newline()
        assert policy.messages == []
    else:
        assert len(policy.messages) == 1
        msg = policy.messages[0]
        assert b"smuggled@evil.example" in msg
        if b"\x00" not in msg:
            # Normalised: only CRLF line ends remain.
            assert msg.count(b"\n") == msg.count(b"\r\n") == msg.count(b"\r")
    assert policy.conn.state is State.CLOSED


@pytest.mark.parametrize("bare_newline", ["reject", "normalize"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_split(name: str, bare_newline: str) -> None:
    data = _session(VARIANTS[name])
    for cut in range(len(data) + 1):
        policy = _run(data, [cut], bare_newline)
        if b"\x00" in VARIANTS[name] and bare_newline == "normalize":
            ends = [e for e in policy.events if isinstance(e, EndOfData)]
            assert len(ends) == 1 and ends[0].error == replies.bare_newline()
            assert len([e for e in policy.events if isinstance(e, MailFrom)]) == 1
            continue
        _check(policy, bare_newline)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_byte_by_byte(name: str) -> None:
    data = _session(VARIANTS[name])
    _check(_run(data, list(range(1, len(data))), "reject"), "reject")


def test_real_end_is_found_at_every_split() -> None:
    data = _session(b"\r\n..\r\n")  # a stuffed dot line, not an end
    for cut in range(len(data) + 1):
        policy = _run(data, [cut], "reject")
        assert len(policy.messages) == 1
        assert b"\r\n.\r\nMAIL FROM:<smuggled" in policy.messages[0]
        assert len([e for e in policy.events if isinstance(e, MailFrom)]) == 1


def test_starttls_injection_is_discarded() -> None:
    conn = ServerConnection("mx.test", extensions=Extensions(pipelining=True, starttls=True))
    policy = Policy(conn)
    policy.greet()
    policy.feed(b"EHLO c.example\r\n")
    out = policy.feed(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.discarded_after_starttls == len(b"MAIL FROM:<injected@evil.example>\r\n")
    assert conn.tls_active and conn.state is State.INIT
    assert not [e for e in policy.events if isinstance(e, MailFrom)]
    assert isinstance(policy.events[-1], StartTls)


def test_endless_line_is_not_buffered() -> None:
    # Below the hard cap (raised here): the line is dropped as it arrives, answered at its end.
    conn = ServerConnection("mx.test", max_command_hard_bytes=8 * 1024 * 1024)
    policy = Policy(conn)
    policy.greet()
    for _ in range(1000):
        policy.feed(b"A" * 4096)
        assert conn.pending_input <= 512
    assert policy.feed(b"\r\nNOOP\r\n") == b"500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"


def test_endless_line_past_the_hard_cap_is_cut_at_once() -> None:
    # Issue 16: 94 MiB of 'A' without CRLF were read for 45 s with no reply. Past
    # max_command_hard_bytes (64 KiB by default) the core answers 421 4.7.0 without waiting for
    # the line end, however the octets arrive, and reads nothing more.
    for step in (1, 4096, 65536, 200_000):
        conn = ServerConnection("mx.test")
        policy = Policy(conn)
        policy.greet()
        out = b""
        sent = 0
        while not out and sent < 300_000:
            out = policy.feed(b"A" * step)
            sent += step
            assert conn.pending_input <= 512
        assert out == b"421 4.7.0 Line too long, closing connection\r\n", (step, out)
        assert 65536 <= sent < 65536 + max(step, 512) + 1
        assert conn.state is State.CLOSED
        assert not conn.receiving_line


def test_receiving_line_tracks_a_partial_command() -> None:
    conn = ServerConnection("mx.test")
    policy = Policy(conn)
    policy.greet()
    assert not conn.receiving_line
    policy.feed(b"EHL")
    assert conn.receiving_line
    policy.feed(b"O c.example\r\n")
    assert not conn.receiving_line
    policy.feed(b"NOOP " + b"x" * 600)  # past max_command_bytes: being skipped
    assert conn.receiving_line and conn.pending_input == 0
    assert policy.feed(b"\r\n") == b"500 5.5.2 Line too long\r\n"
    assert not conn.receiving_line
