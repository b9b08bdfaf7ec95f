"""Relay benchmark: meta1py against a private Postfix, both relaying to Postfix's ``smtp-sink``.

Usage (from the repository root, as root or as a normal user)::

    .venv/bin/python bench/relay.py [--quick] [--mta meta1py|postfix|both] [--workload NAME]
                                    [--shape new|reused|both] [--runs N] [--profile DIR]

One ``smtp-sink`` listens on a loopback port and counts messages. For every run, workload and MTA
(alternating which MTA goes first) a fresh MTA is started with its queue under a new directory on the
real disk (``/var/tmp``, never tmpfs), relaying everything to the sink; ``smtp-source`` drives it
over loopback. Per workload and MTA the script prints:

- ``e2e msg/s``: messages over the time from starting ``smtp-source`` until the sink counted them all;
- ``intake msg/s``: messages over ``smtp-source``'s own run time (until the last 250 after DATA);
- ``CPU s/1k``: CPU seconds of all the MTA's processes per 1,000 messages (cgroup v2 ``cpu.stat``
  when a private cgroup can be made, else /proc accounting of the process tree);
- ``peak PSS MB``: the largest sum of PSS over the MTA's processes, sampled every 0.2 s;
- ``lost``: messages sent minus messages the sink counted (negative: duplicates);
- ``ratio``: meta1py/Postfix for e2e throughput, CPU and memory.

The ``idle`` workload holds 1,000 sessions open (greeting read, nothing sent) and reports the PSS of
the MTA with them open and per session (over the PSS of the idle MTA).

With ``--profile DIR``, meta1py's smtps, qmgr and smtpc are recorded with ``py-spy`` (installed in
the virtualenv) during the message workloads; the collapsed stacks go to DIR and the top functions
are printed after the table.

With ``BENCH_KEEP=1`` in the environment, meta1py's directory (queue, maildir, ``mcp.log``) is kept
after each run, for looking into a run that lost or duplicated messages.

Every message workload runs in both connection shapes (``--shape``): a new connection for every
message, and reused connections (smtp-source ``-d``, several messages per connection). With
``--runs N`` each figure is the median over the runs, with [min-max].

As root, meta1py runs in production mode: each worker as its own user (meta1q, meta1r, meta1c,
meta1s, from ``meta1 setup``), or, when those users are missing, one throw-away system user and
group that are removed at the end (the first line printed says which). Postfix runs its
children as the Debian package's ``postfix`` user. Every process the script starts
is stopped by pid (or through its private cgroup) before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from _common import worker_accounts

from meta1py_testing.daemon import Meta1Daemon, forkserver_pid, free_port
from meta1py_testing.peers import SmtpSink, smtp_sink

SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
# The queues must be on the disk (fsync costs are the point), so not /tmp, which may be tmpfs.
WORK_ROOT = Path("/var/tmp")
SAMPLE_INTERVAL_S = 0.2
DELIVERY_TIMEOUT_S = 900.0
IDLE_SESSIONS = 1000
SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.net"


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    """One benchmark workload.

    Attributes:
        name: Short name for ``--workload``.
        messages: Messages smtp-source sends (0 for the idle workload).
        size_bytes: Payload size of each message.
        sessions: Parallel SMTP sessions (for ``idle``: sessions held open).
        recipients: Recipients per message.
        reuse: True: several messages per connection (smtp-source ``-d``, as relays send);
            False: a new connection for every message.
    """

    name: str
    messages: int
    size_bytes: int
    sessions: int
    recipients: int = 1
    reuse: bool = True

    @property
    def idle(self) -> bool:
        """True for the idle-sessions workload."""
        return self.messages == 0

    def describe(self) -> str:
        """A one-line description for the table."""
        if self.idle:
            return f"{self.sessions} idle sessions"
        size = f"{self.size_bytes // 1024} KiB"
        rcpt = f", {self.recipients} rcpt" if self.recipients > 1 else ""
        shape = "reused conns" if self.reuse else "new conn/msg"
        return f"{self.messages} x {size}, {self.sessions} sess{rcpt}, {shape}"

    def shaped(self, reuse: bool) -> Workload:
        """The same workload with the other connection shape."""
        return dataclasses.replace(self, reuse=reuse)


FULL_WORKLOADS = (
    Workload("small", 5000, 4096, 20),
    Workload("large", 2000, 100 * 1024, 20),
    Workload("multi", 5000, 4096, 100, 5),
    Workload("idle", 0, 0, IDLE_SESSIONS),
)
QUICK_WORKLOADS = (
    Workload("small", 100, 4096, 5),
    Workload("large", 20, 100 * 1024, 5),
    Workload("multi", 50, 4096, 10, 5),
    Workload("idle", 0, 0, 50),
)


@dataclasses.dataclass(slots=True)
class Result:
    """Figures of one run of one workload on one MTA."""

    mta: str
    workload: Workload
    e2e_per_s: float = 0.0
    intake_per_s: float = 0.0
    cpu_s_per_1k: float = 0.0
    peak_pss_mb: float = 0.0
    lost: int = 0
    idle_pss_mb: float = 0.0
    per_session_kb: float = 0.0
    note: str = ""


# --------------------------------------------------------------------------------------------
# Accounting: which processes belong to an MTA, their CPU time and PSS


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Accounting:
    """The processes of one MTA: a private cgroup v2 when possible, else a process tree.

    With a cgroup, ``cpu.stat``'s ``usage_usec`` counts every process that ever ran in it,
    exited ones included. Without, CPU is the tree's live ``utime+stime`` plus the root's
    ``cutime+cstime`` (children it reaped), which misses grandchildren reaped by others.
    """

    def __init__(self, label: str) -> None:
        self.cgroup: Path | None = None
        self.root_pid: int | None = None
        candidate = CGROUP_ROOT / f"m1bench-{label}-{os.getpid()}-{secrets.token_hex(3)}"
        with contextlib.suppress(OSError):
            candidate.mkdir()
            if (candidate / "cpu.stat").exists() and os.access(candidate / "cgroup.procs", os.W_OK):
                self.cgroup = candidate
            else:
                candidate.rmdir()

    def enter_in_child(self) -> None:
        """``preexec_fn``: move the new process into the cgroup before it execs."""
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def adopt(self, pids: Sequence[int]) -> None:
        """Move already running processes into the cgroup (their earlier CPU is not counted)."""
        if self.cgroup is None:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                (self.cgroup / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        """The MTA's live processes."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                return [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
            return []
        if self.root_pid is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat_fields(int(entry))
                if fields is not None:
                    children.setdefault(int(fields[1]), []).append(int(entry))
        found, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, ()))
        return found

    def cpu_s(self) -> float:
        """CPU seconds used so far."""
        if self.cgroup is not None:
            for line in (self.cgroup / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        ticks = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields is None:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == self.root_pid:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def pss_mb(self) -> float:
        """PSS summed over the live processes, in MB (10^6 bytes)."""
        return sum(_pss_kb(pid) for pid in self.pids()) * 1024 / 1e6

    def kill_all(self) -> None:
        """Last resort: kill whatever is left (the cgroup's ``cgroup.kill``)."""
        if self.cgroup is not None and (self.cgroup / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.cgroup / "cgroup.kill").write_text("1\n")

    def close(self) -> None:
        """Remove the cgroup (after every process in it has exited)."""
        if self.cgroup is None:
            return
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.cgroup.rmdir()


class PssSampler:
    """A thread that records the peak PSS of an MTA while a run goes on."""

    def __init__(self, accounting: Accounting) -> None:
        self._accounting = accounting
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, self._accounting.pss_mb())
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._accounting.pss_mb())


