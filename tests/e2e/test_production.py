"""The sample configuration, as a site runs it: ``meta1 setup``, then ``meta1 run`` as root.

This is issue 13's acceptance run. The test takes etc/meta1.conf as shipped (workers ``meta1q``,
``meta1r``, ``meta1c``, ``meta1s``), changes only what a test must (the port, a routes map
pointing at loopback sinks, short retry times), runs ``meta1 setup`` on it as an operator would,
starts mcp as root, and goes through a gateway's day: local delivery, relay, a 550 recipient
whose RFC 3464 bounce reaches the sender's Maildir, a 4xx that is retried and delivered, the
queue tools (list, flush, delete), SIGHUP and SIGTERM. No log line may mention a permission
error. Without root it runs the same way as the invoking user (the unprivileged mode).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, free_port, poll
from meta1py_testing.peers import SinkScript, recording_sink

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "meta1.conf"


def _sample_config(port: int) -> str:
    text = SAMPLE.read_text()
    replacements = {
        "port = 2525;": f"port = {port};",
        "# routes = /etc/meta1/routes;": "routes = ../../routes;",
        "retry_min = 5m;": "retry_min = 1s;",
        "retry_max = 4000s;": "retry_max = 2s;",
    }
    for old, new in replacements.items():
        assert old in text, f"etc/meta1.conf no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


def _meta1(daemon: Meta1Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meta1py", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=daemon.dir,
    )


def _maildir(daemon: Meta1Daemon, user: str) -> Path:
    return daemon.dir / "var" / "mail" / "localhost" / user / "new"


def _messages(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(directory.iterdir())] if directory.is_dir() else []


def test_a_gateway_day_with_the_sample_config(make_daemon: Callable[..., Meta1Daemon]) -> None:
    reject = SinkScript(reject_recipients=frozenset({"nobody@reject.test"}), data_temp_failures=1)
    with recording_sink(script=reject) as sink:
        port = free_port()
        daemon = make_daemon(config_text=_sample_config(port), port=port)
        # The sample's relative paths: the queue under ./var/queue of the directory mcp starts in.
        daemon.queue_directory = daemon.dir / "var" / "queue"
        daemon.run_directory = daemon.queue_directory / "run"
        daemon.mail_directory = daemon.dir / "var" / "mail"
        dead_port = free_port()
        (daemon.dir / "routes").write_text(
            f"relay.test smtp:[127.0.0.1]:{sink.port}\n"
            f"reject.test smtp:[127.0.0.1]:{sink.port}\n"
            f"dead.test smtp:[127.0.0.1]:{dead_port}\n"
        )
        (daemon.dir / "routes").chmod(0o644)

        if os.geteuid() == 0:
            setup = _meta1(daemon, "setup", "-f", str(daemon.conf_path))
            assert setup.returncode == 0, setup.stderr
            check = _meta1(daemon, "setup", "-f", str(daemon.conf_path), "--check")
            assert check.returncode == 0, check.stderr

        with daemon:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for rcpt, body in [
                    ("alice@localhost", b"Subject: local\r\n\r\nhi alice\r\n"),
                    ("bob@relay.test", b"Subject: relay\r\n\r\nhi bob\r\n"),
                    ("nobody@reject.test", b"Subject: doomed\r\n\r\nno\r\n"),
                    ("stuck@dead.test", b"Subject: stuck\r\n\r\nwait\r\n"),
                ]:
                    client.sendmail("me@localhost", [rcpt], body)

            # Local delivery.
            poll(lambda: _messages(_maildir(daemon, "alice")) or None, 30, "alice's Maildir")
            assert b"hi alice" in _messages(_maildir(daemon, "alice"))[0]
            # Relay: the sink's first DATA got 451 (a 4xx), the retry is delivered.
            poll(lambda: any(m.rcpt_tos == ("bob@relay.test",) and m.accepted for m in sink.messages), 60,
                 "bob's message relayed after the 451")  # fmt: skip
            log = daemon.log_text()
            assert re.search(r"deferred qid=\S+ to=bob@relay\.test .*reason=\"451 4\.3\.0", log), log
            # 550 at RCPT: an RFC 3464 bounce back to me@localhost.
            poll(lambda: _messages(_maildir(daemon, "me")) or None, 60, "the bounce in me's Maildir")
            raw_bounce = _messages(_maildir(daemon, "me"))[0]
            bounce = email.message_from_bytes(raw_bounce, policy=email.policy.default)
            assert bounce.get_content_type() == "multipart/report"
            assert bounce.get_param("report-type") == "delivery-status"
            status = next(p for p in bounce.walk() if p.get_content_type() == "message/delivery-status")
            text = status.as_string()
            assert "Final-Recipient: rfc822; nobody@reject.test" in text and "Status: 5.1.1" in text

            # The queue tools on the message that cannot be delivered.
            def stuck_qid() -> str | None:
                listing = _meta1(daemon, "queue", "list", "--json", "-f", str(daemon.conf_path))
                assert listing.returncode == 0, listing.stderr
                for line in listing.stdout.splitlines():
                    entry = json.loads(line)
                    if any(r["address"] == "stuck@dead.test" for r in entry["recipients"]):
                        return str(entry["queue_id"])
                return None

            qid = poll(stuck_qid, 30, "the stuck message in meta1 queue list")
            mark = daemon.log_size()
            flushed = _meta1(daemon, "queue", "flush", "-f", str(daemon.conf_path), qid)
            assert flushed.returncode == 0, flushed.stderr
            daemon.wait_for_log(rf"deferred qid={qid} ", timeout=30, start=mark)
            deleted = _meta1(daemon, "queue", "delete", "-f", str(daemon.conf_path), qid)
            assert deleted.returncode == 0, deleted.stderr
            poll(lambda: stuck_qid() is None, 30, "the stuck message gone from the queue")

            # SIGHUP: a reload with the same file; mail still flows.
            mark = daemon.log_size()
            daemon.send_signal(signal.SIGHUP)
            daemon.wait_for_log(r"mcp\[\d+\]: info: reload done", timeout=90, start=mark)
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("me@localhost", ["alice@localhost"], b"Subject: again\r\n\r\nreloaded\r\n")
            poll(lambda: len(_messages(_maildir(daemon, "alice"))) == 2, 30, "mail after the reload")

            # SIGTERM: an orderly stop.
            assert daemon.stop() == 0
            log = daemon.log_text()
            assert not re.search(r"Permission denied|PermissionError|EACCES", log), log
            assert "mcp" in log and ("as root" in log) == (os.geteuid() == 0)
