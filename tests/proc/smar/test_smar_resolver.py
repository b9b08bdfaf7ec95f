"""Resolver against a real authoritative DNS server (knotd on loopback)."""

from __future__ import annotations

import random

import trio

from meta1py.smar.resolver import MxHost, Resolver
from meta1py_testing.dns import free_port

LIMIT_S = 60  # absolute limit per test; generous for a loaded machine


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(server: tuple[str, int], **kwargs: object) -> Resolver:
    return Resolver([server], timeout_s=10.0, **kwargs)  # type: ignore[arg-type]


async def test_mx_by_preference(dns_server: tuple[str, int]) -> None:
    with trio.fail_after(LIMIT_S):
        result = await make(dns_server).resolve_mx("MX.test.")
    assert result.ok and not result.implicit
    assert result.domain == "mx.test"
    assert result.hosts == (
        MxHost("mx1.mx.test", 10, ("127.0.0.2",)),
        MxHost("mx2.mx.test", 20, ("127.0.0.3", "::1")),
    )


async def test_ties_are_shuffled_backup_stays_last(dns_server: tuple[str, int]) -> None:
    resolver = make(dns_server, rng=random.Random(5321))
    seen = set()
    with trio.fail_after(LIMIT_S):
        for _ in range(40):
            result = await resolver.resolve_mx("ties.test")
            names = tuple(h.name for h in result.hosts)
            assert names[2] == "c.ties.test"
            seen.add(names[:2])
    assert seen == {("a.ties.test", "b.ties.test"), ("b.ties.test", "a.ties.test")}


async def test_implicit_mx(dns_server: tuple[str, int]) -> None:
    with trio.fail_after(LIMIT_S):
        result = await make(dns_server).resolve_mx("implicit.test")
    assert result.ok and result.implicit
    assert result.hosts == (MxHost("implicit.test", 0, ("127.0.0.5", "::1")),)


async def test_null_mx_is_permanent(dns_server: tuple[str, int]) -> None:
    with trio.fail_after(LIMIT_S):
        result = await make(dns_server).resolve_mx("nullmx.test")
    assert result.failure is not None
    assert result.failure.permanent
    assert (result.failure.code, result.failure.enhanced) == (556, "5.1.10")
    assert "null MX" in result.failure.text


async def test_nxdomain_is_permanent(dns_server: tuple[str, int]) -> None:
    with trio.fail_after(LIMIT_S):
        result = await make(dns_server).resolve_mx("nope.mx.test")
    assert result.failure is not None and result.failure.permanent
    assert (result.failure.code, result.failure.enhanced) == (550, "5.1.2")


async def test_no_mx_and_no_address_is_permanent(dns_server: tuple[str, int]) -> None:
    with trio.fail_after(LIMIT_S):
        result = await make(dns_server).resolve_mx("empty.test")
    assert result.failure is not None and result.failure.permanent
    assert result.failure.enhanced == "5.1.2"


async def test_mx_host_without_address_is_skipped(dns_server: tuple[str, int]) -> None:
    resolver = make(dns_server)
    with trio.fail_after(LIMIT_S):
        result = await resolver.resolve_mx("halfbroken.test")
        assert result.hosts == (MxHost("mx1.mx.test", 20, ("127.0.0.2",)),)
        result = await resolver.resolve_mx("noaddr.test")
    assert result.failure is not None and result.failure.permanent
    assert result.failure.enhanced == "5.4.4"


async def test_refused_zone_is_temporary(dns_server: tuple[str, int]) -> None:
    # knotd answers REFUSED for zones it does not serve.
    with trio.fail_after(LIMIT_S):
        result = await make(dns_server).resolve_mx("not-served.example")
    assert result.failure is not None and not result.failure.permanent
    assert (result.failure.code, result.failure.enhanced) == (451, "4.4.3")


async def test_dead_nameserver_is_temporary() -> None:
    resolver = Resolver([("127.0.0.1", free_port())], timeout_s=1.0)
    with trio.fail_after(LIMIT_S):
        result = await resolver.resolve_mx("mx.test")
    assert result.failure is not None and not result.failure.permanent
    assert result.failure.enhanced == "4.4.3"


async def test_domain_literals_need_no_dns() -> None:
    resolver = Resolver([("127.0.0.1", free_port())], timeout_s=1.0)
    result = await resolver.resolve_mx("[192.0.2.7]")
    assert result.hosts == (MxHost("[192.0.2.7]", 0, ("192.0.2.7",)),)
    result = await resolver.resolve_mx("[IPv6:::1]")
    assert result.hosts == (MxHost("[ipv6:::1]", 0, ("::1",)),)
    result = await resolver.resolve_mx("[999.1.1.1]")
    assert result.failure is not None and result.failure.enhanced == "5.1.3"
    assert resolver.queries_sent == 0


async def test_resolve_host(dns_server: tuple[str, int]) -> None:
    resolver = make(dns_server)
    with trio.fail_after(LIMIT_S):
        result = await resolver.resolve_host("smarthost.relay.test")
        assert result.hosts == (MxHost("smarthost.relay.test", 0, ("127.0.0.9",)),)
        ip = await resolver.resolve_host("127.0.0.8")
        assert ip.hosts == (MxHost("127.0.0.8", 0, ("127.0.0.8",)),)
        missing = await resolver.resolve_host("missing.relay.test")
    assert missing.failure is not None and missing.failure.permanent


async def test_cache_honours_ttl(dns_server: tuple[str, int]) -> None:
    clock = FakeClock()
    resolver = make(dns_server, clock=clock)
    with trio.fail_after(LIMIT_S):
        first = await resolver.resolve_mx("mx.test")
        sent = resolver.queries_sent
        assert sent == 5  # MX + A/AAAA of two hosts
        assert await resolver.resolve_mx("mx.test") == first
        assert resolver.queries_sent == sent
        clock.now += 301  # zone TTL is 300
        assert await resolver.resolve_mx("mx.test") == first
    assert resolver.queries_sent == 2 * sent


async def test_negative_answers_cached_by_soa_minimum(dns_server: tuple[str, int]) -> None:
    clock = FakeClock()
    resolver = make(dns_server, clock=clock)
    with trio.fail_after(LIMIT_S):
        await resolver.resolve_mx("nope.mx.test")
        sent = resolver.queries_sent
        await resolver.resolve_mx("nope.mx.test")
        assert resolver.queries_sent == sent
        clock.now += 61  # SOA minimum is 60
        await resolver.resolve_mx("nope.mx.test")
    assert resolver.queries_sent == sent + 1


async def test_temporary_failures_cached_briefly() -> None:
    clock = FakeClock()
    resolver = Resolver([("127.0.0.1", free_port())], timeout_s=1.0, temp_failure_ttl_s=5.0, clock=clock)
    with trio.fail_after(LIMIT_S):
        await resolver.resolve_mx("mx.test")
        assert resolver.queries_sent == 1
        second = await resolver.resolve_mx("mx.test")
        assert second.failure is not None and not second.failure.permanent
        assert resolver.queries_sent == 1
        clock.now += 6
        await resolver.resolve_mx("mx.test")
    assert resolver.queries_sent == 2


async def test_cache_is_bounded(dns_server: tuple[str, int]) -> None:
    resolver = make(dns_server, cache_size=3)
    with trio.fail_after(LIMIT_S):
        for domain in ("mx.test", "ties.test", "implicit.test"):
            await resolver.resolve_mx(domain)
    assert resolver.cached_answers == 3
