"""A tiny stand-in for smtps's policy, used by the dialog and pair tests.

It answers every server event with a reply from ``meta1py.smtp.replies``:
recipients whose local part starts with ``unknown`` are unknown, the domain
``remote.example`` is not relayed, AUTH PLAIN accepts ``user``/``pass``.
"""

from __future__ import annotations

import base64

from meta1py.smtp import replies
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
    Expn,
    Helo,
    Help,
    InvalidCommand,
    Lhlo,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Rset,
    StartTls,
    Vrfy,
)
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply
from meta1py.smtp.server import ServerConnection

GOOD_PLAIN = base64.b64encode(b"\0user\0pass").decode()


class Policy:
    """Drives a ServerConnection: feed bytes in, get reply bytes and events out."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.events: list[object] = []
        self.content = bytearray()
        self.messages: list[bytes] = []
        self.closed = False
        self._bdat_size = 0

    def greet(self) -> bytes:
        return self.conn.send(replies.greeting(self.conn.hostname))

    def feed(self, data: bytes) -> bytes:
        """Feed bytes (b"" for EOF) and answer every event; return the replies."""
        self.conn.receive_data(data)
        out = b""
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                return out
            self.events.append(ev)
            if isinstance(ev, ConnectionClosed):
                self.closed = True
                return out
            reply = self.answer(ev)
            if reply is None:
                continue
            count = self.conn.recipients_accepted if self.conn.lmtp else 1
            if isinstance(ev, EndOfData) or (isinstance(ev, BdatChunkEnd) and ev.last):
                for _ in range(max(count, 1)):
                    out += self.conn.send(reply)
            else:
                out += self.conn.send(reply)
            if isinstance(ev, StartTls) and reply.code == 220:
                self.conn.starttls_done()

    def answer(self, ev: object) -> Reply | None:
        c = self.conn
        if isinstance(ev, (Ehlo, Lhlo)):
            return c.ehlo_reply()
        if isinstance(ev, Helo):
            return replies.helo(c.hostname)
        if isinstance(ev, MailFrom):
            self.content.clear()
            return replies.sender_ok()
        if isinstance(ev, RcptTo):
            if ev.address.local.startswith("unknown"):
                return replies.user_unknown(str(ev.address))
            if ev.address.domain == "remote.example":
                return replies.relay_denied(str(ev.address))
            return replies.recipient_ok()
        if isinstance(ev, DataStart):
            return replies.data_start()
        if isinstance(ev, DataChunk):
            self.content += ev.data
            return None
        if isinstance(ev, Bdat):
            self._bdat_size = ev.size
            return None
        if isinstance(ev, (EndOfData, BdatChunkEnd)):
            if ev.error is not None:
                self.content.clear()
                return ev.error
            if isinstance(ev, BdatChunkEnd) and not ev.last:
                return replies.bdat_ok(self._bdat_size)
            self.messages.append(bytes(self.content))
            self.content.clear()
            return replies.queued("QID")
        if isinstance(ev, (Rset, Noop)):
            return replies.ok()
        if isinstance(ev, Quit):
            return replies.closing()
        if isinstance(ev, StartTls):
            return replies.start_tls()
        if isinstance(ev, Auth):
            if ev.initial_response is None:
                return replies.auth_challenge()
            return self._check_auth(ev.initial_response)
        if isinstance(ev, AuthResponse):
            if ev.line == "*":
                return replies.auth_cancelled()
            return self._check_auth(ev.line)
        if isinstance(ev, Vrfy):
            return replies.cannot_vrfy()
        if isinstance(ev, Expn):
            return replies.expn_disabled()
        if isinstance(ev, Help):
            return replies.help_text()
        if isinstance(ev, InvalidCommand):
            return ev.reply
        raise AssertionError(f"unexpected event {ev!r}")

    def _check_auth(self, response: str) -> Reply:
        if response == GOOD_PLAIN:
            self.conn.auth_done("user")
            return replies.auth_ok()
        return replies.auth_failed()


#: Every extension the core knows, for tests that sweep extension sets.
EXT_FULL = Extensions(
    pipelining=True,
    size=1000,
    eightbitmime=True,
    smtputf8=True,
    chunking=True,
    binarymime=True,
    dsn=True,
    enhancedstatuscodes=True,
)


def run_in_halves(policy: Policy, data: bytes) -> bytes:
    """Greet, feed ``data`` in two reads, then end of input; return everything the server sent."""
    out = policy.greet()
    half = len(data) // 2
    for piece in (data[:half], data[half:], b""):
        if not policy.closed:
            out += policy.feed(piece)
    return out
