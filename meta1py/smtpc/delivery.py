"""smtpc's delivery agents: SMTP, LMTP and Maildir, each answering per recipient.

qmgr sends one ``SmtpcDeliveryRequest`` per job (one message, one destination, some recipients);
the answer carries one result per recipient: ``ok``, ``temp`` or ``perm`` with the reply that
explains it.  Remote replies are hostile input: the core's reply parser caps their size, and the
text is cut again before it crosses the RPC boundary.

SMTP: hosts are tried in the order smar gave (MX preference, then addresses).  A host is left for
the next one when the connection fails, when it answers the greeting, EHLO or MAIL with an
error, or when every recipient got a 4xx; recipients that got a 4xx at one host are tried at the
next.  ``session_failed`` tells qmgr that no host got as far as the recipients (the destination
looks dead).  Connections are cached for a few seconds after a successful transaction and reused
for the next job to the same host (after RSET), as Postfix's scache does.

LMTP (RFC 2033): one reply per accepted recipient after the data.  Maildir: see
:mod:`meta1py.smtpc.maildir`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trio

from meta1py.conf import Config
from meta1py.queue.content import open_content
from meta1py.rpc.messages import (
    SmarHostValue,
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpcRecipientResult,
    SmtpReplyValue,
)
from meta1py.smtp.client import ClientConnection
from meta1py.smtp.errors import SmtpProtocolError
from meta1py.smtp.events import ConnectionClosed, MailParams, NeedData, RcptParams, ReplyReceived
from meta1py.smtp.replies import Reply
from meta1py.smtpc.maildir import deliver_maildir

log = logging.getLogger(__name__)

Status = Literal["ok", "temp", "perm"]
_READ_BYTES = 65536
_CHUNK_BYTES = 256 * 1024
_MAX_TEXT = 400
_CONNECT_TIMEOUT_S = 30.0
_CACHE_IDLE_S = 5.0
_CACHE_MAX = 200


def _value(reply: Reply) -> SmtpReplyValue:
    text = " ".join(reply.lines)[:_MAX_TEXT]
    return SmtpReplyValue(code=reply.code, enhanced=reply.enhanced or "", text=text)


def _local(code: int, enhanced: str, text: str) -> SmtpReplyValue:
    return SmtpReplyValue(code=code, enhanced=enhanced, text=text[:_MAX_TEXT])


def _status(code: int) -> Status:
    return "ok" if code < 400 else ("temp" if code < 500 else "perm")


class _SessionError(Exception):
    """The session with one host cannot go on (I/O error, timeout, protocol violation)."""

    def __init__(self, reply: SmtpReplyValue) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass
class _Client:
    """One SMTP/LMTP connection: the sans-IO client core on a trio stream."""

    stream: trio.abc.Stream
    conn: ClientConnection
    peer: str
    io_timeout: float
    last_used: float = field(default_factory=time.monotonic)

    async def send(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.io_timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError as exc:
            raise _SessionError(_local(421, "4.4.2", f"{self.peer}: timeout while sending")) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _SessionError(_local(421, "4.4.2", f"{self.peer}: connection lost: {exc}")) from exc

    async def reply(self) -> ReplyReceived:
        """The next reply from the server."""
        while True:
            try:
                event = self.conn.next_event()
            except SmtpProtocolError as exc:
                raise _SessionError(_local(421, "4.5.0", f"{self.peer}: protocol error: {exc}")) from exc
            if isinstance(event, ReplyReceived):
                return event
            if isinstance(event, ConnectionClosed):
                raise _SessionError(_local(421, "4.4.2", f"{self.peer}: connection closed by server"))
            assert isinstance(event, NeedData)
            try:
                with trio.fail_after(self.io_timeout):
                    data = await self.stream.receive_some(_READ_BYTES)
            except trio.TooSlowError as exc:
                raise _SessionError(_local(421, "4.4.2", f"{self.peer}: timeout waiting for reply")) from exc
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _SessionError(_local(421, "4.4.2", f"{self.peer}: connection lost: {exc}")) from exc
            self.conn.receive_data(bytes(data))

    async def close(self, polite: bool) -> None:
        if polite:
            with trio.move_on_after(2):
                try:
                    await self.send(self.conn.quit())
                    await self.reply()
                except _SessionError:
                    pass
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, OSError):
                pass


class DeliveryAgents:
    """Answers ``SmtpcDeliveryRequest`` calls."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hostname = config.hostname
        self.io_timeout = config.smtpc.io_timeout
        self.queue_dir = Path(config.queue_directory)
        self._cache: dict[tuple[str, int], list[_Client]] = {}
        self.connections_opened = 0
        self.connections_reused = 0
        self.active = 0
        self._idle = trio.Event()

    async def handle(self, msg: Any) -> Any:
        """RPC entry point."""
        if isinstance(msg, SmtpcDeliveryRequest):
            self.active += 1
            try:
                return await self.deliver(msg)
            finally:
                self.active -= 1
                if not self.active:
                    self._idle.set()
        return None

    async def idle(self) -> None:
        """Wait until no delivery is running."""
        while self.active:
            self._idle = trio.Event()
            await self._idle.wait()

    async def deliver(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        """Deliver one job and report every recipient."""
        route = req.route
        if route.transport == "maildir":
            return await self._maildir(req)
        if route.transport == "lmtp":
            return await self._lmtp(req)
        if route.transport == "smtp":
            return await self._smtp(req)
        reply = _local(554, "5.3.5", f"unknown transport {route.transport!r}")
        return SmtpcDeliveryReply(
            results=tuple(
                SmtpcRecipientResult(idx=r.idx, status="perm", reply=reply, remote_mta=None)
                for r in req.recipients
            ),
            session_failed=False,
        )

    # -- Maildir ---------------------------------------------------------------------------

    async def _maildir(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        assert req.route.path is not None
        maildir = Path(req.route.path)
        results = []
        for r in req.recipients:

            def work(address: str = r.address) -> Any:
                try:
                    content = open_content(self.queue_dir, req.qid)
                except FileNotFoundError:
                    return None
                with content:
                    return deliver_maildir(maildir, content, address, self.hostname)

            outcome = await trio.to_thread.run_sync(work)
            if outcome is None:
                reply = _local(451, "4.3.0", f"queue file {req.qid} missing")
                results.append(SmtpcRecipientResult(idx=r.idx, status="temp", reply=reply, remote_mta=None))
                continue
            reply = _local(outcome.code, outcome.enhanced, outcome.text)
            results.append(
                SmtpcRecipientResult(idx=r.idx, status=outcome.status, reply=reply, remote_mta=None)
            )
        return SmtpcDeliveryReply(results=tuple(results), session_failed=False)

    # -- connections -------------------------------------------------------------------------

    async def _connect(self, host: SmarHostValue, lmtp: bool) -> _Client:
        peer = f"{host.name}[{host.address}]:{host.port}"
        try:
            with trio.fail_after(min(self.io_timeout, _CONNECT_TIMEOUT_S)):
                stream = await trio.open_tcp_stream(host.address, host.port)
        except (OSError, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else (exc.strerror or str(exc))
            raise _SessionError(_local(421, "4.4.1", f"connect to {peer}: {reason}")) from exc
        self.connections_opened += 1
        return _Client(stream, ClientConnection(lmtp=lmtp), peer, self.io_timeout)

    async def _connect_unix(self, path: str) -> _Client:
        peer = f"unix:{path}"
        try:
            with trio.fail_after(min(self.io_timeout, _CONNECT_TIMEOUT_S)):
                stream = await trio.open_unix_socket(path)
        except (OSError, trio.TooSlowError) as exc:
            raise _SessionError(_local(421, "4.4.1", f"connect to {peer}: {exc}")) from exc
        return _Client(stream, ClientConnection(lmtp=True), peer, self.io_timeout)

    async def _hello(self, client: _Client) -> None:
        """Greeting, then EHLO/LHLO (HELO as a fallback for SMTP)."""
        greeting = await client.reply()
        if greeting.reply.code != 220:
            raise _SessionError(_value(greeting.reply))
        await client.send(client.conn.ehlo(self.hostname))
        answer = await client.reply()
        if answer.reply.code >= 400 and not client.conn.lmtp and answer.reply.code >= 500:
            await client.send(client.conn.helo(self.hostname))
            answer = await client.reply()
        if answer.reply.code >= 400:
            raise _SessionError(_value(answer.reply))

    def _cached(self, host: SmarHostValue) -> _Client | None:
        clients = self._cache.get((host.address, host.port))
        now = time.monotonic()
        while clients:
            client = clients.pop()
            if now - client.last_used < _CACHE_IDLE_S:
                return client
        return None

    async def _release(self, host: SmarHostValue, client: _Client) -> None:
        key = (host.address, host.port)
        clients = self._cache.setdefault(key, [])
        if sum(len(c) for c in self._cache.values()) >= _CACHE_MAX:
            await client.close(polite=True)
            return
        client.last_used = time.monotonic()
        clients.append(client)

    async def serve_cache_expiry(self) -> None:
        """Close cached connections idle for longer than the cache time (runs forever)."""
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            for key, clients in list(self._cache.items()):
                keep = [c for c in clients if now - c.last_used < _CACHE_IDLE_S]
                for c in clients:
                    if c not in keep:
                        await c.close(polite=True)
                if keep:
                    self._cache[key] = keep
                else:
                    del self._cache[key]

    # -- SMTP -------------------------------------------------------------------------------

    async def _smtp(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        pending = {r.idx: r for r in req.recipients}
        results: dict[int, SmtpcRecipientResult] = {}
        last: dict[int, SmtpcRecipientResult] = {}
        any_session = False
        hosts = req.route.hosts
        if not hosts:
            reply = _local(451, "4.4.3", "no hosts to deliver to")
            return SmtpcDeliveryReply(
                results=tuple(
                    SmtpcRecipientResult(idx=i, status="temp", reply=reply, remote_mta=None) for i in pending
                ),
                session_failed=True,
            )
        session_reply = _local(451, "4.4.1", "no host could be reached")
        for host in hosts:
            if not pending:
                break
            client = self._cached(host)
            try:
                if client is not None:
                    try:
                        await client.send(client.conn.rset())
                        if (await client.reply()).reply.code != 250:
                            raise _SessionError(session_reply)
                        self.connections_reused += 1
                    except _SessionError:
                        await client.close(polite=False)
                        client = None
                if client is None:
                    client = await self._connect(host, lmtp=False)
                    await self._hello(client)
            except _SessionError as exc:
                session_reply = exc.reply
                log.info("%s: %s", req.qid, exc.reply.text)
                if client is not None:
                    await client.close(polite=True)
                continue
            try:
                outcome = await self._transaction(client, req, list(pending.values()), host)
            except _SessionError as exc:
                log.info("%s: %s", req.qid, exc.reply.text)
                await client.close(polite=False)
                session_reply = exc.reply
                for idx in pending:
                    last[idx] = SmtpcRecipientResult(
                        idx=idx, status="temp", reply=exc.reply, remote_mta=host.name
                    )
                any_session = any_session or bool(last)
                continue
            any_session = any_session or outcome.reached_rcpt
            if outcome.reusable:
                await self._release(host, client)
            else:
                await client.close(polite=True)
            if not outcome.reached_rcpt:
                session_reply = outcome.session_reply or session_reply
                if outcome.session_reply is not None and outcome.session_reply.code >= 500:
                    # MAIL FROM refused for good: no other host will think differently.
                    for idx in list(pending):
                        results[idx] = SmtpcRecipientResult(
                            idx=idx, status="perm", reply=outcome.session_reply, remote_mta=host.name
                        )
                        del pending[idx]
                continue
            for res in outcome.results:
                if res.status == "temp":
                    last[res.idx] = res
                else:
                    results[res.idx] = res
                    pending.pop(res.idx, None)
        for idx in pending:
            results[idx] = last.get(idx) or SmtpcRecipientResult(
                idx=idx, status="temp", reply=session_reply, remote_mta=None
            )
        ordered = tuple(results[r.idx] for r in req.recipients)
        return SmtpcDeliveryReply(results=ordered, session_failed=not any_session)

    async def _transaction(
        self, client: _Client, req: SmtpcDeliveryRequest, rcpts: list[Any], host: SmarHostValue
    ) -> _Outcome:
        """MAIL, RCPT..., DATA on an open session; pipelined when the server offers it."""
        conn = client.conn
        ext = conn.extensions
        assert ext is not None
        if req.smtputf8 and not ext.smtputf8:
            reply = _local(553, "5.6.7", f"{client.peer} does not support SMTPUTF8, which the message needs")
            return _Outcome([], reached_rcpt=False, session_reply=reply, reusable=True)
        params = MailParams(
            size=req.size if ext.size is not None else None,
            body=req.body if (req.body != "7BIT" and ext.eightbitmime) else "7BIT",
            smtputf8=req.smtputf8 and ext.smtputf8,
            ret=req.ret if ext.dsn else None,
            envid=req.envid if ext.dsn else None,
        )
        mail_reply: Reply | None = None
        rcpt_replies: dict[int, Reply] = {}
        data_reply: Reply | None = None

        def note(event: ReplyReceived) -> None:
            nonlocal mail_reply, data_reply
            if event.command == "UNSOLICITED":
                raise _SessionError(_value(event.reply))
            if event.command == "MAIL":
                mail_reply = event.reply
            elif event.command == "RCPT" and event.recipient is not None:
                rcpt_replies[event.recipient] = event.reply
            elif event.command == "DATA":
                data_reply = event.reply

        rcpt_commands = [lambda r=r: conn.rcpt(r.address, self._rcpt_params(r, ext.dsn)) for r in rcpts]
        if ext.pipelining:
            # RFC 2920: MAIL, every RCPT and DATA in one write, then read the replies in order.
            out = conn.mail(req.sender, params) + b"".join(make() for make in rcpt_commands) + conn.data()
            await client.send(out)
            for _ in range(2 + len(rcpts)):
                note(await client.reply())
        else:
            await client.send(conn.mail(req.sender, params))
            note(await client.reply())
            if mail_reply is not None and mail_reply.code < 300:
                for make in rcpt_commands:
                    await client.send(make())
                    note(await client.reply())
                if any(r.code < 300 for r in rcpt_replies.values()):
                    await client.send(conn.data())
                    note(await client.reply())
        assert mail_reply is not None
        if mail_reply.code >= 300:
            if data_reply is not None and data_reply.code == 354:
                await client.send(conn.end_data())
                await client.reply()
            return _Outcome([], reached_rcpt=False, session_reply=_value(mail_reply), reusable=True)
        accepted = [i for i in range(len(rcpts)) if i in rcpt_replies and rcpt_replies[i].code < 300]
        results: list[SmtpcRecipientResult] = []
        for i, r in enumerate(rcpts):
            rr = rcpt_replies.get(i)
            if rr is not None and rr.code >= 300:
                results.append(
                    SmtpcRecipientResult(
                        idx=r.idx, status=_status(rr.code), reply=_value(rr), remote_mta=host.name
                    )
                )
        if not accepted:
            if data_reply is not None and data_reply.code == 354:
                # RFC 2920: DATA was accepted although no recipient was; end it empty.
                await client.send(conn.end_data())
                await client.reply()
            return _Outcome(results, reached_rcpt=True, reusable=True)
        if data_reply is None or data_reply.code != 354:
            reply = _value(data_reply) if data_reply is not None else _local(451, "4.3.0", "no reply to DATA")
            status: Status = "perm" if reply.code >= 500 else "temp"
            for i in accepted:
                results.append(
                    SmtpcRecipientResult(idx=rcpts[i].idx, status=status, reply=reply, remote_mta=host.name)
                )
            return _Outcome(results, reached_rcpt=True, reusable=True)
        await self._send_content(client, req.qid)
        end = await client.reply()
        for i in accepted:
            results.append(
                SmtpcRecipientResult(
                    idx=rcpts[i].idx,
                    status=_status(end.reply.code),
                    reply=_value(end.reply),
                    remote_mta=host.name,
                )
            )
        return _Outcome(results, reached_rcpt=True, reusable=end.reply.code < 400)

    @staticmethod
    def _rcpt_params(r: Any, dsn: bool) -> RcptParams | None:
        if not dsn or not (r.notify or r.orcpt):
            return None
        orcpt = None
        if r.orcpt and ";" in r.orcpt:
            kind, _sep, addr = r.orcpt.partition(";")
            orcpt = (kind, addr)
        return RcptParams(notify=frozenset(r.notify) if r.notify else None, orcpt=orcpt)

    async def _send_content(self, client: _Client, qid: str) -> None:
        try:
            content = open_content(self.queue_dir, qid)
        except FileNotFoundError as exc:
            raise _SessionError(_local(451, "4.3.0", f"queue file {qid} missing")) from exc
        with content:
            while True:
                chunk = content.read(_CHUNK_BYTES)
                if not chunk:
                    break
                await client.send(client.conn.send_data(chunk))
        await client.send(client.conn.end_data())

    # -- LMTP -------------------------------------------------------------------------------

    async def _lmtp(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        route = req.route
        rcpts = list(req.recipients)
        client: _Client | None = None
        try:
            if route.path is not None:
                client = await self._connect_unix(route.path)
            else:
                client = await self._connect(route.hosts[0], lmtp=True)
            await self._hello(client)
            host = route.hosts[0] if route.hosts else SmarHostValue(name=route.path or "", address="", port=0)
            results = await self._transaction_lmtp(client, req, rcpts, host)
        except _SessionError as exc:
            if client is not None:
                await client.close(polite=False)
            return SmtpcDeliveryReply(
                results=tuple(
                    SmtpcRecipientResult(idx=r.idx, status="temp", reply=exc.reply, remote_mta=None)
                    for r in rcpts
                ),
                session_failed=True,
            )
        await client.close(polite=True)
        return SmtpcDeliveryReply(results=tuple(results), session_failed=False)

    async def _transaction_lmtp(
        self, client: _Client, req: SmtpcDeliveryRequest, rcpts: list[Any], host: SmarHostValue
    ) -> list[SmtpcRecipientResult]:
        conn = client.conn
        ext = conn.extensions
        assert ext is not None
        params = MailParams(
            body=req.body if ext.eightbitmime and req.body != "7BIT" else "7BIT",
            smtputf8=req.smtputf8 and ext.smtputf8,
        )
        await client.send(conn.mail(req.sender, params))
        mail = await client.reply()
        if mail.reply.code >= 300:
            return [
                SmtpcRecipientResult(
                    idx=r.idx,
                    status=_status(mail.reply.code),
                    reply=_value(mail.reply),
                    remote_mta=client.peer,
                )
                for r in rcpts
            ]
        results: dict[int, SmtpcRecipientResult] = {}
        accepted: list[int] = []
        for i, r in enumerate(rcpts):
            await client.send(conn.rcpt(r.address))
            rr = await client.reply()
            if rr.reply.code < 300:
                accepted.append(i)
            else:
                results[i] = SmtpcRecipientResult(
                    idx=r.idx, status=_status(rr.reply.code), reply=_value(rr.reply), remote_mta=client.peer
                )
        if not accepted:
            await client.send(conn.rset())
            await client.reply()
            return [results[i] for i in range(len(rcpts))]
        await client.send(conn.data())
        data = await client.reply()
        if data.reply.code != 354:
            for i in accepted:
                results[i] = SmtpcRecipientResult(
                    idx=rcpts[i].idx,
                    status=_status(max(data.reply.code, 400)),
                    reply=_value(data.reply),
                    remote_mta=client.peer,
                )
            return [results[i] for i in range(len(rcpts))]
        await self._send_content(client, req.qid)
        for _ in accepted:
            event = await client.reply()
            i = event.recipient if event.recipient is not None else accepted[0]
            results[i] = SmtpcRecipientResult(
                idx=rcpts[i].idx,
                status=_status(event.reply.code),
                reply=_value(event.reply),
                remote_mta=client.peer,
            )
        return [results[i] for i in range(len(rcpts))]


@dataclass
class _Outcome:
    results: list[SmtpcRecipientResult]
    reached_rcpt: bool
    session_reply: SmtpReplyValue | None = None
    reusable: bool = False
