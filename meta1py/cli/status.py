"""``meta1 status``: is meta1 running, its processes, the queue by state, the last errors.

Where it looks: ``mcp.pid`` in the run directory (is mcp there?), mcp's status file ``mcp.status``
beside it (each worker's pid, start time and restarts, mcp's recent errors; meta1py.status), and
qmgr over ``qmgr.sock`` (``QueueStatusRequest``: the queue by state, and the recent errors of
qmgr, smar, smtpc and smtps). Run it as root or as a member of the queue's group (``meta1``), as
``meta1 queue``.

Exit status, as an LSB init script's ``status`` action (and ``systemctl status``) gives it:

* 0: mcp is running (even when a worker is down or qmgr does not answer: the output says so);
* 1: not running, but ``mcp.pid`` is left over (mcp was killed);
* 3: not running;
* 4: unknown: the configuration or the run directory cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from meta1py.conf import Config, ConfigErrors, config_file, load_config
from meta1py.contract import WORKER_NAMES, mcp_pid_path, mcp_status_path, rpc_socket_path
from meta1py.rpc.errors import RpcError
from meta1py.rpc.messages import ErrorRecordValue, QueueStatusReply
from meta1py.status import McpStatus, merge_errors, read_mcp_status

EX_RUNNING = 0
EX_DEAD_PID_FILE = 1
EX_NOT_RUNNING = 3
EX_UNKNOWN = 4
EX_USAGE = 64

#: How long ``meta1 status`` waits for qmgr.
QMGR_TIMEOUT_S = 5.0
#: Errors shown.
SHOWN_ERRORS = 10


def load(option: str | None, prog: str) -> Config | None:
    """The configuration ``-f`` names (or the default one); None after printing why not."""
    path = config_file(option)
    try:
        return load_config(path)
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
    except OSError as exc:
        print(f"{prog}: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
    return None


async def ask_qmgr(
    cfg: Config, *, errors: bool, by_state: bool = True, timeout: float = QMGR_TIMEOUT_S
) -> QueueStatusReply:
    """One ``QueueStatusRequest`` to the running qmgr.

    Raises:
        OSError: qmgr.sock cannot be reached.
        meta1py.rpc.errors.RpcError: qmgr did not answer in time, or refused.
    """
    import trio

    from meta1py.rpc.channel import connect_unix
    from meta1py.rpc.messages import QueueStatusRequest

    channel = await connect_unix(rpc_socket_path(cfg.run_directory, "qmgr"))
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run)
        try:
            return await channel.call(QueueStatusRequest(errors=errors, by_state=by_state), timeout=timeout)
        finally:
            channel.close()
            nursery.cancel_scope.cancel()


def _mcp_pid(run_directory: Path) -> int | None:
    """mcp's pid from its pid file; None when there is none.

    Raises:
        OSError: the file exists but cannot be read.
        ValueError: it does not hold a pid.
    """
    try:
        text = mcp_pid_path(run_directory).read_text()
    except FileNotFoundError:
        return None
    return int(text.strip())


def _is_mcp(pid: int) -> bool:
    """True when ``pid`` is a live process that looks like meta1's mcp (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists; we may not signal it
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to tell: trust the pid file
    return b"meta1" in cmdline


