"""RPC wire format: length-prefixed frames carrying typed JSON messages (sans-IO).

A frame is a 4-byte big-endian unsigned length followed by that many bytes of body. The body is a
UTF-8 JSON object with exactly four members::

    {"t": "SmarResolveRequest", "i": 17, "k": "call", "b": {...fields...}}

``t`` is a registered message name, ``i`` the request id (an integer in [0, 2**63); 0 for
notifications), ``k`` the kind (``call``, ``reply``, ``error``, ``notify``) and ``b`` the message's
fields (see `meta1py.rpc.schema`). The length is checked against the frame cap as soon as the four
header bytes are in, before any of the body is buffered, so a peer cannot make the receiver hold
more than one cap's worth of data. JSON was chosen over a binary encoding because the standard
library parses it in C, it is easy to inspect, and with strict schema checks it carries no code:
never pickle, never eval.

This module imports neither trio nor socket: `FrameDecoder` takes bytes and yields bodies.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from meta1py.rpc.errors import RpcEncodeError, RpcProtocolError
from meta1py.rpc.schema import RpcMessage, message_from_json, message_to_json

DEFAULT_MAX_FRAME_BYTES: Final = 1 << 20
"""Default cap on a frame body (1 MiB)."""

Kind = Literal["call", "reply", "error", "notify"]
KINDS: Final[frozenset[str]] = frozenset({"call", "reply", "error", "notify"})
MAX_REQUEST_ID: Final = 2**63 - 1

_HEADER = struct.Struct(">I")
_ENVELOPE_KEYS: Final = frozenset({"t", "i", "k", "b"})


def _make_dumps() -> Callable[[Any], str]:
    # JSONEncoder.encode builds a new C encoder object on every call, which was a fifth of the
    # cost of encoding a small frame; build it once. c_make_encoder is absent only on Pythons
    # without the C accelerator, where the plain encoder is used.
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:  # pragma: no cover
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

    def default(obj: Any) -> Any:
        raise TypeError(f"cannot encode {type(obj).__name__}")

    encoder = make(None, default, basestring, None, ":", ",", False, False, False)

    def dumps(obj: Any) -> str:
        return "".join(encoder(obj, 0))

    return dumps


_dumps = _make_dumps()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


_raw_decode = json.JSONDecoder(parse_constant=_reject_constant).raw_decode


def _loads(text: str) -> Any:
    # raw_decode skips the two whitespace regex matches of decode(); our frames have no
    # whitespace around the object, and anything after it is refused.
    obj, end = _raw_decode(text)
    if end != len(text):
        raise ValueError("data after the JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        kind: ``call``, ``reply``, ``error`` or ``notify``.
        request_id: pairs a reply or error with its call; 0 for notifications.
        message: the validated message.
    """

    kind: Kind
    request_id: int
    message: RpcMessage


def encode_frame(
    kind: Kind, request_id: int, message: RpcMessage, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> bytes:
    """Encode one message as a complete frame (header and body).

    Raises:
        RpcEncodeError: the message breaks its schema, or the body exceeds ``max_frame_bytes``.
    """
    name, body = message_to_json(message)
    try:
        data = _dumps({"t": name, "i": request_id, "k": kind, "b": body}).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise RpcEncodeError(f"{name}: {exc}") from None
    if len(data) > max_frame_bytes:
        raise RpcEncodeError(f"{name}: frame of {len(data)} bytes exceeds {max_frame_bytes}")
    return _HEADER.pack(len(data)) + data


def decode_frame(body: bytes) -> Frame:
    """Parse and validate one frame body (without its length header).

    Raises:
        RpcProtocolError: not UTF-8 JSON, not a well-formed envelope, an unknown message type, or
            a message whose fields break its schema.
    """
    try:
        obj = _loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers UnicodeDecodeError, JSONDecodeError and over-long integer literals;
        # RecursionError a deeply nested document.
        raise RpcProtocolError(f"frame is not UTF-8 JSON: {str(exc)[:100]}") from None
    if type(obj) is not dict or obj.keys() != _ENVELOPE_KEYS:
        raise RpcProtocolError("frame is not an object with exactly the members t, i, k, b")
    kind = obj["k"]
    request_id = obj["i"]
    if type(kind) is not str or kind not in KINDS:
        raise RpcProtocolError(f"unknown frame kind {str(kind)[:20]!r}")
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        raise RpcProtocolError("request id is not an integer in [0, 2**63)")
    return Frame(kind, request_id, message_from_json(obj["t"], obj["b"]))  # type: ignore[arg-type]


class FrameDecoder:
    """Split a byte stream into frame bodies.

    Feed it whatever the socket returned; iterate to take the complete bodies. After an error
    (oversize frame) the decoder stays broken: the connection must be closed.

    Args:
        max_frame_bytes: the largest body accepted.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._bodies: deque[bytes] = deque()
        self._error: RpcProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes and cut out every complete frame.

        Raises:
            RpcProtocolError: a frame header announces more than ``max_frame_bytes``; raised as
                soon as the header is in, before the body is buffered.
        """
        if self._error is not None:
            raise self._error
        buf = self._buffer
        buf += data
        end = len(buf)
        pos = 0
        while end - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > self.max_frame_bytes:
                self._error = RpcProtocolError(
                    f"frame of {length} bytes exceeds the cap of {self.max_frame_bytes}"
                )
                del buf[:]
                raise self._error
            if end - pos - 4 < length:
                break
            self._bodies.append(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]

    def next_body(self) -> bytes | None:
        """The next complete body, or None if more bytes are needed."""
        return self._bodies.popleft() if self._bodies else None

    def __iter__(self) -> Iterator[bytes]:
        while self._bodies:
            yield self._bodies.popleft()
