"""The mbox form of file deliveries and the envelope line of commands (pure)."""

from __future__ import annotations

import io
import time

from meta1py.message.mbox import from_line, write_message

STORED = (
    b"Received: from client\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"From the start\r\n"
    b">From quoted already\r\n"
    b"a line with From inside\r\n"
    b"bare\rCR\r\n"
    b"last line"
)


def test_from_line_is_postfixs() -> None:
    when = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert from_line("alice@example.org", when) == b"From alice@example.org  Fri Jan  2 03:04:05 2026\n"
    assert from_line("", when).startswith(b"From MAILER-DAEMON  ")
    assert from_line("a b\n@x", when).startswith(b"From a_b_@x  ")


def test_file_form_quotes_from_lines_and_ends_with_an_empty_line() -> None:
    out = io.BytesIO()
    write_message(io.BytesIO(STORED), out, quote_from=True, blank_line=True)
    assert out.getvalue() == (
        b"Received: from client\n"
        b"Subject: hi\n"
        b"\n"
        b">From the start\n"
        b">From quoted already\n"
        b"a line with From inside\n"
        b"bare\rCR\n"
        b"last line\n"
        b"\n"
    )


def test_command_form_is_the_message_with_lf() -> None:
    out = io.BytesIO()
    write_message(io.BytesIO(STORED + b"\r\n"), out, quote_from=False, blank_line=False)
    assert out.getvalue() == STORED.replace(b"\r\n", b"\n") + b"\n"


def test_crlf_split_across_reads_and_long_lines() -> None:
    long_line = b"x" * (64 * 1024 - 1) + b"\r\n" + b"From y\r\n"
    out = io.BytesIO()
    write_message(io.BytesIO(long_line), out, quote_from=True, blank_line=False)
    assert out.getvalue() == b"x" * (64 * 1024 - 1) + b"\n>From y\n"
    # A line longer than one read: its middle is never taken for a line start.
    longer = b"y" * (64 * 1024) + b"From z\r\n"
    out = io.BytesIO()
    write_message(io.BytesIO(longer), out, quote_from=True, blank_line=False)
    assert out.getvalue() == b"y" * (64 * 1024) + b"From z\n"
