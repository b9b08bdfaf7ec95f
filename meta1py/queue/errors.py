"""The one exception the queue storage layer raises for environment failures."""

from __future__ import annotations

import errno as _errno

__all__ = ["QueueStorageError"]


class QueueStorageError(Exception):
    """The queue could not be written or synced: disk full, I/O error, permissions.

    This is an environment error (style guide §5): smtps answers 452 4.3.1 when :attr:`disk_full`
    is true and 451 4.3.0 otherwise; qmgr defers. Whatever raised it left nothing half-visible: a
    failed envelope batch is rolled back, a failed content file is the caller's to ``abort()``.

    Attributes:
        errno: the OS error number when one is known (``ENOSPC``, ``EIO``...), else ``None``.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def disk_full(self) -> bool:
        """True when the failure was lack of space (or quota)."""
        return self.errno in (_errno.ENOSPC, _errno.EDQUOT)
