"""``meta1 map query [-f FILE] [-v] MAP KEY...``: look keys up as the MTA would (``postmap -q``).

MAP is ``aliases``, ``routes``, ``access`` or ``tls_policy`` (the map meta1.conf names: a file, a
compiled file, a socketmap or a sequence of them), or ``FORMAT:SPEC`` for any map of one of those
formats, SPEC written as in meta1.conf: ``routes:/tmp/routes.new`` (a text file, to try an edit
before it goes live), ``access:cdb:/etc/meta1/access`` (the file ``meta1 makemap`` compiled from
/etc/meta1/access), ``access:socketmap:inet:127.0.0.1:8000:access`` (ask a socketmap server).
Access map keys are ``TAG:SUBJECT``, such as ``cltaddr:10.1.2.3`` or ``from:a@example.org``.
Each KEY is looked up with its format's whole key order (an alias without its ``+detail``; a domain,
then its parents, then ``*``; for tls_policy a ``[host]:port`` nexthop or a domain), and the value
that wins is printed, one line per key: ``KEY<TAB>VALUE`` when several keys are given, the value
alone for one. ``-v`` also prints which map key matched. In a sequence each exact key comes from
the first map that has it, as in smar. A bad line of a text file is reported on stderr as
``file:line: message`` (the MTA logs the same and uses the other lines).

Exit 0 when every key was found, 1 when one was not (as ``postmap -q``), 75 when a key's entry is
broken or a socketmap server did not answer (the MTA defers such mail), 64 for bad usage, 78 for
an unreadable map or configuration.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meta1py.maps.errors import BrokenEntry, MapError, MapTempError
from meta1py.maps.source import Table

if TYPE_CHECKING:
    from meta1py.conf.mapspec import MapSpec


EX_OK, EX_NOTFOUND, EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 0, 1, 64, 75, 78

FORMATS = ("aliases", "routes", "tls_policy", "access")


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="meta1 map", description="Query the maps as the MTA would.")
    sub = ap.add_subparsers(dest="action", required=True)
    q = sub.add_parser("query", help="print the value each KEY finds (postmap -q)")
    q.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    q.add_argument("-v", dest="verbose", action="store_true", help="also print the map key that matched")
    q.add_argument("map", metavar="MAP", help="aliases, routes, access, tls_policy, or FORMAT:SPEC")
    q.add_argument("keys", metavar="KEY", nargs="+", help="an address, a domain or a [host]:port")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    kind, _, text = args.map.partition(":")
    if kind not in FORMATS:
        known = ", ".join(FORMATS)
        print(f"meta1 map: unknown map {args.map!r}; use one of {known} or FORMAT:SPEC", file=sys.stderr)
        return EX_USAGE
    found = _spec(kind, text) if text else _configured(kind, args.config)
    if isinstance(found, int):
        return found
    return _query(kind, found, args.keys, args.verbose)


def _spec(kind: str, text: str) -> MapSpec | int:
    from meta1py.conf.mapspec import MapSpecType
    from meta1py.conf.schema import InvalidValue, Scalar

    try:
        return MapSpecType(socketmap=kind == "access").parse(Scalar(text))
    except InvalidValue as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"meta1 map: {exc.message}{hint}", file=sys.stderr)
        return EX_USAGE


def _configured(kind: str, config: str | None) -> MapSpec | int:
    from meta1py.conf import ConfigErrors, config_file, load_config
    from meta1py.conf.mapspec import MapRef, MapSpec

    try:
        cfg = load_config(config_file(config))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    spec: MapSpec | None
    if kind == "tls_policy":
        path = cfg.smtpc.tls_policy
        spec = None if path is None else MapSpec((MapRef("text", path),))
    else:
        spec = getattr(cfg.smar, kind)
    if spec is None:
        print(f"meta1 map: no {kind} file is configured", file=sys.stderr)
        return EX_CONFIG
    return spec


def _query(kind: str, spec: MapSpec, keys: list[str], verbose: bool) -> int:
    from meta1py.maps import MapErrors

    try:
        table, errors = _open(kind, spec)
    except MapErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    except ValueError as exc:
        print(f"meta1 map: {exc}", file=sys.stderr)
        return EX_USAGE
    for err in errors:
        print(f"{err} (the MTA ignores this line)", file=sys.stderr)
    lookup = _lookup_for(kind, table)
    status = EX_OK
    for key in keys:
        try:
            matched, value = lookup(key)
        except MapTempError as exc:
            print(f"{key}: {exc} (the MTA defers mail that needs it)", file=sys.stderr)
            status = EX_TEMPFAIL
            continue
        if value is None:
            status = max(status, EX_NOTFOUND)
            continue
        if isinstance(value, BrokenEntry):
            print(f"{key}: {value.text} (mail for it is deferred)", file=sys.stderr)
            status = EX_TEMPFAIL
            continue
        shown = f"{value}  (matched {matched})" if verbose else value
        print(f"{key}\t{shown}" if len(keys) > 1 else shown)
    return status


def _open(kind: str, spec: MapSpec) -> tuple[Table[Any], list[MapError]]:
    """The members of ``spec`` as one table of ``kind``'s values, and the bad lines of its text
    files.

    Raises:
        MapErrors: a file cannot be read, or a compiled file holds another format.
        ValueError: a member of a type this format cannot be (a compiled tls_policy).
    """
    from meta1py.maps.access import parse_access
    from meta1py.maps.aliases import parse_aliases
    from meta1py.maps.compiled import open_compiled
    from meta1py.maps.routes import parse_routes
    from meta1py.maps.source import read_map_file
    from meta1py.maps.tls_policy import parse_tls_policy
    from meta1py.maps.views import AliasesTable, SequenceTable

    tables: list[Table[Any]] = []
    errors: list[MapError] = []
    for member in spec.members:
        if member.kind == "socketmap":
            tables.append(_SocketmapTable(str(member), member.name, member.unix_path, member.inet_address))
            continue
        assert member.path is not None
        name = str(member.path)
        if member.kind != "text":
            if kind == "tls_policy":
                raise ValueError("tls_policy maps are text files (they cannot be compiled)")
            tables.append(open_compiled(kind, name, kind=member.kind))
            continue
        text = read_map_file(name)
        table: Any
        if kind == "aliases":
            table = AliasesTable(parse_aliases(text, name, strict=False))
        elif kind == "access":
            table = parse_access(text, name, strict=False)
        elif kind == "routes":
            table = parse_routes(text, name, strict=False)
        else:
            table = parse_tls_policy(text, name, strict=False)
        errors += table.errors
        tables.append(table)
    return (tables[0] if len(tables) == 1 else SequenceTable(tables)), errors


Found = tuple["str | None", "str | BrokenEntry | None"]


def _lookup_for(kind: str, table: Table[Any]) -> Callable[[str], Found]:
    from meta1py.maps import BrokenEntry
    from meta1py.maps.access import TAGS
    from meta1py.maps.aliases import alias_keys
    from meta1py.maps.routes import route_keys, route_text
    from meta1py.maps.source import first_match
    from meta1py.maps.tls_policy import tls_policy_keys
    from meta1py.maps.views import AccessView
    from meta1py.tls.requirements import format_tls_requirements

    if kind == "aliases":

        def alias(key: str) -> Found:
            local, at, domain = key.rpartition("@")
            found = first_match(table, alias_keys(local, domain) if at else alias_keys(key))
            if found is None:
                return None, None
            matched, value = found
            return matched, value if isinstance(value, BrokenEntry) else ", ".join(value)

        return alias
    if kind == "access":
        access = AccessView(table)

        def entry(key: str) -> Found:
            tag, _, subject = key.partition(":")
            if tag.lower() not in TAGS:
                tags = ", ".join(TAGS)
                print(f"meta1 map: {key!r}: access keys are TAG:SUBJECT, TAG one of {tags}", file=sys.stderr)
                return None, None
            match = access.lookup(tag.lower(), subject)
            if match is None:
                return None, None
            value = match.value
            return match.key, value if isinstance(value, BrokenEntry) else str(value)

        return entry
    if kind == "routes":

        def route(key: str) -> Found:
            found = first_match(table, route_keys(key.rpartition("@")[2]))
            if found is None:
                return None, None
            matched, value = found
            return matched, value if isinstance(value, BrokenEntry) else route_text(value)

        return route

    def requirements(key: str) -> Found:
        nexthop, domain = (key, "") if key.startswith("[") else (None, key.rpartition("@")[2])
        found = first_match(table, tls_policy_keys(nexthop, domain))
        if found is None:
            return None, None
        matched, value = found
        return matched, value if isinstance(value, BrokenEntry) else format_tls_requirements(value)

    return requirements


class _SocketmapTable(Table[Any]):
    """A socketmap server's access map asked with a blocking socket (the command waits; smar's
    client is trio's): one connection, opened at the first lookup, 10 s per lookup. A value that
    does not parse is a :class:`BrokenEntry`, as in smar."""

    def __init__(
        self, where: str, name: str, unix_path: str | None, inet_address: tuple[str, int] | None
    ) -> None:
        self.where = where
        self.name = name
        self._unix_path = unix_path
        self._inet_address = inet_address
        self._sock: socket.socket | None = None

    def get(self, key: str) -> Any:
        """The parsed value of ``key``, None when the server has none.

        Raises:
            MapTempError: the server could not be reached or did not answer with OK or NOTFOUND.
        """
        from meta1py.maps.access import parse_access_value

        text = self._ask(key)
        if text is None:
            return None
        try:
            return parse_access_value(key, text)
        except ValueError as exc:
            return BrokenEntry(MapError(self.where, 0, f"{key}: {exc}"))

    def _ask(self, key: str) -> str | None:
        from meta1py.maps.socketmap import ReplyDecoder, SocketmapProtocolError, encode_request

        try:
            if self._sock is None:
                if self._unix_path is not None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self._sock.settimeout(_SOCKETMAP_TIMEOUT_S)
                    self._sock.connect(self._unix_path)
                else:
                    assert self._inet_address is not None
                    self._sock = socket.create_connection(self._inet_address, timeout=_SOCKETMAP_TIMEOUT_S)
            self._sock.sendall(encode_request(self.name, key))
            decoder = ReplyDecoder()
            while (reply := decoder.next_reply()) is None:
                if decoder.eof:
                    raise SocketmapProtocolError("the server closed the connection")
                decoder.receive_data(self._sock.recv(65536))
        except (OSError, SocketmapProtocolError) as exc:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            raise MapTempError(f"{self.where}: {exc}") from None
        if reply.status == "OK":
            return reply.text
        if reply.status == "NOTFOUND":
            return None
        raise MapTempError(f"{self.where}: {reply.status} {reply.text}".rstrip())


_SOCKETMAP_TIMEOUT_S = 10.0
