"""The server side of the SMTP core: bytes in, events out; replies in, bytes out.

Usage by an adapter (smtps)::

    conn = ServerConnection("mx.example.org", extensions=Extensions.all())
    out = conn.send(replies.greeting("mx.example.org"))
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            write(out); out = b""          # flush pipelined replies (RFC 2920)
            conn.receive_data(read())      # b"" on EOF
            continue
        if isinstance(event, ConnectionClosed):
            break
        out += conn.send(answer(event))    # exactly one reply per command event

Rules the adapter follows:

* Each command event owes one reply (LMTP end of data: one per accepted
  recipient); :class:`~meta1py.smtp.events.DataChunk` and
  :class:`~meta1py.smtp.events.Bdat` owe none. Calling :meth:`next_event`
  while a reply is owed raises :class:`SmtpUsageError`.
* The state moves only with the replies sent: a MAIL answered 250 opens the
  transaction, a MAIL answered 550 does not.
* A 421 reply may be sent at any time; it closes the session.
* STARTTLS: after sending 220, the adapter does the TLS handshake and calls
  :meth:`starttls_done`. Input received before the 220 and not yet parsed
  (pipelined after STARTTLS: the plaintext injection attack, CVE-2011-0411)
  is discarded when the 220 is sent; :attr:`discarded_after_starttls` says
  how many octets, so the adapter can log it and close if it wants to.
* AUTH: answer :class:`Auth` with a 334 (``replies.auth_challenge``) to get an
  :class:`AuthResponse`; on success call :meth:`auth_done` and send 235.

No input makes this class raise anything: peer errors come out as
:class:`~meta1py.smtp.events.InvalidCommand` events carrying the reply.

Speed (``bench/smtp_core.py``; the core must never be the MTA's bottleneck):

* What depends only on the extensions, the message size limit and LMTP mode
  lives in a shared profile, built once per listener configuration: the EHLO
  replies and a bounded cache of parsed commands. A HELO/EHLO/LHLO, MAIL,
  RCPT, DATA, RSET, NOOP or QUIT line seen before in the same context (EHLO
  or HELO, SMTPUTF8 transaction or not) yields the same immutable event
  without being parsed again; the checks that depend on the session (state,
  recipient limit, BODY=BINARYMIME before DATA) run every time. The limits
  and ``lmtp`` given to the constructor are therefore fixed for the session.
* The usual command line (complete, CRLF-terminated, short) is read and
  looked up in :meth:`next_event` itself; everything else takes the general
  path in ``_next_command``. ``tests/unit/smtp/test_fast_paths.py`` proves
  that both paths give the same replies and events.
* Real traffic has a new sender and new recipients in nearly every
  transaction, so most MAIL and RCPT lines miss the cache. The usual ones
  (``MAIL FROM:<local@domain>`` with SIZE and BODY=7BIT/8BITMIME, ``RCPT
  TO:<local@domain>``; dot-string local part, host name domain) are parsed
  by one regex match that builds the event directly (``_fast_mail_rcpt``);
  anything else, and anything that would be refused, takes the general
  parser. These lines are cached from their second sighting on: caching
  every one kept thousands of never-reused events alive for the garbage
  collector to walk. ``tests/unit/smtp/test_fast_commands.py`` proves the
  fast path equal to the general parser on generated near misses.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from meta1py.envelope import DSN_RETS, NOTIFY_KEYWORDS
from meta1py.smtp import replies
from meta1py.smtp.address import (
    _ATEXT,
    _LETDIG,
    MAX_LOCAL_BYTES,
    MAX_PATH_BYTES,
    Address,
    match_path,
    parse_path,
)
from meta1py.smtp.dotstuff import BareNewline, BdatDecoder, ContentChecker, DotDecoder
from meta1py.smtp.errors import SmtpProtocolError, SmtpUsageError
from meta1py.smtp.events import (
    NEED_DATA,
    Auth,
    AuthResponse,
    Bdat,
    BdatChunkEnd,
    ConnectionClosed,
    DataChunk,
    DataStart,
    Ehlo,
    EndOfData,
    Event,
    Expn,
    Helo,
    Help,
    InvalidCommand,
    Lhlo,
    MailFrom,
    MailParams,
    NeedData,
    Noop,
    Quit,
    RcptParams,
    RcptTo,
    Rset,
    StartTls,
    Vrfy,
)
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import _WIRE_BY_ID, Reply
from meta1py.smtp.state import FAIL, LEGAL, MORE, NEXT, OK, State

__all__ = ["ServerConnection"]

MiB = 1024 * 1024
# RFC 4954 §4: an AUTH command or response line may be up to 12288 octets.
AUTH_LINE_BYTES = 12288

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_BDAT = re.compile(r"(\d{1,15})(?: +(LAST))? *\Z", re.IGNORECASE)
_NOTIFY = NOTIFY_KEYWORDS - {"NEVER"}  # NEVER stands alone
_EHLO_CACHE_MAX = 256
# Parsed commands kept per profile (see _Profile), and profiles kept.
_PARSED_MAX = 2048
_PROFILES_MAX = 64
_HELLO_VERBS = frozenset({"EHLO", "HELO", "LHLO"})

# Enum member lookups (State.X) go through the enum metaclass on every use:
# the hot paths below use these module constants instead.
_START = State.START
_REJECTED = State.REJECTED
_READY = State.READY
_MAIL = State.MAIL
_RCPT = State.RCPT
_DATA = State.DATA
_BDAT_ST = State.BDAT
_AUTH = State.AUTH
_TLS = State.TLS
_CLOSED = State.CLOSED
_INIT = State.INIT

# What a reply answers -> the states where its command is legal, for the
# commands whose event depends only on the line, EHLO/HELO, SMTPUTF8 and the
# profile (extensions, size limit, LMTP): these are cached (see _Profile).
# RCPT's recipient limit and DATA's BODY=BINARYMIME refusal are checked
# separately, and DATA is only taken from the cache in RCPT (in MAIL it gets
# 554). BDAT, AUTH, STARTTLS, VRFY, EXPN and HELP are not cached (rare, or
# their checks depend on more).
assert LEGAL["EHLO"] == LEGAL["HELO"] == LEGAL["LHLO"]
assert _RCPT in LEGAL["DATA"]
_CACHEABLE: dict[str, frozenset[State]] = {
    "HELLO": LEGAL["EHLO"],
    "MAIL": LEGAL["MAIL"],
    "RCPT": LEGAL["RCPT"],
    "DATA": frozenset({_RCPT}),
    "RSET": LEGAL["RSET"],
    "NOOP": LEGAL["NOOP"],
    "QUIT": LEGAL["QUIT"],
}


def _anycase(text: str) -> str:
    """A regex matching ``text`` with its ASCII letters in any case.

    Used instead of re.IGNORECASE, which in a str pattern also folds some
    non-ASCII letters onto ASCII ones (U+212A KELVIN SIGN matches ``k``,
    U+0130 matches ``i``); the general parser's ``str.upper()`` does not.
    """
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in text)


# The usual MAIL and RCPT lines (see ServerConnection._fast_mail_rcpt): a
# dot-string local part and a host name, as address.py's path grammar has
# them without the UTF-8 ranges. Groups: MAIL local, domain, SIZE, BODY;
# RCPT local, domain. A label is written as letter-digit runs joined by
# hyphen runs (the same strings as address.py's "[a-z0-9]([a-z0-9-]*[a-z0-9])?"),
# and the quantifiers are possessive: the grammar is unambiguous, so
# backtracking could never find another match, and not offering it made the
# match a third faster. A repeated *group* is made atomic with (?>(?:...)*)
# rather than the possessive (?:...)*+: CPython 3.11.0-3.11.2 (Debian 12's
# python3.11) mis-handle possessive group repeats and let "<a.@b>" through
# (gh-101955, fixed in 3.11.3); atomic groups are right on every 3.11.
_FAST_ATOM = f"[{_ATEXT}]++"
_FAST_SUB = rf"[{_LETDIG}]++(?>(?:-++[{_LETDIG}]++)*)"
_FAST_MAILBOX = rf" *+<({_FAST_ATOM}(?>(?:\.{_FAST_ATOM})*))@({_FAST_SUB}(?>(?:\.{_FAST_SUB})*))>"
_FAST_MAIL_RCPT = re.compile(
    rf"(?:{_anycase('MAIL FROM:')}{_FAST_MAILBOX}"
    rf"(?: {_anycase('SIZE=')}([0-9]{{1,20}}))?"
    rf"(?: {_anycase('BODY=')}({_anycase('7BIT')}|{_anycase('8BITMIME')}))?"
    rf"|{_anycase('RCPT TO:')}{_FAST_MAILBOX})\Z"
).match
assert _FAST_MAIL_RCPT("MAIL FROM:<a@b>") is not None and _FAST_MAIL_RCPT("x") is None
assert _FAST_MAIL_RCPT("RCPT TO:<a.@b>") is None and _FAST_MAIL_RCPT("RCPT TO:<a@b->") is None
assert _FAST_MAIL_RCPT("RCPT TO:<a@a.>") is None and _FAST_MAIL_RCPT("RCPT TO:<a@b.c.>") is None
# "<" local "@" domain ">" is at most MAX_PATH_BYTES + 2 octets (parse_path).
_MAX_PATH_INNER = MAX_PATH_BYTES + 2 - 3
_MAIL_LEGAL = _CACHEABLE["MAIL"]
_RCPT_LEGAL = _CACHEABLE["RCPT"]
assert _MAIL_LEGAL == frozenset({_READY}) and _RCPT_LEGAL == frozenset({_MAIL, _RCPT})

# Events without fields are immutable and all equal: share one of each.
_DATA_START = DataStart()
_RSET = Rset()
_NOOP = Noop()
_QUIT = Quit()
_STARTTLS = StartTls()
_END_OK = EndOfData(None)
_PLAIN_MAIL = MailParams()
# States in which next_event() reads a command line (when no BDAT chunk is open).
_COMMAND_STATES = frozenset(State) - {_START, _TLS, _DATA, _CLOSED}


def _xtext_decode(value: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` hex escapes).

    Raises:
        SmtpProtocolError: On malformed xtext.
    """
    if not _XTEXT.match(value):
        raise SmtpProtocolError("bad xtext", replies.syntax_params("Bad xtext value"))
    if "+" not in value:
        return value
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


