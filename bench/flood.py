"""Flood benchmark: idle and slowloris connections from many loopback addresses, and one legitimate client.

Usage (from the repository root, as root or as a normal user)::

    .venv/bin/python bench/flood.py [--idle 5000] [--slow 1000] [--duration 90]
                                    [--only meta1py|postfix] [--per-address 20] [--per-network 1]
                                    [--byte-every 5] [--reconnect 10] [--interval 3]

For each MTA in turn (meta1py, then a private Postfix), both relaying to Postfix's ``smtp-sink`` on
loopback, with the MTA's default session limits:

- ``--idle`` connections, ``--per-address`` per loopback source address, ``--per-network``
  addresses per /24 (default 1: every address in a network of its own, the hardest case for
  per-network limits; from 127.1.0.1, 127.1.1.1, ...), read the greeting and then say nothing;
- ``--slow`` slowloris connections (likewise, from 127.101.0.1 on) read the greeting, send ``EHLO ``
  and then one more byte of an endless EHLO line every ``--byte-every`` seconds;
- a flood connection that is refused or closed is opened again ``--reconnect`` seconds later (0:
  never), as an attacker would; connections are opened at up to 1,000 per second;
- meanwhile a legitimate client at 127.0.0.1 (the only trusted address: meta1py's
  ``relay_clients`` and Postfix's ``mynetworks`` are set to it, so that the flood is not trusted)
  sends one message every ``--interval`` seconds, each in a new connection, each attempt in its own
  thread with a 20 s deadline.

Per MTA it reports the legitimate client's time from connect to the 250 after DATA (min, median, max,
count; before and during the flood) and its failures by reply; the PSS of all the MTA's processes
(idle, and the peak during the flood; counted as ``bench/relay.py`` does, through a private cgroup
v2 when one can be made); and the flood's fate: connections greeted, refused (by reply or error),
cut after the greeting (and when), held open at the end. A side-by-side table follows.

meta1py runs via :class:`~meta1py_testing.daemon.Meta1Daemon` (as root in production mode with the
worker users of ``meta1 setup`` when they exist, else one throw-away user; not as root: the invoking
user) with its defaults except the relay host, ``relay_clients`` and the listening address. Postfix
is set up as ``bench/relay.py`` sets it up (its defaults, ``mynetworks = 127.0.0.1/32``; no smtpd
process limit tuning, no postscreen). The script raises its own RLIMIT_NOFILE (the MTAs inherit it)
and prints the limits of both sides. Every process it starts is stopped by pid or through its cgroup.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import heapq
import os
import selectors
import smtplib
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from _common import nofile_limit, raise_nofile, worker_accounts
from relay import WORK_ROOT, Accounting, Meta1Mta, PostfixMta, PssSampler

from meta1py_testing.daemon import Meta1Daemon
from meta1py_testing.peers import smtp_sink

LEGIT_ADDRESS = "127.0.0.1"
LEGIT_TIMEOUT_S = 20.0
OPEN_RATE_PER_S = 1000
SAMPLE_EVERY_S = 1.0
BUCKET_S = 15
#: Flood source networks: idle connections from 127.1.0.0/24 on, slowloris from 127.101.0.0/24 on.
IDLE_OCTET = 1
SLOW_OCTET = 101
SENDER = "legit@example.org"
RECIPIENT = "rcpt@example.net"


# --------------------------------------------------------------------------------------------
# The MTAs (flood variants of relay.py's: default limits, only 127.0.0.1 trusted)


class FloodMeta1(Meta1Mta):
    """meta1py relaying to the sink, with its default session limits; only 127.0.0.1 may relay."""

    def __init__(self, sink_port: int, accounts: dict[str, Any]) -> None:
        self.accounting = Accounting("meta1py")
        self.daemon = Meta1Daemon(
            sections={
                "smtpc": f"relayhost = [127.0.0.1]:{sink_port};",
                "smtps": f"relay_clients = {{ {LEGIT_ADDRESS} }};",
            },
            ready_timeout=120,
            **accounts,
        )
        self.port = self.daemon.port

    def fd_limits(self) -> dict[str, int | None]:
        """RLIMIT_NOFILE of mcp and smtps."""
        return {"mcp": nofile_limit(self.daemon.pid), "smtps": nofile_limit(self.daemon.worker_pid("smtps"))}


class FloodPostfix(PostfixMta):
    """relay.py's private Postfix with its defaults, but only 127.0.0.1 in ``mynetworks``."""

    def __init__(self, sink_port: int) -> None:
        super().__init__(sink_port)
        main_cf = self.config_dir / "main.cf"
        text = main_cf.read_text()
        assert "mynetworks = 127.0.0.0/8\n" in text
        main_cf.write_text(text.replace("mynetworks = 127.0.0.0/8\n", f"mynetworks = {LEGIT_ADDRESS}/32\n"))

    def fd_limits(self) -> dict[str, int | None]:
        """RLIMIT_NOFILE of the master (its smtpd children inherit it)."""
        return {"master": nofile_limit(self.accounting.root_pid) if self.accounting.root_pid else None}


