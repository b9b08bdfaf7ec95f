"""Maildir delivery: layout, header, loop detection, failures, unique names."""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py.smtpc.maildir import DeliveryOutcome, deliver_maildir, maildir_unique_name

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody line\r\n.dot\r\n"


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir()) if d.is_dir() else []


def test_delivery_creates_layout_and_adds_header(tmp_path: Path) -> None:
    md = tmp_path / "example.org" / "bob"
    out = deliver_maildir(md, io.BytesIO(MESSAGE), "bob@example.org", "mx.test")
    assert out == DeliveryOutcome("ok", 250, "2.0.0", out.text)
    assert out.status == "ok"
    for sub in ("tmp", "new", "cur"):
        assert (md / sub).is_dir()
    assert _files(md / "tmp") == []
    assert _files(md / "cur") == []
    (msg,) = _files(md / "new")
    assert msg.read_bytes() == (
        b"Delivered-To: bob@example.org\nFrom: a@example.org\nSubject: hi\n\nbody line\n.dot\n"
    )
    assert re.fullmatch(r"\d+\.M\d+P\d+Q\d+\.mx\.test", msg.name)
    assert msg.name in out.text


def test_delivery_starts_at_current_position(tmp_path: Path) -> None:
    stream = io.BytesIO(b"junk" + MESSAGE)
    stream.seek(4)
    out = deliver_maildir(tmp_path / "md", stream, "u@x", "h")
    assert out.status == "ok"
    (msg,) = _files(tmp_path / "md" / "new")
    assert msg.read_bytes().startswith(b"Delivered-To: u@x\nFrom: a@example.org\n")


def test_crlf_split_across_chunks_is_converted(tmp_path: Path) -> None:
    # A body larger than one copy chunk, with CRLF pairs straddling every boundary position.
    body = b"".join(b"x" * (i % 97) + b"\r\n" for i in range(5000)) + b"lone\rcr\r\n"
    out = deliver_maildir(tmp_path / "md", io.BytesIO(b"S: 1\r\n\r\n" + body), "u@x", "h")
    assert out.status == "ok"
    (msg,) = _files(tmp_path / "md" / "new")
    expected = b"Delivered-To: u@x\nS: 1\n\n" + body.replace(b"\r\n", b"\n")
    assert msg.read_bytes() == expected
    assert b"lone\rcr\n" in expected


def test_existing_maildir_is_reused(tmp_path: Path) -> None:
    md = tmp_path / "md"
    for _ in range(3):
        assert deliver_maildir(md, io.BytesIO(MESSAGE), "u@x", "h").status == "ok"
    assert len(_files(md / "new")) == 3


def test_missing_maildir_without_create_is_temporary(tmp_path: Path) -> None:
    out = deliver_maildir(tmp_path / "none", io.BytesIO(MESSAGE), "u@x", "h", create=False)
    assert (out.status, out.code, out.enhanced) == ("temp", 451, "4.3.0")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    "header",
    [
        b"Delivered-To: bob@example.org\r\n",
        b"delivered-to:BOB@Example.ORG\r\n",
        b"Delivered-To:\r\n  bob@example.org\r\n",
    ],
)
def test_loop_is_permanent_failure(tmp_path: Path, header: bytes) -> None:
    msg = b"Received: from a\r\n" + header + b"Subject: x\r\n\r\nbody\r\n"
    out = deliver_maildir(tmp_path / "md", io.BytesIO(msg), "bob@example.org", "h")
    assert (out.status, out.code, out.enhanced) == ("perm", 554, "5.4.6")
    assert "loop" in out.text
    assert _files(tmp_path / "md" / "new") == []


@pytest.mark.parametrize(
    "msg",
    [
        # Another recipient: an alias expanded to several mailboxes.
        b"Delivered-To: alice@example.org\r\nSubject: x\r\n\r\nbody\r\n",
        # The same text in the body is not a header.
        b"Subject: x\r\n\r\nDelivered-To: bob@example.org\r\n",
        # Header without a body at all.
        b"X-Delivered-To: bob@example.org\r\n",
    ],
)
def test_no_loop(tmp_path: Path, msg: bytes) -> None:
    out = deliver_maildir(tmp_path / "md", io.BytesIO(msg), "bob@example.org", "h")
    assert out.status == "ok"
    (path,) = _files(tmp_path / "md" / "new")
    assert path.read_bytes() == b"Delivered-To: bob@example.org\n" + msg.replace(b"\r\n", b"\n")


