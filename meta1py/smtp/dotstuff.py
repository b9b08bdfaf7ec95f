"""Message content on the wire: DATA dot-(un)stuffing, BDAT chunks, smuggling rules.

Receiving (RFC 5321 §4.5.2, §4.1.1.4): ``<CRLF>.<CRLF>`` is the only end of
data. Bare LF, bare CR, ``<LF>.<LF>``, ``<CR>.<CR>``, ``<LF>.<CRLF>``,
``<CRLF>.<LF>`` and NUL never end the message and never split it; a message
containing a bare CR, bare LF or NUL is rejected with 550 5.6.0 (the default,
like Postfix's ``smtpd_forbid_bare_newline``) or, with ``bare_newline=
"normalize"``, every bare CR and bare LF becomes CRLF (NUL is always
rejected: nothing downstream handles it consistently). Dot-unstuffing only
happens after a real CRLF, so normalisation can never create an end of data.

All work is done on whole received blocks with ``bytes.find``/``count``/
``replace`` (no per-byte Python loops). The decoders never keep more than a
4-byte tail of undecided input.
"""

from __future__ import annotations

import re
from typing import Literal

from meta1py.smtp import replies
from meta1py.smtp.replies import Reply

__all__ = ["BdatDecoder", "ContentChecker", "DotDecoder", "DotEncoder"]

BareNewline = Literal["reject", "normalize"]

_END = b"\r\n.\r\n"
# Tails that may be the beginning of an end marker or of a stuffed dot: held
# back until more data says what they are. Longest first.
_TAILS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_LINE_ENDS = (b"\r", b"\n")
_LINE_DOT = re.compile(rb"\r\n\.").search


class ContentChecker:
    """Checks message content for bare CR/LF, NUL, long lines and size.

    Args:
        max_line_bytes: Longest text line including CRLF (RFC 5321 §4.5.3.1.6).
        max_message_bytes: Largest message (after unstuffing).
        bare_newline: "reject" or "normalize".
        check_newlines: False for BODY=BINARYMIME content (RFC 3030 §3).
    """

    __slots__ = (
        "_bare",
        "_check_newlines",
        "_line_len",
        "_max_line",
        "_max_msg",
        "error",
        "size",
    )

    def __init__(
        self,
        max_line_bytes: int,
        max_message_bytes: int,
        bare_newline: BareNewline,
        check_newlines: bool = True,
    ) -> None:
        self._max_line = max_line_bytes
        self._max_msg = max_message_bytes
        self._bare = bare_newline
        self._check_newlines = check_newlines
        self._line_len = 0
        self.size = 0
        self.error: Reply | None = None

    def check(self, raw: bytes, content: bytes) -> bytes:
        """Check one block and return the content to pass on (b"" after an error).

        Args:
            raw: The block as received (before unstuffing); never ends in the
                middle of a CRLF.
            content: The block after unstuffing (equal to ``raw`` for BDAT).
        """
        if self.error is not None:
            return b""
        if self._check_newlines:
            if b"\0" in raw:
                self.error = replies.bare_newline()
                return b""
            # bytes.splitlines() breaks at CRLF (2 octets), bare CR and bare LF
            # (1 octet each), so the content is free of bare CR/LF exactly when
            # the line ends take 2 octets per break. One C pass plus a join of
            # the lines (a memcpy, cheaper than summing their lengths in
            # Python) was about half the cost of the three counts it
            # replaces (CRLF, LF, CR); test_fast_paths checks both agree.
            lines = raw.splitlines()
            breaks = len(lines) - (0 if raw.endswith(_LINE_ENDS) or not raw else 1)
            if len(raw) - len(b"".join(lines)) != 2 * breaks:
                if self._bare == "reject":
                    self.error = replies.bare_newline()
                    return b""
                content = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            first = raw.find(b"\n")
            if first < 0:
                self._line_len += len(raw)
                if self._line_len >= self._max_line:
                    self.error = replies.line_too_long_in_data()
                    return b""
            else:
                # A regex like [^\n]{1000} backtracks at every offset and was
                # 50 times slower on typical content; see _has_long_line.
                if self._line_len + first >= self._max_line or (
                    len(raw) > self._max_line and _has_long_line(raw, self._max_line)
                ):
                    self.error = replies.line_too_long_in_data()
                    return b""
                self._line_len = len(raw) - raw.rfind(b"\n") - 1
        self.size += len(content)
        if self.size > self._max_msg:
            self.error = replies.message_too_big()
            return b""
        return content


def _has_long_line(raw: bytes, limit: int) -> bool:
    """True if some run of non-LF octets in ``raw`` is ``limit`` octets or longer.

    Same answer as ``max(map(len, raw.split(b"\\n"))) >= limit``, without
    building the list: from the start of a run, the window of the next
    ``limit`` octets either holds no LF (a long run) or its last LF is where
    the next run to look at starts (every run before it fits the window).
    Each ``rfind`` finds that LF near the window's end, so a block of
    ordinary text takes about ``len(raw) / limit`` steps.
    """
    if limit <= 0:
        return True
    rfind = raw.rfind
    n = len(raw)
    start = 0
    while n - start >= limit:
        lf = rfind(b"\n", start, start + limit)
        if lf < 0:
            return True
        start = lf + 1
    return False


