"""``meta1 passwd USER``: print a password file line for AUTH (reads the password from stdin or a tty)."""

from __future__ import annotations

import getpass
import sys

from meta1py.passwords import hash_password


def main(argv: list[str]) -> int:
    """Prompt for a password (twice on a terminal) and print ``USER:{SCRYPT}...``."""
    usage = "usage: meta1 passwd USER   (the password is read from the terminal or stdin)"
    if argv in (["-h"], ["--help"]):
        print(usage)
        print("Print a line for smtps's password_file: USER:{SCRYPT}... (append it to the file).")
        return 0
    if len(argv) != 1 or argv[0].startswith("-") or ":" in argv[0]:
        print(usage, file=sys.stderr)
        return 64
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("meta1 passwd: the passwords differ", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        print("meta1 passwd: empty password refused", file=sys.stderr)
        return 1
    print(f"{argv[0]}:{hash_password(first)}")
    return 0
