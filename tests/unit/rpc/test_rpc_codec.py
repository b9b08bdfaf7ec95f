"""The RPC wire format: framing, envelopes, and hostile input (no event loop)."""

from __future__ import annotations

import json
import struct

import pytest
from rpc_samples import SampleHop, SampleKitchenReply, kitchen

from meta1py.rpc import FrameDecoder, RpcEncodeError, RpcProtocolError, decode_frame, encode_frame
from meta1py.rpc.messages import RpcPingReply, RpcPingRequest


def raw_frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def body_of(frame: bytes) -> bytes:
    return frame[4:]


def test_round_trip_every_field_type() -> None:
    msg = kitchen(maybe=7, backup=SampleHop(host="b", port=2))
    frame = decode_frame(body_of(encode_frame("call", 42, msg)))
    assert (frame.kind, frame.request_id, frame.message) == ("call", 42, msg)


def test_wire_envelope_is_documented_shape() -> None:
    data = encode_frame("notify", 0, RpcPingRequest(nonce=1, payload="x"))
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:]) == {
        "t": "RpcPingRequest",
        "i": 0,
        "k": "notify",
        "b": {"nonce": 1, "payload": "x"},
    }


def test_split_at_every_byte() -> None:
    frames = [
        encode_frame("call", 1, RpcPingRequest(nonce=1, payload="a")),
        encode_frame("reply", 1, RpcPingReply(nonce=1, pid=3, payload="é", process="p")),
        encode_frame("call", 2, kitchen()),
    ]
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        decoder.feed(stream[:cut])
        bodies = list(decoder)
        decoder.feed(stream[cut:])
        bodies += list(decoder)
        assert bodies == [body_of(f) for f in frames], cut
        assert decoder.buffered_bytes == 0


def test_byte_by_byte() -> None:
    frames = [encode_frame("call", i, RpcPingRequest(nonce=i, payload="z" * i)) for i in range(5)]
    decoder = FrameDecoder()
    bodies = []
    for byte in b"".join(frames):
        decoder.feed(bytes([byte]))
        while (body := decoder.next_body()) is not None:
            bodies.append(body)
    assert [decode_frame(b).message.nonce for b in bodies] == [0, 1, 2, 3, 4]  # type: ignore[attr-defined]


def test_oversize_header_rejected_before_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(RpcProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", 101))  # only the header: no body needed to refuse
    with pytest.raises(RpcProtocolError):
        decoder.feed(b"more")  # stays broken
    assert decoder.buffered_bytes == 0


def test_frame_at_cap_accepted() -> None:
    frame = encode_frame("call", 1, RpcPingRequest(nonce=1, payload="x" * 50))
    decoder = FrameDecoder(max_frame_bytes=len(frame) - 4)
    decoder.feed(frame)
    assert list(decoder) == [body_of(frame)]


def test_encode_refuses_oversize() -> None:
    with pytest.raises(RpcEncodeError, match="exceeds"):
        encode_frame("call", 1, RpcPingRequest(nonce=1, payload="x" * 200), max_frame_bytes=100)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe\x00",
        b"not json",
        b"[1, 2]",
        b'"string"',
        b"{}",
        b"[" * 100_000,
        b"1" * 5000,
        '{"t":"RpcPingRequest","i":1,"k":"call","b":{"nonce":1,"payload":"x"}}'.encode("utf-16"),
    ],
    ids=lambda b: repr(b[:12]),
)
def test_garbage_bodies(body: bytes) -> None:
    with pytest.raises(RpcProtocolError):
        decode_frame(body)


GOOD = {"t": "RpcPingRequest", "i": 1, "k": "call", "b": {"nonce": 1, "payload": "x"}}


@pytest.mark.parametrize(
    "changes",
    [
        {"t": "NoSuchMessage"},
        {"t": 5},
        {"t": "__class__"},
        {"i": -1},
        {"i": 2**63},
        {"i": "1"},
        {"i": 1.0},
        {"i": True},
        {"k": "cast"},
        {"k": None},
        {"b": []},
        {"b": {"nonce": 1}},
        {"b": {"nonce": 1, "payload": "x", "extra": 1}},
        {"b": {"nonce": True, "payload": "x"}},
        {"b": {"nonce": "1", "payload": "x"}},
        {"b": {"nonce": 1.5, "payload": "x"}},
        {"b": {"nonce": 1, "payload": None}},
        {"b": {"nonce": 1, "payload": "x" * 4097}},
        {"b": {"nonce": 2**64, "payload": "x"}},
        {"b": {"nonce": 1, "payload": "\ud800"}},
        {"x": 1},
    ],
)
def test_invalid_envelopes_and_fields(changes: dict[str, object]) -> None:
    obj = {**GOOD, **changes}
    body = raw_frame(obj)[4:]
    with pytest.raises(RpcProtocolError):
        decode_frame(body)


def test_missing_envelope_member() -> None:
    obj = dict(GOOD)
    del obj["i"]
    with pytest.raises(RpcProtocolError):
        decode_frame(raw_frame(obj)[4:])


def test_non_finite_float_refused_both_ways() -> None:
    with pytest.raises(RpcEncodeError):
        encode_frame("call", 1, kitchen(ratio=float("nan")))
    good = json.loads(encode_frame("call", 1, kitchen())[4:])
    text = json.dumps(good).replace('"ratio": 0.5', '"ratio": NaN')
    with pytest.raises(RpcProtocolError):
        decode_frame(text.encode())


def test_reply_kind_can_carry_reply() -> None:
    frame = decode_frame(body_of(encode_frame("reply", 9, SampleKitchenReply(ok=False))))
    assert frame.message == SampleKitchenReply(ok=False)
