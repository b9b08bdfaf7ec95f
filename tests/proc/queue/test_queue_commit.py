"""GroupCommitter and DirectorySyncer under trio: batching, failures, cancellation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import meta1py.queue.content as content_module
from meta1py.queue.content import ContentWriter, DirectorySyncer
from meta1py.queue.envelopes import (
    DuplicateMessageError,
    Envelope,
    EnvelopeStore,
    GroupCommitter,
    Recipient,
    UnknownMessageError,
    envelope_store_path,
)
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import new_queue_id

TIME_LIMIT_S = 60

_used: set[str] = set()


def make_envelope(padding: str = "") -> Envelope:
    while (qid := new_queue_id()) in _used:
        pass
    _used.add(qid)
    return Envelope(
        qid=qid,
        sender="alice@example.org",
        arrival_time=time.time(),
        size=100,
        client_helo="helo" + padding,
        recipients=(Recipient(idx=0, address="bob@example.net"), Recipient(idx=1, address="c@d")),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EnvelopeStore]:
    with EnvelopeStore(envelope_store_path(tmp_path)) as s:
        yield s


class Gate:
    """Holds the committer's worker thread so that operations pile up behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, store: EnvelopeStore) -> None:
        self.entered.set()
        if not self.release.wait(TIME_LIMIT_S):
            raise AssertionError("gate never released")


async def hold_worker(
    nursery: trio.Nursery, committer: GroupCommitter, before: Callable[[EnvelopeStore], None] | None = None
) -> Gate:
    gate = Gate()

    def blocked(store: EnvelopeStore) -> None:
        if before is not None:
            before(store)
        gate(store)

    nursery.start_soon(committer.read, blocked)
    await trio.to_thread.run_sync(gate.entered.wait)
    return gate


async def test_concurrent_commits_share_one_transaction(store: EnvelopeStore) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        committer = GroupCommitter(store)
        envelopes = [make_envelope() for _ in range(50)]
        async with trio.open_nursery() as nursery:
            gate = await hold_worker(nursery, committer)
            for env in envelopes:
                nursery.start_soon(committer.commit_new, env)
            await trio.testing.wait_all_tasks_blocked()
            # The first operation is running (waiting for the worker); the rest wait together.
            assert committer.waiting == 49
            gate.release.set()
        assert committer.commits == 2
        assert committer.operations == 50
        assert store.all_ids() == {e.qid for e in envelopes}


async def test_sequential_commits_each_get_their_own(store: EnvelopeStore) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        committer = GroupCommitter(store)
        env = make_envelope()
        await committer.commit_new(env)
        await committer.update_recipients(env.qid, [(0, "delivered", 1, 0.0, "250 ok", "x")])
        assert await committer.set_hold(env.qid, True)
        assert not await committer.set_hold(new_queue_id(), True)
        got = await committer.read(lambda s: s.get(env.qid))
        assert got is not None and got.hold and got.recipients[0].status == "delivered"
        assert await committer.delete(env.qid)
        assert not await committer.delete(env.qid)
        assert committer.commits == 6  # one transaction per call: nothing overlapped


async def test_one_bad_operation_fails_alone(store: EnvelopeStore) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        committer = GroupCommitter(store)
        existing = make_envelope()
        await committer.commit_new(existing)
        fresh = make_envelope()
        errors: dict[str, BaseException] = {}

        async def attempt(name: str, fn: Callable[[], object]) -> None:
            try:
                await fn()  # type: ignore[misc]
            except (DuplicateMessageError, UnknownMessageError) as exc:
                errors[name] = exc

        async with trio.open_nursery() as nursery:
            gate = await hold_worker(nursery, committer)
            nursery.start_soon(attempt, "dup", lambda: committer.commit_new(existing))
            nursery.start_soon(attempt, "fresh", lambda: committer.commit_new(fresh))
            nursery.start_soon(
                attempt,
                "unknown",
                lambda: committer.update_recipients(new_queue_id(), [(0, "delivered", 1, 0.0, None, None)]),
            )
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert isinstance(errors.pop("dup"), DuplicateMessageError)
        assert isinstance(errors.pop("unknown"), UnknownMessageError)
        assert errors == {}
        assert store.all_ids() == {existing.qid, fresh.qid}


