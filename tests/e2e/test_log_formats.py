"""``log_format = postfix`` read by the real pflogsumm and fail2ban; ``log_format = json`` parsed.

The MTA runs as the e2e fixture starts it (production mode as root). Mail goes through it the way
a day on a gateway would have it: delivered to a downstream server and to a Maildir, refused by
the downstream server (a bounce, itself delivered to the sender), deferred, relaying refused to
clients outside ``relay_clients``, and AUTH failures. Then Debian's pflogsumm summarises the log
and fail2ban-regex runs Debian's postfix filter over it, and Debian's prometheus-postfix-exporter
reads it (``.ci/run`` installs all three); the test compares their counts with what was sent.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import ssl
import subprocess
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meta1py.passwords import hash_password
from meta1py_testing.certs import make_pki
from meta1py_testing.daemon import Meta1Daemon, free_port, poll
from meta1py_testing.peers import SinkScript, recording_sink

pytestmark = pytest.mark.e2e

TIMEOUT = 60
SENDER = "s@localhost"
MESSAGE = b"From: s@localhost\r\nSubject: log formats\r\n\r\nhello\r\n"
FAIL2BAN_FILTER = "/etc/fail2ban/filter.d/postfix.conf"
# Every line of the postfix format: syslog's time, the host, postfix/<program>[<pid>]: .
POSTFIX_LINE = re.compile(
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 1-3]\d \d\d:\d\d:\d\d \S+ "
    r"postfix/(?:master|smtpd|qmgr|smtp|local|lmtp|bounce|trivial-rewrite|postsuper)\[\d+\]: .+"
)


def send(daemon: Meta1Daemon, rcpt: str) -> str:
    """One message from 127.0.0.1 (a relay client) to ``rcpt``; its queue id."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(MESSAGE)
    assert code == 250, (code, text)
    return text.split()[-1].decode()


def refused_relay(daemon: Meta1Daemon, source: str) -> None:
    """A client outside relay_clients tries to relay: ``554 5.7.1 ... Relay access denied``."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT, source_address=(source, 0)) as client:
        client.ehlo("spammer.example")
        assert client.mail("spam@example.org")[0] == 250
        code, text = client.rcpt("victim@elsewhere.test")
    assert (code, b"Relay access denied" in text) == (554, True), (code, text)


def failed_auth(daemon: Meta1Daemon, source: str, ca_file: Path) -> None:
    """A client guesses a password (AUTH is offered after STARTTLS): 535 5.7.8."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT, source_address=(source, 0)) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(ca_file)))
        client.ehlo("guesser.example")
        code, text = client.docmd("AUTH", "PLAIN " + b64encode(b"\0alice\0guess").decode())
    assert (code, text[:5]) == (535, b"5.7.8"), (code, text)


def hang_up_after_ehlo(daemon: Meta1Daemon, source: str) -> None:
    """A client that says EHLO and goes away without QUIT: ``lost connection after EHLO``."""
    address = ("127.0.0.1", daemon.port)
    with socket.create_connection(address, timeout=TIMEOUT, source_address=(source, 0)) as sock:
        with sock.makefile("rb") as replies:  # closed first: the socket's descriptor goes with both
            assert replies.readline().startswith(b"220 ")
            sock.sendall(b"EHLO hangup.example\r\n")
            while (line := replies.readline())[3:4] == b"-":
                pass
        assert line.startswith(b"250 "), line
    lost = rf"postfix/smtpd\[\d+\]: lost connection after EHLO from unknown\[{re.escape(source)}\]"
    daemon.wait_for_log(lost, TIMEOUT)


