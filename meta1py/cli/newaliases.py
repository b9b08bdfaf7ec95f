"""``meta1 newaliases [-f FILE]``: check the aliases file (installed as ``/usr/bin/newaliases``).

Postfix's newaliases rebuilds an indexed alias database. meta1py reads its ``aliases`` file (smar
``aliases``) directly and smar picks up a change by itself within seconds, so there is nothing to
build: this command checks the file and reports every bad line with file:line, so that scripts
and packages that run ``newaliases`` after editing the file learn about mistakes at once. Exit 0
when the file is valid or no aliases file is configured, 1 when it has errors, 78 for a bad
configuration.
"""

from __future__ import annotations

import argparse
import sys

EX_OK, EX_INVALID, EX_USAGE, EX_CONFIG = 0, 1, 64, 78


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="meta1 newaliases", description="Check the aliases file.")
    ap.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    from meta1py.conf import ConfigErrors, config_file, load_config
    from meta1py.maps import MapErrors
    from meta1py.maps.aliases import load_aliases

    try:
        cfg = load_config(config_file(args.config))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    path = cfg.smar.aliases
    if path is None:
        print("meta1 newaliases: no aliases file is configured (smar { aliases = ...; })")
        return EX_OK
    try:
        aliases = load_aliases(path)
    except OSError as exc:
        print(f"meta1 newaliases: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EX_INVALID
    except MapErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_INVALID
    print(f"meta1 newaliases: {path}: {len(aliases)} aliases; smar reads changes by itself")
    return EX_OK