# --------------------------------------------------------------------------------------------
# The flood: one thread, non-blocking sockets, epoll


@dataclasses.dataclass(slots=True)
class _Slot:
    index: int
    kind: str  # "idle" or "slow"
    source: str
    sock: socket.socket | None = None
    state: str = "closed"  # connecting, greeting, open, closed
    generation: int = 0
    buf: bytes = b""
    greeted_at: float = 0.0
    last_line: str = ""


@dataclasses.dataclass
class FloodStats:
    """What happened to the flood connections (times in seconds since the flood started)."""

    attempts: Counter[str] = dataclasses.field(default_factory=Counter)
    greeted: Counter[str] = dataclasses.field(default_factory=Counter)
    refused: Counter[str] = dataclasses.field(default_factory=Counter)  # reason -> count
    refused_at: list[float] = dataclasses.field(default_factory=list)
    cut: Counter[str] = dataclasses.field(default_factory=Counter)  # "kind: reason" -> count
    cut_at: list[float] = dataclasses.field(default_factory=list)
    cut_after: list[float] = dataclasses.field(default_factory=list)  # session lengths
    samples: list[tuple[float, int, int, int]] = dataclasses.field(
        default_factory=list
    )  # t, open, wait, conn
    bytes_sent: int = 0


def source_address(first_octet: int, index: int, per_address: int, per_network: int) -> str:
    """The loopback source address of flood connection ``index``.

    ``per_address`` connections share an address, ``per_network`` addresses share a /24; the
    networks are 127.<first_octet>.0.0/24, 127.<first_octet>.1.0/24, ... (250 per second octet).
    """
    net, host = divmod(index // per_address, per_network)
    return f"127.{first_octet + net // 250}.{net % 250}.{host + 1}"


class Flood(threading.Thread):
    """Open and hold the idle and slowloris connections until :meth:`stop`."""

    def __init__(
        self,
        port: int,
        idle: int,
        slow: int,
        spread: tuple[int, int],
        byte_every_s: float,
        reconnect_s: float,
    ) -> None:
        super().__init__(name="flood", daemon=True)
        self.port = port
        self.byte_every_s = byte_every_s
        self.reconnect_s = reconnect_s
        self.stats = FloodStats()
        self.slots = [_Slot(i, "idle", source_address(IDLE_OCTET, i, *spread)) for i in range(idle)]
        self.slots += [_Slot(idle + i, "slow", source_address(SLOW_OCTET, i, *spread)) for i in range(slow)]
        self._selector = selectors.DefaultSelector()
        self._halt = threading.Event()
        self._opens: list[tuple[float, int, int]] = []  # (when, slot, generation)
        self._sends: list[tuple[float, int, int]] = []
        self.started_at = 0.0
        self.error: BaseException | None = None

    def stop(self) -> None:
        """Stop the loop and close every socket (from the caller's thread, after join)."""
        self._halt.set()
        self.join(60)
        for slot in self.slots:
            if slot.sock is not None:
                slot.sock.close()
                slot.sock = None
        self._selector.close()

    def counts(self) -> tuple[int, int, int]:
        """Connections open after a greeting, waiting for one, and still connecting."""
        states = Counter(s.state for s in self.slots)
        return states["open"], states["greeting"], states["connecting"]

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        self.started_at = now = time.monotonic()
        # Idle and slowloris connections are opened interleaved (each kind evenly over the ramp), so
        # that both kinds reach the MTA before a global cap fills.
        kinds = Counter(slot.kind for slot in self.slots)
        ramp_s = len(self.slots) / OPEN_RATE_PER_S
        seen: Counter[str] = Counter()
        for slot in self.slots:
            when = now + ramp_s * seen[slot.kind] / kinds[slot.kind]
            seen[slot.kind] += 1
            heapq.heappush(self._opens, (when, slot.index, 0))
        next_sample = now
        while not self._halt.is_set():
            now = time.monotonic()
            while self._opens and self._opens[0][0] <= now:
                _when, index, generation = heapq.heappop(self._opens)
                if self.slots[index].generation == generation:
                    self._open(self.slots[index])
            while self._sends and self._sends[0][0] <= now:
                _when, index, generation = heapq.heappop(self._sends)
                slot = self.slots[index]
                if slot.generation == generation and slot.state == "open":
                    self._send_byte(slot, now)
            if now >= next_sample:
                self.stats.samples.append((now - self.started_at, *self.counts()))
                next_sample += SAMPLE_EVERY_S
            wake = min([next_sample, now + 0.2] + [q[0][0] for q in (self._opens, self._sends) if q])
            for key, mask in self._selector.select(max(0.0, wake - time.monotonic())):
                self._ready(self.slots[key.data], mask)

    def _open(self, slot: _Slot) -> None:
        self.stats.attempts[slot.kind] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((slot.source, 0))
        except OSError as exc:
            sock.close()
            self._refused(slot, f"bind: {errno.errorcode.get(exc.errno or 0, exc)}")
            return
        slot.sock, slot.state, slot.buf, slot.last_line = sock, "connecting", b"", ""
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            self._refused(slot, errno.errorcode.get(code, str(code)))
            return
        self._selector.register(sock, selectors.EVENT_WRITE, slot.index)

    def _ready(self, slot: _Slot, mask: int) -> None:
        sock = slot.sock
        assert sock is not None
        if slot.state == "connecting":
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._refused(slot, errno.errorcode.get(code, str(code)))
                return
            slot.state = "greeting"
            self._selector.modify(sock, selectors.EVENT_READ, slot.index)
            return
        try:
            data = sock.recv(4096)
        except OSError as exc:
            data, slot.last_line = b"", slot.last_line or errno.errorcode.get(exc.errno or 0, str(exc))
        if not data:
            if slot.state == "greeting":
                self._refused(slot, slot.last_line or "closed before the greeting")
            else:
                self._cut(slot, slot.last_line or "closed")
            return
        slot.buf = (slot.buf + data)[-4096:]
        while b"\n" in slot.buf:
            line, _, slot.buf = slot.buf.partition(b"\n")
            text = line.rstrip(b"\r").decode(errors="replace")
            slot.last_line = text[:60]
            if slot.state != "greeting" or text[3:4] == "-":
                continue
            if not text.startswith("220"):
                self._refused(slot, text[:30])
                return
            slot.state, slot.greeted_at = "open", time.monotonic()
            self.stats.greeted[slot.kind] += 1
            if slot.kind == "slow":
                self._send(slot, b"EHLO ")
                self._schedule_byte(slot, slot.greeted_at)

    def _schedule_byte(self, slot: _Slot, now: float) -> None:
        # Spread the slow connections' bytes over the interval, not all at the same moment.
        offset = (slot.index * 0.618) % 1.0
        heapq.heappush(self._sends, (now + self.byte_every_s * (0.5 + offset), slot.index, slot.generation))

    def _send_byte(self, slot: _Slot, now: float) -> None:
        if self._send(slot, b"a"):
            self._schedule_byte(slot, now)

    def _send(self, slot: _Slot, data: bytes) -> bool:
        assert slot.sock is not None
        try:
            sent = slot.sock.send(data)
        except OSError as exc:
            self._cut(slot, errno.errorcode.get(exc.errno or 0, str(exc)))
            return False
        self.stats.bytes_sent += sent
        return True

    def _close(self, slot: _Slot) -> None:
        if slot.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(slot.sock)
            slot.sock.close()
            slot.sock = None
        slot.state = "closed"
        slot.generation += 1
        if self.reconnect_s > 0:
            when = time.monotonic() + self.reconnect_s
            heapq.heappush(self._opens, (when, slot.index, slot.generation))

    def _refused(self, slot: _Slot, reason: str) -> None:
        self.stats.refused[f"{slot.kind}: {reason}"] += 1
        self.stats.refused_at.append(time.monotonic() - self.started_at)
        self._close(slot)

    def _cut(self, slot: _Slot, reason: str) -> None:
        now = time.monotonic()
        self.stats.cut[f"{slot.kind}: {reason}"] += 1
        self.stats.cut_at.append(now - self.started_at)
        self.stats.cut_after.append(now - slot.greeted_at)
        self._close(slot)


# --------------------------------------------------------------------------------------------
# The legitimate client


@dataclasses.dataclass
class Attempt:
    """One message of the legitimate client."""

    at_s: float  # since the flood started (negative: before)
    ok: bool
    elapsed_s: float
    reason: str = ""


def send_legit(port: int) -> tuple[bool, float, str]:
    """Connect from 127.0.0.1, send one message; return (250?, seconds from connect to reply, reason)."""
    started = time.monotonic()
    step = "connect"
    try:
        with smtplib.SMTP(
            "127.0.0.1", port, timeout=LEGIT_TIMEOUT_S, source_address=(LEGIT_ADDRESS, 0)
        ) as client:
            step = "EHLO"
            client.ehlo("legit.bench.localhost")
            step = "MAIL"
            for command, arg in ((client.mail, SENDER), (client.rcpt, RECIPIENT)):
                code, text = command(arg)
                if code != 250:
                    return False, time.monotonic() - started, f"{code} {text.decode(errors='replace')[:26]}"
                step = "RCPT"
            step = "DATA"
            code, text = client.data(b"Subject: legit\r\n\r\nhello\r\n")
            elapsed = time.monotonic() - started
            if code != 250:
                return False, elapsed, f"{code} {text.decode(errors='replace')[:26]}"
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()
            return True, elapsed, ""
    except smtplib.SMTPConnectError as exc:
        error = exc.smtp_error
        error_text = error if isinstance(error, str) else error.decode(errors="replace")
        reason = f"{exc.smtp_code} {error_text[:26]}"
    except TimeoutError:
        reason = f"no reply in {LEGIT_TIMEOUT_S:g} s at {step}"
    except smtplib.SMTPServerDisconnected:
        reason = f"disconnected at {step}"
    except (OSError, smtplib.SMTPException) as exc:
        reason = f"{type(exc).__name__} at {step}"
    return False, time.monotonic() - started, reason


class Legit:
    """Send one message every ``interval_s``, each in its own thread (a slow one does not delay the next)."""

    def __init__(self, port: int, interval_s: float, origin: float) -> None:
        self.port = port
        self.interval_s = interval_s
        self.origin = origin
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ticker = threading.Thread(target=self._tick, name="legit", daemon=True)

    def _one(self) -> None:
        at = time.monotonic() - self.origin
        ok, elapsed, reason = send_legit(self.port)
        with self._lock:
            self.attempts.append(Attempt(at, ok, elapsed, reason))

    def _tick(self) -> None:
        while True:
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)
            if self._halt.wait(self.interval_s):  # the sending schedule
                return

    def start(self) -> None:
        """Start sending."""
        self._ticker.start()

    def stop(self) -> None:
        """Stop sending; wait for the attempts in flight (each has a deadline)."""
        self._halt.set()
        self._ticker.join()
        for thread in self._threads:
            thread.join(LEGIT_TIMEOUT_S * 4)


