"""Property tests: no input makes the decoder fail other than with RpcProtocolError."""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rpc_samples import kitchen

from meta1py.rpc import FrameDecoder, RpcProtocolError, decode_frame, encode_frame
from meta1py.rpc.messages import RpcPingRequest

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def decode_or_refuse(body: bytes) -> None:
    try:
        decode_frame(body)
    except RpcProtocolError:
        pass


@given(st.binary(max_size=300))
def test_random_bytes(body: bytes) -> None:
    decode_or_refuse(body)


@given(
    t=st.sampled_from(["RpcPingRequest", "SampleKitchenRequest", "SampleHop", "x"]) | json_values,
    i=json_values,
    k=st.sampled_from(["call", "reply", "error", "notify"]) | json_values,
    b=json_values,
)
def test_random_envelopes(t: Any, i: Any, k: Any, b: Any) -> None:
    decode_or_refuse(json.dumps({"t": t, "i": i, "k": k, "b": b}).encode())


@given(st.dictionaries(st.sampled_from(list(kitchen().__dataclass_fields__)), json_values))
def test_random_field_values(changes: dict[str, Any]) -> None:
    body = json.loads(encode_frame("call", 1, kitchen())[4:])
    body["b"].update(changes)
    decode_or_refuse(json.dumps(body).encode())


@settings(max_examples=50)
@given(st.lists(st.integers(min_value=0, max_value=64), max_size=20), st.binary(max_size=40))
def test_arbitrary_chunking_and_trailing_garbage(cuts: list[int], tail: bytes) -> None:
    frames = [encode_frame("call", n, RpcPingRequest(nonce=n, payload="p" * n)) for n in range(6)]
    stream = b"".join(frames) + tail
    decoder = FrameDecoder(max_frame_bytes=200)
    bodies = []
    pos = 0
    try:
        for cut in [*cuts, len(stream)]:
            decoder.feed(stream[pos : pos + cut] if cut else b"")
            pos += cut
            bodies += list(decoder)
        decoder.feed(stream[pos:])
        bodies += list(decoder)
    except RpcProtocolError:
        assert len(tail) >= 4 and struct.unpack(">I", tail[:4])[0] > 200
    for body in bodies[:6]:
        decode_frame(body)
    assert bodies[:6] == [f[4:] for f in frames][: len(bodies[:6])]