def _wait_until(condition: object, timeout_s: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# The MTAs


class Mta:
    """A running MTA under test: its SMTP port and its accounting."""

    name = ""
    port = 0
    accounting: Accounting


class Meta1Mta(Mta):
    """meta1py relaying everything to the sink."""

    name = "meta1py"

    def __init__(self, sink_port: int, accounts: dict[str, Any]) -> None:
        self.accounting = Accounting("meta1py")
        self.daemon = Meta1Daemon(
            sections={
                "smtpc": f"relayhost = [127.0.0.1]:{sink_port}; max_connections = 20;",
                "smtps": f"max_sessions = {IDLE_SESSIONS * 2}; "
                f"max_sessions_per_client = {IDLE_SESSIONS * 2};",
            },
            ready_timeout=120,
            keep_dir=bool(os.environ.get("BENCH_KEEP")),
            **accounts,
        )
        self.port = self.daemon.port

    def start(self) -> None:
        """Start mcp, wait for READY, and move mcp and its workers into the cgroup."""
        self.daemon.start()
        workers = self.daemon.workers()
        self.accounting.root_pid = self.daemon.pid
        # The fork server too: it counts, and the workers it forks later start in the cgroup.
        forkserver = forkserver_pid(self.daemon.pid)
        extra = [forkserver] if forkserver is not None else []
        self.accounting.adopt([self.daemon.pid, *extra, *workers.values()])

    def pid_of(self, worker: str) -> int:
        """The pid of one worker (for profiling)."""
        return self.daemon.worker_pid(worker)

    def close(self) -> None:
        """Stop mcp and its workers; remove the temporary directory."""
        try:
            self.daemon.close()
        finally:
            self.accounting.kill_all()
            self.accounting.close()


def _master_cf(port: int, smtpd_maxproc: str) -> str:
    # Debian's master.cf with chroot off (a private queue directory has no chroot jail set up)
    # and the smtpd listener moved to a loopback high port.
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line.startswith(("#", " ", "\t")) or len(fields) < 8:
            lines.append(line)
            continue
        if fields[0] == "smtp" and fields[1] == "inet":
            fields[0] = f"127.0.0.1:{port}"
            fields[6] = smtpd_maxproc
        fields[4] = "n"
        lines.append("  ".join(fields[:8]) + (" " + " ".join(fields[8:]) if fields[8:] else ""))
    return "\n".join(lines) + "\n"


class PostfixMta(Mta):
    """A private Postfix instance (own config, queue and data directories) relaying to the sink."""

    name = "postfix"

    def __init__(self, sink_port: int, smtpd_maxproc: int | None = None) -> None:
        self.accounting = Accounting("postfix")
        self.dir = Path(tempfile.mkdtemp(prefix="m1bench-postfix-", dir=WORK_ROOT))
        self.dir.chmod(0o755)
        self.config_dir = self.dir / "etc"
        self.config_dir.mkdir()
        self.queue_dir = self.dir / "spool"
        self.queue_dir.mkdir()  # root-owned; `postfix check` creates what is inside
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postfix", "postfix")
        self.port = free_port()
        self.log_path = self.dir / "maillog"
        # Defaults otherwise; maillog_file so that Postfix pays for its logging as meta1py does.
        (self.config_dir / "main.cf").write_text(
            f"""\
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localhost
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
maillog_file = {self.log_path}
smtputf8_enable = no
"""
        )
        (self.config_dir / "master.cf").write_text(_master_cf(self.port, str(smtpd_maxproc or "-")))

    def _postfix(self, command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), command],
            capture_output=True,
            text=True,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )

    def start(self) -> None:
        """``postfix check``, then ``postfix start`` inside the cgroup; wait for the listener."""
        check = self._postfix("check")
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {check.stdout}{check.stderr}")
        started = self._postfix("start", preexec_fn=self.accounting.enter_in_child)
        if started.returncode != 0:
            raise RuntimeError(f"postfix start failed: {started.stdout}{started.stderr}")
        pid_file = self.queue_dir / "pid" / "master.pid"
        _wait_until(pid_file.exists, 60, "postfix master.pid")
        self.accounting.root_pid = int(pid_file.read_text().split()[0])

        def accepting() -> bool:
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.settimeout(2)
                sock.connect(("127.0.0.1", self.port))
                return sock.recv(4).startswith(b"220")
            return False

        _wait_until(accepting, 60, "postfix smtpd")

    def close(self) -> None:
        """``postfix stop``, wait until every process it started is gone, remove the directory."""
        try:
            if (self.queue_dir / "pid" / "master.pid").exists():
                self._postfix("stop")
            with contextlib.suppress(TimeoutError):
                _wait_until(lambda: not self.accounting.pids(), 30, "postfix processes to exit")
            if self.accounting.pids():
                self.accounting.kill_all()
                if self.accounting.cgroup is None:
                    for pid in self.accounting.pids():
                        with contextlib.suppress(OSError):
                            os.kill(pid, 9)
        finally:
            self.accounting.close()
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Running workloads


