"""The fast paths of the server core give exactly the answers of the general code."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_policy import EXT_FULL, Policy, run_in_halves

from meta1py.smtp import replies
from meta1py.smtp._frozen import fast_init
from meta1py.smtp.address import (
    _PATH_ASCII,
    _PATH_TOKEN,
    MAX_DOMAIN_BYTES,
    MAX_LOCAL_BYTES,
    MAX_PATH_BYTES,
    NULL_PATH,
    Address,
    _check_literal,
    _path_utf8,
    match_path,
    parse_path,
)
from meta1py.smtp.dotstuff import (
    _LINE_DOT,
    BareNewline,
    ContentChecker,
    DotDecoder,
    DotEncoder,
    _has_long_line,
)
from meta1py.smtp.errors import SmtpProtocolError
from meta1py.smtp.events import (
    DataChunk,
    Ehlo,
    EndOfData,
    InvalidCommand,
    MailFrom,
    MailParams,
    RcptParams,
    RcptTo,
)
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.server import _PARSED_MAX, ServerConnection
from meta1py.smtp.state import TRANSITIONS, State, next_state

PATH_CHARS = st.sampled_from([*'<>"\\@.:,[]ab-_ %!é', "xyz", "example", "IPv6:", "1.2.3.4"])
paths = st.lists(PATH_CHARS, max_size=20).map("".join)


@given(paths)
def test_match_path_same_as_regex(text: str) -> None:
    m = _PATH_TOKEN.match(text)
    assert match_path(text) == (m.end() if m else 0)


def _parse_outcome(text: str, **kw: bool) -> object:
    try:
        return parse_path(text, **kw)
    except SmtpProtocolError as e:
        return (str(e), e.reply_hint)


def _reference_parse(text: str, smtputf8: bool, allow_null: bool, allow_postmaster: bool) -> object:
    """parse_path() as written before the ASCII fast path (encode-based lengths)."""
    try:
        if text == "<>":
            if allow_null:
                return NULL_PATH
            raise SmtpProtocolError("null path not allowed here", replies.bad_address_syntax())
        if allow_postmaster and text.lower() == "<postmaster>":
            return Address(text[1:-1], None)
        if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES + 2:
            raise SmtpProtocolError("path too long", replies.bad_address_not_allowed("Path too long"))
        ascii_only = text.isascii()
        m = (_PATH_ASCII if ascii_only else _path_utf8()).match(text)
        if m is None:
            raise SmtpProtocolError(f"bad path {text[:80]!r}", replies.bad_address_syntax())
        if not ascii_only and not smtputf8:
            raise SmtpProtocolError("non-ASCII address without SMTPUTF8", replies.smtputf8_required())
        local, domain = m.group("local"), m.group("domain")
        if len(local.encode("utf-8")) > MAX_LOCAL_BYTES:
            raise SmtpProtocolError(
                "local part too long", replies.bad_address_not_allowed("Local part too long")
            )
        if len(domain.encode("utf-8")) > MAX_DOMAIN_BYTES:
            raise SmtpProtocolError("domain too long", replies.bad_address_not_allowed("Domain too long"))
        if domain.startswith("["):
            _check_literal(domain[1:-1])
        return Address(local, domain)
    except SmtpProtocolError as e:
        return (str(e), e.reply_hint)


long_parts = st.sampled_from(["a" * 64, "a" * 65, "b." * 127, "c" * 63, "[1.2.3.4]", "[IPv6:::1]", "[x:y]"])


@given(
    st.lists(st.one_of(PATH_CHARS, long_parts), max_size=12).map("".join),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_parse_path_same_as_reference(text: str, utf8: bool, null: bool, pm: bool) -> None:
    got = _parse_outcome(text, smtputf8=utf8, allow_null=null, allow_postmaster=pm)
    assert got == _reference_parse(text, utf8, null, pm)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("<" + "a" * 65 + "@b.example>", replies.bad_address_not_allowed("Local part too long")),
        ("<a@" + "b" * 300 + ">", replies.bad_address_not_allowed("Path too long")),
        ("<a@[1.2.3.999]>", replies.bad_address_syntax()),
        ("<a@[tag:x]>", replies.bad_address_not_allowed("Address literal not supported")),
        ("<a..b@c>", replies.bad_address_syntax()),
    ],
)
def test_parse_path_ascii_errors(text: str, hint: replies.Reply) -> None:
    with pytest.raises(SmtpProtocolError) as info:
        parse_path(text)
    assert info.value.reply_hint == hint


def test_parse_path_ascii_accepts() -> None:
    assert parse_path("<bob@mx.example>") == Address("bob", "mx.example")
    assert parse_path('<"a b"@[IPv6:::1]>') == Address('"a b"', "[IPv6:::1]")
    assert parse_path("<@r1,@r2:u@d.example>") == Address("u", "d.example")


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=1100))
def test_has_long_line_same_as_split(raw: bytes, limit: int) -> None:
    assert _has_long_line(raw, limit) == (max(map(len, raw.split(b"\n"))) >= limit)


@given(st.lists(st.sampled_from([b"x", b".", b"..", b"\r\n", b"abc", b"\r\n.\r"]), max_size=60))
def test_dot_decoder_round_trip(pieces: list[bytes]) -> None:
    body = b"".join(pieces).replace(b"\r", b"").replace(b"\n", b"\r\n")  # only CRLF line ends
    enc = DotEncoder()
    wire = enc.encode(body) + enc.end()
    dec = DotDecoder(ContentChecker(1000, 1 << 20, "reject"))
    out, pos = b"", 0
    for i in range(0, len(wire) + 1, 7):
        buf = wire[: i + 7]
        content, pos = dec.feed(buf, pos)
        out += content
        if dec.finished:
            break
    assert dec.finished and dec.checker.error is None
    expected = body if body.endswith(b"\r\n") or not body else body + b"\r\n"
    assert out == expected


def test_next_state_flat_table_matches_nested() -> None:
    for (st_, answered), moves in TRANSITIONS.items():
        for code in (220, 250, 334, 354, 421, 450, 550):
            kind = "2xx" if code < 300 else "3xx" if code < 400 else "4xx/5xx"
            want = State.CLOSED if code == 421 else moves.get(kind, st_)
            assert next_state(st_, answered, code) is want
    assert next_state(State.READY, "NOOP", 250) is State.READY


def test_ehlo_reply_cached_and_equal() -> None:
    ext = Extensions(pipelining=True, starttls=True, auth=("PLAIN",))
    a = ServerConnection("mx.example", extensions=ext)
    b = ServerConnection("mx.example", extensions=ext)
    assert a.ehlo_reply() is b.ehlo_reply()
    assert "STARTTLS" in a.ehlo_reply().lines
    a.tls_active = True
    assert "STARTTLS" not in a.ehlo_reply().lines
    assert a.ehlo_reply() == replies.ehlo("mx.example", ext.ehlo_lines(tls_active=True))
    c = ServerConnection("other.example", extensions=ext)
    assert c.ehlo_reply().lines[0] == "other.example"


def test_reply_bytes_by_identity_and_value() -> None:
    r1 = replies.ok()
    r2 = replies.Reply(r1.code, r1.enhanced, r1.lines)
    assert r1.to_bytes() == r2.to_bytes()
    assert r1.to_bytes().startswith(b"250 ")
    assert r1.to_bytes() is r1.to_bytes()


# --- faster construction of the frozen value classes --------------------------


def test_fast_init_builds_the_same_values() -> None:
    assert Address("bob", "mx.example") == Address(local="bob", domain="mx.example")
    assert Address("bob", None).domain is None
    assert MailParams() == MailParams(None, "7BIT", False, None, None, None)
    assert MailParams(size=5, auth="<>").auth == "<>"
    assert EndOfData().error is None
    assert InvalidCommand(replies.ok(), "why").line == ""
    assert RcptTo(Address("a", "b"), RcptParams()).params == RcptParams(None, None)
    assert repr(DataChunk(b"x")) == "DataChunk(data=b'x')"
    assert hash(Ehlo("x")) == hash(Ehlo("x"))
    for value, name in ((Address("a", "b"), "local"), (DataChunk(b"x"), "data"), (MailParams(), "size")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
    with pytest.raises(TypeError):
        Address("only-local")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Address("a", "b", "c")  # type: ignore[call-arg]


@given(st.text(max_size=5), st.none() | st.text(max_size=5))
def test_fast_init_same_as_dataclass_init(local: str, domain: str | None) -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        local: str
        domain: str | None = None

    fields: list[Any] = [("local", str), ("domain", "str | None", dataclasses.field(default=None))]
    fast: Any = fast_init(dataclasses.make_dataclass("Fast", fields, frozen=True, slots=True))
    assert dataclasses.astuple(fast(local, domain)) == dataclasses.astuple(Plain(local, domain))
    assert dataclasses.astuple(fast(local)) == dataclasses.astuple(Plain(local))


def test_fast_init_refuses_other_classes() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        x: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        x: list[int] = dataclasses.field(default_factory=list)

    for cls in (Mutable, Checked, Factory):
        with pytest.raises(TypeError):
            fast_init(cls)


# --- content checks -----------------------------------------------------------


def _reference_check(self: ContentChecker, raw: bytes, content: bytes) -> bytes:
    """ContentChecker.check() as written before the splitlines() fast path."""
    if self.error is not None:
        return b""
    if self._check_newlines:
        if b"\0" in raw:
            self.error = replies.bare_newline()
            return b""
        crlf = raw.count(b"\r\n")
        if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
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
            if self._line_len + first >= self._max_line or max(map(len, raw.split(b"\n"))) >= self._max_line:
                self.error = replies.line_too_long_in_data()
                return b""
            self._line_len = len(raw) - raw.rfind(b"\n") - 1
    self.size += len(content)
    if self.size > self._max_msg:
        self.error = replies.message_too_big()
        return b""
    return content


CONTENT = st.lists(
    st.sampled_from(
        [b"\r\n", b"\r", b"\n", b"\0", b"x", b"yz" * 7, b".", b"\x0b", b"\x1c", b"\x85", b"\n\r"]
    ),
    max_size=25,
).map(b"".join)


@settings(max_examples=500)
@given(
    st.lists(CONTENT, max_size=6),
    st.sampled_from(["reject", "normalize"]),
    st.booleans(),
    st.integers(min_value=1, max_value=40),
)
def test_content_check_same_as_counting(
    blocks: list[bytes], bare: BareNewline, lines: bool, limit: int
) -> None:
    fast = ContentChecker(limit, 200, bare, check_newlines=lines)
    ref = ContentChecker(limit, 200, bare, check_newlines=lines)
    for raw in blocks:
        assert fast.check(raw, raw) == _reference_check(ref, raw, raw)
        assert (fast.error, fast.size, fast._line_len) == (ref.error, ref.size, ref._line_len)


@given(st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"x", b"\r\n."]), max_size=30).map(b"".join))
def test_line_dot_search_same_as_find(buf: bytes) -> None:
    for pos in range(len(buf) + 1):
        m = _LINE_DOT(buf, pos)
        assert (-1 if m is None else m.start()) == buf.find(b"\r\n.", pos)


@given(
    st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")), st.integers(min_value=-3, max_value=40)
)
def test_has_long_line_small_and_odd_limits(raw: bytes, limit: int) -> None:
    assert _has_long_line(raw, limit) == (max(map(len, raw.split(b"\n"))) >= limit)


# --- the parsed-command cache -------------------------------------------------


class _NoCache(dict[tuple[bytes, bool, bool], Any]):
    """Stands in for a profile's cache: never hits, never stores (the general path only)."""

    def get(self, key: object, default: object = None) -> object:
        return default

    def __setitem__(self, key: object, value: object) -> None:
        pass


