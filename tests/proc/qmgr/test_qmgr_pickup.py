"""qmgr's pickup (issue 20): files in ``queue_directory/pickup`` become queued messages.

The real :class:`~meta1py.qmgr.pickup.Pickup` commits through the real manager's commit answer
(the one smtps's calls reach) on a real queue directory, with the in-process smar and smtpc of
test_qmgr_life. Every file is hostile input: the bad ones go to ``corrupt/`` with a warning, the
good ones are delivered, nothing crashes.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_qmgr_life import accept, content_of, running_qmgr, until

from meta1py.qmgr.pickup import STALE_TEMP_S, Pickup
from meta1py.queue.pickup import (
    TEMP_PREFIX,
    PickupEnvelope,
    PickupRecipient,
    encode_envelope,
    write_pickup_file,
)
from meta1py.rpc.messages import (
    QueueEnvelopeCommitReply,
    QueueEnvelopeCommitRequest,
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpReplyValue,
)

CONTENT = b"From: cron@example.test\r\nSubject: nightly\r\n\r\nall done\r\n"


def good_file(directory: Path, rcpts: tuple[str, ...] = ("ops@remote.test",)) -> str:
    env = PickupEnvelope(
        "cron@example.test",
        tuple(PickupRecipient(r, ("FAILURE",)) for r in rcpts),
        ret="HDRS",
        envid="run1",
        size=len(CONTENT),
    )
    return write_pickup_file(directory, [encode_envelope(env), CONTENT])


def plant(directory: Path, data: bytes, name: str | None = None) -> str:
    name = name or secrets.token_hex(16)
    (directory / name).write_bytes(data)
    return name


async def test_good_files_are_queued_and_delivered_bad_ones_moved_aside(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    maillog: Callable[[str], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (Not caplog.set_level: it would also raise the handler's level above the maillog's INFO.)
    async with running_qmgr(tmp_path, monkeypatch, accept) as h:
        pickup_dir = h.queue_dir / "pickup"
        pickup_dir.mkdir()
        good = good_file(pickup_dir, ("ops@remote.test", "dev@remote.test"))
        truncated = plant(
            pickup_dir, encode_envelope(PickupEnvelope("a@b.test", (PickupRecipient("c@d.test"),), size=50))
        )
        stray = plant(pickup_dir, b"not even a pickup file", name="notes.txt")
        link = secrets.token_hex(16)
        os.symlink("/etc/hostname", pickup_dir / link)
        twice = good_file(pickup_dir)
        twin = secrets.token_hex(16)
        os.link(pickup_dir / twice, pickup_dir / twin)
        stale = plant(pickup_dir, b"meta1-pickup 1\n", name=TEMP_PREFIX + secrets.token_hex(16))
        old = time.time() - STALE_TEMP_S - 60
        os.utime(pickup_dir / stale, (old, old))
        writing = plant(pickup_dir, b"meta1-pickup 1\n", name=TEMP_PREFIX + secrets.token_hex(16))

        pickup = Pickup(h.manager.config, h.manager.handle, lambda: h.manager.bounce_new)
        assert await pickup.scan() == 1
        [queued] = maillog("queued")
        m = re.match(
            r"queued qid=(\w+) origin=pickup uid=(\d+) sender=cron@example.test nrcpt=2 size=(\d+)", queued
        )
        assert m is not None, queued
        qid = m.group(1)
        assert int(m.group(2)) == os.getuid()
        stored = await h.stored(qid)
        assert stored is not None and [r.address for r in stored.recipients] == [
            "ops@remote.test",
            "dev@remote.test",
        ]
        assert (stored.ret, stored.envid, stored.recipients[0].notify) == (
            "HDRS",
            "run1",
            frozenset({"FAILURE"}),
        )
        text = content_of(h, qid)
        assert text.startswith(
            f"Received: from userid {os.getuid()}\r\n\tby mx.example.test (meta1py pickup) id {qid};"
        )
        assert text.endswith(CONTENT.decode()) and int(m.group(3)) == len(text)
        await until(lambda: any(r.qid == qid for r in h.smtpc.requests), "the delivery")

        # What is left: the temporary file still being written. The stale one was removed.
        assert sorted(p.name for p in pickup_dir.iterdir()) == [writing]
        corrupt = h.queue_dir / "corrupt"
        assert sorted(p.name for p in corrupt.iterdir()) == sorted([truncated, stray, link, twice, twin])
        reasons = "\n".join(r.getMessage() for r in caplog.records)
        assert (
            f"{truncated} is not a message: the file ends 50 octets before the end of the content" in reasons
        )
        assert f"{stray} is not a message: not the name of a pickup file" in reasons
        assert f"{link} is not a message: cannot open it" in reasons
        assert f"{twin} is not a message: 2 links to the file" in reasons
        assert good not in reasons
        # A second scan finds nothing, and says nothing more.
        said = [r for r in caplog.records if r.name == "meta1py.qmgr.pickup"]
        assert await pickup.scan() == 0
        assert [r for r in caplog.records if r.name == "meta1py.qmgr.pickup"] == said


async def test_a_file_the_queue_cannot_take_now_stays_for_the_next_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, accept) as h:
        pickup_dir = h.queue_dir / "pickup"
        pickup_dir.mkdir()
        name = good_file(pickup_dir)
        full = True

        async def commit(req: QueueEnvelopeCommitRequest) -> QueueEnvelopeCommitReply | None:
            if full:  # what qmgr answers while its disk is full
                reply = SmtpReplyValue(code=452, enhanced="4.3.1", text="Insufficient system storage")
                return QueueEnvelopeCommitReply(ok=False, reply=reply)
            answer = await h.manager.handle(req)
            assert isinstance(answer, QueueEnvelopeCommitReply)
            return answer

        pickup = Pickup(h.manager.config, commit, lambda: h.manager.bounce_new)
        assert await pickup.scan() == 0
        assert (pickup_dir / name).is_file() and not maillog("queued")
        # The content file made for the refused attempt is gone: no orphan is left behind.
        assert not [p for p in (h.queue_dir / "content").rglob("*") if p.is_file()]
        full = False
        assert await pickup.scan() == 1
        assert not (pickup_dir / name).exists() and len(maillog("queued")) == 1


def looping_file(directory: Path, hops: int) -> str:
    """A pickup file whose message already passed ``hops`` relays (an alias command's resubmission)."""
    line = b"Received: from relay%d.example.test by mx.example.test; x\r\n"
    received = b"".join(line % i for i in range(hops))
    content = received + CONTENT
    env = PickupEnvelope("cron@example.test", (PickupRecipient("ops@remote.test"),), size=len(content))
    return write_pickup_file(directory, [encode_envelope(env), content])


async def test_a_message_in_a_loop_is_bounced_before_any_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    contents: dict[str, str] = {}
    async with running_qmgr(tmp_path, monkeypatch, accept) as h:

        async def keep(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
            """Take each message as smtpc would read it (the content goes once it is delivered)."""
            contents[request.qid] = content_of(h, request.qid)
            return await accept(request)

        h.smtpc.answer = keep
        limit = h.manager.config.qmgr.max_hops
        pickup_dir = h.queue_dir / "pickup"
        pickup_dir.mkdir()
        # One under the limit is delivered; at the limit it is bounced to its sender, 554 5.4.6.
        looping_file(pickup_dir, limit - 1)
        pickup = Pickup(h.manager.config, h.manager.handle, lambda: h.manager.bounce_new)
        assert await pickup.scan() == 1
        await until(lambda: len(h.smtpc.requests) == 1 and not h.manager.messages, "the delivery")
        assert h.smtpc.requests[0].sender == "cron@example.test"

        looping_file(pickup_dir, limit)
        assert await pickup.scan() == 1
        await until(lambda: len(h.smtpc.requests) == 2 and not h.manager.messages, "the bounce")
        bounce = h.smtpc.requests[1]
        assert bounce.sender == "" and [r.address for r in bounce.recipients] == ["cron@example.test"]
        dsn = contents[bounce.qid]
        assert "Status: 5.4.6" in dsn and "Too many hops" in dsn
        (bounced,) = maillog("bounced")
        assert "to=ops@remote.test" in bounced and "dsn=5.4.6" in bounced
        assert list(pickup_dir.iterdir()) == []
