"""``meta1 sendmail -bs``: an SMTP session on standard input and output.

For mail programs that submit by talking SMTP to a local sendmail through a pipe (git
send-email, mutt, Emacs, some PHP libraries). The session is the sans-IO server core
(:mod:`meta1py.smtp.server`: the same parser, limits and replies as smtps) over file descriptors
0 and 1, with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN and ENHANCEDSTATUSCODES.

Each transaction goes on live to smtps over loopback (MAIL FROM and each RCPT TO when they
arrive, the content at the end of DATA), so the client gets smtps's own answers, recipient checks
included, and smtps's durability: ``250 Ok: queued as ID`` only after qmgr's commit. When smtps
cannot take the transaction (it is not running, the connection breaks, or it answers 4xx to MAIL
or to the end of DATA), the transaction goes offline: recipients are accepted after the core's
syntax check, and at the end of DATA the message is written into the pickup directory
(:mod:`meta1py.cli.postdrop`); the 250 comes only once the file is durable. Refusals (5xx) are
passed on unchanged.

The handlers return replies; :meth:`StdioSession.receive` is the one place that turns them into
bytes, so the session can be driven in memory by tests (``tests/unit/cli/test_sendmail_bs.py``).
"""

from __future__ import annotations

import os
import re
import select
import smtplib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from meta1py.cli.postdrop import DropError
from meta1py.conf import Config
from meta1py.queue.pickup import PickupEnvelope, PickupRecipient
from meta1py.smtp import events as ev
from meta1py.smtp import replies
from meta1py.smtp.address import NullPath
from meta1py.smtp.client import xtext_encode
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply
from meta1py.smtp.server import ServerConnection

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]{1,40})")
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3}) ?(.*)\Z", re.S)
_READ_BYTES = 65536

Connect = Callable[[], "smtplib.SMTP | None"]
"""Opens the upstream session to smtps (EHLO done), or None when smtps does not answer."""
Drop = Callable[[PickupEnvelope, bytes], str]
"""Writes a message into the pickup directory; returns its name (raises DropError)."""


class _UpstreamGone(Exception):
    """The connection to smtps broke: the transaction goes offline."""


@dataclass
class _Transaction:
    sender: str
    params: ev.MailParams
    online: bool
    recipients: list[PickupRecipient] = field(default_factory=list)
    content: bytearray = field(default_factory=bytearray)


def _split(code: int, message: bytes) -> tuple[str | None, str]:
    """An upstream reply's enhanced code and text."""
    text = " ".join(message.decode("utf-8", "replace").split())
    m = _ENHANCED.match(text)
    if m and m.group(1)[0] == str(code)[0]:
        return m.group(1), m.group(2)
    return None, text


def _relayed(code: int, message: bytes) -> Reply:
    enhanced, text = _split(code, message)
    return replies.relayed(code, enhanced, text)