# --------------------------------------------------------------------------------------------
# One MTA under the flood


@dataclasses.dataclass
class Report:
    """The figures of one MTA."""

    mta: str
    before: list[Attempt]
    during: list[Attempt]
    idle_pss_mb: float
    peak_pss_mb: float
    flood: FloodStats
    end_counts: tuple[int, int, int]
    fd_limits: dict[str, int | None]
    duration_s: float


def run_mta(mta: FloodMeta1 | FloodPostfix, args: argparse.Namespace, script_nofile: int) -> Report:
    """Start ``mta``, measure the legitimate client before and during the flood, stop it."""
    try:
        mta.start()
        limits = {"script": script_nofile, **mta.fd_limits()}
        low = {k: v for k, v in limits.items() if v is not None and v < args.idle + args.slow + 100}
        print(f"  RLIMIT_NOFILE {limits}" + (f"  (below the flood size: {low})" if low else ""), flush=True)
        before = [send_legit(mta.port) for _ in range(3)]
        idle_pss = mta.accounting.pss_mb()
        spread = (args.per_address, args.per_network)
        flood = Flood(mta.port, args.idle, args.slow, spread, args.byte_every, args.reconnect)
        with PssSampler(mta.accounting) as sampler:
            flood.start()
            poll_until = time.monotonic() + 10
            while not flood.started_at and time.monotonic() < poll_until:
                flood.join(0.01)
            legit = Legit(mta.port, args.interval, flood.started_at)
            legit.start()
            ends = time.monotonic() + args.duration
            next_line = time.monotonic() + BUCKET_S
            while time.monotonic() < ends and flood.is_alive():
                flood.join(min(1.0, max(0.0, ends - time.monotonic())))  # the run's length, a schedule
                if time.monotonic() >= next_line:
                    next_line += BUCKET_S
                    opened, waiting, connecting = flood.counts()
                    ok = sum(a.ok for a in legit.attempts)
                    print(
                        f"  t={time.monotonic() - flood.started_at:4.0f}s flood: {opened} open, "
                        f"{waiting} awaiting greeting, {connecting} connecting; "
                        f"legit {ok}/{len(legit.attempts)} ok; PSS {mta.accounting.pss_mb():.0f} MB",
                        flush=True,
                    )
            legit.stop()
            end_counts = flood.counts()
            flood.stop()
            if flood.error is not None:
                raise RuntimeError(f"the flood thread failed: {flood.error!r}")
        return Report(
            mta.name,
            [Attempt(-1.0, ok, s, r) for ok, s, r in before],
            legit.attempts,
            idle_pss,
            sampler.peak_mb,
            flood.stats,
            end_counts,
            limits,
            args.duration,
        )
    finally:
        mta.close()


