"""The few Linux system calls the standard library does not wrap, reached through :mod:`ctypes`.

Each wrapper degrades to "unsupported" (False, or a no-op) where the call or the C library is
missing, so callers can treat them as optimisations or as checked preconditions.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

__all__ = [
    "PR_SET_CHILD_SUBREAPER",
    "PR_SET_NAME",
    "PR_SET_PDEATHSIG",
    "prctl",
    "start_writeback",
]

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> Any:
    """The process's C library (``None``: the symbols already loaded), or None if unavailable."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def prctl(option: int, arg: int | bytes) -> bool:
    """``prctl(option, arg, 0, 0, 0)``; True on success."""
    libc = _libc()
    try:
        return libc is not None and int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except AttributeError:
        return False


@functools.cache
def _sync_file_range() -> Any:
    libc = _libc()
    try:
        func = libc.sync_file_range
    except AttributeError:
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func


def start_writeback(fd: int) -> None:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``: start writing the file's dirty pages
    out, without waiting (a hint; a no-op where unsupported)."""
    func = _sync_file_range()
    if func is not None:
        func(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
