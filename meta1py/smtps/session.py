"""One SMTP session: the trio adapter around the sans-IO server core.

The core (:class:`meta1py.smtp.server.ServerConnection`) turns bytes into events and replies into
bytes; this module answers the events. Policy is the checks of each stage (connect, HELO, MAIL,
RCPT, DATA, end of headers, end of message; :mod:`meta1py.smtps.stages`): the session asks a
stage's chain and turns its decision into the reply. The recipient check asks smar
(``SmarRecipientCheckRequest``).
smtps streams the content file and closes it; qmgr's group commit (``QueueEnvelopeCommitRequest``)
fsyncs it and its directory and then commits the envelope, in one thread trip for a whole batch.
The 250 reply to the end of data is sent only after qmgr has answered that both are durable.

Replies are buffered while pipelined commands are waiting in the core and written when the core
needs more input (RFC 2920 §3.1: the server may batch its responses).

TLS (RFC 3207, RFC 8314): STARTTLS is offered when the section has a certificate; ``tls = implicit``
listeners do the handshake before the greeting. Input pipelined after STARTTLS (already discarded by
the core) ends the session: a client that does that is broken or an attacker (CVE-2011-0411).

AUTH (RFC 4954): PLAIN and LOGIN against the section's password file, offered only inside TLS unless
``require_tls_for_auth = no`` (or ``auth_plaintext_loopback`` for loopback clients). Failed attempts
are counted per client IP; over ``max_auth_failures`` the client gets 421 4.7.0.

Timeouts (RFC 5321 §4.5.3.2): ``io_timeout`` bounds every wait for input and every write
(``stress_io_timeout`` in stress mode); ``session_timeout`` bounds the whole session;
``command_time_limit`` bounds one command line from its first octet, and ``min_data_rate`` (after
``data_rate_grace``) the DATA/BDAT phase, so that a client dripping an octet every few seconds
cannot hold a session. All end the session with 421 4.4.2. See docs/smtps.md "Slow clients".

Disk space: MAIL, DATA and each BDAT chunk are refused with 452 4.3.1 when the queue file system
is below ``queue_minfree`` (``SmtpsContext.space``, see :mod:`meta1py.smtps.limits`).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field

import trio

from meta1py import log as mlog
from meta1py.conf import Config, ListenSocket, SmtpsConfig
from meta1py.crashpoints import crash_point
from meta1py.message.hops import HeaderHead, count_hops
from meta1py.metrics import SMTPS_REJECTED, SMTPS_TLS_SESSIONS, Counters
from meta1py.queue.content import ContentWriter
from meta1py.queue.errors import QueueStorageError
from meta1py.rpc.caller import Caller
from meta1py.rpc.errors import RpcError
from meta1py.rpc.messages import QueueEnvelopeCommitRequest, QueueRecipientValue
from meta1py.smtp import events as ev
from meta1py.smtp import replies
from meta1py.smtp.address import Address, NullPath
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply
from meta1py.smtp.server import ServerConnection
from meta1py.smtp.status import TEMP_MAIL_SYSTEM_FULL
from meta1py.smtps.auth import (
    Authenticator,
    AuthFailureLimiter,
    Credentials,
    SaslChallenge,
    SaslError,
    SaslExchange,
    is_loopback,
)
from meta1py.smtps.limits import MailRates, QueueSpace, SessionLimits
from meta1py.smtps.stages import (
    Check,
    Checks,
    Decision,
    Discard,
    Mark,
    MessageFacts,
    RcptCache,
    Refuse,
    Stage,
    StageContext,
    builtin_checks,
    mark_of,
    may_follow_greeting,
    quarantine_refused,
    refusal,
    run_chain,
    space_refusal,
    stronger,
)
from meta1py.smtps.tally import CommandTally
from meta1py.sockio import write_nowait
from meta1py.tls.contexts import ReloadableServerContext
from meta1py.tls.facts import TlsFacts, tls_facts

log = logging.getLogger(__name__)

_READ_BYTES = 65536
# Replies queued for a pipelining client are written once they pass this much, even with more
# commands waiting: a client that pipelines cheap commands with long replies (EHLO, HELP) and
# never reads must not grow this buffer (RFC 2920 §3.1 allows flushing at any time).
_OUT_MAX = 65536
# RPC deadline: qmgr waits for a group commit (smar's is in stages.py).
_COMMIT_TIMEOUT_S = 60.0
# A command line still without its end after this many octets gets 421 4.7.0 (the core's default,
# stated here so that the session's limits are in one place: docs/smtps.md "Slow clients").
_COMMAND_HARD_BYTES = 65536


@dataclass
class SmtpsContext:
    """Everything a session needs, shared by all sessions of the process."""

    config: Config
    smar: Caller
    qmgr: Caller
    limits: SessionLimits
    shutdown: trio.Event
    #: Per smtps section (keyed by section name): its TLS context, when it has a certificate.
    tls: dict[str | None, ReloadableServerContext] = field(default_factory=dict)
    #: Per smtps section: its password file, when it has one (AUTH is offered only then).
    authenticators: dict[str | None, Authenticator] = field(default_factory=dict)
    #: Per smtps section: failed AUTH attempts per client IP.
    auth_limiters: dict[str | None, AuthFailureLimiter] = field(default_factory=dict)
    #: smar's recent RCPT verdicts (see RcptCache).
    rcpt_cache: RcptCache = field(default_factory=lambda: RcptCache())
    #: Room in the queue file system (queue_minfree); None: never checked.
    space: QueueSpace | None = None
    #: Messages and recipients per minute per client and per user (MailRates).
    rates: MailRates = field(default_factory=lambda: MailRates())
    #: Checks run after the built-in ones, stage by stage (none are configured today; tests and
    #: future policy modules add theirs here).
    added_checks: Checks = field(default_factory=Checks)
    #: What every session runs: builtin_checks(self), then added_checks.
    checks: Checks = field(init=False)
    #: Connections, TLS sessions and refusals (meta1py.metrics), reported to qmgr.
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        # The built-in checks read smar, rcpt_cache and space from this object at each call.
        self.checks = builtin_checks(self).then(self.added_checks)


@dataclass
class _Transaction:
    sender: Address | NullPath
    params: ev.MailParams
    recipients: list[QueueRecipientValue] = field(default_factory=list)
    accepted_rcpts: list[str] = field(default_factory=list)
    writer: ContentWriter | None = None
    storage_error: QueueStorageError | None = None
    header_scan: HeaderHead = field(default_factory=HeaderHead)
    header_done: bool = False
    hops: int = 0
    #: A Discard or Quarantine decided for this transaction (taken into account at its end).
    mark: Mark | None = None
    #: A refusal decided while the data came in (EOH, or DATA for BDAT): the end-of-data reply.
    refusal: Reply | None = None
    #: The client's header block, kept for the EOH and EOM checks when there are any.
    headers: bytes | None = None
    #: The DATA stage's checks ran for this transaction's BDAT chunks.
    data_checked: bool = False


class Session:
    """One client connection on one smtps service (listener section)."""

    # Slots: thousands of idle sessions are the common case under a flood, and an instance
    # __dict__ of this many attributes costs about 1.3 KB more per session than slots do.
    __slots__ = (
        "_background",
        "_connect_done",
        "_connect_logged",
        "_connect_scope",
        "_data_bytes",
        "_data_started",
        "_evicted",
        "_fd",
        "_helo_mark",
        "_interrupted",
        "_limits_exempt",
        "_line_started",
        "_mail_count",
        "_rcpt_count",
        "_sasl",
        "_scope",
        "_session_deadline",
        "_session_mark",
        "_tally",
        "_tls_line",
        "_wait_limit",
        "_waiting",
        "auth_limiter",
        "authenticated",
        "authenticator",
        "client_address",
        "client_name",
        "core",
        "ctx",
        "esmtp",
        "extensions",
        "helo",
        "hostname",
        "implicit_tls",
        "messages",
        "out",
        "service",
        "sid",
        "stream",
        "tls",
        "tls_active",
        "tls_facts",
        "trusted",
        "txn",
    )

    def __init__(
        self,
        ctx: SmtpsContext,
        service: SmtpsConfig,
        stream: trio.abc.Stream,
        client_address: str,
        session_id: str,
        listener: ListenSocket | None = None,
        trusted: bool = False,
        background: trio.Nursery | None = None,
    ) -> None:
        self.ctx = ctx
        #: Where the connect checks run beside the greeting (None: the greeting waits for them).
        self._background = background
        self._connect_done: trio.Event | None = None
        self._connect_scope = trio.CancelScope()
        self.service = service
        self.stream = stream
        self.client_address = client_address
        self.sid = session_id
        cfg = ctx.config
        self.hostname = cfg.hostname
        self.tls = ctx.tls.get(service.name)
        self.implicit_tls = listener is not None and listener.tls == "implicit"
        self.authenticator = ctx.authenticators.get(service.name)
        #: In relay_clients: exempt from the pregreet test (and from the per-client limits).
        self.trusted = trusted
        self.auth_limiter = ctx.auth_limiters.get(service.name) or AuthFailureLimiter(
            service.max_auth_failures, service.auth_failure_window
        )
        self.extensions = _extensions(
            service,
            starttls=self.tls is not None and not self.implicit_tls,
            auth=self.authenticator is not None and bool(service.auth_mechanisms),
        )
        self.core = ServerConnection(
            self.hostname,
            extensions=self.extensions,
            max_command_hard_bytes=_COMMAND_HARD_BYTES,
            max_recipients=service.max_recipients,
            max_message_bytes=service.max_message_size,
            bare_newline="normalize" if "bare_newline_normalize" in service.flags else "reject",
        )
        self.helo: str | None = None
        self.esmtp = False
        self.tls_active = False
        self.tls_facts: TlsFacts | None = None
        #: The client's forward-confirmed name from smar ("" none; None: not looked up).
        self.client_name: str | None = None
        self._connect_logged = False
        self._tally = CommandTally()
        self._tls_line: dict[str, str | int] | None = None
        #: Exempt from the message and recipient limits (relay_clients unless
        #: limit_relay_clients; the access map's ratelimit: OK, from smar at connect).
        self._limits_exempt = trusted and not service.limit_relay_clients
        #: MAIL FROM and RCPT TO commands accepted in this session.
        self._mail_count = 0
        self._rcpt_count = 0
        self.authenticated: str | None = None
        self._sasl: SaslExchange | None = None
        self.txn: _Transaction | None = None
        # Discard or Quarantine decided at connect (for the whole session) and at HELO (until the
        # next HELO/EHLO or STARTTLS); see meta1py.smtps.stages.
        self._session_mark: Mark | None = None
        self._helo_mark: Mark | None = None
        self.out = bytearray()
        self.messages = 0
        # The session's cancel scope: its deadline is session_timeout, brought forward to
        # io_timeout while the session waits for its client (receive); interrupt() cancels it.
        self._session_deadline = trio.current_time() + service.session_timeout
        self._scope = trio.CancelScope(deadline=self._session_deadline)
        self._waiting = False
        self._interrupted = False
        self._evicted = False
        # Deadlines beyond the idle timeout (docs/smtps.md "Slow clients"): when the command line
        # being received began to arrive, and when the data phase began and how much came since.
        self._line_started: float | None = None
        self._data_started: float | None = None
        self._data_bytes = 0
        # What the deadline of the current wait is ("io", "line", "rate"), to answer its expiry.
        self._wait_limit = "io"
        # The plain TCP socket's descriptor for fast writes (None for TLS streams).
        self._fd: int | None = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None

    # -- I/O -------------------------------------------------------------------------------------

    def reply(self, reply: Reply) -> None:
        """Queue a reply (written at the next flush)."""
        self._tally.reply(reply.code)
        self.out += self.core.send(reply)

    async def flush(self) -> None:
        """Write queued replies within io_timeout."""
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            fd = self._fd
            if fd is not None:
                try:
                    data = write_nowait(fd, data)
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                if not data:
                    return
            with trio.fail_after(self.service.io_timeout):
                await self.stream.send_all(data)

    async def receive(self) -> None:
        """Flush replies, then read more input (or EOF) into the core within io_timeout."""
        await self.flush()
        if self.ctx.shutdown.is_set():
            raise _Shutdown
        fd = self._fd
        if fd is not None:
            # Fast path on plain TCP: a pipelining client's input is often there already.
            try:
                data = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            else:
                await trio.lowlevel.checkpoint()  # stay fair to the other sessions
                self._received(data)
                return
        # The wait runs under the session's own cancel scope, its deadline brought forward to
        # io_timeout for the wait only: no cancel scope of its own per wait. A session spends its
        # idle life here, and one scope fewer is a fifth of an idle session's memory.
        scope = self._scope
        session_deadline = self._session_deadline
        scope.deadline = self._wait_deadline(trio.current_time())
        self._waiting = True
        try:
            if fd is None:
                data = bytes(await self.stream.receive_some(_READ_BYTES))
            else:
                while True:
                    await trio.lowlevel.wait_readable(fd)
                    try:
                        data = os.read(fd, _READ_BYTES)
                        break
                    except BlockingIOError:
                        continue  # spurious wake-up
                    except OSError as exc:
                        raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            self._waiting = False
            scope.deadline = session_deadline
        self._received(data)

    def _received(self, data: bytes) -> None:
        if self._data_started is not None:
            self._data_bytes += len(data)
        self.core.receive_data(data)

    def _wait_deadline(self, now: float) -> float:
        """When the wait for input starting ``now`` must end, and why (in ``_wait_limit``).

        The idle timeout (``io_timeout``, ``stress_IO_timeout`` in stress mode) bounds each wait;
        ``command_time_limit`` bounds a whole command line from its first octet; in DATA/BDAT,
        ``min_data_rate`` after ``data_rate_grace`` bounds the data phase: the deadline is the
        moment the average rate since the 354 (or the first BDAT) would fall below the minimum.
        """
        service = self.service
        io_timeout = service.io_timeout
        if self.ctx.limits.stressed:
            io_timeout = min(io_timeout, service.stress_io_timeout)
        deadline = min(self._session_deadline, now + io_timeout)
        limit = "io"
        if self.core.receiving_line:
            if self._line_started is None:
                self._line_started = now
            line_deadline = self._line_started + service.command_time_limit
            if line_deadline < deadline:
                deadline, limit = line_deadline, "line"
        else:
            self._line_started = None
        if self._data_started is not None and service.min_data_rate:
            rate_deadline = (
                self._data_started + service.data_rate_grace + self._data_bytes / service.min_data_rate
            )
            if rate_deadline < deadline:
                deadline, limit = max(rate_deadline, now), "rate"
        self._wait_limit = limit
        return deadline

    def interrupt(self) -> None:
        """Shutdown: stop waiting for the client (the session answers 421 4.3.2).

        A session that is not waiting for its client (it is committing a message, say) is left
        alone: it sees the shutdown before its next read.
        """
        if self._waiting:
            self._interrupted = True
            self._scope.cancel()

    @property
    def waiting_for_client(self) -> bool:
        """True while the session waits for the client's next bytes (it can be evicted now)."""
        return self._waiting and not self._interrupted

    def evict(self) -> bool:
        """Make room for a client with no session (the cap is full and this session's client holds
        far more than its share): stop waiting, answer ``421 4.7.0``, close.

        Returns:
            False when the session is busy (not waiting for its client), so nothing was done.
        """
        if not self.waiting_for_client:
            return False
        self._evicted = self._interrupted = True
        self._scope.cancel()
        return True

    # -- the session -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until QUIT, EOF, timeout or shutdown."""
        try:
            timed_out = shutdown = False
            with self._scope:
                try:
                    if self.implicit_tls and not await self._handshake():
                        return
                    await self._serve()
                except trio.TooSlowError:  # a write that took longer than io_timeout
                    timed_out = True
                except _Shutdown:
                    shutdown = True
            if self._scope.cancelled_caught:
                # The deadline of a wait (io_timeout) or of the session, or interrupt().
                shutdown = self._interrupted
                timed_out = not shutdown
            if timed_out:
                self._log_lost("timeout")
                self.out.clear()
                await self._send_and_close(self._timeout_reply())
            elif shutdown and self._evicted:
                self.out.clear()
                await self._send_and_close(replies.too_many_sessions_client())
            elif shutdown:
                await self._send_and_close(replies.shutting_down())
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            log.info("session %s: connection lost", self.sid)
            self._log_lost("lost")
        finally:
            self._connect_scope.cancel()
            self._abort_transaction()
            self._log_connect()
            mlog.maillog(
                "disconnect",
                None,
                session=self.sid,
                client=self.client_address,
                **self._name_field(),
                messages=self.messages,
                commands=self._tally.summary(),
            )

    def _log_lost(self, event: str) -> None:
        """``lost`` (the client went away) or ``timeout``, after which command: Postfix's
        ``lost connection after RCPT from ...`` that fail2ban's ddos mode reads (not after QUIT:
        a client may close before it reads the 221)."""
        if self._tally.last == "QUIT":
            return
        self._log_connect()
        mlog.maillog(
            event,
            None,
            session=self.sid,
            client=self.client_address,
            **self._name_field(),
            after=self._tally.last,
        )

    def _name_field(self) -> dict[str, str]:
        return {"client_name": self.client_name} if self.client_name else {}

    def _log_connect(self) -> None:
        """The ``connect`` line, once, with the client's name when it is known: as Postfix's smtpd
        writes it after its reverse lookup. So it waits for the connect checks (which may run
        beside the greeting), and is written at the latest before anything else of the session."""
        if self._connect_logged:
            return
        self._connect_logged = True
        mlog.maillog("connect", None, session=self.sid, client=self.client_address, **self._name_field())
        self._log_tls()

    def _timeout_reply(self) -> Reply:
        limit = self._wait_limit
        if limit == "line":
            log.info(
                "session %s: command line from %s took longer than %gs; closing",
                self.sid,
                self.client_address,
                self.service.command_time_limit,
            )
            return replies.command_too_slow()
        if limit == "rate":
            log.info(
                "session %s: data from %s slower than %d bytes/s (%d bytes); closing",
                self.sid,
                self.client_address,
                self.service.min_data_rate,
                self._data_bytes,
            )
            return replies.data_too_slow()
        log.info("session %s: timeout waiting for %s", self.sid, self.client_address)
        return replies.timeout()

    async def _send_and_close(self, reply: Reply) -> None:
        try:
            with trio.move_on_after(5):
                await self.stream.send_all(reply.to_bytes())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _serve(self) -> None:
        if await self._pregreet():
            return
        greeting = _greeting(self.hostname)
        checks = self.ctx.checks.connect
        if not checks:
            self._log_connect()
        if checks and self._background is not None and all(may_follow_greeting(c) for c in checks):
            # Nothing at connect can refuse (delay_checks = yes): the greeting goes out at once,
            # and the first command waits for the client's name (_await_connect_checks).
            self._connect_done = trio.Event()
            self._background.start_soon(self._connect_checks_later, checks, self._stage("connect"))
        elif checks:
            context = self._stage("connect")
            decision = await run_chain(checks, context)
            self.client_name = context.client_name
            self._limits_exempt = context.limits_exempt
            self._log_connect()
            # A refusal is the greeting: 421 ends the session; after a 5xx the core answers 503
            # to everything but QUIT (RFC 5321 §3.1).
            greeting = self._refusal("connect", decision) or greeting
            self._session_mark = mark_of(decision)
        self.reply(greeting)
        if greeting.code == 421:
            await self.flush()
            return
        while True:
            event = self.core.next_event()
            if isinstance(event, ev.NeedData):
                await self.receive()
                continue
            if isinstance(event, ev.ConnectionClosed):
                self._log_lost("lost")
                return
            self._line_started = None  # a command line (or data) came through: a new clock
            done = await self.handle(event)
            if done:
                await self.flush()
                return
            if len(self.out) > _OUT_MAX:
                await self.flush()

    async def _pregreet(self) -> bool:
        """Wait ``greet_pause`` (``stress_greet_pause`` in stress mode) before the greeting.

        RFC 5321 §4.3.1: the client waits for the greeting. A client that talks first is a
        spam engine that does not listen (Postfix's postscreen "pregreet" test): 554 5.5.1,
        logged, closed. Returns True when the session must end. Not for implicit TLS (the
        handshake already needed the client to talk first) nor for trusted clients.
        """
        service = self.service
        pause = service.greet_pause
        if self.ctx.limits.stressed:
            pause = max(pause, service.stress_greet_pause)
        if not pause or self.tls_active or self.trusted:
            return False
        fd = self._fd
        if fd is None:
            return False  # not a plain socket (a test's memory stream): nothing to peek at
        with trio.move_on_after(pause):
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, 512)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if not data:
                return True  # closed before the greeting: nothing to answer
            log.info(
                "session %s: pregreet: %s sent %r before the greeting; dropped",
                self.sid,
                self.client_address,
                data[:64],
            )
            reply = replies.pregreet()
            self._log_connect()
            mlog.maillog(
                "rejected",
                None,
                session=self.sid,
                client=self.client_address,
                reason="pregreet",
                reply=str(reply),
            )
            count_refusal(self.ctx.counters, "connect", reply)
            self.out += reply.to_bytes()
            await self.flush()
            return True
        return False

    async def _connect_checks_later(self, checks: tuple[Check, ...], context: StageContext) -> None:
        """The connect checks, run beside the greeting: they only learn facts (the client's name,
        its exemption from the limits); each has its own deadline."""
        assert self._connect_done is not None
        try:
            with self._connect_scope:
                decision = await run_chain(checks, context)
                self.client_name = context.client_name
                self._limits_exempt = context.limits_exempt
                self._log_connect()
                if self._refusal("connect", decision) is not None:
                    log.warning("session %s: a connect check refused after the greeting; ignored", self.sid)
                else:
                    self._session_mark = mark_of(decision)
        finally:
            self._connect_done.set()

    async def handle(self, event: object) -> bool:
        """Answer one event. Returns True when the session must end."""
        self._tally.command(event)
        if self._connect_done is not None and not isinstance(event, ev.Quit):
            await self._connect_done.wait()
        if isinstance(event, ev.DataChunk):
            if self._write_content(event.data):
                assert self.txn is not None
                await self._end_of_headers(self.txn)
            return False
        if isinstance(event, ev.Ehlo | ev.Helo):
            esmtp = isinstance(event, ev.Ehlo)
            helo_mark: Mark | None = None
            checks = self.ctx.checks.helo
            if checks:
                context = self._stage("helo")
                context.helo, context.esmtp = event.domain, esmtp
                decision = await run_chain(checks, context)
                refused = self._refusal("helo", decision)
                if refused is not None:
                    # Refused: the session stays as it was (so does the core's state).
                    self.reply(refused)
                    return False
                helo_mark = mark_of(decision)
            self.helo = event.domain
            self.esmtp = esmtp
            self._helo_mark = helo_mark
            self._abort_transaction()
            if self.esmtp:
                self.reply(self._ehlo_reply())
            else:
                self.reply(replies.helo(self.hostname))
            return False
        if isinstance(event, ev.MailFrom):
            context = self._stage("mail")
            context.sender, context.mail_params = event.address, event.params
            decision = await run_chain(self.ctx.checks.mail, context)
            refused = self._refusal("mail", decision)
            if refused is not None:
                self.reply(refused)
                return refused.code == 421  # 421 ends the session (RFC 5321 §3.8)
            self._mail_count += 1
            self.txn = _Transaction(sender=event.address, params=event.params, mark=mark_of(decision))
            self.reply(replies.sender_ok())
            return False
        if isinstance(event, ev.RcptTo):
            await self._rcpt(event)
            return False
        if isinstance(event, ev.DataStart):
            txn = self.txn
            if txn is None or not txn.recipients:
                # RFC 2920 §3.1: a pipelined DATA after refused recipients gets 554, not 354.
                self.reply(replies.no_valid_recipients())
                return False
            checks = self.ctx.checks.data
            if checks:
                decision = await run_chain(checks, self._stage("data"))
                refused = self._refusal("data", decision)
                if refused is not None:
                    self.reply(refused)  # the transaction stays: the client may RSET or QUIT
                    return False
                txn.mark = stronger(txn.mark, mark_of(decision))
            self._start_content()
            if txn.storage_error is None and self._check_space(None) is not None:
                self._discard_content(txn)
            if txn.storage_error is not None:
                err, txn.storage_error = txn.storage_error, None  # the client may try DATA again
                self.reply(replies.insufficient_storage() if err.disk_full else replies.local_error())
            else:
                self._start_data()
                self.reply(replies.data_start())
            return False
        if isinstance(event, ev.Bdat):
            txn = self.txn
            checks = self.ctx.checks.data
            if checks and txn is not None and txn.recipients and not txn.data_checked:
                # BDAT has no DATA command: the first chunk is the DATA stage. A refusal is the
                # reply to this chunk (its octets are read and dropped; see BdatChunkEnd).
                txn.data_checked = True
                decision = await run_chain(checks, self._stage("data"))
                txn.refusal = self._refusal("data", decision)
                txn.mark = stronger(txn.mark, mark_of(decision))
            self._start_content()
            if txn is not None and txn.storage_error is None:
                # Each chunk: is there still room? (The chunk's octets are read and dropped; the
                # refusal is the reply to the chunk, see BdatChunkEnd below.)
                if self._check_space(event.size) is not None:
                    self._discard_content(txn)
                elif self._data_started is None:
                    self._start_data()
            return False
        if isinstance(event, ev.EndOfData):
            self._data_started = None
            self.reply(await self._end_of_data(event.error))
            return False
        if isinstance(event, ev.BdatChunkEnd):
            if event.error is not None or event.last:
                self._data_started = None
                self.reply(await self._end_of_data(event.error))
            elif (txn := self.txn) is not None and (txn.storage_error is not None or txn.refusal is not None):
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
            return await self._auth(event)
        if isinstance(event, ev.InvalidCommand):
            self.reply(event.reply)
            return event.reply.code == 421
        raise AssertionError(f"unhandled SMTP event {event!r}")

    # -- commands --------------------------------------------------------------------------------

    def _stage(self, stage: Stage, txn: _Transaction | None = None) -> StageContext:
        """The facts of the session and of the transaction (``txn``, else the current one) so far,
        for the checks of ``stage``."""
        context = StageContext(
            stage,
            self.sid,
            self.service,
            self.client_address,
            self.helo,
            self.esmtp,
            self.tls_facts,
            self.authenticated,
            client_name=self.client_name,
            limits_exempt=self._limits_exempt,
            session_messages=self._mail_count,
            session_recipients=self._rcpt_count,
        )
        if txn is None:
            txn = self.txn
        if txn is not None:
            context.sender = txn.sender
            context.mail_params = txn.params
            context.recipients = tuple(txn.accepted_rcpts)
            context.headers = txn.headers
        return context

    def _refusal(self, stage: Stage, decision: Decision) -> Reply | None:
        """The reply refusing ``stage`` for ``decision``; None when the stage goes on."""
        reply = refusal(stage, decision, self.hostname)
        if reply is not None:
            count_refusal(self.ctx.counters, stage, reply)
        return reply

    def _check_space(self, size: int | None) -> Reply | None:
        """``queue_minfree``: 452 4.3.1 when the queue has no room for a message of ``size``."""
        return space_refusal(self.ctx.space, size, self.sid, self.client_address)

    def _start_data(self) -> None:
        self._data_started = trio.current_time()
        self._data_bytes = 0

    def _discard_content(self, txn: _Transaction) -> None:
        """No room: drop the content file; the end of this DATA or BDAT chunk gets 452 4.3.1."""
        if txn.writer is not None:
            txn.writer.abort()
            txn.writer = None
        txn.storage_error = QueueStorageError("queue below queue_minfree", errno.ENOSPC)

    async def _rcpt(self, event: ev.RcptTo) -> None:
        txn = self.txn
        assert txn is not None
        rcpt = str(event.address)
        context = self._stage("rcpt")
        context.recipient, context.rcpt_params = event.address, event.params
        decision = await run_chain(self.ctx.checks.rcpt, context)
        refused = self._refusal("rcpt", decision)
        if refused is not None:
            # A refusal (smar's too) is a maillog line; a check that could not decide is not.
            if isinstance(decision, Refuse):
                mlog.maillog(
                    "rejected",
                    None,
                    session=self.sid,
                    client=self.client_address,
                    sender=str(txn.sender) if isinstance(txn.sender, Address) else "",
                    rcpt=rcpt,
                    reply=str(refused),
                    helo=self.helo or "",
                    proto="ESMTP" if self.esmtp else "SMTP",
                )
            self.reply(refused)
            return
        txn.mark = stronger(txn.mark, mark_of(decision))
        self._rcpt_count += 1
        orcpt = None
        if event.params.orcpt is not None:
            orcpt = f"{event.params.orcpt[0]};{event.params.orcpt[1]}"
        notify = tuple(sorted(event.params.notify)) if event.params.notify is not None else None
        expanded = context.expanded or (rcpt,)
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
        # Imported at the first message, not at start-up (email.utils and the TLS facts it needs
        # cost smtps's first greeting about 10 ms).
        from meta1py.message.received import received_header

        txn = self.txn
        return received_header(
            hostname=self.hostname,
            qid=qid,
            client_address=self.client_address,
            helo=self.helo,
            esmtp=self.esmtp,
            tls=self.tls_facts,
            authenticated=self.authenticated,
            recipients=txn.accepted_rcpts if txn is not None else (),
            now=time.time(),
            client_name=self.client_name,
        )

    def _start_content(self) -> None:
        txn = self.txn
        if txn is None or txn.writer is not None or txn.storage_error is not None or txn.refusal is not None:
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

    def _write_content(self, data: bytes) -> bool:
        """Write message data. Returns True when the header block just ended and there are
        end-of-headers checks to ask (:meth:`_end_of_headers`)."""
        txn = self.txn
        if txn is None or txn.writer is None:
            return False
        headers_ended = False
        if not txn.header_done and txn.header_scan.feed(data):
            headers_ended = self._header_block_ended(txn, txn.header_scan.head)
        try:
            txn.writer.write(data)
        except QueueStorageError as exc:
            log.error("session %s: write failed for %s: %s", self.sid, txn.writer.qid, exc)
            txn.storage_error = exc
            txn.writer.abort()
            txn.writer = None
            return False
        return headers_ended

    def _header_block_ended(self, txn: _Transaction, head: bytes) -> bool:
        """The client's header block ``head`` is complete: count its Received: lines and keep it
        for the checks that read it. Returns True when there are end-of-headers checks to ask."""
        txn.hops = count_hops(head)
        txn.header_done = True
        txn.header_scan = HeaderHead()
        checks = self.ctx.checks
        if checks.eoh or checks.eom:
            txn.headers = head
        return bool(checks.eoh)

    async def _end_of_headers(self, txn: _Transaction) -> None:
        """Ask the EOH checks. A refusal drops the content and becomes the end-of-data reply."""
        decision = await run_chain(self.ctx.checks.eoh, self._stage("eoh", txn))
        txn.refusal = self._refusal("eoh", decision)
        if txn.refusal is not None and txn.writer is not None:
            txn.writer.abort()
            txn.writer = None
        txn.mark = stronger(txn.mark, mark_of(decision))

    async def _end_of_data(self, error: Reply | None) -> Reply:
        """Finish the content, commit the envelope, and return the reply for the end of data."""
        txn = self.txn
        self.txn = None
        self._data_started = None
        if txn is None:
            return replies.bad_sequence()
        writer = txn.writer
        if error is not None:
            if writer is not None:
                writer.abort()
            return error
        if not txn.recipients:
            if writer is not None:
                writer.abort()
            return replies.no_valid_recipients()
        if txn.refusal is None and writer is not None and not txn.header_done:
            # The data ended inside the header block (no empty line): this is its end too.
            if self._header_block_ended(txn, txn.header_scan.head):
                await self._end_of_headers(txn)
                writer = txn.writer
        if txn.refusal is not None:
            if writer is not None:
                writer.abort()
            return self._policy_refused(txn, None, txn.refusal)
        if txn.storage_error is not None or writer is None:
            if writer is not None:
                writer.abort()
            err = txn.storage_error
            return replies.insufficient_storage() if err is None or err.disk_full else replies.local_error()
        if txn.hops >= self.ctx.config.qmgr.max_hops:
            writer.abort()
            reply = replies.too_many_hops()
            mlog.maillog(
                "rejected",
                writer.qid,
                session=self.sid,
                reason="too many hops",
                hops=txn.hops,
                client=self.client_address,
                reply=str(reply),
            )
            count_refusal(self.ctx.counters, "eom", reply)
            return reply
        qid = writer.qid
        try:
            # No fsync here: qmgr fsyncs the content file and its directory in the same thread
            # trip as the envelope's commit, and smtps answers 250 only after that commit.
            writer.close_unsynced()
        except QueueStorageError as exc:
            log.error("session %s: cannot write %s: %s", self.sid, qid, exc)
            writer.abort()
            return replies.insufficient_storage() if exc.disk_full else replies.local_error()
        checks = self.ctx.checks.eom
        mark = stronger(txn.mark, stronger(self._helo_mark, self._session_mark))
        if checks:
            context = self._stage("eom", txn)
            context.message = MessageFacts(qid, writer.size, writer.path)
            decision = await run_chain(checks, context)
            refused = self._refusal("eom", decision)
            if refused is not None:
                writer.abort()
                return self._policy_refused(txn, qid, refused)
            mark = stronger(mark, mark_of(decision))
        if mark is not None:
            writer.abort()
            return self._marked(txn, qid, mark)
        # The content is written and closed; no envelope yet: a crash here must give no 250 and
        # deliver nothing (qmgr's orphan sweep removes the file).
        crash_point("after-content")
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
            try:
                answer = await self.ctx.qmgr.call(request, timeout=_COMMIT_TIMEOUT_S)
            except RpcError as exc:
                # The outcome is unknown (qmgr died or was slow): ask again once. qmgr answers a
                # repeated commit of a queued id with "ok", so the client learns the truth
                # instead of being told to retry a message that will be delivered anyway.
                log.warning("session %s: qmgr commit for %s failed (%s); asking again", self.sid, qid, exc)
                answer = await self.ctx.qmgr.call(request, timeout=_COMMIT_TIMEOUT_S)
        except RpcError as exc:
            # Still unknown: keep the content file (an orphan is removed by recovery; a
            # committed message must not lose it) and let the client retry.
            log.error("session %s: qmgr commit for %s failed: %s", self.sid, qid, exc)
            return replies.local_error()
        if not answer.ok:
            r = answer.reply
            writer.abort()
            return self._commit_refused(qid, r.code, r.enhanced or "", r.text)
        # qmgr committed: a crash before the 250 leaves a message the client will send again
        # (a duplicate, never a loss).
        crash_point("before-250")
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

    def _policy_refused(self, txn: _Transaction, qid: str | None, reply: Reply) -> Reply:
        """A message refused by a check while or after its data came in: logged, then ``reply``."""
        mlog.maillog(
            "rejected",
            qid,
            session=self.sid,
            client=self.client_address,
            sender=str(txn.sender) if isinstance(txn.sender, Address) else "",
            nrcpt=len(txn.recipients),
            reply=str(reply),
        )
        return reply

    def _marked(self, txn: _Transaction, qid: str, mark: Mark) -> Reply:
        """The end-of-data reply for a message a check discarded or quarantined (content removed).

        Discard: 250 as if queued; the message goes nowhere (maillog ``discarded``). Quarantine:
        qmgr cannot put a message on hold as it commits it, so the message is refused with 451
        4.7.1 and stays with the client (never delivered unchecked; see meta1py.smtps.stages).
        """
        sender = str(txn.sender) if isinstance(txn.sender, Address) else ""
        if isinstance(mark, Discard):
            mlog.maillog(
                "discarded",
                qid,
                session=self.sid,
                client=self.client_address,
                sender=sender,
                nrcpt=len(txn.recipients),
                reason=mark.reason,
            )
            return replies.queued(qid)
        reply = quarantine_refused()
        log.warning(
            "session %s: %s quarantined (%s), but qmgr cannot hold a message at commit: %s",
            self.sid,
            qid,
            mark.reason,
            reply,
        )
        self._policy_refused(txn, qid, reply)
        return reply

    def _commit_refused(self, qid: str, code: int, enhanced: str, text: str) -> Reply:
        """The reply for a commit qmgr refused.

        "The store cannot be written" (452, or the enhanced code 4.3.1: disk full, a full or
        locked database) is 452 4.3.1 Insufficient system storage, and new messages are refused
        at MAIL for a few seconds (qmgr answers this while it waits for space; clients should not
        send bodies meanwhile). Any other temporary refusal is 451 4.3.0: the client retries
        later. A permanent one (a bad envelope) is passed on as qmgr wrote it.
        """
        log.warning("session %s: qmgr refused %s: %d %s %r", self.sid, qid, code, enhanced, text[:200])
        if code == 452 or enhanced == TEMP_MAIL_SYSTEM_FULL:
            if self.ctx.space is not None:
                self.ctx.space.store_full(trio.current_time())
            return replies.insufficient_storage()
        if 400 <= code < 500:
            return replies.local_error()
        return replies.relayed(code, enhanced or None, text)

    def _abort_transaction(self) -> None:
        self._data_started = None
        txn, self.txn = self.txn, None
        if txn is not None and txn.writer is not None:
            txn.writer.abort()

    # -- TLS -------------------------------------------------------------------------------------

    async def _starttls(self) -> bool:
        if self.tls is None:  # not reached: the core only passes STARTTLS when it was offered
            self.reply(replies.tls_unavailable())
            return False
        self.reply(replies.start_tls())
        await self.flush()
        if self.core.discarded_after_starttls:
            # RFC 3207 §5: nothing sent before the handshake may be acted on after it. The core
            # dropped it already; a client that pipelines past STARTTLS gets no TLS session.
            log.warning(
                "session %s: %d bytes pipelined after STARTTLS from %s; closing",
                self.sid,
                self.core.discarded_after_starttls,
                self.client_address,
            )
            return True
        if not await self._handshake():
            return True
        self.core.starttls_done()
        # RFC 3207 §4.2: forget everything learnt before TLS.
        self.helo = None
        self._helo_mark = None
        self.esmtp = False
        self.authenticated = None
        self._abort_transaction()
        return False

    async def _handshake(self) -> bool:
        """TLS handshake on the plain stream (STARTTLS or implicit); False when it failed."""
        assert self.tls is not None
        self._fd = None  # from now on every byte goes through TLS
        tls_stream = trio.SSLStream(self.stream, self.tls.context, server_side=True)
        try:
            with trio.fail_after(self.service.io_timeout):
                await tls_stream.do_handshake()
        except trio.TooSlowError:
            log.info("session %s: TLS handshake with %s timed out", self.sid, self.client_address)
            return False
        except trio.BrokenResourceError as exc:
            reason = exc.__cause__ or exc
            log.info("session %s: TLS handshake with %s failed: %s", self.sid, self.client_address, reason)
            return False
        self.stream = tls_stream
        self.tls_active = True
        self.ctx.counters.inc(SMTPS_TLS_SESSIONS)
        self.core.tls_active = True  # for implicit TLS: no STARTTLS in EHLO, refused if sent
        facts = tls_facts(tls_stream)
        self.tls_facts = facts
        # The maillog's tls event; in the postfix format Postfix's smtpd line
        # (smtpd_tls_loglevel = 1), which postfix_exporter counts.
        trust = (
            "anonymous" if facts.peer_subject is None else "trusted" if facts.peer_verified else "untrusted"
        )
        line: dict[str, str | int] = {
            "protocol": facts.protocol,
            "cipher": facts.cipher,
            "bits": facts.bits,
            "trust": trust,
        }
        if facts.peer_subject is not None:
            line["cert_subject"] = facts.peer_subject
            line["cert_issuer"] = facts.peer_issuer or ""
        self._tls_line = line
        if self._connect_logged:  # else (implicit TLS) it follows the connect line
            self._log_tls()
        return True

    def _log_tls(self) -> None:
        if self._tls_line is not None:
            fields, self._tls_line = self._tls_line, None
            mlog.maillog(
                "tls", None, session=self.sid, client=self.client_address, **self._name_field(), **fields
            )

    # -- AUTH ------------------------------------------------------------------------------------

    def _auth_offered(self) -> bool:
        if self.authenticator is None or not self.service.auth_mechanisms:
            return False
        if self.tls_active or not self.service.require_tls_for_auth:
            return True
        return self.service.auth_plaintext_loopback and is_loopback(self.client_address)

    def _ehlo_reply(self) -> Reply:
        lines = self.extensions.ehlo_lines(
            tls_active=self.tls_active, authenticated=self.authenticated is not None
        )
        if not self._auth_offered():
            lines = [line for line in lines if not line.startswith("AUTH ")]
        return replies.ehlo(self.hostname, lines)

    async def _auth(self, event: ev.Auth | ev.AuthResponse) -> bool:
        """One step of AUTH. Returns True when the session must end (too many failures)."""
        if isinstance(event, ev.Auth):
            if not self._auth_offered():
                self.reply(replies.encryption_required())
                return False
            if self.auth_limiter.blocked(self.client_address, trio.current_time()):
                log.info("session %s: AUTH from %s refused: too many failures", self.sid, self.client_address)
                self.reply(replies.too_many_auth_failures())
                return True
            self._sasl = SaslExchange(event.mechanism)
            try:
                step = self._sasl.start(event.initial_response)
            except SaslError as exc:
                return self._sasl_failed(exc)
        else:
            if self._sasl is None:  # not reached: the core only sends responses after a 334
                self.reply(replies.bad_sequence())
                return False
            try:
                step = self._sasl.respond(event.line)
            except SaslError as exc:
                return self._sasl_failed(exc)
        if isinstance(step, SaslChallenge):
            self.reply(replies.auth_challenge(step.data))
            return False
        return await self._check_credentials(step)

    def _sasl_failed(self, exc: SaslError) -> bool:
        mechanism = self._sasl.mechanism if self._sasl else "?"
        self._sasl = None
        if exc.cancelled:
            self.reply(replies.auth_cancelled())
            return False
        log.info("session %s: AUTH %s from %s: %s", self.sid, mechanism, self.client_address, exc)
        self.reply(replies.auth_data_undecodable())
        return False

    async def _check_credentials(self, credentials: Credentials) -> bool:
        assert self.authenticator is not None and self._sasl is not None
        mechanism, self._sasl = self._sasl.mechanism, None
        if await self.authenticator.check(credentials):
            self.authenticated = credentials.user
            self.core.auth_done(credentials.user)
            log.info(
                "session %s: authenticated user=%r mechanism=%s client=%s",
                self.sid,
                credentials.user,
                mechanism,
                self.client_address,
            )
            self.reply(replies.auth_ok())
            return False
        self.auth_limiter.record_failure(self.client_address, trio.current_time())
        # The user name is logged (it is what an operator needs to see an attack), never the password.
        log.info(
            "session %s: authentication failed user=%r mechanism=%s client=%s",
            self.sid,
            credentials.user[:64],
            mechanism,
            self.client_address,
            # log_format json and postfix write it as an event (fail2ban's postfix-sasl jail).
            extra=mlog.event_fields(
                "auth_failed",
                session=self.sid,
                client=self.client_address,
                mechanism=mechanism,
                user=credentials.user[:64],
            ),
        )
        self.reply(replies.auth_failed())
        return False


