"""Hop counting: the ``Received:`` lines of a header block, read to stop mail loops.

RFC 5321 §6.3: a message that has passed through more relays than ``qmgr { max_hops }`` is in a
loop and is refused (554 5.4.6) instead of passed on again. smtps counts the client's header
block; qmgr's pickup counts the header block of a locally submitted message, so a loop through
``meta1 sendmail`` (an alias or ``.forward`` command that submits the message again) stops too.

Pure: bytes in, a number out. :class:`HeaderHead` collects the header block from content that
arrives in chunks (smtps's DATA, a pickup file).
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

    ``feed`` every chunk in order until :attr:`done`. :attr:`head` is the block up to the empty
    line that ends it, without the line end of its last header (or its first HEADER_SCAN_BYTES
    octets, or what was fed when the content ended inside it); ``b""`` when the content starts
    with the empty line (no header at all).
    """

    __slots__ = ("_buf", "done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk; True when the header block ended (or reached the limit) with it."""
        if self.done:
            return False
        start = max(0, len(self._buf) - 3)
        self._buf += chunk[: HEADER_SCAN_BYTES + 4 - len(self._buf)]
        if self._buf.startswith(b"\r\n"):
            del self._buf[:]
            self.done = True
            return True
        end = self._buf.find(b"\r\n\r\n", start)
        if end >= 0:
            del self._buf[end:]
            self.done = True
        elif len(self._buf) >= HEADER_SCAN_BYTES:
            del self._buf[HEADER_SCAN_BYTES:]
            self.done = True
        return self.done

    @property
    def head(self) -> bytes:
        return bytes(self._buf)