EXT_NONE = Extensions()

COMMANDS = [
    b"EHLO c.example\r\n",
    b"HELO c.example\r\n",
    b"LHLO c.example\r\n",
    b"EHLO\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10\r\n",
    b"MAIL FROM:<a@b.example> SIZE=5000\r\n",
    b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n",
    b"MAIL FROM:<a@b.example> SMTPUTF8\r\n",
    b"MAIL FROM:<a@b.example> RET=HDRS ENVID=x+2By\r\n",
    b"MAIL FROM:<\xc3\xa9@b.example> SMTPUTF8\r\n",
    b"mail from:<a@b.example>\r\n",
    b"RCPT TO:<x@mx.test>\r\n",
    b"RCPT TO:<y@mx.test>\r\n",
    b"RCPT TO:<unknown@mx.test>\r\n",
    b"RCPT TO:<x@mx.test> NOTIFY=SUCCESS,DELAY\r\n",
    b"RCPT TO:<\xc3\xa9@mx.test>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<>\r\n",
    b"DATA\r\n",
    b"DATA x\r\n",
    b"BDAT 3 LAST\r\n",
    b"RSET\r\n",
    b"RSET x\r\n",
    b"NOOP\r\n",
    b"NOOP hello\r\n",
    b"VRFY x\r\n",
    b"body\r\n",
    b".\r\n",
    b"..x\r\n",
    b"QUIT x\r\n",
    b"NOOP\n",
    b"\r\n",
]
HELLOS = [b"EHLO c.example\r\n", b"HELO c.example\r\n", b"LHLO c.example\r\n"]
TRANSACTION = [
    b"MAIL FROM:<a@b.example>\r\n",
    b"RCPT TO:<x@mx.test>\r\n",
    b"RCPT TO:<y@mx.test>\r\n",
    b"DATA\r\n",
]

