"""Map specifications in meta1.conf: which maps an option such as smar's ``access`` names.

As in Postfix's main.cf, a map is ``TYPE:NAME``, and a plain path is the text file::

    access = /etc/meta1/access;                         # the text file, re-read when it changes
    access = cdb:/etc/meta1/access;                     # /etc/meta1/access.cdb, from meta1 makemap
    access = socketmap:unix:/run/policy.sock:access;    # ask a socketmap server (map name last)
    access = socketmap:inet:127.0.0.1:8000:access;
    access = { /etc/meta1/access.local, cdb:/etc/meta1/access };   # a sequence: first map wins

Relative paths (of files and of a socketmap's Unix socket) are relative to ``queue_directory``.
``texthash:PATH`` (Postfix's name for a text file read into memory) is the same as a plain path.
A file name with a colon in it is written with a directory (``./a:b``) or as ``texthash:a:b``.

This module only parses and prints specifications; :mod:`meta1py.maps` reads the maps.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from meta1py.conf.schema import InvalidValue, ListValue, RawValue, Scalar, ValueType, did_you_mean, quote

__all__ = ["MapRef", "MapSpec", "MapSpecType"]

MapKind = Literal["text", "cdb", "socketmap"]

#: The types written before the colon; ``texthash`` is Postfix's name for a plain text file.
_TYPES = ("cdb", "socketmap", "texthash")
#: Postfix's other indexed types: an operator used to them gets a hint to use cdb.
_OTHER_INDEXED = frozenset({"hash", "btree", "dbm", "sdbm", "lmdb"})
_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOST_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_MAP_NAME_RE = re.compile(r"[^\s\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class MapRef:
    """One map of a specification.

    Attributes:
        kind: ``text`` (a map file read into memory), ``cdb`` (the file ``meta1 makemap`` wrote
            from :attr:`path`, at ``path.cdb``) or ``socketmap`` (a socketmap server).
        path: text and cdb: the text map's path.
        socket: socketmap: ``unix:/path`` or ``inet:host:port`` (Postfix's spelling).
        name: socketmap: the map's name on the server (the first word of each request).
    """

    kind: MapKind
    path: Path | None = None
    socket: str = ""
    name: str = ""

    def __str__(self) -> str:
        if self.kind == "socketmap":
            return f"socketmap:{self.socket}:{self.name}"
        if self.kind == "cdb":
            return f"cdb:{self.path}"
        text = str(self.path)
        head, colon, _ = text.partition(":")
        return f"texthash:{text}" if colon and "/" not in head else text

    @property
    def unix_path(self) -> str | None:
        """A socketmap's Unix socket path (None for TCP or another kind)."""
        return self.socket[5:] if self.kind == "socketmap" and self.socket.startswith("unix:") else None

    @property
    def inet_address(self) -> tuple[str, int] | None:
        """A socketmap's TCP ``(host, port)`` (None for a Unix socket or another kind)."""
        if self.kind != "socketmap" or not self.socket.startswith("inet:"):
            return None
        host, _, port = self.socket[5:].rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class MapSpec:
    """The maps an option names, in order (one, or a sequence: the first that has a key wins)."""

    members: tuple[MapRef, ...]

    def __str__(self) -> str:
        if len(self.members) == 1:
            return str(self.members[0])
        return "{ " + ", ".join(str(m) for m in self.members) + " }"

    @property
    def files(self) -> tuple[MapRef, ...]:
        """The members that are files (text or compiled), in order."""
        return tuple(m for m in self.members if m.kind != "socketmap")

    def resolved(self, base: Path) -> MapSpec:
        """The same with every relative path made relative to ``base`` (queue_directory)."""

        def absolute(p: Path) -> Path:
            return p if p.is_absolute() else Path(os.path.normpath(base / p))

        members = []
        for m in self.members:
            if m.path is not None:
                m = replace(m, path=absolute(m.path))
            unix = m.unix_path
            if unix is not None:
                m = replace(m, socket=f"unix:{absolute(Path(unix))}")
            members.append(m)
        return MapSpec(tuple(members))


class MapSpecType(ValueType):
    """A map: a path (the text file), ``TYPE:NAME``, or a ``{ list }`` of them (a sequence).

    Args:
        socketmap: whether this option may name a socketmap (smar asks it with a deadline;
            only where the caller can wait for an answer).
    """

    kind = "map"

    def __init__(self, *, socketmap: bool = False) -> None:
        self.socketmap = socketmap
        kinds = "a path, cdb:PATH"
        if socketmap:
            kinds += ", socketmap:unix:PATH:NAME, socketmap:inet:HOST:PORT:NAME"
        self.expected = f"{kinds}, or a {{ list }} of them"
        self.kind = "map (" + self.expected + ")"

    def parse(self, raw: RawValue) -> MapSpec:
        if isinstance(raw, ListValue):
            if not raw.items:
                raise InvalidValue(
                    "an empty list names no map",
                    "name at least one map, or remove the option",
                    Scalar("", line=raw.line, column=raw.column),
                )
            return MapSpec(tuple(self._member(item) for item in raw.items))
        return MapSpec((self._member(raw),))

    def _member(self, raw: Scalar) -> MapRef:
        text = raw.text
        if not text or "\x00" in text:
            raise self._bad(raw, "map")
        head, colon, rest = text.partition(":")
        if not colon or "/" in head or text.startswith("."):
            return MapRef("text", Path(text))
        kind = head.lower()
        if kind == "texthash":
            if not rest:
                raise InvalidValue(f"{text!r} names no file", "write texthash:/path/to/map", raw)
            return MapRef("text", Path(rest))
        if kind == "cdb":
            if not rest:
                raise InvalidValue(
                    f"{text!r} names no file", "write cdb:/etc/meta1/access (the text map)", raw
                )
            if rest.endswith(".cdb"):
                raise InvalidValue(
                    f"{text!r}: name the text map, not the compiled file",
                    f"write cdb:{rest[:-4]} (meta1 makemap writes {rest[:-4]}.cdb from it)",
                    raw,
                )
            return MapRef("cdb", Path(rest))
        if kind == "socketmap":
            if not self.socketmap:
                raise InvalidValue(
                    "this map cannot be a socketmap (yet)", "use a file here: a path or cdb:PATH", raw
                )
            return self._socketmap(rest, raw)
        if kind in _OTHER_INDEXED:
            hint = f"the compiled type is cdb: write cdb:{rest} and compile it with meta1 makemap"
        else:
            near = did_you_mean(kind, _TYPES)
            hint = f"did you mean {near!r}? " if near else ""
            hint += f"map types: {', '.join(_TYPES)}; a file name with a colon: ./{text}"
        raise InvalidValue(f"unknown map type {head!r} in {text!r}", hint, raw)

    def _socketmap(self, rest: str, raw: Scalar) -> MapRef:
        usage = "write socketmap:unix:/path/to/socket:NAME or socketmap:inet:HOST:PORT:NAME"
        where, sep, name = rest.rpartition(":")
        if not sep or not where:
            raise InvalidValue(f"socketmap {rest!r}: expected an address and a map name", usage, raw)
        if not _MAP_NAME_RE.fullmatch(name):
            raise InvalidValue(f"socketmap {rest!r}: bad map name {name!r}", usage, raw)
        proto, _, address = where.partition(":")
        if proto == "unix":
            if not address:
                raise InvalidValue(f"socketmap {rest!r}: no socket path", usage, raw)
            return MapRef("socketmap", socket=f"unix:{address}", name=name)
        if proto != "inet":
            raise InvalidValue(f"socketmap {rest!r}: unknown transport {proto!r} (unix or inet)", usage, raw)
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise InvalidValue(f"socketmap {rest!r}: expected HOST:PORT after inet:", usage, raw)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidValue(f"socketmap {rest!r}: bad port {port!r}", "a port is a number 1..65535", raw)
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            if bare != host or not _HOST_RE.fullmatch(host):
                raise InvalidValue(
                    f"socketmap {rest!r}: bad host {host!r}",
                    "an IP address ([::1] for IPv6) or a host name",
                    raw,
                ) from None
        else:
            host = f"[{ip}]" if ip.version == 6 else str(ip)
        return MapRef("socketmap", socket=f"inet:{host}:{int(port)}", name=name)

    def format(self, value: Any) -> str:
        members = value.members
        if len(members) == 1:
            return quote(str(members[0]))
        return "{ " + ", ".join(quote(str(m)) for m in members) + " }"
