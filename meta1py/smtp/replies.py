"""SMTP replies: the :class:`Reply` value, every reply meta1py sends, and a reply parser.

Every reply the server or the MTA sends is built here, so texts stay short,
standard and consistent, and every reply carries an RFC 3463 enhanced status
code. The exceptions, on purpose:

* the 220 greeting and the replies to HELO/EHLO/LHLO: RFC 2034 §3 says enhanced
  codes are not used there (the EHLO reply's lines are the extension list);
* 354 (start mail input): an intermediate reply; RFC 2034 does not forbid a code
  but no implementation sends one and clients parse the text loosely, so we
  follow the convention (Postfix, Exim, Sendmail);
* 334 (AUTH challenge): its text is base64 data (RFC 4954 §4).

The client side uses :class:`ReplyParser` to read replies from a server it does
not trust: line length and line count are capped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from meta1py.smtp.errors import SmtpProtocolError

__all__ = [
    "Reply",
    "ReplyParser",
]


_WIRE_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply, possibly multi-line.

    Attributes:
        code: The three-digit reply code (200..599, or 334/354 intermediates).
        enhanced: The RFC 3463 enhanced status code ("2.0.0"), or None.
        lines: The texts of the lines, without code and enhanced code; at least one.
    """

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if not self.lines:
            raise ValueError("a reply has at least one line")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain CR or LF")

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx (completion and intermediate) replies."""
        return self.code < 400

    @property
    def is_intermediate(self) -> bool:
        """True for 3xx replies (354 go ahead, 334 AUTH challenge)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """True for 4xx replies (try again later)."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """True for 5xx replies (do not retry)."""
        return self.code >= 500

    @property
    def text(self) -> str:
        """All lines joined by newlines (for logs and bounces)."""
        return "\n".join(self.lines)

    def to_bytes(self) -> bytes:
        """Encode the reply as it goes on the wire (RFC 5321 §4.2.1).

        Every line but the last uses ``code-``, the last ``code SP``; the
        enhanced code prefixes every line (RFC 2034 §4).
        """
        # Adapters send the same Reply objects again and again: look them up
        # by identity first, which avoids hashing the dataclass's fields.
        hit = _WIRE_BY_ID.get(id(self))
        if hit is not None and hit[0] is self:
            return hit[1]
        cached = _WIRE_CACHE.get(self)
        if cached is not None:
            _remember(self, cached)
            return cached
        code = str(self.code)
        prefix = f"{self.enhanced} " if self.enhanced else ""
        last = len(self.lines) - 1
        out = [f"{code}{' ' if i == last else '-'}{prefix}{line}\r\n" for i, line in enumerate(self.lines)]
        data = "".join(out).encode("utf-8")
        # Most replies are the same few values over and over (250 Ok, 354, ...): encode each once.
        if len(_WIRE_CACHE) >= _WIRE_CACHE_MAX:
            _WIRE_CACHE.clear()
        _WIRE_CACHE[self] = data
        _remember(self, data)
        return data

    def __str__(self) -> str:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {prefix}{' / '.join(self.lines)}"


_WIRE_CACHE: dict[Reply, bytes] = {}
# id(reply) -> (reply, wire bytes). The entry holds the reply itself, so its id
# cannot be reused by another object while the entry exists.
_WIRE_BY_ID: dict[int, tuple[Reply, bytes]] = {}


def _remember(reply: Reply, data: bytes) -> None:
    if len(_WIRE_BY_ID) >= _WIRE_CACHE_MAX:
        _WIRE_BY_ID.clear()
    _WIRE_BY_ID[id(reply)] = (reply, data)


def _r(code: int, enhanced: str | None, *lines: str) -> Reply:
    return Reply(code, enhanced, tuple(lines))


def _clean(text: str) -> str:
    """Make peer-influenced text safe for a reply line (no CR/LF, bounded)."""
    return text.replace("\r", " ").replace("\n", " ")[:200]


# --- connection -------------------------------------------------------------


def greeting(hostname: str, banner: str = "ESMTP meta1py") -> Reply:
    """220 greeting (no enhanced code: RFC 2034 §3)."""
    return _r(220, None, f"{_clean(hostname)} {_clean(banner)}")


def greeting_rejected(hostname: str) -> Reply:
    """554 greeting: the server will not talk to this client (RFC 5321 §3.1)."""
    return _r(554, "5.7.1", f"{_clean(hostname)} No SMTP service here")


def ehlo(hostname: str, extensions: Iterable[str], greeting_text: str | None = None) -> Reply:
    """250 reply to EHLO/LHLO: hostname line, then one line per extension."""
    first = _clean(hostname) if greeting_text is None else f"{_clean(hostname)} {greeting_text}"
    return Reply(250, None, (first, *extensions))


def helo(hostname: str) -> Reply:
    """250 reply to HELO."""
    return _r(250, None, _clean(hostname))


def closing(hostname: str | None = None) -> Reply:
    """221 reply to QUIT."""
    return _r(221, "2.0.0", "Bye" if hostname is None else f"{_clean(hostname)} Bye")


def shutting_down() -> Reply:
    """421: the server is shutting down."""
    return _r(421, "4.3.2", "Service shutting down, closing connection")


def too_many_sessions() -> Reply:
    """421: connection limit reached."""
    return _r(421, "4.7.0", "Too many connections, try again later")


def timeout() -> Reply:
    """421: the client was idle too long (RFC 5321 §4.5.3.2)."""
    return _r(421, "4.4.2", "Timeout exceeded, closing connection")


def too_many_errors() -> Reply:
    """421: too many bad commands in this session."""
    return _r(421, "4.7.0", "Too many errors, closing connection")


# --- generic ----------------------------------------------------------------


def ok(text: str = "Ok") -> Reply:
    """250 2.0.0 for NOOP, RSET and the like."""
    return _r(250, "2.0.0", text)


def sender_ok() -> Reply:
    """250 2.1.0 reply to MAIL."""
    return _r(250, "2.1.0", "Ok")


def recipient_ok() -> Reply:
    """250 2.1.5 reply to RCPT."""
    return _r(250, "2.1.5", "Ok")


def queued(queue_id: str) -> Reply:
    """250 reply to the end of data: the message is on stable storage."""
    return _r(250, "2.0.0", f"Ok: queued as {_clean(queue_id)}")


def data_start() -> Reply:
    """354 go ahead (no enhanced code by convention; see the module docstring)."""
    return _r(354, None, "End data with <CR><LF>.<CR><LF>")


def bdat_ok(size: int) -> Reply:
    """250 reply to an intermediate BDAT chunk."""
    return _r(250, "2.0.0", f"Ok: {size} octets received")


def start_tls() -> Reply:
    """220 reply to STARTTLS (RFC 3207)."""
    return _r(220, "2.0.0", "Ready to start TLS")


def help_text() -> Reply:
    """214 reply to HELP."""
    return _r(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")


def cannot_vrfy() -> Reply:
    """252: we do not verify addresses (RFC 5321 §3.5.3)."""
    return _r(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")


def expn_disabled() -> Reply:
    """502 for EXPN (lists are not disclosed)."""
    return _r(502, "5.5.1", "EXPN not available")


def auth_ok() -> Reply:
    """235 successful authentication (RFC 4954)."""
    return _r(235, "2.7.0", "Authentication successful")


def auth_challenge(data: str = "") -> Reply:
    """334 SASL challenge; ``data`` is base64 (no enhanced code: RFC 4954 §4)."""
    return _r(334, None, data)


def auth_failed() -> Reply:
    """535 authentication credentials invalid."""
    return _r(535, "5.7.8", "Authentication credentials invalid")


def auth_cancelled() -> Reply:
    """501 the client cancelled the SASL exchange with ``*``."""
    return _r(501, "5.7.0", "Authentication cancelled")


def auth_mechanism_unknown() -> Reply:
    """504 unrecognised authentication mechanism."""
    return _r(504, "5.5.4", "Unrecognized authentication type")


def auth_required() -> Reply:
    """530 authentication required."""
    return _r(530, "5.7.0", "Authentication required")


def encryption_required() -> Reply:
    """530 must issue STARTTLS first."""
    return _r(530, "5.7.0", "Must issue a STARTTLS command first")


def tls_unavailable() -> Reply:
    """454 TLS not available."""
    return _r(454, "4.7.0", "TLS not available due to temporary reason")


# --- transaction refusals (policy: built here, chosen by smtps) -------------


def relay_denied(recipient: str) -> Reply:
    """554 relaying refused."""
    return _r(554, "5.7.1", f"<{_clean(recipient)}>: Relay access denied")


def user_unknown(recipient: str) -> Reply:
    """550 unknown local recipient."""
    return _r(550, "5.1.1", f"<{_clean(recipient)}>: Recipient address rejected: User unknown")


def sender_rejected(sender: str) -> Reply:
    """553 sender address refused by policy."""
    return _r(553, "5.7.1", f"<{_clean(sender)}>: Sender address rejected")


def too_many_recipients() -> Reply:
    """452 too many recipients (RFC 5321 §4.5.3.1.10: the client retries the rest)."""
    return _r(452, "4.5.3", "Too many recipients")


def message_too_big() -> Reply:
    """552 message exceeds the size limit."""
    return _r(552, "5.3.4", "Message size exceeds fixed limit")


def line_too_long_in_data() -> Reply:
    """552: a text line of the message exceeds the line limit (RFC 5321 §4.5.3.1.6)."""
    return _r(552, "5.3.4", "Message line too long")


def insufficient_storage() -> Reply:
    """452 insufficient system storage."""
    return _r(452, "4.3.1", "Insufficient system storage")


def local_error() -> Reply:
    """451 local error in processing."""
    return _r(451, "4.3.0", "Local error in processing, try again later")


def temp_failure(text: str = "Temporary failure, try again later") -> Reply:
    """450/451-class temporary policy failure (e.g. DNS lookup failed)."""
    return _r(451, "4.4.3", _clean(text))


def no_valid_recipients() -> Reply:
    """554 DATA/BDAT without any accepted recipient (RFC 5321 §3.3, RFC 2920 §3.1)."""
    return _r(554, "5.5.1", "No valid recipients")


def bare_newline() -> Reply:
    """550 message contains a bare CR, bare LF or NUL (anti-smuggling)."""
    return _r(550, "5.6.0", "Message contains bare CR or LF or NUL, rejected")


def too_many_hops() -> Reply:
    """554 the message has more Received: lines than ``max_hops`` (RFC 5321 §6.3: a loop)."""
    return _r(554, "5.4.6", "Too many hops: mail forwarding loop")


def too_many_auth_failures() -> Reply:
    """421 after too many failed AUTH attempts.

    421 closes the session (RFC 5321 §3.8); 4.7.0: a temporary security refusal (RFC 4954 §6).
    """
    return _r(421, "4.7.0", "Too many authentication failures, try again later")


def too_many_messages_in_session() -> Reply:
    """421 after ``max_messages_per_session`` (the client reconnects for the rest; Exim's
    smtp_accept_max_per_connection)."""
    return _r(421, "4.7.0", "Too many messages in one session, reconnect to send more")


def too_many_recipients_in_session() -> Reply:
    """450 after ``max_recipients_per_session`` (the client retries these later)."""
    return _r(450, "4.7.1", "Too many recipients in one session, try the rest later")


def too_much_mail(who: str) -> Reply:
    """450 over ``message_rate_per_client``/``_per_user`` (Postfix's wording)."""
    return _r(450, "4.7.1", f"Error: too much mail from {_clean(who)}")


def too_many_recipients_from(who: str) -> Reply:
    """450 over ``recipient_rate_per_client``/``_per_user`` (Postfix's wording)."""
    return _r(450, "4.7.1", f"Error: too many recipients from {_clean(who)}")


def auth_data_undecodable() -> Reply:
    """501 the client's SASL response is not valid base64 (RFC 4954 §4)."""
    return _r(501, "5.5.2", "Cannot decode the authentication data")


# --- policy decisions without a reply of their own (smtps stages) -----------


def policy_tempfail_greeting(hostname: str) -> Reply:
    """421 at connect: a policy check failed temporarily (the greeting can only be 421, RFC 5321 §3.1)."""
    return _r(421, "4.7.0", f"{_clean(hostname)} Service temporarily unavailable, closing connection")


def policy_tempfail() -> Reply:
    """451 4.7.1: a policy check failed temporarily (a map or DNS lookup); the client retries."""
    return _r(451, "4.7.1", "Temporarily refused by policy, try again later")


def policy_held() -> Reply:
    """451 4.7.1 at the end of data: policy holds the message, which qmgr cannot queue on hold."""
    return _r(451, "4.7.1", "Message held by policy, try again later")


# --- protocol errors (chosen by the core) -----------------------------------


def bad_sequence(text: str = "Bad sequence of commands") -> Reply:
    """503 command out of order."""
    return _r(503, "5.5.1", text)


def syntax_error(text: str = "Syntax error, command unrecognized") -> Reply:
    """500 unrecognised command."""
    return _r(500, "5.5.2", text)


def line_too_long() -> Reply:
    """500 command line too long (RFC 5321 §4.5.3.1.4)."""
    return _r(500, "5.5.2", "Line too long")


def line_too_long_close() -> Reply:
    """421: a command line went on past the hard limit without its line end; the session ends."""
    return _r(421, "4.7.0", "Line too long, closing connection")


def command_too_slow() -> Reply:
    """421: one command line took longer than command_time_limit (a slow-drip client)."""
    return _r(421, "4.4.2", "Command line took too long, closing connection")


def data_too_slow() -> Reply:
    """421: the message data arrived slower than min_data_rate allows."""
    return _r(421, "4.4.2", "Data rate too low, closing connection")


def pregreet() -> Reply:
    """554: the client talked before the greeting (RFC 5321 §4.3.1: the client waits for it)."""
    return _r(554, "5.5.1", "Protocol error: talking before the greeting")


def too_many_sessions_client() -> Reply:
    """421: this client (or its network) has too many sessions or connects too often."""
    return _r(421, "4.7.0", "Too many connections from your host, try again later")


_RELAYED_ENHANCED = re.compile(r"[45]\.\d{1,3}\.\d{1,3}")


def relayed(code: int, enhanced: str | None, text: str) -> Reply:
    """A reply another process decided (qmgr refusing a commit): its code and text, cleaned."""
    if not 400 <= code < 600:
        code, enhanced = 451, "4.3.0"
    if enhanced is None or not _RELAYED_ENHANCED.fullmatch(enhanced) or enhanced[0] != str(code)[0]:
        enhanced = f"{code // 100}.0.0"  # every reply carries an enhanced code of its own class
    return _r(code, enhanced, _clean(text) or "Refused")


def bare_newline_in_command() -> Reply:
    """500 command line ended with a bare LF."""
    return _r(500, "5.5.2", "Syntax error, bare <LF> received")


def syntax_params(text: str = "Syntax error in parameters or arguments") -> Reply:
    """501 bad arguments."""
    return _r(501, "5.5.4", text)


def not_implemented(text: str = "Command not implemented") -> Reply:
    """502 known but unsupported command."""
    return _r(502, "5.5.1", text)


def param_not_implemented(text: str = "Parameter not recognized or not implemented") -> Reply:
    """555 unknown MAIL/RCPT parameter (RFC 5321 §4.2.2)."""
    return _r(555, "5.5.4", text)


def param_not_implemented_504(text: str = "Command parameter not implemented") -> Reply:
    """504 command parameter not implemented."""
    return _r(504, "5.5.4", text)


def bad_address_syntax(text: str = "Bad address syntax") -> Reply:
    """501 address syntax error."""
    return _r(501, "5.1.3", text)


def bad_address_not_allowed(text: str = "Mailbox name not allowed") -> Reply:
    """553 address not allowed (e.g. non-ASCII without SMTPUTF8)."""
    return _r(553, "5.1.3", text)


def message_too_big_declared() -> Reply:
    """552 the declared SIZE exceeds the limit (RFC 1870)."""
    return _r(552, "5.3.4", "Message size exceeds fixed maximum message size")


def smtputf8_required() -> Reply:
    """553 internationalised address without SMTPUTF8 (RFC 6531 §3.5)."""
    return _r(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")


# --- parsing (client side) --------------------------------------------------

# RFC 3463: class "." subject "." detail; the class must agree with the code.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class ReplyParser:
    """Incremental parser for replies from an untrusted server.

    Feed bytes with :meth:`feed`; complete replies come out of :meth:`next_reply`.

    Args:
        max_line_bytes: Longest reply line accepted (RFC 5321 §4.5.3.1.5 says
            512; we allow more because real servers exceed it).
        max_lines: Most lines in one multi-line reply.

    Raises:
        SmtpProtocolError: From :meth:`next_reply` for malformed or oversized replies.
    """

    def __init__(self, max_line_bytes: int = 2048, max_lines: int = 128) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self._buf = bytearray()
        self._lines: list[tuple[int, str]] = []

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into a reply."""
        return len(self._buf)

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None if more bytes are needed."""
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line_bytes:
                    raise SmtpProtocolError("reply line too long")
                return None
            if end + 1 > self.max_line_bytes:
                raise SmtpProtocolError("reply line too long")
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            # Be lenient about a bare LF line end: it cannot hurt a client.
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) < 3 or not raw[:3].isdigit() or raw[0] not in b"2345":
                raise SmtpProtocolError(f"malformed reply line {raw[:40]!r}")
            code = int(raw[:3])
            sep = raw[3:4]
            if sep not in (b"", b" ", b"-"):
                raise SmtpProtocolError(f"malformed reply line {raw[:40]!r}")
            if self._lines and self._lines[0][0] != code:
                raise SmtpProtocolError("reply code changed inside a multi-line reply")
            text = raw[4:].decode("utf-8", errors="replace").replace("\r", " ")
            self._lines.append((code, text))
            if len(self._lines) > self.max_lines:
                raise SmtpProtocolError("too many lines in a reply")
            if sep == b"-":
                continue
            lines = [t for _, t in self._lines]
            self._lines = []
            return _build_parsed(code, lines)


def _build_parsed(code: int, lines: list[str]) -> Reply:
    enhanced: str | None = None
    m = _ENHANCED.match(lines[0])
    if m and int(m.group(1)) == code // 100:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        stripped = []
        for line in lines:
            if line.startswith(enhanced):
                line = line[len(enhanced) :].lstrip(" ")
            stripped.append(line)
        lines = stripped
    if not 200 <= code <= 599:  # 1xx cannot occur: first digit checked by caller
        raise SmtpProtocolError(f"reply code out of range: {code}")
    return Reply(code, enhanced, tuple(lines))


def parse_reply(data: bytes) -> Reply:
    """Parse one complete reply (convenience for tests and tools).

    Raises:
        SmtpProtocolError: If ``data`` is not exactly one well-formed reply.
    """
    parser = ReplyParser()
    parser.feed(data)
    reply = parser.next_reply()
    if reply is None or parser.buffered:
        raise SmtpProtocolError("not exactly one reply")
    return reply
