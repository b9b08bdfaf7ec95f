"""The client side of the SMTP core (for smtpc): commands out, replies in.

Every command method returns the bytes to write and remembers that a reply
is expected, so replies to a PIPELINING group (RFC 2920) are matched to their
commands in order. The API::

    conn = ClientConnection(lmtp=False)
    conn.next_event()                 # -> ReplyReceived("GREETING", 220 ...) once read
    out = conn.ehlo("client.example") # conn.extensions is set by its 250 reply
    out = conn.mail(addr, MailParams(size=n)) + conn.rcpt(a) + conn.rcpt(b) + conn.data()
    ...                               # ReplyReceived("MAIL"), ("RCPT", recipient=0), ...
    out = conn.send_data(chunk) ...   # after the 354: dot-stuffed, CRLF-canonical
    out = conn.end_data()             # final CRLF if needed, then ".CRLF"
    # or, with CHUNKING: conn.bdat(chunk), conn.bdat(last_chunk, last=True)
    out = conn.quit()

Feed received bytes with :meth:`receive_data` (``b""`` on EOF) and call
:meth:`next_event` until it returns NEED_DATA. Events are
:class:`~meta1py.smtp.events.ReplyReceived` (with the command it answers;
for RCPT and LMTP end-of-data replies also the recipient index) and
:class:`~meta1py.smtp.events.ConnectionClosed`.

LMTP (RFC 2033 §4.2): after the end of data (or BDAT LAST) the server sends
one reply per accepted recipient; each comes out as its own event with
``recipient`` set to that recipient's index in the transaction.

Raises :class:`~meta1py.smtp.errors.SmtpProtocolError` for a server that
breaks the protocol (replies nobody asked for, data buffered after the 220 to
STARTTLS), and its subclass :class:`MalformedReplyError` for a reply that is
not well-formed.

Replies are read strictly (issue 16: a reply ``250 ok<LF>`` was taken as a
250 and the message marked delivered). Every line must have the form of RFC
5321 §4.2: three digits whose first is 2 to 5, then a space, a hyphen or the
line end, text without NUL, CR, LF or other control characters (TAB is
allowed), and CRLF at the end; a bare LF, a NUL, ``999``, ``abc`` or a line
past ``max_reply_line_bytes`` is a :class:`MalformedReplyError`. smtpc turns
it into a temporary failure (``451 4.5.0 malformed reply from ...``): the
message stays queued, and nothing read from such a server counts as an
answer. Reading is bounded: a line that runs past the cap without its CRLF
is cut off as it arrives (the rest is never buffered), and a reply has at
most ``max_reply_lines`` lines. The default cap of 2,048 bytes per line is
four times RFC 5321 §4.5.3.1.5's 512, because real servers send longer
lines (EHLO keywords, long error texts); codes with a second digit past 5
(RFC 5321 §4.2 defines 0 to 5) are accepted because some servers use them.
"""

from __future__ import annotations

import re
from collections import deque

from meta1py.smtp.address import Address, NullPath
from meta1py.smtp.dotstuff import DotEncoder
from meta1py.smtp.errors import SmtpProtocolError, SmtpUsageError
from meta1py.smtp.events import (
    NEED_DATA,
    ConnectionClosed,
    MailParams,
    NeedData,
    RcptParams,
    ReplyReceived,
)
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply

__all__ = ["ClientConnection", "MalformedReplyError", "xtext_encode"]


class MalformedReplyError(SmtpProtocolError):
    """The server sent a reply that is not well-formed (see the module docstring)."""


# Anything but TAB among the C0 controls, and DEL: never in a reply's text (RFC 5321 §4.2, textstring).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


def _show(raw: bytes | bytearray) -> str:
    return repr(bytes(raw[:40])) + ("..." if len(raw) > 40 else "")


