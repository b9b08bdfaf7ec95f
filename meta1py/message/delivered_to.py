"""``Delivered-To:``: the header a local delivery adds, and the mail-loop check that reads it.

A local delivery (Maildir) puts ``Delivered-To: <recipient>`` at the top of the message, as
qmail, Postfix's local(8) and Dovecot do. When a message arrives for a recipient whose
``Delivered-To`` it already carries, it has come back to us through an alias or forward that
points at itself: the caller refuses it instead of delivering it again.

Pure: bytes out, or reading the header block from a file object the caller rewinds.
"""

from __future__ import annotations

from typing import BinaryIO

__all__ = ["MAX_HEADER_SCAN_BYTES", "delivered_to_header", "has_delivered_to"]

#: How much of the header block :func:`has_delivered_to` scans: headers past this are not examined.
MAX_HEADER_SCAN_BYTES = 1024 * 1024


def delivered_to_header(recipient: str, *, newline: bytes = b"\r\n") -> bytes:
    """The ``Delivered-To:`` header line for ``recipient`` (UTF-8), ending with ``newline``.

    Args:
        recipient: the address being delivered to, as written in the envelope.
        newline: ``b"\\r\\n"`` for a message on the wire or in the queue, ``b"\\n"`` for a local
            file (Maildir).
    """
    return b"Delivered-To: " + recipient.encode("utf-8") + newline


def has_delivered_to(content: BinaryIO, recipient: str) -> bool:
    """Whether the header block has ``Delivered-To: <recipient>`` (case-insensitive).

    Folded fields are unfolded before comparing. Reads at most :data:`MAX_HEADER_SCAN_BYTES` from
    the current position; the caller rewinds the stream afterwards.
    """
    wanted = recipient.strip().lower()
    scanned = 0
    current: bytes | None = None  # the header field being assembled (unfolded)

    def matches(field: bytes | None) -> bool:
        if field is None:
            return False
        name, sep, value = field.partition(b":")
        if not sep or name.strip().lower() != b"delivered-to":
            return False
        return value.strip().decode("utf-8", "replace").lower() == wanted

    for raw in content:
        scanned += len(raw)
        line = raw.rstrip(b"\r\n")
        if not line:  # the blank line ends the header
            return matches(current)
        if line[:1] in (b" ", b"\t"):
            current = (current or b"") + b" " + line.strip()
        else:
            if matches(current):
                return True
            current = line
        if scanned > MAX_HEADER_SCAN_BYTES:
            break
    return matches(current)