# Sessions that get far: a greeting first, QUIT only at the end, and whole
# transactions mixed in so that the same lines come back in every state.
command_streams = st.tuples(
    st.sampled_from(HELLOS),
    st.lists(st.sampled_from(COMMANDS) | st.just(b"".join(TRANSACTION)), min_size=2, max_size=30),
    st.sampled_from([b"QUIT\r\n", b""]),
).map(lambda t: t[0] + b"".join(t[1]) + t[2])


def _session(
    data: bytes, *, cache: bool, ext: Extensions, lmtp: bool, max_recipients: int, max_message_bytes: int
) -> tuple[bytes, list[object], int]:
    conn = ServerConnection(
        "mx.test",
        extensions=ext,
        lmtp=lmtp,
        max_recipients=max_recipients,
        max_message_bytes=max_message_bytes,
        bare_newline="normalize",
        max_bad_commands=100,
    )
    if not cache:
        conn._parsed = _NoCache()
    policy = Policy(conn)
    out = run_in_halves(policy, data)
    return out, policy.events, conn.bad_commands


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    command_streams,
    st.sampled_from([EXT_FULL, EXT_NONE]),
    st.booleans(),
    st.integers(min_value=1, max_value=3),
    st.sampled_from([100, 10000]),
)
def test_command_cache_same_as_general_path(
    data: bytes, ext: Extensions, lmtp: bool, max_recipients: int, max_message_bytes: int
) -> None:
    kw = {"ext": ext, "lmtp": lmtp, "max_recipients": max_recipients}
    reference = _session(data, cache=False, max_message_bytes=max_message_bytes, **kw)  # type: ignore[arg-type]
    # The other size limit first: its profile must not answer for this one.
    _session(data, cache=True, max_message_bytes={100: 10000, 10000: 100}[max_message_bytes], **kw)  # type: ignore[arg-type]
    cold = _session(data, cache=True, max_message_bytes=max_message_bytes, **kw)  # type: ignore[arg-type]
    warm = _session(data, cache=True, max_message_bytes=max_message_bytes, **kw)  # type: ignore[arg-type]
    assert cold == reference
    assert warm == reference


