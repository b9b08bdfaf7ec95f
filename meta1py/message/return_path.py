"""``Return-Path:``: the envelope sender, recorded by the final delivery (RFC 5321 §4.4).

The MTA that makes the final delivery adds ``Return-Path: <reverse-path>`` at the top of the
message -- ``<>`` for the null sender of a bounce -- so that the recipient's software knows where
replies about delivery go.

smtpc's Maildir delivery writes it (:func:`meta1py.smtpc.maildir.deliver_maildir`), and its
command and file deliveries. LMTP and SMTP deliveries do not: the server behind them makes the
final delivery and adds its own.

A ``Return-Path:`` that came with the message is not the envelope's: the final delivery drops it
before it adds its own (:func:`read_head_without_return_path`), as Postfix drops it by default
(``message_drop_headers``), so that a reader never sees a sender the client made up.
"""

from __future__ import annotations

from typing import BinaryIO

__all__ = ["drop_return_path", "read_head_without_return_path", "return_path_header"]

#: The longest header block that is filtered; a longer one is copied as it is from there on.
MAX_HEAD_BYTES = 1 << 20

_FORBIDDEN = frozenset("\r\n\0<>")


def return_path_header(sender: str, *, newline: bytes = b"\r\n") -> bytes:
    """The ``Return-Path:`` header line for the envelope ``sender``, ending with ``newline``.

    Args:
        sender: the MAIL FROM address without angle brackets; ``""`` for the null sender.
            UTF-8 is allowed (SMTPUTF8).
        newline: ``b"\\r\\n"`` for a message on the wire or in the queue, ``b"\\n"`` for a local
            file (Maildir).

    Raises:
        ValueError: ``sender`` holds CR, LF, NUL or an angle bracket (it would break the header).
    """
    bad = _FORBIDDEN.intersection(sender)
    if bad:
        raise ValueError(f"envelope sender contains {''.join(sorted(bad))!r}: {sender!r}")
    return b"Return-Path: <" + sender.encode("utf-8") + b">" + newline


def drop_return_path(head: bytes) -> bytes:
    """The header block ``head`` (lines ending in CRLF or LF) without its ``Return-Path:`` fields,
    continuation lines included; everything else byte for byte."""
    out: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and line.strip():
            if not dropping:
                out.append(line)
            continue
        name, colon, _rest = line.partition(b":")
        dropping = bool(colon) and name.strip().lower() == b"return-path"
        if not dropping:
            out.append(line)
    return b"".join(out)


def read_head_without_return_path(content: BinaryIO) -> bytes:
    """Read the header block of ``content`` (from its position to the empty line that ends it,
    which is included; at most :data:`MAX_HEAD_BYTES`) and return it without ``Return-Path:``
    fields. ``content`` is left after what was read."""
    lines: list[bytes] = []
    size = 0
    while size < MAX_HEAD_BYTES:
        line = content.readline(MAX_HEAD_BYTES - size)
        if not line:
            break
        lines.append(line)
        size += len(line)
        if line in (b"\r\n", b"\n"):
            break
    return drop_return_path(b"".join(lines))