class StdioSession:
    """One ``sendmail -bs`` session: bytes from the client in, bytes to the client out.

    Args:
        hostname: our name in the greeting and EHLO reply.
        max_message_bytes: SIZE, and the largest message accepted (smtps's first section's).
        max_recipients: recipients per transaction.
        connect: opens the upstream session to smtps.
        drop: writes an offline transaction into the pickup directory.
        can_drop: whether :attr:`drop` can work at all for this user (checked at MAIL, so that a
            transaction that could not be taken is refused before the client sends its content).
    """

    def __init__(
        self,
        hostname: str,
        *,
        max_message_bytes: int,
        max_recipients: int,
        connect: Connect,
        drop: Drop,
        can_drop: Callable[[], bool],
    ) -> None:
        self.hostname = hostname
        extensions = Extensions(
            pipelining=True,
            size=max_message_bytes,
            eightbitmime=True,
            smtputf8=True,
            dsn=True,
            enhancedstatuscodes=True,
        )
        self.core = ServerConnection(
            hostname,
            extensions=extensions,
            max_message_bytes=max_message_bytes,
            max_recipients=max_recipients,
        )
        self._connect = connect
        self._drop = drop
        self._can_drop = can_drop
        self._upstream: smtplib.SMTP | None = None
        self.txn: _Transaction | None = None
        self.queued: list[str] = []
        """The queue ids (smtps) and pickup file names of the messages taken, in order."""

    def greeting(self) -> bytes:
        """The 220 greeting."""
        return self.core.send(replies.greeting(self.hostname, "ESMTP meta1py (sendmail -bs)"))

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        """Take bytes from the client (``b""``: end of input); return the replies and whether the
        session is over."""
        self.core.receive_data(data)
        out = bytearray()
        while True:
            event = self.core.next_event()
            if isinstance(event, ev.NeedData):
                return bytes(out), False
            if isinstance(event, ev.ConnectionClosed):
                self.close()
                return bytes(out), True
            reply = self.handle(event)
            if reply is not None:
                out += self.core.send(reply)
                if reply.code == 421 or isinstance(event, ev.Quit):
                    self.close()
                    return bytes(out), True

    def close(self) -> None:
        """End the upstream session."""
        up, self._upstream = self._upstream, None
        if up is not None:
            try:
                up.quit()
            except (OSError, smtplib.SMTPException):
                up.close()

    # -- events ----------------------------------------------------------------------------------

    def handle(self, event: object) -> Reply | None:
        """The reply to one event (None for content, which is answered at its end)."""
        if isinstance(event, ev.DataChunk):
            if self.txn is not None:
                self.txn.content += event.data
            return None
        if isinstance(event, ev.Ehlo):
            self._reset()
            return self.core.ehlo_reply()
        if isinstance(event, ev.Helo):
            self._reset()
            return replies.helo(self.hostname)
        if isinstance(event, ev.MailFrom):
            return self._mail(event)
        if isinstance(event, ev.RcptTo):
            return self._rcpt(event)
        if isinstance(event, ev.DataStart):
            if self.txn is None or not self.txn.recipients:
                return replies.no_valid_recipients()
            return replies.data_start()
        if isinstance(event, ev.EndOfData):
            return self._end_of_data(event.error)
        if isinstance(event, ev.Rset):
            self._reset()
            return replies.ok()
        if isinstance(event, ev.Noop):
            return replies.ok()
        if isinstance(event, ev.Quit):
            return replies.closing(self.hostname)
        if isinstance(event, ev.Vrfy):
            return replies.cannot_vrfy()
        if isinstance(event, ev.Expn):
            return replies.expn_disabled()
        if isinstance(event, ev.Help):
            return replies.help_text()
        if isinstance(event, ev.InvalidCommand):
            return event.reply
        # STARTTLS, AUTH and BDAT are not offered, so the core answers them as InvalidCommand.
        raise AssertionError(f"unhandled SMTP event {event!r}")

    def _reset(self) -> None:
        if self.txn is not None and self.txn.online and self._upstream is not None:
            try:
                self._upstream.rset()
            except (OSError, smtplib.SMTPException):
                self._drop_upstream()
        self.txn = None

    def _drop_upstream(self) -> None:
        up, self._upstream = self._upstream, None
        if up is not None:
            up.close()

    def _up(self) -> smtplib.SMTP:
        if self._upstream is None:
            raise _UpstreamGone()
        return self._upstream

    def _mail(self, event: ev.MailFrom) -> Reply:
        sender = "" if isinstance(event.address, NullPath) else str(event.address)
        params = event.params
        if self._upstream is None:
            self._upstream = self._connect()
        upstream_reply: Reply | None = None
        if self._upstream is not None:
            try:
                code, message = self._up().mail(sender, self._mail_options(params))
            except (OSError, smtplib.SMTPException):
                self._drop_upstream()
            else:
                if code < 300:
                    self.txn = _Transaction(sender, params, online=True)
                    return replies.sender_ok()
                if code >= 500:
                    return _relayed(code, message)
                upstream_reply = _relayed(code, message)
                self._reset_upstream()
        if not self._can_drop():
            # Neither smtps nor the pickup directory can take it: the client keeps the message.
            return upstream_reply or replies.local_error()
        self.txn = _Transaction(sender, params, online=False)
        return replies.sender_ok()

    def _reset_upstream(self) -> None:
        try:
            self._up().rset()
        except (_UpstreamGone, OSError, smtplib.SMTPException):
            self._drop_upstream()

    def _mail_options(self, params: ev.MailParams) -> list[str]:
        up = self._up()
        options: list[str] = []
        if params.size is not None and up.has_extn("size"):
            options.append(f"SIZE={params.size}")
        if params.body != "7BIT" and up.has_extn("8bitmime"):
            options.append(f"BODY={params.body}")
        if params.smtputf8 and up.has_extn("smtputf8"):
            options.append("SMTPUTF8")
        if up.has_extn("dsn"):
            if params.ret is not None:
                options.append(f"RET={params.ret}")
            if params.envid is not None:
                options.append(f"ENVID={xtext_encode(params.envid)}")
        return options

    def _rcpt(self, event: ev.RcptTo) -> Reply:
        txn = self.txn
        if txn is None:
            return replies.bad_sequence("Need MAIL command")
        notify = tuple(sorted(event.params.notify)) if event.params.notify else None
        orcpt = f"{event.params.orcpt[0]};{event.params.orcpt[1]}" if event.params.orcpt else None
        recipient = PickupRecipient(str(event.address), notify, orcpt)
        if txn.online:
            options: list[str] = []
            try:
                up = self._up()
                if up.has_extn("dsn"):
                    if notify:
                        options.append("NOTIFY=" + ",".join(notify))
                    if event.params.orcpt:
                        kind, value = event.params.orcpt
                        options.append(f"ORCPT={kind};{xtext_encode(value)}")
                code, message = up.rcpt(str(event.address), options)
            except (_UpstreamGone, OSError, smtplib.SMTPException):
                # smtps went away in the middle: what it accepted so far, and the rest, go offline.
                self._drop_upstream()
                if not self._can_drop():
                    return replies.local_error()
                txn.online = False
            else:
                if code >= 400:
                    return _relayed(code, message)
        txn.recipients.append(recipient)
        return replies.recipient_ok()

    def _end_of_data(self, error: Reply | None) -> Reply:
        txn, self.txn = self.txn, None
        if error is not None or txn is None:
            if txn is not None and txn.online:
                self._reset_upstream()
            return error or replies.bad_sequence()
        content = bytes(txn.content)
        if txn.online:
            try:
                code, message = self._up().data(content)
            except smtplib.SMTPDataError as exc:
                raw = exc.smtp_error
                code, message = exc.smtp_code, raw if isinstance(raw, bytes) else raw.encode()
            except (_UpstreamGone, OSError, smtplib.SMTPException):
                self._drop_upstream()
                code, message = 0, b""
            if 200 <= code < 300:
                m = _QUEUED_AS.search(message.decode("ascii", "replace"))
                qid = m.group(1) if m else "-"
                self.queued.append(qid)
                return replies.queued(qid)
            if code >= 500:
                return _relayed(code, message)
            if code:
                self._reset_upstream()
        # Offline: the pickup directory. A 250 only once the file is durable.
        envelope = PickupEnvelope(
            sender=txn.sender,
            recipients=tuple(txn.recipients),
            ret=txn.params.ret,
            envid=txn.params.envid,
            body="8BITMIME" if not content.isascii() else "7BIT",
            smtputf8=txn.params.smtputf8,
            size=len(content),
        )
        try:
            name = self._drop(envelope, content)
        except DropError as exc:
            print(f"meta1 sendmail: cannot queue the message: {exc}", file=sys.stderr)
            return replies.local_error()
        self.queued.append(name)
        return replies.queued(name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run(cfg: Config, connect: Connect, drop: Drop, can_drop: Callable[[], bool]) -> int:
    """Serve one session on file descriptors 0 and 1; returns the exit status (0; 75 on a
    timeout or a broken pipe, as sendmail does)."""
    section = cfg.smtps[0]
    session = StdioSession(
        cfg.hostname,
        max_message_bytes=section.max_message_size,
        max_recipients=section.max_recipients,
        connect=connect,
        drop=drop,
        can_drop=can_drop,
    )
    try:
        _write_all(1, session.greeting())
        while True:
            ready, _, _ = select.select([0], [], [], section.io_timeout)
            if not ready:
                _write_all(1, session.core.send(replies.timeout()))
                session.close()
                return 75
            data = os.read(0, _READ_BYTES)
            out, done = session.receive(data)
            if out:
                _write_all(1, out)
            if done:
                return 0
    except (BrokenPipeError, ConnectionError):
        session.close()
        return 75
