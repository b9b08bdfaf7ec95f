"""Unit tests: addresses, replies and their parser, extensions."""

from __future__ import annotations

import pytest

from meta1py.smtp import replies
from meta1py.smtp.address import NULL_PATH, Address, parse_path
from meta1py.smtp.client import ClientConnection, xtext_encode
from meta1py.smtp.errors import SmtpProtocolError, SmtpUsageError
from meta1py.smtp.events import NEED_DATA, ReplyReceived
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply, ReplyParser, parse_reply
from meta1py.smtp.server import ServerConnection


@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("<a@b.example>", "a", "b.example"),
        ('<"a b"@b.example>', '"a b"', "b.example"),
        ('<"a\\"b"@b.example>', '"a\\"b"', "b.example"),
        ("<@r1.example,@r2.example:a@b.example>", "a", "b.example"),
        ("<a@[192.0.2.1]>", "a", "[192.0.2.1]"),
        ("<a@[IPv6:2001:db8::1]>", "a", "[IPv6:2001:db8::1]"),
        ("<user%host@relay.example>", "user%host", "relay.example"),
        ("<host!user@relay.example>", "host!user", "relay.example"),
    ],
)
def test_good_paths(text: str, local: str, domain: str) -> None:
    assert parse_path(text) == Address(local, domain)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("a@b", 501),
        ("<a@b", 501),
        ("<a..b@c>", 501),
        ("<.a@c>", 501),
        ("<a@>", 501),
        ("<@c>", 501),
        ("<a@b_c.example>", 501),
        ("<a@[1.2.3]>", 501),
        ("<a@[IPv6:zz::1]>", 501),
        ("<a@[x:y]>", 553),
        ("<" + "a" * 65 + "@b>", 553),
        ("<a@" + "b" * 300 + ">", 553),
        ("<jörg@b.example>", 553),
    ],
)
def test_bad_paths(text: str, code: int) -> None:
    with pytest.raises(SmtpProtocolError) as info:
        parse_path(text)
    assert info.value.reply_hint is not None and info.value.reply_hint.code == code


def test_special_paths() -> None:
    assert parse_path("<>") is NULL_PATH
    with pytest.raises(SmtpProtocolError):
        parse_path("<>", allow_null=False)
    pm = parse_path("<Postmaster>", allow_postmaster=True)
    assert pm == Address("Postmaster", None) and str(pm) == "Postmaster"
    utf = parse_path("<jörg@bücher.example>", smtputf8=True)
    assert isinstance(utf, Address) and utf.is_international
    assert Address('"a\\"b"', "x").local_unquoted == 'a"b'


def test_reply_bytes_multiline() -> None:
    r = Reply(250, "2.0.0", ("one", "two", "three"))
    assert r.to_bytes() == b"250-2.0.0 one\r\n250-2.0.0 two\r\n250 2.0.0 three\r\n"
    assert parse_reply(r.to_bytes()) == r
    assert r.is_positive and not r.is_transient and not r.is_permanent
    assert replies.local_error().is_transient and replies.user_unknown("x").is_permanent
    with pytest.raises(ValueError):
        Reply(250, None, ("a\r\nb",))


def test_every_named_reply_has_an_enhanced_code() -> None:
    exempt = {"greeting", "ehlo", "helo", "data_start", "auth_challenge"}
    for name in dir(replies):
        fn = getattr(replies, name)
        if name.startswith("_") or not callable(fn) or isinstance(fn, type):
            continue
        if fn.__module__ != replies.__name__ or name in ("parse_reply",):
            continue
        args: tuple[object, ...] = {"greeting": ("h",), "ehlo": ("h", ()), "helo": ("h",)}.get(name, ())
        if name in (
            "queued",
            "relay_denied",
            "user_unknown",
            "sender_rejected",
            "greeting_rejected",
            "policy_tempfail_greeting",
            "too_much_mail",
            "too_many_recipients_from",
        ):
            args = ("x",)
        if name == "bdat_ok":
            args = (1,)
        if name == "relayed":
            args = (554, None, "x")  # a missing enhanced code is filled in
        r = fn(*args)
        assert isinstance(r, Reply)
        assert (r.enhanced is None) == (name in exempt), name
        if r.enhanced:
            assert r.enhanced[0] == str(r.code)[0], name


