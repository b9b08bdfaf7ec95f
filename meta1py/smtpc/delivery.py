"""smtpc's delivery agents: SMTP, LMTP and Maildir, each answering per recipient.

qmgr sends one ``SmtpcDeliveryRequest`` per job (one message, one destination, some recipients);
the answer carries one result per recipient: ``ok``, ``temp`` or ``perm`` with the reply that
explains it.  Remote replies are hostile input: the core's reply parser caps their size and
refuses malformed ones (bare LF, NUL, a bad code, an over-long line), which leave the host with
``451 4.5.0 malformed reply from HOST: ...`` so the message stays queued; the text is cut again
before it crosses the RPC boundary.

SMTP: hosts are tried in the order smar gave (MX preference, then addresses).  A host is left for
the next one when the connection fails, when it answers the greeting, EHLO or MAIL with an
error, or when every recipient got a 4xx; recipients that got a 4xx at one host are tried at the
next, up to ``mx_session_limit`` hosts that answered (default 2, as Postfix's
``smtp_mx_session_limit``; hosts that refuse the connection do not count).  ``session_failed``
tells qmgr that no host got as far as the recipients (the destination looks dead).  Connections
are cached for a few seconds after a successful transaction and reused for the next job to the
same host (after RSET), as Postfix's scache does.

TLS (RFC 3207): STARTTLS whenever the server offers it, unless the destination's
``tls_requirements`` say ``none``.  The requirements come from the ``tls_policy`` map (see
:mod:`meta1py.maps.tls_policy`) or the ``tls_requirements`` option; recipients of one job that
fall under different requirements are delivered in separate sessions.  A failed handshake leaves
the host for the next one (plaintext is retried only with ``tls_plaintext_fallback`` at level
``may``); a violated requirement leaves the host with 451 4.7.5 "TLS requirements not met: ...",
which becomes the recipients' last reply (shown by ``meta1 queue show``).  Cached connections are
keyed by host *and* requirements, so a session checked against one set of requirements is never
reused for another.

LMTP (RFC 2033): one reply per accepted recipient after the data.  Maildir: see
:mod:`meta1py.smtpc.maildir`.  Commands and files (aliases(5) targets) and home Maildirs
(``home_mailbox``): see :mod:`meta1py.smtpc.local`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import outcome
import trio

from meta1py.conf import Config
from meta1py.crashpoints import crash_point
from meta1py.envelope import DeliveryStatus
from meta1py.maps import BrokenEntry, MapErrors, ReloadingMap
from meta1py.maps.tls_policy import TlsPolicy, destination_nexthop, parse_tls_policy
from meta1py.metrics import SMTPC_SESSIONS, SMTPC_TLS_SESSIONS, Counters
from meta1py.queue.content import content_file, open_content
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import (
    SmarHostValue,
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpcRecipientResult,
    SmtpcRecipientValue,
    SmtpReplyValue,
    WorkerStatsReply,
    WorkerStatsRequest,
)
from meta1py.smtp.client import ClientConnection, MalformedReplyError
from meta1py.smtp.errors import SmtpProtocolError
from meta1py.smtp.events import ConnectionClosed, MailParams, NeedData, RcptParams, ReplyReceived
from meta1py.smtp.replies import Reply
from meta1py.smtp.status import (
    PERM_NON_ASCII_ADDRESS,
    PERM_SYSTEM_MISCONFIGURED,
    TEMP_BAD_CONNECTION,
    TEMP_CRYPTO_FAILURE,
    TEMP_MAIL_SYSTEM_ERROR,
    TEMP_NO_ANSWER_FROM_HOST,
    TEMP_PROTOCOL_ERROR,
    TEMP_ROUTING_SERVER_FAILURE,
    TEMP_SYSTEM_MISCONFIGURED,
)
from meta1py.smtpc.captured import CapturedDestinations, CapturedJob, message_kind
from meta1py.smtpc.local import LocalAgent, LocalHelper
from meta1py.smtpc.maildir import DeliveryOutcome, deliver_maildir
from meta1py.sockio import read_when_ready, write_nowait
from meta1py.status import worker_stats
from meta1py.testmode.capture import CaptureRecord
from meta1py.tls.checks import check_requirements
from meta1py.tls.contexts import ClientTlsSettings, TlsConfigError, context_for_requirements, parse_protocols
from meta1py.tls.facts import tls_facts
from meta1py.tls.requirements import TlsRequirements, parse_tls_requirements
from meta1py.worker import WorkerConfigError

log = logging.getLogger(__name__)

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


def _status(code: int) -> DeliveryStatus:
    return "ok" if code < 400 else ("temp" if code < 500 else "perm")


class _SessionError(Exception):
    """The session with one host cannot go on (I/O error, timeout, protocol violation)."""

    def __init__(self, reply: SmtpReplyValue) -> None:
        super().__init__(reply.text)
        self.reply = reply


class _ConnectError(_SessionError):
    """No connection to the host (refused, unreachable, timeout): not a session for mx_session_limit."""


class _HandshakeError(_SessionError):
    """The TLS handshake failed for a reason other than the certificate (plaintext may be retried)."""


# Cached connections: (address, port, host name, requirements).  The name is part of the key
# because ``verify`` checks the certificate against it.
_CacheKey = tuple[str, int, str, TlsRequirements]


def _tls_violation(reason: str) -> _SessionError:
    return _SessionError(_local(451, TEMP_CRYPTO_FAILURE, f"TLS requirements not met: {reason}"))


@dataclass
class _Client:
    """One SMTP/LMTP connection: the sans-IO client core on a trio stream."""

    stream: trio.abc.Stream
    conn: ClientConnection
    peer: str
    io_timeout: float
    last_used: float = field(default_factory=time.monotonic)
    #: Content was sent in the current transaction (a failure after this may have delivered).
    data_sent: bool = False
    tls: trio.SSLStream[trio.abc.Stream] | None = None
    # False once a STARTTLS handshake was attempted and failed: the byte stream is in no state
    # for a plaintext QUIT (and the core refuses plaintext after the 220).
    usable: bool = True
    #: The socket's descriptor while the session is plaintext (None under TLS): commands and
    #: replies then go straight through os.write/os.read, without trio's stream layers, which
    #: were a fifth of smtpc's CPU per message when profiled.
    fd: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stream, trio.SocketStream):
            self.fd = self.stream.socket.fileno()

    def _broken(self, what: str) -> _SessionError:
        """421 4.4.2: the connection to the server failed (``what``: how)."""
        return _SessionError(_local(421, TEMP_BAD_CONNECTION, f"{self.peer}: {what}"))

    async def send(self, data: bytes) -> None:
        fd = self.fd
        if fd is not None:
            try:
                data = write_nowait(fd, data)
            except OSError as exc:
                raise self._broken(f"connection lost: {exc}") from exc
            if not data:
                return
        try:
            with trio.fail_after(self.io_timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError as exc:
            raise self._broken("timeout while sending") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._broken(f"connection lost: {exc}") from exc

    async def reply(self) -> ReplyReceived:
        """The next reply from the server."""
        while True:
            try:
                event = self.conn.next_event()
            except MalformedReplyError as exc:
                # Nothing from this server can be trusted any more (a bare-LF "250" must never
                # count as delivered): the host is left with a temporary failure, and no QUIT.
                self.usable = False
                raise _SessionError(
                    _local(451, TEMP_PROTOCOL_ERROR, f"malformed reply from {self.peer}: {exc}")
                ) from exc
            except SmtpProtocolError as exc:
                raise _SessionError(
                    _local(421, TEMP_PROTOCOL_ERROR, f"{self.peer}: protocol error: {exc}")
                ) from exc
            if isinstance(event, ReplyReceived):
                return event
            if isinstance(event, ConnectionClosed):
                raise self._broken("connection closed by server")
            assert isinstance(event, NeedData)
            try:
                with trio.fail_after(self.io_timeout):
                    data: bytes | bytearray
                    if self.fd is not None:
                        data = await read_when_ready(self.fd)
                    else:
                        data = await self.stream.receive_some(_READ_BYTES)
            except trio.TooSlowError as exc:
                raise self._broken("timeout waiting for reply") from exc
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise self._broken(f"connection lost: {exc}") from exc
            self.conn.receive_data(bytes(data))

    async def close(self, polite: bool) -> None:
        if polite and self.usable:
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


class RecentResults:
    """Final results (delivered, bounced) of recent deliveries, by queue id and recipient index.

    A queue id can come back: once a message is delivered and its content file removed, a new
    message may draw the same id (ids carry the arrival second and random bits). So every entry
    also holds the content file's identity (``stamp``: its ctime in ns, which a new file never
    shares with a removed one in practice) and the recipient's address; all must match.

    Bounded: at most ``max_entries``, each kept ``ttl_s`` seconds (qmgr asks again within
    seconds of its restart).
    """

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 3600.0) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._results: dict[tuple[str, int], tuple[float, str, int, SmtpcRecipientResult]] = {}

    def split(
        self, req: SmtpcDeliveryRequest, stamp: int | None, now: float | None = None
    ) -> tuple[list[SmtpcRecipientResult], list[SmtpcRecipientValue]]:
        """The recipients of ``req`` with a known final result, and those still to deliver.

        ``stamp`` identifies the content file (None: unknown, nothing is known)."""
        if not self._results or stamp is None:
            return [], list(req.recipients)
        now = time.monotonic() if now is None else now
        known: list[SmtpcRecipientResult] = []
        todo: list[SmtpcRecipientValue] = []
        for r in req.recipients:
            entry = self._results.get((req.qid, r.idx))
            if (
                entry is not None
                and entry[1] == r.address
                and entry[2] == stamp
                and now - entry[0] < self.ttl_s
            ):
                known.append(entry[3])
            else:
                todo.append(r)
        return known, todo

    def record(
        self,
        req: SmtpcDeliveryRequest,
        reply: SmtpcDeliveryReply,
        stamp: int | None,
        now: float | None = None,
    ) -> None:
        """Remember the final results of ``reply`` (temporary ones are retried anyway)."""
        if stamp is None:
            return
        now = time.monotonic() if now is None else now
        addresses = {r.idx: r.address for r in req.recipients}
        for result in reply.results:
            if result.status == "temp" or result.idx not in addresses:
                continue
            if len(self._results) >= self.max_entries:
                self._expire(now)
                if len(self._results) >= self.max_entries:
                    # Still full of young entries: drop the oldest half (dicts keep insertion order).
                    for key in list(self._results)[: self.max_entries // 2]:
                        del self._results[key]
            self._results[(req.qid, result.idx)] = (now, addresses[result.idx], stamp, result)

    def _expire(self, now: float) -> None:
        horizon = now - self.ttl_s
        self._results = {k: v for k, v in self._results.items() if v[0] > horizon}

    def __len__(self) -> int:
        return len(self._results)


class DeliveryAgents:
    """Answers ``SmtpcDeliveryRequest`` calls.

    Args:
        config: the configuration.
        local_helper: the root helper of command and file deliveries (started before the
            privilege drop), or None when they are off.
    """

    def __init__(self, config: Config, local_helper: LocalHelper | None = None) -> None:
        self.config = config
        #: The pipe and file agents (:mod:`meta1py.smtpc.local`).
        self.local = LocalAgent(config, local_helper)
        self.hostname = config.hostname
        self.io_timeout = config.smtpc.io_timeout
        self.queue_dir = Path(config.queue_directory)
        self._cache: dict[_CacheKey, list[_Client]] = {}
        #: Test mode: every SMTP and LMTP session goes to a captured destination instead of the
        #: network, and Maildir deliveries are captured too (meta1py.smtpc.captured).
        self.captured: CapturedDestinations | None = (
            CapturedDestinations(self.queue_dir, config.hostname) if config.test_mode.enable else None
        )
        smtpc = config.smtpc
        min_protocol, self._max_protocol = parse_protocols(smtpc.tls.protocols)
        self.tls_settings = ClientTlsSettings(
            cert_file=smtpc.tls.cert_file,
            key_file=smtpc.tls.key_file,
            ca_file=smtpc.tls.ca_file,
            ca_directory=smtpc.tls.ca_directory,
            min_protocol=min_protocol,
            ciphers=smtpc.tls.ciphers,
        )
        self.tls_default = parse_tls_requirements(smtpc.tls_requirements)
        self.tls_plaintext_fallback = smtpc.tls_plaintext_fallback
        self._contexts: dict[tuple[bool, bool], ssl.SSLContext] = {}
        self._policy: ReloadingMap[TlsPolicy] | None = None
        try:
            # Load the certificate files now: a file that does not load is a configuration error
            # at start-up, not a deferral of every message later.
            self._context_for(self.tls_default)
            if smtpc.tls_policy is not None:
                tolerant = functools.partial(parse_tls_policy, strict=False)
                self._policy = ReloadingMap(smtpc.tls_policy, tolerant)
        except (TlsConfigError, MapErrors) as exc:
            raise WorkerConfigError(f"smtpc: {exc}") from exc
        if smtpc.tls.key_file is not None:
            # A client key is loaded into every context now, while the process may still read it
            # (meta1py.smtpc.main.prepare runs before the privilege drop): it can stay root's.
            for req in (TlsRequirements(level="verify"), TlsRequirements(level="verify", hostnames=("x",))):
                try:
                    self._context_for(req)
                except TlsConfigError as exc:
                    log.debug("smtpc: cannot preload the TLS context for %s: %s", req.level, exc)
        self.connections_opened = 0
        self.connections_reused = 0
        self.active = 0
        self._idle = trio.Event()
        #: Where deliveries run, detached from the qmgr call that asked for them (set by serve):
        #: a delivery goes on when qmgr goes away, so that its result lands in ``recent``.
        self.nursery: trio.Nursery | None = None
        self.recent = RecentResults()
        self.handle = Handlers()
        """The RPC entry point, smtpc.sock's handler: ``SmtpcDeliveryRequest`` -> `deliver_once`."""
        self.handle.on(SmtpcDeliveryRequest).answer(self.deliver_once)
        #: Outbound sessions and their TLS (meta1py.metrics), which qmgr asks for.
        self.counters = Counters()
        self.handle.on(WorkerStatsRequest).answer(self._answer_stats)

    async def _answer_stats(self, _req: WorkerStatsRequest) -> WorkerStatsReply:
        return WorkerStatsReply(stats=worker_stats("smtpc", self.counters))

    def _content_stamp(self, qid: str) -> int | None:
        """The identity of ``qid``'s content file (its ctime in ns), None if it cannot be read."""
        try:
            return os.stat(content_file(self.queue_dir, qid)).st_ctime_ns
        except (OSError, ValueError):
            return None

    async def deliver_once(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        """Deliver ``req``, but never a recipient this process already delivered (or bounced).

        When qmgr dies while smtpc delivers, the remote server may accept the message after qmgr
        stopped listening; the new qmgr, which never recorded the result, asks again. The
        delivery therefore runs in :attr:`nursery`, not in the call's task, so it finishes and
        records its final results in :attr:`recent`; a repeated request for the same queue id,
        recipient index and address is answered from there instead of sending the message a
        second time. (A kill of smtpc itself, or of the whole tree, still leaves that window.)
        """
        stamp = self._content_stamp(req.qid)
        known, todo = self.recent.split(req, stamp)
        if known:
            log.info(
                "%s: %d recipient(s) already delivered or bounced by this smtpc (qmgr had not "
                "recorded it): not sent again",
                req.qid,
                len(known),
            )
        if not todo:
            return SmtpcDeliveryReply(results=tuple(known), session_failed=False)
        if len(todo) != len(req.recipients):
            req = dataclasses.replace(req, recipients=tuple(todo))
        box: list[outcome.Outcome[SmtpcDeliveryReply]] = []
        done = trio.Event()

        async def run() -> None:
            self.active += 1
            try:
                try:
                    reply = await self.deliver(req)
                except Exception as exc:  # a bug: the caller re-raises it (a cancellation ends us)
                    box.append(outcome.Error(exc))
                else:
                    box.append(outcome.Value(reply))
                    self.recent.record(req, reply, stamp)
            finally:
                self.active -= 1
                if not self.active:
                    self._idle.set()
                done.set()

        if self.nursery is None:
            await run()
        else:
            self.nursery.start_soon(run)
            await done.wait()
        if not box:  # the delivery was cancelled (smtpc is stopping)
            await trio.lowlevel.checkpoint()
            raise RuntimeError(f"{req.qid}: delivery cancelled")
        reply = box[0].unwrap()
        if known:
            reply = dataclasses.replace(reply, results=tuple(known) + reply.results)
        return reply

    async def idle(self) -> None:
        """Wait until no delivery is running."""
        while self.active:
            self._idle = trio.Event()
            await self._idle.wait()

    async def deliver(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        """Deliver one job and report every recipient."""
        route = req.route
        if route.transport == "maildir":
            if route.local is not None:  # home_mailbox: written as the user, by the helper
                return await self.local.deliver_home(req)
            return await self._maildir(req)
        if route.transport == "lmtp":
            return await self._lmtp(req)
        if route.transport == "smtp":
            return await self._smtp(req)
        if route.transport in ("pipe", "file"):
            return await self.local.deliver(req)
        reply = _local(554, PERM_SYSTEM_MISCONFIGURED, f"unknown transport {route.transport!r}")
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

            def work(address: str = r.address) -> DeliveryOutcome | None:
                try:
                    content = open_content(self.queue_dir, req.qid)
                except FileNotFoundError:
                    return None
                with content:
                    return deliver_maildir(maildir, content, address, self.hostname, sender=req.sender)

            outcome = await trio.to_thread.run_sync(work)
            if outcome is None:
                reply = _local(451, TEMP_MAIL_SYSTEM_ERROR, f"queue file {req.qid} missing")
                results.append(SmtpcRecipientResult(idx=r.idx, status="temp", reply=reply, remote_mta=None))
                continue
            reply = _local(outcome.code, outcome.enhanced, outcome.text)
            results.append(
                SmtpcRecipientResult(idx=r.idx, status=outcome.status, reply=reply, remote_mta=None)
            )
        if self.captured is not None:
            await self._capture_maildir(req, results)
        return SmtpcDeliveryReply(results=tuple(results), session_failed=False)

    async def _capture_maildir(self, req: SmtpcDeliveryRequest, results: list[SmtpcRecipientResult]) -> None:
        """Test mode: record a Maildir delivery as a capture (the stored message, no transcript)."""
        assert self.captured is not None
        addresses = {r.idx: r.address for r in req.recipients}
        statuses = {"ok": "delivered", "temp": "deferred", "perm": "bounced"}
        delivered = [addresses[res.idx] for res in results if res.status == "ok"]
        if not delivered:
            return
        record = CaptureRecord(
            qid=req.qid,
            mail_from=req.sender,
            rcpt_to=delivered,
            destination=req.route.destination,
            transport="maildir",
            recipients=[
                {
                    "address": addresses[res.idx],
                    "status": statuses[res.status],
                    "reply": f"{res.reply.code} {res.reply.enhanced} {res.reply.text}".replace("  ", " "),
                }
                for res in results
            ],
        )
        await trio.to_thread.run_sync(self._store_maildir_capture, record)

    def _store_maildir_capture(self, record: CaptureRecord) -> None:
        assert self.captured is not None
        try:
            with open_content(self.queue_dir, record.qid) as content:
                message = content.read()
        except FileNotFoundError:
            return
        record.kind = message_kind(record.mail_from, message)
        self.captured.store.add(record, message)

    # -- connections -------------------------------------------------------------------------

    def _captured_client(self, job: SmtpcDeliveryRequest | None, peer: str, lmtp: bool) -> _Client:
        """Test mode: a session with a captured destination standing in for ``peer``."""
        assert self.captured is not None
        if job is None:
            captured = CapturedJob("", "", "lmtp" if lmtp else "smtp", "")
        else:
            first = job.recipients[0].address if job.recipients else ""
            captured = CapturedJob(
                job.qid, job.route.destination, job.route.transport, first.rpartition("@")[2]
            )
        stream = self.captured.open(captured, lmtp=lmtp)
        self.connections_opened += 1
        return _Client(stream, ClientConnection(lmtp=lmtp), peer, self.io_timeout)

    async def _connect(
        self, host: SmarHostValue, lmtp: bool, job: SmtpcDeliveryRequest | None = None
    ) -> _Client:
        peer = f"{host.name}[{host.address}]:{host.port}"
        if self.captured is not None:
            return self._captured_client(job, peer, lmtp)
        try:
            with trio.fail_after(min(self.io_timeout, _CONNECT_TIMEOUT_S)):
                stream = await trio.open_tcp_stream(host.address, host.port)
        except (OSError, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else (exc.strerror or str(exc))
            raise _ConnectError(
                _local(421, TEMP_NO_ANSWER_FROM_HOST, f"connect to {peer}: {reason}")
            ) from exc
        self.connections_opened += 1
        return _Client(stream, ClientConnection(lmtp=lmtp), peer, self.io_timeout)

    async def _connect_unix(self, path: str, job: SmtpcDeliveryRequest | None = None) -> _Client:
        peer = f"unix:{path}"
        if self.captured is not None:
            return self._captured_client(job, peer, lmtp=True)
        try:
            with trio.fail_after(min(self.io_timeout, _CONNECT_TIMEOUT_S)):
                stream = await trio.open_unix_socket(path)
        except (OSError, trio.TooSlowError) as exc:
            raise _SessionError(_local(421, TEMP_NO_ANSWER_FROM_HOST, f"connect to {peer}: {exc}")) from exc
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

    # -- TLS --------------------------------------------------------------------------------

    def requirements_for(self, destination: str, address: str) -> TlsRequirements | BrokenEntry:
        """The ``tls_requirements`` for one recipient of a job to ``destination`` (a
        :class:`BrokenEntry` when its ``tls_policy`` line is bad: the recipient is deferred)."""
        if self._policy is not None:
            domain = address.rpartition("@")[2]
            found = self._policy.current.lookup(destination_nexthop(destination), domain)
            if found is not None:
                return found
        return self.tls_default

    def _context_for(self, req: TlsRequirements) -> ssl.SSLContext:
        # Two flags decide the context (verify in the handshake; host name checked by OpenSSL).
        key = (req.level == "verify", req.level == "verify" and not req.hostnames)
        context = self._contexts.get(key)
        if context is None:
            context = context_for_requirements(self.tls_settings, req)
            if self._max_protocol is not None:
                context.maximum_version = ssl.TLSVersion[self._max_protocol.replace(".", "_")]
            self._contexts[key] = context
        return context

    async def _starttls(
        self, client: _Client, host: SmarHostValue, req: TlsRequirements, qid: str, plaintext: bool
    ) -> None:
        """STARTTLS if offered and wanted, EHLO again, and judge the session against ``req``.

        Raises:
            _HandshakeError: the handshake failed (not because of the certificate).
            _SessionError: a requirement is not met (4.7.5), or the session broke.
        """
        conn = client.conn
        assert conn.extensions is not None
        if req.level == "none" or plaintext or self.captured is not None:
            # Test mode: the captured destination offers no STARTTLS, and no requirement is
            # checked (nothing leaves the host; a policy asking for TLS must not defer it all).
            return
        if not conn.extensions.starttls:
            reason = check_requirements(req, None, host.name)
            if reason is not None:
                raise _tls_violation(reason)
            return
        await client.send(conn.starttls())
        answer = await client.reply()
        if answer.reply.code != 220:
            # RFC 3207 §4: after a refusal the session goes on in plaintext.
            if req.tls_required:
                text = " ".join(answer.reply.lines)[:200]
                raise _tls_violation(f"STARTTLS refused: {answer.reply.code} {text}")
            return
        context = self._context_for(req)
        sni = host.name.strip("[]") or None
        tls = trio.SSLStream(client.stream, context, server_hostname=sni)
        try:
            with trio.fail_after(self.io_timeout):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
            client.usable = False
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                # verify: the context refused the chain (or the host name) during the handshake.
                raise _tls_violation(f"certificate verification failed: {cause.verify_message}") from exc
            why = "timeout" if isinstance(exc, trio.TooSlowError) else str(cause or exc) or type(exc).__name__
            raise _HandshakeError(
                _local(421, TEMP_CRYPTO_FAILURE, f"TLS handshake with {client.peer} failed: {why}")
            ) from exc
        client.stream = tls
        client.fd = None
        client.tls = tls
        conn.starttls_done()
        facts = tls_facts(tls)
        log.info(
            "%s: %s: TLS %s %s, certificate %s %s",
            qid,
            client.peer,
            facts.protocol,
            facts.cipher,
            facts.peer_fingerprint or "(none)",
            "verified" if facts.peer_verified else f"not verified ({facts.verify_error or 'unchecked'})",
        )
        reason = check_requirements(req, tls, host.name)
        if reason is not None:
            raise _tls_violation(reason)
        await client.send(conn.ehlo(self.hostname))
        answer = await client.reply()
        if answer.reply.code >= 400:
            raise _SessionError(_value(answer.reply))

    async def _open(
        self,
        host: SmarHostValue,
        req: TlsRequirements,
        qid: str,
        plaintext: bool = False,
        job: SmtpcDeliveryRequest | None = None,
    ) -> _Client:
        """A new SMTP session with ``host``, in TLS as ``req`` asks, ready for MAIL (``job``:
        the delivery, for a captured destination in test mode)."""
        client = await self._connect(host, lmtp=False, job=job)
        try:
            await self._hello(client)
            await self._starttls(client, host, req, qid, plaintext)
        except _HandshakeError:
            await client.close(polite=False)
            if req.level != "may" or not self.tls_plaintext_fallback:
                raise
            log.info("%s: %s: retrying without TLS (tls_plaintext_fallback)", qid, client.peer)
            return await self._open(host, req, qid, plaintext=True, job=job)
        except _SessionError:
            await client.close(polite=True)
            raise
        self.counters.inc(SMTPC_SESSIONS)
        if client.tls is not None:
            self.counters.inc(SMTPC_TLS_SESSIONS)
        return client

    # -- connection cache -------------------------------------------------------------------

    @staticmethod
    def _cache_key(host: SmarHostValue, req: TlsRequirements) -> _CacheKey:
        return (host.address, host.port, host.name, req)

    def _cached(self, host: SmarHostValue, req: TlsRequirements) -> _Client | None:
        clients = self._cache.get(self._cache_key(host, req))
        now = time.monotonic()
        while clients:
            client = clients.pop()
            if now - client.last_used < _CACHE_IDLE_S:
                return client
        return None

    async def _release(self, host: SmarHostValue, req: TlsRequirements, client: _Client) -> None:
        if self.captured is not None:
            # Test mode: one captured session per delivery, so each capture's transcript is a
            # whole session (a cached one would carry the previous job's).
            await client.close(polite=True)
            return
        key = self._cache_key(host, req)
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
            for client in self._take_expired(time.monotonic()):
                await client.close(polite=True)

    def _take_expired(self, now: float) -> list[_Client]:
        """Remove the connections idle for ``_CACHE_IDLE_S`` or longer from the cache; return them.

        Synchronous on purpose: no delivery can take or return a connection while the cache is
        being sorted. (The loop that did this across the awaits of the polite closes put back, at
        its end, a list computed before them: a connection a delivery had taken meanwhile was
        cached again while in use, a second delivery took it, and smtpc crashed with
        BusyResourceError; qmgr then requeued its deliveries, and some went out twice.)
        """
        expired: list[_Client] = []
        for key in list(self._cache):
            clients = self._cache[key]
            keep = [c for c in clients if now - c.last_used < _CACHE_IDLE_S]
            expired += [c for c in clients if now - c.last_used >= _CACHE_IDLE_S]
            if keep:
                clients[:] = keep
            else:
                del self._cache[key]
        return expired

    # -- SMTP -------------------------------------------------------------------------------

    async def _smtp(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        # Recipients under different TLS requirements cannot share a session (a relayhost job
        # may carry several domains); each group gets its own pass over the hosts.
        groups: dict[TlsRequirements, list[SmtpcRecipientValue]] = {}
        results: dict[int, SmtpcRecipientResult] = {}
        for r in req.recipients:
            tls_req = self.requirements_for(req.route.destination, r.address)
            if isinstance(tls_req, BrokenEntry):
                # Never under weaker requirements than the operator meant: defer until fixed.
                log.error("%s: tls_policy: %s (for %s)", req.qid, tls_req.text, r.address)
                reply = _local(451, TEMP_SYSTEM_MISCONFIGURED, f"tls_policy: {tls_req.text}")
                results[r.idx] = SmtpcRecipientResult(idx=r.idx, status="temp", reply=reply, remote_mta=None)
                continue
            groups.setdefault(tls_req, []).append(r)
        session_failed = bool(groups)  # no session was tried for a broken policy: no news
        for tls_req, rcpts in groups.items():
            group_results, failed = await self._smtp_hosts(req, rcpts, tls_req)
            results.update(group_results)
            session_failed = session_failed and failed
        ordered = tuple(results[r.idx] for r in req.recipients)
        return SmtpcDeliveryReply(results=ordered, session_failed=session_failed)

    async def _smtp_hosts(
        self, req: SmtpcDeliveryRequest, rcpts: list[SmtpcRecipientValue], tls_req: TlsRequirements
    ) -> tuple[dict[int, SmtpcRecipientResult], bool]:
        """Try the hosts in order for ``rcpts``: (result per recipient index, session failed)."""
        pending = {r.idx: r for r in rcpts}
        results: dict[int, SmtpcRecipientResult] = {}
        last: dict[int, SmtpcRecipientResult] = {}
        any_session = False
        hosts = req.route.hosts
        if not hosts:
            reply = _local(451, TEMP_ROUTING_SERVER_FAILURE, "no hosts to deliver to")
            return {
                i: SmtpcRecipientResult(idx=i, status="temp", reply=reply, remote_mta=None) for i in pending
            }, True
        session_reply = _local(451, TEMP_NO_ANSWER_FROM_HOST, "no host could be reached")
        # mx_session_limit (Postfix's smtp_mx_session_limit): hosts that answered at all count,
        # hosts that could not be connected to do not; smar already cut the list to
        # mx_address_limit addresses.
        sessions = 0
        session_limit = self.config.smtpc.mx_session_limit
        for n, host in enumerate(hosts):
            if not pending:
                break
            if sessions >= session_limit:
                log.info(
                    "%s: %d sessions (mx_session_limit) without delivery; %d more hosts not tried",
                    req.qid,
                    sessions,
                    len(hosts) - n,
                )
                break
            client = self._cached(host, tls_req)
            reused = client is not None
            try:
                if client is not None and not (client.conn.extensions and client.conn.extensions.pipelining):
                    # Without PIPELINING the RSET that checks a cached connection is a round trip
                    # of its own; with it, the RSET leads the MAIL/RCPT/DATA group (below).
                    try:
                        await client.send(client.conn.rset())
                        if (await client.reply()).reply.code != 250:
                            raise _SessionError(session_reply)
                    except _SessionError:
                        await client.close(polite=False)
                        client = None
                        reused = False
                if client is None:
                    client = await self._open(host, tls_req, req.qid, job=req)
            except _SessionError as exc:
                session_reply = exc.reply
                sessions += not isinstance(exc, _ConnectError)
                log.info("%s: %s[%s]:%d: %s", req.qid, host.name, host.address, host.port, exc.reply.text)
                continue
            sessions += 1
            if reused:
                self.connections_reused += 1
            try:
                try:
                    outcome = await self._transaction(
                        client, req, list(pending.values()), host, rset_first=reused
                    )
                except _SessionError:
                    if not reused or client.data_sent:
                        raise
                    # The cached connection had died while idle (nothing was sent for this
                    # message beyond the envelope): use a fresh one.
                    await client.close(polite=False)
                    client = await self._open(host, tls_req, req.qid, job=req)
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
                await self._release(host, tls_req, client)
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
        return results, not any_session

    async def _transaction(
        self,
        client: _Client,
        req: SmtpcDeliveryRequest,
        rcpts: list[SmtpcRecipientValue],
        host: SmarHostValue,
        *,
        rset_first: bool = False,
    ) -> _Outcome:
        """MAIL, RCPT..., DATA on an open session; pipelined when the server offers it.

        ``rset_first``: the session is a cached one; with PIPELINING an RSET leads the group (it
        both checks that the connection still works and clears any state).
        """
        conn = client.conn
        client.data_sent = False
        ext = conn.extensions
        assert ext is not None
        if req.smtputf8 and not ext.smtputf8:
            reply = _local(
                553,
                PERM_NON_ASCII_ADDRESS,
                f"{client.peer} does not support SMTPUTF8, which the message needs",
            )
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
            log.debug("%s: reply to %s: %s", client.peer, event.command, event.reply)
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
            # The core matches replies to commands in the order the commands were built.
            out = conn.rset() if rset_first else b""
            out += conn.mail(req.sender, params) + b"".join(make() for make in rcpt_commands) + conn.data()
            await client.send(out)
            if rset_first:
                rset = await client.reply()
                if rset.reply.code != 250:
                    raise _SessionError(_value(rset.reply))
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
            reply = (
                _value(data_reply)
                if data_reply is not None
                else _local(451, TEMP_MAIL_SYSTEM_ERROR, "no reply to DATA")
            )
            status: DeliveryStatus = "perm" if reply.code >= 500 else "temp"
            for i in accepted:
                results.append(
                    SmtpcRecipientResult(idx=rcpts[i].idx, status=status, reply=reply, remote_mta=host.name)
                )
            return _Outcome(results, reached_rcpt=True, reusable=True)
        await self._send_content(client, req.qid)
        end = await client.reply()
        if end.reply.code < 400:
            crash_point("after-delivery")  # tests: the remote said 250, qmgr not told yet
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
    def _rcpt_params(r: SmtpcRecipientValue, dsn: bool) -> RcptParams | None:
        if not dsn or not (r.notify or r.orcpt):
            return None
        orcpt = None
        if r.orcpt and ";" in r.orcpt:
            kind, _sep, addr = r.orcpt.partition(";")
            orcpt = (kind, addr)
        return RcptParams(notify=frozenset(r.notify) if r.notify else None, orcpt=orcpt)

    async def _send_content(self, client: _Client, qid: str) -> None:
        try:
            # Unbuffered: the chunks are large, and a buffered reader adds an fstat, an ioctl, a
            # seek and an extra read per message.
            fd = os.open(content_file(self.queue_dir, qid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise _SessionError(_local(451, TEMP_MAIL_SYSTEM_ERROR, f"queue file {qid} missing")) from exc
        client.data_sent = True
        try:
            chunk = os.read(fd, _CHUNK_BYTES)
            while True:
                out = client.conn.send_data(chunk) if chunk else b""
                chunk = os.read(fd, _CHUNK_BYTES)
                if not chunk:
                    # The last piece and the final "." go out in one write.
                    await client.send(out + client.conn.end_data())
                    break
                await client.send(out)
        finally:
            os.close(fd)

    # -- LMTP -------------------------------------------------------------------------------

    async def _lmtp(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        route = req.route
        rcpts = list(req.recipients)
        client: _Client | None = None
        try:
            if route.path is not None:
                client = await self._connect_unix(route.path, job=req)
            else:
                client = await self._connect(route.hosts[0], lmtp=True, job=req)
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
        self,
        client: _Client,
        req: SmtpcDeliveryRequest,
        rcpts: list[SmtpcRecipientValue],
        host: SmarHostValue,
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
