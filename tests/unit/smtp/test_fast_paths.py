"""The fast paths of the server core give exactly the answers of the general code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meta1py.smtp import replies
from meta1py.smtp.address import (
    _PATH_ASCII,
    _PATH_TOKEN,
    _PATH_UTF8,
    MAX_DOMAIN_BYTES,
    MAX_LOCAL_BYTES,
    MAX_PATH_BYTES,
    NULL_PATH,
    Address,
    _check_literal,
    match_path,
    parse_path,
)
from meta1py.smtp.dotstuff import ContentChecker, DotDecoder, DotEncoder, _has_long_line
from meta1py.smtp.errors import SmtpProtocolError
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.server import ServerConnection
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
        m = (_PATH_ASCII if ascii_only else _PATH_UTF8).match(text)
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