def test_second_delivery_of_delivered_file_loops(tmp_path: Path) -> None:
    md = tmp_path / "md"
    deliver_maildir(md, io.BytesIO(MESSAGE), "u@x", "h")
    (first,) = _files(md / "new")
    again = first.read_bytes().replace(b"\n", b"\r\n")
    assert deliver_maildir(md, io.BytesIO(again), "u@x", "h").status == "perm"


def test_unique_name_escapes_host() -> None:
    name = maildir_unique_name("a/b:c", now=1700000000.25)
    assert re.fullmatch(r"1700000000\.M250000P\d+Q\d+\.a\\057b\\072c", name)


def test_concurrent_deliveries_get_unique_names(tmp_path: Path) -> None:
    md = tmp_path / "md"
    n_threads, per_thread = 8, 25
    outcomes: list[DeliveryOutcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            out = deliver_maildir(md, io.BytesIO(MESSAGE), "u@x", "h")
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [o.status for o in outcomes] == ["ok"] * (n_threads * per_thread)
    assert len(_files(md / "new")) == n_threads * per_thread
    assert _files(md / "tmp") == []


def test_unwritable_maildir_is_temporary(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    md = tmp_path / "md"
    deliver_maildir(md, io.BytesIO(MESSAGE), "u@x", "h")
    (md / "tmp").chmod(0o500)
    try:
        out = deliver_maildir(md, io.BytesIO(MESSAGE), "u@x", "h")
    finally:
        (md / "tmp").chmod(0o700)
    assert (out.status, out.code, out.enhanced) == ("temp", 451, "4.3.0")
    assert len(_files(md / "new")) == 1


@pytest.fixture
def tiny_tmpfs(mount_tmpfs: Callable[[str], Path]) -> Path:
    """A 64 KiB tmpfs with 64 inodes (root only)."""
    return mount_tmpfs("size=64k,nr_inodes=64")


def test_disk_full_is_temporary_and_leaves_nothing(tiny_tmpfs: Path) -> None:
    md = tiny_tmpfs / "md"
    small = deliver_maildir(md, io.BytesIO(MESSAGE), "u@x", "h")
    assert small.status == "ok"
    big = b"Subject: big\r\n\r\n" + b"y" * 998 + b"\r\n"
    out = deliver_maildir(md, io.BytesIO(big * 200), "u@x", "h")
    assert (out.status, out.code, out.enhanced) == ("temp", 452, "4.2.2")
    assert len(_files(md / "new")) == 1
    assert _files(md / "tmp") == []


@pytest.mark.parametrize(("sender", "line"), [("a@example.org", b"<a@example.org>"), ("", b"<>")])
def test_return_path_records_the_envelope_sender(tmp_path: Path, sender: str, line: bytes) -> None:
    md = tmp_path / "bob"
    assert (
        deliver_maildir(md, io.BytesIO(MESSAGE), "bob@example.org", "mx.test", sender=sender).status == "ok"
    )
    (msg,) = _files(md / "new")
    assert msg.read_bytes().startswith(b"Return-Path: " + line + b"\nDelivered-To: bob@example.org\nFrom: ")


def test_a_return_path_the_client_wrote_is_replaced_by_the_envelopes(tmp_path: Path) -> None:
    md = tmp_path / "bob"
    forged = b"Return-Path: <boss@example.com>\r\n" + MESSAGE
    assert (
        deliver_maildir(md, io.BytesIO(forged), "bob@example.org", "mx.test", sender="a@example.org").status
        == "ok"
    )
    (msg,) = _files(md / "new")
    data = msg.read_bytes()
    assert data.count(b"Return-Path:") == 1 and data.startswith(b"Return-Path: <a@example.org>\n")
    assert b"boss@example.com" not in data
