"""Messages used only by the RPC unit tests: one field of every supported type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meta1py.rpc import RpcMessage, RpcRequest, caps, rpc_message, rpc_struct


@rpc_struct
@dataclass(frozen=True, slots=True)
class SampleHop:
    """A nested value."""

    host: str = field(metadata=caps(max_len=16))
    port: int


@rpc_message
@dataclass(frozen=True, slots=True)
class SampleKitchenReply(RpcMessage):
    """Reply to SampleKitchenRequest.

    Sender: test peer.
    Receiver: test caller.
    """

    ok: bool


@rpc_message
@dataclass(frozen=True, slots=True)
class SampleKitchenRequest(RpcRequest[SampleKitchenReply]):
    """Every field type at once.

    Sender: test caller.
    Receiver: test peer.
    """

    text: str = field(metadata=caps(max_len=8))
    number: int
    ratio: float
    flag: bool
    maybe: int | None
    blob: bytes = field(metadata=caps(max_len=6))
    names: tuple[str, ...] = field(metadata=caps(max_len=4, max_items=3))
    counts: list[int]
    status: Literal["OK", "TEMP", "PERM"]
    hop: SampleHop
    hops: tuple[SampleHop, ...] = field(metadata=caps(max_items=2))
    backup: SampleHop | None


def kitchen(**changes: object) -> SampleKitchenRequest:
    """A valid SampleKitchenRequest with some fields changed."""
    values: dict[str, object] = {
        "text": "héllo",
        "number": -5,
        "ratio": 0.5,
        "flag": True,
        "maybe": None,
        "blob": b"\x00\xff",
        "names": ("a", "bc"),
        "counts": [1, 2],
        "status": "TEMP",
        "hop": SampleHop(host="mx", port=25),
        "hops": (SampleHop(host="a", port=1),),
        "backup": None,
    }
    values.update(changes)
    return SampleKitchenRequest(**values)  # type: ignore[arg-type]
