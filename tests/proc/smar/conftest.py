"""A real knotd serving the zones the smar tests resolve against."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meta1py_testing.dns import knotd_path, running_dns_server

ZONES = {
    # Two MX hosts with different preferences; mx2 also has an IPv6 address.
    "mx.test": """
        @        MX 20 mx2
        @        MX 10 mx1
        mx1      A    127.0.0.2
        mx2      A    127.0.0.3
        mx2      AAAA ::1
    """,
    # Two hosts tie at 10, one backup at 20.
    "ties.test": """
        @        MX 10 a
        @        MX 10 b
        @        MX 20 c
        a        A  127.0.0.2
        b        A  127.0.0.3
        c        A  127.0.0.4
    """,
    # No MX: the domain's own addresses are used (implicit MX).
    "implicit.test": """
        @        A    127.0.0.5
        @        AAAA ::1
    """,
    # RFC 7505 null MX.
    "nullmx.test": """
        @        MX 0 .
    """,
    # Neither MX nor address at the apex (only SOA/NS).
    "empty.test": """
        www      A  127.0.0.6
    """,
    # The preferred MX host has no address; the second one does.
    "halfbroken.test": """
        @        MX 10 nowhere
        @        MX 20 mx1.mx.test.
    """,
    # Every MX host lacks an address.
    "noaddr.test": """
        @        MX 10 nowhere
    """,
    # Reverse DNS: 127.0.0.2 is mx1.mx.test (confirmed), 127.0.0.7 claims a name without that address.
    "0.0.127.in-addr.arpa": """
        2        PTR  mx1.mx.test.
        7        PTR  mx2.mx.test.
    """,
    # A DNS block list: 127.0.0.2 listed with a TXT record, 127.0.0.3 answered outside 127/8.
    "bl.test": """
        2.0.0.127  A    127.0.0.2
        2.0.0.127  TXT  "listed: see https://bl.test/"
        3.0.0.127  A    192.0.2.1
    """,
    # Hosts for relayhost / routes tests.
    "relay.test": """
        smarthost    A  127.0.0.9
        mxed         MX 5 smarthost
    """,
}


@pytest.fixture(scope="session")
def dns_server() -> Iterator[tuple[str, int]]:
    """``(ip, port)`` of a knotd serving :data:`ZONES` for the whole session."""
    if knotd_path() is None:
        pytest.skip("knotd not installed (Debian package 'knot'): real-DNS tests skipped")
    with running_dns_server(ZONES) as address:
        yield address
