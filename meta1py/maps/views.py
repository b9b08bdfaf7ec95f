"""One map out of several: sequences of maps, and a format's map over any table (pure).

A map option in meta1.conf names one map or a list of them (``access = { /etc/meta1/access.local,
cdb:/etc/meta1/access };``): a *sequence*. A sequence answers each exact key from its first member
that has the key; the format's key order then runs over the sequence as over one map. So a more
specific key in a later member still beats a less specific one in an earlier member, exactly as
if the members were one file in which the earlier member's lines win over the later's for the
same key (Postfix's lists of tables look each table up in turn with the whole key order; meta1py's
answer is the one a single merged file would give).

* :class:`SequenceTable`: the members in order, as one :class:`~meta1py.maps.source.Table`;
* :class:`LiveTable`: a text map that follows its file (the current version of a
  :class:`~meta1py.maps.source.ReloadingMap`), as a table;
* :class:`AccessView`, :class:`RoutesView`, :class:`AliasesView`: a format's map class over any
  table of its values (a compiled map, a sequence), so that the code that uses an
  :class:`~meta1py.maps.access.AccessMap` (``lookup(tag, subject)``), a
  :class:`~meta1py.maps.routes.Routes` or an :class:`~meta1py.maps.aliases.Aliases` works on them
  unchanged;
* :func:`open_member`: one member (a text file or a compiled file) as a table of a format;
* :class:`ParsedSource`, :class:`UnansweredTable`, :class:`AccessSource`: members that must be
  asked and waited for (a socketmap server): the access map fetched key by key before a decision
  (:meth:`AccessSource.snapshot`), and what such a member is in a synchronous view (a temporary
  failure for every key).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence, Sized
from typing import Any, Generic, Literal, TypeVar

from meta1py.maps.access import AccessMap, parse_access
from meta1py.maps.access import Value as AccessValue
from meta1py.maps.aliases import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECIPIENTS, Aliases, parse_aliases
from meta1py.maps.compiled import COMPILED_TYPES, CompiledMap, open_compiled
from meta1py.maps.errors import BrokenEntry, MapError
from meta1py.maps.routes import Route, Routes, parse_routes
from meta1py.maps.source import MapSource, ReloadingMap, Table

__all__ = [
    "AccessSource",
    "AccessView",
    "AliasesTable",
    "AliasesView",
    "LiveTable",
    "ParsedSource",
    "RoutesView",
    "SequenceTable",
    "UnansweredTable",
    "open_member",
]

V = TypeVar("V")

log = logging.getLogger("meta1py.maps")

#: The formats a map option can name (the ones smar reads).
Format = Literal["access", "routes", "aliases"]


def _size(table: object) -> int:
    """The number of entries of a table that knows it (0 for one that does not)."""
    return len(table) if isinstance(table, Sized) else 0


class SequenceTable(Table[V]):
    """Several tables as one: each key is answered by the first member that has it.

    Args:
        members: the tables, first wins.
    """

    def __init__(self, members: Sequence[Table[V]]) -> None:
        self.members = tuple(members)

    def get(self, key: str) -> V | None:
        """The value of ``key`` in the first member that has it, or None."""
        for member in self.members:
            found = member.get(key)
            if found is not None:
                return found
        return None

    def __len__(self) -> int:
        return sum(_size(m) for m in self.members)

    @property
    def errors(self) -> tuple[MapError, ...]:
        """The bad lines of every member (text members have them)."""
        return tuple(e for m in self.members for e in getattr(m, "errors", ()))


class LiveTable(Table[V]):
    """The current version of a text map that follows its file, as a table.

    Args:
        reloading: the map (:class:`~meta1py.maps.source.ReloadingMap`) of a format's table.
    """

    def __init__(self, reloading: ReloadingMap[Any]) -> None:
        self.reloading = reloading
        self.path = reloading.path

    def get(self, key: str) -> V | None:
        """The value of ``key`` in the newest good version of the file."""
        found: V | None = self.reloading.current.get(key)
        return found

    async def lookup(self, key: str, *, deadline: float) -> V | None:
        """:class:`~meta1py.maps.source.MapSource` over the file (it answers at once)."""
        return self.get(key)

    def __len__(self) -> int:
        return len(self.reloading.current)

    @property
    def errors(self) -> tuple[MapError, ...]:
        """The bad lines of the version in use."""
        found: tuple[MapError, ...] = getattr(self.reloading.current, "errors", ())
        return found


class AccessView(AccessMap):
    """An :class:`~meta1py.maps.access.AccessMap` over any table of access values (a compiled
    map, a sequence): ``get``, ``lookup(tag, subject)``, ``errors`` and ``len()`` as the text map
    has them.

    Args:
        table: where the values are.
        errors: bad lines to report with it (a text member's; a compiled map has none).
    """

    def __init__(self, table: Table[AccessValue], errors: tuple[MapError, ...] = ()) -> None:
        super().__init__({}, errors)
        self.table = table

    def __len__(self) -> int:
        return _size(self.table)

    def get(self, key: str) -> AccessValue | None:
        """The value of exactly ``key`` (``tag:key``), or None."""
        return self.table.get(key)


class RoutesView(Routes):
    """A :class:`~meta1py.maps.routes.Routes` over any table of routes (see :class:`AccessView`)."""

    def __init__(self, table: Table[Route | BrokenEntry], errors: tuple[MapError, ...] = ()) -> None:
        super().__init__({}, {}, None, errors)
        self.table = table

    def __len__(self) -> int:
        return _size(self.table)

    def get(self, key: str) -> Route | BrokenEntry | None:
        """The route of exactly ``key`` (``domain``, ``.domain``, ``*``), or None."""
        return self.table.get(key)


class AliasesView(Aliases):
    """An :class:`~meta1py.maps.aliases.Aliases` over any table of alias targets (a compiled
    map, a sequence); expansion follows chains across the whole table."""

    def __init__(
        self,
        table: Table[tuple[str, ...] | BrokenEntry],
        errors: tuple[MapError, ...] = (),
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_recipients: int = DEFAULT_MAX_RECIPIENTS,
    ) -> None:
        super().__init__({}, max_depth=max_depth, max_recipients=max_recipients, errors=errors)
        self.table = table

    def __len__(self) -> int:
        return _size(self.table)

    def get(self, key: str) -> tuple[str, ...] | None:
        """The targets of exactly ``key`` (a lower-case name), or None (also when it is broken)."""
        found = self.table.get(key)
        return None if found is None or isinstance(found, BrokenEntry) else found

    def broken_entry(self, key: str) -> BrokenEntry | None:
        """Why ``key`` cannot be expanded, when its entry is broken."""
        found = self.table.get(key)
        return found if isinstance(found, BrokenEntry) else None

    def source_of(self, key: str) -> str:
        """The file of the member that answers ``key`` (a text file, or a compiled ``FILE.cdb``):
        an alias's commands and files run as that file's owner."""
        members = self.table.members if isinstance(self.table, SequenceTable) else (self.table,)
        for member in members:
            if member.get(key) is not None:
                return str(getattr(member, "path", ""))
        return ""


def _text_table(
    fmt: Format, path: str, check_interval_s: float, clock: Callable[[], float]
) -> LiveTable[Any]:
    parse: Callable[[str, str], Any]
    if fmt == "access":
        parse = functools.partial(parse_access, strict=False)
    elif fmt == "routes":
        parse = functools.partial(parse_routes, strict=False)
    else:
        parse = _aliases_table
    return LiveTable(ReloadingMap(path, parse, check_interval_s=check_interval_s, clock=clock))


class AliasesTable(Table[tuple[str, ...] | BrokenEntry]):
    """A parsed aliases file as one table of targets and broken entries (a member of a sequence;
    the compiled form holds the same)."""

    def __init__(self, aliases: Aliases) -> None:
        self.aliases = aliases
        self.errors = aliases.errors

    def get(self, key: str) -> tuple[str, ...] | BrokenEntry | None:
        return self.aliases.get(key) or self.aliases.broken_entry(key)

    def __len__(self) -> int:
        return len(self.aliases)


def _aliases_table(text: str, name: str) -> AliasesTable:
    return AliasesTable(parse_aliases(text, name, strict=False))


def open_member(
    fmt: Format,
    kind: str,
    path: str | os.PathLike[str],
    *,
    check_interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> LiveTable[Any] | CompiledMap[Any]:
    """One member of a map option as a table of ``fmt``'s values (a BrokenEntry for a bad line).

    Args:
        fmt: ``access``, ``routes`` or ``aliases``.
        kind: ``text`` (the file, re-read when it changes) or a compiled type (``cdb``: the file
            ``meta1 makemap`` wrote for ``path``, reopened when it is replaced).
        path: the text map (for a compiled type too: the compiled file is ``path.cdb``).
        check_interval_s: how often the file is checked for a change.
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        MapErrors: the file cannot be read (or is not a compiled ``fmt`` map).
    """
    name = os.fspath(path)
    if kind in COMPILED_TYPES:
        return open_compiled(fmt, name, kind=kind, check_interval_s=check_interval_s, clock=clock)
    if kind != "text":
        raise ValueError(f"not a file map type: {kind!r}")
    return _text_table(fmt, name, check_interval_s, clock)


class ParsedSource(Generic[V]):
    """A source of value texts (a socketmap server) as a source of a format's values.

    A text that does not parse is a :class:`BrokenEntry` under its key (the mail that needs it
    waits), never an exception.

    Args:
        source: answers ``await source.lookup(key, deadline=...)`` with a text or None; raises
            :class:`~meta1py.maps.errors.MapTempError`.
        parse: the format's value parser, ``parse(key, text)``; raises ValueError.
        name: the source as meta1.conf names it, for errors.
    """

    def __init__(self, source: MapSource[str], parse: Callable[[str, str], V], name: str) -> None:
        self.source = source
        self.name = name
        self._parse = parse

    async def lookup(self, key: str, *, deadline: float) -> V | BrokenEntry | None:
        """The parsed value of ``key``, None when the source has none.

        Raises:
            MapTempError: the source cannot answer now.
        """
        text = await self.source.lookup(key, deadline=deadline)
        if text is None:
            return None
        try:
            return self._parse(key, text)
        except ValueError as exc:
            log.warning(
                "map %s: %s: bad value %r: %s (mail that needs it is deferred)", self.name, key, text, exc
            )
            return BrokenEntry(MapError(self.name, 0, f"{key}: {exc}"))


class UnansweredTable(Table[BrokenEntry]):
    """A source that answers only asynchronously (a socketmap) in a synchronous view: every key
    is a :class:`BrokenEntry` (a temporary failure), never "no entry"."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._broken = BrokenEntry(MapError(name, 0, "this map answers only through an asynchronous lookup"))

    def get(self, key: str) -> BrokenEntry:
        """Always the broken entry."""
        return self._broken


class AccessSource:
    """The access map as smar fetches it before it decides: :meth:`snapshot` returns an
    :class:`~meta1py.maps.access.AccessMap` with the keys it was asked for.

    Args:
        view: the synchronous map (text and compiled members answer at once).
        members: the members in order as sources, when one of them must be asked (a socketmap);
            None when :attr:`view` answers everything.
    """

    def __init__(
        self, view: Callable[[], AccessMap], members: Sequence[MapSource[AccessValue]] | None = None
    ) -> None:
        self._view = view
        self.members = tuple(members) if members is not None else None

    async def snapshot(self, keys: Sequence[str], *, deadline: float) -> AccessMap:
        """An access map that holds every one of ``keys`` that a member has (the first member
        that has a key wins).

        Without members to ask it is the synchronous map itself (which holds every key).

        Args:
            keys: ``tag:key`` keys, as :func:`meta1py.maps.access.keys_for` makes them.
            deadline: when to give up, on the caller's clock (``trio.current_time()``).

        Raises:
            MapTempError: a member cannot answer now (no later member is asked).
        """
        if self.members is None:
            return self._view()
        found: dict[str, AccessValue] = {}
        wanted = list(dict.fromkeys(keys))
        for member in self.members:
            missing = [k for k in wanted if k not in found]
            for key in missing:
                value = await member.lookup(key, deadline=deadline)
                if value is not None:
                    found[key] = value
            if len(found) == len(wanted):
                break
        return AccessMap(found)
