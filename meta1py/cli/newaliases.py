"""``meta1 newaliases [-f FILE] [-q]``: check the aliases map, and compile it when it is compiled
(installed as ``/usr/bin/newaliases``).

Postfix's newaliases rebuilds an indexed alias database. meta1py reads a text ``aliases`` file
(smar ``aliases``) directly and smar picks up a change by itself within seconds, so for a text
file there is nothing to build: this command checks the file and reports every bad line with
file:line, so that scripts and packages that run ``newaliases`` after editing the file learn
about mistakes at once. For a compiled map (``aliases = cdb:/etc/meta1/aliases;``) it does what
Postfix's does: it compiles the text file again (``meta1 makemap aliases /etc/meta1/aliases``),
which smar then picks up. Exit 0 when every file is valid (and compiled) or no aliases map is
configured, 1 when one has errors or cannot be read or written, 78 for a bad configuration.
A file of more than 50,000 lines gets a progress bar on stderr when it is a terminal (as
``meta1 makemap``'s); ``-q`` leaves it out.
"""

from __future__ import annotations

import argparse
import sys

EX_OK, EX_INVALID, EX_USAGE, EX_CONFIG = 0, 1, 64, 78


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="meta1 newaliases", description="Check the aliases file.")
    ap.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    ap.add_argument("-q", dest="quiet", action="store_true", help="no progress bar, even on a terminal")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    from meta1py.conf import ConfigErrors, config_file, load_config
    from meta1py.maps import MapErrors
    from meta1py.maps.aliases import parse_aliases
    from meta1py.maps.source import read_map_file

    try:
        cfg = load_config(config_file(args.config))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    spec = cfg.smar.aliases
    if spec is None:
        print("meta1 newaliases: no aliases file is configured (smar { aliases = ...; })")
        return EX_OK
    from meta1py.cli.makemap import PROGRESS_MIN_LINES, MakemapError, makemap
    from meta1py.cli.progress import progress_bar

    status = EX_OK
    for member in spec.files:
        path = member.path
        assert path is not None
        if member.kind != "text":
            try:
                count, target = makemap(
                    "aliases", str(path), kind=member.kind, progress_to=None if args.quiet else sys.stderr
                )
            except MakemapError as exc:
                print(f"meta1 newaliases: {exc}", file=sys.stderr)
                status = EX_INVALID
                continue
            print(
                f"meta1 newaliases: {target}: {count} aliases compiled from {path}; smar reads it by itself"
            )
            continue
        try:
            text = read_map_file(path)
            lines = text.count("\n") + (not text.endswith("\n") and bool(text))
            bar = progress_bar(
                "aliases",
                lines,
                unit="lines",
                quiet=args.quiet,
                stream=sys.stderr,
                minimum=PROGRESS_MIN_LINES,
            )
            with bar:  # ended before any bad line is printed
                aliases = parse_aliases(text, str(path), progress=bar.update if bar.shown else None)
                bar.update(lines)
        except OSError as exc:
            print(f"meta1 newaliases: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            status = EX_INVALID
            continue
        except MapErrors as exc:
            print(str(exc), file=sys.stderr)
            status = EX_INVALID
            continue
        print(f"meta1 newaliases: {path}: {len(aliases)} aliases; smar reads changes by itself")
    return status