# --------------------------------------------------------------------------------------------
# Reporting


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{1000 * min(values):.0f} / {1000 * statistics.median(values):.0f} / {1000 * max(values):.0f} ms"


def _when(times: list[float]) -> str:
    if not times:
        return "-"
    return f"t={min(times):.0f}..{max(times):.0f} s (median {statistics.median(times):.0f})"


def _top(counter: Counter[str], n: int = 3) -> str:
    if not counter:
        return "-"
    return "; ".join(f"{v} {k}" for k, v in counter.most_common(n)) + ("; ..." if len(counter) > n else "")


def rows(r: Report) -> dict[str, str]:
    """The table's cells for one MTA."""
    ok_before = [a.elapsed_s for a in r.before if a.ok]
    ok = [a.elapsed_s for a in r.during if a.ok]
    failed = Counter(a.reason for a in r.during if not a.ok)
    slow = sum(1 for a in r.during if a.ok and a.elapsed_s >= 2.0)
    f = r.flood
    peak_open = max((s[1] for s in f.samples), default=0)
    return {
        "legit before flood: connect->250 min/med/max": _ms(ok_before),
        "legit during flood: 250 / attempts": f"{len(ok)} / {len(r.during)}",
        "legit during flood: connect->250 min/med/max": _ms(ok),
        "legit during flood: 250 but >= 2 s": str(slow),
        "legit during flood: failures": _top(failed),
        "PSS idle / peak MB": f"{r.idle_pss_mb:.0f} / {r.peak_pss_mb:.0f}",
        "flood attempts (idle + slow)": f"{f.attempts['idle']} + {f.attempts['slow']}",
        "flood greeted (idle + slow)": f"{f.greeted['idle']} + {f.greeted['slow']}",
        "flood held open: peak / at end": f"{peak_open} / {r.end_counts[0]}",
        "flood waiting for greeting / connecting at end": f"{r.end_counts[1]} / {r.end_counts[2]}",
        "flood refused": f"{sum(f.refused.values())}: {_top(f.refused)}",
        "flood refused when": _when(f.refused_at),
        "flood cut after greeting": f"{sum(f.cut.values())}: {_top(f.cut)}",
        "flood cut when": _when(f.cut_at),
        "flood cut after (session length)": _when(f.cut_after).replace("t=", ""),
        "RLIMIT_NOFILE": ", ".join(f"{k} {v}" for k, v in r.fd_limits.items()),
    }