class _Profile:
    """What all sessions with the same extensions, message size limit and LMTP mode share.

    Built once per listener configuration rather than per connection, so that
    constructing a :class:`ServerConnection` stays cheap.

    Attributes:
        extensions: The extensions (held, so that its ``id`` stays unique).
        ehlo: EHLO replies by (hostname, TLS active, authenticated).
        parsed: Successfully parsed commands (those in ``_CACHEABLE``) by
            (command line without CRLF, EHLO used, SMTPUTF8 transaction), as
            (what the reply answers, states where the command is legal,
            event). The events are immutable, so identical lines from any
            session can share one. Only the parse is cached: the state and
            recipient limit checks run every time. Bounded by ``_PARSED_MAX``.
        seen: Hashes of the MAIL/RCPT lines the fast path parsed once and did
            not cache yet (see ``ServerConnection._fast_mail_rcpt``). Bounded
            by ``_PARSED_MAX``.
    """

    __slots__ = ("ehlo", "extensions", "parsed", "seen")

    def __init__(self, extensions: Extensions) -> None:
        self.extensions = extensions
        self.ehlo: dict[tuple[str, bool, bool], Reply] = {}
        self.parsed: dict[tuple[bytes, bool, bool], tuple[str, frozenset[State], Event]] = {}
        self.seen: set[int] = set()


