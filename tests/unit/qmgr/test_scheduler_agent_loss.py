"""Scheduler rules added for issue 13: retry_max is a hard cap, and requeue after losing smtpc."""

import random

import pytest

from meta1py.qmgr.scheduler import Job, Scheduler, retry_delay


def make(**kw: object) -> Scheduler:
    args: dict[str, object] = dict(
        per_destination_limit=2, total_limit=3, retry_min=10.0, retry_max=100.0, rng=random.Random(1)
    )
    args.update(kw)
    return Scheduler(**args)  # type: ignore[arg-type]


def job(qid: str, dest: str = "smtp:a") -> Job:
    return Job(qid=qid, destination=dest, recipients=(0,))


@pytest.mark.parametrize(("retry_min", "retry_max"), [(10, 100), (1, 2), (300, 4000), (3600, 3600), (60, 61)])
def test_retry_delay_stays_within_retry_min_and_retry_max(retry_min: float, retry_max: float) -> None:
    rng = random.Random(13)
    for attempts in range(1, 80):
        for _ in range(50):
            delay = retry_delay(attempts, retry_min, retry_max, rng)
            assert retry_min <= delay <= retry_max, (attempts, delay)


def test_retry_delay_is_still_spread_at_either_end() -> None:
    rng = random.Random(5)
    at_cap = [retry_delay(30, 10, 100, rng) for _ in range(200)]
    assert at_cap.count(100) < 5  # not piled up on exactly retry_max
    assert min(at_cap) >= 80 and max(at_cap) <= 100
    first = [retry_delay(1, 10, 100, rng) for _ in range(200)]
    assert first.count(10) < 5  # nor on exactly retry_min
    assert min(first) >= 10 and max(first) <= 12
    assert retry_delay(7, 3600, 3600, rng) == 3600


def test_requeue_puts_the_job_first_in_line_without_touching_the_destination() -> None:
    s = make()
    for name in ("a0", "a1", "a2"):
        s.add(job(name))
    started, _ = s.take_ready(0)
    assert [j.qid for j in started] == ["a0", "a1"]  # per-destination limit 2
    s.requeue(started[1])
    assert s.active == 1 and s.waiting() == 2
    assert not s.is_down("smtp:a", 0) and s.down_until("smtp:a") == 0
    again, deferred = s.take_ready(0)
    assert [j.qid for j in again] == ["a1"] and deferred == []  # before a2, which waited longer


def test_requeue_neither_kills_nor_revives_a_destination() -> None:
    s = make(per_destination_limit=5, total_limit=10)
    s.add(job("d0", "smtp:dead"))
    (j,), _ = s.take_ready(0)
    s.finish(j, delivered_any=False, session_failed=True, now=0)
    until = s.down_until("smtp:dead")
    assert until > 0
    # After the backoff one probe goes out; smtpc dies under it.
    s.add(job("d1", "smtp:dead"))
    (probe,), _ = s.take_ready(until + 1)
    assert probe.probe
    s.requeue(probe)
    assert s.down_until("smtp:dead") == until  # no new failure, no revival
    assert s.destinations()["smtp:dead"] == (1, 0, until)
    # The probe may go out again at once: one probe, not two.
    (again,), _ = s.take_ready(until + 1)
    assert again.qid == "d1" and again.probe
    assert s.take_ready(until + 1) == ([], [])
    assert s.finish(again, delivered_any=True, session_failed=False, now=until + 2)


def test_many_requeues_never_mark_a_destination_down() -> None:
    s = make()
    s.add(job("x"))
    for _ in range(50):
        (j,), _ = s.take_ready(0)
        s.requeue(j)
    assert not s.is_down("smtp:a", 0) and s.waiting() == 1 and s.active == 0


def test_abandon_frees_the_slot_without_a_verdict() -> None:
    s = make(per_destination_limit=5, total_limit=10)
    s.add(job("d0", "smtp:dead"))
    (j,), _ = s.take_ready(0)
    s.finish(j, delivered_any=False, session_failed=True, now=0)
    until = s.down_until("smtp:dead")
    s.add(job("d1", "smtp:dead"))
    (probe,), _ = s.take_ready(until + 1)
    s.abandon(probe)  # its message was deleted, or smtpc kept dying under it
    assert s.active == 0 and s.down_until("smtp:dead") == until  # still dead, not revived
    s.add(job("d2", "smtp:dead"))
    (again,), _ = s.take_ready(until + 1)
    assert again.probe  # still probing, one at a time
    # A healthy destination is forgotten once nothing is left for it.
    s.add(job("h", "smtp:healthy"))
    (h,), _ = s.take_ready(until + 1)
    s.abandon(h)
    assert "smtp:healthy" not in s.destinations()
