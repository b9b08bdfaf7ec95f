"""``meta1 queue`` on thousands of messages, against the real daemon: in batches, with a progress
bar on a terminal (a real pseudo-terminal), and with exactly the output of old everywhere else.

The queue is filled directly (meta1py_testing.queuefill) while mcp is stopped: 2,500 messages
with one recipient deferred for an hour, three batches of 1,000 for the command.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
from test_queue_life import store_rows

from meta1py.cli.queue import BATCH_MESSAGES
from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.queuefill import fill_deferred
from meta1py_testing.terminal import TerminalRun, run_with_terminal_stderr

pytestmark = pytest.mark.e2e

COUNT = 2_500


def command(daemon: Meta1Daemon, *args: str) -> list[str]:
    return [sys.executable, "-m", "meta1py", "queue", *args, "-f", str(daemon.conf_path)]


def environment(term: str = "xterm") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("META1_")}
    env["TERM"] = term
    return env


def on_terminal(daemon: Meta1Daemon, *args: str, term: str = "xterm") -> TerminalRun:
    return run_with_terminal_stderr(
        command(daemon, *args), env=environment(term), cwd=daemon.dir, timeout=300
    )


def in_a_pipe(daemon: Meta1Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(daemon, *args),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=daemon.dir,
        env=environment(),
        check=False,
    )


def filled(daemon: Meta1Daemon, count: int = COUNT) -> list[str]:
    """Stop the daemon (started once: its directories exist) and queue ``count`` deferred
    messages."""
    daemon.stop()
    return fill_deferred(daemon.queue_directory, count)


def queued(daemon: Meta1Daemon) -> int:
    return int(store_rows(daemon, "SELECT count(*) FROM messages")[0][0])  # type: ignore[call-overload]


def content_files(daemon: Meta1Daemon) -> int:
    return sum(1 for p in (daemon.queue_directory / "content").glob("*/*") if p.is_file())


_DRAW = re.compile(
    r"^(\w+) \[[#.]+\] +(\d+)%  ([\d,]+)/([\d,]+) messages  \S+/s  (ETA \S+|done in \S+)\x1b\[K"
)


def bar_states(terminal: str) -> list[tuple[str, int, int, int, str]]:
    """Every state the bar was drawn in: (label, percent, done, total, ETA or time taken)."""
    states = []
    for part in terminal.split("\r"):
        match = _DRAW.match(part)
        if match:
            label, percent, done, total, tail = match.groups()
            states.append(
                (label, int(percent), int(done.replace(",", "")), int(total.replace(",", "")), tail)
            )
    return states


def check_bar(run: TerminalRun, action: str, total: int) -> None:
    """The bar counted ``total`` messages in batches, ended at 100% and left its line for the
    summary; nothing else reached the terminal."""
    states = bar_states(run.terminal)
    assert states, run.terminal
    assert {(label, t) for label, _p, _d, t, _tail in states} == {(action, total)}, states
    dones = [d for _l, _p, d, _t, _tail in states]
    assert dones == sorted(dones) and dones[0] == 0
    allowed = {min(total, n * BATCH_MESSAGES) for n in range(total // BATCH_MESSAGES + 2)}
    assert set(dones) <= allowed, dones  # progress is per batch answered, not invented
    _label, percent, done, _total, tail = states[-1]
    assert (percent, done) == (100, total) and tail.startswith("done in"), states[-1]
    # The pseudo-terminal shows "\n" as "\r\n": the last draw ends the line, and that is all.
    assert run.terminal.endswith("\x1b[K\r\n") and run.terminal.count("\n") == 1, repr(run.terminal[-200:])


def test_with_qmgr_running(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"qmgr": "retry_min = 1h;"})
    with daemon:
        qids = filled(daemon)
        daemon.start()

        # Not a terminal: exactly what one request printed, though it went in three batches.
        held = in_a_pipe(daemon, "hold", *qids)
        assert (held.returncode, held.stdout, held.stderr) == (0, f"hold: {COUNT} messages\n", "")
        assert store_rows(daemon, "SELECT count(*) FROM messages WHERE hold")[0][0] == COUNT
        # A named id that is not queued, among many: reported as before, exit 66.
        missing = in_a_pipe(daemon, "release", *qids[:1500], "AAAAAAAAAAAA", *qids[1500:])
        assert (missing.returncode, missing.stdout) == (66, f"release: {COUNT} messages\n")
        assert missing.stderr == "meta1 queue: AAAAAAAAAAAA: no such message\n"

        # A terminal that cannot redraw, and -q: no bar either.
        for args, term in ((("hold", *qids), "dumb"), (("release", "-q", *qids), "xterm")):
            run = on_terminal(daemon, *args, term=term)
            assert (run.returncode, run.stdout, run.terminal) == (0, f"{args[0]}: {COUNT} messages\n", "")

        # On a terminal: the bar, from 0 to 100%, then the same summary.
        run = on_terminal(daemon, "delete", "--all-deferred")
        assert (run.returncode, run.stdout) == (0, f"delete: {COUNT} messages\n"), run.terminal
        check_bar(run, "delete", COUNT)
        assert queued(daemon) == 0 and content_files(daemon) == 0
        assert in_a_pipe(daemon, "delete", "--all-deferred").stdout == "delete: 0 messages\n"


def test_with_qmgr_stopped(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon()
    with daemon:
        qids = filled(daemon)
        assert not daemon.running()

        held = in_a_pipe(daemon, "hold", *qids, "AAAAAAAAAAAA")
        assert (held.returncode, held.stdout) == (66, f"hold: {COUNT} messages\n")
        assert held.stderr == "meta1 queue: AAAAAAAAAAAA: no such message\n"
        released = in_a_pipe(daemon, "release", *qids)
        assert (released.returncode, released.stdout, released.stderr) == (
            0,
            f"release: {COUNT} messages\n",
            "",
        )

        run = on_terminal(daemon, "delete", "--all-deferred")
        assert (run.returncode, run.stdout) == (0, f"delete: {COUNT} messages\n"), run.terminal
        check_bar(run, "delete", COUNT)
        assert queued(daemon) == 0 and content_files(daemon) == 0


def test_a_few_messages_get_no_bar(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon()
    with daemon:
        qids = filled(daemon, 20)
        daemon.start()
        run = on_terminal(daemon, "hold", *qids)
        assert (run.returncode, run.stdout, run.terminal) == (0, "hold: 20 messages\n", "")
        run = on_terminal(daemon, "delete", "--all-deferred")
        assert (run.returncode, run.stdout, run.terminal) == (0, "delete: 20 messages\n", "")


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_between_batches_and_says_how_far_it_got(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    daemon = make_daemon()
    with daemon:
        filled(daemon)
        daemon.start()
        proc = subprocess.Popen(
            command(daemon, "delete", "--all-deferred"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=daemon.dir,
            env=environment(),
            # As an operator's shell gives it: a suite started in the background by a
            # non-interactive shell (nohup ... &) inherits SIGINT ignored, and so would the command.
            preexec_fn=_sigint_default,
        )
        qmgr = daemon.worker_pid("qmgr")
        stopped = False
        try:
            poll(lambda: queued(daemon) < COUNT, 60, "the first batch to be done")
            # qmgr stands still while the Ctrl-C arrives: the command is then inside a batch or
            # between two, never past the last one (a batch takes qmgr far longer than this).
            os.kill(qmgr, signal.SIGSTOP)
            stopped = True
            assert queued(daemon) > 0, "every batch was done before qmgr was stopped"
            proc.send_signal(signal.SIGINT)
            os.kill(qmgr, signal.SIGCONT)
            stopped = False
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if stopped:
                os.kill(qmgr, signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # The batch under way is finished and counted; nothing after it is begun.
        match = re.fullmatch(
            rf"meta1 queue: interrupted after (\d+) of {COUNT} messages; delete: (\d+) messages\n", stderr
        )
        assert (proc.returncode, stdout) == (130, "") and match, (proc.returncode, stdout, stderr)
        done = int(match[1])
        assert int(match[2]) == done and done in (1000, 2000)
        assert queued(daemon) == COUNT - done