def test_command_cache_is_used_and_bounded() -> None:
    conn = ServerConnection("mx.test", extensions=EXT_FULL, max_recipients=10**6)
    conn._parsed.clear()
    conn._seen.clear()
    policy = Policy(conn)
    policy.greet()
    # MAIL and RCPT lines from the fast path are cached from their second sighting on.
    policy.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
    assert not any(isinstance(v[2], MailFrom) for v in conn._parsed.values())
    policy.feed(b"RSET\r\nMAIL FROM:<a@b.example>\r\n")
    assert any(isinstance(v[2], MailFrom) for v in conn._parsed.values())
    for i in range(_PARSED_MAX + 10):
        policy.feed(b"RCPT TO:<u%d@mx.test>\r\n" % i)
        assert len(conn._parsed) <= _PARSED_MAX
        assert len(conn._seen) <= _PARSED_MAX
    assert conn.recipients_accepted == _PARSED_MAX + 10
    last = b"RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u%d@mx.test>\r\n" % (_PARSED_MAX + 9)
    policy.feed(last)
    second = policy.events[-1]
    assert second == RcptTo(Address(f"u{_PARSED_MAX + 9}", "mx.test"), RcptParams())
    policy.feed(last)
    assert policy.events[-1] is second  # answered from the cache: the same immutable event


