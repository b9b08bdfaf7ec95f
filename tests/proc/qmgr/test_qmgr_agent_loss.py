"""qmgr when smtpc goes away in the middle of deliveries (issue 13).

The queue manager runs in-process with its real envelope store, a fake smar, and its real
``RpcClient`` to an in-process smtpc. As in production, the test holds smtpc's listening socket
(mcp's part) and runs smtpc "generations" on duplicates of it: killing one (cancelling it closes
its connections, which is what qmgr sees of a kill -9) and starting the next on the same socket
is an smtpc crash and restart. Retry times are one hour, so a recipient that waited for a retry
time would miss every deadline here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meta1py.conf import parse_config
from meta1py.qmgr.manager import QueueManager
from meta1py.queue.content import ContentWriter
from meta1py.queue.envelopes import Envelope, EnvelopeStore, envelope_store_path
from meta1py.rpc import RpcClient, serve_unix
from meta1py.rpc.messages import (
    DeliveryStatus,
    QueueEnvelopeCommitReply,
    QueueEnvelopeCommitRequest,
    QueueRecipientValue,
    SmarHostValue,
    SmarRouteReply,
    SmarRouteRequest,
    SmarRouteValue,
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpcRecipientResult,
    SmtpReplyValue,
)

HOUR_S = 3600.0
DESTINATION = "smtp:sink.test"
ROUTE = SmarRouteValue(
    status="ok",
    transport="smtp",
    destination=DESTINATION,
    hosts=(SmarHostValue(name="sink.test", address="127.0.0.1", port=25),),
    path=None,
    reply=None,
)

Answer = Callable[[SmtpcDeliveryRequest], Awaitable[SmtpcDeliveryReply]]


class FakeSmar:
    """Routes every address to one SMTP destination."""

    async def call(self, msg: Any, *, timeout: float | None = None) -> Any:
        assert isinstance(msg, SmarRouteRequest)
        return SmarRouteReply(routes=tuple(ROUTE for _ in msg.addresses))


def reply_all(
    request: SmtpcDeliveryRequest, status: DeliveryStatus, code: int, enhanced: str
) -> SmtpcDeliveryReply:
    reply = SmtpReplyValue(code=code, enhanced=enhanced, text="scripted")
    return SmtpcDeliveryReply(
        results=tuple(
            SmtpcRecipientResult(idx=r.idx, status=status, reply=reply, remote_mta="sink.test")
            for r in request.recipients
        ),
        session_failed=False,
    )


async def deliver_ok(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    return reply_all(request, "ok", 250, "2.0.0")


async def deliver_4xx(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    return reply_all(request, "temp", 451, "4.3.0")


@dataclass
class Generation:
    """One life of smtpc: serves the shared listening socket until killed."""

    answer: Answer
    requests: list[SmtpcDeliveryRequest] = field(default_factory=list)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def handle(self, msg: Any) -> Any:
        assert isinstance(msg, SmtpcDeliveryRequest)
        self.requests.append(msg)
        return await self.answer(msg)

    async def run(
        self, listener: trio.socket.SocketType, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                # A duplicate, as each smtpc gets its own descriptor of mcp's socket: closing it
                # when this generation dies leaves the socket listening.
                await nursery.start(serve_unix, trio.SocketListener(listener.dup()), self.handle)
                task_status.started()

    def kill(self) -> None:
        self.scope.cancel()


async def hang(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@dataclass
class Harness:
    manager: QueueManager
    smtpc: RpcClient
    nursery: trio.Nursery
    queue_dir: Path
    socket_path: Path
    listener: trio.socket.SocketType

    async def start_smtpc(self, answer: Answer) -> Generation:
        generation = Generation(answer)
        await self.nursery.start(generation.run, self.listener)
        return generation

    async def submit(self, count: int) -> list[str]:
        qids = []
        for i in range(count):
            writer = ContentWriter(self.queue_dir)
            data = f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()
            writer.write(data)
            writer.close_unsynced()
            request = QueueEnvelopeCommitRequest(
                qid=writer.qid,
                sender="a@example.org",
                recipients=(QueueRecipientValue(address=f"r{i}@sink.test", orcpt=None, notify=None),),
                size=len(data),
                envid=None,
                ret=None,
                body="8BITMIME",
                smtputf8=False,
                client_address="127.0.0.1",
                client_helo="client.test",
                arrival_time=time.time(),
            )
            answer = await self.manager.handle(request)
            assert isinstance(answer, QueueEnvelopeCommitReply) and answer.ok, answer
            qids.append(writer.qid)
        return qids

    async def stored(self, qid: str) -> Envelope | None:
        return await self.manager.committer.read(lambda store: store.get(qid))


async def until(condition: Callable[[], object], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


async def bind_listener(path: Path) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(128)
    return sock


@asynccontextmanager
async def running_qmgr(tmp_path: Path) -> AsyncIterator[Harness]:
    queue_dir = tmp_path / "q"
    queue_dir.mkdir()
    config = parse_config(f"queue_directory = {queue_dir}; qmgr {{ retry_min = 1h; retry_max = 1h; }}")
    socket_path = tmp_path / "smtpc.sock"
    listener = await bind_listener(socket_path)
    store = EnvelopeStore(envelope_store_path(queue_dir))
    smtpc = RpcClient(socket_path, name="qmgr->smtpc")
    manager = QueueManager(config, store, FakeSmar(), smtpc)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(smtpc.run)
            await nursery.start(manager.run)
            yield Harness(manager, smtpc, nursery, queue_dir, socket_path, listener)
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
        store.close()


@pytest.mark.deadline(60)
async def test_jobs_lost_with_smtpc_are_delivered_when_it_returns(
    tmp_path: Path, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path) as h:
        first = await h.start_smtpc(hang)
        qids = await h.submit(5)
        await until(lambda: len(first.requests) == 5, "all five deliveries to be in smtpc")

        first.kill()  # kill -9 in the middle of five deliveries
        await until(lambda: len(maillog("requeued")) == 5, "the five recipients to be requeued")
        # qmgr reconnects at once (the socket stays open, as mcp keeps it) and sends the jobs
        # again; they wait in the socket's backlog for the next smtpc. Then everything is quiet:
        # no task runs for a while, so qmgr is not spinning while smtpc is away.
        await until(lambda: h.smtpc.connections == 2, "qmgr to reconnect")
        await until(lambda: h.manager.scheduler.active == 5, "the jobs to be sent again")
        await trio.testing.wait_all_tasks_blocked(cushion=0.3)
        assert h.manager.agent_outages == 1
        assert h.manager.scheduler.waiting() == 0
        assert len(maillog("requeued")) == 5 and maillog("deferred") == []
        for qid in qids:
            env = await h.stored(qid)
            assert env is not None
            (rcpt,) = env.recipients
            # No attempt counted, no retry time: still the state it was queued with.
            assert (rcpt.status, rcpt.attempts) == ("queued", 0), rcpt
            assert rcpt.next_attempt <= time.time(), rcpt.next_attempt - time.time()
        line = maillog("requeued")[0]
        assert "status=requeued" in line and f"relay={DESTINATION}" in line
        assert "delivery agent unavailable: qmgr->smtpc:" in line, line

        returned = trio.current_time()
        second = await h.start_smtpc(deliver_ok)
        await until(lambda: not h.manager.messages, "every message to be delivered and removed", 10)
        assert trio.current_time() - returned < 5  # not an hour: no retry time was waited for
        # Each job was sent to the new smtpc exactly once: the requeue did not loop.
        assert sorted(r.qid for r in second.requests) == sorted(qids)
        assert len(maillog("delivered")) == 5 and maillog("deferred") == []
        assert h.smtpc.connections == 2


@pytest.mark.deadline(60)
async def test_no_delivery_starts_while_smtpc_is_unreachable(
    tmp_path: Path, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path) as h:
        first = await h.start_smtpc(hang)
        qids = await h.submit(3)
        await until(lambda: len(first.requests) == 3, "all three deliveries to be in smtpc")

        # smtpc's socket disappears with it (mcp gone too, say): qmgr cannot connect at all.
        h.listener.close()
        h.socket_path.unlink()
        first.kill()
        await until(lambda: len(maillog("requeued")) == 3, "the three recipients to be requeued")
        await until(lambda: h.manager.scheduler.waiting() == 3, "the jobs to be back in the scheduler")
        # Several rounds of qmgr's capped backoff pass: it keeps looking, starts nothing.
        await trio.sleep(3)  # a window to observe that nothing is started, not synchronisation
        assert not h.smtpc.connected
        assert h.manager.scheduler.active == 0 and h.manager.scheduler.waiting() == 3
        assert len(maillog("requeued")) == 3 and maillog("deferred") == []

        h.listener = await bind_listener(h.socket_path)
        returned = trio.current_time()
        second = await h.start_smtpc(deliver_ok)
        await until(lambda: not h.manager.messages, "every message to be delivered", 10)
        # At most a reconnect delay plus qmgr's look-again delay (both capped at 2 s).
        assert trio.current_time() - returned < 6
        assert sorted(r.qid for r in second.requests) == sorted(qids)
        assert maillog("deferred") == []


@pytest.mark.deadline(60)
async def test_a_destination_4xx_still_waits_for_the_retry_time(
    tmp_path: Path, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path) as h:
        smtpc = await h.start_smtpc(deliver_4xx)
        (qid,) = await h.submit(1)
        await until(lambda: len(maillog("deferred")) == 1, "the recipient to be deferred")
        env = await h.stored(qid)
        assert env is not None
        (rcpt,) = env.recipients
        assert (rcpt.status, rcpt.attempts) == ("deferred", 1)
        # retry_min = retry_max = 1h: the jitter may not push the retry past retry_max.
        wait_s = rcpt.next_attempt - time.time()
        assert HOUR_S - 30 <= wait_s <= HOUR_S, wait_s
        assert "status=deferred" in maillog("deferred")[0]
        assert len(smtpc.requests) == 1 and maillog("requeued") == []
        assert h.manager.agent_outages == 0


@pytest.mark.deadline(60)
async def test_a_message_that_keeps_killing_smtpc_is_deferred(
    tmp_path: Path, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path) as h:
        (qid,) = await h.submit(1)
        for loss in range(1, 4):
            generation = Generation(hang)

            async def crash(request: SmtpcDeliveryRequest, generation: Generation = generation) -> Any:
                generation.kill()  # dies on this message, every time
                await trio.sleep_forever()

            generation.answer = crash
            await h.nursery.start(generation.run, h.listener)
            await until(lambda: generation.scope.cancelled_caught, f"smtpc death {loss}")  # noqa: B023
        # Twice requeued without an attempt; the third loss counts as one and defers it.
        await until(lambda: len(maillog("deferred")) == 1, "the message to be deferred")
        assert len(maillog("requeued")) == 2
        assert "lost 3 times" in maillog("deferred")[0]
        env = await h.stored(qid)
        assert env is not None
        (rcpt,) = env.recipients
        assert (rcpt.status, rcpt.attempts) == ("deferred", 1)
        assert rcpt.next_attempt - time.time() > HOUR_S - 30
