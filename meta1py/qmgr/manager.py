"""The queue manager's trio core: commits, routing, dispatch, results, bounces, recovery.

State lives in two places: the envelope store (durable, the truth after a crash) and
:class:`_Msg` records in memory (the same envelopes plus what is in flight).  Every change to a
recipient is written through the group committer before anything depends on it; the in-memory
record is updated from the same values.

Life of a message::

    commit (smtps) -> due -> route (smar) -> job per destination -> deliver (smtpc) -> results
        ok -> delivered        perm -> bounced         temp -> deferred (retry) or expired
    every recipient final -> one DSN for the failed ones (if any, unless NOTIFY/null sender say
    no) committed in the same transaction that deletes the message -> content removed.

When smtpc itself goes away in the middle of deliveries (it crashed, was killed, is being
restarted by mcp), the jobs it was running learnt nothing about their destinations: they go back
to the scheduler (``requeued`` in the maillog, no attempt counted, no retry delay) and dispatching
pauses until qmgr is connected to smtpc again (:meth:`QueueManager._wait_for_agent`).

When the store cannot be written (disk full, quota, I/O error, a locked database), qmgr does not
die: see :meth:`QueueManager._store_failed`. What it could not write and may safely keep in memory
(recipient results and retry times) waits in ``_unsaved`` and is written again with backoff;
nothing is finished (deleted, its content removed) until that is recorded; new messages are
refused with 452 4.3.1 (451 4.3.0 for other errors) by the failing commit itself; deliveries
pause until a write succeeds again.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import trio

from meta1py import clock
from meta1py import log as mlog
from meta1py.conf import Config
from meta1py.crashpoints import crash_point
from meta1py.envelope import envelope_params
from meta1py.message.dsn import DsnRecipient, build_dsn
from meta1py.metrics import (
    QMGR_BOUNCED,
    QMGR_DEFERRED,
    QMGR_DELIVERED,
    QMGR_DELIVERY_DELAY,
    QMGR_DELIVERY_FAILURES,
    QMGR_RECEIVED,
    Counters,
)
from meta1py.qmgr.scheduler import Job, Scheduler
from meta1py.queue.content import (
    ContentWriter,
    DirectorySyncer,
    content_file,
    content_in_use,
    content_path,
    open_content,
    remove_content,
    scan_content_ids,
    sync_content_files,
)
from meta1py.queue.envelopes import (
    DeleteMessage,
    DuplicateMessageError,
    Envelope,
    EnvelopeStore,
    GroupCommitter,
    InsertEnvelope,
    MessageKind,
    Recipient,
    RecipientStatus,
    RecipientUpdate,
    StoreOp,
    UnknownMessageError,
    UpdateRecipients,
)
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import is_queue_id
from meta1py.rpc.caller import Caller
from meta1py.rpc.errors import RpcError, RpcPeerGoneError, RpcRemoteError
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import (
    QUEUE_SELECT_MAX_IDS,
    QueueControlReply,
    QueueControlRequest,
    QueueEnvelopeCommitReply,
    QueueEnvelopeCommitRequest,
    QueueSelectReply,
    QueueSelectRequest,
    SmarHostValue,
    SmarRouteRequest,
    SmarRouteValue,
    SmtpcDeliveryRequest,
    SmtpcRecipientValue,
    SmtpReplyValue,
)
from meta1py.smtp.status import (
    PERM_PROTOCOL_ERROR,
    PERM_UNDEFINED,
    SUCCESS,
    TEMP_DELIVERY_TIME_EXPIRED,
    TEMP_MAIL_SYSTEM_ERROR,
    TEMP_MAIL_SYSTEM_FULL,
    TEMP_NO_ANSWER_FROM_HOST,
    TEMP_ROUTING_SERVER_FAILURE,
    TEMP_UNDEFINED,
)

log = logging.getLogger(__name__)

_ROUTE_TIMEOUT_S = 60.0
_ROUTE_CONCURRENCY = 64
_ROUTE_CACHE_S = 10.0
_ROUTE_CACHE_MAX = 10_000
_MAX_REPLY_CHARS = 500
# Recovered recipients that were due while qmgr was down come back spread over this window, so a
# restart with a large deferred queue does not retry everything in one burst.
_RECOVERY_SPREAD_S = 30.0
# While the envelope store cannot be written, qmgr tries again after this delay, doubling up to the
# maximum, until a write succeeds (then everything kept in memory is written and deliveries go on).
_STORE_RETRY_MIN_S = 0.5
_STORE_RETRY_MAX_S = 15.0
# Content removals that failed (EIO on the WAL's fsync or an unlink) are tried again this much later.
_REMOVAL_RETRY_S = 5.0
# Finished messages' content waits this long for a durable commit to carry its removal (new mail
# arriving) before the removal loop pays for an fsync of its own (an idle queue).
_REMOVAL_WAIT_S = 0.25
# Written by a qmgr that stopped with no delivery in flight, removed at start: without it, the
# recipients that were due may have been in delivery when qmgr died (see recover()).
CLEAN_STOP_NAME = "qmgr.stopped"
# While smtpc is unreachable, dispatching pauses; qmgr looks again after this delay, doubling up
# to the maximum.  The delay also grows when smtpc goes away again right after it came back (a
# crash loop), and falls back to the minimum once smtpc answers a delivery.
_AGENT_BACKOFF_MIN_S = 0.1
_AGENT_BACKOFF_MAX_S = 2.0
# A job whose delivery loses smtpc this many times is suspected of killing it (a message that
# crashes the agent): that loss counts as an ordinary temporary failure, with retry_min/retry_max
# backoff, so that one message cannot keep smtpc in a crash loop (slower and slower restarts).
_AGENT_LOSSES_MAX = 3


_RouteKey = tuple[str, str, str | None, tuple[SmarHostValue, ...]]
"""Recipients whose routes agree on (destination, transport, path, hosts) share one delivery."""


class AgentCaller(Caller, Protocol):
    """The RPC client of the delivery agent (smtpc), which qmgr only calls while connected.

    ``RpcClient`` is one; so is any typed `Caller` that can tell whether it is connected.
    """

    @property
    def connected(self) -> bool: ...


@dataclass
class _Msg:
    env: Envelope
    rcpts: dict[int, Recipient]
    busy: set[int] = field(default_factory=set)  # being routed or delivered
    deleted: bool = False
    # The host that gave each recipient's last reply, for the DSN's Remote-MTA field. Kept in
    # memory only: a report built after a restart simply omits the field (RFC 3464 makes it
    # optional), which is cheaper than a schema change for a diagnostic.
    remote_mta: dict[int, str] = field(default_factory=dict)
    finishing: bool = False  # _finish is running or scheduled

    def pending(self) -> list[Recipient]:
        return [r for r in self.rcpts.values() if not r.is_final]


def _ok_reply() -> SmtpReplyValue:
    return SmtpReplyValue(code=250, enhanced=SUCCESS, text="Ok")


def _reply_text(reply: SmtpReplyValue) -> str:
    text = f"{reply.code} {reply.enhanced} {reply.text}" if reply.enhanced else f"{reply.code} {reply.text}"
    return text[:_MAX_REPLY_CHARS]


def _notify_tuple(notify: frozenset[str] | None) -> tuple[str, ...] | None:
    return tuple(sorted(notify)) if notify else None


def _enhanced_of(reply: str | None, default: str) -> str:
    """The enhanced status code in a stored reply text ("451 4.4.1 ..."), or ``default``."""
    parts = (reply or "").split()
    if len(parts) > 1 and parts[1][:1] == default[:1] and parts[1].count(".") == 2:
        return parts[1]
    return default


def _seconds(value: float) -> str:
    """A duration as Postfix writes the parts of ``delays=``: two decimals, no trailing zeros,
    whole seconds from 10 s on (never an exponent)."""
    if value >= 10:
        return f"{value:.0f}"
    return f"{max(0.0, value):.2f}".rstrip("0").rstrip(".") or "0"


def _delays(arrival: float, started: float, now: float) -> str:
    """Postfix's ``delays=a/b/c/d`` of one delivery attempt: a (before the queue manager) is 0,
    since a message is queued when smtps has it on disk; b is the time in the queue until this
    attempt began; c (connection set-up) is 0, since smtpc does not report it apart from d; d is
    the attempt, as qmgr waited for smtpc's answer."""
    return f"0/{_seconds(started - arrival)}/0/{_seconds(now - started)}"