def test_general_path_caches_at_first_sighting() -> None:
    conn = ServerConnection("mx.test", extensions=EXT_FULL)
    conn._parsed.clear()
    conn._seen.clear()
    policy = Policy(conn)
    policy.greet()
    policy.feed(b"EHLO c\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<\xc3\xa9@mx.test>\r\n")
    assert {type(v[2]) for v in conn._parsed.values()} == {Ehlo, MailFrom, RcptTo}


# Each script repeats a line in a context where the general path answers
# differently; the cached answer from the first context must not leak.
CONTEXT_SCRIPTS = [
    # EHLO vs HELO: parameters only after EHLO.
    b"HELO c\r\nMAIL FROM:<a@b.example> SIZE=10\r\nEHLO c\r\nMAIL FROM:<a@b.example> SIZE=10\r\n",
    b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=10\r\nHELO c\r\nMAIL FROM:<a@b.example> SIZE=10\r\n",
    # SMTPUTF8 transaction or not.
    b"EHLO c\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<\xc3\xa9@mx.test>\r\nRSET\r\n"
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<\xc3\xa9@mx.test>\r\n",
    b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<\xc3\xa9@mx.test>\r\nRSET\r\n"
    b"MAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<\xc3\xa9@mx.test>\r\n",
    # DATA with and without an accepted recipient.
    b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n.\r\n"
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<unknown@mx.test>\r\nDATA\r\n",
    # DATA after BODY=BINARYMIME.
    b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n.\r\n"
    b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n",
    # The recipient limit.
    b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nRCPT TO:<x@mx.test>\r\n"
    b"RCPT TO:<x@mx.test>\r\nRCPT TO:<x@mx.test>\r\n",
    # Commands out of sequence after being cached in sequence.
    b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nRSET\r\nRCPT TO:<x@mx.test>\r\n"
    b"QUIT\r\n",
    # A declared size under one limit and over the other.
    b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=5000\r\nRSET\r\nMAIL FROM:<a@b.example> SIZE=5000\r\n",
    # LHLO only in LMTP mode, EHLO/HELO only in SMTP mode.
    b"LHLO c\r\nEHLO c\r\nHELO c\r\nLHLO c\r\nNOOP\r\nRSET\r\n",
]


@pytest.mark.parametrize("script", CONTEXT_SCRIPTS)
@pytest.mark.parametrize("lmtp", [False, True])
@pytest.mark.parametrize("ext", [EXT_FULL, EXT_NONE])
def test_command_cache_respects_context(script: bytes, lmtp: bool, ext: Extensions) -> None:
    for size in (100, 10000):
        kw = {"ext": ext, "lmtp": lmtp, "max_recipients": 2, "max_message_bytes": size}
        reference = _session(script, cache=False, **kw)  # type: ignore[arg-type]
        # Fill the caches of the profiles that differ in one setting first.
        _session(script, cache=True, **{**kw, "lmtp": not lmtp})  # type: ignore[arg-type]
        _session(script, cache=True, **{**kw, "max_message_bytes": 110 if size == 10000 else 10000})  # type: ignore[arg-type]
        assert _session(script, cache=True, **kw) == reference  # type: ignore[arg-type]
        assert _session(script, cache=True, **kw) == reference  # type: ignore[arg-type]
