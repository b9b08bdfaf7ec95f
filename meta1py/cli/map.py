"""``meta1 map query [-f FILE] [-v] MAP KEY...``: look keys up as the MTA would (``postmap -q``).

MAP is ``aliases``, ``routes``, ``access`` or ``tls_policy`` (the file meta1.conf names), or
``TYPE:PATH`` for any file of one of those formats (``routes:/tmp/routes.new``, to try an edit
before it goes live). Access map keys are ``TAG:SUBJECT``, such as ``cltaddr:10.1.2.3`` or
``from:a@example.org``.
Each KEY is looked up with its format's whole key order (an alias without its ``+detail``; a domain,
then its parents, then ``*``; for tls_policy a ``[host]:port`` nexthop or a domain), and the value
that wins is printed, one line per key: ``KEY<TAB>VALUE`` when several keys are given, the value
alone for one. ``-v`` also prints which map key matched. A bad line of the file is reported on
stderr as ``file:line: message`` (the MTA logs the same and uses the other lines).

Exit 0 when every key was found, 1 when one was not (as ``postmap -q``), 75 when a key's entry is
broken (the MTA defers such mail), 64 for bad usage, 78 for an unreadable map or configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meta1py.maps import BrokenEntry, MapError

EX_OK, EX_NOTFOUND, EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 0, 1, 64, 75, 78

FORMATS = ("aliases", "routes", "tls_policy", "access")


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="meta1 map", description="Query the maps as the MTA would.")
    sub = ap.add_subparsers(dest="action", required=True)
    q = sub.add_parser("query", help="print the value each KEY finds (postmap -q)")
    q.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    q.add_argument("-v", dest="verbose", action="store_true", help="also print the map key that matched")
    q.add_argument("map", metavar="MAP", help="aliases, routes, tls_policy, or TYPE:PATH")
    q.add_argument("keys", metavar="KEY", nargs="+", help="an address, a domain or a [host]:port")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    kind, _, path = args.map.partition(":")
    if kind not in FORMATS:
        known = ", ".join(FORMATS)
        print(f"meta1 map: unknown map {args.map!r}; use one of {known} or TYPE:PATH", file=sys.stderr)
        return EX_USAGE
    if not path:
        found = _configured(kind, args.config)
        if isinstance(found, int):
            return found
        path = found
    return _query(kind, path, args.keys, args.verbose)


def _configured(kind: str, config: str | None) -> str | int:
    from meta1py.conf import ConfigErrors, config_file, load_config

    try:
        cfg = load_config(config_file(config))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    path = {
        "aliases": cfg.smar.aliases,
        "routes": cfg.smar.routes,
        "access": cfg.smar.access,
        "tls_policy": cfg.smtpc.tls_policy,
    }[kind]
    if path is None:
        print(f"meta1 map: no {kind} file is configured", file=sys.stderr)
        return EX_CONFIG
    return str(path)


def _query(kind: str, path: str, keys: list[str], verbose: bool) -> int:
    from meta1py.maps import BrokenEntry, MapErrors, read_map_file

    try:
        text = read_map_file(path)
    except MapErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    lookup, errors = _lookup_for(kind, text, path)
    for err in errors:
        print(f"{err} (the MTA ignores this line)", file=sys.stderr)
    status = EX_OK
    for key in keys:
        matched, value = lookup(key)
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


Found = tuple["str | None", "str | BrokenEntry | None"]


def _lookup_for(kind: str, text: str, path: str) -> tuple[Callable[[str], Found], tuple[MapError, ...]]:
    from meta1py.maps import BrokenEntry
    from meta1py.maps.access import TAGS, parse_access
    from meta1py.maps.aliases import parse_aliases
    from meta1py.maps.routes import parse_routes, route_keys, route_text
    from meta1py.maps.source import first_match
    from meta1py.maps.tls_policy import parse_tls_policy, tls_policy_keys
    from meta1py.tls.requirements import format_tls_requirements

    if kind == "aliases":
        aliases = parse_aliases(text, path, strict=False)

        def alias(key: str) -> Found:
            found = aliases.lookup_key(key.rpartition("@")[0] or key)
            if found is None:
                return None, None
            broken = aliases.broken.get(found)
            return found, broken if broken is not None else ", ".join(aliases.get(found) or ())

        return alias, aliases.errors
    if kind == "access":
        access = parse_access(text, path, strict=False)

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

        return entry, access.errors
    if kind == "routes":
        routes = parse_routes(text, path, strict=False)

        def route(key: str) -> Found:
            found = first_match(routes, route_keys(key.rpartition("@")[2]))
            if found is None:
                return None, None
            matched, value = found
            return matched, value if isinstance(value, BrokenEntry) else route_text(value)

        return route, routes.errors
    policy = parse_tls_policy(text, path, strict=False)

    def requirements(key: str) -> Found:
        nexthop, domain = (key, "") if key.startswith("[") else (None, key.rpartition("@")[2])
        found = first_match(policy, tls_policy_keys(nexthop, domain))
        if found is None:
            return None, None
        matched, value = found
        return matched, value if isinstance(value, BrokenEntry) else format_tls_requirements(value)

    return requirements, policy.errors
