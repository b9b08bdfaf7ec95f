"""ClientConnection and ServerConnection driven against each other through a fake link."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_policy import Policy

from meta1py.smtp.client import ClientConnection
from meta1py.smtp.events import NEED_DATA, MailParams, RcptParams, ReplyReceived
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.server import ServerConnection


class Link:
    """Client and server connected back to back (the server answers via Policy)."""

    def __init__(self, server: ServerConnection, lmtp: bool = False) -> None:
        self.policy = Policy(server)
        self.client = ClientConnection(lmtp=lmtp)
        self.replies: list[ReplyReceived] = []
        self._to_client(self.policy.greet())

    def _to_client(self, data: bytes) -> None:
        self.client.receive_data(data)
        while True:
            ev = self.client.next_event()
            if ev is NEED_DATA:
                return
            assert isinstance(ev, ReplyReceived)
            self.replies.append(ev)

    def send(self, data: bytes) -> list[ReplyReceived]:
        start = len(self.replies)
        self._to_client(self.policy.feed(data))
        return self.replies[start:]


def test_pipelined_transaction() -> None:
    link = Link(ServerConnection("mx.test", extensions=Extensions.all()))
    assert link.replies[0].command == "GREETING"
    link.send(link.client.ehlo("c.example"))
    ext = link.client.extensions
    assert ext is not None and ext.pipelining and ext.chunking and ext.size == 10 * 1024 * 1024
    c = link.client
    got = link.send(
        c.mail("a@b.example", MailParams(size=50, body="8BITMIME", ret="HDRS", envid="id+1"))
        + c.rcpt("x@mx.test", RcptParams(frozenset({"SUCCESS"}), ("rfc822", "x@mx.test")))
        + c.rcpt("unknown@mx.test")
        + c.rcpt("y@mx.test")
        + c.data()
    )
    assert [(r.command, r.reply.code, r.recipient) for r in got] == [
        ("MAIL", 250, None),
        ("RCPT", 250, 0),
        ("RCPT", 550, 1),
        ("RCPT", 250, 2),
        ("DATA", 354, None),
    ]
    assert c.accepted_recipients == (0, 2)
    mail = link.policy.events[1]
    assert mail.params == MailParams(50, "8BITMIME", False, "HDRS", "id+1", None)  # type: ignore[attr-defined]
    got = link.send(c.send_data(b".hidden\r\n.\r\nbare\nlf") + c.end_data())
    assert got[0].command == "DATA_END" and got[0].reply.code == 250
    assert link.policy.messages == [b".hidden\r\n.\r\nbare\r\nlf\r\n"]
    got = link.send(c.quit())
    assert got[0].command == "QUIT" and got[0].reply.code == 221


def test_bdat_pipelined() -> None:
    link = Link(ServerConnection("mx.test", extensions=Extensions.all()))
    c = link.client
    link.send(c.ehlo("c"))
    got = link.send(
        c.mail("a@b") + c.rcpt("x@mx.test") + c.bdat(b"Subject: x\r\n") + c.bdat(b"\r\n.\r\n", True)
    )
    assert [r.command for r in got] == ["MAIL", "RCPT", "BDAT", "BDAT_LAST"]
    assert link.policy.messages == [b"Subject: x\r\n\r\n.\r\n"]


def test_lmtp_one_reply_per_accepted_recipient() -> None:
    link = Link(ServerConnection("mx.test", extensions=Extensions.all(), lmtp=True), lmtp=True)
    c = link.client
    link.send(c.ehlo("c"))
    assert c.extensions is not None
    link.send(c.mail("a@b") + c.rcpt("x@mx.test") + c.rcpt("unknown@mx.test") + c.rcpt("z@mx.test"))
    got = link.send(c.data())
    assert got[0].reply.code == 354
    got = link.send(c.send_data(b"hi\r\n") + c.end_data())
    assert [(r.command, r.recipient) for r in got] == [("DATA_END", 0), ("DATA_END", 2)]
    got = link.send(c.mail("a@b") + c.rcpt("x@mx.test") + c.rcpt("y@mx.test") + c.bdat(b"hi\r\n", last=True))
    assert [(r.command, r.recipient) for r in got][-2:] == [("BDAT_LAST", 0), ("BDAT_LAST", 1)]


def test_starttls_both_sides() -> None:
    link = Link(ServerConnection("mx.test", extensions=Extensions(pipelining=True, starttls=True)))
    c = link.client
    link.send(c.ehlo("c"))
    assert c.extensions is not None and c.extensions.starttls
    got = link.send(c.starttls())
    assert got[0].reply.code == 220
    c.starttls_done()  # the Policy already did the server's side
    assert c.extensions is None
    link.send(c.ehlo("c"))
    assert c.extensions is not None and not c.extensions.starttls


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=50), max_size=10))
def test_content_round_trip(pieces: list[bytes]) -> None:
    """Whatever the content, the server gets it back, canonicalised to CRLF."""
    link = Link(ServerConnection("mx.test", extensions=Extensions.all(), max_line_bytes=10**6))
    c = link.client
    link.send(c.ehlo("c") + c.mail("a@b") + c.rcpt("x@mx.test") + c.data())
    wire = b"".join(c.send_data(p) for p in pieces) + c.end_data()
    got = link.send(wire)
    content = b"".join(pieces)
    if b"\x00" in content:
        assert got[0].reply.code == 550
        return
    expected = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert got[0].reply.code == 250
    assert link.policy.messages == [expected]
