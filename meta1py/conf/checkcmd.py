"""``meta1 check-config [-f FILE] [-n] [--defaults]``: check meta1.conf.

Exit 0 and print nothing when the file is valid (with ``-n``: print the settings that differ from
the defaults, in configuration syntax); exit 1 with every error on stderr otherwise.
``--defaults`` prints every option with its default. Without ``-f`` the file is $META1_CONF, else
/etc/meta1/meta1.conf if it exists, else the built-in defaults.
"""

from __future__ import annotations

import argparse
import sys

from meta1py.conf.accounts import check_accounts, check_files, check_tls_support
from meta1py.conf.dump import defaults_text, dump_config
from meta1py.conf.errors import ConfigErrors
from meta1py.conf.location import config_file
from meta1py.conf.parser import load_config

EX_OK, EX_INVALID, EX_USAGE = 0, 1, 64


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
    problems = check_files(cfg) + check_accounts(cfg) + check_tls_support(cfg)
    if problems:
        print(str(ConfigErrors(problems)), file=sys.stderr)
        return EX_INVALID
    if args.show:
        sys.stdout.write(dump_config(cfg, only_changed=True))
    return EX_OK
