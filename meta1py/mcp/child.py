"""One running worker as mcp's supervisor sees it (trio): its exit, its readiness, its signals.

Exits are awaited through a pidfd, which also makes signalling race-free.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import trio

from meta1py.contract import READY_LINE
from meta1py.mcp.forkserver import ForkServer
from meta1py.mcp.spawn import Launched, launch_worker

log = logging.getLogger("meta1py.mcp.spawn")


class Child:
    """One running worker process, as seen by mcp.

    Attributes:
        name: the worker's name.
        pid: the process id (a child of mcp, started by exec or by the fork server).
        started_at: ``trio.current_time()`` at spawn.
        ready: set once the worker wrote ``READY`` on its ready pipe.
        exited: set once the process has been reaped; ``returncode`` is then valid.
        planned: True when mcp itself asked it to stop (reload, dependency restart, shutdown)
            or retired it (smtps handover), so its exit is not counted as a death.
        drain_limit_s: for smtps, how long it may take to drain its sessions (the longest
            ``session_timeout`` of the configuration it runs); 0 for other workers.
    """

    def __init__(
        self, name: str, pid: int, ready_fd: int, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.name = name
        self.pid = pid
        self.started_at = trio.current_time()
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.planned = False
        self.drain_limit_s = 0.0
        #: The exit status (negative: killed by that signal), None while running.
        self.returncode: int | None = None
        self._popen = popen
        self._ready_fd = ready_fd
        self._pidfd = os.pidfd_open(pid)
        os.set_blocking(ready_fd, False)

    async def wait(self) -> int:
        """Wait for the process to exit, reap it and set ``exited``."""
        try:
            await trio.lowlevel.wait_readable(self._pidfd)
            # The pid cannot be reused before this reaps it.
            _pid, status = os.waitpid(self.pid, 0)
            code = self.returncode = os.waitstatus_to_exitcode(status)
            if self._popen is not None:
                # Reaped here: keep subprocess from ever waiting for this pid again.
                self._popen.returncode = code
        finally:
            if self.returncode is not None and self._pidfd >= 0:
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = -1
                self.exited.set()
        return code

    async def read_ready(self) -> bool:
        """Wait for ``READY`` on the ready pipe; False if it closed without it (the worker died)."""
        data = b""
        while b"\n" not in data:
            await trio.lowlevel.wait_readable(self._ready_fd)
            try:
                chunk = os.read(self._ready_fd, 64)
            except BlockingIOError:
                continue
            if not chunk:
                return False
            data += chunk
        if data.startswith(READY_LINE.rstrip()):
            self.ready.set()
            return True
        log.warning("%s sent %r on its ready pipe", self.name, data[:64])
        return False

    def send_signal(self, sig: int) -> None:
        """Signal the process through its pidfd (never a recycled pid); no-op once it exited."""
        if self.exited.is_set() or self._pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Release the ready pipe (after ``exited``, once nobody reads it any more)."""
        if self._ready_fd >= 0:
            trio.lowlevel.notify_closing(self._ready_fd)
            os.close(self._ready_fd)
            self._ready_fd = -1

    @classmethod
    def adopt(cls, launched: Launched) -> Child:
        """Watch a worker started before trio ran (or just now by :func:`spawn_worker`)."""
        return cls(launched.name, launched.pid, launched.ready_fd, launched.popen)


def spawn_worker(
    name: str,
    config_text: str,
    fds: dict[str, int],
    lifeline_fd: int,
    user: str | None = None,
    group: str | None = None,
    syslog: bool = False,
    forkserver: ForkServer | None = None,
) -> Child:
    """:func:`meta1py.mcp.spawn.launch_worker`, watched.

    Raises:
        OSError: the process could not be started.
    """
    return Child.adopt(
        launch_worker(
            name, config_text, fds, lifeline_fd, user=user, group=group, syslog=syslog, forkserver=forkserver
        )
    )
