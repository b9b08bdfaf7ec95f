"""One SMTP session: the trio adapter around the sans-IO server core.

The core (:class:`meta1py.smtp.server.ServerConnection`) turns bytes into events and replies into
bytes; this module answers the events.  Policy comes from smar (``SmarRecipientCheckRequest``),
durability from the content file (fsync here, directory fsyncs shared by
:class:`~meta1py.queue.content.DirectorySyncer`) and from qmgr's group commit
(``QueueEnvelopeCommitRequest``).  The 250 reply to the end of data is sent only after qmgr has
answered that the envelope is durable.

Replies are buffered while pipelined commands are waiting in the core and written when the core
needs more input (RFC 2920 §3.1: the server may batch its responses).

Timeouts (RFC 5321 §4.5.3.2): ``io_timeout`` bounds every wait for input and every write;
``session_timeout`` bounds the whole session.  Both end the session with 421 4.4.2.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from meta1py import log as mlog
from meta1py.conf import Config, SmtpsConfig
from meta1py.queue.content import ContentWriter, DirectorySyncer
from meta1py.queue.errors import QueueStorageError
from meta1py.rpc.errors import RpcError
from meta1py.rpc.messages import (
    QueueEnvelopeCommitRequest,
    QueueRecipientValue,
    SmarRecipientCheckRequest,
)
from meta1py.smtp import events as ev
from meta1py.smtp import replies
from meta1py.smtp.address import Address, NullPath
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply
from meta1py.smtp.server import ServerConnection

log = logging.getLogger(__name__)

_READ_BYTES = 65536
_HEADER_SCAN_BYTES = 65536
_RECEIVED_RE = re.compile(rb"(?im)^received:")
# RPC deadlines: smar may be doing DNS; qmgr waits for a group commit.
_POLICY_TIMEOUT_S = 30.0
_COMMIT_TIMEOUT_S = 60.0


class RpcCaller:
    """What the session needs of an RPC client: ``await call(msg, timeout=...)``."""

    call: Callable[..., Awaitable[object]]


@dataclass
class SessionLimits:
    """Counters shared by every session of one smtps process (max_sessions, per client)."""

    total: int = 0
    per_client: dict[str, int] = field(default_factory=dict)

    def admit(self, client: str, service: SmtpsConfig) -> bool:
        """Count a new session; False when a limit is reached (answer 421 4.7.0)."""
        if self.total >= service.max_sessions:
            return False
        if self.per_client.get(client, 0) >= service.max_sessions_per_client:
            return False
        self.total += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return True

    def release(self, client: str) -> None:
        """Forget a finished session."""
        self.total -= 1
        left = self.per_client.get(client, 1) - 1
        if left:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)


@dataclass
class SmtpsContext:
    """Everything a session needs, shared by all sessions of the process."""

    config: Config
    smar: RpcCaller
    qmgr: RpcCaller
    syncer: DirectorySyncer
    limits: SessionLimits
    shutdown: trio.Event
    tls_context: object | None = None  # ssl.SSLContext provider, set when TLS is configured


@dataclass
class _Transaction:
    sender: Address | NullPath
    params: ev.MailParams
    recipients: list[QueueRecipientValue] = field(default_factory=list)
    accepted_rcpts: list[str] = field(default_factory=list)
    writer: ContentWriter | None = None
    storage_error: QueueStorageError | None = None
    header_scan: bytearray = field(default_factory=bytearray)
    header_done: bool = False
    hops: int = 0


def _proto(esmtp: bool, tls: bool, auth: bool) -> str:
    # RFC 3848 "with" protocol types.
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if auth else "")


class Session:
    """One client connection on one smtps service (listener section)."""

    def __init__(
        self,
        ctx: SmtpsContext,
        service: SmtpsConfig,
        stream: trio.abc.Stream,
        client_address: str,
        session_id: str,
    ) -> None:
        self.ctx = ctx
        self.service = service
        self.stream = stream
        self.client_address = client_address
        self.sid = session_id
        cfg = ctx.config
        self.hostname = cfg.hostname
        flags = set(service.flags)
        if ctx.tls_context is not None:
            flags.add("starttls")
        self.extensions = Extensions.from_flags(flags, service.max_message_size)
        self.core = ServerConnection(
            self.hostname,
            extensions=self.extensions,
            max_recipients=service.max_recipients,
            max_message_bytes=service.max_message_size,
            bare_newline="normalize" if "bare_newline_normalize" in service.flags else "reject",
        )
        self.helo: str | None = None
        self.esmtp = False
        self.tls_active = False
        self.authenticated: str | None = None
        self.txn: _Transaction | None = None
        self.out = bytearray()
        self.messages = 0
        self._recv_scope: trio.CancelScope | None = None

    # -- I/O -------------------------------------------------------------------------------------

    def reply(self, reply: Reply) -> None:
        """Queue a reply (written at the next flush)."""
        self.out += self.core.send(reply)

    async def flush(self) -> None:
        """Write queued replies within io_timeout."""
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            with trio.fail_after(self.service.io_timeout):
                await self.stream.send_all(data)

    async def receive(self) -> None:
        """Flush replies, then read more input (or EOF) into the core within io_timeout."""
        await self.flush()
        if self.ctx.shutdown.is_set():
            raise _Shutdown
        with trio.CancelScope(deadline=trio.current_time() + self.service.io_timeout) as scope:
            self._recv_scope = scope
            data = await self.stream.receive_some(_READ_BYTES)
        self._recv_scope = None
        if scope.cancelled_caught:
            if self.ctx.shutdown.is_set():
                raise _Shutdown
            raise _SessionTimeout
        self.core.receive_data(bytes(data))

    def interrupt(self) -> None:
        """Shutdown: stop waiting for the client (the session answers 421 4.3.2)."""
        if self._recv_scope is not None:
            self._recv_scope.cancel()

    # -- the session -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until QUIT, EOF, timeout or shutdown."""
        mlog.maillog("connect", None, session=self.sid, client=self.client_address)
        try:
            with trio.fail_after(self.service.session_timeout):
                await self._serve()
        except (_SessionTimeout, trio.TooSlowError):
            self.out.clear()
            await self._send_and_close(replies.timeout())
        except _Shutdown:
            await self._send_and_close(replies.shutting_down())
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            log.info("session %s: connection lost", self.sid)
        finally:
            self._abort_transaction()
            mlog.maillog(
                "disconnect", None, session=self.sid, client=self.client_address, messages=self.messages
            )

    async def _send_and_close(self, reply: Reply) -> None:
        try:
            with trio.move_on_after(5):
                await self.stream.send_all(reply.to_bytes())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _serve(self) -> None:
        self.reply(replies.greeting(self.hostname))
        while True:
            event = self.core.next_event()
            if isinstance(event, ev.NeedData):
                await self.receive()
                continue
            if isinstance(event, ev.ConnectionClosed):
                return
            done = await self.handle(event)
            if done:
                await self.flush()
                return

    async def handle(self, event: object) -> bool:
        """Answer one event. Returns True when the session must end."""
        if isinstance(event, ev.DataChunk):
            self._write_content(event.data)
            return False
        if isinstance(event, ev.Ehlo | ev.Helo):
            self.helo = event.domain
            self.esmtp = isinstance(event, ev.Ehlo)
            self._abort_transaction()
            if self.esmtp:
                self.reply(self.core.ehlo_reply())
            else:
                self.reply(replies.helo(self.hostname))
            return False
        if isinstance(event, ev.MailFrom):
            self.txn = _Transaction(sender=event.address, params=event.params)
            self.reply(replies.sender_ok())
            return False
        if isinstance(event, ev.RcptTo):
            await self._rcpt(event)
            return False
        if isinstance(event, ev.DataStart):
            self._start_content()
            if self.txn is not None and self.txn.storage_error is not None:
                err = self.txn.storage_error
                self._abort_transaction()
                self.reply(replies.insufficient_storage() if err.disk_full else replies.local_error())
            else:
                self.reply(replies.data_start())
            return False
        if isinstance(event, ev.Bdat):
            self._start_content()
            return False
        if isinstance(event, ev.EndOfData):
            self.reply(await self._end_of_data(event.error))
            return False
        if isinstance(event, ev.BdatChunkEnd):
            if event.error is not None or event.last:
                self.reply(await self._end_of_data(event.error))
            elif self.txn is not None and self.txn.storage_error is not None:
                self.reply(await self._end_of_data(None))
            else:
                self.reply(replies.bdat_ok(0))
            return False
        if isinstance(event, ev.Rset):
            self._abort_transaction()
            self.reply(replies.ok())
            return False
        if isinstance(event, ev.Noop):
            self.reply(replies.ok())
            return False
        if isinstance(event, ev.Quit):
            self.reply(replies.closing(self.hostname))
            return True
        if isinstance(event, ev.Vrfy):
            self.reply(replies.cannot_vrfy())
            return False
        if isinstance(event, ev.Expn):
            self.reply(replies.expn_disabled())
            return False
        if isinstance(event, ev.Help):
            self.reply(replies.help_text())
            return False
        if isinstance(event, ev.StartTls):
            return await self._starttls()
        if isinstance(event, ev.Auth | ev.AuthResponse):
            self.reply(replies.auth_mechanism_unknown())
            return False
        if isinstance(event, ev.InvalidCommand):
            self.reply(event.reply)
            return event.reply.code == 421
        raise AssertionError(f"unhandled SMTP event {event!r}")

    # -- commands --------------------------------------------------------------------------------

    async def _rcpt(self, event: ev.RcptTo) -> None:
        txn = self.txn
        assert txn is not None
        rcpt = str(event.address)
        request = SmarRecipientCheckRequest(
            client_address=self.client_address,
            service=self.service.name or "",
            authenticated=self.authenticated,
            sender=str(txn.sender) if isinstance(txn.sender, Address) else "",
            recipient=rcpt,
        )
        try:
            answer = await self.ctx.smar.call(request, timeout=_POLICY_TIMEOUT_S)
        except RpcError as exc:
            log.warning("session %s: smar unavailable for RCPT: %s", self.sid, exc)
            self.reply(replies.temp_failure("Recipient check unavailable, try again later"))
            return
        if answer.action != "accept":  # type: ignore[attr-defined]
            r = answer.reply  # type: ignore[attr-defined]
            reply = Reply(r.code, r.enhanced or None, (r.text,))
            mlog.maillog(
                "rejected",
                None,
                session=self.sid,
                client=self.client_address,
                sender=request.sender,
                rcpt=rcpt,
                reply=str(reply),
            )
            self.reply(reply)
            return
        orcpt = None
        if event.params.orcpt is not None:
            orcpt = f"{event.params.orcpt[0]};{event.params.orcpt[1]}"
        notify = tuple(sorted(event.params.notify)) if event.params.notify is not None else None
        expanded = answer.expanded or (rcpt,)  # type: ignore[attr-defined]
        for target in expanded:
            txn.recipients.append(
                QueueRecipientValue(
                    address=target,
                    orcpt=orcpt or (f"rfc822;{rcpt}" if target != rcpt else None),
                    notify=notify,
                )
            )
        txn.accepted_rcpts.append(rcpt)
        self.reply(replies.recipient_ok())

    def _received_header(self, qid: str) -> bytes:
        helo = self.helo or "unknown"
        proto = _proto(self.esmtp, self.tls_active, self.authenticated is not None)
        lines = [f"Received: from {_clean(helo)} ([{self.client_address}])"]
        if self.authenticated:
            lines.append(f"\t(authenticated sender: {_clean(self.authenticated)})")
        lines.append(f"\tby {self.hostname} (meta1py) with {proto} id {qid}")
        txn = self.txn
        when = email.utils.formatdate(time.time(), localtime=True)
        if txn is not None and len(txn.accepted_rcpts) == 1:
            lines.append(f"\tfor <{_clean(txn.accepted_rcpts[0])}>; {when}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{when}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")

    def _start_content(self) -> None:
        txn = self.txn
        if txn is None or txn.writer is not None or txn.storage_error is not None:
            return
        try:
            txn.writer = ContentWriter(self.ctx.config.queue_directory)
            txn.writer.write(self._received_header(txn.writer.qid))
        except QueueStorageError as exc:
            log.error("session %s: cannot create content file: %s", self.sid, exc)
            txn.storage_error = exc
            if txn.writer is not None:
                txn.writer.abort()
                txn.writer = None

    def _write_content(self, data: bytes) -> None:
        txn = self.txn
        if txn is None or txn.writer is None:
            return
        if not txn.header_done:
            txn.header_scan += data
            end = txn.header_scan.find(b"\r\n\r\n")
            if end >= 0 or len(txn.header_scan) >= _HEADER_SCAN_BYTES:
                head = bytes(txn.header_scan[: end if end >= 0 else _HEADER_SCAN_BYTES])
                txn.hops = len(_RECEIVED_RE.findall(head))
                txn.header_done = True
                txn.header_scan = bytearray()
        try:
            txn.writer.write(data)
        except QueueStorageError as exc:
            log.error("session %s: write failed for %s: %s", self.sid, txn.writer.qid, exc)
            txn.storage_error = exc
            txn.writer.abort()
            txn.writer = None

    async def _end_of_data(self, error: Reply | None) -> Reply:
        """Finish the content, commit the envelope, and return the reply for the end of data."""
        txn = self.txn
        self.txn = None
        if txn is None:
            return replies.bad_sequence()
        writer = txn.writer
        if error is not None:
            if writer is not None:
                writer.abort()
            return error
        if txn.storage_error is not None or writer is None:
            if writer is not None:
                writer.abort()
            err = txn.storage_error
            return replies.insufficient_storage() if err is None or err.disk_full else replies.local_error()
        if not txn.header_done:
            txn.hops = len(_RECEIVED_RE.findall(bytes(txn.header_scan)))
        if txn.hops >= self.ctx.config.qmgr.max_hops:
            writer.abort()
            mlog.maillog("rejected", writer.qid, session=self.sid, reason="too many hops", hops=txn.hops)
            return Reply(554, "5.4.6", ("Too many hops: mail forwarding loop",))
        qid = writer.qid
        try:
            await trio.to_thread.run_sync(writer.finish)
            await self.ctx.syncer.sync(writer.path.parent)
        except QueueStorageError as exc:
            log.error("session %s: cannot sync %s: %s", self.sid, qid, exc)
            writer.abort()
            return replies.insufficient_storage() if exc.disk_full else replies.local_error()
        sender = str(txn.sender) if isinstance(txn.sender, Address) else ""
        request = QueueEnvelopeCommitRequest(
            qid=qid,
            sender=sender,
            recipients=tuple(txn.recipients),
            size=writer.size,
            envid=txn.params.envid,
            ret=txn.params.ret,
            body=txn.params.body,
            smtputf8=txn.params.smtputf8,
            client_address=self.client_address,
            client_helo=(self.helo or "")[:255],
            arrival_time=time.time(),
        )
        try:
            answer = await self.ctx.qmgr.call(request, timeout=_COMMIT_TIMEOUT_S)
        except RpcError as exc:
            # Outcome unknown when the call timed out: qmgr may have committed. Keep the content
            # file (an orphan is removed by recovery; a committed message must not lose it).
            log.error("session %s: qmgr commit for %s failed: %s", self.sid, qid, exc)
            return replies.local_error()
        if not answer.ok:  # type: ignore[attr-defined]
            r = answer.reply  # type: ignore[attr-defined]
            writer.abort()
            return Reply(r.code, r.enhanced or None, (r.text,))
        self.messages += 1
        mlog.maillog(
            "queued",
            qid,
            session=self.sid,
            client=self.client_address,
            helo=self.helo or "",
            sender=sender,
            nrcpt=len(txn.recipients),
            size=writer.size,
        )
        return replies.queued(qid)

    def _abort_transaction(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None and txn.writer is not None:
            txn.writer.abort()

    async def _starttls(self) -> bool:
        self.reply(replies.tls_unavailable())
        return False


class _SessionTimeout(Exception):
    """No input within io_timeout."""


class _Shutdown(Exception):
    """smtps is stopping: answer 421 4.3.2 and close."""


_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _clean(text: str) -> str:
    """Peer text for a header: printable ASCII without spaces, bounded."""
    return _UNSAFE.sub("?", text)[:255]
