"""What mcp does as root: resolve the workers' accounts, create directories with owners and modes.

mcp itself never drops privileges (it must bind new ports on SIGHUP and restart workers); it runs
no network code and parses only its own config file. Workers drop privileges themselves, in
``meta1py.worker.drop_privileges``, before they read a byte from the network.

Ownership when mcp runs as root (``group`` is the qmgr section's group, ``meta1`` by default, which
every worker shares):

================  ==================  =====  ============================================
directory         owner:group         mode   why
================  ==================  =====  ============================================
queue_directory   qmgr user:group     0770   smtps writes content, smtpc reads, qmgr owns
run_directory     root:group          0750   workers connect to sockets; cannot replace them
mail_directory    smtpc user:group    0750   smtpc delivers Maildir mail
RPC sockets       root:group          0660   any worker may connect
mcp.pid           root:root           0644
================  ==================  =====  ============================================

When mcp is not root, everything is created as the invoking user with the same modes.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meta1py.mcp.spawn import StartupError
from meta1py.worker import WORKER_NAMES, process_config

if TYPE_CHECKING:
    from meta1py.conf import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    """A worker's account, resolved."""

    user: str
    group: str
    uid: int
    gid: int


def is_root() -> bool:
    """True when mcp runs with root privileges (then workers drop to their accounts)."""
    return os.geteuid() == 0


def resolve_accounts(cfg: Config) -> dict[str, Account]:
    """Look up every worker's ``user``/``group``.

    Raises:
        StartupError: an account does not exist (``conf.check_accounts`` normally reports this
            earlier, with the ``useradd`` line to fix it).
    """
    accounts: dict[str, Account] = {}
    for name in WORKER_NAMES:
        section = process_config(cfg, name)
        if section is None:
            continue
        try:
            uid = pwd.getpwnam(section.user).pw_uid
            gid = grp.getgrnam(section.group).gr_gid
        except KeyError as exc:
            raise StartupError(f"{name}: unknown account {exc.args[0]}") from None
        accounts[name] = Account(section.user, section.group, uid, gid)
    return accounts


def _make_dir(path: Path, mode: int, uid: int | None, gid: int | None) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        if uid is not None and gid is not None:
            os.chown(path, uid, gid)
        os.chmod(path, mode)
    except OSError as exc:
        raise StartupError(f"cannot create directory {path}: {exc.strerror or exc}") from exc


def prepare_directories(cfg: Config, accounts: dict[str, Account] | None) -> None:
    """Create queue, run and mail directories with the owners and modes in this module's table.

    Args:
        cfg: the configuration.
        accounts: from ``resolve_accounts`` when root; None when unprivileged.

    Raises:
        StartupError: a directory cannot be created or changed.
    """
    if accounts is None:
        _make_dir(cfg.queue_directory, 0o750, None, None)
        _make_dir(cfg.run_directory, 0o750, None, None)
        _make_dir(cfg.mail_directory, 0o750, None, None)
        return
    qmgr = accounts["qmgr"]
    smtpc = accounts.get("smtpc", qmgr)
    _make_dir(cfg.queue_directory, 0o770, qmgr.uid, qmgr.gid)
    _make_dir(cfg.run_directory, 0o750, 0, qmgr.gid)
    _make_dir(cfg.mail_directory, 0o750, smtpc.uid, qmgr.gid)


def shared_gid(accounts: dict[str, Account] | None) -> int | None:
    """The group that owns the run directory and RPC sockets (None when unprivileged)."""
    if accounts is None:
        return None
    return accounts["qmgr"].gid


def write_pid_file(path: Path) -> None:
    """Write mcp's pid to ``path`` (atomically: write a temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(f"{os.getpid()}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise StartupError(f"cannot write pid file {path}: {exc.strerror or exc}") from exc
