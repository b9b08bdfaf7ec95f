"""mcp's fork server: workers forked from one preloaded interpreter, so they share its memory.

Every worker is a Python interpreter with trio, the SMTP core, the RPC layer, cryptography and
dnspython loaded: about 20 MB of private heap each when each is a fresh interpreter. Forked from
one process that imported all of it once (with the garbage collector's objects frozen, so the
collector never writes to those pages), the workers share those pages copy-on-write and each
pays only for what it changes: the MTA's total memory falls by more than half (bench/relay.py
``--workload idle``).

How (``docs/mcp.md``, "How workers are started"):

1. Before its event loop starts, mcp forks the fork server (``ForkServer.start``), which imports
   the workers' code (``preload``), one worker at a time in ``PRELOAD_ORDER`` (smtps first),
   while mcp goes on parsing the config and preparing its directories and sockets. A request
   that comes in meanwhile is served between two workers' imports, so smtps starts as soon as
   its own code is loaded. Once all is loaded, the collector's objects are frozen.
   mcp never forks inside ``trio.run``; the fork server never runs trio: it is a plain loop,
   single-threaded.
2. To start a worker, mcp sends the fork server a request over a private ``SOCK_SEQPACKET``
   socketpair: a JSON object ``{"name", "env", "fds"}`` with the worker's descriptors attached
   (``SCM_RIGHTS``): its RPC or listening sockets, the ready and lifeline pipes and the config
   memfd. Nothing is unpickled or evaluated; the request comes from mcp only.
3. The fork server forks twice. The intermediate process exits at once, so the worker is
   re-parented to mcp, which made itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): the
   worker is mcp's own child, which mcp reaps through a pidfd exactly like an exec'd worker.
   The worker waits until it is re-parented, closes every descriptor it was not given, takes
   the request's environment and the config memfd as stdin, names itself
   (``meta1py: smtps`` in ``ps``), and runs the same ``meta1py.worker.run_worker`` as
   ``python -m meta1py.<name>`` would: privilege drop, parent-death signal, logging, serve.
4. The fork server replies ``{"pid": N}``.

The fork server is a copy of mcp made before mcp reads any network input or binds any socket; it
keeps mcp's privileges (it must start workers that drop to different users) but holds no
descriptor except its socketpair and stdio, and it obeys only mcp. It dies with mcp
(``PR_SET_PDEATHSIG`` and end of file on the socketpair). If it cannot be started or dies,
mcp starts workers as fresh interpreters instead (``spawn.launch_worker``) and logs why.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from meta1py.contract import FDS_ENV, WORKER_NAMES, format_fds
from meta1py.libc import PR_SET_CHILD_SUBREAPER, PR_SET_NAME, prctl

log = logging.getLogger(__name__)

#: Largest request or reply; the config travels in a memfd, so requests are small.
MAX_MESSAGE = 256 * 1024
MAX_FDS = 64
#: How long mcp waits for the fork server's reply before it gives up on it.
REPLY_TIMEOUT_S = 10.0


class ForkServerError(Exception):
    """The fork server could not start a worker (or is gone)."""


#: The order the fork server imports the workers' code in: smtps first, since mcp asks for it
#: first and the first greeting waits for it (meta1py.mcp.main.PRESTART_ORDER).
PRELOAD_ORDER = ("smtps", "smar", "qmgr", "smtpc")


def preload(name: str) -> None:
    """Import worker ``name``'s code (not Lark: workers get the configuration parsed)."""
    importlib.import_module(f"meta1py.{name}.main")


def set_process_title(title: str) -> None:
    """Show ``title`` in ``ps`` (``/proc/self/cmdline``) and as the thread name (``comm``).

    The command line is rewritten in place, within the memory the kernel gave the original
    arguments (``arg_start``..``arg_end`` of ``/proc/self/stat``), padded with NULs; a title
    longer than that area is cut.
    """
    prctl(PR_SET_NAME, title.replace(": ", "-").encode()[:15])
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        # Fields 48 and 49 of proc(5), counted after the ')' that ends field 2.
        start, end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return
    size = end - start
    if start <= 0 or not 2 <= size <= 1 << 20:  # not what the kernel reports: leave it alone
        return
    data = title.encode()[: size - 1]
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)