def _send(workload: Workload, port: int) -> float:
    """Run smtp-source for ``workload`` against ``port``; return its elapsed seconds."""
    args = [
        SMTP_SOURCE,
        "-4",
        *(["-d"] if workload.reuse else []),  # -d: several messages per connection
        "-s",
        str(workload.sessions),
        "-m",
        str(workload.messages),
        "-l",
        str(workload.size_bytes),
        "-r",
        str(workload.recipients),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        "-M",
        "client.bench.localhost",
        f"127.0.0.1:{port}",
    ]
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=DELIVERY_TIMEOUT_S, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def run_messages(mta: Mta, workload: Workload, sink: SmtpSink) -> Result:
    """Send ``workload`` through ``mta``; wait until the sink has everything (or a deadline)."""
    result = Result(mta.name, workload)
    base = sink.message_count()
    cpu_before = mta.accounting.cpu_s()
    with PssSampler(mta.accounting) as sampler:
        started = time.monotonic()
        intake_s = _send(workload, mta.port)
        target = base + workload.messages
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while sink.message_count() < target and time.monotonic() < deadline:
            time.sleep(0.01)
        e2e_s = time.monotonic() - started
        cpu_after = mta.accounting.cpu_s()
    # Late duplicates would show up shortly after: give them a moment to arrive.
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle:
        time.sleep(0.05)
    received = sink.message_count() - base
    result.e2e_per_s = workload.messages / e2e_s
    result.intake_per_s = workload.messages / intake_s
    result.cpu_s_per_1k = (cpu_after - cpu_before) * 1000 / workload.messages
    result.peak_pss_mb = sampler.peak_mb
    result.lost = workload.messages - received
    if result.lost:
        result.note = f"sink got {received} of {workload.messages}"
        if received == workload.messages * workload.recipients:
            result.note += " (one transaction per recipient)"
    return result


