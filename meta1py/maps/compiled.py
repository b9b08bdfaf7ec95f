"""Compiled maps: a map file turned into an indexed file by ``meta1 makemap`` (Postfix's postmap).

A text map is read whole into memory and parsed when smar starts and whenever it changes: fine
for thousands of lines, too slow and too big for a million (about 6 s and 140 MB for a million
access entries). ``meta1 makemap access /etc/meta1/access`` checks every line of the file with the
format's strict rules and writes ``/etc/meta1/access.cdb``; ``access = cdb:/etc/meta1/access;``
makes smar read that instead. The format is cdb (:mod:`meta1py.maps.cdb`), chosen by measurement
(docs/performance.md, "Compiled maps: the format, measured").

What a compiled file holds: one record per entry, the key normalised as the format's ``get()``
takes it (``from:alice@example.org``, ``.example.net``, ``postmaster``), the value as text in the
format's own syntax (``QUICK:OK``, ``smtp:[192.0.2.10]:2525``, ``alice, bob@example.net``), and
three records of its own under keys no map can have: the format's name (a routes file used as an
access map is refused at start), the number of entries, and a filter of the keys.

The key filter is a Bloom filter (16 bits per entry, two probes from CRC-32s of the key and of the
key reversed: about 1.4 % false positives), read into memory when the file is opened (2 MB for a
million entries). Most keys an access check tries are not in the map (``from:alice@``,
``from:.example.org``, ``from:.org``...); the filter answers those without computing the cdb hash
in Python or reading the file, which makes a lookup of a whole key sequence four to seven times
faster (docs/performance.md). The file stays a standard cdb file: the filter is one more record,
and tinycdb's ``cdb -q`` finds every entry.

* :class:`CompiledTable`: the raw value strings, a :class:`~meta1py.maps.source.Table` of
  ``str``; the file is reopened when it is replaced (another inode, size or mtime; checked at most
  once a second, as :class:`~meta1py.maps.source.ReloadingMap` does for text files).
* :class:`CompiledMap`: the values parsed by the format's value parser at lookup time (the last
  few thousand parsed values are kept). A value that does not parse, or a damaged file, gives a
  :class:`~meta1py.maps.errors.BrokenEntry` under that key (a temporary failure for the mail that
  needs it) and a logged warning, never an exception.
* :func:`compile_map`: the writer side, used by ``meta1 makemap``.

Compiled formats: ``access``, ``routes``, ``aliases`` (:data:`COMPILED_FORMATS`). ``tls_policy``
is smtpc's, small by nature, and stays a text file.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Generic, TypeVar
from zlib import crc32

from meta1py.maps.access import access_entries, parse_access_value
from meta1py.maps.aliases import alias_entries, parse_alias_targets
from meta1py.maps.cdb import CdbFormatError, CdbReader, CdbWriter
from meta1py.maps.errors import BrokenEntry, MapError, MapErrors
from meta1py.maps.routes import parse_route, route_entries, route_text
from meta1py.maps.source import Table

__all__ = [
    "COMPILED_FORMATS",
    "COMPILED_TYPES",
    "CompiledMap",
    "CompiledTable",
    "MapFormat",
    "compile_map",
    "compiled_path",
    "open_compiled",
]

log = logging.getLogger("meta1py.maps")

V = TypeVar("V")

#: The compiled map types (``TYPE:PATH`` in meta1.conf, ``makemap -t``) and their file suffixes.
COMPILED_TYPES: dict[str, str] = {"cdb": ".cdb"}

# Keys no map can have (they start with NUL): the format's name and the number of entries.
_FORMAT_KEY = b"\x00meta1:format"
_COUNT_KEY = b"\x00meta1:entries"
_FILTER_KEY = b"\x00meta1:filter"

#: Bits of the key filter per entry (rounded up to a power of two in all).
FILTER_BITS_PER_KEY = 16
_FILTER_VERSION = 1
_FILTER_MIN_LOG2 = 13  # 1 KiB


def _filter_size(entries: int) -> int:
    """log2 of the number of bits of the filter for up to ``entries`` keys."""
    return max(_FILTER_MIN_LOG2, (FILTER_BITS_PER_KEY * max(entries, 1) - 1).bit_length())


def _filter_record(log2: int, bits: bytearray) -> bytes:
    return bytes((_FILTER_VERSION, log2)) + bits


def _filter_of(record: bytes | None) -> tuple[bytes, int] | None:
    """The filter's bits and mask from its record; None when there is none or it is not one this
    version knows (lookups then go to the file every time)."""
    if record is None or len(record) < 2 or record[0] != _FILTER_VERSION:
        return None
    log2 = record[1]
    bits = record[2:]
    if log2 < 3 or len(bits) != 1 << (log2 - 3):
        return None
    return bits, (1 << log2) - 1


@dataclass(frozen=True)
class MapFormat(Generic[V]):
    """What compiling and reading one map format needs.

    Attributes:
        name: ``access``, ``routes``, ``aliases``.
        entries: ``entries(text, path, errors)`` yields ``(line, key, value or BrokenEntry)``
            (the format's parser, one entry at a time).
        text_of: a value as the compiled file keeps it (``parse(key, text_of(v)) == v``).
        parse: ``parse(key, text)``: the value of a compiled entry; raises ValueError.
    """

    name: str
    entries: Callable[[str, str, list[MapError]], Iterator[tuple[int, str, V | BrokenEntry]]]
    text_of: Callable[[V], str]
    parse: Callable[[str, str], V]


def _alias_text(targets: tuple[str, ...]) -> str:
    return ", ".join(targets)


def _parse_route(_key: str, text: str) -> Any:
    return _parse_route_cached(text)


_parse_route_cached = functools.lru_cache(maxsize=1024)(parse_route)

#: The formats that can be compiled.
COMPILED_FORMATS: dict[str, MapFormat[Any]] = {
    "access": MapFormat("access", access_entries, str, parse_access_value),
    "routes": MapFormat("routes", route_entries, route_text, _parse_route),
    "aliases": MapFormat("aliases", alias_entries, _alias_text, lambda _key, text: parse_alias_targets(text)),
}


def compiled_path(source: str | os.PathLike[str], kind: str = "cdb") -> str:
    """The compiled file that ``meta1 makemap`` writes for the text map ``source``
    (``/etc/meta1/access`` -> ``/etc/meta1/access.cdb``)."""
    return os.fspath(source) + COMPILED_TYPES[kind]


def compile_map(
    fmt: MapFormat[Any],
    text: str,
    path: str,
    out: BinaryIO,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, list[MapError]]:
    """Write the compiled form of a map's ``text`` to ``out`` (a binary file at position 0).

    Every line is checked with the format's strict rules. Writing stops at the first error but
    checking goes on, so that every bad line is reported; the caller then throws the file away.

    Args:
        fmt: the format (:data:`COMPILED_FORMATS`).
        text: the map file's text.
        path: its name, for the errors.
        out: where the cdb file goes.
        progress: called now and then with the number of the line reached.

    Returns:
        The number of entries written and every error (in line order; empty: the file is good).
    """
    errors: list[MapError] = []
    writer = CdbWriter(out)
    writer.add(_FORMAT_KEY, fmt.name.encode())
    log2 = _filter_size(text.count("\n") + 1)  # no more entries than lines
    bits, mask = bytearray(1 << (log2 - 3)), (1 << log2) - 1
    texts: dict[int, tuple[Any, bytes]] = {}
    count = 0
    next_report = 0
    for line, key, value in fmt.entries(text, path, errors):
        if progress is not None and line >= next_report:
            progress(line)
            next_report = line + 10_000
        if errors:
            continue  # checking only, from the first error on
        if isinstance(value, BrokenEntry):  # its error is in errors already
            continue
        data = key.encode()
        # Most entries share a few value objects (the parsers cache them): their text once each.
        # The value is kept with its text, so its id() cannot be reused by another object.
        known = texts.get(id(value))
        if known is None or known[0] is not value:
            if len(texts) >= 4096:  # values that are all different (aliases): no use keeping them
                texts.clear()
            known = texts[id(value)] = (value, fmt.text_of(value).encode())
        writer.add(data, known[1])
        i = crc32(data) & mask  # the key filter (see the module docstring)
        bits[i >> 3] |= 1 << (i & 7)
        i = crc32(data[::-1]) & mask
        bits[i >> 3] |= 1 << (i & 7)
        count += 1
    if not errors:
        writer.add(_COUNT_KEY, str(count).encode())
        writer.add(_FILTER_KEY, _filter_record(log2, bits))
        writer.finish()
    errors.sort(key=lambda e: e.line)
    return count, errors


def _open_reader(path: str, fmt: str) -> tuple[CdbReader, int, tuple[bytes, int] | None]:
    """Open a compiled file and check that it holds ``fmt``.

    Raises:
        MapErrors: it cannot be opened, is no cdb file or holds another format (line 0).
    """
    try:
        reader = CdbReader(path)
    except (OSError, CdbFormatError) as exc:
        raise MapErrors([MapError(path, 0, f"cannot open compiled map: {exc}")]) from exc
    try:
        found = reader.get(_FORMAT_KEY)
        count_text = reader.get(_COUNT_KEY)
        key_filter = _filter_of(reader.get(_FILTER_KEY))
    except (OSError, CdbFormatError) as exc:
        reader.close()
        raise MapErrors([MapError(path, 0, f"cannot read compiled map: {exc}")]) from exc
    if found is None or count_text is None or not count_text.isdigit():
        reader.close()
        raise MapErrors([MapError(path, 0, "not a map compiled by meta1 makemap")])
    if found.decode("utf-8", "replace") != fmt:
        reader.close()
        message = f"compiled as a {found.decode('utf-8', 'replace')} map, used as {fmt}"
        raise MapErrors([MapError(path, 0, f"{message}; compile it with: meta1 makemap {fmt} SOURCE")])
    return reader, int(count_text), key_filter


class CompiledTable(Table[str]):
    """The entries of a compiled map file, as the text of their values.

    The file is stat()ed at most once per ``check_interval_s`` when a key is looked up; when it
    is another file (inode), or its size or mtime changed, it is opened again and the old one
    closed. A new file that cannot be used (not a compiled map, another format) is logged and the
    old one stays in use; so does a file that went away.

    Args:
        path: the compiled file (``/etc/meta1/access.cdb``).
        fmt: the format it must hold.
        check_interval_s: minimum time between two stat() calls.
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        MapErrors: the file cannot be opened, or is not a compiled ``fmt`` map (a start-up
            failure, as for a text map that cannot be read).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self.format = fmt
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._reader, self._count, self._filter = _open_reader(self.path, fmt)
        self._version = _version(self._reader.stat)
        self._checked_at = clock()
        self._reported: tuple[int, ...] | None = None  # the version last found unusable (logged once)
        #: How many times a replaced file was opened (for tests and logs).
        self.generation = 0

    def __len__(self) -> int:
        return self._count

    @property
    def mtime_ns(self) -> int:
        """The modification time of the file in use."""
        return self._reader.stat.st_mtime_ns

    def get(self, key: str) -> str | None:
        """The value text of exactly ``key``, or None.

        Raises:
            CdbFormatError: the file is damaged where the key leads.
            OSError: it cannot be read.
            UnicodeDecodeError: the value is not UTF-8 (a damaged file).
        """
        now = self._clock()
        if now - self._checked_at >= self._check_interval_s:
            self._checked_at = now
            self._maybe_reopen()
        data = key.encode()
        if self._filter is not None:
            bits, mask = self._filter
            i = crc32(data) & mask
            if not bits[i >> 3] & (1 << (i & 7)):
                return None
            i = crc32(data[::-1]) & mask
            if not bits[i >> 3] & (1 << (i & 7)):
                return None
        found = self._reader.get(data)
        return None if found is None else found.decode()

    async def lookup(self, key: str, *, deadline: float) -> str | None:
        """:class:`~meta1py.maps.source.MapSource` over the file (it answers at once)."""
        return self.get(key)

    def close(self) -> None:
        """Close the file."""
        self._reader.close()

    def _maybe_reopen(self) -> None:
        try:
            version = _version(os.stat(self.path))
        except OSError as exc:
            if self._reported != ():
                log.warning("map %s: %s; keeping the version in use", self.path, exc)
                self._reported = ()
            return
        if version == self._version or version == self._reported:
            return
        try:
            reader, count, key_filter = _open_reader(self.path, self.format)
        except MapErrors as exc:
            for err in exc.errors:
                log.error("%s", err)
            log.error("map %s not reopened; keeping the version in use", self.path)
            self._reported = version
            return
        old, self._reader, self._count, self._filter = self._reader, reader, count, key_filter
        self._version = _version(reader.stat)
        self._reported = None
        old.close()
        self.generation += 1
        log.info("map %s reopened (%d entries)", self.path, count)


def _version(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class CompiledMap(Table[V | BrokenEntry], Generic[V]):
    """A compiled map's values, parsed by the format's value parser when they are looked up.

    A value that does not parse, or a key whose record cannot be read (a damaged file), is a
    :class:`BrokenEntry` (the mail that needs it waits with a temporary failure) and a logged
    warning; a lookup never raises. The last ``cache_size`` parsed values are kept: a million
    entries share a few dozen distinct values (``OK``, ``REJECT``, a route), and memory stays flat.

    Attributes:
        errors: always empty (``meta1 makemap`` writes no bad line); the attribute the text maps
            have, for the code that logs them.

    Args:
        table: the compiled file.
        fmt: its format (the value parser).
        cache_size: how many parsed values are kept.
    """

    errors: tuple[MapError, ...] = ()

    def __init__(self, table: CompiledTable, fmt: MapFormat[V], *, cache_size: int = 4096) -> None:
        self.table = table
        self.path = table.path
        self._fmt = fmt
        self._parse = functools.lru_cache(maxsize=cache_size)(self._parse_uncached)

    def __len__(self) -> int:
        return len(self.table)

    def get(self, key: str) -> V | BrokenEntry | None:
        """The value of exactly ``key``, or None (see the class docstring)."""
        try:
            text = self.table.get(key)
        except (OSError, ValueError) as exc:  # CdbFormatError and UnicodeDecodeError are ValueErrors
            log.warning("map %s: %r: %s (mail that needs this key is deferred)", self.path, key, exc)
            return BrokenEntry(MapError(self.path, 0, f"{key}: compiled map unreadable: {exc}"))
        if text is None:
            return None
        return self._parse(key, text)

    async def lookup(self, key: str, *, deadline: float) -> V | BrokenEntry | None:
        """:class:`~meta1py.maps.source.MapSource` over the file (it answers at once)."""
        return self.get(key)

    def _parse_uncached(self, key: str, text: str) -> V | BrokenEntry:
        try:
            return self._fmt.parse(key, text)
        except ValueError as exc:
            log.warning(
                "map %s: %s: bad value %r: %s (mail that needs it is deferred)", self.path, key, text, exc
            )
            return BrokenEntry(MapError(self.path, 0, f"{key}: {exc}"))


def open_compiled(
    fmt: str,
    source: str | os.PathLike[str],
    *,
    kind: str = "cdb",
    check_interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> CompiledMap[Any]:
    """The compiled map of ``fmt`` that ``meta1 makemap`` wrote for the text map ``source``.

    Logs a warning when ``source`` is newer than the compiled file (it was edited and not compiled
    again: Postfix says the same).

    Raises:
        MapErrors: the compiled file cannot be opened or is not a compiled ``fmt`` map.
    """
    path = compiled_path(source, kind)
    table = CompiledTable(path, fmt, check_interval_s=check_interval_s, clock=clock)
    try:
        if os.stat(source).st_mtime_ns > table.mtime_ns:
            log.warning(
                "map %s is older than its source %s: run meta1 makemap %s %s", path, source, fmt, source
            )
    except OSError:
        pass  # no source next to it: the compiled file is all there is
    return CompiledMap(table, COMPILED_FORMATS[fmt])
