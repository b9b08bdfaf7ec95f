"""Checks that look at the system rather than the text: user accounts and files.

They are separate from parsing because workers re-parse the config that mcp hands them and must
not depend on the file system for that; mcp and ``check-config`` call them once.
"""

from __future__ import annotations

import os
from pathlib import Path

from meta1py.conf.errors import ConfigError
from meta1py.conf.model import Config, ProcessConfig


def _source_line(path: str, line: int) -> str:
    if line <= 0 or path.startswith("<"):
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, text in enumerate(fh, 1):
                if n == line:
                    return text.rstrip("\r\n")
    except OSError:
        pass
    return ""


def _error(cfg: Config, key: str, message: str, hint: str) -> ConfigError:
    default_path = str(cfg.path) if cfg.path is not None else "<defaults>"
    path, line, col = cfg.locations.get(key, (default_path, 0, 0))
    return ConfigError(path, line, col, message, hint, _source_line(path, line))


def _processes(cfg: Config) -> list[tuple[str, ProcessConfig]]:
    procs: list[tuple[str, ProcessConfig]] = [("qmgr", cfg.qmgr), ("smar", cfg.smar), ("smtpc", cfg.smtpc)]
    procs += [(f"smtps[{i}]", s) for i, s in enumerate(cfg.smtps)]
    return procs


def check_accounts(cfg: Config) -> list[ConfigError]:
    """Users and groups that do not exist, when running as root (otherwise they are not used).

    Returns:
        One error per missing account, with the command that creates it as the hint.
    """
    if os.geteuid() != 0:
        return []  # not root: every process runs as the invoking user
    import grp
    import pwd

    errors: list[ConfigError] = []
    reported: set[tuple[str, str]] = set()
    for key, proc in _processes(cfg):
        section = key.split("[")[0]
        for kind, name in (("user", proc.user), ("group", proc.group)):
            if (kind, name) in reported:
                continue
            try:
                if kind == "user":
                    pwd.getpwnam(name)
                else:
                    grp.getgrnam(name)
            except KeyError:
                reported.add((kind, name))
                if kind == "user":
                    hint = f"create it: useradd --system --no-create-home --shell /usr/sbin/nologin {name}"
                else:
                    hint = f"create it: groupadd --system {name}"
                where = "" if f"{key}.{kind}" in cfg.locations else f" (the default for {section})"
                errors.append(_error(cfg, f"{key}.{kind}", f"{kind} {name!r} does not exist{where}", hint))
    return errors


def check_files(cfg: Config) -> list[ConfigError]:
    """Map files that are configured but cannot be read."""
    errors: list[ConfigError] = []
    for attr in ("aliases", "routes"):
        path: Path | None = getattr(cfg.smar, attr)
        if path is None:
            continue
        if not path.is_file():
            problem = "does not exist" if not path.exists() else "is not a regular file"
            errors.append(
                _error(
                    cfg,
                    f"smar.{attr}",
                    f"{attr} file {str(path)!r} {problem}",
                    f"relative paths are relative to queue_directory ({cfg.queue_directory})",
                )
            )
        elif not os.access(path, os.R_OK):
            errors.append(_error(cfg, f"smar.{attr}", f"{attr} file {str(path)!r} is not readable", ""))
    return errors
