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


def process_sections(cfg: Config) -> list[tuple[str, ProcessConfig]]:
    """Every process section with its location key: ``qmgr``, ``smar``, ``smtpc``, ``smtps[i]``."""
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
    for key, proc in process_sections(cfg):
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
                setup = f"meta1 setup -f {cfg.path}" if cfg.path is not None else "meta1 setup"
                if kind == "user":
                    by_hand = f"useradd --system --no-create-home --shell /usr/sbin/nologin {name}"
                else:
                    by_hand = f"groupadd --system {name}"
                hint = f"create the accounts and directories with: {setup} (or by hand: {by_hand})"
                where = "" if f"{key}.{kind}" in cfg.locations else f" (the default for {section})"
                errors.append(_error(cfg, f"{key}.{kind}", f"{kind} {name!r} does not exist{where}", hint))
    return errors + _default_privs_problems(cfg)


def _default_privs_problems(cfg: Config) -> list[ConfigError]:
    """``default_privs`` must be an unprivileged account of its own when commands or files are
    delivered (as root: otherwise everything runs as the invoking user)."""
    if not (cfg.allow_mail_to_commands or cfg.allow_mail_to_files):
        return []
    import pwd

    name = cfg.default_privs
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return [_error(cfg, "default_privs", f"default_privs user {name!r} does not exist", "use nobody")]
    workers = {proc.user for _key, proc in process_sections(cfg)}
    if account.pw_uid == 0 or account.pw_gid == 0:
        problem = f"default_privs user {name!r} is privileged (uid or gid 0)"
    elif name in workers:
        problem = f"default_privs user {name!r} is a meta1py worker account"
    else:
        return []
    return [_error(cfg, "default_privs", problem, "commands and files must run unprivileged: use nobody")]


def _file_problem(path: Path, directory: bool = False) -> str | None:
    """Why ``path`` cannot be read (None: it can)."""
    if directory:
        if not path.is_dir():
            return "does not exist" if not path.exists() else "is not a directory"
        if not os.access(path, os.R_OK | os.X_OK):
            return "is not readable"
        return None
    if not path.is_file():
        return "does not exist" if not path.exists() else "is not a regular file"
    if not os.access(path, os.R_OK):
        return "is not readable"
    return None


def _smar_map_files(cfg: Config) -> list[tuple[str, str, Path, Path | None]]:
    """The files of smar's map options (``aliases``, ``routes``, ``access``), as ``(location key,
    option, file, text map it is compiled from or None)``: a text member's file, a compiled
    member's ``FILE.cdb`` (socketmap members have no file)."""
    files: list[tuple[str, str, Path, Path | None]] = []
    for attr in ("aliases", "routes", "access"):
        spec = getattr(cfg.smar, attr)
        if spec is None:
            continue
        for member in spec.files:
            assert member.path is not None
            if member.kind == "text":
                files.append((f"smar.{attr}", attr, member.path, None))
            else:
                # Only here: the map code is a large import that mcp's start does not need.
                from meta1py.maps.compiled import compiled_path

                files.append(
                    (f"smar.{attr}", attr, Path(compiled_path(member.path, member.kind)), member.path)
                )
    return files


def _configured_files(cfg: Config) -> list[tuple[str, str, Path, bool]]:
    """Every file option that is set, as ``(location key, option spelling, path, is_directory)``."""
    files: list[tuple[str, str, Path | None, bool]] = [
        (key, name, path, False) for key, name, path, _source in _smar_map_files(cfg)
    ]
    files.append(("smtpc.tls_policy", "tls_policy", cfg.smtpc.tls_policy, False))
    ctls = cfg.smtpc.tls
    files += [
        ("smtpc.tls.cert_file", "cert_file", ctls.cert_file, False),
        ("smtpc.tls.key_file", "key_file", ctls.key_file, False),
        ("smtpc.tls.ca_file", "CA_file", ctls.ca_file, False),
        ("smtpc.tls.ca_directory", "CA_directory", ctls.ca_directory, True),
    ]
    for i, section in enumerate(cfg.smtps):
        stls, key = section.tls, f"smtps[{i}]"
        files += [
            (f"{key}.tls.cert_file", "cert_file", stls.cert_file, False),
            (f"{key}.tls.key_file", "key_file", stls.key_file, False),
            (f"{key}.tls.ca_file", "CA_file", stls.ca_file, False),
            (f"{key}.tls.ca_directory", "CA_directory", stls.ca_directory, True),
            (f"{key}.tls.crl_file", "CRL_file", stls.crl_file, False),
            (f"{key}.password_file", "password_file", section.password_file, False),
        ]
    return [(key, name, path, is_dir) for key, name, path, is_dir in files if path is not None]


