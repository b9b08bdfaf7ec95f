"""A real authoritative DNS server (Knot DNS) for tests.

:func:`running_dns_server` writes a private ``knot.conf`` and zone files into
a temporary directory, starts ``knotd`` in the foreground as the current
user on a loopback address and a free high port, waits until it answers a
SOA query (polled with dnspython, with a deadline), and on exit stops it by
its pid and removes the directory. No systemd, no root, nothing shared with
a system-wide Knot.

Example::

    zones = {"example.test": '''
        @     MX 10 mx1
        @     MX 20 mx2
        mx1   A  127.0.0.2
        mx2   A  127.0.0.3
    '''}
    with running_dns_server(zones) as (ip, port):
        resolver = Resolver(nameservers=[(ip, port)])

Zone texts are relative to the zone's origin. When a text has no SOA
record, a SOA (negative TTL 60 s), an NS record and the NS host's address
are added, so tests only write the records they care about.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

KNOTD = "knotd"


class DnsServerError(RuntimeError):
    """knotd could not be started or did not answer in time."""


def knotd_path() -> str | None:
    """Where knotd is, or None when it is not installed (Debian: /usr/sbin/knotd)."""
    found = shutil.which(KNOTD)
    if found:
        return found
    for candidate in ("/usr/sbin/knotd", "/usr/local/sbin/knotd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(ip: str = "127.0.0.1") -> int:
    """A port that is free for both UDP and TCP on ``ip`` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((ip, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((ip, port))
                except OSError:
                    continue
                return port
    raise DnsServerError(f"no free UDP+TCP port on {ip}")


def _zone_text(origin: str, body: str, ip: str) -> str:
    body = textwrap.dedent(body).strip("\n")
    head = f"$ORIGIN {origin}.\n$TTL 300\n"
    if "SOA" not in body.upper().split():
        head += (
            f"@ 300 IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n"
            f"@ 300 IN NS ns.{origin}.\n"
            f"ns 300 IN A {ip}\n"
        )
    return head + body + "\n"


def _config(tmp: Path, ip: str, port: int, zones: list[str]) -> str:
    lines = [
        "server:",
        f'    rundir: "{tmp / "run"}"',
        f"    listen: {ip}@{port}",
        "    udp-workers: 1",
        "    tcp-workers: 1",
        "    background-workers: 1",
        "log:",
        "  - target: stderr",
        "    any: info",
        "database:",
        f'    storage: "{tmp / "db"}"',
        "template:",
        "  - id: default",
        f'    storage: "{tmp / "zones"}"',
        '    file: "%s.zone"',
        "    zonefile-sync: -1",
        "    zonefile-load: whole",
        "    journal-content: none",
        "zone:",
    ]
    lines += [f"  - domain: {z}." for z in zones]
    return "\n".join(lines) + "\n"


def _answers(ip: str, port: int, zone: str) -> bool:
    query = dns.message.make_query(f"{zone}.", dns.rdatatype.SOA)
    try:
        response = dns.query.udp(query, ip, port=port, timeout=0.5)
    except (OSError, dns.exception.DNSException):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


@contextlib.contextmanager
def running_dns_server(
    zones: dict[str, str], ip: str = "127.0.0.1", *, start_timeout_s: float = 30.0
) -> Iterator[tuple[str, int]]:
    """Run knotd serving ``zones`` (origin -> zone text) and yield ``(ip, port)``.

    Args:
        zones: zone origin (without trailing dot) -> records relative to it.
        ip: loopback address to listen on.
        start_timeout_s: how long to wait for the first answer.

    Raises:
        DnsServerError: knotd is missing, exits, or does not answer in time
            (the message includes its stderr).
    """
    binary = knotd_path()
    if binary is None:
        raise DnsServerError("knotd is not installed (Debian package 'knot')")
    if not zones:
        raise ValueError("running_dns_server needs at least one zone")
    with tempfile.TemporaryDirectory(prefix="meta1-knot-") as tmpdir:
        tmp = Path(tmpdir)
        for sub in ("run", "db", "zones"):
            (tmp / sub).mkdir()
        origins = [z.lower().rstrip(".") for z in zones]
        for origin, body in zip(origins, zones.values(), strict=True):
            (tmp / "zones" / f"{origin}.zone").write_text(_zone_text(origin, body, ip))
        port = free_port(ip)
        conf = tmp / "knot.conf"
        conf.write_text(_config(tmp, ip, port, origins))
        errlog = open(tmp / "knotd.log", "w+b")  # closed in the finally clause below
        proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=errlog,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + start_timeout_s
            while not _answers(ip, port, origins[0]):
                if proc.poll() is not None or time.monotonic() > deadline:
                    errlog.seek(0)
                    output = errlog.read().decode(errors="replace")[-4000:]
                    raise DnsServerError(
                        f"knotd on {ip}@{port} did not start (exit status {proc.poll()}):\n{output}"
                    )
                time.sleep(0.05)  # polling interval while waiting for readiness
            yield ip, port
        finally:
            if proc.poll() is None:
                proc.terminate()  # by pid: Popen signals only its own child
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            errlog.close()
