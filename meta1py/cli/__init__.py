"""The ``meta1`` command: one entry point, one module per subcommand in this package.

Each subcommand module exposes ``main(argv: list[str]) -> int``;
this module only dispatches, so that ``meta1 check-config`` never imports trio and
``meta1 run`` never imports the queue tools.
"""

from __future__ import annotations

import importlib
import sys

from meta1py import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("meta1py.mcp.main", "start mcp and the workers in the foreground"),
    "check-config": ("meta1py.conf.checkcmd", "check meta1.conf; -n prints non-default settings"),
    "config": (
        "meta1py.cli.config",
        "print the effective value of options (postconf): [-n] [--json] [NAME...]",
    ),
    "queue": ("meta1py.cli.queue", "list, show, flush, delete, bounce, hold, release queued mail"),
    "sendmail": (
        "meta1py.cli.sendmail",
        "sendmail-compatible submission (-t, -bs, -bv, -bp, -q, -bi); the pickup directory when down",
    ),
    "passwd": ("meta1py.cli.passwd", "create a password file entry for AUTH"),
    "setup": ("meta1py.cli.setup", "create the worker users and directories; --check only reports"),
    "newaliases": ("meta1py.cli.newaliases", "check the aliases file (smar reloads it by itself)"),
    "explain": ("meta1py.smar.explain", "what smar would answer at RCPT TO, and why (no mail sent)"),
    "manpages": ("meta1py.cli.manpages", "write the manual pages (meta1(8), meta1.conf(5), ...) from docs/"),
    "map": ("meta1py.cli.map", "map query MAP KEY...: look keys up as the MTA would (postmap -q)"),
    "makemap": ("meta1py.cli.makemap", "compile a map file to FILE.cdb, checking every line (postmap)"),
    "grey": ("meta1py.smar.greycmd", "greylisting database: list, remove (greyprint, greyrm)"),
    "status": ("meta1py.cli.status", "is meta1 running: processes, queue by state, last errors"),
    "monitor": ("meta1py.cli.monitor", "live counters, one line per second (smtpctl monitor)"),
}


def _usage() -> str:
    lines = ["usage: meta1 COMMAND [ARGS...]", "", "commands:"]
    for name, (_module, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<14}{text}")
    lines.append(f"  {'version':<14}print the version")
    lines.append(f"  {'completion':<14}completion bash: print a bash completion script")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``meta1 COMMAND ...`` to the module that implements COMMAND."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 64
    command, rest = args[0], args[1:]
    if command == "completion":
        from meta1py.cli import completion

        return completion.main(rest)
    if command in ("version", "--version"):
        print(f"meta1py {__version__}")
        return 0
    entry = SUBCOMMANDS.get(command)
    if entry is None:
        print(f"meta1: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 64
    module = importlib.import_module(entry[0])
    result: int = module.main(rest)
    return result
