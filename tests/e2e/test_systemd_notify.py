"""What systemd sees of mcp: sd_notify messages through a life cycle, and stderr meant for journald.

``Meta1Daemon`` (via ``make_daemon``) binds its own datagram socket, starts mcp with
``NOTIFY_SOCKET`` pointing at it and records every datagram in ``daemon.notifications``, in the
order received. These tests check the protocol a ``Type=notify`` unit (contrib/systemd/
meta1.service) relies on:

- start: one datagram with ``READY=1``, a ``STATUS=`` line and ``MAINPID=<mcp>``;
- SIGHUP: ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, as systemd requires), then
  ``READY=1`` again, whether the new file was valid or not (without it systemd would show the
  unit "reloading" for ever);
- SIGTERM: ``STOPPING=1``, then exit 0.

And the log: stderr lines start with a timestamp, except when ``JOURNAL_STREAM`` names mcp's
stderr (journald adds its own; the lines start with their ``<priority>`` then), in mcp and in
every worker it starts.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from meta1py_testing.daemon import WORKER_NAMES, Meta1Daemon, poll

pytestmark = pytest.mark.e2e

MakeDaemon = Callable[..., Meta1Daemon]

RELOAD_TIMEOUT_S = 120.0
_LOG_LINE = re.compile(
    r"^(?:<(?P<priority>\d)>)?(?:(?P<ts>\S+) )?meta1py/(?P<name>\w+)\[\d+\]: (?P<level>\w+): ", re.MULTILINE
)
# sd-daemon(3)'s prefix of each level under journald.
_PRIORITY = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}


def _fields(message: str) -> dict[str, str]:
    """``KEY=value`` lines of one datagram (each key once)."""
    fields: dict[str, str] = {}
    for line in message.splitlines():
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {line!r} in {message!r}"
        assert key not in fields, f"{key} twice in {message!r}"
        fields[key] = value
    return fields


def _next_index(daemon: Meta1Daemon, message: str, start: int) -> int:
    """The index after ``message`` in ``daemon.notifications`` (searching from ``start``)."""
    return daemon.notifications.index(message, start) + 1


def _reload(daemon: Meta1Daemon) -> dict[str, str]:
    """SIGHUP mcp; check RELOADING=1 then READY=1; return the fields of the READY=1 datagram."""
    start = len(daemon.notifications)
    before_us = time.monotonic_ns() // 1000
    daemon.send_signal(signal.SIGHUP)
    reloading = daemon.wait_notify("RELOADING=1", RELOAD_TIMEOUT_S, start=start)
    after_us = time.monotonic_ns() // 1000
    fields = _fields(reloading)
    # systemd compares MONOTONIC_USEC with its own CLOCK_MONOTONIC: it must be "now".
    assert before_us <= int(fields["MONOTONIC_USEC"]) <= after_us, (before_us, fields, after_us)
    assert "READY=1" not in reloading.splitlines()
    ready = daemon.wait_notify("READY=1", RELOAD_TIMEOUT_S, start=_next_index(daemon, reloading, start))
    # Nothing but status updates between the two.
    between = daemon.notifications[_next_index(daemon, reloading, start) : daemon.notifications.index(ready)]
    assert all(set(_fields(m)) == {"STATUS"} for m in between), between
    return _fields(ready)


def test_ready_reload_stop_in_order(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.start()

    # Start: READY=1 comes once every worker serves, with the pids and mcp's own pid.
    ready = daemon.wait_notify("READY=1")
    assert daemon.notifications.index(ready) == 0, f"something before READY=1: {daemon.notifications}"
    fields = _fields(ready)
    assert fields["MAINPID"] == str(daemon.pid)
    assert fields["STATUS"].startswith("running: ")
    workers = daemon.workers()
    assert dict(item.split("=") for item in fields["STATUS"][len("running: ") :].split()) == {
        name: str(workers[name]) for name in WORKER_NAMES
    }

    # SIGHUP with the same, valid file: a real reload (every worker restarted or handed over).
    mark = daemon.log_size()
    fields = _reload(daemon)
    assert fields["STATUS"] == "running (reloaded)", daemon.log_text()[mark:]
    daemon.wait_for_log(r"mcp\[\d+\]: info: reload done", start=mark)

    # SIGTERM: STOPPING=1 (sent before the workers are stopped), then exit 0.
    start = len(daemon.notifications)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    stopping = _fields(daemon.wait_notify("STOPPING=1", start=start))
    assert stopping["STATUS"] == "stopping"
    assert not any("READY=1" in m.splitlines() for m in daemon.notifications[start:])


def test_failed_reload_still_ends_with_ready(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        before = daemon.workers()
        daemon.write_config(daemon.conf_path.read_text() + "max_rcpt = 5;\n")
        fields = _reload(daemon)
        assert fields["STATUS"].startswith("reload failed"), fields
        assert daemon.workers() == before


def _log_lines(daemon: Meta1Daemon) -> list[re.Match[str]]:
    return list(_LOG_LINE.finditer(daemon.log_text()))


def _wait_for_every_process(daemon: Meta1Daemon) -> None:
    # Each worker logs its start line on its own schedule; READY=1 does not wait for the log.
    wanted = {"mcp", *WORKER_NAMES}
    poll(
        lambda: {m["name"] for m in _log_lines(daemon)} >= wanted,
        30,
        f"a log line from each of {sorted(wanted)}",
    )


def test_log_lines_carry_timestamps(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        daemon.banner()  # an smtps session: a line from a worker, not only from mcp
        _wait_for_every_process(daemon)
        lines = _log_lines(daemon)
        for match in lines:
            assert match["ts"], f"no timestamp: {match.group()!r}"
            assert match["priority"] is None, "a priority prefix is for journald only"
            assert datetime.fromisoformat(match["ts"]).tzinfo is not None


def test_no_timestamps_when_stderr_is_the_journal(
    make_daemon: MakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What systemd does with StandardError=journal: JOURNAL_STREAM names the stream mcp's stderr
    # is. Here that stream is the daemon's log file (Meta1Daemon appends to it, keeping the inode),
    # and Meta1Daemon.start passes the test's environment on to mcp.
    daemon = make_daemon()
    daemon.log_path.touch()
    st = daemon.log_path.stat()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    daemon.start()
    daemon.banner()
    _wait_for_every_process(daemon)
    lines = _log_lines(daemon)
    stamped = [m.group() for m in lines if m["ts"]]
    assert stamped == [], "journald adds timestamps; these lines have their own"
    # Instead each line starts with its priority (journald files it under it: journalctl -p).
    wrong = [m.group() for m in lines if m["priority"] != _PRIORITY[m["level"]]]
    assert wrong == [], "each line starts with <priority> of its level"
    assert daemon.stop() == 0