def run_idle(mta: Mta, workload: Workload) -> Result:
    """Hold ``workload.sessions`` sessions open after the greeting; measure PSS."""
    result = Result(mta.name, workload)
    result.idle_pss_mb = mta.accounting.pss_mb()
    conns: list[socket.socket] = []
    try:
        for _ in range(workload.sessions):
            sock = socket.create_connection(("127.0.0.1", mta.port), timeout=60)
            conns.append(sock)
        for sock in conns:
            greeting = b""
            while b"\n" not in greeting:
                chunk = sock.recv(512)
                if not chunk:
                    raise RuntimeError("the MTA closed an idle session before its greeting")
                greeting += chunk
            if not greeting.startswith(b"220"):
                raise RuntimeError(f"unexpected greeting {greeting!r}")
        samples = []
        for _ in range(5):
            samples.append(mta.accounting.pss_mb())
            time.sleep(SAMPLE_INTERVAL_S)
        result.peak_pss_mb = max(samples)
        result.per_session_kb = (result.peak_pss_mb - result.idle_pss_mb) * 1e3 / workload.sessions
    finally:
        for sock in conns:
            sock.close()
    return result


def run_one(
    mta_name: str,
    workload: Workload,
    sink: SmtpSink,
    accounts: dict[str, Any],
    profile_dir: Path | None = None,
) -> Result:
    """Start a fresh MTA, run ``workload`` on it (under py-spy with ``profile_dir``), stop it."""
    mta: Meta1Mta | PostfixMta
    if mta_name == "meta1py":
        mta = Meta1Mta(sink.port, accounts)
    else:
        mta = PostfixMta(sink.port, smtpd_maxproc=workload.sessions + 100 if workload.idle else None)
    try:
        mta.start()
        if workload.idle:
            return run_idle(mta, workload)
        if profile_dir is None or not isinstance(mta, Meta1Mta):
            return run_messages(mta, workload, sink)
        pids = {name: mta.pid_of(name) for name in PROFILED_WORKERS}
        label = f"{workload.name}-{'reused' if workload.reuse else 'new'}"
        with profiled(pids, profile_dir, label):
            return run_messages(mta, workload, sink)
    finally:
        mta.close()