class ForkServer:
    """mcp's side: the running fork server and its socket."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self.alive = True

    @classmethod
    def start(cls) -> ForkServer | None:
        """Fork the fork server from mcp (before ``trio.run``); None if that is not possible.

        mcp becomes a child subreaper, so that workers forked by the fork server become its own
        children. ``META1_FORKSERVER=0`` in the environment disables the fork server.

        The fork server imports the workers' code itself, after the fork (:func:`preload`): mcp
        goes on preparing directories and sockets meanwhile, and its first spawn request waits
        until the imports are done (a fifth of a second off the time to the first greeting).
        """
        if os.environ.get("META1_FORKSERVER", "1") == "0":
            log.info("fork server disabled by META1_FORKSERVER=0: workers start as fresh interpreters")
            return None
        if threading.active_count() != 1:
            log.warning("fork server not started: mcp already runs threads")
            return None
        if not prctl(PR_SET_CHILD_SUBREAPER, 1):
            log.warning("fork server not started: PR_SET_CHILD_SUBREAPER failed")
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mcp_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the fork server
            status = 1
            try:
                ours.detach()
                # No collections while the workers' code is imported (they would scan the new
                # objects again and again: 6 % of the imports' time); each worker turns the
                # collector back on, and the fork server collects once when all is loaded.
                gc.disable()
                status = _serve(theirs, mcp_pid)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        theirs.close()
        ours.settimeout(REPLY_TIMEOUT_S)
        return cls(pid, ours)

    def spawn(self, name: str, env: dict[str, str], fds: dict[str, int], conf_fd: int) -> int:
        """Start worker ``name`` with ``fds`` (by name), ``env`` and the config memfd; its pid.

        Blocks for the fork server's reply (a few milliseconds: one fork of a preloaded process).

        Raises:
            ForkServerError: the fork server failed or is gone; it is not used again.
        """
        if not self.alive:
            raise ForkServerError("the fork server is gone")
        names = list(fds)
        request = json.dumps({"name": name, "env": env, "fds": names}).encode()
        try:
            socket.send_fds(self._sock, [request], [fds[n] for n in names] + [conf_fd])
            reply = self._sock.recv(MAX_MESSAGE)
        except OSError as exc:
            self.stop()
            raise ForkServerError(f"the fork server does not answer: {exc}") from exc
        if not reply:
            self.stop()
            raise ForkServerError("the fork server is gone")
        try:
            answer = json.loads(reply)
            pid = answer.get("pid")
            error = answer.get("error")
        except (ValueError, AttributeError) as exc:
            self.stop()
            raise ForkServerError(f"bad reply from the fork server: {reply[:100]!r}") from exc
        if not isinstance(pid, int) or pid <= 0:
            self.stop()
            raise ForkServerError(str(error or f"bad reply from the fork server: {reply[:100]!r}"))
        return pid

    def close(self) -> None:
        """Stop using it; it exits on end of file (mcp reaps it with ``reap``)."""
        if self.alive:
            self.alive = False
            self._sock.close()

    def stop(self) -> None:
        """Close its socket, kill it (it holds nothing of value) and reap it."""
        self.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# -- the fork server process ------------------------------------------------------------------


def _close_fds_except(keep: set[int]) -> None:
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _serve(sock: socket.socket, mcp_pid: int) -> int:
    """The fork server's loop: one request, one worker, one reply; returns at end of file."""
    # Imported here: this module is imported before mcp's own heavy imports (see ForkServer.start).
    from meta1py.worker import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != mcp_pid:  # mcp died before the line above
        return 0
    # A Ctrl-C on the terminal is for mcp, which stops the workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _close_fds_except({0, 1, 2, sock.fileno()})
    set_process_title("meta1py: forkserver")
    # Workers' code is imported one worker at a time, and a request that comes in meanwhile is
    # served first: smtps can start while the others' code is still being imported.
    pending = list(PRELOAD_ORDER)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        if pending and not poller.poll(0):
            preload(pending.pop(0))
            if not pending:
                # For copy-on-write sharing: later forks find the objects in the permanent generation.
                gc.collect()
                gc.freeze()
            continue
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
        except InterruptedError:
            continue
        if not message:
            return 0
        try:
            reply: dict[str, Any] = {"pid": _fork_worker(message, fds, sock, mcp_pid)}
        except Exception as exc:  # report it to mcp, which falls back to exec
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())


def _fork_worker(message: bytes, fds: list[int], sock: socket.socket, mcp_pid: int) -> int:
    request = json.loads(message)
    name = request["name"]
    env = request["env"]
    names = request["fds"]
    if name not in WORKER_NAMES:
        raise ValueError(f"unknown worker {name!r}")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env must map strings to strings")
    if not isinstance(names, list) or len(names) + 1 != len(fds):
        raise ValueError("descriptor names do not match the descriptors")
    named = dict(zip(names, fds[:-1], strict=True))
    conf_fd = fds[-1]
    preload(name)  # at once if it is loaded already
    gc.freeze()
    pid_r, pid_w = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        status = 1
        try:
            os.close(pid_r)
            gate_r, gate_w = os.pipe()
            worker = os.fork()
            if worker == 0:
                os.close(gate_w)
                os.close(pid_w)
                _become_worker(name, env, named, conf_fd, sock, gate_r, mcp_pid)
            os.write(pid_w, str(worker).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(pid_w)
    try:
        data = b""
        while chunk := os.read(pid_r, 32):
            data += chunk
    finally:
        os.close(pid_r)
        os.waitpid(intermediate, 0)
    if not data.isdigit():
        raise RuntimeError("the intermediate process failed to fork the worker")
    return int(data)


def _become_worker(
    name: str,
    env: dict[str, str],
    fds: dict[str, int],
    conf_fd: int,
    sock: socket.socket,
    gate_r: int,
    mcp_pid: int,
) -> None:
    """In the forked worker: wait to be mcp's child, set up as an exec'd worker would be, run."""
    status = 1
    try:
        sock.detach()
        # End of file once the intermediate process exited; re-parenting to mcp follows at once.
        while os.read(gate_r, 1):
            pass
        os.close(gate_r)
        while (ppid := os.getppid()) != mcp_pid:
            if ppid == 1 or ppid == os.getpid():  # mcp died meanwhile: nobody to work for
                os._exit(1)
            os.sched_yield()
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        os.dup2(conf_fd, 0)
        os.close(conf_fd)
        _close_fds_except({0, 1, 2, *fds.values()})
        os.environ.clear()
        os.environ.update(env)
        os.environ[FDS_ENV] = format_fds(fds)
        sys.argv = [f"meta1py.{name}"]
        set_process_title(f"meta1py: {name}")
        gc.enable()
        module = importlib.import_module(f"meta1py.{name}.main")
        from meta1py.worker import run_worker

        status = run_worker(name, module.serve, getattr(module, "prepare", None))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
