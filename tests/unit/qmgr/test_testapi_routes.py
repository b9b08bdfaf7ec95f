"""Test mode's control API without sockets: routing, handlers, the clock's stepping, OpenAPI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from meta1py import clock
from meta1py.qmgr import testclock
from meta1py.qmgr.testapi import OPENAPI_PATH, ROUTES, ControlApi, Request, Response, message_status, resolve
from meta1py.testmode.capture import CaptureRecord, CaptureStore


class FakeQmgr:
    """A queue of timers: each one due 'runs' (counted) and may schedule another."""

    def __init__(self, timers: list[float], reschedule_s: float | None = None) -> None:
        self.timers = sorted(timers)
        self.reschedule_s = reschedule_s
        self.events_run = 0
        self.ran_at: list[float] = []
        self.deleted = 0

    def next_timer(self) -> float | None:
        return self.timers[0] if self.timers else None

    def wake(self) -> None:
        now = clock.now()
        while self.timers and self.timers[0] <= now:
            when = self.timers.pop(0)
            self.events_run += 1
            self.ran_at.append(now)
            if self.reschedule_s is not None:
                self.timers.append(when + self.reschedule_s)
                self.timers.sort()

    async def settle(self) -> None:
        await trio.lowlevel.checkpoint()

    def queue(self) -> list[dict[str, Any]]:
        return [{"qid": "X", "recipients": []}]

    async def advance(self, seconds: float) -> testclock.Advanced:
        async def tell(_offset: float) -> None:
            pass

        return await testclock.advance(self, seconds, tell)

    async def delete_all(self) -> int:
        self.deleted += 1
        return 0

    async def reset_clock(self) -> None:
        clock.set_offset(0.0)


@pytest.fixture(autouse=True)
def _real_clock() -> Any:
    yield
    clock.set_offset(0.0)


def make_api(tmp_path: Path, qmgr: FakeQmgr | None = None) -> ControlApi:
    return ControlApi(
        tmp_path, CaptureStore(tmp_path / "messages"), qmgr if qmgr is not None else FakeQmgr([])
    )


async def call(api: ControlApi, method: str, target: str, body: bytes = b"") -> tuple[int, Any]:
    resp = await api.handle(Request.from_target(method, target, body))
    if resp.content_type == "application/json":
        return resp.status, json.loads(resp.body)
    return resp.status, resp.body


def test_routing_literal_paths_win_and_unknown_ones_are_404_or_405() -> None:
    found = resolve("GET", "/messages/wait")
    assert not isinstance(found, Response) and found[1] == {}
    found = resolve("GET", "/messages/abc")
    assert not isinstance(found, Response) and found[1] == {"id": "abc"}
    missing = resolve("GET", "/nope")
    assert isinstance(missing, Response) and missing.status == 404
    wrong = resolve("PATCH", "/scripts")
    assert isinstance(wrong, Response) and wrong.status == 405
    assert wrong.allow == ("DELETE", "GET", "POST", "PUT")
    assert not isinstance(resolve("HEAD", "/clock"), Response)


def test_every_route_is_in_the_openapi_file_and_the_file_has_no_other() -> None:
    spec = json.loads(OPENAPI_PATH.read_text())
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented == set(ROUTES)


def test_message_status_from_the_recipients() -> None:
    assert message_status([{"status": "delivered"}]) == "delivered"
    assert message_status([{"status": "delivered"}, {"status": "bounced"}]) == "bounced"
    assert message_status([{"reply": "451 4.4.1 later"}]) == "deferred"
    assert message_status([]) == "delivered"


async def test_scripts_are_checked_written_atomically_and_appended(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    rule = {"direction": "in", "phase": "rcpt", "to": "x@y.test", "reply": "550 5.1.1 No"}
    assert await call(api, "GET", "/scripts") == (200, {"rules": []})
    status, body = await call(api, "PUT", "/scripts", json.dumps({"rules": [rule]}).encode())
    assert status == 200 and len(body["rules"]) == 1
    assert (tmp_path / "scripts.json").stat().st_mode & 0o777 == 0o660
    status, body = await call(api, "POST", "/scripts", json.dumps({"rules": [rule]}).encode())
    assert len(body["rules"]) == 2
    status, body = await call(
        api, "PUT", "/scripts", b'{"rules": [{"direction": "in", "phase": "rcpt", "reply": "999 x"}]}'
    )
    assert status == 400 and "error" in body
    status, body = await call(api, "PUT", "/scripts", b"[not json")
    assert status == 400 and "JSON" in body["error"]
    assert len((await call(api, "GET", "/scripts"))[1]["rules"]) == 2
    assert await call(api, "DELETE", "/scripts") == (200, {"rules": []})
    assert not list(tmp_path.glob(".scripts.json.*"))


async def test_captures_are_listed_filtered_shown_and_waited_for(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    mime = (
        b"From: a@b.test\r\nTo: c@d.test\r\nSubject: Hello there\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n'
        b"the text\r\n--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; "
        b'filename="x.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--B--\r\n'
    )
    record = CaptureRecord(
        qid="2R4H6XQ9ZK3M",
        mail_from="a@b.test",
        rcpt_to=["c@d.test"],
        destination="smtp:d.test",
        transport="smtp",
        recipients=[{"address": "c@d.test", "status": "delivered", "reply": "250 2.0.0 Ok"}],
        transcript=[("S", "220 d.test"), ("C", "EHLO me")],
    )
    capture_id = api.captures.add(record, mime)
    status, body = await call(api, "GET", "/messages?to=C@D.TEST&subject=hello")
    assert status == 200 and [m["id"] for m in body["messages"]] == [capture_id]
    summary = body["messages"][0]
    assert (
        summary["subject"] == "Hello there"
        and summary["status"] == "delivered"
        and summary["from"] == "a@b.test"
    )
    assert (await call(api, "GET", "/messages?to=nobody@d.test"))[1] == {"messages": []}
    status, full = await call(api, "GET", f"/messages/{capture_id}")
    assert full["text"].strip() == "the text"
    assert [p["content_type"] for p in full["parts"]] == ["text/plain", "application/pdf"]
    assert full["parts"][1]["filename"] == "x.pdf" and full["parts"][1]["size"] == 3
    assert ["Subject", "Hello there"] in full["headers"]
    assert full["transcript"][0] == ["S", "220 d.test"]
    status, raw = await call(api, "GET", f"/messages/{capture_id}/raw")
    assert status == 200 and raw == mime
    assert (await call(api, "GET", "/messages/nope"))[0] == 404
    status, got = await call(api, "GET", "/messages/wait?from=a@b.test&timeout=1")
    assert status == 200 and got["id"] == capture_id
    assert await call(api, "GET", "/messages/wait?from=x@y.test&timeout=0.1") == (408, {"error": "timeout"})
    assert (await call(api, "GET", "/messages/wait?timeout=61"))[0] == 400
    assert await call(api, "DELETE", "/messages") == (200, {"deleted": 1})


async def test_clock_advance_stops_at_each_timer_in_order(tmp_path: Path) -> None:
    start = time.time()
    qmgr = FakeQmgr([start + 100, start + 200, start + 5000], reschedule_s=None)
    api = make_api(tmp_path, qmgr)
    status, body = await call(api, "POST", "/clock/advance?s=1000")
    assert status == 200 and body["ran"] == 2 and body["offset"] > 999
    assert [round(t - start) for t in qmgr.ran_at] == [100, 200]
    assert qmgr.timers == [start + 5000]


async def test_clock_advance_runs_rescheduled_timers_within_the_window(tmp_path: Path) -> None:
    start = time.time()
    qmgr = FakeQmgr([start + 10], reschedule_s=60)
    _status, body = await call(make_api(tmp_path, qmgr), "POST", "/clock/advance?s=3600")
    assert body["ran"] == 60  # 10, 70, ..., 3550


@pytest.mark.parametrize("s", ["", "0", "-1", "abc", "inf", "nan", "1e10"])
async def test_clock_advance_refuses_bad_seconds(tmp_path: Path, s: str) -> None:
    status, body = await call(make_api(tmp_path), "POST", f"/clock/advance?s={s}")
    assert status == 400 and "error" in body
    assert clock.offset() == 0


async def test_reset_and_queue(tmp_path: Path) -> None:
    qmgr = FakeQmgr([])
    api = make_api(tmp_path, qmgr)
    clock.set_offset(50)
    assert await call(api, "GET", "/queue") == (200, {"messages": [{"qid": "X", "recipients": []}]})
    assert await call(api, "POST", "/reset") == (200, {"reset": True})
    assert qmgr.deleted == 1 and clock.offset() == 0


async def test_without_a_queue_the_queue_routes_answer_503(tmp_path: Path) -> None:
    api = ControlApi(tmp_path, CaptureStore(tmp_path / "messages"), None)
    assert (await call(api, "GET", "/queue"))[0] == 503
    assert (await call(api, "GET", "/clock"))[0] == 200


async def test_the_web_page_and_openapi(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    resp = await api.handle(Request.from_target("GET", "/"))
    assert resp.status == 200 and resp.content_type.startswith("text/html") and b"<script>" in resp.body
    assert b"innerHTML" not in resp.body  # captured mail is shown as text only
    _status, spec = await call(api, "GET", "/openapi.json")
    assert spec["openapi"] == "3.1.0"
