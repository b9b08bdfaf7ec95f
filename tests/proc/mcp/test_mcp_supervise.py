"""mcp's supervisor in-process: restart with backoff, hard failures, orderly stop.

:class:`~meta1py.mcp.supervise.Supervisor` runs for real, but ``spawn_worker`` is replaced by a
factory of :class:`FakeChild` values: each one plays a worker process (it becomes ready, exits
with a scripted status, or dies of the signals mcp sends it), so no process is started. The
clock is trio's autojump clock: restart delays take no real time, and the test reads them from
the spawn times.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

import meta1py.mcp.supervise as supervise_module
from meta1py.conf import listen_sockets, parse_config
from meta1py.contract import DRAIN_SIGNAL, WORKER_NAMES
from meta1py.mcp.spawn import Launched
from meta1py.mcp.supervise import BACKOFF_INITIAL_S, Supervisor

# What a worker does once started: None (run until signalled) or an exit status right after it
# reports ready.
Script = dict[str, list[int | None]]


@dataclass(eq=False)
class FakeChild:
    """The part of :class:`meta1py.mcp.spawn.Child` the supervisor uses, without a process."""

    name: str
    pid: int
    exit_after_ready: int | None
    started_at: float = field(default_factory=trio.current_time)
    ready: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    planned: bool = False
    drain_limit_s: float = 0.0
    returncode: int | None = None
    signals: list[int] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)  # shared: names in the order of SIGTERM

    def _exit(self, code: int) -> None:
        if not self.exited.is_set():
            self.returncode = code
            self.exited.set()

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def read_ready(self) -> bool:
        self.ready.set()
        if self.exit_after_ready is not None:
            self._exit(self.exit_after_ready)
        return True

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGTERM:
            self.terminated.append(self.name)
        if sig != DRAIN_SIGNAL:
            self._exit(-sig)  # as os.waitstatus_to_exitcode reports a death by signal

    def close(self) -> None:
        pass


@dataclass
class Workers:
    """The fake spawner: hands out FakeChild values by the script and keeps them all."""

    script: Script
    spawned: list[FakeChild] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)

    def spawn(self, name: str, *_args: object, **_kwargs: object) -> FakeChild:
        plan = self.script.get(name, [])
        generation = sum(1 for c in self.spawned if c.name == name)
        child = FakeChild(
            name,
            1000 + len(self.spawned),
            plan[generation] if generation < len(plan) else None,
            terminated=self.terminated,
        )
        self.spawned.append(child)
        return child

    def of(self, name: str) -> list[FakeChild]:
        return [c for c in self.spawned if c.name == name]


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Supervisor, Workers]]:
    workers = Workers({})
    monkeypatch.setattr(supervise_module, "spawn_worker", workers.spawn)
    monkeypatch.setattr(supervise_module, "notify", lambda *_lines: None)
    cfg = parse_config("")
    listeners = {(ls.address, ls.port): socket.socket() for _section, ls in listen_sockets(cfg)}
    sup = Supervisor(cfg, None, "", listeners, {}, None)
    try:
        yield sup, workers
    finally:
        for sock in listeners.values():
            sock.close()


@pytest.mark.parametrize("status", [64, 77, 78])
async def test_a_usage_privilege_or_config_exit_stops_mcp_with_that_status(
    supervisor: tuple[Supervisor, Workers], autojump_clock: trio.testing.MockClock, status: int
) -> None:
    sup, workers = supervisor
    workers.script["smar"] = [status]
    assert await sup.run() == status
    # Not restarted: a restart cannot fix a bad configuration, usage or missing privileges.
    assert len(workers.of("smar")) == 1
    assert sup.failure is not None and f"exited with status {status}" in sup.failure[1]
    # Every other worker was stopped with SIGTERM, in reverse start order.
    others = [c for c in workers.spawned if c.name != "smar"]
    assert {c.name for c in others} == set(WORKER_NAMES) - {"smar"}
    assert all(c.signals == [signal.SIGTERM] for c in others)
    assert workers.terminated == [n for n in reversed(WORKER_NAMES) if n != "smar"]


async def test_a_crashing_worker_is_restarted_after_growing_delays(
    supervisor: tuple[Supervisor, Workers], autojump_clock: trio.testing.MockClock
) -> None:
    sup, workers = supervisor
    workers.script["smtpc"] = [1, 1, 1, -int(signal.SIGKILL), None]  # four deaths, then it stays up
    async with trio.open_nursery() as nursery:
        results: list[int] = []

        async def run() -> None:
            results.append(await sup.run())

        nursery.start_soon(run)
        while len(workers.of("smtpc")) < 5 or not sup.announced_ready:
            await trio.sleep(0.01)
        starts = [c.started_at for c in workers.of("smtpc")]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        # 0.1 s, doubling: each death came right after the start, so no stable run resets it.
        expected = [BACKOFF_INITIAL_S * 2**i for i in range(4)]
        assert gaps == pytest.approx(expected, abs=0.02), gaps
        # The other workers were never touched.
        assert all(len(workers.of(n)) == 1 for n in WORKER_NAMES if n != "smtpc")

        os.kill(os.getpid(), signal.SIGTERM)  # what systemd sends: an orderly stop
        with trio.fail_after(60):
            while not results:
                await trio.sleep(0.01)
    assert results == [0] and sup.failure is None
    living = [c for c in workers.spawned if c.exit_after_ready is None]
    assert {c.name for c in living} == set(WORKER_NAMES)
    assert all(c.signals == [signal.SIGTERM] and c.planned for c in living)


async def test_a_worker_that_ran_a_while_restarts_after_the_shortest_delay(
    supervisor: tuple[Supervisor, Workers], autojump_clock: trio.testing.MockClock
) -> None:
    sup, workers = supervisor
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        while not sup.announced_ready:
            await trio.sleep(0.01)
        for _ in range(3):  # three quick deaths: the delay grows
            workers.of("qmgr")[-1]._exit(1)
            count = len(workers.of("qmgr"))
            while len(workers.of("qmgr")) == count:
                await trio.sleep(0.001)
        await trio.sleep(60)  # this generation runs for a minute (virtual time)
        died_at = trio.current_time()
        workers.of("qmgr")[-1]._exit(1)
        while len(workers.of("qmgr")) == 4:
            await trio.sleep(0.001)
        assert workers.of("qmgr")[-1].started_at - died_at == pytest.approx(BACKOFF_INITIAL_S, abs=0.01)
        sup.shutdown_requested.set()


def _prestarted_supervisor(
    monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...], early_signals: list[int]
) -> tuple[Supervisor, Workers, list[FakeChild]]:
    """A supervisor given workers mcp started before trio ran (meta1py.mcp.main): FakeChild
    values stand for them, adopted instead of spawned."""
    workers = Workers({})
    monkeypatch.setattr(supervise_module, "spawn_worker", workers.spawn)
    monkeypatch.setattr(supervise_module, "notify", lambda *_lines: None)
    adopted: list[FakeChild] = []

    class Adopting:
        @staticmethod
        def adopt(launched: Launched) -> FakeChild:
            child = FakeChild(launched.name, launched.pid, None, terminated=workers.terminated)
            adopted.append(child)
            return child

    monkeypatch.setattr(supervise_module, "Child", Adopting)
    prestarted = {name: Launched(name, 500 + i, -1) for i, name in enumerate(names)}
    sup = Supervisor(
        parse_config(""), None, "", {}, {}, None, prestarted=prestarted, early_signals=early_signals
    )
    return sup, workers, adopted


async def test_workers_started_before_trio_are_adopted_not_started_again(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    sup, workers, adopted = _prestarted_supervisor(monkeypatch, ("smtps", "smar"), [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        while not sup.announced_ready:
            await trio.sleep(0.01)
        assert [(c.name, c.pid) for c in adopted] == [("smar", 501), ("smtps", 500)]
        assert sorted(c.name for c in workers.spawned) == sorted(set(WORKER_NAMES) - {"smtps", "smar"})
        sup.shutdown_requested.set()


async def test_a_sigterm_while_workers_start_stops_those_that_run(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """SIGTERM came while mcp was still starting workers, before trio ran: the supervisor stops
    the ones that run, in order, starts no other, and exits 0."""
    sup, workers, adopted = _prestarted_supervisor(monkeypatch, ("smtps", "smar"), [signal.SIGTERM])
    with trio.fail_after(30):
        assert await sup.run() == 0
    assert workers.spawned == []
    assert sorted(c.name for c in adopted) == ["smar", "smtps"]
    assert all(c.signals == [signal.SIGTERM] and c.planned for c in adopted)
    assert workers.terminated == [n for n in reversed(WORKER_NAMES) if n in ("smtps", "smar")]
