"""``meta1 check-config [-f FILE] [-n] [--defaults]``: check meta1.conf.

Exit 0 and print nothing when the file is valid (with ``-n``: print the settings that differ from
the defaults, in configuration syntax); exit 1 with every error on stderr otherwise.
``--defaults`` prints every option with its default. Without ``-f`` the file is $META1_CONF, else
/etc/meta1/meta1.conf if it exists, else the built-in defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meta1py.conf.accounts import _error, check_accounts, check_files, check_tls_support
from meta1py.conf.dump import defaults_text, dump_config
from meta1py.conf.errors import ConfigError, ConfigErrors
from meta1py.conf.location import config_file
from meta1py.conf.model import Config
from meta1py.conf.parser import load_config

EX_OK, EX_INVALID, EX_USAGE = 0, 1, 64

_MAP_HINT = (
    "at run time this line is ignored and logged; mail that needs its key is deferred (451 4.3.5)"
    " until the file is fixed"
)


def check_map_contents(cfg: Config) -> list[ConfigError]:
    """Every bad line of the configured map files (smar ``aliases``/``routes``/``access``, smtpc
    ``tls_policy``), each as ``file:line``; for a compiled map (``cdb:FILE``), a compiled file
    that holds another format or is older than the text map it was compiled from. Unreadable
    files are :func:`check_files`' business; socketmap servers are not asked."""
    # Imported here: the map parsers are not needed to check the configuration file itself.
    from meta1py.maps.access import parse_access
    from meta1py.maps.aliases import parse_aliases
    from meta1py.maps.errors import MapError, MapErrors
    from meta1py.maps.routes import parse_routes
    from meta1py.maps.source import read_map_file
    from meta1py.maps.tls_policy import parse_tls_policy

    def errors_of(parse: str, text: str, name: str) -> tuple[MapError, ...]:
        if parse == "access":
            return parse_access(text, name, strict=False).errors
        if parse == "aliases":
            return parse_aliases(text, name, strict=False).errors
        if parse == "routes":
            return parse_routes(text, name, strict=False).errors
        return parse_tls_policy(text, name, strict=False).errors

    maps: list[tuple[str, Path]] = []
    problems: list[ConfigError] = []
    for kind in ("aliases", "routes", "access"):
        spec = getattr(cfg.smar, kind)
        for member in spec.files if spec is not None else ():
            assert member.path is not None
            if member.kind == "text":
                maps.append((kind, member.path))
            else:
                problems += _compiled_problems(cfg, kind, member.kind, member.path)
    if cfg.smtpc.tls_policy is not None:
        maps.append(("tls_policy", cfg.smtpc.tls_policy))
    for kind, path in maps:
        name = str(path)
        try:
            text = read_map_file(name)
        except MapErrors:
            continue  # reported by check_files
        lines = text.splitlines()
        for err in errors_of(kind, text, name):
            source = lines[err.line - 1] if 0 < err.line <= len(lines) else ""
            problems.append(ConfigError(name, err.line, 1, err.message, _MAP_HINT, source))
    return problems


def _compiled_problems(cfg: Config, fmt: str, kind: str, source: Path) -> list[ConfigError]:
    """A compiled map that smar would refuse (another format, not a compiled map) or that is
    older than its text map (edited and not compiled again), located at the option."""
    import os

    from meta1py.maps.compiled import CompiledTable, compiled_path
    from meta1py.maps.errors import MapErrors

    path = compiled_path(source, kind)
    if not os.path.isfile(path):
        return []  # reported by check_files
    try:
        table = CompiledTable(path, fmt)
    except MapErrors as exc:
        return [
            _error(
                cfg, f"smar.{fmt}", exc.errors[0].message, f"compile it with: meta1 makemap {fmt} {source}"
            )
        ]
    try:
        stale = os.stat(source).st_mtime_ns > table.mtime_ns
    except OSError:
        stale = False  # only the compiled file is there: nothing to compare
    finally:
        table.close()
    if not stale:
        return []
    return [
        _error(
            cfg,
            f"smar.{fmt}",
            f"{path} is older than {source}: smar uses the old entries",
            f"compile it again: meta1 makemap {fmt} {source}",
        )
    ]


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="meta1 check-config", description="Check meta1.conf.")
    ap.add_argument("-f", dest="file", metavar="FILE", help="the file to check")
    ap.add_argument(
        "-n", dest="show", action="store_true", help="print the settings that differ from the defaults"
    )
    ap.add_argument("--defaults", action="store_true", help="print every option with its default")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage; keep sysexits' EX_USAGE
        return EX_OK if e.code == 0 else EX_USAGE
    if args.defaults:
        sys.stdout.write(defaults_text())
        return EX_OK
    path = config_file(args.file)
    try:
        cfg = load_config(path)
    except ConfigErrors as e:
        print(str(e), file=sys.stderr)
        return EX_INVALID
    problems = check_files(cfg) + check_accounts(cfg) + check_tls_support(cfg) + check_map_contents(cfg)
    if problems:
        print(str(ConfigErrors(problems)), file=sys.stderr)
        return EX_INVALID
    if args.show:
        sys.stdout.write(dump_config(cfg, only_changed=True))
    return EX_OK
