"""A full disk under a deferred backlog (issue 16): no worker dies, nothing is lost.

Today's crash: with mail deferred, the queue's file system fills; at the next retry qmgr died on
``database or disk is full``, crash-looped, and mcp gave up. Here the queue is on a small tmpfs
of its own, the backlog waits for a closed port (retry_min = 1s, retry_max = 2s), the disk is
filled by a plain file, and then space comes back and a sink starts on the dead port: every
message accepted before is delivered, once, with no operator action, and no worker was restarted.
Root only (the tmpfs is mounted); in production mode the four worker users must reach it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py.queue.content import scan_content_ids
from meta1py_testing.daemon import Meta1Daemon, free_port, poll
from meta1py_testing.peers import recording_sink

pytestmark = pytest.mark.e2e

MESSAGES = 5
_MSGID = re.compile(rb"^Message-ID: <([^>]+)>\r$", re.MULTILINE | re.IGNORECASE)


@contextlib.contextmanager
def tmpfs_at(point: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``point`` (as tests/conftest.py's ``mount_tmpfs`` does).

    Not the fixture itself: its mount points sit under pytest's private (0700) temporary
    directory, which the workers' users cannot traverse; the daemon's directory is 0755.
    """
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until its file system is full (down to the last byte)."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 65536, 4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break


def _send(port: int, msgid: str) -> None:
    data = f"From: a@example.org\r\nTo: r@sink.test\r\nMessage-ID: <{msgid}>\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("a@example.org", ["r@sink.test"], data.encode())


def test_full_disk_with_a_deferred_backlog_loses_nothing_and_kills_nobody(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    dead_port = free_port()
    daemon = make_daemon(
        sections={"smar": "routes = ../routes;", "qmgr": "retry_min = 1s; retry_max = 2s;"},
    )
    with tmpfs_at(daemon.dir / "qfs", "48m") as fs:
        queue_dir = fs / "queue"
        text = daemon.conf_path.read_text().replace(f"{daemon.queue_directory};", f"{queue_dir};")
        text = text.replace("routes = ../routes;", f"routes = {daemon.dir / 'routes'};")
        daemon.write_config(text)
        daemon.queue_directory, daemon.run_directory = queue_dir, queue_dir / "run"
        routes = daemon.dir / "routes"
        routes.write_text(f"sink.test smtp:[127.0.0.1]:{dead_port}\n")
        routes.chmod(0o644)
        with daemon:
            before = daemon.workers()
            accepted = [f"m{i}@full.test" for i in range(MESSAGES)]
            for msgid in accepted:
                _send(daemon.port, msgid)
            poll(
                lambda: daemon.log_text().count("status=deferred") >= MESSAGES,
                60,
                "the backlog to be deferred (the port is closed)",
            )
            mark = daemon.log_size()
            filler = fs / "filler"
            fill(filler)
            # At the next retry the deferrals cannot be written: qmgr says so and goes on.
            daemon.wait_for_log(r"qmgr\[\d+\]: error: envelope store cannot be written", 60, start=mark)
            # smtps still answers, with a 4xx for new mail (at MAIL or at the end of data).
            with pytest.raises(smtplib.SMTPResponseException) as refused:
                _send(daemon.port, "late@full.test")
            assert 400 <= refused.value.smtp_code < 500, refused.value
            # Several retry rounds go by on the full disk: nobody dies, nobody is restarted.
            full_since = time.monotonic()
            poll(
                lambda: daemon.workers() != before or time.monotonic() - full_since > 6,
                30,
                "six seconds on a full disk",
            )
            assert daemon.workers() == before, daemon.log_text()[mark:]
            assert daemon.running()

            with recording_sink(port=dead_port) as sink:
                filler.unlink()  # space comes back; nobody touches the MTA

                def delivered() -> list[str]:
                    return [m.group(1).decode() for msg in sink.messages if (m := _MSGID.search(msg.content))]

                try:
                    poll(lambda: set(delivered()) >= set(accepted), 90, "every accepted message")
                except AssertionError:
                    raise AssertionError(f"delivered {delivered()}\n{daemon.log_text()[mark:]}") from None
                log = daemon.log_text()[mark:]
                assert "qmgr" in log and re.search(r"envelope store (can be written|writable) again", log), (
                    log
                )
                poll(
                    lambda: not list(scan_content_ids(queue_dir)),
                    60,
                    "the delivered messages' content files to be removed",
                )
                assert sorted(delivered()) == sorted(accepted)  # each once
            assert daemon.workers() == before  # the same processes all along
            assert "Traceback" not in daemon.log_text()
            assert "hard failure" not in daemon.log_text()


def test_qmgr_restarted_on_a_full_disk_stays_up_and_delivers_later(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    # Today a restart while the disk was still full crash-looped too: recovery's first write failed.
    dead_port = free_port()
    daemon = make_daemon(
        sections={"smar": "routes = ../routes;", "qmgr": "retry_min = 1s; retry_max = 2s;"},
    )
    with tmpfs_at(daemon.dir / "qfs", "48m") as fs:
        queue_dir = fs / "queue"
        text = daemon.conf_path.read_text().replace(f"{daemon.queue_directory};", f"{queue_dir};")
        text = text.replace("routes = ../routes;", f"routes = {daemon.dir / 'routes'};")
        daemon.write_config(text)
        daemon.queue_directory, daemon.run_directory = queue_dir, queue_dir / "run"
        routes = daemon.dir / "routes"
        routes.write_text(f"sink.test smtp:[127.0.0.1]:{dead_port}\n")
        routes.chmod(0o644)
        with daemon:
            accepted = [f"r{i}@full.test" for i in range(3)]
            for msgid in accepted:
                _send(daemon.port, msgid)
            poll(lambda: daemon.log_text().count("status=deferred") >= 3, 60, "the backlog to be deferred")
            filler = fs / "filler"
            fill(filler)
            qmgr = daemon.worker_pid("qmgr")
            mark = daemon.log_size()
            os.kill(qmgr, signal.SIGKILL)
            qmgr = daemon.restarted_worker_pid("qmgr", qmgr)
            daemon.wait_for_log(r"qmgr\[\d+\]: info: recovery: 3 messages in the queue", 30, start=mark)
            # It stays up on the full disk (no restart within several retry rounds).
            up_since = time.monotonic()
            poll(
                lambda: daemon.workers().get("qmgr") != qmgr or time.monotonic() - up_since > 6,
                30,
                "six seconds on a full disk",
            )
            assert daemon.workers().get("qmgr") == qmgr, daemon.log_text()[mark:]
            assert "error: envelope store cannot be written" in daemon.log_text()[mark:]
            with recording_sink(port=dead_port) as sink:
                filler.unlink()

                def delivered() -> list[str]:
                    return [m.group(1).decode() for msg in sink.messages if (m := _MSGID.search(msg.content))]

                try:
                    poll(lambda: set(delivered()) >= set(accepted), 90, "every accepted message")
                except AssertionError:
                    raise AssertionError(f"delivered {delivered()}\n{daemon.log_text()[mark:]}") from None
                poll(lambda: not list(scan_content_ids(queue_dir)), 60, "the queue to be empty")
            assert daemon.workers().get("qmgr") == qmgr
            assert "hard failure" not in daemon.log_text()
