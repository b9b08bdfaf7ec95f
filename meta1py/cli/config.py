"""``meta1 config [-f FILE] [-n] [--json] [NAME...]``: the effective value of each option (postconf).

The configuration is read and merged as mcp reads it (includes, defaults, relative paths made
absolute), and each option is printed as ``NAME = VALUE`` in configuration syntax, one per line,
with its full dotted name:

* top-level options by their name (``queue_directory``, ``log_level``);
* options of a section after the section's keyword (``smar.DNS_timeout``, ``smtpc.tls.CA_file``);
* a named smtps section in brackets (``smtps[submission].require_auth``); the unnamed one without;
* a repeated section by its index (``smar.dnsbl[0].zone``, ``smtps.listen_socket[1].port``).

Names are matched case-insensitively. ``NAME`` may also be a section (``smar``, ``smtps[submission]``):
every option under it. ``-n`` prints only the options that differ from their defaults (``postconf
-n``); ``--json`` prints one JSON object, name to value (numbers, booleans, lists and strings as
they are written in the file, times in seconds and sizes in bytes as numbers).

Exit 0; 1 when a NAME is unknown (a hint names the closest option); 64 for bad usage; 78 for a
configuration that does not load.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EX_OK, EX_UNKNOWN, EX_USAGE, EX_CONFIG = 0, 1, 64, 78


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="meta1 config", description="Print the effective value of configuration options (postconf)."
    )
    ap.add_argument("-f", dest="file", metavar="FILE", help="configuration file")
    ap.add_argument(
        "-n", dest="changed", action="store_true", help="only options that differ from their defaults"
    )
    ap.add_argument("--json", action="store_true", help="one JSON object: name to value")
    ap.add_argument("names", metavar="NAME", nargs="*", help="an option or section, e.g. smar.DNS_timeout")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    from meta1py.conf import ConfigErrors, config_file, load_config

    try:
        cfg = load_config(config_file(args.file))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    options = list(flatten(cfg))
    status = EX_OK
    chosen: list[tuple[str, str, Any, bool]] = []
    if not args.names:
        chosen = options
    for name in args.names:
        wanted = name.lower()
        found = [o for o in options if o[0].lower() == wanted or o[0].lower().startswith(wanted + ".")]
        if not found:
            status = EX_UNKNOWN
            print(f"meta1 config: unknown parameter {name!r}{_hint(wanted, options)}", file=sys.stderr)
        chosen.extend(found)
    if args.changed:
        chosen = [o for o in chosen if o[3]]
    if args.json:
        print(json.dumps({name: _json(value) for name, _text, value, _changed in chosen}, indent=2))
    else:
        for name, text, _value, _changed in chosen:
            print(f"{name} = {text}")
    return status


def flatten(cfg: Any) -> Iterator[tuple[str, str, Any, bool]]:
    """Every option of ``cfg``: (dotted name, value in configuration syntax, value, differs from
    its default)."""
    from meta1py.conf.dump import option_default
    from meta1py.conf.schema import options_of, sections_of

    cwd = Path.cwd()
    qdir = cfg.queue_directory

    def walk(obj: Any, prefix: str) -> Iterator[tuple[str, str, Any, bool]]:
        for attr, spec in options_of(type(obj)):
            value = getattr(obj, attr)
            text = "" if value is None else spec.type.format(value)
            changed = value is not None and value != option_default(spec, qdir, cwd)
            yield f"{prefix}{spec.spelling}", text, value, changed
        for attr, sspec in sections_of(type(obj)):
            value = getattr(obj, attr)
            if not sspec.repeatable:
                yield from walk(value, f"{prefix}{sspec.keyword}.")
                continue
            for i, sub in enumerate(value):
                label = getattr(sub, "name", None) if sspec.labelled else None
                if sspec.labelled:
                    head = f"{sspec.keyword}[{label}]" if label else sspec.keyword
                else:
                    head = f"{sspec.keyword}[{i}]"
                yield from walk(sub, f"{prefix}{head}.")

    yield from walk(cfg, "")


def _hint(wanted: str, options: list[tuple[str, str, Any, bool]]) -> str:
    from meta1py.conf.schema import did_you_mean

    names = {o[0].lower(): o[0] for o in options}
    close = did_you_mean(wanted, names)
    if close is None:  # perhaps the short name of an option in a section
        tails = {n.rsplit(".", 1)[-1]: full for n, full in names.items() if n.endswith("." + wanted)}
        return f"; did you mean {next(iter(tails.values()))}?" if tails else ""
    return f"; did you mean {names[close]}?"


def _json(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return str(value)