def check_files(cfg: Config) -> list[ConfigError]:
    """Files the workers will need that are configured but cannot be read.

    Map files (smar ``aliases``/``routes``/``access``: text files and the compiled files of
    ``cdb:`` maps; smtpc ``tls_policy``), TLS certificates, keys, CA files and directories and
    CRLs (smtps and smtpc ``tls``), and smtps ``password_file``. Readability is checked as the
    calling user, and as root also for smar's user on smar's map files (smar opens them after it
    dropped privileges); whether a certificate matches its key is found out by the worker that
    loads it.

    Returns:
        One error per file, located at the option that names it.
    """
    errors: list[ConfigError] = []
    sources = {path: source for _key, _name, path, source in _smar_map_files(cfg) if source is not None}
    for key, name, path, is_dir in _configured_files(cfg):
        problem = _file_problem(path, is_dir)
        if problem is None:
            continue
        kind = "directory" if is_dir else "file"
        hint = (
            f"relative paths are relative to queue_directory ({cfg.queue_directory})"
            if problem == "does not exist"
            else ""
        )
        source = sources.get(path)
        if source is not None:
            kind = "compiled map"
            if problem == "does not exist":
                hint = f"compile it with: meta1 makemap {name} {source}"
        errors.append(_error(cfg, key, f"{name} {kind} {str(path)!r} {problem}", hint))
    return errors + _smar_reach_problems(cfg) + _zone_file_problems(cfg)


def _zone_file_problems(cfg: Config) -> list[ConfigError]:
    """Test mode's ``zone_file`` (smar's fake DNS): it must exist, parse, and (as root) be
    readable by smar's user, who reads it after dropping privileges."""
    path = cfg.test_mode.zone_file
    if not cfg.test_mode.enable or path is None:
        return []
    key = "test_mode.zone_file"
    problem = _file_problem(path)
    if problem is not None:
        hint = f"relative paths are relative to queue_directory ({cfg.queue_directory})"
        return [
            _error(
                cfg, key, f"zone_file {str(path)!r} {problem}", hint if problem == "does not exist" else ""
            )
        ]
    # Only here: dnspython is a large import that a start without a zone file does not need.
    from meta1py.testmode.zone import ZoneFileError, load_zone

    try:
        load_zone(path)
    except ZoneFileError as exc:
        return [_error(cfg, key, f"zone_file {exc}", "an RFC 1035 master file; see docs/testmode.md")]
    if os.geteuid() == 0:
        import grp
        import pwd

        from meta1py.ownership import access_problem

        try:
            uid, gid = pwd.getpwnam(cfg.smar.user).pw_uid, grp.getgrnam(cfg.smar.group).gr_gid
        except KeyError:
            return []  # check_accounts reports it
        reason = access_problem(path, uid, {gid})
        if reason is not None:
            hint = f"let {cfg.smar.user} read it (chgrp {cfg.smar.group} and chmod g+r, or o+r)"
            return [_error(cfg, key, f"smar cannot read zone_file {str(path)!r}: {reason}", hint)]
    return []


def _smar_reach_problems(cfg: Config) -> list[ConfigError]:
    """smar's map files that smar's user cannot read (as root, when the account exists): smar
    opens them after it dropped privileges, at start and whenever they are replaced."""
    if os.geteuid() != 0:
        return []
    import grp
    import pwd

    from meta1py.ownership import access_problem

    try:
        uid = pwd.getpwnam(cfg.smar.user).pw_uid
        gid = grp.getgrnam(cfg.smar.group).gr_gid
    except KeyError:
        return []  # check_accounts reports it
    errors: list[ConfigError] = []
    for key, name, path, source in _smar_map_files(cfg):
        if not path.exists():
            continue  # reported above
        # Workers keep only their primary group (setgroups([gid])).
        reason = access_problem(path, uid, {gid})
        if reason is None:
            continue
        hint = f"let {cfg.smar.user} read it (chgrp {cfg.smar.group} and chmod g+r, or o+r)"
        if source is not None:
            hint += "; meta1 makemap gives the compiled file the text map's owner, group and mode"
        errors.append(_error(cfg, key, f"smar cannot read {name} file {str(path)!r}: {reason}", hint))
    return errors


def check_tls_support(cfg: Config) -> list[ConfigError]:
    """smtps sections that ask clients for a certificate where this Python cannot do that.

    ``request_cert`` (on by default once a section has a ``cert_file``) needs the verify hook of
    :mod:`meta1py.tls.hook`; without it smtps refuses to start the section, so say so here first.

    Returns:
        One error per such section, located at its ``tls { flags }`` (or ``cert_file`` when the
        flag is the default).
    """
    wanted = [i for i, s in enumerate(cfg.smtps) if s.tls.cert_file is not None and s.requests_client_cert()]
    if not wanted:
        return []
    # Imported here: the hook loads ssl and ctypes, which conf needs only when a section asks.
    from meta1py.tls import hook

    problem = hook.probe()
    if problem is None:
        return []
    errors: list[ConfigError] = []
    for i in wanted:
        explicit = f"smtps[{i}].tls.flags" in cfg.locations
        key = f"smtps[{i}].tls.flags" if explicit else f"smtps[{i}].tls.cert_file"
        what = "request_cert" if explicit else "request_cert (on by default with a cert_file)"
        hint = (
            "turn it off with tls { flags = { dont_request_cert }; } (clients are then not asked for a"
            " certificate), or run CPython 3.11 to 3.13"
        )
        errors.append(_error(cfg, key, f"{what} cannot be honoured on this Python: {problem}", hint))
    return errors
