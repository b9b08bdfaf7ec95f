"""Hop counting: the ``Received:`` lines of a header block, read to stop mail loops.

RFC 5321 §6.3: a message that has passed through more relays than ``qmgr { max_hops }`` is in a
loop and is refused (554 5.4.6) instead of passed on again. smtps counts the client's header
block; qmgr's pickup counts the header block of a locally submitted message, so a loop through
``meta1 sendmail`` (an alias or ``.forward`` command that submits the message again) stops too.

Pure: bytes in, a number out. :class:`HeaderHead` collects the header block from content that
arrives in chunks.
"""

from __future__ import annotations

import re

__all__ = ["HEADER_SCAN_BYTES", "HeaderHead", "count_hops"]

#: How much of the header block is scanned: Received: lines past this are not counted.
HEADER_SCAN_BYTES = 65536

_RECEIVED_RE = re.compile(rb"(?im)^received:")


def count_hops(head: bytes) -> int:
    """The ``Received:`` header lines in ``head`` (a header block, CRLF or LF line ends)."""
    return len(_RECEIVED_RE.findall(head))


class HeaderHead:
    """Collects the header block from content fed in chunks, up to :data:`HEADER_SCAN_BYTES`.

    ``feed`` every chunk in order (it stops copying once the block has ended); ``head`` is the
    block without the empty line that ends it (or its first HEADER_SCAN_BYTES octets).
    """

    __slots__ = ("_buf", "_done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        start = max(0, len(self._buf) - 3)
        self._buf += chunk[: HEADER_SCAN_BYTES + 4 - len(self._buf)]
        if self._buf.startswith(b"\r\n"):
            # No header at all: the content starts with the empty line.
            del self._buf[:]
            self._done = True
            return
        end = self._buf.find(b"\r\n\r\n", start)
        if end >= 0:
            del self._buf[end + 2 :]
            self._done = True
        elif len(self._buf) >= HEADER_SCAN_BYTES:
            del self._buf[HEADER_SCAN_BYTES:]
            self._done = True

    @property
    def head(self) -> bytes:
        return bytes(self._buf)
