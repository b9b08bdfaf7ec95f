"""mcp's restart backoff (meta1py.mcp.supervise.RestartPolicy): slower and slower, never giving up."""

from __future__ import annotations

import itertools

from meta1py.mcp.supervise import BACKOFF_MAX_S, RestartPolicy


def test_backoff_doubles_up_to_the_cap_and_never_gives_up() -> None:
    policy = RestartPolicy(initial_s=0.1, max_s=60.0, stable_s=30.0, loop_deaths=1000, loop_window_s=60.0)
    delays = [policy.on_death(now=float(i), ran_s=0.5).delay_s for i in range(14)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert max(delays) == 60.0
    assert delays[-1] == 60.0  # capped, and still a delay (not a hard failure) after 14 deaths


def test_default_cap_is_a_minute() -> None:
    assert BACKOFF_MAX_S == 60.0
    policy = RestartPolicy()
    delays = [policy.on_death(now=i * 0.1, ran_s=0.1).delay_s for i in range(40)]
    assert max(delays) == 60.0


def test_a_stable_run_resets_the_backoff() -> None:
    policy = RestartPolicy(initial_s=0.1, max_s=10.0, stable_s=30.0, loop_deaths=1000, loop_window_s=60.0)
    for i in range(5):
        policy.on_death(now=float(i), ran_s=1.0)
    assert policy.on_death(now=100.0, ran_s=31.0).delay_s == 0.1
    assert policy.on_death(now=101.0, ran_s=1.0).delay_s == 0.2


def test_crash_loop_goes_to_the_longest_delay_once_announced() -> None:
    policy = RestartPolicy(initial_s=0.1, max_s=20.0, stable_s=30.0, loop_deaths=3, loop_window_s=300.0)
    first, second = policy.on_death(0.0, 0.1), policy.on_death(1.0, 0.1)
    assert (first.delay_s, second.delay_s) == (0.1, 0.2)
    assert not first.crash_loop_started and not second.crash_loop_started
    third = policy.on_death(2.0, 0.1)
    assert third.crash_loop_started and third.delay_s == 20.0 and third.recent_deaths == 3
    fourth = policy.on_death(30.0, 0.1)
    assert not fourth.crash_loop_started  # said once per loop
    assert fourth.delay_s == 20.0
    # Running long enough ends the loop: back to the short delay.
    after = policy.on_death(400.0, 45.0)
    assert after.delay_s == 0.1 and not after.crash_loop_started


def test_deaths_outside_the_window_do_not_make_a_loop() -> None:
    policy = RestartPolicy(initial_s=0.1, max_s=5.0, stable_s=30.0, loop_deaths=3, loop_window_s=10.0)
    decisions = [policy.on_death(now=i * 20.0, ran_s=1.0) for i in range(6)]
    assert not any(d.crash_loop_started for d in decisions)
    assert all(d.recent_deaths == 1 for d in decisions)
