"""Map file formats and lookup algorithms used by smar (aliases, routes).

Everything here is pure: files are read with plain ``open``/``os.stat`` and
nothing imports trio or socket, so parsing and lookups are unit-tested as
plain functions.

The shared pieces live in this module:

* :class:`MapError` / :class:`MapErrors`: parse errors rendered as
  ``path:line: message``. A parser collects every error of a file before
  raising, so an operator sees them all at once.
* :class:`ReloadingMap`: holds a parsed map and re-reads its file when the
  file changes, keeping the old version when the new one does not parse.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MapError:
    """One problem found while parsing a map file.

    Attributes:
        path: the file name as given to the parser.
        line: 1-based physical line number.
        message: what is wrong, for an operator.
    """

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class MapErrors(Exception):
    """A map file has errors; ``errors`` lists all of them in file order."""

    def __init__(self, errors: list[MapError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


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


class ReloadingMap(Generic[T]):
    """A parsed map that follows changes to its file.

    The file is stat()ed at most once per ``check_interval_s`` when
    :attr:`current` is read. When its inode, size or mtime changed it is read
    and parsed again; if the new text has errors they are logged and the old
    version stays in use (a half-edited file must not take routing down).

    The first load happens in the constructor and raises on errors, so a
    broken map is a startup (configuration) failure, not a silent empty map.

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
        self.path = os.fspath(path)
        self._parse = parse
        self._check_interval_s = check_interval_s
        self._clock = clock
        try:
            key = _file_key(self.path)
        except OSError as e:
            raise MapErrors([MapError(self.path, 0, f"cannot read map: {e}")]) from e
        self._value: T = parse(read_map_file(self.path), self.path)
        self._key: _FileKey | None = key
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

    def _maybe_reload(self) -> None:
        try:
            key = _file_key(self.path)
        except OSError as e:
            if self._key is not None:
                log.warning("map %s: %s; keeping the previous version", self.path, e)
                self._key = None
            return
        if key == self._key:
            return
        # Remember the key even if parsing fails, so that a broken file is
        # reported once rather than on every lookup.
        self._key = key
        try:
            value = self._parse(read_map_file(self.path), self.path)
        except MapErrors as e:
            for err in e.errors:
                log.error("%s", err)
            log.error("map %s not reloaded; keeping the previous version", self.path)
            return
        self._value = value
        self.generation += 1
        log.info("map %s reloaded", self.path)
