"""``meta1 run [-f FILE]``: validate the config, prepare directories and sockets, supervise.

Everything that can fail for a reason the operator must fix happens before any worker starts:
config errors (exit 78, printed to stderr), then directories and sockets (exit 71). In between, the
fork server is forked (meta1py.mcp.forkserver), before any socket is bound. Only then does
``trio.run`` start the supervisor.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from meta1py.contract import EX_CONFIG, EX_OSERR, EX_USAGE

if TYPE_CHECKING:
    import socket

    from meta1py.conf import Config
    from meta1py.mcp.forkserver import ForkServer
    from meta1py.mcp.spawn import Launched
    from meta1py.ownership import Account

# The rest (trio, the configuration model, the supervisor) is imported in main(), after the fork
# server has been forked: it imports the workers' code on the other core meanwhile, which takes
# a fifth of a second off the time to the first greeting (bench/startup.py).

log = logging.getLogger("meta1py.mcp")


def config_path(option: str | None) -> Path | None:
    """The file to load (see :func:`meta1py.conf.config_file`); None means the built-in defaults."""
    from meta1py.conf import config_file

    path = config_file(option)
    return Path(path) if path is not None else None


def _parse_args(argv: list[str]) -> argparse.Namespace | None:
    parser = argparse.ArgumentParser(
        prog="meta1 run",
        description="Start mcp and the meta1py workers in the foreground (systemd Type=notify).",
    )
    parser.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    parser.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    parser.add_argument(
        "--test-mode",
        action="store_true",
        help="run in test mode (docs/testmode.md): capture deliveries, serve the control API;"
        " META1_TEST=1 in the environment does the same",
    )
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return None if exc.code else argparse.Namespace(help=True)


def main(argv: list[str]) -> int:
    """Run mcp; returns its exit status (0, 1 hard failure, 64, 71, 77, 78)."""
    args = _parse_args(argv)
    if args is None:
        return EX_USAGE
    if getattr(args, "help", False):
        return 0
    # First of all, before the heavy imports below: the fork server imports the workers' code on
    # the other core meanwhile. It holds no descriptor but its own (nothing is open yet: no log
    # file, no socket; meta1py.mcp.forkserver). A configuration error stops it again.
    from meta1py.mcp.forkserver import ForkServer

    forkserver = ForkServer.start()
    try:
        from meta1py.conf import ConfigErrors, check_accounts, check_files, load_config, with_test_mode
        from meta1py.conf.accounts import check_tls_support
        from meta1py.mcp.privs import is_root

        path = config_path(args.config)
        root = is_root()
        try:
            cfg = load_config(path)
            if args.test_mode or os.environ.get("META1_TEST") == "1":
                cfg = with_test_mode(cfg)
            # Files the workers would fail on (maps, certificates, password files): report them
            # here, all at once and with file:line:col, rather than as a worker exiting 78.
            problems = check_files(cfg) + check_tls_support(cfg) + (check_accounts(cfg) if root else [])
            if problems:
                raise ConfigErrors(problems)
        except ConfigErrors as exc:
            print(str(exc), file=sys.stderr)
            return EX_CONFIG
        except OSError as exc:
            print(f"meta1 run: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return EX_CONFIG
        return _run(args, cfg, path, root, forkserver)
    finally:
        if forkserver is not None:
            forkserver.stop()


def _run(
    args: argparse.Namespace, cfg: Config, path: Path | None, root: bool, forkserver: ForkServer | None
) -> int:

    import threading

    from meta1py.conf import config_wire, listen_sockets
    from meta1py.contract import RPC_SERVERS, mcp_pid_path, mcp_status_path, rpc_socket_path
    from meta1py.log import setup_logging
    from meta1py.mcp.privs import (
        check_access,
        create_deferred_directories,
        prepare_directories,
        resolve_accounts,
        rpc_socket_owner,
        write_pid_file,
    )
    from meta1py.mcp.spawn import StartupError, bind_listener, bind_rpc_socket
    from meta1py.status import install_recent_errors

    setup_logging("mcp", cfg.log_level, syslog=args.syslog, log_format=cfg.log_format)
    # mcp's own last errors (a worker's death among them) go into its status file.
    install_recent_errors("mcp")
    log.info("starting with %s%s", path or "the built-in defaults", " as root" if root else "")
    if forkserver is not None:
        log.info("fork server started (pid %d): workers are forked from it", forkserver.pid)

    listeners: dict[tuple[str, int], socket.socket] = {}
    rpc_sockets: dict[str, socket.socket] = {}
    metrics_listener: socket.socket | None = None
    test_listener: socket.socket | None = None
    pid_file = mcp_pid_path(cfg.run_directory)
    try:
        accounts = resolve_accounts(cfg) if root else None
        deferred = prepare_directories(cfg, accounts)
        check_access(cfg, accounts)
        for _section, ls in listen_sockets(cfg):
            key = (ls.address, ls.port)
            if key not in listeners:
                listeners[key] = bind_listener(ls.address, ls.port)
                log.info("listening on %s:%d", *key)
        if cfg.test_mode.enable:
            # Bound here and answered by qmgr, as the metrics endpoint is.
            test_listener = bind_listener(*cfg.test_mode.listen)
            log.warning(
                "TEST MODE: deliveries are captured, never sent; control API on http://%s/ (served by qmgr)",
                _hostport(*cfg.test_mode.listen),
            )
        if cfg.metrics.listen is not None:
            # Bound here (as root, like port 25) and answered by qmgr: mcp never reads from it.
            metrics_listener = bind_listener(*cfg.metrics.listen)
            log.info("metrics endpoint on %s:%d (served by qmgr)", *cfg.metrics.listen)
        for name in RPC_SERVERS:
            sock_path = rpc_socket_path(cfg.run_directory, name)
            rpc_sockets[name] = bind_rpc_socket(sock_path, rpc_socket_owner(name, accounts))
        write_pid_file(pid_file)
    except StartupError as exc:
        log.critical("%s", exc)
        _close_all(listeners, rpc_sockets, cfg.run_directory)
        for extra in (metrics_listener, test_listener):
            if extra is not None:
                extra.close()
        return EX_OSERR

    config_text = config_wire(cfg)
    lifeline = os.pipe()
    # Until the supervisor's own handlers take over, a signal is noted, not obeyed at once: a
    # SIGTERM now still stops the workers in order (and cleans up) once the supervisor runs.
    early_signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: early_signals.append(signum))
    # The workers start now, before mcp imports trio and its supervisor (a tenth of a second):
    # the supervisor adopts them. smtps first, since the first greeting waits for it.
    prestarted = _prestart(
        cfg,
        config_text,
        listeners,
        rpc_sockets,
        metrics_listener,
        test_listener,
        accounts,
        lifeline[0],
        args.syslog,
        forkserver,
        early_signals,
    )
    stop_later = threading.Event()
    later = threading.Thread(
        target=create_deferred_directories, args=(cfg, deferred, stop_later), name="mkdirs"
    )
    later.start()
    try:
        import trio

        from meta1py.mcp.supervise import Supervisor

        supervisor = Supervisor(
            cfg,
            path,
            config_text,
            listeners,
            rpc_sockets,
            accounts,
            syslog=args.syslog,
            forkserver=forkserver,
            metrics_listener=metrics_listener,
            test_listener=test_listener,
            lifeline=lifeline,
            prestarted=prestarted,
            early_signals=early_signals,
        )
        return trio.run(supervisor.run)
    finally:
        stop_later.set()
        later.join()
        _close_all(supervisor.listeners, rpc_sockets, cfg.run_directory)
        for extra in (supervisor.metrics_listener, supervisor.test_listener):
            if extra is not None:
                extra.close()
        mcp_status_path(cfg.run_directory).unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)


#: The order the first workers start in: smtps first (the first greeting waits for it), then
#: smar (its reverse lookups), qmgr, smtpc.
PRESTART_ORDER = ("smtps", "smar", "qmgr", "smtpc")


def _prestart(
    cfg: Config,
    config_text: str,
    listeners: dict[tuple[str, int], socket.socket],
    rpc_sockets: dict[str, socket.socket],
    metrics_listener: socket.socket | None,
    test_listener: socket.socket | None,
    accounts: dict[str, Account] | None,
    lifeline_r: int,
    syslog: bool,
    forkserver: ForkServer | None,
    early_signals: list[int],
) -> dict[str, Launched]:
    """Start every worker (the supervisor adopts them); one that cannot be started is left to the
    supervisor, which retries and reports it. A SIGTERM or SIGINT meanwhile ends the round."""
    from meta1py.mcp.spawn import launch_worker, worker_fds

    started: dict[str, Launched] = {}
    for name in PRESTART_ORDER:
        if signal.SIGTERM in early_signals or signal.SIGINT in early_signals:
            break
        account = accounts.get(name) if accounts else None
        try:
            started[name] = launch_worker(
                name,
                config_text,
                worker_fds(name, cfg, listeners, rpc_sockets, metrics_listener, test_listener),
                lifeline_r,
                user=account.user if account else None,
                group=account.group if account else None,
                syslog=syslog,
                forkserver=forkserver,
            )
        except OSError as exc:
            log.warning("cannot start %s yet (%s): the supervisor tries again", name, exc)
    return started


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _close_all(
    listeners: dict[tuple[str, int], socket.socket],
    rpc_sockets: dict[str, socket.socket],
    run_directory: Path,
) -> None:
    from meta1py.contract import rpc_socket_path

    for sock in listeners.values():
        sock.close()
    for name, sock in rpc_sockets.items():
        sock.close()
        rpc_socket_path(run_directory, name).unlink(missing_ok=True)