class DotDecoder:
    """Decodes DATA content: finds the end, unstuffs dots, checks the content."""

    __slots__ = ("_bol", "checker", "finished")

    def __init__(self, checker: ContentChecker) -> None:
        self.checker = checker
        self._bol = True  # the content starts at the beginning of a line
        self.finished = False

    def feed(self, buf: bytes, pos: int) -> tuple[bytes, int]:
        """Decode from ``buf[pos:]``.

        Returns:
            (content, new position): content to pass on (maybe b""), and how
            far the input was consumed. ``finished`` is set once the end of
            data was consumed.
        """
        if self.finished:
            return b"", pos
        if self._bol:
            head = buf[pos : pos + 3]
            if head == b".\r\n":
                self.finished = True
                return b"", pos + 3
            if len(head) < 3 and b".\r\n".startswith(head):
                return b"", pos
        # One scan for "\r\n." answers two questions: where the end marker can
        # be (it starts with that) and whether any dot needs unstuffing.
        # The regex engine's literal search beat bytes.find() on this
        # three-octet pattern (about 25% on text with a CRLF every line).
        m = _LINE_DOT(buf, pos)
        first = -1 if m is None else m.start()
        end = -1 if first < 0 else buf.find(_END, first)
        if end >= 0:
            stop = end + 2
            newpos = end + 5
            self.finished = True
        else:
            stop = len(buf)
            for tail in _TAILS:
                if buf.endswith(tail):
                    stop -= len(tail)
                    break
            if stop < pos:  # the whole remainder is an undecided tail
                stop = pos
            newpos = stop
        if stop == pos:
            return b"", newpos
        raw = buf[pos:stop]
        content = raw
        if self._bol and content[:1] == b".":
            content = content[1:]
        if 0 <= first and first + 3 <= stop:
            content = content.replace(b"\r\n.", b"\r\n")
        self._bol = raw.endswith(b"\r\n")
        return self.checker.check(raw, content), newpos


class BdatDecoder:
    """Consumes BDAT chunks of one message, checking content across chunk boundaries."""

    __slots__ = ("_carry_cr", "checker", "remaining")

    def __init__(self, checker: ContentChecker) -> None:
        self.checker = checker
        self.remaining = 0
        self._carry_cr = False

    def feed(self, buf: bytes, pos: int, last: bool) -> tuple[bytes, int]:
        """Consume up to ``remaining`` octets of ``buf[pos:]``; return (content, new pos)."""
        take = min(self.remaining, len(buf) - pos)
        if take <= 0:
            return b"", pos
        piece = buf[pos : pos + take]
        self.remaining -= take
        if self._carry_cr:
            piece = b"\r" + piece
            self._carry_cr = False
        # Hold back a trailing CR so that a CRLF split across reads or chunks
        # is seen whole; at the very end it is a bare CR.
        if piece.endswith(b"\r") and not (last and self.remaining == 0):
            self._carry_cr = True
            piece = piece[:-1]
        if not piece:
            return b"", pos + take
        return self.checker.check(piece, piece), pos + take


class DotEncoder:
    """Client side: dot-stuffs content incrementally and canonicalises line ends.

    Bare CR and bare LF are turned into CRLF, so that meta1py never relays a
    message another server could split (SMTP smuggling).
    """

    __slots__ = ("_bol", "_pending_cr", "_sent")

    def __init__(self) -> None:
        self._bol = True
        self._pending_cr = False
        self._sent = False

    def encode(self, chunk: bytes) -> bytes:
        """Return the wire bytes for the next piece of content."""
        if not chunk:
            return b""
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            self._pending_cr = True
            chunk = chunk[:-1]
            if not chunk:
                return b""
        # The same two scans as ContentChecker.check() and DotDecoder.feed():
        # splitlines() for bare CR/LF (the chunk never ends in CR here, so a
        # CRLF is never split) and the _LINE_DOT search for dots to stuff.
        # They replace three bytes.count() calls and an "in" test, which were
        # a third of smtpc's CPU on 100 KiB messages (270 us per 100 KiB of
        # text in 16 KiB chunks, now 150 us); test_fast_commands checks the
        # result against that code.
        lines = chunk.splitlines()
        breaks = len(lines) - (0 if chunk.endswith(_LINE_ENDS) else 1)
        if len(chunk) - len(b"".join(lines)) != 2 * breaks:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if self._bol and chunk[:1] == b".":
            chunk = b"." + chunk
        if _LINE_DOT(chunk) is not None:
            chunk = chunk.replace(b"\r\n.", b"\r\n..")
        self._bol = chunk.endswith(b"\r\n")
        self._sent = True
        return chunk

    def end(self) -> bytes:
        """Return the bytes that end the content: a final CRLF if needed, then ``.CRLF``."""
        out = b""
        if self._pending_cr:
            self._pending_cr = False
            out = b"\r\n"
            self._bol = True
        if not self._bol:
            out += b"\r\n"
        self._bol = True
        self._sent = False
        return out + b".\r\n"
