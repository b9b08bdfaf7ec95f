"""``meta1 setup [-f FILE] [--check] [--sendmail] [--force] [--destdir DIR]``: prepare a system.

Like Postfix's post-install, for a site that runs meta1py as root with worker users:

1. creates the workers' group(s) and users (``meta1`` and ``meta1q``, ``meta1r``, ``meta1c``,
   ``meta1s`` in the sample configuration) as system accounts with no home and no shell, when
   they are missing;
2. creates the queue, content, run and mail directories and smar's data directory (its
   greylisting database) with the owners and modes of the ownership model
   (:mod:`meta1py.ownership`), and repairs them when they differ;
3. checks that every worker user can read the Python installation (workers import modules after
   they dropped privileges) and that TLS keys and password files are not readable by workers;
4. with ``--sendmail``: installs ``/usr/sbin/sendmail``, ``/usr/bin/mailq`` and
   ``/usr/bin/newaliases`` wrappers that run this installation's ``meta1`` with this
   configuration, and links ``/usr/local/sbin/meta1`` (what contrib/systemd/meta1.service runs).
   An existing file that is not one of ours (Postfix's sendmail, say) is left alone unless
   ``--force`` is given. It also creates the submission group (``setgid_group``, ``meta1d``),
   which owns the pickup directory, and compiles ``meta1-postdrop`` (the setgid helper that lets
   local users submit mail while smtps cannot take it, :mod:`meta1py.cli.postdrop`) into
   ``/usr/local/libexec/meta1/postdrop``, ``root:meta1d 2755``, when a C compiler is present.

It is idempotent: a second run changes nothing and says so. ``--check`` changes nothing and only
reports; its exit status is 0 when nothing is missing or wrong, 1 otherwise. Without root, only
``--check`` is possible. ``--destdir DIR`` installs the ``--sendmail`` entry points under DIR
(for packaging, and for tests).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from meta1py.conf import Config, ConfigErrors, config_file, load_config
from meta1py.conf.accounts import process_sections
from meta1py.contract import EX_CONFIG, EX_NOPERM, EX_OK, EX_USAGE
from meta1py.ownership import Account, UnknownAccountError, resolve_accounts

EX_PROBLEMS = 1  # --check found something missing or wrong

#: The mark that tells our wrappers apart from other programs' files.
WRAPPER_MARK = "# installed by meta1 setup"
#: Entry point -> the ``meta1`` arguments it runs.
ENTRY_POINTS: dict[str, tuple[str, list[str]]] = {
    "sendmail": ("usr/sbin/sendmail", ["sendmail"]),
    "mailq": ("usr/bin/mailq", ["sendmail", "-bp"]),
    "newaliases": ("usr/bin/newaliases", ["newaliases"]),
}
META1_LINK = "usr/local/sbin/meta1"


@dataclass
class Report:
    """What setup did or found, printed at the end."""

    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {result.stderr.strip() or f'exit {result.returncode}'}")


def ensure_accounts(cfg: Config, report: Report, check: bool, submission: bool = False) -> None:
    """Create the missing groups and users (``--check``: report them); with ``submission`` also
    the submission group (``setgid_group``: the pickup directory's, ``--sendmail``)."""
    groups: list[str] = []
    users: dict[str, str] = {}
    for _key, section in process_sections(cfg):
        user, group = section.user, section.group
        if group not in groups:
            groups.append(group)
        users.setdefault(user, group)
    if submission and cfg.setgid_group not in groups:
        groups.append(cfg.setgid_group)
    for group in groups:
        if _group_exists(group):
            continue
        if check:
            report.problems.append(f"group {group} does not exist (meta1 setup creates it)")
            continue
        _run(["groupadd", "--system", group])
        report.done.append(f"created group {group}")
    for user, group in users.items():
        if _user_exists(user):
            primary = pwd.getpwnam(user).pw_gid
            if _group_exists(group) and grp.getgrnam(group).gr_gid != primary:
                report.warnings.append(
                    f"user {user}'s primary group is not {group}; the worker runs with group {group} anyway"
                )
            continue
        if check:
            report.problems.append(f"user {user} does not exist (meta1 setup creates it)")
            continue
        _run(
            [
                "useradd", "--system", "--gid", group, "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin", "--comment", "meta1py worker", user,
            ]
        )  # fmt: skip
        report.done.append(f"created user {user} (group {group})")


def _resolved(cfg: Config) -> dict[str, Account] | None:
    """The workers' accounts as mcp resolves them, or None when one is missing."""
    try:
        return resolve_accounts(cfg)
    except UnknownAccountError:
        return None


def ensure_layout(cfg: Config, report: Report, check: bool) -> None:
    """Create and repair the directories (``--check``: report what differs)."""
    from meta1py.ownership import (
        LayoutError,
        Owners,
        inspect_layout,
        python_problems,
        reach_problems,
        repair_layout,
        submission_gid,
    )

    root = os.geteuid() == 0
    resolved = None
    if root:
        resolved = _resolved(cfg)
        if resolved is None:
            report.problems.append("the directories are not checked until the accounts exist")
            return
        owners = Owners.from_accounts(resolved, submission_gid(cfg))
        report.problems.extend(python_problems(resolved))
    else:
        owners = Owners.unprivileged()
    if check:
        if root and resolved is not None:
            report.problems.extend(reach_problems(cfg, resolved))
        problems = inspect_layout(cfg, owners)
        missing = [p for p in problems if p.found == "nothing"]
        if len(missing) > 3:
            report.problems.append(f"{len(missing)} directories are missing under {cfg.queue_directory}")
        else:
            report.problems.extend(str(p) for p in missing)
        report.problems.extend(str(p) for p in problems if p.found != "nothing")
        return
    try:
        changes = repair_layout(cfg, owners)
    except LayoutError as exc:
        report.problems.append(str(exc))
        return
    finally:
        if root and resolved is not None:
            report.problems.extend(reach_problems(cfg, resolved))
    created = [c for c in changes if c.startswith("created ")]
    if len(created) > 3:
        report.done.append(f"created {len(created)} directories under {cfg.queue_directory}")
    else:
        report.done.extend(created)
    report.done.extend(c for c in changes if not c.startswith("created "))


def check_secrets(cfg: Config, report: Report) -> None:
    """Warn about TLS keys and password files that workers could read after they dropped
    privileges (smtps and smtpc load them before the drop, so root:root 0600 is enough)."""
    files: list[tuple[str, Path]] = []
    for section in cfg.smtps:
        where = f"smtps {section.name}" if section.name else "smtps"
        if section.tls.key_file is not None:
            files.append((f"{where} tls key_file", section.tls.key_file))
        if section.password_file is not None:
            files.append((f"{where} password_file", section.password_file))
    if cfg.smtpc.tls.key_file is not None:
        files.append(("smtpc tls key_file", cfg.smtpc.tls.key_file))
    for what, path in files:
        try:
            st = path.stat()
        except OSError as exc:
            report.problems.append(f"{what} {path}: {exc.strerror}")
            continue
        if stat.S_IMODE(st.st_mode) & 0o077:
            report.warnings.append(
                f"{what} {path} is mode {stat.S_IMODE(st.st_mode):04o}: other users (and workers) can "
                f"read it; meta1py reads it before dropping privileges, so: chmod 600 {path}"
            )


def _meta1_command() -> Path:
    """This installation's ``meta1`` command (next to the interpreter, as pip installs it)."""
    return Path(sys.executable).parent / "meta1"


def _wrapper_text(args: list[str], config: str | None) -> str:
    conf = f" -C {config}" if config and args[0] == "sendmail" else ""
    if config and args[0] == "newaliases":
        conf = f" -f {config}"
    command = f"{_meta1_command()} {args[0]}{conf} {' '.join(args[1:])}".rstrip()
    return f'#!/bin/sh\n{WRAPPER_MARK}\nexec {command} "$@"\n'


def install_entry_points(config: str | None, destdir: Path, force: bool, report: Report, check: bool) -> None:
    """The ``--sendmail`` step: sendmail, mailq and newaliases wrappers, and the meta1 link."""
    for name, (relative, args) in ENTRY_POINTS.items():
        target = destdir / relative
        text = _wrapper_text(args, config)
        try:
            current = target.read_text() if target.is_file() and not target.is_symlink() else None
        except (OSError, UnicodeDecodeError):
            current = None
        if current == text:
            continue
        ours = current is not None and WRAPPER_MARK in current
        if target.exists() or target.is_symlink():
            if not ours and not force:
                report.problems.append(
                    f"{target} exists and is not meta1py's (another MTA's {name}?); "
                    "remove that MTA first, or use --force to replace it"
                )
                continue
        if check:
            report.problems.append(f"{target} is not installed")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.meta1-setup")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, target)
        report.done.append(f"installed {target} ({name})")
    link = destdir / META1_LINK
    want = _meta1_command()
    if link.is_symlink() and Path(os.readlink(link)) == want:
        return
    if link.exists() or link.is_symlink():
        if not force:
            report.problems.append(f"{link} exists and does not point to {want}; use --force to replace it")
            return
    if check:
        report.problems.append(f"{link} is not installed")
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.meta1-setup")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(want)
    os.replace(tmp, link)
    report.done.append(f"linked {link} -> {want}")


def install_postdrop(cfg: Config, destdir: Path, report: Report, check: bool) -> None:
    """The ``--sendmail`` step for offline submission: compile and install ``meta1-postdrop``
    (``--check``: report it missing or out of date)."""
    from meta1py.cli.postdrop import POSTDROP_PATH, build_helper, c_compiler, helper_is_current
    from meta1py.ownership import submission_gid
    from meta1py.queue.pickup import max_file_bytes

    target = destdir / POSTDROP_PATH.lstrip("/")
    gid = submission_gid(cfg)
    if gid is None:
        if check:
            report.problems.append(f"group {cfg.setgid_group} (setgid_group) does not exist")
        return  # ensure_accounts reported why it could not make it
    limit = max_file_bytes(
        max(s.max_message_size for s in cfg.smtps), max(s.max_recipients for s in cfg.smtps)
    )
    if helper_is_current(target, gid, limit):
        return
    if check:
        report.problems.append(f"{target} (meta1-postdrop) is not installed or not up to date")
        return
    if c_compiler() is None:
        report.warnings.append(
            f"no C compiler: {target} (meta1-postdrop) not built, so only root and the queue's owner can "
            "submit mail while smtps cannot take it; apt-get install gcc libc6-dev, then run "
            "meta1 setup --sendmail again"
        )
        return
    build_helper(target, gid, limit)
    report.done.append(f"installed {target} (meta1-postdrop, setgid {cfg.setgid_group})")


def _parse(argv: list[str]) -> argparse.Namespace | int:
    ap = argparse.ArgumentParser(
        prog="meta1 setup",
        description="Create meta1py's users, group and directories (idempotent); --check only reports.",
    )
    ap.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    ap.add_argument("--check", action="store_true", help="change nothing; report what is missing or wrong")
    ap.add_argument(
        "--sendmail", action="store_true", help="also install sendmail, mailq and newaliases entry points"
    )
    ap.add_argument("--force", action="store_true", help="replace another MTA's sendmail/mailq/newaliases")
    ap.add_argument("--destdir", metavar="DIR", default="/", help="root for --sendmail files (default /)")
    try:
        return ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE


def main(argv: list[str]) -> int:
    """Run ``meta1 setup``; returns the exit status (0, 1 problems found, 64, 77, 78)."""
    args = _parse(argv)
    if isinstance(args, int):
        return args
    root = os.geteuid() == 0
    if not root and not args.check:
        print(
            "meta1 setup: only root can create users and set owners; try: meta1 setup --check",
            file=sys.stderr,
        )
        return EX_NOPERM
    path = config_file(args.config)
    try:
        cfg = load_config(path)
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        print(f"meta1 setup: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CONFIG
    report = Report()
    try:
        if root:
            ensure_accounts(cfg, report, args.check, submission=args.sendmail)
        ensure_layout(cfg, report, args.check)
        check_secrets(cfg, report)
        if args.sendmail:
            config = str(Path(path).resolve()) if path else None
            install_entry_points(config, Path(args.destdir), args.force, report, args.check)
            if root:
                install_postdrop(cfg, Path(args.destdir), report, args.check)
    except OSError as exc:
        report.problems.append(str(exc))
    for line in report.done:
        print(f"meta1 setup: {line}")
    for line in report.warnings:
        print(f"meta1 setup: warning: {line}", file=sys.stderr)
    for line in report.problems:
        print(f"meta1 setup: {'' if args.check else 'error: '}{line}", file=sys.stderr)
    if not report.done and not report.problems:
        print("meta1 setup: nothing to do: " + ("everything is in place" if args.check else "already set up"))
    return EX_PROBLEMS if report.problems else EX_OK