def _transport_of(destination: str | None) -> str | None:
    """``smtp``, ``lmtp``, ``maildir``, ...: the transport of a route's destination key (for the
    maillog: ``log_format = postfix`` names the delivery agent by it)."""
    return destination.partition(":")[0] if destination else None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _matches(msg: _Msg, domain: str | None, all_deferred: bool) -> bool:
    """Whether an operator command without queue ids touches ``msg``: a pending recipient in
    ``domain`` (lower-cased; None: any), and a deferred one with ``all_deferred``."""
    if domain is None and not all_deferred:
        return True
    pending = msg.pending()
    if domain is not None and not any(_domain(r.address) == domain for r in pending):
        return False
    return not all_deferred or any(r.status == "deferred" for r in pending)


class _RemovalTrip:
    """Content files to remove once their messages' deletions are durable (an AfterDurable)."""

    __slots__ = ("failed", "manager", "qids")

    def __init__(self, manager: QueueManager, qids: list[str]) -> None:
        self.manager = manager
        self.qids = qids
        self.failed: list[str] = []

    def run(self) -> None:
        queue_dir = self.manager.queue_dir
        for qid in self.qids:
            try:
                remove_content(queue_dir, qid)
            except OSError as exc:
                log.warning("%s: cannot remove content file: %s; will retry", qid, exc)
                self.failed.append(qid)

    def finished(self, ran: bool) -> None:
        again = self.failed if ran else self.qids
        if again:
            self.manager._removals.extend(again)
            self.manager._removals_wake.set()


