"""The scheduler's rules as pure functions: limits, round-robin, backoff, dead destinations."""

import random

from meta1py.qmgr.scheduler import Job, Scheduler, retry_delay


def make(**kw: object) -> Scheduler:
    args: dict[str, object] = dict(
        per_destination_limit=2, total_limit=3, retry_min=10.0, retry_max=100.0, rng=random.Random(1)
    )
    args.update(kw)
    return Scheduler(**args)  # type: ignore[arg-type]


def job(qid: str, dest: str) -> Job:
    return Job(qid=qid, destination=dest, recipients=(0,))


def test_retry_delay_grows_to_max_with_jitter() -> None:
    rng = random.Random(7)
    delays = [retry_delay(n, 10, 100, rng) for n in range(1, 12)]
    assert all(10 <= d <= 120 for d in delays)
    assert delays[0] <= 12  # first retry near retry_min
    assert delays[-1] >= 80  # capped near retry_max
    spread = {round(retry_delay(5, 10, 100, rng), 3) for _ in range(50)}
    assert len(spread) > 40  # jittered: no lockstep


def test_per_destination_and_total_limits() -> None:
    s = make()
    for i in range(5):
        s.add(job(f"a{i}", "smtp:a"))
    s.add(job("b0", "smtp:b"))
    start, deferred = s.take_ready(0)
    assert deferred == []
    dests = [j.destination for j in start]
    assert len(start) == 3
    assert dests.count("smtp:a") == 2 and dests.count("smtp:b") == 1
    # nothing more until something finishes
    assert s.take_ready(0) == ([], [])
    s.finish(start[0], delivered_any=True, session_failed=False, now=1)
    more, _ = s.take_ready(1)
    assert [j.destination for j in more] == ["smtp:a"]


def test_dead_destination_defers_waiting_jobs_and_probes_once() -> None:
    s = make(per_destination_limit=5, total_limit=10)
    for i in range(4):
        s.add(job(f"q{i}", "smtp:dead"))
    start, _ = s.take_ready(0)
    assert len(start) == 4
    for j in start:
        s.finish(j, delivered_any=False, session_failed=True, now=0)
    assert s.is_down("smtp:dead", 0)
    until = s.down_until("smtp:dead")
    assert 10 * 0.8 <= until <= 12
    for i in range(3):
        s.add(job(f"n{i}", "smtp:dead"))
    started, deferred = s.take_ready(1)
    assert started == [] and len(deferred) == 3
    # after the backoff, one probe only
    for i in range(3):
        s.add(job(f"p{i}", "smtp:dead"))
    started, deferred = s.take_ready(until + 1)
    assert len(started) == 1 and started[0].probe and deferred == []
    assert s.take_ready(until + 1) == ([], [])
    revived = s.finish(started[0], delivered_any=True, session_failed=False, now=until + 2)
    assert revived
    started, _ = s.take_ready(until + 2)
    assert len(started) == 2  # the rest flow again


def test_recipient_level_failure_does_not_kill_destination() -> None:
    s = make()
    s.add(job("x", "smtp:a"))
    (j,), _ = s.take_ready(0)
    s.finish(j, delivered_any=False, session_failed=False, now=0)
    assert not s.is_down("smtp:a", 0)


def test_round_robin_between_destinations() -> None:
    s = make(per_destination_limit=10, total_limit=4)
    for i in range(10):
        s.add(job(f"a{i}", "smtp:a"))
    for i in range(10):
        s.add(job(f"b{i}", "smtp:b"))
    start, _ = s.take_ready(0)
    assert sorted(j.destination for j in start) == ["smtp:a", "smtp:a", "smtp:b", "smtp:b"]


def test_revive_clears_down_state() -> None:
    s = make()
    s.add(job("x", "smtp:a"))
    (j,), _ = s.take_ready(0)
    s.finish(j, delivered_any=False, session_failed=True, now=0)
    assert s.is_down("smtp:a", 1)
    s.revive()
    assert not s.is_down("smtp:a", 1)
