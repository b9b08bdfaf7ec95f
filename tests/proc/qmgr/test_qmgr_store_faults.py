"""qmgr when its envelope store cannot be written (issue 16): it never dies, it waits.

The queue manager runs in-process with its real envelope store on a real, tiny tmpfs (root only;
skipped otherwise) or with a second SQLite connection holding the write lock, a fake smar, and an
in-process smtpc whose answer the test switches. The disk is filled with a plain file, exactly as
a log or a core dump would fill it, and freed again by removing it.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from meta1py.conf import parse_config
from meta1py.qmgr import service as qmgr_service
from meta1py.qmgr.manager import QueueManager
from meta1py.queue.content import ContentWriter, scan_content_ids
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path
from meta1py.queue.ids import new_queue_id
from meta1py.rpc import RpcClient, serve_unix
from meta1py.rpc.messages import (
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
from meta1py.worker import WorkerFds

DESTINATION = "smtp:sink.test"
ROUTE = SmarRouteValue(
    status="ok",
    transport="smtp",
    destination=DESTINATION,
    hosts=(SmarHostValue(name="sink.test", address="127.0.0.1", port=25),),
    path=None,
    reply=None,
)


class FakeSmar:
    async def call(self, msg: Any, *, timeout: float | None = None) -> Any:
        assert isinstance(msg, SmarRouteRequest)
        return SmarRouteReply(routes=tuple(ROUTE for _ in msg.addresses))


@dataclass
class Smtpc:
    """An in-process smtpc: 4xx for every recipient until ``accept`` is set, then 250."""

    accept: bool = False
    requests: list[SmtpcDeliveryRequest] = field(default_factory=list)

    async def handle(self, msg: Any) -> Any:
        assert isinstance(msg, SmtpcDeliveryRequest)
        self.requests.append(msg)
        code, enhanced, status = (250, "2.0.0", "ok") if self.accept else (451, "4.4.1", "temp")
        reply = SmtpReplyValue(code=code, enhanced=enhanced, text="scripted")
        return SmtpcDeliveryReply(
            results=tuple(
                SmtpcRecipientResult(idx=r.idx, status=status, reply=reply, remote_mta="sink.test")  # type: ignore[arg-type]
                for r in msg.recipients
            ),
            session_failed=False,
        )


@dataclass
class Harness:
    manager: QueueManager
    queue_dir: Path
    smtpc: Smtpc
    store: EnvelopeStore

    def write_content(self, i: int) -> str:
        writer = ContentWriter(self.queue_dir)
        writer.write(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
        writer.close_unsynced()
        return writer.qid

    async def commit(self, qid: str, i: int) -> QueueEnvelopeCommitReply:
        request = QueueEnvelopeCommitRequest(
            qid=qid,
            sender="a@example.org",
            recipients=(QueueRecipientValue(address=f"r{i}@sink.test", orcpt=None, notify=None),),
            size=30,
            envid=None,
            ret=None,
            body="8BITMIME",
            smtputf8=False,
            client_address="127.0.0.1",
            client_helo="client.test",
            arrival_time=time.time(),
        )
        answer = await self.manager.handle(request)
        assert isinstance(answer, QueueEnvelopeCommitReply)
        return answer

    async def submit(self, count: int) -> list[str]:
        qids = []
        for i in range(count):
            qid = self.write_content(i)
            answer = await self.commit(qid, i)
            assert answer.ok, answer
            qids.append(qid)
        return qids


async def until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    with trio.move_on_after(timeout_s):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


@asynccontextmanager
async def running_qmgr(queue_dir: Path, sock_dir: Path) -> AsyncIterator[Harness]:
    config = parse_config(f"queue_directory = {queue_dir}; qmgr {{ retry_min = 1s; retry_max = 1s; }}")
    socket_path = sock_dir / "smtpc.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(socket_path))
    listener.listen(16)
    store = EnvelopeStore(envelope_store_path(queue_dir))
    client = RpcClient(socket_path, name="qmgr->smtpc")
    smtpc = Smtpc()
    manager = QueueManager(config, store, FakeSmar(), client)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_unix, trio.SocketListener(listener), smtpc.handle)
            await nursery.start(client.run)
            await nursery.start(manager.run)
            yield Harness(manager, queue_dir, smtpc, store)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; return the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # The last partial block, byte by byte is too slow; small writes finish the job.
    with open(path, "ab", buffering=0) as f:
        for size in (4096, 512, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
    return written


@pytest.mark.deadline(120)
async def test_full_disk_defers_in_memory_refuses_new_mail_and_recovers(
    tmp_path: Path, mount_tmpfs: Callable[[str], Path], maillog: Callable[[str], list[str]]
) -> None:
    queue_dir = mount_tmpfs("size=2m")
    async with running_qmgr(queue_dir, tmp_path) as h:
        qids = await h.submit(5)
        await until(lambda: len(maillog("deferred")) >= 5, "the five messages to be deferred")
        spare = h.write_content(99)  # a message whose commit comes after the disk is full
        filler = queue_dir / "filler"
        fill(filler)

        # At the next retries the deferrals cannot be written: today's crash. qmgr goes on.
        await until(lambda: h.manager.store_error is not None, "a write to fail with disk full")
        assert h.manager.store_error is not None and h.manager.store_error.disk_full
        assert h.manager.store_outages == 1
        # New mail is refused with 452 4.3.1 while the store cannot be written.
        refused = await h.commit(spare, 99)
        assert not refused.ok
        assert (refused.reply.code, refused.reply.enhanced) == (452, "4.3.1"), refused.reply
        os.unlink(h.manager.queue_dir / "content" / spare[-2:] / spare)  # smtps aborts it
        # Deliveries pause: nothing is dispatched while results could not be recorded.
        tried = len(h.smtpc.requests)
        await trio.sleep(1.5)
        assert len(h.smtpc.requests) <= tried + 5  # at most those already on their way
        assert set(h.manager.messages) == set(qids)  # nothing finished, nothing lost

        # Space comes back, and so does the destination: everything goes out, no operator.
        h.smtpc.accept = True
        filler.unlink()
        await until(lambda: h.manager.store_error is None, "the store to be writable again")
        await until(lambda: not h.manager.messages, "every message to be delivered and removed")
        delivered = {line.split()[1].removeprefix("qid=") for line in maillog("delivered")}
        assert delivered == set(qids)
        await until(lambda: not list(scan_content_ids(queue_dir)), "the content files to be removed")
        assert h.store.all_ids() == set()


@pytest.mark.deadline(60)
async def test_results_that_cannot_be_written_are_kept_and_not_finished(
    tmp_path: Path, maillog: Callable[[str], list[str]]
) -> None:
    queue_dir = tmp_path / "q"
    queue_dir.mkdir()
    async with running_qmgr(queue_dir, tmp_path) as h:
        h.store.connection.execute("PRAGMA busy_timeout = 50")
        qids = await h.submit(3)
        await until(lambda: len(maillog("deferred")) >= 3, "the three messages to be deferred")
        # Another process holds the write lock: "database is locked" for qmgr's writes.
        locker = sqlite3.connect(envelope_store_path(queue_dir), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            await until(lambda: h.manager.store_error is not None, "a write to fail (locked)")
            assert "locked" in str(h.manager.store_error)
            assert not h.manager.store_error.disk_full
            refused = await h.commit(h.write_content(7), 7)
            assert not refused.ok and refused.reply.code == 451, refused.reply
            assert set(h.manager.messages) == set(qids)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        h.smtpc.accept = True
        await until(lambda: not h.manager.messages, "every message to be delivered and removed")
        assert h.manager.store_error is None
        assert {line.split()[1].removeprefix("qid=") for line in maillog("delivered")} == set(qids)


@pytest.mark.deadline(60)
async def test_qmgr_starts_on_a_full_disk_refuses_mail_and_opens_the_queue_later(
    tmp_path: Path, mount_tmpfs: Callable[[str], Path]
) -> None:
    # A queue closed cleanly (SQLite removed its -wal and -shm files) on a disk that is full:
    # opening the store fails. Today qmgr exited, and mcp restarted it into the same wall.
    queue_dir = mount_tmpfs("size=2m")
    store = EnvelopeStore(envelope_store_path(queue_dir))
    store.close()
    assert not Path(f"{envelope_store_path(queue_dir)}-wal").exists()
    filler = queue_dir / "filler"
    fill(filler)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = parse_config(f"queue_directory = {queue_dir}; run_directory = {run_dir};")
    rpc = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await rpc.bind(str(run_dir / "qmgr.sock"))
    rpc.listen(8)
    fds = WorkerFds(name="qmgr", rpc=trio.SocketListener(rpc), listeners=[])
    request = QueueEnvelopeCommitRequest(
        qid=new_queue_id(),
        sender="a@example.org",
        recipients=(QueueRecipientValue(address="r@sink.test", orcpt=None, notify=None),),
        size=30,
        envid=None,
        ret=None,
        body="8BITMIME",
        smtputf8=False,
        client_address="127.0.0.1",
        client_helo="client.test",
        arrival_time=time.time(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(qmgr_service.serve, cfg, fds)  # ready although the store is closed
        client = RpcClient(run_dir / "qmgr.sock", name="smtps->qmgr")
        await nursery.start(client.run)
        answer = await client.call(request, timeout=10)
        assert not answer.ok and (answer.reply.code, answer.reply.enhanced) == (452, "4.3.1"), answer
        filler.unlink()

        # The store opens by itself; a commit with no content file now fails for that alone.
        async def opened() -> bool:
            reply = await client.call(request, timeout=10)
            return reply.reply.code == 451

        with trio.fail_after(30):
            while not await opened():
                await trio.sleep(0.1)
        fds.shutdown.set()
        client_scope = nursery.cancel_scope
        with trio.fail_after(10):
            while (queue_dir / "qmgr.stopped").exists() is False:
                await trio.sleep(0.05)
        client_scope.cancel()
