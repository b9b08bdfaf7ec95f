"""Return-Path: the builder (meta1py.message.return_path); nothing writes it into mail yet."""

from __future__ import annotations

import io

import pytest

from meta1py.message.return_path import drop_return_path, read_head_without_return_path, return_path_header


def test_sender_and_null_sender() -> None:
    assert return_path_header("alice@example.org") == b"Return-Path: <alice@example.org>\r\n"
    assert return_path_header("") == b"Return-Path: <>\r\n"
    assert (
        return_path_header("ålice@example.org", newline=b"\n")
        == "Return-Path: <ålice@example.org>\n".encode()
    )


@pytest.mark.parametrize("sender", ["a@x\r\nBcc: victim@y", "a@x\n", "a\0@x", "<a@x>", "a>b@x"])
def test_a_sender_that_would_break_the_header_is_refused(sender: str) -> None:
    with pytest.raises(ValueError, match="envelope sender contains"):
        return_path_header(sender)


def test_a_return_path_that_came_with_the_message_is_dropped_whole() -> None:
    head = (
        b"Received: from a\r\n by b\r\n"
        b"Return-Path: <forged@example.net>\r\n"
        b"RETURN-PATH:\r\n\t<folded@example.net>\r\n"
        b"Subject: Return-Path: stays in a value\r\n"
        b"\r\n"
    )
    assert drop_return_path(head) == (
        b"Received: from a\r\n by b\r\nSubject: Return-Path: stays in a value\r\n\r\n"
    )


def test_only_the_header_block_is_read_and_filtered() -> None:
    content = io.BytesIO(b"Return-Path: <forged@example.net>\r\nSubject: s\r\n\r\nReturn-Path: body\r\n")
    assert read_head_without_return_path(content) == b"Subject: s\r\n\r\n"
    assert content.read() == b"Return-Path: body\r\n"
