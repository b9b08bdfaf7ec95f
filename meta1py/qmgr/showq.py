"""qmgr's showq service: the queue listing for local users who may not read the queue themselves.

The exchange and the rule for who may ask are in :mod:`meta1py.queue.showq`. qmgr binds
``queue_directory/public/showq`` itself at start (it owns ``public/``, mode 0711, which mcp makes;
a restarted qmgr replaces the socket of the one before), mode 0666, and answers each connection
in a task of its own, :data:`MAX_CONNECTIONS` at once. The caller's uid comes from the kernel
(``SO_PEERCRED``). The listing is read from the envelope store in a thread, read-only, exactly as
``meta1 queue list`` reads it as root, so both print the same.

A socket that cannot be bound (a path too long for a Unix socket, a directory that is not there)
is logged as a warning and leaves qmgr running: only root and the queue's owner can list the
queue then.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import struct

import trio

from meta1py.conf import Config
from meta1py.qmgr.listening import serve_limited
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.listing import queue_listing
from meta1py.queue.showq import (
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT_S,
    ShowqError,
    encode_error,
    encode_listing,
    may_list,
    parse_request,
    showq_socket_path,
)

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 4
#: A listing of 100,000 messages is some 20 MB: a reader gets this long to take it.
SEND_TIMEOUT_S = 60.0
SOCKET_MODE = 0o666
_UCRED = struct.Struct("3i")


def bind_showq(path: os.PathLike[str] | str) -> trio.SocketListener:
    """Listen on the Unix socket ``path`` (replacing a stale one), mode 0666."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(os.fspath(path))
        os.chmod(path, SOCKET_MODE)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of the Unix socket (from the kernel)."""
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def _login_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


async def answer(stream: trio.SocketStream, cfg: Config) -> bytes:
    """Read the request on ``stream`` and build qmgr's answer to it."""
    uid = peer_uid(stream.socket)
    request = bytearray()
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        while b"\n" not in request and len(request) < MAX_REQUEST_BYTES:
            data = await stream.receive_some(MAX_REQUEST_BYTES - len(request))
            if not data:
                break
            request += data
    try:
        form = parse_request(bytes(request).partition(b"\n")[0])
        if not may_list(uid, cfg.authorized_mailq_users, os.geteuid(), _login_name):
            log.info("showq: uid %d may not list the queue (authorized_mailq_users)", uid)
            raise ShowqError("denied", "you may not list the queue (authorized_mailq_users)")
        listing = await trio.to_thread.run_sync(queue_listing, cfg.queue_directory, form)
    except ShowqError as exc:
        return encode_error(exc)
    except QueueStorageError as exc:
        log.warning("showq: cannot read the queue: %s", exc)
        return encode_error(ShowqError("tempfail", f"the queue cannot be read now: {exc}"))
    return encode_listing(listing)


async def serve_showq(cfg: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer listing requests on ``queue_directory/public/showq`` until cancelled."""
    path = showq_socket_path(cfg.queue_directory)
    try:
        listener = bind_showq(path)
    except OSError as exc:
        log.warning(
            "showq: cannot listen on %s: %s; only root and the queue's owner can list the queue",
            path,
            exc.strerror or exc,
        )
        task_status.started()
        return

    async def one(stream: trio.SocketStream) -> None:
        reply = await answer(stream, cfg)
        with trio.move_on_after(SEND_TIMEOUT_S):
            await stream.send_all(reply)

    await serve_limited(listener, one, MAX_CONNECTIONS, "showq", task_status=task_status)
