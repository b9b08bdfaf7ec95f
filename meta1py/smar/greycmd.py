"""``meta1 grey``: look at and edit smar's greylisting database (MeTA1's greyprint and greyrm).

    meta1 grey [-f FILE] list [--json]
    meta1 grey [-f FILE] remove NETWORK|IP [--from ADDR] [--to ADDR]

``list`` prints the triplets (client network, sender, recipient, first and last attempt, attempts,
state ``deferred`` or ``passed``) and the whitelisted networks with their expiry, in aligned
columns, or as one JSON document with ``--json`` (times as Unix seconds; see docs/meta1.md). It
opens the database read-only, so it works while smar runs. ``remove`` deletes the triplets of
every stored network that overlaps NETWORK (an IP address: the network that contains it) and,
without ``--from`` and ``--to``, the whitelisting of those networks; it prints how many.

The database is the one of ``smar { greylisting { database } }``. Run as root, the command first
becomes the owner of the database's directory (smar's user): SQLite creates ``-wal`` and ``-shm``
files beside the database even to read it, and files of root's there would lock smar out.

It lives in the smar package because it is smar's store run offline; ``meta1`` dispatches to it by
name. Exit 0; 1 when ``remove`` matched nothing; 64 bad usage; 74 the database is unreadable,
corrupt or not a greylist database; 75 the database is locked (try again); 77 cannot become the
database's owner; 78 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from meta1py.smar.greylist import (
    GreyEntries,
    Greylist,
    GreylistUnavailableError,
    GreyPolicy,
    target_network,
)

EX_OK, EX_NOMATCH, EX_USAGE, EX_IOERR, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 0, 1, 64, 74, 75, 77, 78
#: The CLI waits longer than smar for a lock: a person is waiting, not an SMTP client.
CLI_BUSY_TIMEOUT_S = 2.0


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _table(header: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Columns padded to their widest cell (``right``: right-aligned columns)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_entries(entries: GreyEntries) -> str:
    """The text of ``meta1 grey list``: the triplets, then the whitelisted networks."""
    out: list[str] = []
    if entries.triplets:
        rows = [
            [
                t.network,
                t.sender,
                t.recipient,
                _when(t.first_seen),
                _when(t.last_seen),
                str(t.attempts),
                t.state,
            ]
            for t in entries.triplets
        ]
        header = ["NETWORK", "SENDER", "RECIPIENT", "FIRST SEEN", "LAST SEEN", "ATTEMPTS", "STATE"]
        out += _table(header, rows, right=frozenset({5}))
    else:
        out.append("no triplets")
    out.append("")
    if entries.networks:
        rows = [
            [n.network, _when(n.first_seen), _when(n.last_seen), _when(n.expires)] for n in entries.networks
        ]
        out += _table(["WHITELISTED NETWORK", "SINCE", "LAST SEEN", "EXPIRES"], rows)
    else:
        out.append("no whitelisted networks")
    return "\n".join(out) + "\n"


def entries_json(entries: GreyEntries) -> dict[str, Any]:
    """The documented ``--json`` form (docs/meta1.md): times as whole Unix seconds."""
    return {
        "triplets": [
            {
                "network": t.network,
                "sender": t.sender,
                "recipient": t.recipient,
                "first_seen": int(t.first_seen),
                "last_seen": int(t.last_seen),
                "attempts": t.attempts,
                "state": t.state,
                "expires": int(t.expires),
            }
            for t in entries.triplets
        ],
        "networks": [
            {
                "network": n.network,
                "first_seen": int(n.first_seen),
                "last_seen": int(n.last_seen),
                "expires": int(n.expires),
            }
            for n in entries.networks
        ],
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``-f`` before or after the subcommand, as in ``meta1 queue``)."""
    parser = argparse.ArgumentParser(prog="meta1 grey", description="Show and edit the greylisting database.")
    config_help = "configuration file (default: $META1_CONF or /etc/meta1/meta1.conf)"
    parser.add_argument("-f", "--config", help=config_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-f", "--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[common], help="triplets and whitelisted networks (greyprint)")
    p.add_argument("--json", action="store_true", help="one JSON document (docs/meta1.md)")
    p = sub.add_parser(
        "remove", parents=[common], help="forget a network's triplets and whitelisting (greyrm)"
    )
    p.add_argument("target", metavar="NETWORK|IP", help="e.g. 192.0.2.0/24, or 192.0.2.7 for its network")
    p.add_argument(
        "--from", dest="sender", metavar="ADDR", help="only triplets with this sender (<> for null)"
    )
    p.add_argument("--to", dest="recipient", metavar="ADDR", help="only triplets with this recipient")
    return parser


def become_owner(directory: Path) -> str | None:
    """As root: become the owner of ``directory`` (smar's user); an error message, or None."""
    if os.geteuid() != 0:
        return None
    try:
        st = directory.stat()
    except FileNotFoundError:
        return None  # nothing stored yet; nothing will be created
    except OSError as exc:
        return f"cannot inspect {directory}: {exc.strerror or exc}"
    if st.st_uid == 0:
        return None
    import grp
    import pwd

    from meta1py.worker import PrivilegeError, drop_privileges

    try:
        user = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        return f"{directory} belongs to uid {st.st_uid} gid {st.st_gid}, which have no names"
    try:
        drop_privileges(user, group)
    except PrivilegeError as exc:
        return f"cannot become {user}:{group}, the owner of {directory}: {exc}"
    return None


def main(argv: list[str]) -> int:
    """Run ``meta1 grey``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    from meta1py.conf import ConfigErrors, config_file, load_config

    path = config_file(args.config)
    try:
        cfg = load_config(path)
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    grey = cfg.smar.greylisting
    if not grey.enable:
        print("meta1 grey: note: greylisting is off (smar { greylisting { enable = no; } })", file=sys.stderr)
    database = Path(grey.database)
    problem = become_owner(database.parent)
    if problem is not None:
        print(f"meta1 grey: {problem}", file=sys.stderr)
        return EX_NOPERM
    if args.command == "remove":
        try:
            target_network(args.target)
        except ValueError as exc:
            print(f"meta1 grey: {exc}", file=sys.stderr)
            return EX_USAGE
    policy = GreyPolicy.from_config(grey)
    try:
        if args.command == "list":
            with Greylist(database, policy, readonly=True, busy_timeout_s=CLI_BUSY_TIMEOUT_S) as store:
                entries = store.entries()
            if args.json:
                print(json.dumps(entries_json(entries), sort_keys=True, indent=2))
            else:
                sys.stdout.write(format_entries(entries))
            return EX_OK
        if not database.exists():
            print(f"meta1 grey: nothing matched {args.target} ({database} does not exist)", file=sys.stderr)
            return EX_NOMATCH
        with Greylist(database, policy, busy_timeout_s=CLI_BUSY_TIMEOUT_S) as store:
            removed = store.remove(args.target, args.sender, args.recipient)
    except GreylistUnavailableError as exc:
        print(f"meta1 grey: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if exc.kind == "locked" else EX_IOERR
    if removed.triplets == 0 and removed.networks == 0:
        print(f"meta1 grey: nothing matched {args.target}", file=sys.stderr)
        return EX_NOMATCH
    triplets = f"{removed.triplets} triplet{'s' if removed.triplets != 1 else ''}"
    networks = f"{removed.networks} whitelisted network{'s' if removed.networks != 1 else ''}"
    print(f"removed {triplets} and {networks}")
    return EX_OK
