"""The pickup file format (meta1py.queue.pickup): written by meta1 sendmail, read by qmgr as hostile input.

Every malformed file must end in a PickupFormatError that says what is wrong (qmgr then moves the
file to the corrupt directory), never in another exception, and never before the envelope was
checked in full does any content reach the sink.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1py.queue.pickup import (
    FILE_MODE,
    TEMP_PREFIX,
    ContentChecker,
    PickupEnvelope,
    PickupFormatError,
    PickupRecipient,
    content_problem,
    encode_envelope,
    is_pickup_name,
    read_pickup,
    write_pickup_file,
)

CONTENT = b"From: cron@example.org\r\nSubject: nightly\r\n\r\nall done\r\n"
ENVELOPE = PickupEnvelope(
    sender="cron@example.org",
    recipients=(
        PickupRecipient("ops@example.net", ("DELAY", "FAILURE"), "rfc822;ops@example.net"),
        PickupRecipient('"odd user"@example.net'),
        PickupRecipient("postmaster"),
    ),
    ret="HDRS",
    envid="nightly run+1",
    size=len(CONTENT),
)


def read(data: bytes, *, max_content: int = 10_000, max_recipients: int = 10) -> tuple[PickupEnvelope, bytes]:
    got = bytearray()
    env = read_pickup(
        io.BytesIO(data), max_content_bytes=max_content, max_recipients=max_recipients, sink=got.extend
    )
    return env, bytes(got)


def file_bytes(lines: list[str], content: bytes = CONTENT) -> bytes:
    return "".join(line + "\n" for line in lines).encode() + content


def good_lines(content: bytes = CONTENT) -> list[str]:
    return [
        "meta1-pickup 1",
        "sender <a@example.org>",
        "recipient <b@example.net>",
        f"content {len(content)}",
    ]


def test_what_sendmail_writes_reads_back_unchanged() -> None:
    data = encode_envelope(ENVELOPE) + CONTENT
    assert data.startswith(b"meta1-pickup 1\nsender <cron@example.org>\n")
    assert b"orcpt=rfc822;ops@example.net" in data and b"envid nightly+20run+2B1\n" in data
    env, content = read(data)
    assert env == ENVELOPE and content == CONTENT


def test_null_sender_smtputf8_and_8bit_content() -> None:
    content = "Subject: café\r\n\r\nçà\r\n".encode()
    env = PickupEnvelope("", (PickupRecipient("jörg@exämple.de"),), smtputf8=True, size=len(content))
    got, body = read(encode_envelope(env) + content)
    assert got.sender == "" and got.recipients[0].address == "jörg@exämple.de" and got.smtputf8
    # 8-bit content declared 7BIT is upgraded, as Postfix's cleanup does for local mail.
    assert got.body == "8BITMIME" and body == content


def test_an_empty_message_is_a_message() -> None:
    env, content = read(file_bytes(good_lines(b""), b""))
    assert env.size == 0 and content == b""


M, S, R, C = (
    "meta1-pickup 1",
    "sender <a@example.org>",
    "recipient <b@example.net>",
    f"content {len(CONTENT)}",
)


def f(*lines: str, content: bytes = CONTENT) -> bytes:
    return file_bytes(list(lines), content)


def body(content: bytes) -> bytes:
    return f(M, S, R, f"content {len(content)}", content=content)


BAD_FILES = [
    (b"", "not a pickup file"),
    (b"meta1-pickup 2\nsender <a@b.c>\n", "not a pickup file"),
    (b"From: x\r\n\r\nbody\r\n", "not a pickup file"),
    (f(M, S, R, content=b""), "ends inside"),
    (f(M, R, C), "no sender"),
    (f(M, S, C), "no recipient"),
    (f(M, S, R, "sender <c@example.org>", C), "given twice"),
    (f(M, S, R, "x-header yes", C), "unknown keyword"),
    (f(M, S, R, "smtputf8 yes", C), "bad smtputf8 line"),
    (f(M, "sender", R, C), "bad sender line"),
    (f(M, "sender a@example.org", R, C), "no <address>"),
    (f(M, "sender <a@example.org> x", R, C), "junk after"),
    (f(M, "sender <a b@example.org>", R, C), "sender"),
    (f(M, S, "recipient <>", C), "recipient"),
    (f(M, S, "recipient <b@example.net>x", C), "junk after"),
    (f(M, S, "recipient <jörg@example.net>", C), "SMTPUTF8"),
    (f(M, S, R + " notify=SOMETIMES", C), "NOTIFY"),
    (f(M, S, R + " notify=NEVER,DELAY", C), "alone"),
    (f(M, S, R + " orcpt=rfc822", C), "ORCPT"),
    (f(M, S, R + " orcpt=rfc822;a+2", C), "xtext"),
    (f(M, S, R + " bcc=yes", C), "parameter"),
    (f(M, S, R, "ret SOME", C), "bad ret"),
    (f(M, S, R, "body BINARYMIME", C), "bad body"),
    (f(M, S, R, "envid " + "x" * 101, C), "100 characters"),
    (f(M, S, R, "envid a+0Ab", C), "printable"),
    (f(M, S, R, "content -5"), "bad content length"),
    (f(M, S, R, "content 99999999999999999999"), "bad content length"),
    (f(M, S, R, "content 20000"), "larger than the limit"),
    (f(M, S, R, f"content {len(CONTENT) + 5}"), "ends 5 octets before"),
    (f(M, S, R, C) + b"more", "data after the content"),
    (body(b"a\nb\r\n"), "bare LF"),
    (body(b"a\rb\r\n"), "bare CR"),
    (body(b"abc"), "does not end with CRLF"),
    (body(b"abc\r"), "bare CR at the end"),
    (body(b"x" * 999 + b"\r\n"), "longer than 1000"),
    (f(M, S, "recipient <" + "b" * 3000 + "@example.net>", C), "longer than 2048"),
    (f(M, S, R, C).replace(b"net>\n", b"net>\xff\n"), "not UTF-8"),
    (f(M, S + "\t", R, C), "control"),
    (f(M, S, *[R] * 11, "content 0", content=b""), "more than 10"),
]


@pytest.mark.parametrize(("data", "reason"), BAD_FILES, ids=[r for _d, r in BAD_FILES])
def test_a_malformed_file_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(PickupFormatError, match=reason.replace("+", r"\+")):
        read(data)


def test_nothing_reaches_the_sink_before_the_envelope_is_checked() -> None:
    got = bytearray()
    data = file_bytes(
        ["meta1-pickup 1", "sender <a@example.org>", "recipient <bad address>", "content 3"], b"x\r\n"
    )
    with pytest.raises(PickupFormatError):
        read_pickup(io.BytesIO(data), max_content_bytes=100, max_recipients=10, sink=got.extend)
    assert got == b""


def test_many_recipient_lines_stop_at_the_cap_not_at_the_end_of_the_file() -> None:
    # A file of endless recipient lines is refused once the cap is passed, without reading it all.
    stream = io.BytesIO(
        b"meta1-pickup 1\nsender <a@example.org>\n" + b"recipient <b@example.net>\n" * 100_000
    )
    with pytest.raises(PickupFormatError, match="more than 10 recipients"):
        read_pickup(stream, max_content_bytes=100, max_recipients=10, sink=lambda _c: None)
    assert stream.tell() < 2_000


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_content_checks_do_not_depend_on_how_the_chunks_fall(size: int) -> None:
    def check(data: bytes) -> str | None:
        checker = ContentChecker()
        try:
            for i in range(0, len(data), size):
                checker.feed(data[i : i + size])
            checker.finish()
        except PickupFormatError as exc:
            return str(exc)
        return None

    for data in (
        CONTENT,
        b"a\r\n\r\n",
        b"a\rb\r\n",
        b"a\r\nb\n",
        b"\r",
        b"x" * 998 + b"\r\n",
        b"x" * 999 + b"\r\n",
    ):
        assert (check(data) is None) == (content_problem(data) is None), data


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_damaged_file_is_read_or_refused_never_anything_else(data: st.DataObject) -> None:
    good = bytearray(encode_envelope(ENVELOPE) + CONTENT)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(good)))
        if kind == "flip" and pos < len(good):
            good[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del good[pos:]
        elif kind == "insert":
            good[pos:pos] = data.draw(st.binary(max_size=20))
        elif pos < len(good):
            del good[pos : pos + data.draw(st.integers(1, 30))]
    try:
        env, content = read(bytes(good))
    except PickupFormatError:
        return
    assert len(content) == env.size and content_problem(content) is None and env.recipients


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_after_the_magic_line_are_refused_cleanly(tail: bytes) -> None:
    try:
        read(b"meta1-pickup 1\n" + tail)
    except PickupFormatError:
        pass


def test_write_pickup_file_names_it_only_when_complete(tmp_path: Path) -> None:
    header = encode_envelope(ENVELOPE)
    name = write_pickup_file(tmp_path, [header, CONTENT])
    assert is_pickup_name(name) and not is_pickup_name(TEMP_PREFIX + name)
    assert os.listdir(tmp_path) == [name]  # the temporary name is gone
    path = tmp_path / name
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    env, content = read(path.read_bytes())
    assert env == ENVELOPE and content == CONTENT


def test_an_envelope_that_would_not_read_back_is_not_written() -> None:
    with pytest.raises(PickupFormatError, match="recipient"):
        encode_envelope(PickupEnvelope("a@example.org", (PickupRecipient("not an address"),), size=0))
    with pytest.raises(PickupFormatError, match="no recipient"):
        encode_envelope(PickupEnvelope("a@example.org", (), size=0))
