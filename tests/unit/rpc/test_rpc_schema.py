"""Message schemas: strict validation of every field type, registration rules, the docs table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rpc_samples import SampleHop, kitchen

from meta1py.rpc import (
    RpcEncodeError,
    RpcMessage,
    RpcProtocolError,
    RpcRequest,
    decode_frame,
    encode_frame,
    rpc_message,
)
from meta1py.rpc.doc import main as doc_main
from meta1py.rpc.doc import render_doc
from meta1py.rpc.messages import RpcPingReply, RpcPingRequest
from meta1py.rpc.schema import (
    check_schemas,
    message_class,
    message_from_json,
    message_to_json,
    registered_messages,
)

ROOT = Path(__file__).resolve().parents[3]


def wire_body() -> dict[str, Any]:
    return message_to_json(kitchen())[1]


def test_all_schemas_build() -> None:
    check_schemas()


def test_bytes_are_base64() -> None:
    assert wire_body()["blob"] == "AP8="


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text", 5),
        ("text", "x" * 9),  # cap 8
        ("number", True),  # bool is not int
        ("number", 1.0),
        ("ratio", 1),  # floats are sent as floats
        ("ratio", "0.5"),
        ("flag", 1),
        ("flag", None),
        ("maybe", "1"),
        ("maybe", False),
        ("blob", "AP8"),  # bad padding
        ("blob", "AP8=!"),
        ("blob", "AAAAAAAAAAAA"),  # 9 bytes > cap 6
        ("blob", 5),
        ("names", "ab"),
        ("names", ["a", "b", "c", "d"]),  # more than 3 items
        ("names", ["abcde"]),  # item longer than 4
        ("names", [1]),
        ("counts", [1, True]),
        ("counts", {"0": 1}),
        ("status", "ok"),
        ("status", "DONE"),
        ("status", 1),
        ("status", ["OK"]),
        ("hop", None),
        ("hop", {"host": "mx"}),
        ("hop", {"host": "mx", "port": 25, "weight": 1}),
        ("hop", {"host": "mx", "port": "25"}),
        ("hop", ["mx", 25]),
        ("hops", [{"host": "a", "port": 1}] * 3),  # more than 2 items
        ("hops", [{"host": "a", "port": 1}, {"host": "b", "port": "x"}]),
        ("backup", {"host": "x" * 17, "port": 1}),
    ],
)
def test_wrong_field_values_rejected(field: str, value: Any) -> None:
    body = wire_body()
    body[field] = value
    with pytest.raises(RpcProtocolError, match=field):
        message_from_json("SampleKitchenRequest", body)


def test_error_names_the_path() -> None:
    body = wire_body()
    body["hops"] = [{"host": "a", "port": 1}, {"host": "b", "port": "x"}]
    with pytest.raises(RpcProtocolError, match=r"SampleKitchenRequest\.hops\[1\]\.port"):
        message_from_json("SampleKitchenRequest", body)


def test_valid_variants_accepted() -> None:
    body = wire_body()
    body.update(maybe=3, backup={"host": "b", "port": 2}, names=[], counts=[], blob="")
    msg = message_from_json("SampleKitchenRequest", body)
    assert msg == kitchen(maybe=3, backup=SampleHop("b", 2), names=(), counts=[], blob=b"")
    assert isinstance(msg.names, tuple)
    assert isinstance(msg.counts, list)


def test_nested_type_is_not_a_message() -> None:
    with pytest.raises(RpcProtocolError, match="unknown message type"):
        message_from_json("SampleHop", {"host": "a", "port": 1})
    with pytest.raises(RpcEncodeError):
        encode_frame("notify", 0, SampleHop("a", 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"text": "x" * 9},
        {"number": True},
        {"number": 2**63},
        {"names": ["a"]},  # list where a tuple is declared
        {"counts": (1,)},  # tuple where a list is declared
        {"status": "NOPE"},
        {"blob": "text"},
        {"hop": ("mx", 25)},
        {"text": "\udcff"},  # lone surrogate (e.g. from surrogateescape)
    ],
)
def test_encoding_checks_the_schema_too(changes: dict[str, Any]) -> None:
    with pytest.raises(RpcEncodeError):
        encode_frame("call", 1, kitchen(**changes))


def test_request_declares_its_reply() -> None:
    assert RpcPingRequest.response is RpcPingReply
    assert RpcPingReply.response is None
    assert message_class("RpcPingRequest") is RpcPingRequest
    assert message_class("Nope") is None


def test_registration_rules() -> None:
    with pytest.raises(TypeError, match="frozen"):

        @rpc_message
        @dataclass
        class SampleMutableNote(RpcMessage):
            """Sender: a.
            Receiver: b.
            """

    with pytest.raises(TypeError, match="Sender"):

        @rpc_message
        @dataclass(frozen=True)
        class SampleUndocumentedNote(RpcMessage):
            """No sender or receiver."""

    with pytest.raises(TypeError, match="already registered"):

        @rpc_message
        @dataclass(frozen=True)
        class RpcPingReply(RpcMessage):
            """Sender: a.
            Receiver: b.
            """

    with pytest.raises(TypeError, match="registered first"):

        @dataclass(frozen=True)
        class SampleUnregisteredReply(RpcMessage):
            """Sender: a.
            Receiver: b.
            """

        @rpc_message
        @dataclass(frozen=True)
        class SampleOrphanRequest(RpcRequest[SampleUnregisteredReply]):
            """Sender: a.
            Receiver: b.
            """


def test_unsupported_field_type_reported() -> None:
    @rpc_message
    @dataclass(frozen=True)
    class SampleDictNote(RpcMessage):
        """Sender: a.
        Receiver: b.
        """

        table: dict[str, int]

    with pytest.raises(TypeError, match="unsupported"):
        encode_frame("notify", 0, SampleDictNote({"a": 1}))


def test_post_init_checks_apply_on_decode() -> None:
    @rpc_message
    @dataclass(frozen=True)
    class SamplePortNote(RpcMessage):
        """Sender: a.
        Receiver: b.
        """

        port: int

        def __post_init__(self) -> None:
            if not 0 < self.port < 65536:
                raise ValueError("port out of range")

    body = json.dumps({"t": "SamplePortNote", "i": 0, "k": "notify", "b": {"port": 0}})
    with pytest.raises(RpcProtocolError, match="port out of range"):
        decode_frame(body.encode())


def test_every_message_follows_the_naming_rules() -> None:
    for info in registered_messages():
        if info.cls.__module__.startswith("meta1py."):
            assert info.sender and info.receiver
            assert info.cls.__doc__


def test_docs_table_is_current() -> None:
    path = ROOT / "docs" / "rpc.md"
    text = path.read_text(encoding="utf-8")
    assert render_doc(text) == text, "run: python -m meta1py.rpc.doc docs/rpc.md"
    assert "SampleKitchenRequest" not in text  # test messages stay out of the docs
    assert doc_main(["--check", str(path)]) == 0
