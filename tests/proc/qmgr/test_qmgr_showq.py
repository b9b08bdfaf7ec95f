"""qmgr's showq service (meta1py.qmgr.showq) on a real queue: the listing a local user gets over
``queue_directory/public/showq`` is the one ``meta1 queue list`` prints as root.

The real manager, store and socket; the caller's uid is replaced only where the test needs a user
who is not root (the test runs as root in CI, and root may always list).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from test_qmgr_life import refuse_4xx, running_qmgr, until

from meta1py.qmgr import showq as showq_module
from meta1py.qmgr.showq import serve_showq
from meta1py.queue.listing import queue_listing
from meta1py.queue.showq import ShowqError, decode_answer, public_directory, showq_socket_path


async def ask(path: Path, request: bytes) -> bytes:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(str(path))
        await sock.send(request)
        sock.shutdown(socket.SHUT_WR)
        data = bytearray()
        while chunk := await sock.recv(65536):
            data += chunk
    return bytes(data)


async def test_a_user_gets_the_same_listing_as_root_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        public_directory(h.queue_dir).mkdir(mode=0o711)
        qid = await h.submit(("bob@remote.test", "carol@remote.test"))
        await until(lambda: maillog("deferred"), "the first deferral")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_showq, h.manager.config)
            path = showq_socket_path(h.queue_dir)
            assert stat.S_IMODE(path.stat().st_mode) == 0o666
            text = decode_answer(await ask(path, b"text\n"))
            assert text == queue_listing(h.queue_dir, "text")
            assert text.splitlines()[1].startswith(qid) and "bob@remote.test" in text
            lines = decode_answer(await ask(path, b"json\n")).splitlines()
            assert [json.loads(line)["queue_id"] for line in lines] == [qid]
            with pytest.raises(ShowqError) as caught:
                decode_answer(await ask(path, b"list everything\n"))
            assert caught.value.kind == "usage"

            # A user not in authorized_mailq_users is refused, and qmgr says so.
            monkeypatch.setattr(showq_module, "peer_uid", lambda _sock: 54321)
            only_alice = dataclasses.replace(h.manager.config, authorized_mailq_users=("alice",))
            await nursery.start(serve_showq, only_alice)
            with pytest.raises(ShowqError) as caught:
                decode_answer(await ask(path, b"text\n"))
            assert caught.value.kind == "denied" and "authorized_mailq_users" in str(caught.value)
            nursery.cancel_scope.cancel()


async def test_a_stale_socket_is_replaced_and_a_missing_directory_leaves_qmgr_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        cfg = h.manager.config
        async with trio.open_nursery() as nursery:
            # No public/ directory: a warning, and nothing else stops.
            await nursery.start(serve_showq, cfg)
            assert "showq: cannot listen on" in caplog.text
            public_directory(h.queue_dir).mkdir(mode=0o711)
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(str(showq_socket_path(h.queue_dir)))
            stale.close()  # what a killed qmgr leaves behind
            await nursery.start(serve_showq, cfg)
            answer = decode_answer(await ask(showq_socket_path(h.queue_dir), b"text"))
            assert answer == "Mail queue is empty\n"
            nursery.cancel_scope.cancel()
        assert os.path.exists(showq_socket_path(h.queue_dir))