def pflogsumm_totals(log: Path) -> tuple[dict[str, int], str]:
    """pflogsumm's "Grand Totals" (``received``, ``delivered``, ...) and its whole report."""
    report = subprocess.run(
        ["pflogsumm", "--problems-first", str(log)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout
    totals = {
        name: int(count)
        for count, name in re.findall(
            r"^\s+(\d+)\s+(received|delivered|deferred|bounced|rejected|discarded)\b", report, re.M
        )
    }
    return totals, report


def fail2ban_hosts(log: Path, jail_filter: str) -> list[str]:
    """The client address of every line ``jail_filter`` matches (``fail2ban-regex -o ip``)."""
    result = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(log), jail_filter], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(result.stdout.split())


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exporter_samples(log: Path) -> Samples:
    """Debian's prometheus-postfix-exporter reading ``log``: its samples, keyed by name and
    sorted labels, once it has read the whole log.

    The exporter follows its file from the end, as ``tail -f`` does: so it is given a file of its
    own, and the log is appended to it once the exporter has counted a probe line written there;
    another probe line after the log says when it has read all of it (it reads in order).
    """
    port = free_port()
    followed = log.parent / "exporter.log"
    followed.touch()
    exporter = subprocess.Popen(
        [
            "prometheus-postfix-exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--postfix.logfile_path={followed}",
            f"--postfix.showq_path={log.parent / 'no-showq'}",  # no Postfix queue here
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last: list[Samples] = []

    def scrape(ready: Callable[[Samples], bool]) -> Samples | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("postfix_")
        }
        last[:] = [samples]
        return samples if ready(samples) else None

    def probe(service: str) -> tuple[str, tuple[str, tuple[tuple[str, str], ...]]]:
        """A line the exporter counts under its own name, and the name of that count."""
        line = f"Dec  3 00:00:00 localhost postfix/{service}[1]: probe\n"
        return line, ("postfix_unsupported_log_entries_total", (("service", service),))

    start_line, start_key = probe("probestart")
    end_line, end_key = probe("probeend")

    def following() -> Samples | None:
        with followed.open("a") as out:  # again on each try: a line before the seek is not read
            out.write(start_line)
        return scrape(lambda samples: samples.get(start_key, 0) >= 1)

    try:
        poll(following, TIMEOUT, "postfix_exporter to follow its file")
        with followed.open("a") as out:
            out.write(log.read_text() + end_line)
        return poll(
            lambda: scrape(lambda samples: samples.get(end_key, 0) >= 1),
            TIMEOUT,
            "postfix_exporter to read the whole log",
        )
    except Exception as exc:
        raise AssertionError(f"{exc}; its last samples: {last}") from None
    finally:
        exporter.terminate()
        exporter.wait(timeout=TIMEOUT)


def test_pflogsumm_and_fail2ban_read_the_postfix_format(make_daemon: Callable[..., Meta1Daemon]) -> None:
    script = SinkScript(
        reject_recipients=frozenset({"gone@sink.test"}), temp_reject_recipients=frozenset({"later@sink.test"})
    )
    tls = "tls { cert_file = ../pki/server.crt; key_file = ../pki/server.key; }"
    daemon = make_daemon(
        "log_format = postfix;",
        sections={
            "smar": "routes = ../routes;",
            "smtps": f"relay_clients = {{ 127.0.0.1 }}; {tls} password_file = ../passwd;",
        },
        ready_timeout=90,
    )
    pki = make_pki(daemon.dir / "pki")
    (daemon.dir / "pki").chmod(0o755)
    for key in (daemon.dir / "pki").glob("*.key"):
        key.chmod(0o600)  # smtps reads it as root, before it drops privileges
    (daemon.dir / "passwd").write_text(f"alice:{hash_password('the real one')}\n")
    (daemon.dir / "passwd").chmod(0o600)
    with recording_sink(script=script) as sink:
        (daemon.dir / "routes").write_text(f"sink.test smtp:[127.0.0.1]:{sink.port}\n")
        daemon.start()
        # Delivered downstream, delivered to a Maildir, refused downstream (a bounce), deferred.
        rcpts = ("ok@sink.test", "b@localhost", "gone@sink.test", "later@sink.test")
        qids = {rcpt: send(daemon, rcpt) for rcpt in rcpts}
        for source in ("127.0.0.7", "127.0.0.7", "127.0.0.8"):
            refused_relay(daemon, source)
        for _ in range(2):
            failed_auth(daemon, "127.0.0.9", pki.ca.cert)
        hang_up_after_ehlo(daemon, "127.0.0.10")
        sink_relay = r"relay=127\.0\.0\.1\[127\.0\.0\.1\], delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+"
        done = {
            "ok@sink.test": rf"{sink_relay}, dsn=2\.0\.0, status=sent",
            "b@localhost": r"relay=local, delay=[\d.]+, delays=[\d./]+, dsn=2\.0\.0, status=sent \(250 ",
            "gone@sink.test": rf"{sink_relay}, dsn=5\.1\.1, status=bounced",
            "later@sink.test": rf"{sink_relay}, dsn=4\.2\.1, status=deferred \(450 4\.2\.1 ",
        }
        for rcpt, outcome in done.items():
            daemon.wait_for_log(
                rf"postfix/(?:smtp|local)\[\d+\]: {qids[rcpt]}: to=<{rcpt}>, {outcome}", TIMEOUT
            )
        # The bounce of gone@ is queued by qmgr and delivered to the sender's Maildir.
        notice = daemon.wait_for_log(
            rf"postfix/bounce\[\d+\]: {qids['gone@sink.test']}: sender non-delivery notification: (\w+)",
            TIMEOUT,
        )[1]
        daemon.wait_for_log(
            rf"postfix/local\[\d+\]: {notice}: to=<{SENDER}>, relay=local, .*status=sent", TIMEOUT
        )
        assert [m.rcpt_tos for m in sink.messages] == [("ok@sink.test",)]  # the others were refused
        assert daemon.stop() == 0  # the log is complete (the fixture removes the directory)
    log = daemon.log_path
    lines = log.read_text().splitlines()
    assert lines and [line for line in lines if not POSTFIX_LINE.fullmatch(line)] == []

    totals, report = pflogsumm_totals(log)
    assert totals == {
        "received": 4,  # the four messages the client was told 250 (not the bounce, made here)
        "delivered": 3,  # ok@ to the sink, b@ and the bounce to Maildirs
        "deferred": 1,
        "bounced": 1,
        "rejected": 3,  # the three relay attempts
        "discarded": 0,
    }, report
    assert re.search(r"Relay access denied \(total: 3\)", report), report
    assert re.search(r"^\s+2\s+127\.0\.0\.7$", report, re.M) and re.search(
        r"^\s+1\s+127\.0\.0\.8$", report, re.M
    )

    # The jails an operator coming from Postfix has: the default postfix jail bans relay abuse,
    # postfix-sasl (mode auth) password guessers, mode aggressive both. The client that sent
    # mail (127.0.0.1) is never matched.
    assert fail2ban_hosts(log, FAIL2BAN_FILTER) == ["127.0.0.7", "127.0.0.7", "127.0.0.8"]
    assert fail2ban_hosts(log, "postfix[mode=auth]") == ["127.0.0.9", "127.0.0.9"]
    # mode ddos: the guessers' disconnect lines (auth=0/1) and the client that hung up.
    assert fail2ban_hosts(log, "postfix[mode=ddos]") == ["127.0.0.10", "127.0.0.9", "127.0.0.9"]
    assert fail2ban_hosts(log, "postfix[mode=aggressive]") == [
        "127.0.0.10",
        "127.0.0.7",
        "127.0.0.7",
        "127.0.0.8",
        "127.0.0.9",
        "127.0.0.9",
        "127.0.0.9",
        "127.0.0.9",
    ]

    # postfix_exporter (Debian's prometheus-postfix-exporter) counts what it reads: 10 connections
    # (4 messages, 3 relay attempts, 2 password guessers, who used STARTTLS, 1 hang-up), and the 3
    # delivery attempts smtp made (sent, refused, deferred) with Postfix's delays=.
    connects = 4 + 3 + 2 + 1
    samples = exporter_samples(log)
    assert samples[("postfix_smtpd_connects_total", ())] == connects
    assert samples[("postfix_smtpd_messages_processed_total", (("sasl_method", ""),))] == 4
    assert samples[("postfix_smtpd_messages_rejected_total", (("code", "554"),))] == 3
    assert samples[("postfix_smtpd_sasl_authentication_failures_total", ())] == 2
    assert samples[("postfix_smtpd_connections_lost_total", (("after_stage", "EHLO"),))] == 1
    tls_connections = {
        labels: n for (name, labels), n in samples.items() if name == "postfix_smtpd_tls_connections_total"
    }
    assert sum(tls_connections.values()) == 2, tls_connections
    assert all(dict(labels)["trust"] == "Anonymous" for labels in tls_connections), tls_connections
    # Each delivery line gives one observation per part of delays=a/b/c/d (Debian's build labels
    # them with an empty stage).
    observed = [n for (name, _), n in samples.items() if name == "postfix_smtp_delivery_delay_seconds_count"]
    assert sum(observed) == 3 * 4, samples
    assert samples[("postfix_smtp_status_deferred_total", ())] == 1
    assert samples[("postfix_qmgr_messages_inserted_receipients_count", ())] == 5  # with the bounce


def test_json_format_lines_all_parse(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon("log_format = json;", sections={"smtps": "relay_clients = { 127.0.0.1 };"})
    daemon.start()
    qid = send(daemon, "b@localhost")
    refused_relay(daemon, "127.0.0.7")
    daemon.wait_for_log(rf'"event":"delivered","queue_id":"{qid}"', TIMEOUT)
    assert daemon.stop() == 0
    objects = []
    for line in daemon.log_path.read_text().splitlines():
        obj = json.loads(line)  # every line, from every process
        assert isinstance(obj, dict) and isinstance(obj["pid"], int), line
        objects.append(obj)
    assert {o["process"] for o in objects} == {"mcp", "qmgr", "smar", "smtpc", "smtps"}
    events = {(o["event"], o["queue_id"]): o for o in objects if o.get("event")}
    queued, delivered = events["queued", qid], events["delivered", qid]
    assert (queued["client"], queued["from"], queued["nrcpt"], queued["process"]) == (
        "127.0.0.1",
        SENDER,
        1,
        "smtps",
    )
    connects = [o for o in objects if o.get("event") == "connect"]
    assert queued["session_id"] in {o["session_id"] for o in connects}
    assert (delivered["to"], delivered["status"], delivered["dsn"]) == ("b@localhost", "sent", "2.0.0")
    assert isinstance(delivered["delay"], float) and delivered["relay"] == "maildir"
    (rejected,) = [o for o in objects if o.get("event") == "rejected"]
    assert (rejected["client"], rejected["to"], rejected["queue_id"]) == (
        "127.0.0.7",
        "victim@elsewhere.test",
        None,
    )
    assert rejected["reply"] == "554 5.7.1 <victim@elsewhere.test>: Relay access denied"