async def test_storage_failure_fails_the_whole_batch(store: EnvelopeStore) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        committer = GroupCommitter(store)
        before = make_envelope()
        await committer.commit_new(before)
        failed: list[QueueStorageError] = []
        doomed = [make_envelope(padding="x" * 3000) for _ in range(20)]

        def fill_up(s: EnvelopeStore) -> None:
            # SQLITE_FULL, as from a full disk, for whatever the next batch adds.
            pages = s.connection.execute("PRAGMA page_count").fetchone()[0]
            s.connection.execute(f"PRAGMA max_page_count = {pages}")

        async def commit(env: Envelope) -> None:
            try:
                await committer.commit_new(env)
            except QueueStorageError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            gate = await hold_worker(nursery, committer, fill_up)
            for env in doomed:
                nursery.start_soon(commit, env)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert len(failed) == len(doomed)
        assert all(exc.disk_full for exc in failed)
        assert store.all_ids() == {before.qid}
        # Space comes back: the committer works again.
        store.connection.execute("PRAGMA max_page_count = 1000000")
        after = make_envelope()
        await committer.commit_new(after)
        assert store.all_ids() == {before.qid, after.qid}
        assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_cancelled_waiting_operation_is_not_applied(store: EnvelopeStore) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        committer = GroupCommitter(store)
        first, cancelled, kept = make_envelope(), make_envelope(), make_envelope()
        async with trio.open_nursery() as nursery:
            gate = await hold_worker(nursery, committer)
            nursery.start_soon(committer.commit_new, first)
            await trio.testing.wait_all_tasks_blocked()
            scope = trio.CancelScope()
            nursery.start_soon(committer.commit_new, kept)

            async def doomed() -> None:
                with scope:
                    await committer.commit_new(cancelled)

            nursery.start_soon(doomed)
            await trio.testing.wait_all_tasks_blocked()
            assert committer.waiting == 2
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert committer.waiting == 1
            gate.release.set()
        assert store.all_ids() == {first.qid, kept.qid}


class FsyncGate:
    """Wraps the real directory fsync so that the first one waits for the test."""

    def __init__(self, real: Callable[[str], None]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, path: str) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            if not self.release.wait(TIME_LIMIT_S):
                raise AssertionError("gate never released")
        self.real(path)


async def test_directory_syncer_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        gate = FsyncGate(content_module._fsync_dir)
        monkeypatch.setattr(content_module, "_fsync_dir", gate)
        syncer = DirectorySyncer()
        seen: list[int] = []

        async def sync() -> None:
            await syncer.sync(tmp_path)
            seen.append(syncer.fsyncs)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync)
            await trio.to_thread.run_sync(gate.entered.wait)
            # These callers arrive while fsync #1 runs: it may predate their entries, so they
            # must all wait for fsync #2, and share it.
            for _ in range(30):
                nursery.start_soon(sync)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert syncer.fsyncs == gate.calls == 2
        assert seen == [1] + [2] * 30


async def test_directory_syncer_reports_failure_to_every_waiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        gate = FsyncGate(content_module._fsync_dir)
        monkeypatch.setattr(content_module, "_fsync_dir", gate)
        syncer = DirectorySyncer()
        missing = tmp_path / "missing"
        failures: list[QueueStorageError] = []

        async def sync() -> None:
            try:
                await syncer.sync(missing)
            except QueueStorageError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync)
            await trio.to_thread.run_sync(gate.entered.wait)
            for _ in range(5):
                nursery.start_soon(sync)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert len(failures) == 6
        await syncer.sync(tmp_path)  # a good directory still works


async def test_cancelled_syncer_still_completes_for_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        gate = FsyncGate(content_module._fsync_dir)
        monkeypatch.setattr(content_module, "_fsync_dir", gate)
        syncer = DirectorySyncer()
        done: list[str] = []

        async def sync(name: str) -> None:
            await syncer.sync(tmp_path)
            done.append(name)

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def leader() -> None:
                with scope:
                    await sync("leader")

            nursery.start_soon(leader)
            await trio.to_thread.run_sync(gate.entered.wait)
            nursery.start_soon(sync, "follower")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            gate.release.set()
        # The running fsync was shielded (the leader may even report it done: no checkpoint
        # follows it); the follower got its own fsync afterwards.
        assert done[-1] == "follower"
        assert syncer.fsyncs == 2