class _ReplyReader:
    """Strict, bounded reader of replies from an untrusted server.

    Args:
        max_line_bytes: longest line, CRLF included.
        max_lines: most lines in one reply.
    """

    def __init__(self, max_line_bytes: int, max_lines: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code = 0
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into a reply."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return  # the session is over; nothing more is kept
        self._buf += data
        tail = len(self._buf) - (self._buf.rfind(b"\n") + 1)
        if tail > self.max_line_bytes:
            # A line past the cap without its line end: drop it now rather than buffer up to
            # whatever the server sends; the complete lines before it are still read.
            self._error = f"reply line longer than {self.max_line_bytes} bytes: {_show(self._buf[-tail:])}"
            del self._buf[-tail:]

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None when more bytes are needed.

        Raises:
            MalformedReplyError: the next line is malformed or too long.
        """
        buf = self._buf
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if self._error is not None:
                    raise MalformedReplyError(self._error)
                return None
            if end + 1 > self.max_line_bytes:
                raise MalformedReplyError(f"reply line longer than {self.max_line_bytes} bytes: {_show(buf)}")
            if end == 0 or buf[end - 1] != 0x0D:
                raise MalformedReplyError(f"reply line ends in a bare LF: {_show(buf[: end + 1])}")
            raw = bytes(buf[: end - 1])
            del buf[: end + 1]
            bad = _CONTROL.search(raw)
            if bad is not None:
                what = {0: "a NUL", 13: "a bare CR"}.get(raw[bad.start()], "a control character")
                raise MalformedReplyError(f"reply line contains {what}: {_show(raw)}")
            if (
                len(raw) < 3
                or not raw[:3].isdigit()
                or raw[0] not in b"2345"
                or raw[3:4] not in (b"", b" ", b"-")
            ):
                raise MalformedReplyError(f"reply line without a valid reply code: {_show(raw)}")
            code = int(raw[:3])
            if self._lines and code != self._code:
                raise MalformedReplyError(f"reply code changed inside a multi-line reply: {_show(raw)}")
            self._code = code
            self._lines.append(raw[4:].decode("utf-8", errors="replace"))
            if len(self._lines) > self.max_lines:
                raise MalformedReplyError(f"more than {self.max_lines} lines in one reply")
            if raw[3:4] == b"-":
                continue
            lines, self._lines = self._lines, []
            return _reply(code, lines)


def _reply(code: int, lines: list[str]) -> Reply:
    enhanced: str | None = None
    m = _ENHANCED.match(lines[0])
    if m and int(m.group(1)) == code // 100:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        lines = [line[len(enhanced) :].lstrip(" ") if line.startswith(enhanced) else line for line in lines]
    return Reply(code, enhanced, tuple(lines))


def xtext_encode(text: str) -> str:
    """Encode as RFC 3461 §4 xtext: ``+``, ``=``, controls and non-ASCII as ``+XX``."""
    out = []
    for ch in text.encode("utf-8"):
        if 33 <= ch <= 126 and ch not in (43, 61):
            out.append(chr(ch))
        else:
            out.append(f"+{ch:02X}")
    return "".join(out)


def _path(address: Address | NullPath | str) -> str:
    text = str(address)
    if "\r" in text or "\n" in text or ">" in text.replace('\\">', ""):
        raise ValueError(f"bad address {text!r}")
    return f"<{text}>"


class ClientConnection:
    """Sans-IO SMTP/LMTP client session (see the module docstring).

    Args:
        lmtp: Speak LMTP: per-recipient replies after the content.
        max_reply_line_bytes: Longest reply line accepted from the server, CRLF included
            (default 2,048: four times RFC 5321 §4.5.3.1.5's 512).
        max_reply_lines: Most lines in one reply.
    """

    def __init__(
        self, lmtp: bool = False, max_reply_line_bytes: int = 2048, max_reply_lines: int = 128
    ) -> None:
        self.lmtp = lmtp
        self.extensions: Extensions | None = None
        self._parser = _ReplyReader(max_reply_line_bytes, max_reply_lines)
        self._expected: deque[tuple[str, int | None]] = deque([("GREETING", None)])
        self._eof = False
        self._closed = False
        self._encoder: DotEncoder | None = None
        self._rcpt_sent = 0
        self._accepted: list[int] = []
        self._tls_pending = False

    # --- state --------------------------------------------------------------

    @property
    def pending_replies(self) -> int:
        """Replies still expected (a PIPELINING group is done when this is 0)."""
        return len(self._expected)

    @property
    def accepted_recipients(self) -> tuple[int, ...]:
        """Indices of the recipients accepted in the current transaction."""
        return tuple(self._accepted)

    # --- commands -----------------------------------------------------------

    def _cmd(self, line: str, expect: str, index: int | None = None) -> bytes:
        if self._encoder is not None:
            raise SmtpUsageError("finish the content with end_data() first")
        self._expected.append((expect, index))
        return line.encode("utf-8") + b"\r\n"

    def ehlo(self, domain: str) -> bytes:
        """EHLO (or LHLO in LMTP mode)."""
        verb = "LHLO" if self.lmtp else "EHLO"
        return self._cmd(f"{verb} {domain}", verb)

    def helo(self, domain: str) -> bytes:
        """HELO (plain SMTP fallback after a refused EHLO)."""
        return self._cmd(f"HELO {domain}", "HELO")

    def mail(self, sender: Address | NullPath | str, params: MailParams | None = None) -> bytes:
        """MAIL FROM with the given parameters (only those set are sent)."""
        words = [f"MAIL FROM:{_path(sender)}"]
        if params is not None:
            if params.size is not None:
                words.append(f"SIZE={params.size}")
            if params.body != "7BIT":
                words.append(f"BODY={params.body}")
            if params.smtputf8:
                words.append("SMTPUTF8")
            if params.ret is not None:
                words.append(f"RET={params.ret}")
            if params.envid is not None:
                words.append(f"ENVID={xtext_encode(params.envid)}")
            if params.auth is not None:
                words.append(f"AUTH={xtext_encode(params.auth)}")
        self._rcpt_sent = 0
        self._accepted = []
        return self._cmd(" ".join(words), "MAIL")

    def rcpt(self, recipient: Address | str, params: RcptParams | None = None) -> bytes:
        """RCPT TO; the reply event carries this recipient's index."""
        words = [f"RCPT TO:{_path(recipient)}"]
        if params is not None:
            if params.notify is not None:
                words.append("NOTIFY=" + ",".join(sorted(params.notify)))
            if params.orcpt is not None:
                words.append(f"ORCPT={params.orcpt[0]};{xtext_encode(params.orcpt[1])}")
        index = self._rcpt_sent
        self._rcpt_sent += 1
        return self._cmd(" ".join(words), "RCPT", index)

    def data(self) -> bytes:
        """DATA; send content with :meth:`send_data` once its 354 arrived."""
        return self._cmd("DATA", "DATA")

    def send_data(self, chunk: bytes) -> bytes:
        """Dot-stuff a piece of content (bare CR/LF become CRLF).

        Raises:
            SmtpUsageError: If no 354 was received.
        """
        if self._encoder is None:
            raise SmtpUsageError("send_data() needs a 354 reply to DATA first")
        return self._encoder.encode(chunk)

    def end_data(self) -> bytes:
        """End the content: final CRLF if needed, then ``.CRLF``."""
        if self._encoder is None:
            raise SmtpUsageError("end_data() needs a 354 reply to DATA first")
        out = self._encoder.end()
        self._encoder = None
        self._expected.append(("DATA_END", None))
        return out

    def bdat(self, chunk: bytes, last: bool = False) -> bytes:
        """A BDAT chunk (RFC 3030), sent as is (no dot-stuffing)."""
        head = f"BDAT {len(chunk)} LAST" if last else f"BDAT {len(chunk)}"
        return self._cmd(head, "BDAT_LAST" if last else "BDAT") + chunk

    def rset(self) -> bytes:
        """RSET."""
        self._rcpt_sent = 0
        self._accepted = []
        return self._cmd("RSET", "RSET")

    def noop(self) -> bytes:
        """NOOP."""
        return self._cmd("NOOP", "NOOP")

    def quit(self) -> bytes:
        """QUIT."""
        return self._cmd("QUIT", "QUIT")

    def starttls(self) -> bytes:
        """STARTTLS; after its 220, handshake, then call :meth:`starttls_done`."""
        return self._cmd("STARTTLS", "STARTTLS")

    def starttls_done(self) -> None:
        """The TLS handshake succeeded: forget the extensions, EHLO again."""
        self.extensions = None
        self._tls_pending = False

    def auth(self, mechanism: str, initial_response: str | None = None) -> bytes:
        """AUTH; ``initial_response`` is base64 ("" is sent as ``=``)."""
        line = f"AUTH {mechanism}"
        if initial_response is not None:
            line += f" {initial_response or '='}"
        return self._cmd(line, "AUTH")

    def auth_response(self, line: str) -> bytes:
        """A SASL response line after a 334 challenge."""
        return self._cmd(line, "AUTH")

    # --- replies ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the server; ``b""`` means it closed the connection."""
        if not data:
            self._eof = True
            return
        if self._tls_pending:
            # RFC 3207 §5: nothing may follow the 220 in plaintext.
            raise SmtpProtocolError("data after the 220 to STARTTLS")
        self._parser.feed(data)

    def next_event(self) -> ReplyReceived | ConnectionClosed | NeedData:
        """Return the next reply, ConnectionClosed, or NEED_DATA.

        Raises:
            MalformedReplyError: For malformed or oversized replies.
            SmtpProtocolError: For replies nobody asked for.
        """
        if self._closed:
            return ConnectionClosed()
        reply = self._parser.next_reply()
        if reply is None:
            if self._eof:
                self._closed = True
                return ConnectionClosed()
            return NEED_DATA
        if not self._expected:
            if reply.code == 421:
                return ReplyReceived("UNSOLICITED", reply)
            raise SmtpProtocolError(f"unexpected reply {reply}")
        command, index = self._expected.popleft()
        if command in ("DATA_END", "BDAT_LAST") and self.lmtp and index is None:
            # Expand into one expectation per accepted recipient now that
            # every RCPT reply before it has been seen.
            accepted = self._accepted or [0]
            index = accepted[0]
            for later in reversed(accepted[1:]):
                self._expected.appendleft((command, later))
        positive = reply.code < 400
        if command in ("EHLO", "LHLO") and positive:
            self.extensions = Extensions.parse_ehlo(reply.lines[1:])
        elif command == "HELO" and positive:
            self.extensions = Extensions()
        elif command == "RCPT" and positive and index is not None:
            self._accepted.append(index)
        elif command == "DATA" and reply.code == 354:
            self._encoder = DotEncoder()
        elif command == "STARTTLS" and reply.code == 220:
            if self._parser.buffered:
                raise SmtpProtocolError("data after the 220 to STARTTLS")
            self._tls_pending = True
        if reply.code == 421 or (command == "QUIT" and positive):
            self._expected.clear()
        return ReplyReceived(command, reply, index)
