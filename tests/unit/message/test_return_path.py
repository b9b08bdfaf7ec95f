"""Return-Path: the builder (meta1py.message.return_path); nothing writes it into mail yet."""

from __future__ import annotations

import pytest

from meta1py.message.return_path import return_path_header


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
