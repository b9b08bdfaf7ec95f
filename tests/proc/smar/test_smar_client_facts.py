"""smar's client facts against a real knotd: the forward-confirmed name, DNS list answers, and the
service's decisions built on them (issue 19). A nameserver that never answers is a UDP socket that
the test binds and never reads."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from meta1py.conf import parse_config
from meta1py.rpc.messages import SmarClientCheckRequest, SmarRecipientCheckRequest
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Router
from meta1py.smar.service import SmarService

LIMIT_S = 30.0


@pytest.fixture
def silent_nameserver() -> Iterator[tuple[str, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()


async def test_forward_confirmed_names(
    dns_server: tuple[str, int], silent_nameserver: tuple[str, int]
) -> None:
    resolver = Resolver([dns_server], timeout_s=2.0)
    with trio.fail_after(LIMIT_S):
        confirmed = await resolver.reverse_name("127.0.0.2")
        liar = await resolver.reverse_name("127.0.0.7")  # mx2.mx.test is 127.0.0.3
        nothing = await resolver.reverse_name("127.0.0.99")
        mapped = await resolver.reverse_name("::ffff:127.0.0.2")
        timed_out = await Resolver([silent_nameserver], timeout_s=0.5).reverse_name("127.0.0.2")
    assert (confirmed.status, confirmed.name) == ("ok", "mx1.mx.test")
    assert (liar.status, liar.name, liar.ptr) == ("no", "", "mx2.mx.test")
    assert (nothing.status, nothing.name) == ("no", "")
    assert mapped.name == "mx1.mx.test"
    assert timed_out.status == "temp"


async def test_dns_list_answers(dns_server: tuple[str, int], silent_nameserver: tuple[str, int]) -> None:
    resolver = Resolver([dns_server], timeout_s=2.0)
    with trio.fail_after(LIMIT_S):
        listed = await resolver.dns_list("2.0.0.127.bl.test")
        clean = await resolver.dns_list("9.0.0.127.bl.test")
        garbage = await resolver.dns_list("3.0.0.127.bl.test")
        refused = await resolver.dns_list("2.0.0.127.unserved.test")
        timed_out = await Resolver([silent_nameserver], timeout_s=0.5).dns_list("2.0.0.127.bl.test")
    assert (listed.listed, listed.addresses, listed.text) == (
        True,
        ("127.0.0.2",),
        "listed: see https://bl.test/",
    )
    assert (clean.listed, clean.error) == (False, "")
    assert not garbage.listed and "192.0.2.1" in garbage.error
    assert not refused.listed and refused.error
    assert not timed_out.listed and timed_out.error


def _service(dns: tuple[str, int], extra: str = "") -> SmarService:
    ip, port = dns
    cfg = parse_config(
        "local_domains = { example.test };\n"
        f"smar {{ nameserver = {{ {ip}:{port} }}; DNS_timeout = 2s; dnsbl {{ zone = bl.test; }} {extra} }}\n"
        "smtps { relay_clients = { 192.0.2.250 }; }\n"
    )
    return SmarService(cfg, Router(cfg, Resolver.from_config(cfg.smar, cfg.smtpc)))


def _rcpt(client: str, recipient: str = "bob@example.test") -> SmarRecipientCheckRequest:
    return SmarRecipientCheckRequest(
        client_address=client, service="", authenticated=None, sender="a@example.net", recipient=recipient
    )


async def test_the_service_refuses_listed_clients_and_names_the_others(dns_server: tuple[str, int]) -> None:
    service = _service(dns_server)
    with trio.fail_after(LIMIT_S):
        listed = await service.check(_rcpt("127.0.0.2"))
        garbage = await service.check(_rcpt("127.0.0.3"))
        clean = await service.check(_rcpt("127.0.0.9"))
        hello = await service.check_client(SmarClientCheckRequest("connect", "127.0.0.2", ""))
    assert (listed.action, listed.reply.code) == ("reject", 554)
    assert listed.reply.text.endswith("blocked using bl.test; listed: see https://bl.test/")
    assert (garbage.action, garbage.reply.code, garbage.reply.enhanced) == ("tempfail", 451, "4.4.3")
    assert clean.action == "accept"
    # delay_checks (the default): the connect check only names the client.
    assert (hello.action, hello.client_name, hello.client_resolve) == ("accept", "mx1.mx.test", "ok")


async def test_without_delay_checks_the_connect_stage_decides(dns_server: tuple[str, int]) -> None:
    service = _service(dns_server, "delay_checks = no;")
    with trio.fail_after(LIMIT_S):
        listed = await service.check_client(SmarClientCheckRequest("connect", "127.0.0.2", ""))
        clean = await service.check_client(SmarClientCheckRequest("connect", "127.0.0.9", ""))
    assert (listed.action, listed.reply.code, listed.client_name) == ("reject", 554, "mx1.mx.test")
    assert (clean.action, clean.client_resolve) == ("accept", "no")
