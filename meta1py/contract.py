"""The contract between mcp and the workers, in one place (as Postfix keeps it in master_proto.h).

mcp and every worker import their side of it from here and nowhere else:

* **names**: the four workers (`WORKER_NAMES`) and which of them serve RPC (`RPC_SERVERS`);
* **sockets**: ``<run_directory>/<name>.sock`` (`rpc_socket_path`), bound by mcp;
* **directories**: smar's data directory ``<queue_directory>/smar`` (`smar_data_directory`);
* **descriptors**: mcp passes each worker the map `FDS_ENV` (``name=fd,...``): `FD_RPC` (its RPC
  listening socket), ``listen0..N`` (`listen_fd_name`: smtps's SMTP sockets, in
  ``conf.listen_sockets`` order), `FD_METRICS` (qmgr only, when ``metrics { listen }`` is set: the
  metrics endpoint's TCP socket), `FD_READY` (the ready pipe) and `FD_LIFELINE` (EOF: mcp died);
* **status**: mcp keeps ``<run_directory>/mcp.status`` (`mcp_status_path`) up to date: its
  workers' pids, start times and restarts, and its recent errors (format: meta1py.status);
* **readiness**: the worker writes `READY_LINE` on the ready pipe once it serves;
* **signals**: SIGTERM stops a worker, `DRAIN_SIGNAL` makes smtps drain (reload handover);
* **exit statuses** (sysexits): `EX_OK`, `EX_CRASH` (mcp restarts), and `HARD_FAILURE_STATUSES`
  (`EX_USAGE`, `EX_NOPERM`, `EX_CONFIG`), which a restart cannot fix;
* **environment**: `USER_ENV`/`GROUP_ENV` (the account to drop to), `SYSLOG_ENV`.

Pure data and string functions: importable by ``conf`` and the CLI without trio or sockets.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Final

# Start order: qmgr first (smtps and smtpc call it), smtps last (it accepts mail).
WORKER_NAMES: Final[tuple[str, ...]] = ("qmgr", "smar", "smtpc", "smtps")
# The workers that serve RPC on <run_directory>/<name>.sock; smtps only calls.
RPC_SERVERS: Final[tuple[str, ...]] = ("qmgr", "smar", "smtpc")

# Environment mcp sets for a worker.
FDS_ENV: Final = "META1_FDS"
USER_ENV: Final = "META1_USER"
GROUP_ENV: Final = "META1_GROUP"
SYSLOG_ENV: Final = "META1_SYSLOG"

# Names in the META1_FDS map.
TEST_DIRECTORY_NAME: Final = "test"
#: The active scripted replies in the test directory (qmgr writes; smtps and smtpc read).
TEST_SCRIPTS_NAME: Final = "scripts.json"
FD_RPC: Final = "rpc"
FD_READY: Final = "ready"
FD_LIFELINE: Final = "lifeline"
FD_METRICS: Final = "metrics"
#: qmgr only, in test mode: the control API's TCP socket (``test_mode { listen }``).
FD_TESTAPI: Final = "testapi"
_LISTEN_PREFIX: Final = "listen"

# What a worker writes on its ready pipe once it serves.
READY_LINE: Final = b"READY\n"

# mcp -> smtps: "stop accepting, finish your sessions, exit 0" (graceful handover on reload).
DRAIN_SIGNAL: Final = signal.SIGUSR1

# Exit statuses (sysexits.h).
EX_OK: Final = 0
EX_CRASH: Final = 1
EX_USAGE: Final = 64
EX_OSERR: Final = 71
EX_NOPERM: Final = 77
EX_CONFIG: Final = 78
# A worker that exits with one of these is not restarted: a restart cannot fix it.
HARD_FAILURE_STATUSES: Final = frozenset({EX_USAGE, EX_NOPERM, EX_CONFIG})


def rpc_socket_name(name: str) -> str:
    """The file name of worker ``name``'s RPC socket in the run directory."""
    return f"{name}.sock"


def rpc_socket_path(run_directory: Path | str, name: str) -> Path:
    """``<run_directory>/<name>.sock``: where mcp binds ``name``'s RPC socket and clients connect."""
    return Path(run_directory) / rpc_socket_name(name)


#: mcp's status file in the run directory (meta1py.status): read by qmgr and ``meta1 status``.
MCP_STATUS_NAME: Final = "mcp.status"


def mcp_status_path(run_directory: Path | str) -> Path:
    """``<run_directory>/mcp.status``: where mcp writes its status (meta1py.status)."""
    return Path(run_directory) / MCP_STATUS_NAME


#: mcp's pid file in the run directory.
MCP_PID_NAME: Final = "mcp.pid"


def mcp_pid_path(run_directory: Path | str) -> Path:
    """``<run_directory>/mcp.pid``: mcp's pid while it runs."""
    return Path(run_directory) / MCP_PID_NAME


#: smar's own directory, below the queue directory: its greylisting database lives there. Owned by
#: smar's user, mode 0700 (meta1py.ownership); mcp creates it, as every directory.
SMAR_DATA_DIRECTORY_NAME: Final = "smar"


def smar_data_directory(queue_directory: Path | str) -> Path:
    """``<queue_directory>/smar``: the directory smar writes (relative ``greylisting { database }``
    paths are relative to it)."""
    return Path(queue_directory) / SMAR_DATA_DIRECTORY_NAME


def test_directory(queue_directory: Path | str) -> Path:
    """``<queue_directory>/test``: test mode's files (the active scripts, captured deliveries;
    meta1py.testmode)."""
    return Path(queue_directory) / TEST_DIRECTORY_NAME


def listen_fd_name(index: int) -> str:
    """The META1_FDS name of the ``index``-th SMTP listening socket (``listen0``, ...)."""
    return f"{_LISTEN_PREFIX}{index}"


def listen_fd_index(name: str) -> int | None:
    """The index of a ``listenN`` name, or None for any other name."""
    if name.startswith(_LISTEN_PREFIX):
        digits = name[len(_LISTEN_PREFIX) :]
        if digits.isdigit():
            return int(digits)
    return None


def format_fds(fds: dict[str, int]) -> str:
    """Encode a descriptor map as the value of `FDS_ENV` (``name=fd,name=fd``)."""
    return ",".join(f"{name}={fd}" for name, fd in fds.items())


def parse_fds(text: str) -> dict[str, int]:
    """Decode the value of `FDS_ENV`.

    Raises:
        ValueError: malformed text, duplicate names or negative descriptors.
    """
    fds: dict[str, int] = {}
    if not text.strip():
        return fds
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip().isdigit():
            raise ValueError(f"malformed {FDS_ENV} entry {item!r}")
        if name in fds:
            raise ValueError(f"duplicate {FDS_ENV} entry {name!r}")
        fds[name] = int(value)
    return fds
