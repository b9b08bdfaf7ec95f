"""The mbox format of file deliveries, and the envelope line commands get (Postfix's local(8)).

A file delivery appends ``From sender date`` (the mbox separator: ``MAILER-DAEMON`` for the null
sender, the date in ``asctime`` form), then the message with CRLF turned into LF and every line
that starts with ``From `` quoted as ``>From `` (the mboxo convention Postfix and most local
delivery agents follow), then an empty line, so that the next ``From`` line starts a message.
A command gets the same ``From`` line and the message with LF line ends, unquoted (procmail and
its kind expect that).

Pure: bytes in, bytes out, over file objects the caller opens.
"""

from __future__ import annotations

import time
from typing import BinaryIO

__all__ = ["from_line", "write_message"]

#: Longest piece read at once: lines longer than this are copied in pieces.
_LINE_BYTES = 64 * 1024


def from_line(sender: str, when: float | None = None) -> bytes:
    """The mbox ``From`` line (with its LF) for ``sender`` (``""``: the null sender) at ``when``.

    Characters that would break the line (white space, control characters) in the sender are
    replaced with ``_``.
    """
    who = "".join(c if c.isprintable() and not c.isspace() else "_" for c in sender) or "MAILER-DAEMON"
    stamp = time.asctime(time.localtime(time.time() if when is None else when))
    return f"From {who}  {stamp}\n".encode()


def write_message(content: BinaryIO, out: BinaryIO, *, quote_from: bool, blank_line: bool) -> None:
    """Copy a stored message (CRLF line ends) to ``out`` with LF line ends.

    Args:
        content: the message, positioned at its start.
        out: where it goes.
        quote_from: write a line starting with ``From `` as ``>From `` (mbox files).
        blank_line: end with an empty line (mbox files; after a final line break that the
            message lacked, if so).
    """
    at_line_start = True
    ended_with_newline = True
    while True:
        piece = content.readline(_LINE_BYTES)
        if not piece:
            break
        if piece.endswith(b"\r"):
            # The LF may be the next byte: keep CRLF together.
            nxt = content.read(1)
            if nxt == b"\n":
                piece += nxt
            elif nxt:
                content.seek(-1, 1)
        if at_line_start and quote_from and piece.startswith(b"From "):
            out.write(b">")
        if piece.endswith(b"\r\n"):
            piece = piece[:-2] + b"\n"
        out.write(piece)
        at_line_start = ended_with_newline = piece.endswith(b"\n")
    if blank_line:
        out.write(b"\n" if ended_with_newline else b"\n\n")
