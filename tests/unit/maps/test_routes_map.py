"""Routes map: parsing, errors and lookup precedence (pure)."""

from __future__ import annotations

import pytest

from meta1py.maps import MapErrors
from meta1py.maps.routes import (
    ErrorRoute,
    LmtpRoute,
    MaildirRoute,
    SmtpRoute,
    parse_route,
    parse_routes,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("smtp:[10.0.0.5]:2525", SmtpRoute("10.0.0.5", 2525, False)),
        ("smtp:[relay.example.net]", SmtpRoute("relay.example.net", None, False)),
        ("smtp:[IPv6:::1]:25", SmtpRoute("::1", 25, False)),
        ("smtp:Example.NET", SmtpRoute("example.net", None, True)),
        ("smtp:example.net:2525", SmtpRoute("example.net", 2525, True)),
        ("smtp:", SmtpRoute(None, None, True)),
        ("SMTP", SmtpRoute(None, None, True)),
        ("lmtp:unix:/run/dovecot/lmtp", LmtpRoute(path="/run/dovecot/lmtp")),
        ("lmtp:inet:store.example:2424", LmtpRoute(host="store.example", port=2424)),
        ("lmtp:inet:store.example", LmtpRoute(host="store.example", port=24)),
        ("lmtp:inet:[::1]:24", LmtpRoute(host="::1", port=24)),
        ("maildir:", MaildirRoute()),
        ("error:5.1.1 user has moved", ErrorRoute(550, "5.1.1", "user has moved")),
        ("error:554 5.7.1 no # thanks", ErrorRoute(554, "5.7.1", "no # thanks")),
        ("error:4.3.2 try later", ErrorRoute(450, "4.3.2", "try later")),
        ("error:550 go away", ErrorRoute(550, "5.0.0", "go away")),
        ("error:", ErrorRoute(550, "5.0.0", "delivery not allowed")),
    ],
)
def test_parse_route(value: str, expected: object) -> None:
    assert parse_route(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("smtp:[10.0.0.5", "missing ']'"),
        ("smtp:[10.0.0.5]:99999", "bad port"),
        ("smtp:[10.0.0.5]x", "unexpected"),
        ("smtp:bad_host!", "bad host name"),
        ("lmtp:unix:relative/path", "absolute socket path"),
        ("lmtp:tcp:x:1", "lmtp needs"),
        ("maildir:/somewhere", "takes no nexthop"),
        ("error:450 5.1.1 mixed", "does not match"),
        ("uucp:host", "unknown transport 'uucp'"),
        ("nonsense", "expected 'transport:nexthop'"),
    ],
)
def test_parse_route_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_route(value)


ROUTES = """\
# gateway routes
example.com          smtp:[10.0.0.5]:2525
.example.com         smtp:mx.example.net
.deep.example.com    lmtp:unix:/run/lmtp
gone.example.org     error:5.1.1 gone for good
*                    smtp:[smarthost.example.net]
"""


def test_lookup_precedence() -> None:
    routes = parse_routes(ROUTES, "routes")
    assert len(routes) == 5
    # exact beats subdomain; the parent entry does not match the domain itself
    assert routes.lookup("Example.COM.") == SmtpRoute("10.0.0.5", 2525, False)
    assert routes.lookup("a.example.com") == SmtpRoute("mx.example.net", None, True)
    # most specific parent wins, at any depth
    assert routes.lookup("x.y.deep.example.com") == LmtpRoute(path="/run/lmtp")
    assert routes.lookup("deep.example.com") == SmtpRoute("mx.example.net", None, True)
    assert routes.lookup("gone.example.org") == ErrorRoute(550, "5.1.1", "gone for good")
    # default
    assert routes.lookup("other.org") == SmtpRoute("smarthost.example.net", None, False)
    assert routes.lookup("other.org", use_default=False) is None
    assert routes.lookup("[192.0.2.1]") == SmtpRoute("smarthost.example.net", None, False)


def test_no_default_means_none() -> None:
    routes = parse_routes("a.test smtp:\n")
    assert routes.lookup("b.test") is None
    assert routes.default is None


def test_domain_literal_key() -> None:
    routes = parse_routes("[192.0.2.1] error:5.7.1 no literals\n")
    assert routes.lookup("[192.0.2.1]") == ErrorRoute(550, "5.7.1", "no literals")


def test_all_errors_with_path_and_line() -> None:
    text = """\
ok.test        smtp:
justakey
bad..domain    smtp:
ok.test        maildir:
x.test         lmtp:unix:rel
  y.test       smtp:
.[1.2.3.4]     smtp:
"""
    with pytest.raises(MapErrors) as info:
        parse_routes(text, "/etc/meta1/routes")
    assert [str(e) for e in info.value.errors] == [
        "/etc/meta1/routes:2: expected 'domain transport:nexthop', got 'justakey'",
        "/etc/meta1/routes:3: bad domain 'bad..domain'",
        "/etc/meta1/routes:4: duplicate key 'ok.test' (first on line 1)",
        "/etc/meta1/routes:5: lmtp:unix: needs an absolute socket path, got 'rel'",
        "/etc/meta1/routes:6: continuation lines are not allowed in routes",
        "/etc/meta1/routes:7: bad domain '.[1.2.3.4]'",
    ]
