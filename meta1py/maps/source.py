"""Map sources: where the entries of a map come from.

A map is a *format* (aliases, routes, tls_policy: how keys are tried and what a value means) over a
*source* (where the entries are kept). The format owns the lookup order -- ``example.com``, then
``.example.com``, ``.com``, then ``*`` -- and asks its source for one exact key at a time, so a
source only answers "the value of this key, or none".

:class:`MapSource` is that interface: ``await source.lookup(key, deadline=...)``. A source may do
I/O (a database, a directory server) and may fail temporarily; it then raises
:class:`~meta1py.maps.errors.MapTempError`, which the caller turns into a temporary failure. A
source other than a file is built with the format's value parser (e.g.
:func:`meta1py.maps.routes.parse_route`) so that it yields parsed values.

The file source is the first member, in two pieces:

* :class:`FileSource`: the file itself -- its text, read whole into memory, and whether it changed
  since it was last read (inode, size, mtime);
* :class:`ReloadingMap`: the parsed file (a format's table, e.g.
  :class:`meta1py.maps.routes.Routes`), re-read when the file changed, keeping the old version when
  the new one does not parse.

The file maps are also read synchronously: :attr:`ReloadingMap.current` is the in-memory table, and
the callers that look keys up synchronously today (smar's alias expansion and routing, smtpc's
tls_policy) use it. :meth:`ReloadingMap.lookup` is the same table behind the async interface.

Nothing here imports trio or socket: deadlines are plain numbers on the caller's clock (smar and
smtpc use ``trio.current_time()``), and the file source never blocks for long.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from meta1py.maps.errors import MapError, MapErrors

__all__ = ["FileSource", "MapSource", "ReloadingMap", "Table", "first_entry", "lookup_first", "read_map_file"]

# The name the reload messages have always been logged under.
log = logging.getLogger("meta1py.maps")

T = TypeVar("T")
V = TypeVar("V")
V_co = TypeVar("V_co", covariant=True)


class MapSource(Protocol[V_co]):
    """Where a map's entries come from (see the module docstring)."""

    async def lookup(self, key: str, *, deadline: float) -> V_co | None:
        """The value of exactly ``key`` (as the format normalises it), or None when there is none.

        Args:
            key: an exact key: ``example.com``, ``.example.com``, ``*``, ``[host]:port``, ``alice``.
            deadline: when the answer is no longer useful, on the caller's clock
                (``trio.current_time()``).

        Raises:
            MapTempError: the source cannot answer now.
        """
        ...


class Table(Protocol[V_co]):
    """A parsed map held in memory, with exact-key access (what a format's parser returns).

    The formats' tables name it as a base class (``class Routes(Table[Route])``): matched only by
    structure, mypy would widen a union of value types such as ``Route`` to ``object``.
    """

    def get(self, key: str) -> V_co | None:
        """The value of exactly ``key``, or None."""
        ...


def first_match(table: Table[V], keys: Iterable[str]) -> tuple[str, V] | None:
    """The first of ``keys`` that ``table`` has, with its value (the synchronous, in-memory
    lookup; ``meta1 map query -v`` and ``meta1 explain`` show the key)."""
    for key in keys:
        found = table.get(key)
        if found is not None:
            return key, found
    return None


def first_entry(table: Table[V], keys: Iterable[str]) -> V | None:
    """The value of the first of ``keys`` that ``table`` has (see :func:`first_match`)."""
    match = first_match(table, keys)
    return None if match is None else match[1]


async def lookup_first(source: MapSource[V], keys: Iterable[str], *, deadline: float) -> V | None:
    """The value of the first of ``keys`` that ``source`` has (one lookup per key, in order).

    Raises:
        MapTempError: from the source; no later key is tried.
    """
    for key in keys:
        found = await source.lookup(key, deadline=deadline)
        if found is not None:
            return found
    return None