_GREETINGS: dict[str, Reply] = {}


def count_refusal(counters: Counters, stage: str, reply: Reply) -> None:
    """Count a refusal at ``stage`` by the reply's RFC 3463 code (``none`` for a reply without
    one, which replies.py never builds)."""
    counters.inc(SMTPS_REJECTED, stage, reply.enhanced or "none")


def _greeting(hostname: str) -> Reply:
    """The 220 greeting, one Reply per host name: built once, its bytes encoded once."""
    reply = _GREETINGS.get(hostname)
    if reply is None:
        if len(_GREETINGS) > 16:  # host names changed by reloads
            _GREETINGS.clear()
        reply = _GREETINGS[hostname] = replies.greeting(hostname)
    return reply


# (id(section), starttls, auth) -> (section, extensions). Keyed by identity, not value: hashing
# a whole section per session costs more than it saves; the section is held so that its id
# cannot be reused while the entry exists.
_EXTENSIONS: dict[tuple[int, bool, bool], tuple[SmtpsConfig, Extensions]] = {}


def _extensions(service: SmtpsConfig, *, starttls: bool, auth: bool) -> Extensions:
    """The ESMTP extensions a session of ``service`` offers: one shared value per listener setup."""
    key = (id(service), starttls, auth)
    found = _EXTENSIONS.get(key)
    if found is not None and found[0] is service:
        return found[1]
    flags = set(service.flags)
    if starttls:
        flags.add("starttls")
    if auth:
        flags.add("auth")
    if len(_EXTENSIONS) > 64:  # sections replaced by reloads
        _EXTENSIONS.clear()
    extensions = Extensions.from_flags(flags, service.max_message_size, service.auth_mechanisms)
    _EXTENSIONS[key] = (service, extensions)
    return extensions


class _Shutdown(Exception):
    """smtps is stopping: answer 421 4.3.2 and close."""
