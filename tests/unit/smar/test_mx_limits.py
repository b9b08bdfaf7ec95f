"""Caps on what one DNS answer can put into a route (issue 16: 300 MX records crash-looped smar)."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from meta1py.conf import parse_config
from meta1py.rpc.codec import DEFAULT_MAX_FRAME_BYTES, encode_frame
from meta1py.rpc.messages import SmarRouteReply
from meta1py.smar.mx import (
    MAX_MX_RECORDS,
    MxHost,
    hosts_to_look_up,
    keep_mx_records,
    limit_addresses,
    order_mx,
)
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Delivery, Router, SmtpHost
from meta1py.smar.service import SmarService


def test_order_keeps_preference_and_shuffles_ties() -> None:
    records = [(20, "c"), (10, "b"), (10, "a"), (30, "d"), (10, "a")]
    firsts = set()
    for seed in range(40):
        ordered = order_mx(records, random.Random(seed))
        assert [p for p, _ in ordered] == [10, 10, 20, 30]  # duplicate "a" listed once
        assert {h for _, h in ordered[:2]} == {"a", "b"}
        assert [h for _, h in ordered[2:]] == ["c", "d"]
        firsts.add(ordered[0][1])
    assert firsts == {"a", "b"}


def test_limit_addresses_counts_addresses_across_hosts() -> None:
    hosts = [
        MxHost("mx1", 10, ("192.0.2.1", "2001:db8::1")),
        MxHost("mx2", 20, ()),
        MxHost("mx3", 20, ("192.0.2.3", "192.0.2.4", "192.0.2.5")),
        MxHost("mx4", 30, ("192.0.2.6",)),
    ]
    assert limit_addresses(hosts, 5) == (
        MxHost("mx1", 10, ("192.0.2.1", "2001:db8::1")),
        MxHost("mx3", 20, ("192.0.2.3", "192.0.2.4", "192.0.2.5")),
    )
    assert limit_addresses(hosts, 3) == (
        MxHost("mx1", 10, ("192.0.2.1", "2001:db8::1")),
        MxHost("mx3", 20, ("192.0.2.3",)),
    )
    assert limit_addresses(hosts, 1) == (MxHost("mx1", 10, ("192.0.2.1",)),)
    assert limit_addresses(hosts, 64) == (hosts[0], hosts[2], hosts[3])


def test_three_hundred_equal_mx_records_give_five_addresses() -> None:
    records = [(10, f"mx{i}.hostile.test") for i in range(300)]
    seen: set[str] = set()
    for seed in range(20):
        rng = random.Random(seed)
        kept = keep_mx_records(records, rng)
        assert len(kept) == MAX_MX_RECORDS
        chosen = hosts_to_look_up(order_mx(kept, rng), 5)
        assert len(chosen) == 10
        hosts = limit_addresses((MxHost(h, p, ("127.0.0.1", "127.0.0.2")) for p, h in chosen), 5)
        assert sum(len(h.addresses) for h in hosts) == 5
        seen.update(h.name for h in hosts)
    assert len(seen) > 10  # a different few each time, not always the same ones


def test_keep_mx_records_keeps_the_most_preferred() -> None:
    records = [(50, f"bulk{i}") for i in range(299)] + [(5, "best")]
    kept = keep_mx_records(records, random.Random(1))
    assert kept[0] == (5, "best")
    assert len(kept) == MAX_MX_RECORDS
    assert kept == tuple(sorted(kept, key=lambda r: r[0]))
    small = [(20, "b"), (10, "a")]
    assert keep_mx_records(small, random.Random(1)) == ((10, "a"), (20, "b"))


def test_resolver_takes_its_limit_from_smtpc(tmp_path: Path) -> None:
    cfg = parse_config(f'queue_directory = "{tmp_path}"; smtpc {{ mx_address_limit = 3; }}')
    assert cfg.smtpc.mx_address_limit == 3
    assert cfg.smtpc.mx_session_limit == 2
    assert Resolver.from_config(cfg.smar, cfg.smtpc).mx_address_limit == 3
    assert Resolver.from_config(cfg.smar).mx_address_limit == 5


class _HugeRouter(Router):
    """A router whose every SMTP route has ``n`` hosts with over-long names mixed in."""

    def __init__(self, cfg: object, n: int) -> None:
        self.n = n

    async def route(self, address: str) -> Delivery:
        hosts = tuple(
            SmtpHost(f"mx{i}.example" + ("x" * 300 if i % 7 == 0 else ""), "127.0.0.1", 25)
            for i in range(self.n)
        )
        return Delivery("smtp", "smtp:example", address, hosts=hosts)


def _service(tmp_path: Path, n: int) -> SmarService:
    cfg = parse_config(f'queue_directory = "{tmp_path}";')
    return SmarService(cfg, _HugeRouter(cfg, n))


def test_service_cuts_routes_to_the_schema(tmp_path: Path) -> None:
    async def main() -> SmarRouteReply:
        return await _service(tmp_path, 300).routes(("a@example", "b@example"))

    reply = trio.run(main)
    for route in reply.routes:
        assert route.status == "ok"
        assert len(route.hosts) == 64
        assert all(len(h.name) <= 256 for h in route.hosts)
    encode_frame("reply", 1, reply)  # does not raise


def test_service_defers_what_does_not_fit_one_frame(tmp_path: Path) -> None:
    # 64 hosts a route (about 4 KiB each): 1,000 recipients would need about 4 MiB.
    addresses = tuple(f"r{i}@example" for i in range(1000))

    async def main() -> SmarRouteReply:
        return await _service(tmp_path, 64).routes(addresses)

    reply = trio.run(main)
    assert len(reply.routes) == 1000
    ok = [r for r in reply.routes if r.status == "ok"]
    deferred = [r for r in reply.routes if r.status == "temp"]
    assert ok and deferred and len(ok) + len(deferred) == 1000
    assert reply.routes[0].status == "ok" and reply.routes[-1].status == "temp"
    assert all(r.reply is not None and r.reply.code == 451 for r in deferred)
    assert len(encode_frame("reply", 1, reply)) <= DEFAULT_MAX_FRAME_BYTES


def test_route_size_bound_is_tight_for_ascii_and_safe_otherwise() -> None:
    from meta1py.rpc.messages import SmarHostValue, SmarRouteValue, SmtpReplyValue
    from meta1py.smar.service import _json_size, _route_bound

    routes = [
        SmarRouteValue(
            status="ok",
            transport="smtp",
            destination="smtp:example.com",
            hosts=(SmarHostValue(name="mx1.example.com", address="192.0.2.1", port=25),) * 5,
            path=None,
            reply=None,
        ),
        SmarRouteValue(
            status="ok",
            transport="maildir",
            destination="maildir",
            hosts=(),
            path="/var/mail/localhost/alice",
            reply=None,
        ),
        SmarRouteValue(
            status="temp",
            transport="error",
            destination="",
            hosts=(),
            path=None,
            reply=SmtpReplyValue(code=451, enhanced="4.4.3", text='DNS "said" \\ no\x01 \u00e9\U0001f600'),
        ),
    ]
    for route in routes:
        single = _json_size((route,))
        assert _route_bound(route) >= single
        # Each route in a reply costs its JSON plus one comma.
        assert _json_size((route, route)) - single <= _route_bound(route)
    # Plain ASCII: over by a few bytes at most (the longest status and transport words are assumed).
    actual = _json_size((routes[0], routes[0])) - _json_size((routes[0],))
    assert 0 <= _route_bound(routes[0]) - actual <= 8


def test_service_refuses_a_request_no_reply_could_answer(tmp_path: Path) -> None:
    import pytest

    from meta1py.rpc.errors import RpcRemoteError

    addresses = tuple(f"r{i}@example" for i in range(8000))  # not even 8,000 short failures fit

    async def main() -> SmarRouteReply:
        return await _service(tmp_path, 3).routes(addresses)

    with pytest.raises(RpcRemoteError, match="exceed one frame"):
        trio.run(main)
