"""``meta1 makemap [-f CONFIG] [-t TYPE] [-v] [-q] FORMAT [FILE]``: compile a map file (Postfix's postmap,
MeTA1's createmap).

FORMAT is ``access``, ``routes`` or ``aliases``; FILE is the text map. Every line is checked with
the format's rules; any bad line is reported on stderr as ``file:line: message``, the command
exits 65 (EX_DATAERR) and writes nothing, as postmap refuses a bad source. A good file is
written to ``FILE.cdb`` (TYPE ``cdb``, the only one and the default) atomically: a temporary file
in the same directory, fsync'd, renamed over ``FILE.cdb``, then the directory fsync'd, so that a
running smar sees the old file or the new one, never half of one, and picks the new one up within
a second (``smar { access = cdb:FILE; }``). The new file gets the text map's permission bits (and,
as root, its owner and group), so whoever could read the text map can read the compiled one.

Without FILE, every compiled member of the FORMAT option of meta1.conf (``-f``, else the default
configuration) is compiled from its text map: ``meta1 makemap access`` after editing the file
that ``access = cdb:/etc/meta1/access;`` names.

A progress bar (by lines; meta1py.cli.progress) goes to stderr when it is a terminal and the map
has more than 50,000 lines; ``-q`` leaves it out. ``-v`` prints the number of entries and the
time taken.

Exit 0 done, 64 bad usage, 65 bad lines in the map, 66 the map cannot be read, 73 the compiled
file cannot be created, 74 a write error (disk full), 78 a configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import TextIO

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT, EX_IOERR, EX_CONFIG = 0, 64, 65, 66, 73, 74, 78

#: Maps with more lines than this get a progress bar (on a terminal).
PROGRESS_MIN_LINES = 50_000


class MakemapError(Exception):
    """The map could not be compiled; ``status`` is the exit status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    from meta1py.maps.compiled import COMPILED_FORMATS, COMPILED_TYPES

    ap = argparse.ArgumentParser(
        prog="meta1 makemap",
        description="Compile a map file to FILE.cdb (postmap): check every line, then replace the "
        "compiled file atomically.",
    )
    ap.add_argument(
        "-f", dest="config", metavar="CONFIG", help="configuration file (for FORMAT without FILE)"
    )
    ap.add_argument("-t", dest="type", default="cdb", metavar="TYPE", help="compiled type: cdb (the default)")
    ap.add_argument("-v", dest="verbose", action="store_true", help="print the entries written and the time")
    ap.add_argument("-q", dest="quiet", action="store_true", help="no progress bar, even on a terminal")
    ap.add_argument("format", metavar="FORMAT", help=", ".join(COMPILED_FORMATS))
    ap.add_argument("file", metavar="FILE", nargs="?", help="the text map (default: the configured ones)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    if args.format not in COMPILED_FORMATS:
        known = ", ".join(COMPILED_FORMATS)
        print(f"meta1 makemap: cannot compile {args.format!r} maps; formats: {known}", file=sys.stderr)
        return EX_USAGE
    if args.type not in COMPILED_TYPES:
        print(
            f"meta1 makemap: unknown type {args.type!r}; types: {', '.join(COMPILED_TYPES)}", file=sys.stderr
        )
        return EX_USAGE
    if args.file is not None:
        jobs = [(args.type, args.file)]
    else:
        found = _configured(args.format, args.config)
        if isinstance(found, int):
            return found
        jobs = found
    for kind, source in jobs:
        started = time.monotonic()
        try:
            count, target = makemap(
                args.format, source, kind=kind, progress_to=None if args.quiet else sys.stderr
            )
        except MakemapError as exc:
            print(f"meta1 makemap: {exc}", file=sys.stderr)
            return exc.status
        if args.verbose:
            took = time.monotonic() - started
            print(f"meta1 makemap: {target}: {count} entries in {took:.1f} s")
    return EX_OK


def _configured(fmt: str, config: str | None) -> list[tuple[str, str]] | int:
    """The compiled members of the configured ``fmt`` map, as (type, text map), or an exit status."""
    from meta1py.conf import ConfigErrors, config_file, load_config

    try:
        cfg = load_config(config_file(config))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    spec = getattr(cfg.smar, fmt)
    jobs = [(m.kind, str(m.path)) for m in (spec.files if spec is not None else ()) if m.kind != "text"]
    if not jobs:
        what = "no" if spec is None else f"no compiled (cdb:FILE) {fmt} map: {spec};"
        print(f"meta1 makemap: smar {{ {fmt} }} names {what} give FILE to compile one", file=sys.stderr)
        return EX_USAGE
    return jobs


def makemap(
    fmt: str,
    source: str,
    *,
    kind: str = "cdb",
    progress_to: TextIO | None = None,
) -> tuple[int, str]:
    """Compile the text map ``source`` of format ``fmt`` to its compiled file, atomically.

    Args:
        fmt: ``access``, ``routes``, ``aliases``.
        source: the text map.
        kind: the compiled type.
        progress_to: where a progress bar goes when it is a terminal and the map has more than
            `PROGRESS_MIN_LINES` lines (None: nowhere).

    Returns:
        The number of entries and the compiled file's path.

    Raises:
        MakemapError: the map cannot be read (66), has bad lines (65; each is printed on stderr
            first), or the compiled file cannot be written (73, 74). Nothing is left behind.
    """
    from meta1py.cli.progress import progress_bar
    from meta1py.maps.cdb import CdbFormatError
    from meta1py.maps.compiled import COMPILED_FORMATS, compile_map, compiled_path
    from meta1py.maps.errors import MapErrors
    from meta1py.maps.source import read_map_file

    try:
        text = read_map_file(source)
        st = os.stat(source)
    except MapErrors as exc:
        raise MakemapError(EX_NOINPUT, "; ".join(str(e) for e in exc.errors)) from None
    except OSError as exc:
        raise MakemapError(EX_NOINPUT, f"{source}: {exc.strerror or exc}") from None
    target = compiled_path(source, kind)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise MakemapError(
            EX_CANTCREAT, f"cannot create a file in {directory}: {exc.strerror or exc}"
        ) from None
    lines = text.count("\n") + (not text.endswith("\n") and bool(text))
    bar = progress_bar(fmt, lines, unit="lines", stream=progress_to, minimum=PROGRESS_MIN_LINES)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            try:
                with bar:  # ended before the bad lines are printed
                    count, errors = compile_map(
                        COMPILED_FORMATS[fmt], text, source, out, progress=bar.update if bar.shown else None
                    )
                    bar.update(lines)
            except CdbFormatError as exc:  # the 4 GiB limit
                raise MakemapError(EX_DATAERR, f"{source}: {exc}") from None
            if errors:
                for err in errors:
                    print(str(err), file=sys.stderr)
                raise MakemapError(EX_DATAERR, f"{source}: {len(errors)} bad line(s); {target} not written")
            out.flush()
            _copy_owner_and_mode(out.fileno(), st)
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise MakemapError(EX_IOERR, f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    _fsync_directory(directory)
    return count, target


def _copy_owner_and_mode(fd: int, st: os.stat_result) -> None:
    """The text map's permission bits (and, as root, its owner and group) for the compiled file:
    whoever may read the text map may read the compiled one (postmap does the same)."""
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, st.st_mode & 0o7777 & ~0o6000 & ~0o111)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
