"""kill -9 of smtpc while mail flows: the deliveries it took down go out as soon as it is back (issue 13).

Retry times are one hour, so a message that was deferred for a retry time because its delivery
agent died would miss the 30 s deadline by far. Clients keep sending throughout; the sink holds
one transaction open so that smtpc has deliveries in flight when it is killed.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import threading
import time
from collections.abc import Callable

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import RecordedMessage, SinkScript, recording_sink

pytestmark = pytest.mark.e2e

MESSAGES = 300
CLIENTS = 3
HELD_AFTER = 20  # the sink holds the transaction after this many, until smtpc has been killed
DELIVERY_DEADLINE_S = 30.0
_MSGID = re.compile(rb"^Message-ID: <([^>]+)>\r$", re.MULTILINE | re.IGNORECASE)


class HoldOne:
    """``SinkScript.on_data``: answer normally, but hold one reply until released."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, msg: RecordedMessage) -> str | None:
        self.seen += 1
        if self.seen == self.after + 1:
            # Blocks the sink's event loop: every other session smtpc has open waits too.
            self.holding.set()
            self.release.wait(60)
        return None


def _send(port: int, index: int, count: int, accepted: list[str], lock: threading.Lock) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.crash.test")
        for n in range(count):
            msgid = f"c{index}.{n}@crash.test"
            data = f"From: a@example.org\r\nTo: r@sink.test\r\nMessage-ID: <{msgid}>\r\n\r\nbody {n}\r\n"
            client.sendmail("a@example.org", ["r@sink.test"], data.encode())
            with lock:
                accepted.append(msgid)


def test_mail_in_flight_when_smtpc_is_killed_is_delivered_without_waiting_for_retry(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    hold = HoldOne(HELD_AFTER)
    accepted: list[str] = []
    lock = threading.Lock()
    with recording_sink(script=SinkScript(on_data=hold)) as sink:
        daemon = make_daemon(
            sections={"smar": "routes = ../routes;", "qmgr": "retry_min = 1h; retry_max = 1h;"}
        )
        routes = daemon.dir / "routes"
        routes.write_text(f"sink.test smtp:[127.0.0.1]:{sink.port}\n")
        routes.chmod(0o644)
        with daemon:
            clients = [
                threading.Thread(target=_send, args=(daemon.port, i, MESSAGES // CLIENTS, accepted, lock))
                for i in range(CLIENTS)
            ]
            for thread in clients:
                thread.start()
            try:
                poll(hold.holding.is_set, 60, "the sink to hold a transaction")
                # Let more mail pile up behind the held session, so that smtpc has several
                # deliveries under way when it dies.
                poll(lambda: len(accepted) >= HELD_AFTER + 40, 60, "more mail to be accepted")
                pid = daemon.worker_pid("smtpc")
                log_start = daemon.log_size()
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                daemon.restarted_worker_pid("smtpc", pid, 30)
            finally:
                hold.release.set()
                for thread in clients:
                    thread.join(120)
            assert len(accepted) == MESSAGES  # smtps and qmgr never noticed

            def delivered() -> set[str]:
                return {m.group(1).decode() for msg in sink.messages if (m := _MSGID.search(msg.content))}

            try:
                poll(lambda: delivered() >= set(accepted), DELIVERY_DEADLINE_S, "every accepted message")
            except AssertionError:
                missing = sorted(set(accepted) - delivered())
                raise AssertionError(
                    f"{len(missing)} not delivered, e.g. {missing[:5]}\n{daemon.log_text()}"
                ) from None
            took_s = time.monotonic() - killed

            log = daemon.log_text()[log_start:]
            requeued = re.findall(
                r"\brequeued qid=\S+ to=\S+ relay=\S+ status=requeued reason=\"([^\"]*)\"", log
            )
            assert requeued, log  # smtpc had deliveries in flight, and they were put back
            assert all(reason.startswith("delivery agent unavailable: qmgr->smtpc: ") for reason in requeued)
            assert "status=deferred" not in log  # nothing was blamed on the destination
            print(f"requeued={len(requeued)} delivered_after_kill_s={took_s:.1f}")
