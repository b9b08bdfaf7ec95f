"""The progress bar of long operator commands (meta1py.cli.progress), without a terminal: the line
it draws from the numbers, how often it redraws for a given clock, and when it stays silent."""

from __future__ import annotations

import io

import pytest

from meta1py.cli.progress import (
    ProgressBar,
    RateLimiter,
    format_duration,
    progress_bar,
    render,
    wants_progress,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """What the bar writes to, claiming to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (7.4, "0:07"), (59.6, "1:00"), (754, "12:34"), (3723, "1:02:03"), (-3, "0:00")],
)
def test_durations_read_like_a_clock(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_line_has_bar_percentage_counts_rate_and_eta() -> None:
    line = render("delete", 35_000, 100_000, 10.0, unit="messages", columns=120)
    assert line == (
        "delete [##############..........................]  35%  35,000/100,000 messages  3,500/s  ETA 0:19"
    )
    assert len(line) <= 119


def test_the_last_line_says_100_percent_and_the_time_taken() -> None:
    line = render("delete", 3_000, 3_000, 4.2, unit="messages", columns=100, finished=True)
    assert line.endswith("] 100%  3,000/3,000 messages  714/s  done in 0:04")
    assert "#" * 10 in line and "." not in line.split("]")[0]


def test_before_anything_is_done_rate_and_eta_are_unknown() -> None:
    line = render("access", 0, 60_000, 0.0, unit="lines", columns=100)
    assert line.endswith("   0%  0/60,000 lines  -/s  ETA -:--")


def test_the_line_fits_a_narrow_terminal() -> None:
    wide = render("flush", 500, 2_000, 1.0, unit="messages", columns=200)
    assert wide.index("]") - wide.index("[") - 1 == 40  # the bar at its widest
    narrow = render("flush", 500, 2_000, 1.0, unit="messages", columns=60)
    assert "[" not in narrow and narrow.startswith("flush  25%  500/2,000 messages")
    assert len(narrow) <= 59
    tiny = render("flush", 500, 2_000, 1.0, unit="messages", columns=20)
    assert len(tiny) == 19  # cut, never wrapped onto a second line


def test_the_rate_limiter_allows_ten_redraws_a_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.1, clock)
    assert limiter.ready()  # the first one at once
    assert not limiter.ready()
    clock.now += 0.05
    assert not limiter.ready()
    clock.now += 0.05
    assert limiter.ready()
    allowed = 0
    for _ in range(1000):  # 1,000 updates over one second
        clock.now += 0.001
        allowed += limiter.ready()
    assert allowed == 10


def test_the_bar_redraws_in_place_and_ends_its_line() -> None:
    clock, out = FakeClock(), Terminal()
    bar = ProgressBar("delete", 3_000, stream=out, clock=clock)
    with bar:
        for done in range(100, 3_001, 100):  # 30 updates in 0.3 s: 3 redraws, not 30
            clock.now += 0.01
            bar.update(done)
    text = out.getvalue()
    draws = text.split("\r")[1:]
    assert len(draws) == 1 + 3 + 1  # the start, the rate-limited ones, the last
    assert all(d.endswith("\x1b[K") for d in draws[:-1])
    assert draws[0].startswith("delete [") and "   0%  0/3,000 messages" in draws[0]
    assert "100%  3,000/3,000 messages" in draws[-1] and "done in 0:00" in draws[-1]
    assert text.endswith("\x1b[K\n") and text.count("\n") == 1
    bar.close()  # a second close writes nothing
    assert out.getvalue() == text


def test_a_bar_cut_short_ends_its_line_where_it_stopped() -> None:
    clock, out = FakeClock(), Terminal()
    with pytest.raises(RuntimeError), ProgressBar("delete", 3_000, stream=out, clock=clock) as bar:
        clock.now += 1
        bar.update(1_000)
        raise RuntimeError("qmgr went away")
    last = out.getvalue().split("\r")[-1]
    assert "33%  1,000/3,000 messages" in last and "ETA 0:02" in last and last.endswith("\n")


def test_nothing_at_all_without_a_terminal_with_q_or_term_dumb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    pipe = io.StringIO()
    assert not wants_progress(pipe)
    assert wants_progress(Terminal())
    assert not wants_progress(Terminal(), quiet=True)
    assert not wants_progress(Terminal(), environ={"TERM": "dumb"})
    assert not wants_progress(None)
    for stream, quiet in ((pipe, False), (Terminal(), True)):
        with progress_bar("delete", 5_000, quiet=quiet, stream=stream) as bar:
            bar.update(5_000)
        assert not bar.shown
        assert stream.getvalue() == ""
    monkeypatch.setenv("TERM", "dumb")
    dumb = Terminal()
    with progress_bar("delete", 5_000, stream=dumb) as bar:
        bar.update(5_000)
    assert dumb.getvalue() == ""


def test_small_jobs_get_no_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    small, big = Terminal(), Terminal()
    with progress_bar("delete", 1_000, stream=small, minimum=1_000):
        pass
    with progress_bar("delete", 1_001, stream=big, minimum=1_000):
        pass
    assert small.getvalue() == "" and "0/1,001 messages" in big.getvalue()