def format_duration(seconds: float) -> str:
    """``3d4h``, ``2h5m``, ``4m10s``, ``12s``: two units at most."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when))


def format_status(
    pid: int,
    mcp: McpStatus | None,
    reply: QueueStatusReply | None,
    qmgr_problem: str | None,
    now: float,
) -> str:
    """The text of ``meta1 status`` for a running mcp."""
    out: list[str] = []
    if mcp is not None:
        out.append(f"meta1 is running: mcp pid {pid}, up {format_duration(now - mcp.started)}")
        if mcp.config:
            out.append(f"configuration: {mcp.config}")
    else:
        out.append(f"meta1 is running: mcp pid {pid} (no status file yet)")
    out.append("")
    out.append(f"{'PROCESS':<8} {'PID':>7} {'UPTIME':>8} {'RESTARTS':>8}  STATE")
    if mcp is not None:
        out.append(f"{'mcp':<8} {pid:>7} {format_duration(now - mcp.started):>8} {'-':>8}  running")
        by_name = {w.name: w for w in mcp.workers}
        for name in WORKER_NAMES:
            w = by_name.get(name)
            if w is None:
                continue
            if w.pid is None:
                state, shown_pid, uptime = "down (restarting)", "-", "-"
            else:
                state = "ready" if w.ready else "starting"
                shown_pid = str(w.pid)
                uptime = format_duration(now - w.started) if w.started is not None else "-"
            out.append(f"{name:<8} {shown_pid:>7} {uptime:>8} {w.restarts:>8}  {state}")
    out.append("")
    if reply is None:
        out.append(f"queue: unknown ({qmgr_problem})")
    elif not reply.queue_open:
        out.append("queue: unknown (qmgr cannot open its envelope store; see the log)")
    else:
        out.append(f"{'QUEUE':<9} {'MESSAGES':>9} {'RECIPIENTS':>11}")
        for s in reply.queue:
            out.append(f"{s.state:<9} {s.messages:>9} {s.recipients:>11}")
        messages, recipients = sum(s.messages for s in reply.queue), sum(s.recipients for s in reply.queue)
        out.append(f"{'total':<9} {messages:>9} {recipients:>11}")
    out.append("")
    errors = _errors(mcp, reply)
    out.append("LAST ERRORS" if errors else "LAST ERRORS: none")
    for e in errors:
        first_line = e.message.splitlines()[0] if e.message else ""
        out.append(f"{_stamp(e.time)} {e.process}[{e.pid}] {e.level}: {first_line}")
    return "\n".join(out) + "\n"


def _errors(mcp: McpStatus | None, reply: QueueStatusReply | None) -> list[ErrorRecordValue]:
    groups: list[tuple[ErrorRecordValue, ...]] = [mcp.errors if mcp is not None else ()]
    if reply is not None:
        groups += [p.errors for p in reply.processes]
    return merge_errors(*groups, limit=SHOWN_ERRORS)


def status_json(
    pid: int | None, mcp: McpStatus | None, reply: QueueStatusReply | None, qmgr_problem: str | None
) -> dict[str, Any]:
    """The ``--json`` form (documented in docs/meta1.md)."""
    return {
        "running": pid is not None,
        "mcp": None
        if pid is None
        else {
            "pid": pid,
            "started": mcp.started if mcp is not None else None,
            "config": mcp.config if mcp is not None else None,
        },
        "workers": [
            {"name": w.name, "pid": w.pid, "started": w.started, "ready": w.ready, "restarts": w.restarts}
            for w in (mcp.workers if mcp is not None else ())
        ],
        "queue": None
        if reply is None or not reply.queue_open
        else {s.state: {"messages": s.messages, "recipients": s.recipients} for s in reply.queue},
        "qmgr_error": qmgr_problem,
        "errors": [
            {"time": e.time, "process": e.process, "pid": e.pid, "level": e.level, "message": e.message}
            for e in _errors(mcp, reply)
        ],
    }


def _parse_args(argv: list[str]) -> argparse.Namespace | int:
    parser = argparse.ArgumentParser(
        prog="meta1 status",
        description="Show whether meta1 runs, its processes, the queue by state and the last errors. "
        "Exit status: 0 running, 1 not running but a pid file is left, 3 not running, 4 unknown.",
    )
    parser.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    parser.add_argument("--json", action="store_true", help="print one JSON object (docs/meta1.md)")
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code else 0


def main(argv: list[str]) -> int:
    """``meta1 status``; returns the LSB status code (0, 1, 3 or 4), 64 on a usage error."""
    args = _parse_args(argv)
    if isinstance(args, int):
        return args
    cfg = load(args.config, "meta1 status")
    if cfg is None:
        return EX_UNKNOWN
    run_directory = cfg.run_directory
    try:
        pid = _mcp_pid(run_directory)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"meta1 status: cannot read {mcp_pid_path(run_directory)}: {why}", file=sys.stderr)
        return EX_UNKNOWN
    if pid is None or not _is_mcp(pid):
        stale = pid is not None
        if args.json:
            print(json.dumps(status_json(None, None, None, None), sort_keys=True))
        elif stale:
            print(f"meta1 is not running (mcp pid {pid} in {mcp_pid_path(run_directory)} is gone)")
        else:
            print("meta1 is not running")
        return EX_DEAD_PID_FILE if stale else EX_NOT_RUNNING
    try:
        mcp = read_mcp_status(mcp_status_path(run_directory))
    except (OSError, ValueError) as exc:
        print(f"meta1 status: cannot read {mcp_status_path(run_directory)}: {exc}", file=sys.stderr)
        mcp = None
    reply: QueueStatusReply | None = None
    problem: str | None = None
    try:
        import trio

        reply = trio.run(lambda: ask_qmgr(cfg, errors=True))
    except OSError as exc:
        problem = f"cannot reach qmgr: {exc.strerror or exc}"
    except RpcError as exc:
        problem = f"qmgr did not answer: {exc}"
    if args.json:
        print(json.dumps(status_json(pid, mcp, reply, problem), sort_keys=True))
    else:
        sys.stdout.write(format_status(pid, mcp, reply, problem, time.time()))
    return EX_RUNNING