def format_table(reports: list[Report]) -> str:
    """Side by side, one column per MTA, in Markdown."""
    cells = [rows(r) for r in reports]
    lines = ["| | " + " | ".join(r.mta for r in reports) + " |", "|---" * (len(reports) + 1) + "|"]
    for key in cells[0]:
        lines.append(f"| {key} | " + " | ".join(c[key] for c in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the flood against each MTA, print the table; 1 if a run failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (5000)")
    parser.add_argument("--slow", type=int, default=1000, help="slowloris connections (1000)")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of flood per MTA (90)")
    parser.add_argument("--only", choices=("meta1py", "postfix"), help="run one MTA only")
    parser.add_argument("--per-address", type=int, default=20, help="flood connections per source address")
    parser.add_argument(
        "--per-network", type=int, default=1, help="source addresses per /24 network (1: each its own)"
    )
    parser.add_argument("--byte-every", type=float, default=5.0, help="slowloris: seconds between bytes")
    parser.add_argument("--reconnect", type=float, default=10.0, help="reopen a closed flood slot after S s")
    parser.add_argument("--interval", type=float, default=3.0, help="legitimate client: seconds between")
    args = parser.parse_args(argv)
    if min(args.idle, args.slow) < 0 or args.per_address < 1 or args.interval <= 0:
        parser.error("negative counts, --per-address < 1 or --interval <= 0")
    if not 1 <= args.per_network <= 250:
        parser.error("--per-network must be 1..250")
    networks = -(-args.idle // args.per_address) / args.per_network
    if (
        networks > 250 * (SLOW_OCTET - IDLE_OCTET)
        or -(-args.slow // args.per_address) / args.per_network > 250 * 150
    ):
        parser.error("not enough loopback networks: raise --per-address or --per-network")
    for tool in ("/usr/sbin/smtp-sink", "/usr/sbin/postfix"):
        if args.only != "meta1py" and not os.path.exists(tool):
            print(f"{tool} is missing: install Debian's postfix package", file=sys.stderr)
            return 2
    script_nofile = raise_nofile(args.idle + args.slow + 2000)
    tempfile.tempdir = str(WORK_ROOT)
    mtas = [args.only] if args.only else ["meta1py", "postfix"]
    print(
        f"flood: {args.idle} idle + {args.slow} slowloris (a byte every {args.byte_every:g} s), "
        f"{args.per_address} per source address, {args.per_network} addresses per /24, "
        f"reconnect after {args.reconnect:g} s; "
        f"legit client every {args.interval:g} s; {args.duration:g} s per MTA; {os.cpu_count()} CPUs",
        flush=True,
    )
    reports: list[Report] = []
    failed = False
    with worker_accounts("m1f") as (accounts, accounts_text), smtp_sink() as sink:
        for name in mtas:
            print(f"{name}:" + (f" workers: {accounts_text}" if name == "meta1py" else ""), flush=True)
            mta: FloodMeta1 | FloodPostfix = (
                FloodMeta1(sink.port, accounts) if name == "meta1py" else FloodPostfix(sink.port)
            )
            try:
                reports.append(run_mta(mta, args, script_nofile))
            except Exception as exc:  # report it and go on with the other MTA
                print(f"  FAILED: {exc}", flush=True)
                failed = True
    if reports:
        print()
        print(format_table(reports))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
