"""smar in test mode: DNS from a zone file, or routing without DNS at all.

The configured nameserver is a loopback port where nothing answers: any question that reached
the network would come back as a temporary failure, so every answer below came from the zone file
(or from no lookup at all).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meta1py.conf import Config, parse_config, with_test_mode
from meta1py.smar.resolver import (
    SYNTHETIC_ADDRESS,
    MxHost,
    NoDnsBackend,
    Resolver,
    ZoneBackend,
    ZoneFileError,
)
from meta1py.smar.router import Delivery, PermanentFailure, Router, SmtpHost
from meta1py.smar.service import SmarService
from meta1py_testing.dns import free_port

LIMIT_S = 30
ZONE = Path(__file__).parents[2] / "data" / "zones" / "test.zone"


def config(tmp_path: Path, *, zone: Path | None = ZONE, extra: str = "") -> Config:
    zone_line = f'zone_file = "{zone}";' if zone is not None else ""
    text = f"""
        queue_directory = "{tmp_path / "queue"}";
        mail_directory = "{tmp_path / "mail"}";
        local_domains = {{ local.test }};
        smar {{ nameserver = {{ 127.0.0.1:{free_port()} }}; DNS_timeout = 2s; {extra} }}
        smtps {{ relay_clients = {{ 192.0.2.250 }}; }}
        test_mode {{ {zone_line} }}
    """
    return with_test_mode(parse_config(text))


def router(cfg: Config) -> Router:
    return Router(cfg, Resolver.from_config(cfg.smar, cfg.smtpc, cfg.test_mode))


async def test_zone_file_routes_by_mx(tmp_path: Path) -> None:
    r = router(config(tmp_path))
    assert isinstance(r.resolver.backend, ZoneBackend)
    with trio.fail_after(LIMIT_S):
        result = await r.route("someone@Example.Test")
    assert result == Delivery(
        "smtp",
        "smtp:example.test",
        "someone@example.test",
        hosts=(
            SmtpHost("mx1.example.test", "192.0.2.10", 25),
            SmtpHost("mx2.example.test", "192.0.2.11", 25),
            SmtpHost("mx2.example.test", "2001:db8::11", 25),
        ),
    )


async def test_zone_file_implicit_mx_null_mx_and_nxdomain(tmp_path: Path) -> None:
    resolver = router(config(tmp_path)).resolver
    with trio.fail_after(LIMIT_S):
        implicit = await resolver.resolve_mx("implicit.test")
        null = await resolver.resolve_mx("nullmx.test")
        missing = await resolver.resolve_mx("nowhere.test")
    assert implicit.implicit and implicit.hosts == (MxHost("implicit.test", 0, ("192.0.2.20",)),)
    assert null.failure is not None and (null.failure.code, null.failure.enhanced) == (556, "5.1.10")
    assert missing.failure is not None and missing.failure.permanent
    assert "does not exist" in missing.failure.text


async def test_zone_file_bounces_a_domain_it_does_not_have(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        result = await router(config(tmp_path)).route("a@nowhere.test")
    assert isinstance(result, PermanentFailure) and result.code == 550


async def test_zone_file_reverse_names_and_dns_lists(tmp_path: Path) -> None:
    resolver = router(config(tmp_path)).resolver
    with trio.fail_after(LIMIT_S):
        confirmed = await resolver.reverse_name("127.0.0.2")
        unconfirmed = await resolver.reverse_name("127.0.0.7")
        none = await resolver.reverse_name("127.0.0.9")
        listed = await resolver.dns_list("2.0.0.127.bl.test")
        wild = await resolver.dns_list("1.2.3.4.wild.bl.test")
        clean = await resolver.dns_list("3.0.0.127.bl.test")
    assert (confirmed.status, confirmed.name) == ("ok", "fcrdns.example.test")
    assert (unconfirmed.status, unconfirmed.ptr) == ("no", "mx2.example.test")
    assert none.status == "no"
    assert listed.listed and listed.addresses == ("127.0.0.2",)
    assert listed.text == "listed: see https://bl.test/"
    assert wild.listed and wild.addresses == ("127.0.0.4",)
    assert not clean.listed and not clean.error


async def test_zone_file_dnsbl_refuses_a_listed_client(tmp_path: Path) -> None:
    from meta1py.rpc.messages import SmarClientCheckRequest

    cfg = config(tmp_path, extra="delay_checks = no; dnsbl { zone = bl.test; }")
    service = SmarService(cfg, router(cfg))
    req = SmarClientCheckRequest(
        stage="connect",
        client_address="127.0.0.2",
        service="",
        helo="",
        sender=None,
        authenticated=None,
        cert_subject="",
        cert_issuer="",
        lookup_name=True,
    )
    with trio.fail_after(LIMIT_S):
        reply = await service.check_client(req)
    assert reply.action == "reject" and reply.reply.code == 554
    assert "listed: see https://bl.test/" in reply.reply.text
    assert reply.client_name == "fcrdns.example.test"


async def test_without_zone_file_every_remote_domain_is_its_own_destination(tmp_path: Path) -> None:
    cfg = config(tmp_path, zone=None)
    r = router(cfg)
    assert isinstance(r.resolver.backend, NoDnsBackend)
    with trio.fail_after(LIMIT_S):
        remote = await r.route("bob@Anything.Example")
        local = await r.route("alice@local.test")
        service_route = await SmarService(cfg, r).route("carol@other.example")
        name = await r.resolver.reverse_name("127.0.0.1")
        listed = await r.resolver.dns_list("1.0.0.127.zen.spamhaus.org")
    assert remote == Delivery(
        "smtp",
        "smtp:anything.example",
        "bob@anything.example",
        hosts=(SmtpHost("anything.example", SYNTHETIC_ADDRESS, 25),),
    )
    assert local == Delivery(
        "maildir", "maildir", "alice@local.test", maildir=tmp_path / "mail/local.test/alice"
    )
    assert service_route.status == "ok" and service_route.destination == "smtp:other.example"
    assert [h.address for h in service_route.hosts] == [SYNTHETIC_ADDRESS]
    assert name.status == "no" and not listed.listed and not listed.error
    assert r.resolver.queries_sent == 2  # answered NXDOMAIN at once, nothing sent


async def test_without_test_mode_the_zone_file_is_not_used(tmp_path: Path) -> None:
    cfg = parse_config(f'queue_directory = "{tmp_path}"; test_mode {{ zone_file = "{ZONE}"; }}')
    resolver = Resolver.from_config(cfg.smar, cfg.smtpc, cfg.test_mode)
    assert not isinstance(resolver.backend, ZoneBackend | NoDnsBackend)


def test_bad_zone_file_is_refused_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zone"
    bad.write_text("$ORIGIN example.test.\n@ MX 10 mx1\nmx1 FOO 192.0.2.1\n")
    cfg = config(tmp_path, zone=bad)
    with pytest.raises(ZoneFileError, match=r"bad.zone:3: unknown rdatatype 'FOO'"):
        Resolver.from_config(cfg.smar, cfg.smtpc, cfg.test_mode)