# --------------------------------------------------------------------------------------------
# Profiling meta1py's workers with py-spy

PROFILED_WORKERS = ("smtps", "qmgr", "smtpc")


@contextlib.contextmanager
def profiled(pids: dict[str, int], out_dir: Path, label: str) -> Iterator[None]:
    """Record each worker with ``py-spy record --format raw`` while the block runs.

    py-spy writes its collapsed stacks (``frame;frame;... count``) when it gets SIGINT. With
    ``--gil`` only the thread holding the GIL is sampled, so the figures are Python code on the CPU
    (not threads waiting in epoll or fsync). :func:`summarise_profile` prints the top functions.
    """
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        out = out_dir / f"{label}-{name}.txt"
        cmd = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--nolineno",
            "--gil",
            "-o",
            str(out),
            "--rate",
            "200",
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def summarise_profile(path: Path, top: int = 12) -> str:
    """Top functions of one collapsed-stack file: self and inclusive share of the busy samples."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        total += count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} busy samples", "  self%  incl%  function"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * count / total:5.1f}  {100 * inclusive[frame] / total:5.1f}  {_short(frame)}")
    lines.append("  inclusive, meta1py code only:")
    ours = [(f, c) for f, c in inclusive.items() if "meta1py/" in f and "__main__" not in f]
    for frame, count in sorted(ours, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {'':5}  {100 * count / total:5.1f}  {_short(frame)}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (/long/path/site-packages/trio/_core/_run.py)" -> "func (trio/_core/_run.py)"
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in frame:
            head, _, tail = frame.partition(marker)
            return head[: head.rfind("(") + 1] + tail
    return frame


# --------------------------------------------------------------------------------------------
# Reporting


def _median(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def _spread(results: list[Result], attr: str, digits: int) -> str:
    """``median [min-max]`` over the runs (just the value for one run)."""
    values = [getattr(r, attr) for r in results]
    text = f"{statistics.median(values):.{digits}f}"
    if len(values) > 1:
        text += f" [{min(values):.{digits}f}-{max(values):.{digits}f}]"
    return text


def format_table(results: list[Result], mtas: Sequence[str]) -> str:
    """The summary table in Markdown: medians over the runs, with [min-max] when there are several."""
    lines = [
        "| workload | MTA | e2e msg/s | intake msg/s | CPU s/1k msg | peak PSS MB | lost | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    workloads: list[Workload] = []
    for r in results:
        if r.workload not in workloads:
            workloads.append(r.workload)
    for workload in workloads:
        by_mta = {m: [r for r in results if r.workload == workload and r.mta == m] for m in mtas}
        for mta, rs in by_mta.items():
            if not rs:
                continue
            notes = "; ".join(r.note for r in rs if r.note)
            if workload.idle:
                notes = (
                    f"idle MTA {_median(rs, 'idle_pss_mb'):.1f} MB, "
                    f"{_median(rs, 'per_session_kb'):.1f} KB/session" + (f"; {notes}" if notes else "")
                )
                pss = _median(rs, "peak_pss_mb")
                lines.append(f"| {workload.describe()} | {mta} | - | - | - | {pss:.1f} | - | {notes} |")
                continue
            lines.append(
                f"| {workload.describe()} | {mta} | {_spread(rs, 'e2e_per_s', 0)} | "
                f"{_spread(rs, 'intake_per_s', 0)} | {_spread(rs, 'cpu_s_per_1k', 2)} | "
                f"{_spread(rs, 'peak_pss_mb', 1)} | {sum(r.lost for r in rs)} | {notes} |"
            )
        if all(by_mta.get(m) for m in ("meta1py", "postfix")):
            m, p = by_mta["meta1py"], by_mta["postfix"]
            if workload.idle:
                ratio = f"| {workload.describe()} | ratio m/p | - | - | - | "
                ratio += f"{_median(m, 'peak_pss_mb') / max(_median(p, 'peak_pss_mb'), 1e-9):.2f} | - | |"
            else:
                ratio = (
                    f"| {workload.describe()} | ratio m/p | "
                    f"{_median(m, 'e2e_per_s') / _median(p, 'e2e_per_s'):.2f} | "
                    f"{_median(m, 'intake_per_s') / _median(p, 'intake_per_s'):.2f} | "
                    f"{_median(m, 'cpu_s_per_1k') / max(_median(p, 'cpu_s_per_1k'), 1e-9):.2f} | "
                    f"{_median(m, 'peak_pss_mb') / max(_median(p, 'peak_pss_mb'), 1e-9):.2f} | - | |"
                )
            lines.append(ratio)
    return "\n".join(lines)


def _describe_run(r: Result) -> str:
    if r.workload.idle:
        return f"peak PSS {r.peak_pss_mb:.1f} MB, {r.per_session_kb:.1f} KB/session"
    return (
        f"e2e {r.e2e_per_s:.0f}/s intake {r.intake_per_s:.0f}/s cpu {r.cpu_s_per_1k:.2f} s/1k "
        f"pss {r.peak_pss_mb:.1f} MB lost {r.lost} {r.note}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the table; 1 if a message was lost or a run failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")
    parser.add_argument("--mta", choices=("meta1py", "postfix", "both"), default="both")
    parser.add_argument("--workload", choices=[w.name for w in FULL_WORKLOADS], action="append")
    parser.add_argument(
        "--shape",
        choices=("new", "reused", "both"),
        default="both",
        help="a new connection per message, reused connections (smtp-source -d), or both",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy smtps, qmgr and smtpc during meta1py's message runs",
    )
    args = parser.parse_args(argv)

    for tool in (SMTP_SOURCE, "/usr/sbin/smtp-sink"):
        if not os.path.exists(tool):
            print(f"{tool} is missing: install Debian's postfix package", file=sys.stderr)
            return 2
    mtas = ["meta1py", "postfix"] if args.mta == "both" else [args.mta]
    if "postfix" in mtas and not os.path.exists(POSTFIX):
        print("postfix is not installed", file=sys.stderr)
        return 2
    reuses = {"new": [False], "reused": [True], "both": [False, True]}[args.shape]
    workloads = [
        shaped
        for w in (QUICK_WORKLOADS if args.quick else FULL_WORKLOADS)
        if not args.workload or w.name in args.workload
        for shaped in ([w] if w.idle else [w.shaped(reuse) for reuse in reuses])
    ]
    # 1,000 sockets on each side of the idle workload.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    tempfile.tempdir = str(WORK_ROOT)

    results: list[Result] = []
    failed = False
    with worker_accounts("m1b") as (accounts, accounts_text), smtp_sink() as sink:
        print(f"meta1py workers: {accounts_text}", flush=True)
        for run in range(args.runs):
            for workload in workloads:
                order = mtas if run % 2 == 0 else list(reversed(mtas))
                for mta_name in order:
                    shape = "" if workload.idle else ("reused" if workload.reuse else "new")
                    print(f"run {run + 1} {workload.name:6} {shape:6} {mta_name:8} ...", end=" ", flush=True)
                    try:
                        result = run_one(mta_name, workload, sink, accounts, args.profile)
                    except Exception as exc:  # report it and go on with the other runs
                        print(f"FAILED: {exc}", flush=True)
                        failed = True
                        continue
                    print(_describe_run(result), flush=True)
                    results.append(result)
                    failed |= result.lost != 0
    probe = Accounting("probe")
    accounting = "cgroup v2 cpu.stat" if probe.cgroup is not None else "/proc process tree"
    probe.close()
    print()
    print(f"CPU accounting: {accounting}; queues under {WORK_ROOT}; {os.cpu_count()} CPUs")
    print(format_table(results, mtas))
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.txt")):
            print()
            print(summarise_profile(path))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
