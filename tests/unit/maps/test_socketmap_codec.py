"""The socketmap protocol without I/O (meta1py.maps.socketmap): requests, replies, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1py.maps.socketmap import (
    Reply,
    ReplyDecoder,
    SocketmapProtocolError,
    encode_reply,
    encode_request,
    parse_request,
)


def replies(data: bytes, *, max_bytes: int = 100_000, chunk: int = 0) -> list[Reply]:
    decoder = ReplyDecoder(max_bytes)
    out: list[Reply] = []
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    for piece in [*pieces, b""]:
        decoder.receive_data(piece)
        while (reply := decoder.next_reply()) is not None:
            out.append(reply)
    return out


def test_a_request_is_a_netstring_of_name_and_key() -> None:
    assert encode_request("access", "from:a@example.org") == b"25:access from:a@example.org,"
    assert parse_request(b"access from:a b") == ("access", "from:a b")  # the key may hold spaces
    # UTF-8 keys count bytes, not characters.
    assert encode_request("m", "é") == b"4:m \xc3\xa9,"


@pytest.mark.parametrize("name", ["", "two words", "tab\there"])
def test_a_map_name_without_a_word_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        encode_request(name, "key")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"8:OK value,", Reply("OK", "value")),
        (b"12:OK two words,", Reply("OK", "two words")),
        (b"9:NOTFOUND ,", Reply("NOTFOUND", "")),
        (b"8:NOTFOUND,", Reply("NOTFOUND", "")),  # sendmail's servers omit the space
        (b"15:TEMP db is down,", Reply("TEMP", "db is down")),
        (b"12:TIMEOUT slow,", Reply("TIMEOUT", "slow")),
        (b"12:PERM no such,", Reply("PERM", "no such")),
    ],
)
def test_replies(data: bytes, expected: Reply) -> None:
    assert replies(data) == [expected]
    assert replies(data, chunk=1) == [expected]  # byte by byte: the same
    assert replies(encode_reply(expected)) == [expected]


def test_several_replies_in_one_read_and_a_partial_one() -> None:
    decoder = ReplyDecoder()
    decoder.receive_data(b"4:OK a,9:NOTFOUND ,4:OK")
    assert decoder.next_reply() == Reply("OK", "a")
    assert decoder.next_reply() == Reply("NOTFOUND", "")
    assert decoder.next_reply() is None
    assert decoder.pending
    decoder.receive_data(b" b,")
    assert decoder.next_reply() == Reply("OK", "b")
    assert not decoder.pending


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"OK value,", "not a netstring"),
        (b"x:OK,", "bad netstring length"),
        (b":OK,", "bad netstring length"),
        (b"05:OK a,", "bad netstring length"),  # leading zero
        (b"4:OK ab,", "does not end with ','"),
        (b"4:WHAT,", "unknown reply"),
        (b"4:ok a,", "unknown reply"),  # statuses are upper case
        (b"5:OK \xff\xfe,", "not UTF-8"),
        (b"100001:", "over the limit"),
        (b"1234567", "over the limit"),  # more digits than the limit has: no need to wait for ':'
        (b"5:OK a", "closed in the middle"),  # then EOF
        (b"12", "closed in the middle"),
    ],
)
def test_garbage_is_a_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(SocketmapProtocolError, match=message):
        replies(data)


def test_the_reply_size_limit_is_the_decoders() -> None:
    big = encode_reply(Reply("OK", "x" * 200))
    assert replies(big, max_bytes=300)[0].text == "x" * 200
    with pytest.raises(SocketmapProtocolError, match="over the limit of 100"):
        replies(big, max_bytes=100)


def test_eof_between_replies_is_no_error() -> None:
    decoder = ReplyDecoder()
    decoder.receive_data(b"4:OK a,")
    decoder.receive_data(b"")
    assert decoder.next_reply() == Reply("OK", "a")
    assert decoder.next_reply() is None and decoder.eof and not decoder.pending


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_any_bytes_give_replies_or_a_protocol_error(chunks: list[bytes]) -> None:
    decoder = ReplyDecoder(max_bytes=64)
    try:
        for chunk in [*chunks, b""]:
            decoder.receive_data(chunk)
            while (reply := decoder.next_reply()) is not None:
                assert reply.status in ("OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM")
    except SocketmapProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM"]), st.text(max_size=50), st.integers(1, 7)
)
def test_encoded_replies_decode_in_any_chunking(status: str, text: str, chunk: int) -> None:
    reply = Reply(status, text)  # type: ignore[arg-type]
    assert replies(encode_reply(reply) * 2, chunk=chunk) == [reply, reply]
