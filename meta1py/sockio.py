"""Socket reads and writes for the plaintext fast paths of smtps and smtpc.

Replies and command groups are small and the socket buffer almost always has room for them, so one
``os.write`` usually does the whole job without trio's stream machinery (a third of smtps's CPU per
message when it was profiled). Whatever does not fit goes the slow way, through the trio stream.
"""

from __future__ import annotations

import os

import trio

__all__ = ["read_when_ready", "write_nowait"]

READ_BYTES = 65536


async def read_when_ready(fd: int) -> bytes:
    """Wait until the non-blocking socket ``fd`` is readable and read it (``b""`` at EOF).

    (smtps inlines this loop in ``Session.receive``: one coroutine frame fewer per idle session.)

    Raises:
        trio.BrokenResourceError: the connection is broken.
    """
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, READ_BYTES)
        except BlockingIOError:
            continue  # spurious wake-up
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc


def write_nowait(fd: int, data: bytes) -> bytes:
    """Write as much of ``data`` as the non-blocking socket ``fd`` takes now; return the rest.

    Returns:
        The part not written (``b""`` when everything went).

    Raises:
        OSError: the connection is broken (never ``BlockingIOError``: a full buffer returns
            ``data`` unchanged).
    """
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        return data
    return data[sent:] if sent < len(data) else b""
