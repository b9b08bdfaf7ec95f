"""Test mode's control API against the real ``meta1 run`` (as root: the four worker users).

Every route answers; bad input gets a 4xx JSON answer and the MTA keeps running; moving the
clock forward runs the retries (and the expiry) that fall in between, in order.
"""

from __future__ import annotations

import http.client
import json
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import meta1py.smtpc
from meta1py_testing.daemon import Meta1Daemon, free_port, poll

pytestmark = pytest.mark.e2e


def _smtpc_captures() -> bool:
    """Whether smtpc already delivers to captured destinations (another part of issue 21)."""
    return any("CaptureStore" in p.read_text() for p in Path(meta1py.smtpc.__file__).parent.glob("*.py"))


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 120.0
    ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type") or "", resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: object = None, status: int = 200) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        code, ctype, answer = self.call(method, path, data)
        assert code == status, (method, path, code, answer)
        assert ctype == "application/json", ctype
        return json.loads(answer)


@pytest.fixture
def testmode(make_daemon: Callable[..., Meta1Daemon]) -> Iterator[tuple[Meta1Daemon, Api]]:
    api_port = free_port()
    daemon = make_daemon(
        extra_config=f"test_mode {{ enable = yes; listen = 127.0.0.1:{api_port}; }}",
        sections={"qmgr": "retry_min = 10m; retry_max = 1h;"},
    )
    with daemon:
        api = Api(api_port)
        poll(lambda: _answers(api), 30, "the control API answers")
        yield daemon, api


def _answers(api: Api) -> bool | None:
    try:
        return api.call("GET", "/clock")[0] == 200 or None
    except OSError:
        return None


def submit(daemon: Meta1Daemon, rcpt: str, subject: str = "hello") -> str:
    data = f"From: a@example.org\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(data)
        assert code == 250, (code, text)
    return text.decode().split()[-1]


def test_every_route_answers_and_bad_input_is_a_4xx(testmode: tuple[Meta1Daemon, Api]) -> None:
    daemon, api = testmode
    qmgr_pid = daemon.worker_pid("qmgr")

    code, ctype, page = api.call("GET", "/")
    assert code == 200 and ctype.startswith("text/html") and b"Captured messages" in page
    spec = api.json("GET", "/openapi.json")
    assert spec["openapi"].startswith("3.1") and "/clock/advance" in spec["paths"]
    assert api.json("GET", "/messages") == {"messages": []}
    assert api.json("DELETE", "/messages") == {"deleted": 0}
    assert api.json("GET", "/queue") == {"messages": []}
    clock = api.json("GET", "/clock")
    assert clock["offset"] == 0 and abs(clock["now"] - time.time()) < 5
    assert api.json("GET", "/messages/wait?timeout=0.2", status=408) == {"error": "timeout"}
    assert "error" in api.json("GET", "/messages/0000000000000001-AAAAAAAAAAAA-abcdef", status=404)

    rule = {
        "direction": "out",
        "phase": "rcpt",
        "domain": "slow.test",
        "times": 1,
        "reply": "451 4.4.1 later",
    }
    assert len(api.json("PUT", "/scripts", {"rules": [rule]})["rules"]) == 1
    assert len(api.json("POST", "/scripts", {"rules": [rule]})["rules"]) == 2
    assert len(api.json("GET", "/scripts")["rules"]) == 2
    active = daemon.queue_directory / "test" / "scripts.json"
    assert len(json.loads(active.read_text())["rules"]) == 2
    assert api.json("DELETE", "/scripts") == {"rules": []}

    # Bad input: 4xx with a JSON error, and nothing changes.
    assert "error" in api.json("GET", "/nowhere", status=404)
    code, _ctype, _body = api.call("PATCH", "/scripts")
    assert code == 405
    assert "JSON" in api.json("PUT", "/scripts", b"{not json", status=400)["error"]
    bad = api.json(
        "PUT",
        "/scripts",
        {"rules": [{"direction": "in", "phase": "rcpt", "reply": "999 nonsense"}]},
        status=400,
    )
    assert "999" in bad["error"] or "reply" in bad["error"]
    assert api.json("GET", "/scripts") == {"rules": []}
    for s in ("", "?s=-5", "?s=0", "?s=abc", "?s=1e12", "?s=nan"):
        assert "error" in api.json("POST", f"/clock/advance{s}", status=400), s
    assert api.json("GET", "/clock")["offset"] == 0
    assert api.call("PUT", "/scripts", b"x" * (1024 * 1024 + 10))[0] == 413
    assert "error" in api.json("GET", "/messages?limit=0", status=400)
    assert "error" in api.json("GET", "/messages?kind=spam", status=400)

    assert api.json("POST", "/clock/advance?s=60")["offset"] > 59
    assert api.json("POST", "/reset") == {"reset": True}
    assert api.json("GET", "/clock")["offset"] == 0
    assert daemon.worker_pid("qmgr") == qmgr_pid
    assert daemon.banner().startswith(b"220 ")


