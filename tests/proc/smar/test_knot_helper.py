"""meta1py_testing.dns: the knotd helper starts, answers, and stops by pid."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.query
import pytest

from meta1py_testing.dns import knotd_path, running_dns_server


def query(ip: str, port: int, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), ip, port=port, timeout=2)


def test_serves_zones_and_stops() -> None:
    if knotd_path() is None:
        pytest.skip("knotd not installed (Debian package 'knot')")
    zones = {"one.test": "@ MX 10 mx\nmx A 127.0.0.2\n", "Two.Test.": "www A 127.0.0.3\n"}
    with running_dns_server(zones, "127.0.0.1") as (ip, port):
        assert ip == "127.0.0.1" and port > 1024
        mx = query(ip, port, "one.test.", "MX")
        assert [r.to_text() for r in mx.answer[0]] == ["10 mx.one.test."]
        a = query(ip, port, "www.two.test.", "A")
        assert [r.to_text() for r in a.answer[0]] == ["127.0.0.3"]
    with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):
        query(ip, port, "one.test.", "MX")
