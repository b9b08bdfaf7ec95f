"""Benchmark: the RPC codec (encode + strict decode of one frame) against msgspec.

Run ``.venv/bin/python bench/codec.py [--rounds N]``. It round-trips the two frames that every
accepted message costs the most: smtps's ``QueueEnvelopeCommitRequest`` (5 recipients) and smar's
``SmarRouteReply`` (5 routes), with meta1py's codec (``encode_frame`` / ``decode_frame``: JSON with
schema checks, caps and error messages) and, if msgspec is installed, with msgspec Structs of the
same fields and caps (``msgspec.json``, typed decoding with ``Meta`` length limits). It prints
microseconds per round trip and the share of one relayed message's CPU that the codec costs.

msgspec is not a dependency: install it (``pip install msgspec``) to get its column.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from meta1py.rpc.codec import decode_frame, encode_frame
from meta1py.rpc.messages import (
    QueueEnvelopeCommitRequest,
    QueueRecipientValue,
    SmarHostValue,
    SmarRouteReply,
    SmarRouteValue,
)

RECIPIENTS = 5


def _commit() -> QueueEnvelopeCommitRequest:
    return QueueEnvelopeCommitRequest(
        qid="4XK2J7M0Q8ZTB",
        sender="alice@example.org",
        recipients=tuple(
            QueueRecipientValue(address=f"user{i}@example.com", orcpt=None, notify=None)
            for i in range(RECIPIENTS)
        ),
        size=4096,
        envid=None,
        ret=None,
        body="8BITMIME",
        smtputf8=False,
        client_address="127.0.0.1",
        client_helo="client.example.org",
        arrival_time=1_790_000_000.25,
    )


def _routes() -> SmarRouteReply:
    host = SmarHostValue(name="mx.example.com", address="127.0.0.1", port=25)
    return SmarRouteReply(
        routes=tuple(
            SmarRouteValue(
                status="ok", transport="smtp", destination="example.com", hosts=(host,), path=None, reply=None
            )
            for _ in range(RECIPIENTS)
        )
    )


def _time(fn: Callable[[], Any], rounds: int) -> float:
    """Microseconds per call: the best of five batches."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1e6


def _ours(msg: Any) -> Callable[[], Any]:
    def round_trip() -> Any:
        frame = encode_frame("call", 7, msg)
        return decode_frame(frame[4:]).message

    return round_trip


try:
    import msgspec
except ImportError:  # not a dependency: the msgspec column is then left out
    msgspec = None

if msgspec is not None:
    Addr = Annotated[str, msgspec.Meta(max_length=1024)]

    class Rcpt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        address: Addr
        orcpt: Addr | None
        notify: Annotated[tuple[str, ...], msgspec.Meta(max_length=4)] | None

    class Commit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="QueueEnvelopeCommitRequest"):
        qid: Annotated[str, msgspec.Meta(max_length=32)]
        sender: Addr
        recipients: Annotated[tuple[Rcpt, ...], msgspec.Meta(max_length=100_000)]
        size: int
        envid: Annotated[str, msgspec.Meta(max_length=100)] | None
        ret: Literal["FULL", "HDRS"] | None
        body: Literal["7BIT", "8BITMIME", "BINARYMIME"]
        smtputf8: bool
        client_address: Annotated[str, msgspec.Meta(max_length=64)]
        client_helo: Annotated[str, msgspec.Meta(max_length=256)]
        arrival_time: float

    class Host(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        name: Annotated[str, msgspec.Meta(max_length=256)]
        address: Annotated[str, msgspec.Meta(max_length=64)]
        port: int

    class Reply(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        code: int
        enhanced: str | None
        text: str

    class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        status: Literal["ok", "temp", "perm"]
        transport: Literal["smtp", "lmtp", "maildir", "error"]
        destination: Annotated[str, msgspec.Meta(max_length=512)]
        hosts: Annotated[tuple[Host, ...], msgspec.Meta(max_length=64)]
        path: Annotated[str, msgspec.Meta(max_length=4096)] | None
        reply: Reply | None

    class Routes(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="SmarRouteReply"):
        routes: Annotated[tuple[Route, ...], msgspec.Meta(max_length=100_000)]

    class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        t: str
        i: int
        k: Literal["call", "reply", "error", "notify"]
        b: Commit | Routes


def _msgspec_round_trips() -> dict[str, Callable[[], Any]] | None:
    if msgspec is None:
        return None
    encoder = msgspec.json.Encoder()
    decoder = msgspec.json.Decoder(Envelope)
    commit = _commit()
    spec_commit = Commit(
        qid=commit.qid,
        sender=commit.sender,
        recipients=tuple(Rcpt(r.address, r.orcpt, r.notify) for r in commit.recipients),
        size=commit.size,
        envid=commit.envid,
        ret=commit.ret,
        body=commit.body,
        smtputf8=commit.smtputf8,
        client_address=commit.client_address,
        client_helo=commit.client_helo,
        arrival_time=commit.arrival_time,
    )
    host = Host("mx.example.com", "127.0.0.1", 25)
    spec_routes = Routes(
        tuple(Route("ok", "smtp", "example.com", (host,), None, None) for _ in range(RECIPIENTS))
    )

    def trip(body: Any) -> Callable[[], Any]:
        def round_trip() -> Any:
            data = encoder.encode(Envelope(type(body).__name__, 7, "call", body))
            return decoder.decode(data).b

        return round_trip

    return {"commit": trip(spec_commit), "routes": trip(spec_routes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()
    ours = {"commit": _ours(_commit()), "routes": _ours(_routes())}
    theirs = _msgspec_round_trips()
    print(f"{'frame':<10}{'meta1py µs':>12}{'msgspec µs':>12}{'ratio':>8}")
    total_ours = total_theirs = 0.0
    for name, fn in ours.items():
        mine = _time(fn, args.rounds)
        total_ours += mine
        if theirs is None:
            print(f"{name:<10}{mine:>12.1f}{'-':>12}{'-':>8}")
            continue
        other = _time(theirs[name], args.rounds)
        total_theirs += other
        print(f"{name:<10}{mine:>12.1f}{other:>12.1f}{mine / other:>7.1f}x")
    # A relayed message crosses these two frames once each, plus smaller ones (the commit reply,
    # the delivery request and reply): at ~800 msg/s on two cores (docs/performance.md), one
    # message costs about 2,500 µs of CPU in all.
    per_message_cpu_us = 2500.0
    print(f"codec share of one relayed message's CPU: ~{100 * total_ours / per_message_cpu_us:.1f} %")
    if theirs is None:
        print("msgspec not installed: pip install msgspec for its column")
    else:
        print(f"with msgspec: ~{100 * total_theirs / per_message_cpu_us:.1f} %")


if __name__ == "__main__":
    main()