# (extensions, max_message_bytes, lmtp) -> profile. Keyed by value: smtps builds an
# equal Extensions for every session of a listener, and they must share one profile.
_PROFILES: dict[tuple[Extensions, int, bool], _Profile] = {}


def _profile(extensions: Extensions, max_message_bytes: int, lmtp: bool) -> _Profile:
    key = (extensions, max_message_bytes, lmtp)
    prof = _PROFILES.get(key)
    if prof is None:
        if len(_PROFILES) >= _PROFILES_MAX:
            _PROFILES.clear()
        prof = _PROFILES[key] = _Profile(extensions)
    return prof


class ServerConnection:
    """Sans-IO SMTP/LMTP server session (see the module docstring).

    Args:
        hostname: Our name, used in EHLO replies.
        extensions: What EHLO advertises and therefore what the core accepts
            (default: nothing, i.e. plain RFC 5321). Its ``size`` field is
            advertised as is; ``max_message_bytes`` is what is enforced.
        max_command_bytes: Longest command line including CRLF (512, RFC 5321
            §4.5.3.1.4). AUTH lines may be 12288 (RFC 4954). A longer line
            is read to its end, discarded, and answered 500 5.5.2.
        max_command_hard_bytes: A command line still without its line end
            after this many octets (65536) is not waited for: the core
            answers 421 4.7.0 at once and closes (an endless line is an
            attack or a broken client, and nothing useful follows it).
        max_line_bytes: Longest content line including CRLF (1000, RFC 5321
            §4.5.3.1.6); longer lines reject the message with 552 5.3.4.
        max_recipients: Accepted recipients per transaction (1000); more get
            452 4.5.3.
        max_bad_commands: Bad commands per session before 421 (20).
        max_message_bytes: Largest message (10 MiB); larger get 552 5.3.4.
        bare_newline: "reject" (550 5.6.0, default) or "normalize" bare CR/LF
            in content; also applies to command lines ended by a bare LF.
        lmtp: Speak LMTP (RFC 2033): LHLO instead of HELO/EHLO, one reply per
            accepted recipient after the content.
    """

    # Slots: Python 3.11 specialises attribute access on slots, and the hot
    # paths read a dozen attributes per command.
    __slots__ = (
        "_bdat",
        "_buf",
        "_chunk_active",
        "_chunk_last",
        "_chunk_refusal",
        "_chunk_skip",
        "_dot",
        "_eof",
        "_owed",
        "_owed_count",
        "_owed_event",
        "_parsed",
        "_pos",
        "_profile",
        "_seen",
        "_skipped",
        "_skipping",
        "_state",
        "authenticated",
        "bad_commands",
        "bare_newline",
        "discarded_after_starttls",
        "esmtp",
        "extensions",
        "helo_domain",
        "hostname",
        "lmtp",
        "mail_params",
        "max_bad_commands",
        "max_command_bytes",
        "max_command_hard_bytes",
        "max_line_bytes",
        "max_message_bytes",
        "max_recipients",
        "recipients_accepted",
        "tls_active",
    )

    def __init__(
        self,
        hostname: str,
        *,
        extensions: Extensions | None = None,
        max_command_bytes: int = 512,
        max_command_hard_bytes: int = 65536,
        max_line_bytes: int = 1000,
        max_recipients: int = 1000,
        max_bad_commands: int = 20,
        max_message_bytes: int = 10 * MiB,
        bare_newline: BareNewline = "reject",
        lmtp: bool = False,
    ) -> None:
        if bare_newline not in ("reject", "normalize"):
            raise ValueError(f"bare_newline must be 'reject' or 'normalize', not {bare_newline!r}")
        self.hostname = hostname
        self.extensions = extensions if extensions is not None else Extensions()
        self.max_command_bytes = max_command_bytes
        self.max_command_hard_bytes = max_command_hard_bytes
        self.max_line_bytes = max_line_bytes
        self.max_recipients = max_recipients
        self.max_bad_commands = max_bad_commands
        self.max_message_bytes = max_message_bytes
        self.bare_newline: BareNewline = bare_newline
        self.lmtp = lmtp

        self._profile = _profile(self.extensions, max_message_bytes, lmtp)
        self._parsed = self._profile.parsed
        self._seen = self._profile.seen

        self._state = _START
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._skipping = False  # discarding the rest of an overlong command line
        self._skipped = 0  # octets of the overlong line discarded so far
        self._owed: str | None = None  # what the owed reply answers (state.py names)
        self._owed_count = 0
        self._owed_event: Event | None = None
        self.bad_commands = 0
        self.discarded_after_starttls = 0

        # Session facts, set by replies sent.
        self.esmtp = False
        self.helo_domain: str | None = None
        self.tls_active = False
        self.authenticated: str | None = None

        # The mail transaction.
        self.mail_params: MailParams | None = None
        self.recipients_accepted = 0
        self._dot: DotDecoder | None = None
        self._bdat: BdatDecoder | None = None
        self._chunk_active = False  # inside the octets of a BDAT chunk
        self._chunk_last = False
        self._chunk_refusal: Reply | None = None
        self._chunk_skip = 0

    # --- public API ---------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (see :mod:`meta1py.smtp.state`)."""
        return self._state

    @property
    def pending_input(self) -> int:
        """Octets received and not yet turned into events."""
        return len(self._buf) - self._pos

    @property
    def receiving_line(self) -> bool:
        """True while part of a command line (or of an overlong one being skipped) has arrived.

        An adapter uses it to bound the time one command line may take, whatever the pace of its
        octets (a client sending one octet every few seconds resets every idle timeout).
        """
        if self._skipping:
            return True
        return self._state in _COMMAND_STATES and not self._chunk_active and self._pos < len(self._buf)

    @property
    def reply_owed(self) -> bool:
        """True while the last event still waits for its reply."""
        return self._owed is not None

    def receive_data(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self._state is _CLOSED:
            return
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        else:
            self._buf += data

    def next_event(self) -> Event | NeedData:
        """Return the next event, or NEED_DATA.

        Raises:
            SmtpUsageError: If a reply is owed, the greeting was not sent yet
                or the TLS handshake is pending.
        """
        if self._owed is not None:
            raise SmtpUsageError(f"a reply to {self._owed} is owed")
        st = self._state
        if st not in _COMMAND_STATES or self._chunk_active:
            if st is _CLOSED:
                return ConnectionClosed()
            if st is _START:
                raise SmtpUsageError("send the greeting first")
            if st is _TLS:
                raise SmtpUsageError("call starttls_done() after the TLS handshake")
            if self._chunk_active:
                return self._next_chunk()
            return self._next_data()
        # A command line. The common case (a whole line ending in CRLF, not
        # too long, not being skipped) is handled here without further calls:
        # this runs for every command.
        buf = self._buf
        pos = self._pos
        nl = buf.find(b"\n", pos)
        if (
            nl < 0
            or self._skipping
            or nl >= pos + self.max_command_bytes
            or nl == pos
            or buf[nl - 1] != 13
            or st is _AUTH
        ):
            return self._next_command()
        self._pos = nl + 1
        raw = buf[pos : nl - 1]
        mp = self.mail_params
        key = (raw, self.esmtp, mp is not None and mp.smtputf8)
        hit = self._parsed.get(key)
        if hit is not None:
            answered, legal, ev = hit
            if st in legal and (
                self.recipients_accepted < self.max_recipients
                if answered == "RCPT"
                else answered != "DATA" or mp is None or mp.body != "BINARYMIME"
            ):
                self._owed = answered
                self._owed_event = ev
                self._owed_count = 1
                return ev
        # A line not in the cache: the usual MAIL and RCPT lines have a parser
        # of their own (see _fast_mail_rcpt), everything else the general one.
        fast = self._fast_mail_rcpt(raw, st, key)
        if fast is not None:
            return fast
        return self._command_line(raw, st, key)

    def send(self, reply: Reply) -> bytes:
        """Record a reply and return its bytes.

        Raises:
            SmtpUsageError: If no reply is owed (except the greeting and 421).
        """
        answered = self._owed
        if answered is None:
            if self._state is _START:
                self._transition("GREETING", reply)
            elif reply.code == 421:
                self._transition("UNSOLICITED", reply)
            else:
                raise SmtpUsageError("no reply is owed")
            return reply.to_bytes()
        if self._owed_count > 1 and reply.code != 421:
            self._owed_count -= 1
        else:
            # _owed_count is only read while a reply is owed: no reset needed.
            self._owed = None
            self._transition(answered, reply)
        # Reply.to_bytes() inlined for the usual case of a reply sent before.
        hit = _WIRE_BY_ID.get(id(reply))
        if hit is not None and hit[0] is reply:
            return hit[1]
        return reply.to_bytes()

    def starttls_done(self) -> None:
        """The TLS handshake succeeded: reset the session (RFC 3207 §4.2).

        The client must greet again; EHLO then no longer offers STARTTLS.

        Raises:
            SmtpUsageError: If no STARTTLS was answered with 220.
        """
        if self._state is not _TLS:
            raise SmtpUsageError("no STARTTLS in progress")
        self.tls_active = True
        self.esmtp = False
        self.helo_domain = None
        self.authenticated = None
        self._reset_transaction()
        self._state = _INIT

    def auth_done(self, identity: str) -> None:
        """Mark the session authenticated as ``identity`` (send 235 too)."""
        self.authenticated = identity

    def ehlo_reply(self) -> Reply:
        """The 250 reply to EHLO/LHLO advertising this session's extensions."""
        key = (self.hostname, self.tls_active, self.authenticated is not None)
        cache = self._profile.ehlo
        reply = cache.get(key)
        if reply is None:
            lines = self.extensions.ehlo_lines(tls_active=key[1], authenticated=key[2])
            reply = replies.ehlo(self.hostname, lines)
            # Every session of a listener gets the same few EHLO replies: build
            # each once (the Reply is immutable, so it can be shared).
            if len(cache) >= _EHLO_CACHE_MAX:
                cache.clear()
            cache[key] = reply
        return reply

    # --- state --------------------------------------------------------------

    def _transition(self, answered: str, reply: Reply) -> None:
        """The only place where the state changes."""
        old = self._state
        code = reply.code
        # Inlined state.next_state(): this runs for every reply.
        if code == 421:
            new = _CLOSED
        else:
            new = NEXT.get((old, answered, OK if code < 300 else MORE if code < 400 else FAIL), old)
        # _owed_event is only read here, and replaced by the next event owed.
        if answered == "RCPT":
            if new is _RCPT and code < 400:
                self.recipients_accepted += 1
        elif answered == "HELLO":
            if code < 400:
                event = self._owed_event
                self.esmtp = not isinstance(event, Helo)
                self.helo_domain = getattr(event, "domain", None)
                self._reset_transaction()
        elif answered == "MAIL":
            event = self._owed_event
            if code < 400 and isinstance(event, MailFrom):
                self.mail_params = event.params
                self.recipients_accepted = 0
        elif answered == "DATA" and new is _DATA:
            params = self.mail_params or MailParams()
            self._dot = DotDecoder(self._checker(params))
        elif answered == "STARTTLS" and new is _TLS:
            # No plaintext may cross into the TLS session (RFC 3207 §5).
            self.discarded_after_starttls = len(self._buf) - self._pos
            self._buf = b""
            self._pos = 0
        if new is not old:
            self._state = new
            if new is _READY:
                # _reset_transaction(), inlined: every mail transaction ends here.
                self.mail_params = None
                self.recipients_accepted = 0
                self._dot = None
                self._bdat = None
        if new is _CLOSED:
            self._buf = b""
            self._pos = 0

    def _reset_transaction(self) -> None:
        self.mail_params = None
        self.recipients_accepted = 0
        self._dot = None
        self._bdat = None

    def _checker(self, params: MailParams) -> ContentChecker:
        return ContentChecker(
            self.max_line_bytes,
            self.max_message_bytes,
            self.bare_newline,
            check_newlines=params.body != "BINARYMIME",
        )

    def _owe(self, answered: str, event: Event, count: int = 1) -> Event:
        self._owed = answered
        self._owed_event = event
        self._owed_count = count
        return event

    def _invalid(self, reply: Reply, reason: str, line: str = "", count: bool = True) -> Event:
        if count:
            self.bad_commands += 1
            if self.bad_commands > self.max_bad_commands:
                reply = replies.too_many_errors()
        return self._owe("INVALID", InvalidCommand(reply, reason, line[:100]))

    def _closed(self) -> Event:
        self._state = _CLOSED
        self._buf = b""
        self._pos = 0
        return ConnectionClosed()

    # --- input: command lines ----------------------------------------------

    def _command_limit(self, st: State, buf: bytes, pos: int) -> int:
        """The longest command line allowed at ``buf[pos:]`` (AUTH lines may be longer)."""
        limit = self.max_command_bytes
        if st is _AUTH or (self.extensions.auth and buf[pos : pos + 5].upper() == b"AUTH "):
            limit = max(limit, AUTH_LINE_BYTES)
        return limit

    def _next_command(self) -> Event | NeedData:
        buf = self._buf
        pos = self._pos
        nl = buf.find(b"\n", pos)
        if self._skipping:
            if nl < 0:
                self._skipped += len(buf) - pos
                self._buf, self._pos = b"", 0
                if self._skipped >= self.max_command_hard_bytes:
                    return self._endless_line()
                return self._closed() if self._eof else NEED_DATA
            self._skipped += nl + 1 - pos
            self._pos = nl + 1
            self._skipping = False
            if self._skipped > self.max_command_hard_bytes:
                return self._endless_line()
            return self._invalid(replies.line_too_long(), "command line too long")
        st = self._state
        # The limit only matters for lines longer than max_command_bytes, so
        # the AUTH exception is only looked at for those.
        if nl < 0:
            have = len(buf) - pos
            if have >= self.max_command_bytes and have >= self._command_limit(st, buf, pos):
                if have >= self.max_command_hard_bytes:
                    self._buf, self._pos = b"", 0
                    return self._endless_line()
                # Never buffer an endless line: drop it and answer at its end
                # (or at the hard cap).
                self._skipping = True
                self._skipped = have
                self._buf, self._pos = b"", 0
            if self._eof:
                return self._closed()
            return NEED_DATA
        self._pos = nl + 1
        size = nl + 1 - pos
        if size > self.max_command_bytes and size > self._command_limit(st, buf, pos):
            if size > self.max_command_hard_bytes:
                return self._endless_line()
            return self._invalid(replies.line_too_long(), "command line too long")
        if nl > pos and buf[nl - 1] == 13:
            raw = buf[pos : nl - 1]
        else:
            raw = buf[pos:nl]
            if self.bare_newline == "reject":
                return self._invalid(replies.bare_newline_in_command(), "bare LF in command", repr(raw))
        return self._command_line(raw, st, None)

    def _endless_line(self) -> Event:
        """A command line past max_command_hard_bytes: 421 4.7.0, the session ends."""
        self._skipping = False
        self._skipped = 0
        return self._owe(
            "INVALID",
            InvalidCommand(replies.line_too_long_close(), "command line past the hard limit", ""),
        )

    def _fast_mail_rcpt(self, raw: bytes, st: State, key: tuple[bytes, bool, bool]) -> Event | None:
        """Parse the usual MAIL or RCPT line in one regex match, or return None.

        Handles ``MAIL FROM:<local@domain>`` with optional ``SIZE=n`` and
        ``BODY=7BIT|8BITMIME`` (in that order, one space each) and ``RCPT
        TO:<local@domain>`` without parameters, where the local part is a
        dot-string and the domain a host name, in a state where the command
        is legal and when it would be accepted: exactly the lines for which
        :meth:`_command_line` returns a MailFrom or RcptTo event, and then
        the same event. Everything else (quoted local parts, address
        literals, source routes, UTF-8, ``<>``, ``<postmaster>``, other
        spacing, other or repeated parameters, a refused SIZE, BODY or
        recipient) returns None and takes the general path, which also
        writes its error replies. ``test_fast_commands.py`` checks the
        equivalence on generated near misses.

        Why: lines seen before come from the parsed-command cache, but real
        traffic has a new sender and new recipients in nearly every
        transaction, and the general path (decode, dispatch, split the path,
        split the parameters, the path regex, the length checks) took about
        twice as long per line as this one.
        """
        # latin-1 never fails; the pattern's classes are ASCII only, so any
        # other octet (UTF-8 included) makes the match fail.
        m = _FAST_MAIL_RCPT(raw.decode("latin-1"))
        if m is None:
            return None
        local, domain, size, body, rlocal, rdomain = m.groups()
        parsed = self._parsed
        if local is not None:
            # RFC 5321 §4.5.3.1: 64 octets of local part, 256 of path; the
            # path is "<" local "@" domain ">" here, so the domain's own limit
            # (255) follows.
            if st is not _READY or len(local) > MAX_LOCAL_BYTES or len(local) + len(domain) > _MAX_PATH_INNER:
                return None
            if size is None and body is None:
                mp = _PLAIN_MAIL
            else:
                if not self.esmtp:
                    return None
                n: int | None = None
                if size is not None:
                    if self.extensions.size is None:
                        return None
                    n = int(size)
                    if n > self.max_message_bytes:
                        return None
                body = "7BIT" if body is None else body.upper()
                if body == "8BITMIME" and not self.extensions.eightbitmime:
                    return None
                mp = MailParams(n, body)  # type: ignore[arg-type]
            ev: Event = MailFrom(Address(local, domain), mp)
            answered = "MAIL"
            legal = _MAIL_LEGAL
        else:
            if (
                (st is not _RCPT and st is not _MAIL)
                or self.recipients_accepted >= self.max_recipients
                or len(rlocal) > MAX_LOCAL_BYTES
                or len(rlocal) + len(rdomain) > _MAX_PATH_INNER
            ):
                return None
            ev = RcptTo(Address(rlocal, rdomain), _NO_RCPT_PARAMS)
            answered = "RCPT"
            legal = _RCPT_LEGAL
        # Cache the event only for a line seen before: most MAIL and RCPT
        # lines are never seen again, and every cached event (three objects
        # the garbage collector tracks) lives on through its older
        # generations until the cache is cleared. Storing only from the
        # second sighting took 2% of the instructions off a --unique
        # transaction of bench/smtp_core.py and none off a repeated one. The
        # set holds hashes (ints, not tracked by the collector); a collision
        # only means caching a line at its first sighting.
        h = hash(raw)
        seen = self._seen
        if h in seen:
            if len(parsed) >= _PARSED_MAX:
                parsed.clear()
            parsed[key] = (answered, legal, ev)
        else:
            if len(seen) >= _PARSED_MAX:
                seen.clear()
            seen.add(h)
        self._owed = answered
        self._owed_event = ev
        self._owed_count = 1
        return ev

    def _command_line(self, raw: bytes, st: State, key: tuple[bytes, bool, bool] | None) -> Event | NeedData:
        """Turn one command line (without its line end) into an event.

        Args:
            raw: The line.
            st: The current state.
            key: The line's key in the parsed-command cache, or None to
                bypass the cache.
        """
        if b"\r" in raw or b"\0" in raw:
            return self._invalid(replies.syntax_error(), "CR or NUL in command", repr(raw))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._invalid(replies.syntax_error("Syntax error, invalid UTF-8"), "bad UTF-8", repr(raw))
        if st is _AUTH:
            return self._owe("AUTH", AuthResponse(line))
        ev = self._dispatch(line, st)
        if key is not None:
            answered = self._owed
            if answered in _CACHEABLE and not isinstance(ev, (InvalidCommand, NeedData)):
                # The event depends only on the key and the profile, and the
                # checks that depend on the session are in _CACHEABLE: later
                # identical lines are answered from the cache in next_event().
                parsed = self._parsed
                if len(parsed) >= _PARSED_MAX:
                    parsed.clear()
                parsed[key] = (answered, _CACHEABLE[answered], ev)
        return ev

    def _dispatch(self, line: str, st: State) -> Event | NeedData:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        entry = _COMMANDS.get(verb)
        if entry is None or (verb in _HELLO_VERBS and (verb == "LHLO") != self.lmtp):
            return self._invalid(replies.syntax_error(), "unknown command", line)
        handler, legal = entry
        if verb == "BDAT":
            return self._cmd_bdat(arg, line)
        if st not in legal:
            if st is _REJECTED:
                return self._invalid(
                    replies.bad_sequence("Error: access denied, send QUIT"), "rejected", line, False
                )
            return self._invalid(replies.bad_sequence(), f"{verb} out of sequence", line)
        try:
            return handler(self, arg, line)
        except SmtpProtocolError as e:
            hint = e.reply_hint or replies.syntax_params()
            return self._invalid(hint, str(e), line)

    def _cmd_hello(self, arg: str, line: str) -> Event:
        domain = arg.strip()
        if not domain:
            return self._invalid(replies.syntax_params("Syntax: EHLO hostname"), "no domain", line)
        verb = line[:4].upper()
        ev: Event = Ehlo(domain) if verb == "EHLO" else Lhlo(domain) if verb == "LHLO" else Helo(domain)
        return self._owe("HELLO", ev)

    def _esmtp_params(self, text: str) -> dict[str, str | None]:
        params: dict[str, str | None] = {}
        if not text:
            return params
        if text[0] != " ":
            raise SmtpProtocolError("junk after path", replies.bad_address_syntax())
        words = text.split(" ")
        for word in words:
            if not word:
                continue
            key, eq, value = word.partition("=")
            if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
                raise SmtpProtocolError("bad parameter syntax", replies.syntax_params())
            key = key.upper()
            if key in params:
                raise SmtpProtocolError("duplicate parameter", replies.syntax_params())
            params[key] = value if eq else None
        if params and not self.esmtp:
            raise SmtpProtocolError("parameters after HELO", replies.param_not_implemented())
        return params

    def _split_path(self, arg: str, keyword: str) -> tuple[str, str]:
        if arg[: len(keyword)].upper() != keyword:
            raise SmtpProtocolError("bad syntax", replies.syntax_params(f"Syntax: {keyword}<address>"))
        rest = arg[len(keyword) :].lstrip(" ")
        n = match_path(rest)
        if not n:
            raise SmtpProtocolError("bad path", replies.bad_address_syntax())
        return rest[:n], rest[n:]

    def _cmd_mail(self, arg: str, line: str) -> Event:
        path, rest = self._split_path(arg, "FROM:")
        params = self._esmtp_params(rest)
        ext = self.extensions
        size: int | None = None
        body = "7BIT"
        smtputf8 = False
        ret: str | None = None
        envid: str | None = None
        auth: str | None = None
        for key, value in params.items():
            if key == "SIZE" and ext.size is not None:
                if value is None or not value.isdigit() or len(value) > 20:
                    raise SmtpProtocolError("bad SIZE", replies.syntax_params("Bad SIZE value"))
                size = int(value)
            elif key == "BODY":
                body = (value or "").upper()
                allowed = {"7BIT"}
                if ext.eightbitmime:
                    allowed.add("8BITMIME")
                if ext.binarymime and ext.chunking:
                    allowed.add("BINARYMIME")
                if body not in allowed:
                    raise SmtpProtocolError(
                        "bad BODY", replies.param_not_implemented_504("Unsupported BODY type")
                    )
            elif key == "SMTPUTF8" and ext.smtputf8 and value is None:
                smtputf8 = True
            elif key == "RET" and ext.dsn:
                ret = (value or "").upper()
                if ret not in DSN_RETS:
                    raise SmtpProtocolError("bad RET", replies.syntax_params("Bad RET value"))
            elif key == "ENVID" and ext.dsn and value is not None:
                envid = _xtext_decode(value)
                if len(envid) > 100:
                    raise SmtpProtocolError("ENVID too long", replies.syntax_params())
            elif key == "AUTH" and ext.auth and value is not None:
                auth = _xtext_decode(value)
            else:
                raise SmtpProtocolError(f"unknown parameter {key}", replies.param_not_implemented())
        if size is not None and size > self.max_message_bytes:
            raise SmtpProtocolError("declared size too big", replies.message_too_big_declared())
        address = parse_path(path, smtputf8)
        mp = MailParams(size, body, smtputf8, ret, envid, auth)  # type: ignore[arg-type]
        return self._owe("MAIL", MailFrom(address, mp))

    def _cmd_rcpt(self, arg: str, line: str) -> Event:
        path, rest = self._split_path(arg, "TO:")
        notify: frozenset[str] | None = None
        orcpt: tuple[str, str] | None = None
        for key, value in self._esmtp_params(rest).items() if rest else ():
            if key == "NOTIFY" and self.extensions.dsn and value is not None:
                notify = frozenset(value.upper().split(","))
                if not (notify == {"NEVER"} or notify <= _NOTIFY):
                    raise SmtpProtocolError("bad NOTIFY", replies.syntax_params("Bad NOTIFY"))
            elif key == "ORCPT" and self.extensions.dsn and value is not None:
                kind, semi, addr = value.partition(";")
                if not semi or not _KEYWORD.match(kind):
                    raise SmtpProtocolError("bad ORCPT", replies.syntax_params("Bad ORCPT"))
                orcpt = (kind.lower(), _xtext_decode(addr))
            else:
                raise SmtpProtocolError(f"unknown parameter {key}", replies.param_not_implemented())
        smtputf8 = self.mail_params is not None and self.mail_params.smtputf8
        address = parse_path(path, smtputf8, allow_null=False, allow_postmaster=True)
        assert isinstance(address, Address)
        if self.recipients_accepted >= self.max_recipients:
            return self._invalid(replies.too_many_recipients(), "too many recipients", line, False)
        rp = _NO_RCPT_PARAMS if notify is None and orcpt is None else RcptParams(notify, orcpt)
        ev = RcptTo(address, rp)
        self._owed = "RCPT"  # inlined _owe(): the hottest command
        self._owed_event = ev
        self._owed_count = 1
        return ev

    def _cmd_data(self, arg: str, line: str) -> Event:
        if arg.strip():
            return self._invalid(replies.syntax_params("Syntax: DATA"), "DATA argument", line)
        if self.mail_params is not None and self.mail_params.body == "BINARYMIME":
            return self._invalid(
                replies.bad_sequence("BINARYMIME requires BDAT"), "DATA with BINARYMIME", line
            )
        if self._state is _MAIL:
            return self._invalid(replies.no_valid_recipients(), "no recipients", line, False)
        return self._owe("DATA", _DATA_START)

    def _cmd_bdat(self, arg: str, line: str) -> Event | NeedData:
        if not (self.extensions.chunking and self.esmtp):
            return self._invalid(replies.not_implemented(), "BDAT not offered", line)
        m = _BDAT.match(arg)
        if m is None:
            return self._invalid(replies.syntax_params("Syntax: BDAT size [LAST]"), "bad BDAT", line)
        size, last = int(m.group(1)), m.group(2) is not None
        self._chunk_active = True
        self._chunk_last = last
        st = self._state
        refusal: Reply | None = None
        if st is State.MAIL:
            refusal = replies.no_valid_recipients()
        elif st not in (State.RCPT, State.BDAT):
            refusal = replies.bad_sequence()
        if refusal is not None:
            # RFC 3030 §2: the chunk's octets are read and discarded.
            self._chunk_refusal = refusal
            self._chunk_skip = size
            return self._next_chunk()
        if self._bdat is None:
            self._bdat = BdatDecoder(self._checker(self.mail_params or MailParams()))
        self._chunk_refusal = None
        self._bdat.remaining = size
        return Bdat(size, last)

    def _cmd_rset(self, arg: str, line: str) -> Event:
        if arg.strip():
            return self._invalid(replies.syntax_params("Syntax: RSET"), "RSET argument", line)
        return self._owe("RSET", _RSET)

    def _cmd_noop(self, arg: str, line: str) -> Event:
        return self._owe("NOOP", _NOOP)

    def _cmd_quit(self, arg: str, line: str) -> Event:
        if arg.strip():
            return self._invalid(replies.syntax_params("Syntax: QUIT"), "QUIT argument", line)
        return self._owe("QUIT", _QUIT)

    def _cmd_help(self, arg: str, line: str) -> Event:
        return self._owe("HELP", Help(arg.strip()))

    def _cmd_vrfy(self, arg: str, line: str) -> Event:
        if not arg.strip():
            return self._invalid(replies.syntax_params("Syntax: VRFY address"), "VRFY", line)
        return self._owe("VRFY", Vrfy(arg.strip()))

    def _cmd_expn(self, arg: str, line: str) -> Event:
        if not arg.strip():
            return self._invalid(replies.syntax_params("Syntax: EXPN list"), "EXPN", line)
        return self._owe("EXPN", Expn(arg.strip()))

    def _cmd_starttls(self, arg: str, line: str) -> Event:
        if not self.extensions.starttls or not self.esmtp:
            return self._invalid(replies.not_implemented(), "STARTTLS not offered", line)
        if self.tls_active:
            return self._invalid(replies.bad_sequence("TLS already active"), "STARTTLS", line)
        if arg.strip():
            return self._invalid(replies.syntax_params("Syntax: STARTTLS"), "STARTTLS arg", line)
        return self._owe("STARTTLS", _STARTTLS)

    def _cmd_auth(self, arg: str, line: str) -> Event:
        if not self.extensions.auth or not self.esmtp:
            return self._invalid(replies.not_implemented(), "AUTH not offered", line)
        if self.authenticated is not None:
            return self._invalid(replies.bad_sequence("Already authenticated"), "AUTH", "AUTH")
        parts = arg.split()
        if not 1 <= len(parts) <= 2:
            return self._invalid(replies.syntax_params("Syntax: AUTH mechanism"), "AUTH", "AUTH")
        mech = parts[0].upper()
        if mech not in self.extensions.auth:
            return self._invalid(replies.auth_mechanism_unknown(), "AUTH mechanism", "AUTH")
        initial = None if len(parts) == 1 else ("" if parts[1] == "=" else parts[1])
        return self._owe("AUTH", Auth(mech, initial))

    # --- input: content -----------------------------------------------------

    def _next_data(self) -> Event | NeedData:
        dot = self._dot
        assert dot is not None
        while True:
            if dot.finished:
                count = self.recipients_accepted if self.lmtp else 1
                error = dot.checker.error
                return self._owe("END", _END_OK if error is None else EndOfData(error), max(count, 1))
            content, self._pos = dot.feed(self._buf, self._pos)
            if content:
                return DataChunk(content)
            if dot.finished:
                continue
            if self._eof:
                return self._closed()
            return NEED_DATA

    def _next_chunk(self) -> Event | NeedData:
        if self._chunk_refusal is not None:
            take = min(self._chunk_skip, len(self._buf) - self._pos)
            self._pos += take
            self._chunk_skip -= take
            if self._chunk_skip:
                return self._closed() if self._eof else NEED_DATA
            self._chunk_active = False
            refusal, self._chunk_refusal = self._chunk_refusal, None
            return self._invalid(refusal, "BDAT refused", "BDAT", count=False)
        bdat = self._bdat
        assert bdat is not None
        while bdat.remaining:
            content, self._pos = bdat.feed(self._buf, self._pos, self._chunk_last)
            if content:
                return DataChunk(content)
            if bdat.remaining and self._pos >= len(self._buf):
                return self._closed() if self._eof else NEED_DATA
        self._chunk_active = False
        last = self._chunk_last
        error = bdat.checker.error
        if last:
            count = self.recipients_accepted if self.lmtp else 1
            return self._owe("BDAT_LAST", BdatChunkEnd(True, error), max(count, 1))
        return self._owe("BDAT", BdatChunkEnd(False, error))


# RcptParams is immutable: share the one without DSN parameters.
_NO_RCPT_PARAMS = RcptParams(None, None)

_HANDLERS: dict[str, Callable[[ServerConnection, str, str], Event | NeedData]] = {
    "EHLO": ServerConnection._cmd_hello,
    "HELO": ServerConnection._cmd_hello,
    "LHLO": ServerConnection._cmd_hello,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "QUIT": ServerConnection._cmd_quit,
    "HELP": ServerConnection._cmd_help,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
}

# Verb -> (handler, states where it is legal): one lookup per command.
_COMMANDS = {verb: (handler, LEGAL[verb]) for verb, handler in _HANDLERS.items()}