def test_reply_parser() -> None:
    p = ReplyParser()
    p.feed(b"250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n550 5.1.1 no such user\r\n4")
    assert p.next_reply() == Reply(250, None, ("mx", "PIPELINING", "SIZE 100"))
    assert p.next_reply() == Reply(550, "5.1.1", ("no such user",))
    assert p.next_reply() is None
    for bad in (b"abc\r\n", b"250-a\r\n251 b\r\n", b"250x\r\n", b"199 x\r\n", b"x" * 5000):
        q = ReplyParser()
        q.feed(bad)
        with pytest.raises(SmtpProtocolError):
            q.next_reply()
    q = ReplyParser(max_lines=3)
    q.feed(b"250-a\r\n" * 5)
    with pytest.raises(SmtpProtocolError):
        q.next_reply()


def test_extensions_round_trip() -> None:
    ext = Extensions.all(1000)
    assert Extensions.parse_ehlo(ext.ehlo_lines()) == ext
    flags = Extensions.from_flags({"8BITMIME", "starttls", "other"}, 5, ("plain",))
    assert flags.eightbitmime and flags.starttls and flags.auth == () and flags.size is None


def test_xtext() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"


def test_client_unexpected_and_unsolicited() -> None:
    c = ClientConnection()
    c.receive_data(b"220 hi\r\n421 4.3.2 going away\r\n")
    assert c.next_event().command == "GREETING"  # type: ignore[union-attr]
    ev = c.next_event()
    assert isinstance(ev, ReplyReceived) and ev.command == "UNSOLICITED"
    c.receive_data(b"250 what\r\n")
    with pytest.raises(SmtpProtocolError):
        c.next_event()


def test_client_starttls_response_injection() -> None:
    c = ClientConnection()
    c.receive_data(b"220 hi\r\n")
    c.next_event()
    c.starttls()
    c.receive_data(b"220 go\r\n250 injected\r\n")
    with pytest.raises(SmtpProtocolError):
        c.next_event()


def test_usage_errors() -> None:
    s = ServerConnection("mx")
    with pytest.raises(SmtpUsageError):
        s.next_event()
    s.send(replies.greeting("mx"))
    with pytest.raises(SmtpUsageError):
        s.send(replies.ok())
    s.receive_data(b"NOOP\r\n")
    s.next_event()
    with pytest.raises(SmtpUsageError):
        s.next_event()
    c = ClientConnection()
    with pytest.raises(SmtpUsageError):
        c.send_data(b"x")
    assert c.next_event() is NEED_DATA


def test_unsolicited_421_closes() -> None:
    s = ServerConnection("mx")
    s.send(replies.greeting("mx"))
    assert s.send(replies.shutting_down()).startswith(b"421 4.3.2")
    assert s.state.name == "CLOSED"


def test_greeting_554_only_quit() -> None:
    s = ServerConnection("mx")
    s.send(replies.greeting_rejected("mx"))
    s.receive_data(b"EHLO x\r\nQUIT\r\n")
    ev = s.next_event()
    assert s.send(ev.reply).startswith(b"503")  # type: ignore[union-attr]
    s.next_event()
    assert s.send(replies.closing()).startswith(b"221")


def test_relayed_replies_keep_a_matching_enhanced_code() -> None:
    assert replies.relayed(554, "5.5.0", "bad envelope").to_bytes() == b"554 5.5.0 bad envelope\r\n"
    assert replies.relayed(452, "5.3.1", "x").enhanced == "4.0.0"  # class must match the code
    assert replies.relayed(250, "2.0.0", "x").code == 451  # never a success from a refusal
    assert replies.relayed(451, "4.3.0", "a\r\nb").lines == ("a  b",)
