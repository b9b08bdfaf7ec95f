"""Hostile peers end to end (issue 16): a DNS answer with 300 MX records, malformed downstream replies.

Both run the real daemon (as root: mcp root, four worker users) against real peers on loopback:
knotd serving the zones, an aiosmtpd recording sink, and a scripted raw SMTP server.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable

import pytest

from meta1py_testing.daemon import Meta1Daemon
from meta1py_testing.dns import knotd_path, running_dns_server
from meta1py_testing.peers import free_port, raw_smtp_server, recording_sink

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(knotd_path() is None, reason="knotd (Debian package knot) is not installed"),
]

SINK_IP = "127.0.0.2"


def _send(daemon: Meta1Daemon, rcpt: str, subject: str) -> str:
    """One message from s@localhost to ``rcpt``; returns its queue id."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.ehlo("client.example")
        assert client.mail("s@localhost")[0] == 250
        code, text = client.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
        code, text = client.data(f"From: s@localhost\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nbody\r\n")
    assert code == 250, (code, text)
    return text.split()[-1].decode()


def _dead(i: int) -> str:
    """A loopback address nothing listens on (127.0.0.10 ... 127.0.0.209)."""
    return f"127.0.0.{10 + i % 200}"


def _zones() -> dict[str, str]:
    # The best MX is the sink; 299 worse ones point at dead addresses.
    best = ["@ MX 5 best", f"best A {SINK_IP}"]
    best += [f"@ MX 10 h{i}\nh{i} A {_dead(i)}" for i in range(299)]
    # 300 MX hosts of equal preference, all dead: deferred, with a bounded number of attempts.
    equal = [f"@ MX 10 e{i}\ne{i} A {_dead(i)}" for i in range(300)]
    # One MX host with 300 addresses, all dead.
    fat = ["@ MX 10 fat"] + [
        f"fat A 127.0.1.{i % 250 + 1}" if i < 250 else f"fat A 127.0.2.{i - 249}" for i in range(300)
    ]
    return {
        "hostile-best.test": "\n".join(best),
        "hostile-equal.test": "\n".join(equal),
        "fat.test": "\n".join(fat),
        "plain.test": f"@ MX 10 mx\nmx A {SINK_IP}",
    }


def _attempts(daemon: Meta1Daemon, qid: str, port: int) -> int:
    """How many hosts smtpc tried (and failed) for ``qid``."""
    return len(re.findall(rf"{qid}: \S+\[127\.0\.\d+\.\d+\]:{port}: ", daemon.log_text()))


def test_300_mx_records_neither_crash_smar_nor_stop_other_mail(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    port = free_port(SINK_IP)
    with running_dns_server(_zones()) as (dns_ip, dns_port), recording_sink(SINK_IP, port) as sink:
        daemon = make_daemon(
            sections={
                "smtpc": f"smtp_port = {port};",
                "smar": f"nameserver = {{ {dns_ip}:{dns_port} }};",
            }
        )
        with daemon:
            smar = daemon.worker_pid("smar")
            best = _send(daemon, "m@hostile-best.test", "best")
            equal = _send(daemon, "m@hostile-equal.test", "equal")
            fat = _send(daemon, "m@fat.test", "fat")
            daemon.wait_for_log(rf"delivered qid={best} .*to=m@hostile-best\.test.*relay=best\.", timeout=60)
            for qid, rcpt in ((equal, "hostile-equal"), (fat, "fat")):
                daemon.wait_for_log(rf"deferred qid={qid} .*to=m@{rcpt}\.test", timeout=60)
                # mx_address_limit = 5: five addresses tried (connections refused do not count
                # towards mx_session_limit), not 300. The next retry is minutes away (retry_min).
                assert _attempts(daemon, qid, port) == 5, daemon.log_text()
            # Mail to other domains keeps flowing, through the same smar.
            plain = _send(daemon, "m@plain.test", "plain")
            daemon.wait_for_log(rf"delivered qid={plain} .*to=m@plain\.test", timeout=60)
            assert daemon.worker_pid("smar") == smar
            log = daemon.log_text()
            assert "RpcEncodeError" not in log and "Traceback" not in log, log
            assert "address resolver unavailable" not in log, log
            assert re.search(r"MX answer for hostile-\w+\.test has 300 records", log), log
        subjects = sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages)
        assert subjects == [b"best", b"plain"]


BAD_REPLIES = {
    "bad-lf.test": (b"250 2.0.0 ok\n", "bare LF"),
    "bad-nul.test": (b"250 2.0.0 o\x00k\r\n", "NUL"),
    "bad-999.test": (b"999 2.0.0 ok\r\n", "without a valid reply code"),
    "bad-alpha.test": (b"abc ok\r\n", "without a valid reply code"),
    "bad-long.test": (b"250 " + b"A" * (1 << 20), "longer than 2048 bytes"),
}


def _bad_reply(rcpts: tuple[str, ...]) -> bytes:
    return BAD_REPLIES[rcpts[0].rpartition("@")[2]][0]


def test_malformed_downstream_replies_defer(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with raw_smtp_server(_bad_reply) as server:
        daemon = make_daemon(sections={"smar": "routes = ../routes;"})
        routes = "".join(f"{domain} smtp:[127.0.0.1]:{server.port}\n" for domain in BAD_REPLIES)
        (daemon.dir / "routes").write_text(routes)
        (daemon.dir / "routes").chmod(0o644)
        with daemon:
            smtpc = daemon.worker_pid("smtpc")
            qids = {domain: _send(daemon, f"m@{domain}", domain) for domain in BAD_REPLIES}
            for domain, qid in qids.items():
                why = BAD_REPLIES[domain][1]
                to = re.escape(f"m@{domain}")
                daemon.wait_for_log(
                    rf"deferred qid={qid} .*to={to}.*451 4\.5\.0 malformed reply from .*{why}", timeout=60
                )
            log = daemon.log_text()
            for domain, qid in qids.items():
                assert not re.search(rf"(delivered|bounced) qid={qid} ", log), (domain, log)
            assert daemon.worker_pid("smtpc") == smtpc
            assert "Traceback" not in log, log
        # Every message reached the end of data: the bad reply was the only thing wrong.
        assert {rcpts[0].rpartition("@")[2] for rcpts, _data in server.messages} == set(BAD_REPLIES)
