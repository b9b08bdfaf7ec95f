"""What mcp does as root: resolve the workers' accounts, create directories with owners and modes.

mcp itself never drops privileges (it must bind new ports on SIGHUP and restart workers); it runs
no network code and parses only its own config file. Workers drop privileges themselves, in
``meta1py.worker.drop_privileges``, before they read a byte from the network.

Who owns which path, with which mode, is the ownership model in :mod:`meta1py.ownership` (the
table is there and in docs/internals.md); :func:`prepare_directories` applies it at every start.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from meta1py import ownership
from meta1py.mcp.spawn import StartupError
from meta1py.ownership import (
    PRIVATE_SOCKET_MODE,
    SHARED_SOCKET_MODE,
    Account,
    Expected,
    LayoutError,
    Owners,
    create_deferred,
    python_problems,
    reach_problems,
    repair_layout,
)

if TYPE_CHECKING:
    from meta1py.conf import Config

log = logging.getLogger(__name__)


def is_root() -> bool:
    """True when mcp runs with root privileges (then workers drop to their accounts)."""
    return os.geteuid() == 0


def resolve_accounts(cfg: Config) -> dict[str, Account]:
    """Look up every worker's ``user``/``group`` (`meta1py.ownership.resolve_accounts`).

    Raises:
        StartupError: an account does not exist.
    """
    try:
        return ownership.resolve_accounts(cfg)
    except ownership.UnknownAccountError as exc:
        raise StartupError(str(exc)) from None


def owners_of(accounts: dict[str, Account] | None, submission_gid: int | None = None) -> Owners:
    """The owners of the layout: the workers' accounts (and the submission group's gid, the pickup
    directory's group), or the invoking user when unprivileged."""
    if accounts is None:
        return Owners.unprivileged()
    return Owners.from_accounts(accounts, submission_gid)


def prepare_directories(cfg: Config, accounts: dict[str, Account] | None) -> list[Expected]:
    """Create and repair the queue, content, run, mail and smar data directories as the ownership
    model says.

    Args:
        cfg: the configuration.
        accounts: from ``resolve_accounts`` when root; None when unprivileged.

    Returns:
        The missing directories that may be made while the workers start (most content
        subdirectories on a first start): pass them to :func:`create_deferred_directories`.

    Raises:
        StartupError: a path cannot be made right (which path, what was found, what was expected).
    """
    deferred: list[Expected] = []
    try:
        changes = repair_layout(cfg, owners_of(accounts, ownership.submission_gid(cfg)), deferred)
    except LayoutError as exc:
        raise StartupError(str(exc)) from exc
    created = [c for c in changes if c.startswith("created ")]
    if len(created) > 3:
        log.info("created %d directories under %s", len(created), cfg.queue_directory)
    else:
        for change in created:
            log.info("%s", change)
    for change in changes:
        if not change.startswith("created "):
            log.warning("%s", change)
    return deferred


def create_deferred_directories(cfg: Config, items: list[Expected], stop: threading.Event) -> None:
    """Make what :func:`prepare_directories` left for later (in a thread, while the workers
    start; ``stop`` cuts it short); a failure is logged (writers keep to the seed
    subdirectories; the next start tries again)."""
    if not items:
        return
    try:
        made = create_deferred(items, stop)
    except LayoutError as exc:
        log.error("%s", exc)
        return
    log.info("created %d more content directories under %s", made, cfg.queue_directory)


def check_access(cfg: Config, accounts: dict[str, Account] | None) -> None:
    """Make sure every worker account can read the Python installation and reach its directories
    (see :func:`meta1py.ownership.python_problems` and :func:`~meta1py.ownership.reach_problems`).

    Raises:
        StartupError: an account cannot; the message says which path and how to fix it.
    """
    if accounts is None:
        return
    problems = python_problems(accounts) + reach_problems(cfg, accounts)
    if problems:
        raise StartupError("\n".join(problems))


def rpc_socket_owner(name: str, accounts: dict[str, Account] | None) -> tuple[int, int, int] | None:
    """``(uid, gid, mode)`` for worker ``name``'s RPC socket (None: unprivileged, keep ours).

    ``smtpc.sock`` is qmgr's alone (0600): no other worker may ask smtpc to deliver. The others
    are root:shared 0660.
    """
    if accounts is None:
        return None
    shared = accounts["qmgr"].gid
    if name == "smtpc":
        return accounts["qmgr"].uid, 0, PRIVATE_SOCKET_MODE
    return 0, shared, SHARED_SOCKET_MODE


def write_pid_file(path: Path) -> None:
    """Write mcp's pid to ``path`` (atomically: write a temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(f"{os.getpid()}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise StartupError(f"cannot write pid file {path}: {exc.strerror or exc}") from exc
