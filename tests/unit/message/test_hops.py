"""Hop counting (meta1py.message.hops): the Received: lines of a header block, fed in chunks."""

from __future__ import annotations

import pytest

from meta1py.message.hops import HEADER_SCAN_BYTES, HeaderHead, count_hops

MESSAGE = (
    b"Received: from a.example by b.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"received: from c.example\r\n\tby d.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Subject: Received: is not a header here\r\n"
    b"X-Received: neither is this\r\n"
    b"\r\n"
    b"Received: in the body does not count\r\n"
)


def head_of(content: bytes, size: int) -> bytes:
    head = HeaderHead()
    for i in range(0, len(content), size):
        head.feed(content[i : i + size])
    return head.head


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(MESSAGE)])
def test_the_header_block_is_found_across_any_chunking(size: int) -> None:
    head = head_of(MESSAGE, size)
    assert head == MESSAGE[: MESSAGE.index(b"\r\n\r\n")]
    assert count_hops(head) == 2


def test_content_without_a_header_block_has_no_hops() -> None:
    assert head_of(b"\r\nReceived: body only\r\n", 5) == b""


def test_a_header_block_without_its_end_is_scanned_up_to_the_limit() -> None:
    line = b"Received: from x by y\r\n"
    content = line * (2 * HEADER_SCAN_BYTES // len(line))
    head = head_of(content, 4096)
    assert len(head) == HEADER_SCAN_BYTES
    assert count_hops(head) == HEADER_SCAN_BYTES // len(line) + (HEADER_SCAN_BYTES % len(line) >= 9)