def read_map_file(path: str | os.PathLike[str]) -> str:
    """Read a map file as UTF-8 text.

    Raises:
        MapErrors: the file cannot be read or is not UTF-8 (line 0).
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MapErrors([MapError(name, 0, f"cannot read map: {e}")]) from e


_FileKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def _file_key(path: str) -> _FileKey:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileSource:
    """A map file: its text, read whole, and whether it changed since it was last read.

    A change is a different inode (the file was replaced, as editors do), size or mtime.

    Args:
        path: the map file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._key: _FileKey | None = None

    def read(self) -> str:
        """Read the file and remember its version.

        The version is remembered even when the caller then finds the text broken, so that a
        broken file is reported once per change rather than on every check.

        Raises:
            MapErrors: the file cannot be stat()ed, read, or is not UTF-8 (line 0).
        """
        try:
            key = _file_key(self.path)
        except OSError as e:
            raise MapErrors([MapError(self.path, 0, f"cannot read map: {e}")]) from e
        self._key = key
        return read_map_file(self.path)

    def changed(self) -> bool:
        """Whether the file differs from the version last read.

        Raises:
            OSError: the file cannot be stat()ed (it is gone or unreadable); when it comes back it
                counts as changed.
        """
        try:
            key = _file_key(self.path)
        except OSError:
            self._key = None
            raise
        return key != self._key


class ReloadingMap(Generic[T]):
    """A parsed map file that follows changes to the file.

    The file is stat()ed at most once per ``check_interval_s`` when :attr:`current` is read. When its
    inode, size or mtime changed it is read and parsed again.

    Bad lines never stop the MTA: the workers pass a parser with ``strict=False``, which keeps the
    good lines and lists the bad ones in the value's ``errors`` (logged here, at the first load and
    at each reload, each as ``path:line: message``); a bad line whose key could be read makes
    lookups of that key fail temporarily (:class:`~meta1py.maps.errors.BrokenEntry`). A parser
    that raises :class:`MapErrors` (a strict one) keeps the old version in use on reload.

    The first load happens in the constructor: a file that cannot be read at all is a start-up
    (configuration) failure, not a silent empty map (``meta1 check-config`` reports both).

    When ``T`` is a :class:`Table` of values ``V``, the map is also a :class:`MapSource` of ``V``
    (see :meth:`lookup`).

    Args:
        path: the map file.
        parse: ``parse(text, path) -> T``; raises :class:`MapErrors`.
        check_interval_s: minimum time between two stat() calls.
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        MapErrors: the initial file cannot be read or parsed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[str, str], T],
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = FileSource(path)
        self.path = self.source.path
        self._parse = parse
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._value: T = parse(self.source.read(), self.path)
        self._log_errors(self._value)
        self._gone = False  # the file could not be stat()ed at the last check (logged once)
        self._checked_at = clock()
        #: How many times a changed file was loaded successfully (for tests and logs).
        self.generation = 0

    @property
    def current(self) -> T:
        """The newest version of the map that parsed without errors."""
        now = self._clock()
        if now - self._checked_at >= self._check_interval_s:
            self._checked_at = now
            self._maybe_reload()
        return self._value

    async def lookup(self: ReloadingMap[Table[V]], key: str, *, deadline: float) -> V | None:
        """:class:`MapSource` over the file: the value of ``key`` in :attr:`current`.

        Never raises :class:`~meta1py.maps.errors.MapTempError` (a file that went away or broke
        leaves the previous version in use); ``deadline`` is not needed.
        """
        return self.current.get(key)

    def _maybe_reload(self) -> None:
        try:
            changed = self.source.changed()
        except OSError as e:
            if not self._gone:
                log.warning("map %s: %s; keeping the previous version", self.path, e)
                self._gone = True
            return
        self._gone = False
        if not changed:
            return
        try:
            value = self._parse(self.source.read(), self.path)
        except MapErrors as e:
            for err in e.errors:
                log.error("%s", err)
            log.error("map %s not reloaded; keeping the previous version", self.path)
            return
        self._value = value
        self.generation += 1
        log.info("map %s reloaded", self.path)
        self._log_errors(value)

    def _log_errors(self, value: T) -> None:
        errors = getattr(value, "errors", ())
        for err in errors:
            log.error("%s (line ignored; mail that needs its key is deferred until it is fixed)", err)
        if errors:
            log.error("map %s: %d bad line(s); the other lines are in use", self.path, len(errors))
