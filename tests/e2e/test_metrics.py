"""Metrics, ``meta1 status`` and ``meta1 monitor`` against the real daemon, as an operator uses them.

The daemon runs in production mode when the tests run as root (mcp as root, each worker as its
own user): the metrics endpoint is bound by mcp and answered by qmgr (meta1q). Mail comes in over
STARTTLS (smtplib) from 127.0.0.2, the one relay client, and goes out to a recording sink that
offers STARTTLS. The endpoint is read with urllib and parsed with prometheus_client's parser;
``meta1 status`` and ``meta1 monitor`` run as commands, the monitor inside a detached tmux
session whose screen is read with ``capture-pane``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meta1py_testing.certs import Pki, make_pki
from meta1py_testing.daemon import Meta1Daemon, free_port, pid_alive, poll
from meta1py_testing.peers import RecordingSink, recording_sink

pytestmark = pytest.mark.e2e

N = 5
TIMEOUT = 60
MESSAGE = b"From: a@client.test\r\nTo: x@example.net\r\nSubject: metrics\r\n\r\ncount me\r\n"
# Relative to queue_directory (daemon.dir/queue): the files live in daemon.dir.
TLS_SECTION = "tls { cert_file = ../pki/server.crt; key_file = ../pki/server.key; }"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Gateway:
    daemon: Meta1Daemon
    sink: RecordingSink
    pki: Pki
    metrics_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self) -> Samples:
        """GET /metrics, parsed as Prometheus parses it."""
        with urllib.request.urlopen(self.url, timeout=TIMEOUT) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = answer.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def scrape_until(self, wanted: Callable[[Samples], bool], what: str) -> Samples:
        return poll(lambda: s if wanted(s := self.scrape()) else None, TIMEOUT, what)

    def meta1(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``meta1 ARGS -f <conf>`` as the operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "meta1py", *args, "-f", str(self.daemon.conf_path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.daemon.dir,
        )


@pytest.fixture
def gateway(make_daemon: Callable[..., Meta1Daemon]) -> Iterator[Gateway]:
    metrics_port = free_port()
    daemon = make_daemon(
        f"metrics {{ listen = 127.0.0.1:{metrics_port}; }}",
        sections={
            "smtps": f"{TLS_SECTION} relay_clients = {{ 127.0.0.2 }};",
            "smar": "routes = ../routes;",
        },
    )
    pki = make_pki(daemon.dir / "pki")
    (daemon.dir / "pki").chmod(0o755)
    for key in (daemon.dir / "pki").glob("*.key"):
        key.chmod(0o600)  # smtps reads its key before it drops privileges
    sink_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sink_tls.load_cert_chain(pki.server.cert, pki.server.key)
    with recording_sink(starttls_context=sink_tls) as sink:
        (daemon.dir / "routes").write_text(f"example.net smtp:[127.0.0.1]:{sink.port}\n")
        (daemon.dir / "routes").chmod(0o644)
        with daemon:
            yield Gateway(daemon, sink, pki, metrics_port)


def send_over_tls(g: Gateway, count: int, rcpt: str = "x@example.net") -> None:
    """``count`` messages in one STARTTLS session from 127.0.0.2 (a relay client)."""
    context = ssl.create_default_context(cafile=str(g.pki.ca.cert))
    with smtplib.SMTP("127.0.0.1", g.daemon.port, timeout=TIMEOUT, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("client.test")
        client.starttls(context=context)
        client.ehlo("client.test")
        for _ in range(count):
            assert client.sendmail("a@client.test", [rcpt], MESSAGE) == {}


def refuse_one_relay(g: Gateway) -> None:
    """127.0.0.1 is no relay client: RCPT to example.net gets 554 5.7.1."""
    with smtplib.SMTP("127.0.0.1", g.daemon.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test")[0] == 250
        code, text = client.rcpt("x@example.net")
        assert (code, text[:5]) == (554, b"5.7.1"), (code, text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_endpoint_counts_what_was_sent(gateway: Gateway) -> None:
    g = gateway
    send_over_tls(g, N)
    refuse_one_relay(g)
    poll(lambda: len(g.sink.messages) >= N, TIMEOUT, f"{N} messages at the sink")
    # smtps reports about once a second, qmgr records a delivery just after the sink's 250.
    s = g.scrape_until(
        lambda s: (
            value(s, "meta1_recipients_delivered_total") == N
            and value(s, "meta1_smtps_connections_total") == 2
        ),
        f"{N} deliveries and 2 connections on the metrics page",
    )
    assert value(s, "meta1_messages_received_total") == N
    assert value(s, "meta1_recipients_delivered_total") == N
    assert value(s, "meta1_recipients_deferred_total") == 0
    assert value(s, "meta1_delivery_delay_seconds_count") == N
    assert value(s, "meta1_delivery_delay_seconds_bucket", le="+Inf") == N
    assert value(s, "meta1_smtps_tls_sessions_total") == 1  # the N messages shared one session
    assert value(s, "meta1_smtps_rejected_total", stage="rcpt", status="5.7.1") == 1
    # smtpc used STARTTLS with the sink for every session it opened (one, or a few).
    sessions = value(s, "meta1_smtpc_sessions_total")
    assert 1 <= sessions <= N
    assert value(s, "meta1_smtpc_tls_sessions_total") == sessions
    for state in ("active", "deferred", "hold"):
        assert value(s, "meta1_queue_messages", state=state) == 0
    for worker in ("qmgr", "smar", "smtpc", "smtps"):
        assert value(s, "meta1_worker_up", worker=worker) == 1
        assert value(s, "meta1_worker_restarts_total", worker=worker) == 0
    # Anything but GET or HEAD of /metrics is refused as HTTP says.
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{g.metrics_port}/", timeout=TIMEOUT)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(urllib.request.Request(g.url, data=b"x", method="POST"), timeout=TIMEOUT)
    assert posted.value.code == 405 and posted.value.headers["Allow"] == "GET, HEAD"


def test_status_shows_processes_queue_restarts_and_errors(gateway: Gateway) -> None:
    g = gateway
    d = g.daemon
    workers = {name: d.worker_pid(name) for name in ("qmgr", "smar", "smtpc", "smtps")}
    result = g.meta1("status")
    assert result.returncode == 0, result
    out = result.stdout
    assert f"meta1 is running: mcp pid {d.pid}, up " in out
    for name, pid in workers.items():
        assert re.search(rf"^{name}\s+{pid}\s+\S+\s+0\s+ready$", out, re.M), out
    assert re.search(r"^total\s+0\s+0$", out, re.M), out

    # smtpc dies: mcp restarts it, and status says so, with mcp's error line about it.
    os.kill(workers["smtpc"], signal.SIGKILL)
    new_smtpc = d.restarted_worker_pid("smtpc", workers["smtpc"])

    def restarted() -> str | None:
        text = g.meta1("status").stdout
        return text if re.search(rf"^smtpc\s+{new_smtpc}\s+\S+\s+1\s+ready$", text, re.M) else None

    out = poll(restarted, TIMEOUT, "status to show smtpc restarted once")
    assert re.search(rf"mcp\[{d.pid}\] error: smtpc \(pid {workers['smtpc']}\) was killed by SIGKILL", out), (
        out
    )
    s = g.scrape_until(lambda s: value(s, "meta1_worker_up", worker="smtpc") == 1, "smtpc up again")
    assert value(s, "meta1_worker_restarts_total", worker="smtpc") == 1

    shown = json.loads(g.meta1("status", "--json").stdout)
    assert shown["running"] is True and shown["mcp"]["pid"] == d.pid
    assert {w["name"]: w["restarts"] for w in shown["workers"]} == {
        "qmgr": 0,
        "smar": 0,
        "smtpc": 1,
        "smtps": 0,
    }
    assert shown["queue"] == {
        state: {"messages": 0, "recipients": 0} for state in ("active", "deferred", "hold")
    }

    # Stopped: exit 3, as LSB says for "not running".
    d.stop()
    stopped = g.meta1("status")
    assert (stopped.returncode, stopped.stdout) == (3, "meta1 is not running\n")
    assert not (d.run_directory / "mcp.status").exists()
    # A pid file left behind by a killed mcp: exit 1.
    gone = subprocess.Popen(["true"])
    gone.wait()
    (d.run_directory / "mcp.pid").write_text(f"{gone.pid}\n")
    dead = g.meta1("status")
    assert dead.returncode == 1 and "is gone" in dead.stdout, dead


def test_monitor_without_a_terminal_prints_plain_lines(gateway: Gateway) -> None:
    result = gateway.meta1("monitor", "-c", "2", "-i", "0.2")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "CONN", "RECV", "DELIV", "DEFER", "BOUNCE", "REJECT", "QUEUE"]
    assert len(lines) == 3 and all(re.match(r"\d\d:\d\d:\d\d( +\d+){7}$", line) for line in lines[1:]), lines


def test_monitor_under_tmux_shows_mail_arriving(gateway: Gateway, tmp_path: Path) -> None:
    g = gateway
    socket_name = f"meta1-monitor-{os.getpid()}"
    session = "monitor"
    conf = tmp_path / "tmux.conf"
    # The pane stays after the command ends, so that its last screen can be read.
    conf.write_text("set -g remain-on-exit on\n")
    env = {**os.environ, "TERM": "xterm-256color"}

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", socket_name, "-f", str(conf), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=TIMEOUT,
            env=env,
        ).stdout

    status_file = tmp_path / "status"
    command = (
        f"bash -c '{sys.executable} -m meta1py monitor -f {g.daemon.conf_path}; echo $? > {status_file}'"
    )
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    server_pid = int(tmux("display-message", "-p", "-t", session, "#{pid}").strip())
    try:

        def screen() -> list[list[str]]:
            rows = tmux("capture-pane", "-p", "-t", session).splitlines()
            return [row.split() for row in rows if re.match(r"\d\d:\d\d:\d\d( +(\d+|-)){7}$", row)]

        poll(lambda: screen() or None, TIMEOUT, "the monitor's first line")
        header = next(row for row in tmux("capture-pane", "-p", "-t", session).splitlines() if "RECV" in row)
        recv = header.split().index("RECV")
        send_over_tls(g, 2)
        poll(lambda: sum(int(row[recv]) for row in screen()) >= 2, TIMEOUT, "RECV to count 2 messages")
        tmux("send-keys", "-t", session, "C-c")

        # The exit status, as bash saw it (tmux 3.3 may leave an exited pane's process unreaped
        # and its status unknown). bash waits for its child on Ctrl-C and goes on only when the
        # child did not die of SIGINT: no file then.
        assert (
            poll(
                lambda: status_file.is_file() and status_file.read_text().strip(),
                TIMEOUT,
                "the monitor to exit on Ctrl-C",
            )
            == "0"
        )
    finally:
        subprocess.run(
            ["tmux", "-L", socket_name, "kill-session", "-t", session], capture_output=True, timeout=TIMEOUT
        )
        subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True, timeout=TIMEOUT)
        if pid_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_a_reload_moves_the_endpoint(gateway: Gateway) -> None:
    g = gateway
    old_port, new_port = g.metrics_port, free_port()
    text = g.daemon.conf_path.read_text()
    g.daemon.write_config(text.replace(f"127.0.0.1:{old_port}", f"127.0.0.1:{new_port}"))
    start = g.daemon.log_size()
    g.daemon.send_signal(signal.SIGHUP)
    g.daemon.wait_for_log(r"reload done", TIMEOUT, start)
    g.metrics_port = new_port
    assert value(g.scrape(), "meta1_worker_up", worker="qmgr") == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{old_port}/metrics", timeout=TIMEOUT)
