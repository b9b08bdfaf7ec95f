"""``meta1 monitor``'s lines and ``meta1 status``'s durations, without a daemon."""

from __future__ import annotations

import io

import pytest

from meta1py.cli.monitor import Printer, header, line
from meta1py.cli.status import format_duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_header_comes_back_every_screenful() -> None:
    out = Terminal()
    printer = Printer(out, rows=lambda: 4)
    for n in range(7):
        printer.print(f"line {n}")
    assert out.getvalue().splitlines() == [
        header(),
        "line 0",
        "line 1",
        "line 2",
        header(),
        "line 3",
        "line 4",
        "line 5",
        header(),
        "line 6",
    ]


def test_into_a_pipe_the_header_comes_once() -> None:
    out = io.StringIO()
    printer = Printer(out, rows=lambda: 4)
    for n in range(7):
        printer.print(f"line {n}")
    assert out.getvalue().splitlines() == [header(), *(f"line {n}" for n in range(7))]


def test_a_line_shows_what_each_counter_gained() -> None:
    before = {"meta1_smtps_connections_total": 10, "meta1_messages_received_total": 4}
    after = {
        "meta1_smtps_connections_total": 13,
        "meta1_messages_received_total": 6,
        "meta1_recipients_delivered_total": 1,
        "meta1_smtps_rejected_total": 2,
    }
    fields = line(0.0, before, after, 7).split()
    assert header().split() == ["TIME", "CONN", "RECV", "DELIV", "DEFER", "BOUNCE", "REJECT", "QUEUE"]
    assert fields[1:] == ["3", "2", "1", "0", "0", "2", "7"]


def test_a_counter_that_went_down_was_reset() -> None:
    # qmgr restarted: its counters start again; the line shows the new value, never a negative one.
    fields = line(
        0.0, {"meta1_messages_received_total": 50}, {"meta1_messages_received_total": 2}, None
    ).split()
    assert fields[2] == "2" and fields[-1] == "-"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m1s"), (3600 * 2 + 300, "2h5m"), (86400 * 3 + 3600 * 4 + 5, "3d4h")],
)
def test_durations_have_two_units_at_most(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