async def test_content_then_directory_then_envelope(tmp_path: Path) -> None:
    """The smtps + qmgr commit path, many messages at once."""
    with trio.fail_after(TIME_LIMIT_S):
        syncer = DirectorySyncer()
        store = EnvelopeStore(envelope_store_path(tmp_path))
        committer = GroupCommitter(store)
        bodies: dict[str, bytes] = {}

        async def accept(n: int) -> None:
            body = b"message %d\r\n" % n * 100
            writer = ContentWriter(tmp_path)
            writer.write(body)
            await trio.to_thread.run_sync(writer.finish)
            await syncer.sync(writer.path.parent)
            await committer.commit_new(
                Envelope(
                    qid=writer.qid,
                    sender="",
                    arrival_time=time.time(),
                    size=writer.size,
                    recipients=(Recipient(idx=0, address="x@y"),),
                )
            )
            bodies[writer.qid] = body

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(accept, n)
        assert store.all_ids() == set(bodies)
        assert committer.commits < 100
        for qid, body in bodies.items():
            assert (tmp_path / "content" / qid[-2:] / qid).read_bytes() == body
        store.close()


# -- durable and bookkeeping commits ------------------------------------------------------------


def _synchronous(store: EnvelopeStore) -> int:
    """The connection's PRAGMA synchronous: 2 = FULL (fsync per commit), 1 = NORMAL."""
    return int(store._conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_bookkeeping_commits_skip_the_fsync_but_never_a_new_message(store: EnvelopeStore) -> None:
    committer = GroupCommitter(store)
    env = make_envelope()
    await committer.commit_new(env)
    assert _synchronous(store) == 2
    # A delivery result alone: committed (visible to a reader at once) without an fsync.
    await committer.update_recipients(env.qid, [(0, "delivered", 1, 0.0, "250 ok", "d")], durable=False)
    assert _synchronous(store) == 1
    with EnvelopeStore(store.path, readonly=True) as reader:
        got = reader.get(env.qid)
        assert got is not None and got.recipients[0].status == "delivered"
    # A new message in the same batch as bookkeeping: the whole batch is durable.
    first, other = make_envelope(), make_envelope()
    async with trio.open_nursery() as nursery:
        gate = await hold_worker(nursery, committer)
        nursery.start_soon(committer.commit_new, first)  # the running batch, behind the gate
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(
            committer.update_recipients, env.qid, [(1, "delivered", 1, 0.0, "250 ok", "d")], False
        )
        nursery.start_soon(committer.commit_new, other)
        await trio.testing.wait_all_tasks_blocked()
        assert committer.waiting == 2  # the next batch: one bookkeeping, one new message
        gate.release.set()
    assert _synchronous(store) == 2
    assert store.get(other.qid) is not None
    # sync() fsyncs the WAL that holds every earlier commit (and is harmless without one).
    store.sync()


class _After:
    """An AfterDurable that records what the store looked like when it ran."""

    def __init__(self, store: EnvelopeStore, log: list[str]) -> None:
        self.store = store
        self.log = log

    def run(self) -> None:
        # In the store's thread, after the commit: the level the batch was committed at.
        self.log.append(f"run synchronous={_synchronous(self.store)}")

    def finished(self, ran: bool) -> None:
        self.log.append(f"finished ran={ran}")


async def test_after_durable_rides_only_on_a_durable_commit_that_succeeded(store: EnvelopeStore) -> None:
    log: list[str] = []
    offered: list[int] = []

    def after_durable() -> _After:
        offered.append(1)
        return _After(store, log)

    committer = GroupCommitter(store, after_durable=after_durable)
    env = make_envelope()
    await committer.commit_new(env)
    assert log == ["run synchronous=2", "finished ran=True"]
    # Bookkeeping without an fsync is never offered the work.
    await committer.update_recipients(env.qid, [(0, "delivered", 1, 0.0, "250 ok", "d")], durable=False)
    assert len(offered) == 1 and len(log) == 2
    # A failed durable batch: the work is handed back, not run.
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(QueueStorageError):
        await committer.commit_new(make_envelope(padding="x" * 3000))
    assert log[2:] == ["finished ran=False"]
    store.connection.execute("PRAGMA max_page_count = 1000000")
