"""Policy benchmark: relay throughput with the policy on against the same MTA with it off.

Usage (from the repository root, as root or as a normal user)::

    .venv/bin/python bench/policy_relay.py [--quick] [--runs N] [--shape new|reused|both]

meta1py runs as a gateway: ``example.net`` is one of its ``local_domains`` and routed to Postfix's
``smtp-sink`` on loopback, so mail to it needs no relay permission and the client (127.0.0.1,
not in ``relay_clients``) goes through every check. ``smtp-source`` sends the messages. Two
configurations run alternately, in the same run, on fresh queues on the real disk:

- ``plain``: no access map, no DNS list, no greylisting;
- ``policy``: a 10-entry access map (none of its entries matches the benchmark's client, so every
  check runs in full), one DNSBL (``bl.test``, served by knotd on loopback: the client is not
  listed, and the NXDOMAIN answer is cached), and greylisting. Before the measured run one
  session retries a recipient, so the client's network is whitelisted; that is the steady state of
  a gateway, where almost all mail comes from clients that retried once.

Both use the same DNS server (the client has a forward-confirmed name there), so the reverse lookup
of the client costs the same. The script prints
msg/s (end to end, until the sink has every message), the CPU seconds per 1,000 messages of all
meta1py's processes, and the ratio policy/plain. The goal: within 10 % of plain.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import smtplib
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from _common import worker_accounts
from relay import SMTP_SOURCE, WORK_ROOT, Accounting, Meta1Mta, Result, Workload, run_messages

from meta1py_testing.daemon import Meta1Daemon
from meta1py_testing.dns import running_dns_server
from meta1py_testing.peers import SmtpSink, smtp_sink

ACCESS = """\
cltaddr:192.0.2.66            REJECT
cltaddr:10.1.                 RELAY
cltname:.dialup.example.org   ERROR:5.7.1 dial-up hosts use their provider's relay
cltresolve:temp               TEMPFAIL
ehlo:localhost                REJECT
from:spammer@example.org      REJECT
from:newsletter@example.org   DISCARD
to:abuse@                     OK
to:closed@example.net         ERROR:550 5.2.1 mailbox closed
protectedrcpt:board@example.net  cltaddr:10.9.
"""

WORKLOADS = (Workload("small", 3000, 4096, 20),)
QUICK_WORKLOADS = (Workload("small", 200, 4096, 5),)


class GatewayMta(Meta1Mta):
    """meta1py as a gateway for example.net (routed to the sink), with or without the policy."""

    def __init__(self, name: str, sink_port: int, dns: tuple[str, int], accounts: dict[str, Any]) -> None:
        # Its own daemon (a gateway, not a relayhost); start() and close() are Meta1Mta's.
        self.name = name
        self.accounting = Accounting(name)
        ip, port = dns
        smar = f"nameserver = {{ {ip}:{port} }}; routes = ../routes;"
        if name == "policy":
            smar += " access = ../access; dnsbl { zone = bl.test; } greylisting { enable = yes; delay = 0s; }"
        self.daemon = Meta1Daemon(
            "local_domains = { example.net };",
            sections={
                "smar": smar,
                "smtpc": "max_connections = 20;",
                # The client is not a relay client: lift the connection-rate limits it would trip.
                "smtps": "relay_clients = { 192.0.2.1 }; connection_rate_per_client = 0;"
                " connection_rate_per_network = 0;",
            },
            ready_timeout=120,
            **accounts,
        )
        (self.daemon.dir / "routes").write_text(f"example.net smtp:[127.0.0.1]:{sink_port}\n")
        (self.daemon.dir / "access").write_text(ACCESS)
        self.port = self.daemon.port

    def start(self) -> None:
        super().start()
        # Greylisting: the first attempt is deferred, the retry whitelists the client's network.
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
            client.ehlo("client.bench.localhost")
            client.mail("bench@example.org")
            first = client.rcpt("rcpt@example.net")[0]
            second = client.rcpt("rcpt@example.net")[0]
            client.rset()
        expected = (450, 250) if self.name == "policy" else (250, 250)
        if (first, second) != expected:
            raise RuntimeError(f"{self.name}: priming RCPT answers {(first, second)}, expected {expected}")


def run_one(
    name: str, workload: Workload, sink: SmtpSink, dns: tuple[str, int], accounts: dict[str, Any]
) -> Result:
    mta = GatewayMta(name, sink.port, dns, accounts)
    try:
        mta.start()
        return run_messages(mta, workload, sink)
    finally:
        mta.close()


@contextlib.contextmanager
def dns_server() -> Iterator[tuple[str, int]]:
    # bl.test does not list the client: its lookup is NXDOMAIN (cached for the negative TTL). The
    # client has a forward-confirmed name, as a real gateway's clients mostly do.
    zones = {
        "bl.test": "2.0.0.127 A 127.0.0.2\n",
        "0.0.127.in-addr.arpa": "1 PTR client.bench.test.\n",
        "bench.test": "client A 127.0.0.1\n",
    }
    with running_dns_server(zones) as server:
        yield server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small workload (smoke test)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shape", choices=("new", "reused", "both"), default="both")
    args = parser.parse_args(argv)
    if not os.path.exists(SMTP_SOURCE):
        print(f"{SMTP_SOURCE} is missing: install Debian's postfix package", file=sys.stderr)
        return 2
    reuses = {"new": [False], "reused": [True], "both": [False, True]}[args.shape]
    workloads = [w.shaped(r) for w in (QUICK_WORKLOADS if args.quick else WORKLOADS) for r in reuses]
    tempfile.tempdir = str(WORK_ROOT)
    results: dict[tuple[str, bool], list[Result]] = {}
    failed = False
    with worker_accounts("m1p") as (accounts, text), smtp_sink() as sink, dns_server() as dns:
        print(f"meta1py workers: {text}", flush=True)
        for run in range(args.runs):
            for workload in workloads:
                order = ["plain", "policy"] if run % 2 == 0 else ["policy", "plain"]
                for name in order:
                    shape = "reused" if workload.reuse else "new"
                    print(f"run {run + 1} {shape:6} {name:6} ...", end=" ", flush=True)
                    try:
                        result = run_one(name, workload, sink, dns, accounts)
                    except Exception as exc:  # report it and go on
                        print(f"FAILED: {exc}", flush=True)
                        failed = True
                        continue
                    lost = f", lost {result.lost}" if result.lost else ""
                    print(
                        f"{result.e2e_per_s:.0f} msg/s, {result.cpu_s_per_1k:.2f} CPU s/1k{lost}", flush=True
                    )
                    failed |= result.lost != 0
                    results.setdefault((name, workload.reuse), []).append(result)
    print()
    print(
        f"{'workload':34} {'plain msg/s':>12} {'policy msg/s':>13} {'ratio':>6} {'CPU s/1k plain':>15} "
        f"{'policy':>7} {'ratio':>6}"
    )
    for workload in workloads:
        plain = results.get(("plain", workload.reuse), [])
        policy = results.get(("policy", workload.reuse), [])
        if not plain or not policy:
            continue
        p_rate = statistics.median(r.e2e_per_s for r in plain)
        q_rate = statistics.median(r.e2e_per_s for r in policy)
        p_cpu = statistics.median(r.cpu_s_per_1k for r in plain)
        q_cpu = statistics.median(r.cpu_s_per_1k for r in policy)
        print(
            f"{workload.describe():34} {p_rate:12.0f} {q_rate:13.0f} {q_rate / p_rate:6.2f} "
            f"{p_cpu:15.2f} {q_cpu:7.2f} {q_cpu / p_cpu:6.2f}"
        )
    print(f"(medians of {args.runs} runs; goal: policy msg/s within 10 % of plain)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
