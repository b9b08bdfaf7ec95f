"""Delivered-To: the header line and the loop check (meta1py.message.delivered_to)."""

from __future__ import annotations

import io

from meta1py.message.delivered_to import MAX_HEADER_SCAN_BYTES, delivered_to_header, has_delivered_to


def test_header_line() -> None:
    assert delivered_to_header("bob@example.org") == b"Delivered-To: bob@example.org\r\n"
    assert (
        delivered_to_header("jürgen@example.org", newline=b"\n")
        == "Delivered-To: jürgen@example.org\n".encode()
    )


def test_loop_check_reads_the_header_only() -> None:
    msg = b"Received: x\r\nDelivered-To:  Bob@Example.org \r\nSubject: s\r\n\r\nDelivered-To: carol@x\r\n"
    assert has_delivered_to(io.BytesIO(msg), "bob@example.org")
    assert not has_delivered_to(io.BytesIO(msg), "carol@x")  # only in the body
    assert not has_delivered_to(io.BytesIO(b"X-Delivered-To: bob@x\r\n\r\n"), "bob@x")


def test_folded_and_last_fields_count() -> None:
    folded = b"Subject: s\r\nDelivered-To:\r\n bob@x\r\n\r\nbody\r\n"
    assert has_delivered_to(io.BytesIO(folded), "bob@x")
    assert has_delivered_to(io.BytesIO(b"Delivered-To: bob@x"), "bob@x")  # no body, no newline


def test_scan_is_bounded() -> None:
    filler = b"X-Filler: " + b"y" * 1000 + b"\r\n"
    head = filler * (MAX_HEADER_SCAN_BYTES // len(filler) + 2)
    assert not has_delivered_to(io.BytesIO(head + b"Delivered-To: bob@x\r\n\r\n"), "bob@x")
    assert has_delivered_to(io.BytesIO(filler + b"Delivered-To: bob@x\r\n\r\n"), "bob@x")