class QueueManager:
    """qmgr's state and tasks; :meth:`run` serves until cancelled."""

    def __init__(
        self,
        config: Config,
        store: EnvelopeStore,
        smar: Caller,
        smtpc: AgentCaller,
        *,
        rng: random.Random | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.config = config
        #: What qmgr counts (messages received, recipients delivered, deferred, bounced, delivery
        #: delays, failures per destination): meta1py.metrics. Passed in so that the counts
        #: survive a reopening of the store (qmgr.service).
        self.counters = counters if counters is not None else Counters()
        self.qcfg = config.qmgr
        self.queue_dir = Path(config.queue_directory)
        self.store = store
        # New messages' content is fsync'd in the committer's thread trip, just before their
        # envelopes' transaction (smtps only closes it): one trip for both durable steps.
        # The content of finished messages goes in the same trip as the next durable commit
        # (_RemovalTrip): under load, no fsync and no thread trip of its own.
        self.committer = GroupCommitter(store, prepare=sync_content_files, after_durable=self._removal_trip)
        self.smar = smar
        self.smtpc = smtpc
        self.rng = rng or random.Random()
        self.scheduler = Scheduler(
            per_destination_limit=config.smtpc.max_connections,
            total_limit=config.smtpc.max_connections_total,
            retry_min=self.qcfg.retry_min,
            retry_max=self.qcfg.retry_max,
            rng=self.rng,
        )
        self.syncer = DirectorySyncer()
        self.messages: dict[str, _Msg] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = trio.Event()
        self._route_limiter = trio.CapacityLimiter(_ROUTE_CONCURRENCY)
        self._route_cache: dict[str, tuple[float, SmarRouteValue]] = {}
        self._removals: list[str] = []
        self._removals_wake = trio.Event()
        self._deferred_by_dest: dict[str, set[str]] = {}
        self._dest_reason: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._idle = trio.Event()
        # The delivery agent: dispatching pauses while it is down (see _agent_lost).
        self._agent_down = False
        self._agent_gone = False  # this pause is because smtpc went away (not just "not connected yet")
        self._agent_backoff_s = _AGENT_BACKOFF_MIN_S
        self.agent_outages = 0
        """How many times dispatching paused because smtpc was gone (for tests and diagnostics)."""
        self.started_at = clock.now()
        delivery_timeout = config.smtpc.io_timeout * 12 + 60
        self._delivery_timeout_s = delivery_timeout
        # The envelope store's health (see _store_failed): the error of the last write that
        # failed, None while writes succeed; recipient updates that could not be written yet.
        self.store_error: QueueStorageError | None = None
        self._unsaved: dict[str, set[int]] = {}
        self._store_trouble = trio.Event()
        self.store_outages = 0
        """How many times the store stopped taking writes (for tests and diagnostics)."""
        # Recipients whose last delivery may have reached the destination although no result
        # came back (smtpc went away in the middle): their next delivery may be a duplicate.
        self._maybe_sent: dict[str, set[int]] = {}
        self.handle = self._handlers()
        """Answers the calls qmgr serves on qmgr.sock (the channel's handler)."""
        # Work started by the loop (routing, deliveries, deferrals, finishing) still running, and
        # an event set whenever some of it ends or the loop has looked at the timers: test mode's
        # clock waits on them until qmgr is quiet (see quiet()).
        self._working = 0
        self._progress = trio.Event()
        self.events_run = 0
        """Timers that started work (a routing or a finishing): ``ran`` of ``POST /clock/advance``."""

    # -- start-up ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Load the queue after a start or crash: schedule what is left, finish what is done.

        Recipients that came due while qmgr was down get new attempt times spread uniformly over
        a window (``retry_min``, at most 30 s), written back to the store, so that a restart
        with a large deferred queue neither retries everything in one burst nor forgets the spread
        after a second restart.  Messages whose recipients are all final (qmgr stopped between
        the last result and the bounce) are finished: their bounce is queued, then they go.
        """
        now = clock.now()
        spread = min(_RECOVERY_SPREAD_S, max(1.0, self.qcfg.retry_min))
        marker = self.queue_dir / CLEAN_STOP_NAME
        clean = marker.exists()
        try:
            marker.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", marker, exc)
        envelopes = self.store.load_unfinished()
        finished = set(self.store.finished_ids())
        if finished:
            envelopes += [e for e in (self.store.get(q) for q in sorted(finished)) if e is not None]
        loaded = 0
        for env in envelopes:
            if not content_path(self.queue_dir, env.qid).exists():
                log.critical("recovery: content of %s is missing; it will bounce without it", env.qid)
            msg = _Msg(env, {r.idx: r for r in env.recipients})
            self.messages[env.qid] = msg
            updates = []
            for r in msg.pending():
                if r.next_attempt <= now:
                    if not clean:
                        # It was due when qmgr died, so it may have been in delivery: smtpc may
                        # have got the destination's 250 with nobody left to tell.
                        self._maybe_sent.setdefault(env.qid, set()).add(r.idx)
                    when = now + self.rng.uniform(0, spread)
                    msg.rcpts[r.idx] = replace(r, next_attempt=when)
                    updates.append(
                        RecipientUpdate(r.idx, r.status, r.attempts, when, r.last_reply, r.destination)
                    )
                if r.status == "deferred" and r.destination:
                    self._deferred_by_dest.setdefault(r.destination, set()).add(env.qid)
            if updates:
                try:
                    self.store.update_recipients(env.qid, updates)
                except QueueStorageError as exc:
                    # A full disk must not keep qmgr from starting: the spread times live in memory
                    # and are written once the store takes writes again.
                    self._store_failed(exc, f"{env.qid}: recovered retry times")
                    self._keep_unsaved(env.qid, (u.idx for u in updates))
            pending = msg.pending()
            self._schedule(env.qid, min((r.next_attempt for r in pending), default=now))
            loaded += 1
        # Content files' ages are real (their mtimes), whatever test mode's clock says.
        self._remove_orphans(time.time())
        log.info("recovery: %d messages in the queue (%d finished)", loaded, len(finished))
        if self._maybe_sent:
            log.warning(
                "recovery after qmgr stopped uncleanly: %d recipients were due and may have been "
                "in delivery; if delivered again they are logged with dup=possible",
                sum(len(v) for v in self._maybe_sent.values()),
            )

    def mark_clean_stop(self) -> None:
        """Note that qmgr stops with no delivery in flight (read by the next :meth:`recover`)."""
        try:
            (self.queue_dir / CLEAN_STOP_NAME).touch()
        except OSError as exc:
            log.warning("cannot write %s: %s", CLEAN_STOP_NAME, exc)

    def _remove_orphans(self, now: float) -> int:
        """Remove content files that no envelope refers to and that no session can still be writing.

        A content file is an orphan when no envelope (in the store or in memory) names it, no
        process holds it open for writing (its writer's lock, :func:`content_in_use`), and it has
        not changed for ``qmgr { orphan_min_age }``: longer than smtps waits for qmgr's answer to
        a commit after it closed the file (twice 60 s), so a message on its way to the store is
        never taken for one. Runs at start and every ``orphan_sweep_interval``.
        """
        min_age = self.qcfg.orphan_min_age
        try:
            known = self.store.all_ids()
        except QueueStorageError as exc:
            log.warning("orphan sweep skipped: %s", exc)
            return 0
        removed = 0
        for qid in scan_content_ids(self.queue_dir):
            if qid in known or qid in self.messages:
                continue
            path = content_path(self.queue_dir, qid)
            try:
                if now - path.stat().st_mtime < min_age or content_in_use(path):
                    continue
                if remove_content(self.queue_dir, qid):
                    removed += 1
                    log.info("%s: removed orphaned content file (no envelope)", qid)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("%s: cannot remove orphaned content file: %s", qid, exc)
        if removed:
            log.info("removed %d orphaned content files", removed)
        return removed

    # -- the main loop ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the committer, the scheduler loop and the housekeeping until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._orphan_loop)
            nursery.start_soon(self._removal_loop)
            nursery.start_soon(self._store_repair_loop)
            task_status.started()
            await self._loop()

    def stop_dispatching(self) -> None:
        """Shutdown: start no new deliveries (those running may still report)."""
        self._stopping = True

    async def idle(self) -> None:
        """Wait until no delivery is running."""
        while self.scheduler.active:
            self._idle = trio.Event()
            await self._idle.wait()

    def wake(self) -> None:
        """Make the loop look at the timers and the scheduler now."""
        self._wake.set()

    def _spawn(self, work: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start one piece of the loop's work in the manager's nursery, counted for quiet()."""
        assert self._nursery is not None
        self._working += 1

        async def counted() -> None:
            try:
                await work(*args)
            finally:
                self._working -= 1
                self._progress.set()

        self._nursery.start_soon(counted)

    def quiet(self) -> bool:
        """Whether nothing is due or in progress: no timer due now that the loop has not run, no
        routing, delivery, deferral or finishing running, no job waiting to start (test mode's
        clock steps from one quiet state to the next). While the store cannot be written, due
        timers wait (they would start nothing) and do not count."""
        if self._working or self.scheduler.active or self.scheduler.waiting():
            return False
        return not (self.store_error is None and self._timers and self._timers[0][0] <= clock.now())

    def next_timer(self) -> float | None:
        """When the loop next looks at a message (the virtual clock's time), or None."""
        return self._timers[0][0] if self._timers else None

    async def settle(self) -> None:
        """Wait until :meth:`quiet` (the caller bounds the wait with a cancel scope)."""
        while not self.quiet():
            self._progress = trio.Event()
            # Woken by the end of any counted work or a loop pass; the short timeout covers the
            # states that end without either (a commit from smtps adding a message).
            with trio.move_on_after(0.05):
                await self._progress.wait()

    def _schedule(self, qid: str, when: float) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, qid))

    async def _loop(self) -> None:
        while True:
            now = clock.now()
            # While the store cannot be written, nothing is started: a delivery's result could
            # not be recorded either (the timers stay; they fire once the store is back).
            while self.store_error is None and self._timers and self._timers[0][0] <= now:
                _when, _seq, qid = heapq.heappop(self._timers)
                self._make_due(qid, now)
            if self.store_error is None:
                self._dispatch(now)
            delay = self._timers[0][0] - now if self._timers and self.store_error is None else 3600.0
            self._progress.set()  # the due timers have been looked at (settle())
            with trio.move_on_after(max(0.0, min(delay, 3600.0))):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _removal_loop(self) -> None:
        """Remove the content files of finished messages that no commit carried away.

        A message's content may go only once the deletion of its envelope is durable: the
        deletions are committed without an fsync (GroupCommitter, durable=False), so a system crash
        could otherwise bring back a message without its content. Every durable commit makes them
        durable, and the committer removes their content in the same trip (:meth:`_removal_trip`).
        What is still waiting after ``_REMOVAL_WAIT_S`` (no mail coming in) is removed here, after
        an fsync of the store's WAL. A crash before a removal leaves an orphan, which the sweep
        removes. A removal that fails (the WAL cannot be fsync'd, an I/O error) is tried again
        later, never skipped.
        """
        while True:
            await self._removals_wake.wait()
            self._removals_wake = trio.Event()
            await trio.sleep(_REMOVAL_WAIT_S)
            trip = self._removal_trip()
            if trip is None:
                continue  # a commit carried them

            def sync_and_remove(store: EnvelopeStore, trip: _RemovalTrip = trip) -> None:
                store.sync()  # the deletions were committed without an fsync
                trip.run()

            ran = False
            try:
                await self.committer.read(sync_and_remove)
                ran = True
            except OSError as exc:
                log.error("cannot sync the envelope store before removing content: %s; will retry", exc)
            trip.finished(ran)
            if self._removals:
                await trio.sleep(_REMOVAL_RETRY_S)
                self._removals_wake.set()

    def _removal_trip(self) -> _RemovalTrip | None:
        """The committer's ``after_durable``: every content removal waiting so far."""
        if not self._removals:
            return None
        trip = _RemovalTrip(self, self._removals)
        self._removals = []
        return trip

    async def _orphan_loop(self) -> None:
        while True:
            await trio.sleep(self.qcfg.orphan_sweep_interval)
            await trio.to_thread.run_sync(self._remove_orphans, time.time())

    # -- store faults ----------------------------------------------------------------------------

    def _store_failed(self, exc: QueueStorageError, what: str) -> None:
        """A write to the envelope store failed: remember it, pause, and start trying again.

        Until a write succeeds again (:meth:`_store_repair_loop`), no delivery starts and what
        could not be written stays in memory. The first failure of an outage is an error in the
        log; the others of the same outage are only debug lines.
        """
        if self.store_error is None:
            self.store_outages += 1
            log.error(
                "envelope store cannot be written (%s: %s): new mail is refused with 4xx and "
                "deliveries pause until it can; trying again in %gs",
                what,
                exc,
                _STORE_RETRY_MIN_S,
            )
            self._store_trouble.set()
        else:
            log.debug("envelope store still cannot be written (%s: %s)", what, exc)
        self.store_error = exc

    def _store_ok(self) -> None:
        if self.store_error is not None:
            log.info("envelope store can be written again: resuming")
            self.store_error = None
            self.wake()

    def _keep_unsaved(self, qid: str, idxs: Iterable[int]) -> None:
        self._unsaved.setdefault(qid, set()).update(idxs)

    def _current_updates(self, msg: _Msg, idxs: Iterable[int]) -> list[RecipientUpdate]:
        """Recipient updates that write the in-memory state of ``idxs`` (memory is the truth)."""
        out = []
        for idx in idxs:
            r = msg.rcpts.get(idx)
            if r is not None:
                out.append(
                    RecipientUpdate(
                        idx, r.status, r.attempts, r.next_attempt, r.last_reply, r.destination, r.last_attempt
                    )
                )
        return out

    async def _write_updates(self, msg: _Msg, updates: tuple[RecipientUpdate, ...], what: str) -> bool:
        """Record recipient updates (no fsync of their own); keep them in memory if that fails.

        The caller updates ``msg.rcpts`` with the same values whatever happens: memory is the
        truth, and the store catches up. Recipients of the message still unsaved go along.

        Returns:
            True when written, False when left to :meth:`_store_repair_loop`.
        """
        qid = msg.env.qid
        waiting = self._unsaved.pop(qid, set()) - {u.idx for u in updates}
        if waiting:
            updates = (*updates, *self._current_updates(msg, sorted(waiting)))
        try:
            await self.committer.update_recipients(qid, updates, durable=False)
        except QueueStorageError as exc:
            self._store_failed(exc, f"{qid}: {what}")
            self._keep_unsaved(qid, (u.idx for u in updates))
            return False
        except UnknownMessageError:
            return True  # deleted meanwhile (by an operator): nothing left to record
        self._store_ok()
        return True

    async def _flush_unsaved(self) -> None:
        """Write what the store refused before; raise QueueStorageError if it still refuses."""
        if not self._unsaved:
            await self.committer.probe()
            return
        for qid in list(self._unsaved):
            idxs = self._unsaved.pop(qid, None)
            msg = self.messages.get(qid)
            if not idxs or msg is None or msg.deleted:
                continue
            # Built from memory now, not from what failed earlier: a newer result always wins.
            updates = tuple(self._current_updates(msg, sorted(idxs)))
            try:
                await self.committer.update_recipients(qid, updates, durable=False)
            except QueueStorageError:
                self._keep_unsaved(qid, idxs)
                raise
            except UnknownMessageError:
                continue

    async def _store_repair_loop(self) -> None:
        """While the store cannot be written, try again with backoff; resume once it can."""
        while True:
            await self._store_trouble.wait()
            self._store_trouble = trio.Event()
            delay = _STORE_RETRY_MIN_S
            started = time.monotonic()
            while self.store_error is not None or self._unsaved:
                await trio.sleep(delay)
                try:
                    await self._flush_unsaved()
                except QueueStorageError as exc:
                    self._store_failed(exc, "retry")
                    delay = min(delay * 2, _STORE_RETRY_MAX_S)
                    continue
                if self.store_error is not None:
                    log.info(
                        "envelope store writable again after %.1fs: resuming", time.monotonic() - started
                    )
                    self.store_error = None
                self.wake()

    def _make_due(self, qid: str, now: float) -> None:
        msg = self.messages.get(qid)
        if msg is None or msg.deleted or msg.env.hold:
            return
        if not msg.pending() and not msg.busy and not msg.finishing:
            # Every recipient is final but the message is still here (recovered after a crash,
            # or its bounce could not be written last time): queue the bounce and remove it.
            msg.finishing = True
            assert self._nursery is not None
            self.events_run += 1
            self._spawn(self._finish, msg, ())
            return
        due = [r for r in msg.pending() if r.idx not in msg.busy and r.next_attempt <= now + 0.001]
        later = [r.next_attempt for r in msg.pending() if r.idx not in msg.busy and r.next_attempt > now]
        if later:
            self._schedule(qid, min(later))
        if not due:
            return
        msg.busy.update(r.idx for r in due)
        assert self._nursery is not None
        self.events_run += 1
        self._spawn(self._route, msg, [r.idx for r in due])

    # -- routing -----------------------------------------------------------------------------

    async def _routes_for(self, addresses: tuple[str, ...]) -> tuple[SmarRouteValue, ...]:
        """smar's routes for ``addresses``, from the short-lived route cache where possible.

        Routes that worked are kept ``_ROUTE_CACHE_S`` seconds: a busy relay sends many messages to
        the same recipients and domains, and smar's answer (already cached there for the DNS TTL)
        would only cost an RPC round trip. Failures are never cached.

        Raises:
            RpcError: smar did not answer, or answered nonsense.
        """
        now = time.monotonic()
        cache = self._route_cache
        found: dict[str, SmarRouteValue] = {}
        for address in addresses:
            entry = cache.get(address)
            if entry is not None and entry[0] > now:
                found[address] = entry[1]
        missing = tuple(a for a in dict.fromkeys(addresses) if a not in found)
        if missing:
            async with self._route_limiter:
                answer = await self.smar.call(SmarRouteRequest(addresses=missing), timeout=_ROUTE_TIMEOUT_S)
            routes = answer.routes
            if len(routes) != len(missing):
                raise RpcError(f"smar answered {len(routes)} routes for {len(missing)} addresses")
            if len(cache) >= _ROUTE_CACHE_MAX:
                cache.clear()
            for address, route in zip(missing, routes, strict=True):
                found[address] = route
                if route.status == "ok":
                    cache[address] = (now + _ROUTE_CACHE_S, route)
        return tuple(found[a] for a in addresses)

    async def _route(self, msg: _Msg, idxs: list[int]) -> None:
        qid = msg.env.qid
        addresses = tuple(msg.rcpts[i].address for i in idxs)
        try:
            routes = await self._routes_for(addresses)
        except RpcError as exc:
            log.warning("%s: routing failed: %s", qid, exc)
            reply = SmtpReplyValue(
                code=451, enhanced=TEMP_MAIL_SYSTEM_ERROR, text=f"address resolver unavailable: {exc}"
            )
            await self._record(msg, [(i, "temp", reply, None, None) for i in idxs], session_failed=False)
            return
        now = clock.now()
        groups: dict[_RouteKey, list[int]] = {}
        failures: list[tuple[int, str, SmtpReplyValue, str | None, str | None]] = []
        route_of: dict[_RouteKey, SmarRouteValue] = {}
        for idx, route in zip(idxs, routes, strict=True):
            if route.status != "ok":
                reply = route.reply or SmtpReplyValue(
                    code=451, enhanced=TEMP_ROUTING_SERVER_FAILURE, text="routing failed"
                )
                failures.append((idx, route.status, reply, None, route.destination or None))
                continue
            key: _RouteKey = (route.destination, route.transport, route.path, route.hosts)
            groups.setdefault(key, []).append(idx)
            route_of[key] = route
        if failures:
            await self._record(msg, failures, session_failed=False)
        for key, members in groups.items():
            route = route_of[key]
            if self.scheduler.is_down(route.destination, now):
                await self._defer_down(msg, members, route.destination)
                continue
            self.scheduler.add(
                Job(qid=qid, destination=route.destination, recipients=tuple(members), route=route)
            )
        self.wake()

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        if self._stopping or self._agent_down:
            return
        if not self.smtpc.connected:
            # Not even connected (qmgr just started, or the socket is gone): a call would only
            # wait for the connection inside its delivery deadline; wait here instead.
            self._pause_for_agent(None)
            return
        start, deferred = self.scheduler.take_ready(now)
        assert self._nursery is not None
        for job in start:
            self._spawn(self._deliver, job)
        for job in deferred:
            msg = self.messages.get(job.qid)
            if msg is not None:
                self._spawn(self._defer_down, msg, list(job.recipients), job.destination)

    async def _defer_down(self, msg: _Msg, idxs: list[int], destination: str) -> None:
        """Defer recipients whose destination is marked dead, until it may be tried again."""
        until = self.scheduler.down_until(destination)
        reason = self._dest_reason.get(destination, "destination temporarily unavailable")
        reply = SmtpReplyValue(
            code=451, enhanced=TEMP_NO_ANSWER_FROM_HOST, text=f"delivery temporarily suspended: {reason}"
        )
        if self._expired(msg.env, clock.now()):
            # Mail waiting for a dead destination must expire too, not only the probe's.
            results = [(i, "temp", reply, None, destination) for i in idxs]
            await self._record(msg, results, session_failed=True)
            return
        updates = []
        now = clock.now()
        for idx in idxs:
            r = msg.rcpts[idx]
            # Spread out after the probe time, but never past retry_max from now.
            when = max(until, now) + self.rng.uniform(0, max(1.0, self.qcfg.retry_min * 0.2))
            updates.append((idx, r.attempts, min(when, now + self.qcfg.retry_max)))
        await self._apply_deferrals(msg, updates, reply, destination)

    async def _apply_deferrals(
        self,
        msg: _Msg,
        updates: list[tuple[int, int, float]],
        reply: SmtpReplyValue,
        destination: str | None,
        remote: str = "",
        timing: dict[str, str] | None = None,
    ) -> None:
        """Write the recipients' next attempts and log them; ``remote`` is the host that answered
        (empty when none did: the log line then says ``relay=none``, as Postfix's does)."""
        text = _reply_text(reply)
        ups = tuple(
            RecipientUpdate(idx, "deferred", attempts, when, text, destination)
            for idx, attempts, when in updates
        )
        if not msg.deleted:
            # If the store refuses it, the retry time is kept in memory (safe: a crash before it
            # is written only makes the recipient due earlier) and written later.
            await self._write_updates(msg, ups, "deferral")
        for idx, attempts, when in updates:
            msg.rcpts[idx] = replace(
                msg.rcpts[idx],
                status="deferred",
                attempts=attempts,
                next_attempt=when,
                last_reply=text,
                destination=destination,
            )
            msg.busy.discard(idx)
            mlog.maillog(
                "deferred",
                msg.env.qid,
                to=msg.rcpts[idx].address,
                relay=remote or destination or "",
                status="deferred",
                reason=text,
                delay=f"{clock.now() - msg.env.arrival_time:.2f}",
                **(timing or {}),
                dsn=_enhanced_of(text, TEMP_UNDEFINED),
                transport=_transport_of(destination),
            )
            self.counters.inc(QMGR_DEFERRED)
        if destination:
            self._deferred_by_dest.setdefault(destination, set()).add(msg.env.qid)
        if updates:
            self._schedule(msg.env.qid, min(w for _i, _a, w in updates))
            await self._warn_delay(msg)

    async def _warn_delay(self, msg: _Msg) -> None:
        """Send one delay warning (a DSN with Action: delayed) per recipient, when configured.

        ``qmgr { delay_warning_time }`` (0, the default, turns this off, as in Postfix): once a
        message has waited that long, its deferred recipients whose NOTIFY does not exclude DELAY
        are reported to the sender, once each (the ``dsn_sent`` flag, committed together with the
        warning itself so that a crash can neither lose it nor send it twice).
        """
        limit = self.qcfg.delay_warning_time
        env = msg.env
        if limit <= 0 or env.kind != "normal" or env.sender == "" or msg.deleted:
            return
        if clock.now() - env.arrival_time < limit:
            return
        due = [
            r
            for r in msg.rcpts.values()
            if r.status == "deferred" and not r.dsn_sent and (r.notify is None or "DELAY" in r.notify)
        ]
        if not due:
            return
        dsn = [
            DsnRecipient(
                r.address,
                "delayed",
                _enhanced_of(r.last_reply, TEMP_UNDEFINED),
                orcpt=r.orcpt,
                remote_mta=msg.remote_mta.get(r.idx),
                diagnostic=r.last_reply,
                last_attempt=r.last_attempt,
            )
            for r in due
        ]
        try:
            writer, warning = await self._write_bounce(env, dsn, kind="delay_warning")
        except (QueueStorageError, OSError) as exc:
            log.error("%s: cannot write delay warning: %s", env.qid, exc)
            return
        marks = tuple(
            RecipientUpdate(
                r.idx, r.status, r.attempts, r.next_attempt, r.last_reply, r.destination, dsn_sent=True
            )
            for r in due
        )
        try:
            await self.committer.apply_atomic([InsertEnvelope(warning), UpdateRecipients(env.qid, marks)])
        except (QueueStorageError, ValueError) as exc:
            log.error("%s: cannot queue delay warning: %s", env.qid, exc)
            writer.abort()
            return
        for r in due:
            msg.rcpts[r.idx] = replace(r, dsn_sent=True)
        self._add(warning)
        mlog.maillog(
            "queued", warning.qid, sender="", nrcpt=1, size=warning.size, origin=env.qid, kind="delay_warning"
        )

    # -- delivery ------------------------------------------------------------------------------

    async def _deliver(self, job: Job) -> None:
        msg = self.messages.get(job.qid)
        route: SmarRouteValue = job.route
        if msg is None or msg.deleted:
            self.scheduler.abandon(job)
            if not self.scheduler.active:
                self._idle.set()
            self.wake()
            return
        env = msg.env
        request = SmtpcDeliveryRequest(
            **envelope_params(env),
            qid=env.qid,
            recipients=tuple(
                SmtpcRecipientValue(
                    idx=i,
                    address=msg.rcpts[i].address,
                    orcpt=msg.rcpts[i].orcpt,
                    notify=_notify_tuple(msg.rcpts[i].notify),
                )
                for i in job.recipients
            ),
            route=route,
        )
        session_failed = False
        verdict = True  # the outcome says something about the destination
        started = clock.now()
        try:
            answer = await self.smtpc.call(request, timeout=self._delivery_timeout_s)
            results = [(r.idx, r.status, r.reply, r.remote_mta, route.destination) for r in answer.results]
            session_failed = answer.session_failed
            known = {r.idx for r in answer.results}
            missing = [i for i in job.recipients if i not in known]
            reply = SmtpReplyValue(
                code=451, enhanced=TEMP_MAIL_SYSTEM_ERROR, text="no result from delivery agent"
            )
            results += [(i, "temp", reply, None, route.destination) for i in missing]
            self._agent_backoff_s = _AGENT_BACKOFF_MIN_S  # smtpc works: the next outage starts afresh
        except RpcPeerGoneError as exc:
            # The connection to smtpc broke before it answered: smtpc crashed, was killed or is
            # being restarted. That is no news about the destination, so the job goes back as it
            # was, unless this job keeps losing the agent (then it is suspected of killing it).
            job.agent_losses += 1
            if job.agent_losses < _AGENT_LOSSES_MAX:
                self._agent_lost(job, msg, exc)
                return
            log.warning(
                "%s: delivery agent lost %d times while delivering to %s; deferring it",
                env.qid,
                job.agent_losses,
                route.destination,
            )
            self._pause_for_agent(exc)
            self._maybe_sent.setdefault(env.qid, set()).update(job.recipients)
            verdict = False
            text = f"delivery agent unavailable: {exc} (lost {job.agent_losses} times on this message)"
            reply = SmtpReplyValue(code=451, enhanced=TEMP_MAIL_SYSTEM_ERROR, text=text)
            results = [(i, "temp", reply, None, route.destination) for i in job.recipients]
        except RpcError as exc:
            # smtpc is there but did not answer in time, or refused the request: an attempt.
            log.warning("%s: delivery agent failed: %s", env.qid, exc)
            reply = SmtpReplyValue(
                code=451, enhanced=TEMP_MAIL_SYSTEM_ERROR, text=f"delivery agent unavailable: {exc}"
            )
            results = [(i, "temp", reply, None, route.destination) for i in job.recipients]
        delivered_any = any(status == "ok" for _i, status, _r, _m, _d in results)
        if session_failed and results:
            self._dest_reason[route.destination] = _reply_text(results[0][2])
        revived = False
        if verdict:
            revived = self.scheduler.finish(
                job, delivered_any=delivered_any, session_failed=session_failed, now=clock.now()
            )
        else:
            self.scheduler.abandon(job)
        try:
            await self._record(msg, results, session_failed=session_failed, started=started)
        finally:
            if revived:
                self._release(route.destination)
            if not self.scheduler.active:
                self._idle.set()
            self.wake()

    def _agent_lost(self, job: Job, msg: _Msg, exc: RpcError) -> None:
        """smtpc went away while delivering ``job``: give it back untouched, wait for smtpc.

        No attempt is counted and no retry time set: the recipients stay busy in the scheduler
        and are delivered as soon as dispatching resumes. The maillog says ``requeued`` (not
        ``deferred``, which would blame the destination).
        """
        self.scheduler.requeue(job)
        reason = f"delivery agent unavailable: {exc}"[:_MAX_REPLY_CHARS]
        # smtpc may have died after the destination accepted the message: the next delivery of
        # these recipients may be a second copy. Both lines say so (dup=possible).
        self._maybe_sent.setdefault(msg.env.qid, set()).update(job.recipients)
        for idx in job.recipients:
            mlog.maillog(
                "requeued",
                msg.env.qid,
                to=msg.rcpts[idx].address,
                relay=job.destination,
                status="requeued",
                reason=reason,
                dup="possible",
            )
        self._pause_for_agent(exc)
        if not self.scheduler.active:
            self._idle.set()
        self.wake()

    def _pause_for_agent(self, lost: RpcError | None) -> None:
        """Start no delivery until smtpc is reachable again (``lost``: why it went away, if it did)."""
        if lost is not None and not self._agent_gone:
            # Once per outage, even if the loop noticed the lost connection before a delivery did.
            self._agent_gone = True
            self.agent_outages += 1
            log.warning("delivery agent unavailable (%s): deliveries wait until smtpc is back", lost)
        if self._agent_down:
            return
        self._agent_down = True
        assert self._nursery is not None
        self._nursery.start_soon(self._wait_for_agent)

    async def _wait_for_agent(self) -> None:
        """Resume dispatching once qmgr is connected to smtpc again.

        The connection is made by the RPC client, which reconnects by itself; this only looks
        at it after a short delay that doubles up to a cap, so that a missing smtpc costs
        nothing but a check now and then. Because mcp keeps smtpc's listening socket open
        across restarts, qmgr is connected again within milliseconds of a crash, and the jobs
        sent then wait in the socket's backlog until the new smtpc accepts them: they are
        delivered as soon as it is ready, without polling it. If smtpc goes away again before
        answering any delivery (a crash loop), the next pause starts with a longer delay.
        """
        started = time.monotonic()
        delay = self._agent_backoff_s
        while True:
            await trio.sleep(delay)
            if self.smtpc.connected:
                break
            delay = min(delay * 2, _AGENT_BACKOFF_MAX_S)
        self._agent_down = False
        if self._agent_gone:
            self._agent_gone = False
            self._agent_backoff_s = min(self._agent_backoff_s * 2, _AGENT_BACKOFF_MAX_S)
            log.info(
                "delivery agent reachable after %.2fs: resuming deliveries (%d waiting)",
                time.monotonic() - started,
                self.scheduler.waiting(),
            )
        self.wake()

    def _release(self, destination: str) -> None:
        """A dead destination works again: retry what was deferred because of it, now."""
        now = clock.now()
        for qid in self._deferred_by_dest.pop(destination, set()):
            msg = self.messages.get(qid)
            if msg is None:
                continue
            for idx, r in list(msg.rcpts.items()):
                if r.status == "deferred" and r.destination == destination and idx not in msg.busy:
                    msg.rcpts[idx] = replace(r, next_attempt=now)
            self._schedule(qid, now)
        log.info("destination %s is back: released its deferred mail", destination)

    def _expired(self, env: Envelope, now: float) -> bool:
        lifetime = self.qcfg.bounce_lifetime if env.kind != "normal" else self.qcfg.queue_lifetime
        return now - env.arrival_time >= lifetime

    async def _record(
        self,
        msg: _Msg,
        results: Iterable[tuple[int, str, SmtpReplyValue, str | None, str | None]],
        *,
        session_failed: bool,
        started: float | None = None,
    ) -> None:
        """Write delivery results, defer or expire temporary failures, finish the message if done.

        ``started``: when the delivery attempt that gave these results began (None: no attempt
        was made, the results are qmgr's own); the log lines then carry ``delays=``."""
        now = clock.now()
        env = msg.env
        expired = self._expired(env, now)
        timing = {} if started is None else {"delays": _delays(env.arrival_time, started, now)}
        finals: list[RecipientUpdate] = []
        deferrals: list[tuple[int, int, float]] = []
        defer_reply: SmtpReplyValue | None = None
        defer_dest: str | None = None
        defer_remote = ""
        results = list(results)
        if msg.deleted:
            # Deleted by the operator while the delivery ran: nothing left to record.
            for idx, *_rest in results:
                msg.busy.discard(idx)
            return
        counters = self.counters
        for idx, status, reply, remote, dest in results:
            r = msg.rcpts[idx]
            text = _reply_text(reply)
            if status != "ok":
                limit = self.config.metrics.destinations
                where = counters.bounded(QMGR_DELIVERY_FAILURES, dest or "none", limit)
                counters.inc(QMGR_DELIVERY_FAILURES, where)
            if remote:
                msg.remote_mta[idx] = remote
            attempts = r.attempts + 1
            maybe_sent = self._maybe_sent.get(env.qid)
            dup: dict[str, str] = {}
            if maybe_sent is not None and idx in maybe_sent and status != "temp":
                maybe_sent.discard(idx)
                if status == "ok":
                    dup = {"dup": "possible"}
            if status == "ok":
                finals.append(RecipientUpdate(idx, "delivered", attempts, 0.0, text, dest, now))
                mlog.maillog(
                    "delivered",
                    env.qid,
                    to=r.address,
                    relay=remote or dest or "",
                    status="sent",
                    delay=f"{now - env.arrival_time:.2f}",
                    **timing,
                    reply=text,
                    dsn=_enhanced_of(text, SUCCESS),
                    transport=_transport_of(dest),
                    **dup,
                )
                counters.inc(QMGR_DELIVERED)
                counters.observe(QMGR_DELIVERY_DELAY, max(0.0, now - env.arrival_time))
            elif status == "perm" or expired:
                final_status: RecipientStatus = "bounced" if status == "perm" else "expired"
                if status != "perm":
                    text = f"{text} (message expired after {now - env.arrival_time:.0f}s in the queue)"
                finals.append(RecipientUpdate(idx, final_status, attempts, 0.0, text, dest, now))
                mlog.maillog(
                    "bounced",
                    env.qid,
                    to=r.address,
                    relay=remote or dest or "",
                    status=final_status,
                    reply=text,
                    delay=f"{now - env.arrival_time:.2f}",
                    **timing,
                    dsn=_enhanced_of(text, PERM_UNDEFINED),
                    transport=_transport_of(dest),
                )
                counters.inc(QMGR_BOUNCED, final_status)
            else:
                deferrals.append((idx, attempts, now + self.scheduler.retry_delay(attempts)))
                defer_reply, defer_dest, defer_remote = reply, dest, remote or ""
        if deferrals and defer_reply is not None:
            await self._apply_deferrals(msg, deferrals, defer_reply, defer_dest, defer_remote, timing)
        if not finals:
            return
        for u in finals:
            msg.rcpts[u.idx] = replace(
                msg.rcpts[u.idx],
                status=u.status,
                attempts=u.attempts,
                last_reply=u.last_reply,
                destination=u.destination,
                last_attempt=now,
            )
            msg.busy.discard(u.idx)
        if all(r.is_final for r in msg.rcpts.values()) and not msg.busy and not msg.finishing:
            msg.finishing = True
            await self._finish(msg, tuple(finals))
        elif not msg.deleted:
            # Kept in memory if the store refuses it; the message is not finished before it is
            # written (a crash meanwhile means these recipients are tried again: a duplicate).
            await self._write_updates(msg, tuple(finals), "delivery results")

    # -- the end of a message ----------------------------------------------------------------------

    def _dsn_recipients(self, msg: _Msg) -> list[DsnRecipient]:
        out = []
        for r in sorted(msg.rcpts.values(), key=lambda r: r.idx):
            notify = r.notify
            if r.status in ("bounced", "expired"):
                if notify is not None and "FAILURE" not in notify:
                    continue
                status = PERM_UNDEFINED
                text = r.last_reply or ""
                parts = text.split()
                if len(parts) > 1 and parts[1][:1] in "45" and parts[1].count(".") == 2:
                    status = "5" + parts[1][1:]
                if r.status == "expired":
                    status = TEMP_DELIVERY_TIME_EXPIRED
                out.append(
                    DsnRecipient(
                        r.address,
                        "failed",
                        status,
                        orcpt=r.orcpt,
                        remote_mta=msg.remote_mta.get(r.idx),
                        diagnostic=text,
                        last_attempt=r.last_attempt,
                    )
                )
            elif r.status == "delivered" and notify is not None and "SUCCESS" in notify:
                out.append(
                    DsnRecipient(
                        r.address,
                        "delivered",
                        SUCCESS,
                        orcpt=r.orcpt,
                        remote_mta=msg.remote_mta.get(r.idx),
                        diagnostic=r.last_reply,
                        last_attempt=r.last_attempt,
                    )
                )
        return out

    async def _finish(self, msg: _Msg, finals: tuple[RecipientUpdate, ...]) -> None:
        """Every recipient is final: queue the DSN (if any) and delete the message, atomically."""
        env = msg.env
        ops: list[StoreOp] = [UpdateRecipients(env.qid, finals)] if finals else []
        dsn = self._dsn_recipients(msg)
        bounce_writer: ContentWriter | None = None
        if dsn and env.kind == "double_bounce":
            log.error("%s: double bounce could not be delivered; dropping it", env.qid)
        elif dsn and env.sender == "" and env.kind == "normal":
            log.info("%s: no bounce for mail from <>", env.qid)
        elif dsn:
            try:
                bounce_writer, bounce_env = await self._write_bounce(env, dsn)
                ops.append(InsertEnvelope(bounce_env))
            except (QueueStorageError, OSError) as exc:
                # Keep the message with its final states (durably, so a restart finishes it
                # too) and try the bounce again later; never redeliver what was delivered.
                log.error("%s: cannot write bounce: %s; will retry", env.qid, exc)
                if finals:
                    await self._write_updates(msg, finals, "final results")
                msg.finishing = False
                retry_s = min(self.qcfg.retry_max, max(60.0, self.qcfg.retry_min))
                self._schedule(env.qid, clock.now() + retry_s)
                return
        ops.append(DeleteMessage(env.qid))
        try:
            # Not durable by itself: the removal loop syncs the store before it removes content.
            await self.committer.apply_atomic(ops, durable=False)
        except QueueStorageError as exc:
            # Nothing is finished that could not be recorded: the message stays (its results in
            # memory, written when the store is back) and is finished again later.
            self._store_failed(exc, f"{env.qid}: finishing the message")
            if bounce_writer is not None:
                bounce_writer.abort()
            if finals:
                self._keep_unsaved(env.qid, (u.idx for u in finals))
            msg.finishing = False
            self._schedule(env.qid, clock.now() + _STORE_RETRY_MIN_S)
            return
        self._store_ok()
        self._unsaved.pop(env.qid, None)
        self._maybe_sent.pop(env.qid, None)
        msg.deleted = True
        self.messages.pop(env.qid, None)
        if bounce_writer is not None:
            benv = next(op.envelope for op in ops if isinstance(op, InsertEnvelope))
            self._add(benv)
            mlog.maillog(
                "queued",
                benv.qid,
                sender="",
                nrcpt=len(benv.recipients),
                size=benv.size,
                origin=env.qid,
                kind=benv.kind,
            )
        self._removals.append(env.qid)
        self._removals_wake.set()
        mlog.maillog("removed", env.qid)

    async def _write_bounce(
        self, env: Envelope, dsn: list[DsnRecipient], kind: MessageKind | None = None
    ) -> tuple[ContentWriter, Envelope]:
        hostname = self.config.hostname
        if kind == "delay_warning":
            to = env.sender
        elif env.kind == "normal":
            to, kind = env.sender, "bounce"
        else:
            postmaster_domain = self.config.local_domains[0] if self.config.local_domains else hostname
            to, kind = f"postmaster@{postmaster_domain}", "double_bounce"

        def build() -> tuple[ContentWriter, int]:
            try:
                original = open_content(self.queue_dir, env.qid)
            except FileNotFoundError:
                original = None
            try:
                data = build_dsn(
                    reporting_mta=hostname,
                    postmaster=f"MAILER-DAEMON@{hostname}",
                    to=to,
                    qid=env.qid,
                    arrival_time=env.arrival_time,
                    now=clock.now(),
                    envid=env.envid,
                    ret=env.ret,
                    recipients=dsn,
                    original=original,
                )
            finally:
                if original is not None:
                    original.close()
            writer = ContentWriter(self.queue_dir)
            try:
                writer.write(data)
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            return writer, len(data)

        writer, size = await trio.to_thread.run_sync(build)
        await self.syncer.sync(writer.path.parent)
        benv = Envelope(
            qid=writer.qid,
            sender="",
            arrival_time=clock.now(),
            size=size,
            body="8BITMIME",
            kind=kind,
            recipients=(Recipient(idx=0, address=to),),
        )
        return writer, benv

    async def bounce_new(self, qid: str, reply: SmtpReplyValue) -> None:
        """Bounce every recipient of the message ``qid`` with ``reply`` before any is routed.

        For pickup's hop limit (:mod:`meta1py.qmgr.pickup`): called right after the commit's
        answer, with no checkpoint between, so the recipients are still waiting for their first
        routing; any that are not (a race that cannot happen there) are left as they are.
        """
        msg = self.messages.get(qid)
        if msg is None:
            return
        idxs = [r.idx for r in msg.pending() if r.idx not in msg.busy]
        msg.busy.update(idxs)
        await self._record(msg, [(i, "perm", reply, None, None) for i in idxs], session_failed=False)

    def _add(self, env: Envelope) -> None:
        self.messages[env.qid] = _Msg(env, {r.idx: r for r in env.recipients})
        self._schedule(env.qid, clock.now())
        self.wake()

    # -- RPC handlers --------------------------------------------------------------------------

    def _handlers(self) -> Handlers:
        """qmgr.sock's handler (`handle`): commits from smtps, operator commands from the CLI."""
        handlers = Handlers()
        handlers.on(QueueEnvelopeCommitRequest).answer(self._commit)
        handlers.on(QueueControlRequest).answer(self._answer_control)
        handlers.on(QueueSelectRequest).answer(self._answer_select)
        return handlers

    async def _answer_select(self, req: QueueSelectRequest) -> QueueSelectReply:
        """The ids of one page of a selection (meta1 queue sends a large one in batches).

        One pass over the queue per page and no state kept between pages: a page of 20,000
        ids out of 100,000 messages costs a few tens of milliseconds.
        """
        limit = max(1, min(req.limit, QUEUE_SELECT_MAX_IDS))
        domain = req.to_domain.lower() if req.to_domain else None
        after = req.after
        matching = (
            qid
            for qid, msg in self.messages.items()
            if qid > after and _matches(msg, domain, req.all_deferred)
        )
        page = heapq.nsmallest(limit + 1, matching)
        return QueueSelectReply(qids=tuple(page[:limit]), more=len(page) > limit)

    async def _answer_control(self, req: QueueControlRequest) -> QueueControlReply:
        try:
            return await self._control(req)
        except QueueStorageError as exc:
            # The operator learns it (meta1 queue prints the error); qmgr goes on.
            self._store_failed(exc, f"operator command {req.action}")
            raise RpcRemoteError("tempfail", f"envelope store cannot be written: {exc}") from exc

    async def _commit(self, req: QueueEnvelopeCommitRequest) -> QueueEnvelopeCommitReply:
        if not is_queue_id(req.qid) or not req.recipients:
            return QueueEnvelopeCommitReply(
                ok=False, reply=SmtpReplyValue(code=554, enhanced=PERM_PROTOCOL_ERROR, text="bad envelope")
            )
        path = content_file(self.queue_dir, req.qid)
        now = clock.now()
        env = Envelope(
            **envelope_params(req),
            qid=req.qid,
            arrival_time=now,
            client_address=req.client_address,
            client_helo=req.client_helo,
            recipients=tuple(
                Recipient(
                    idx=i,
                    address=r.address,
                    orcpt=r.orcpt,
                    notify=frozenset(r.notify) if r.notify else None,
                    next_attempt=now,
                )
                for i, r in enumerate(req.recipients)
            ),
        )
        try:
            # The content file is fsync'd (with its directory) before the envelope commits: a
            # missing or unwritable file fails this message alone. Shielded: if smtps goes away
            # (killed, connection lost) while the batch runs, the message may be committed, and
            # it must then be scheduled (_add below), or it would sit in the store unseen until
            # qmgr restarts.
            with trio.CancelScope(shield=True):
                crash_point("before-commit")
                await self.committer.commit_new(env, prepare=str(path))
        except DuplicateMessageError:
            # smtps repeats a commit whose answer it lost (qmgr restarted or the call timed out).
            # Queue ids are claimed with O_EXCL by one content file, so this is the same message:
            # it is already durable.
            log.info("commit of %s repeated: already queued", req.qid)
            return QueueEnvelopeCommitReply(ok=True, reply=_ok_reply())
        except (QueueStorageError, ValueError) as exc:
            # The store (or this message's content file) cannot be written: this message is
            # refused with a 4xx (smtps passes the reply on), and so is every new message for
            # as long as that lasts, because each commit fails the same way. Nothing to keep.
            log.error("commit of %s failed: %s", req.qid, exc)
            full = isinstance(exc, QueueStorageError) and exc.disk_full
            return QueueEnvelopeCommitReply(
                ok=False,
                reply=SmtpReplyValue(
                    code=452 if full else 451,
                    enhanced=TEMP_MAIL_SYSTEM_FULL if full else TEMP_MAIL_SYSTEM_ERROR,
                    text="Insufficient system storage" if full else "Local error in processing",
                ),
            )
        crash_point("after-commit")
        self._store_ok()
        self.counters.inc(QMGR_RECEIVED)
        self._add(env)
        return QueueEnvelopeCommitReply(ok=True, reply=_ok_reply())

    def _select(self, req: QueueControlRequest) -> tuple[list[_Msg], list[str]]:
        missing: list[str] = []
        selected: list[_Msg] = []
        if req.qids:
            for qid in req.qids:
                msg = self.messages.get(qid)
                if msg is None:
                    missing.append(qid)
                else:
                    selected.append(msg)
        else:
            # A batch of a larger selection (``among``): the same test, on those ids alone; the
            # ids that left the queue or stopped matching since they were selected are skipped,
            # as a single request sent now would not have seen them either.
            candidates: Iterable[_Msg | None] = (
                (self.messages.get(qid) for qid in dict.fromkeys(req.among))
                if req.among
                else self.messages.values()
            )
            domain = req.to_domain.lower() if req.to_domain else None
            selected = [
                msg for msg in candidates if msg is not None and _matches(msg, domain, req.all_deferred)
            ]
        return selected, missing

    async def _control(self, req: QueueControlRequest) -> QueueControlReply:
        selected, missing = self._select(req)
        now = clock.now()
        count = 0
        if req.action == "requeue":
            # postsuper -r: held messages are released, every recipient is routed afresh (routes
            # are asked of smar at each attempt anyway) and tried now, dead destinations included.
            self.scheduler.revive()
            for msg in selected:
                if msg.env.hold:
                    await self.committer.set_hold(msg.env.qid, False)
                    msg.env = replace(msg.env, hold=False)
                for idx, r in list(msg.rcpts.items()):
                    if not r.is_final and idx not in msg.busy:
                        msg.rcpts[idx] = replace(r, next_attempt=now)
                self._schedule(msg.env.qid, now)
                mlog.maillog("requeued", msg.env.qid, reason="requeued by operator")
                count += 1
        elif req.action == "flush":
            self.scheduler.revive()
            for msg in selected:
                for idx, r in list(msg.rcpts.items()):
                    if not r.is_final and idx not in msg.busy:
                        msg.rcpts[idx] = replace(r, next_attempt=now)
                self._schedule(msg.env.qid, now)
                count += 1
        elif req.action in ("hold", "release"):
            hold = req.action == "hold"
            for msg in selected:
                await self.committer.set_hold(msg.env.qid, hold)
                msg.env = replace(msg.env, hold=hold)
                if not hold:
                    self._schedule(msg.env.qid, now)
                count += 1
        elif req.action == "delete":
            for msg in selected:
                await self.committer.delete(msg.env.qid)
                msg.deleted = True
                self.messages.pop(msg.env.qid, None)
                self._unsaved.pop(msg.env.qid, None)
                self._maybe_sent.pop(msg.env.qid, None)
                await trio.to_thread.run_sync(remove_content, self.queue_dir, msg.env.qid)
                mlog.maillog("removed", msg.env.qid, reason="deleted by operator")
                count += 1
        elif req.action == "bounce":
            reply = SmtpReplyValue(
                code=550, enhanced=PERM_UNDEFINED, text="message bounced by the administrator"
            )
            for msg in selected:
                idxs = [r.idx for r in msg.pending() if r.idx not in msg.busy]
                await self._record(msg, [(i, "perm", reply, None, None) for i in idxs], session_failed=False)
                count += 1
        self.wake()
        return QueueControlReply(count=count, missing=tuple(missing))