def test_clock_advance_runs_the_retries_in_between_then_expiry(testmode: tuple[Meta1Daemon, Api]) -> None:
    daemon, api = testmode
    always = {"direction": "out", "phase": "rcpt", "domain": "example.net", "reply": "451 4.4.1 Try later"}
    api.json("PUT", "/scripts", {"rules": [always]})
    qid = submit(daemon, "x@example.net")

    def first_attempt() -> dict[str, Any] | None:
        for m in api.json("GET", "/queue")["messages"]:
            if m["qid"] == qid and m["recipients"][0]["attempts"] == 1:
                return m
        return None

    queued = poll(first_attempt, 60, "the first attempt deferred")
    rcpt = queued["recipients"][0]
    assert rcpt["status"] == "deferred" and rcpt["next_attempt"] > time.time() + 60

    # Just past the retry: one more attempt, done when the answer comes.
    now = api.json("GET", "/clock")["now"]
    done = api.json("POST", f"/clock/advance?s={rcpt['next_attempt'] - now + 1:.3f}")
    assert done["ran"] >= 1 and done["now"] >= rcpt["next_attempt"]
    after = next(m for m in api.json("GET", "/queue")["messages"] if m["qid"] == qid)
    assert after["recipients"][0]["attempts"] == 2
    assert after["recipients"][0]["next_attempt"] > done["now"]

    # Six days: every retry in between (retry_max 1h) and the expiry after queue_lifetime (5d).
    done = api.json("POST", f"/clock/advance?s={6 * 86400}")
    assert done["ran"] > 50
    assert all(m["qid"] != qid for m in api.json("GET", "/queue")["messages"])
    daemon.wait_for_log(rf"qid={qid} .*status=expired", 30)

    assert api.json("POST", "/reset") == {"reset": True}
    assert api.json("GET", "/queue") == {"messages": []}
    assert api.json("GET", "/clock")["offset"] == 0


@pytest.mark.skipif(not _smtpc_captures(), reason="smtpc's captured destination is not in the tree yet")
def test_a_scripted_deferral_is_retried_when_the_clock_moves(testmode: tuple[Meta1Daemon, Api]) -> None:
    daemon, api = testmode
    rule = {
        "direction": "out",
        "phase": "rcpt",
        "to": "once@slow.test",
        "times": 1,
        "reply": "451 4.4.1 later",
    }
    api.json("PUT", "/scripts", {"rules": [rule]})
    qid = submit(daemon, "once@slow.test", subject="deferred once")

    def deferred() -> bool | None:
        return (
            any(
                m["qid"] == qid and m["recipients"][0]["attempts"] == 1
                for m in api.json("GET", "/queue")["messages"]
            )
            or None
        )

    poll(deferred, 60, "the scripted deferral")
    assert api.json("GET", "/messages?to=once@slow.test") == {"messages": []}
    api.json("POST", "/clock/advance?s=3600")
    got = api.json("GET", "/messages/wait?to=once@slow.test&timeout=10")
    assert got["qid"] == qid and got["subject"] == "deferred once" and got["status"] == "delivered"
    assert any(line[0] == "S" and line[1].startswith("250") for line in got["transcript"])
    code, ctype, raw = api.call("GET", f"/messages/{got['id']}/raw")
    assert code == 200 and ctype == "message/rfc822" and b"Subject: deferred once" in raw
