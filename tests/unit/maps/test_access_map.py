"""The access map: every tag, every strip step, IPv4 and IPv6, QUICK and CONT, bad lines."""

from __future__ import annotations

import pytest

from meta1py.maps.access import AccessResult, Protected, keys_for, parse_access, parse_result
from meta1py.maps.errors import BrokenEntry, MapErrors

ACCESS = """\
# clients
cltaddr:192.0.2.7                 REJECT
cltaddr:10.1.2.                   RELAY
cltaddr:10.                       TEMPFAIL
cltaddr:172.16.0.0/16             OK
cltaddr:2001:db8::1               QUICK:REJECT
cltaddr:2001:db8:0:0:             RELAY
cltaddr:2001:db9::/32             OK
cltname:host.example.net          OK
cltname:.dialup.example.net       ERROR:5.7.1 no mail from dial-up hosts
cltname:.example.net              CONT
cltresolve:no                     ERROR:450 4.7.25 no reverse DNS
ehlo:localhost                    REJECT
# senders and recipients
from:<>                           OK
from:spammer@example.org          REJECT
from:news+list@example.org        DISCARD
from:postmaster@                  QUICK:OK
from:example.org                  CONT
from:.example.com                 TEMPFAIL
to:abuse@                         QUICK:OK
to:partner.example                RELAY
protectedrcpt:staff@example.test  from:.example.test cltaddr:10.9.
certissuer:"CN=Example CA,O=Example"  RELAY
certsubject:CN=relay.partner.example  RELAY
"""

ACCESS_MAP = parse_access(ACCESS, "access")

# (tag, subject, the key that matches, its result) -- None: no entry.
CASES = [
    # cltaddr: the address, then its networks, most specific first.
    ("cltaddr", "192.0.2.7", "cltaddr:192.0.2.7", "REJECT"),
    ("cltaddr", "192.0.2.8", None, None),
    ("cltaddr", "10.1.2.3", "cltaddr:10.1.2.", "RELAY"),
    ("cltaddr", "10.1.3.3", "cltaddr:10.", "TEMPFAIL"),
    ("cltaddr", "172.16.9.9", "cltaddr:172.16.", "OK"),
    ("cltaddr", "::ffff:10.1.2.9", "cltaddr:10.1.2.", "RELAY"),  # IPv4-mapped: looked up as IPv4
    # IPv6: full form, stripped a group at a time.
    ("cltaddr", "2001:db8::1", "cltaddr:2001:0db8:0000:0000:0000:0000:0000:0001", "QUICK:REJECT"),
    ("cltaddr", "2001:db8::2", "cltaddr:2001:0db8:0000:0000:", "RELAY"),
    ("cltaddr", "2001:db8:0:1::2", None, None),
    ("cltaddr", "2001:db9:ffff::5", "cltaddr:2001:0db9:", "OK"),
    ("cltaddr", "unknown", None, None),
    # cltname and ehlo: the name, then its parent domains.
    ("cltname", "host.example.net", "cltname:host.example.net", "OK"),
    (
        "cltname",
        "PPP-1.Dialup.Example.Net.",
        "cltname:.dialup.example.net",
        "ERROR:550 5.7.1 no mail from dial-up hosts",
    ),
    ("cltname", "mail.example.net", "cltname:.example.net", "CONT"),
    ("cltname", "example.net", None, None),  # ".example.net" is for subdomains only
    ("ehlo", "LOCALHOST", "ehlo:localhost", "REJECT"),
    ("cltresolve", "no", "cltresolve:no", "ERROR:450 4.7.25 no reverse DNS"),
    ("cltresolve", "ok", None, None),
    # from and to: the address, without +detail, user@, the domain and its parents.
    ("from", "", "from:<>", "OK"),
    ("from", "Spammer@Example.ORG", "from:spammer@example.org", "REJECT"),
    ("from", "news+list@example.org", "from:news+list@example.org", "DISCARD"),
    ("from", "spammer+x@example.org", "from:spammer@example.org", "REJECT"),
    ("from", "postmaster+x@anywhere.test", "from:postmaster@", "QUICK:OK"),
    ("from", "alice@example.org", "from:example.org", "CONT"),
    ("from", "bob@mail.example.com", "from:.example.com", "TEMPFAIL"),
    ("from", "bob@example.com", None, None),
    ("to", "abuse@partner.example", "to:abuse@", "QUICK:OK"),
    ("to", "sales@partner.example", "to:partner.example", "RELAY"),
    ("certissuer", "CN=Example CA,O=Example", "certissuer:CN=Example CA,O=Example", "RELAY"),
    ("certsubject", "CN=other", None, None),
]


@pytest.mark.parametrize(("tag", "subject", "key", "result"), CASES)
def test_lookup_order(tag: str, subject: str, key: str | None, result: str | None) -> None:
    match = ACCESS_MAP.lookup(tag, subject)
    if key is None:
        assert match is None
        return
    assert match is not None and match.key == key
    assert str(match.value) == result


def test_key_order_lists_every_strip_step() -> None:
    v4 = keys_for("cltaddr", "10.1.2.3")
    assert v4 == ["cltaddr:10.1.2.3", "cltaddr:10.1.2.", "cltaddr:10.1.", "cltaddr:10."]
    v6 = keys_for("cltaddr", "2001:db8::1")
    assert v6[0] == "cltaddr:2001:0db8:0000:0000:0000:0000:0000:0001"
    assert v6[1:] == [
        "cltaddr:2001:0db8:0000:0000:0000:0000:0000:",
        "cltaddr:2001:0db8:0000:0000:0000:0000:",
        "cltaddr:2001:0db8:0000:0000:0000:",
        "cltaddr:2001:0db8:0000:0000:",
        "cltaddr:2001:0db8:0000:",
        "cltaddr:2001:0db8:",
        "cltaddr:2001:",
    ]
    assert keys_for("to", "a+b@x.example.org") == [
        "to:a+b@x.example.org",
        "to:a@x.example.org",
        "to:a@",
        "to:x.example.org",
        "to:.example.org",
        "to:.org",
    ]
    assert keys_for("cltname", "a.b.example.test") == [
        "cltname:a.b.example.test",
        "cltname:.b.example.test",
        "cltname:.example.test",
        "cltname:.test",
    ]


def test_results() -> None:
    assert parse_result("REJECT") == AccessResult("reject", False, 550, "5.7.1")
    assert parse_result("quick:tempfail") == AccessResult("tempfail", True, 450, "4.7.1")
    assert parse_result("ERROR:4.7.1 slow down") == AccessResult("error", False, 450, "4.7.1", "slow down")
    assert parse_result("ERROR:554 5.7.1 go away") == AccessResult("error", False, 554, "5.7.1", "go away")
    assert parse_result("QUICK:RELAY").quick and parse_result("CONT") == AccessResult("cont")
    for bad, why in [
        ("QUICK:CONT", "decides nothing"),
        ("ERROR:250 2.0.0 x", "expected ERROR"),
        ("ERROR:450 5.7.1 x", "does not match"),
        ("MAYBE", "unknown result"),
        ("ERROR", "ERROR needs"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_result(bad)


def test_protected_recipients_list_who_may_mail_them() -> None:
    match = ACCESS_MAP.lookup("protectedrcpt", "Staff+x@example.test")
    assert match is not None and match.key == "protectedrcpt:staff@example.test"
    assert match.value == Protected(("from:.example.test", "cltaddr:10.9."))


BAD = """\
cltaddr:10.1.2.3/24   OK
cltaddr:10.1.0.0/20   OK
cltaddr:999.1.        OK
bogus:thing           OK
from:ok@example.org   MAYBE
to:<>                 OK
cltname:host..example OK
from:ok@example.org   OK
cltresolve:perhaps    OK
protectedrcpt:a@b.test  to:x@y
cltaddr:192.0.2.1     REJECT
"""


def test_every_bad_line_is_reported_and_the_good_ones_kept() -> None:
    with pytest.raises(MapErrors) as info:
        parse_access(BAD, "access")
    lines = [e.line for e in info.value.errors]
    assert lines == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    tolerant = parse_access(BAD, "access", strict=False)
    assert [e.line for e in tolerant.errors] == lines
    assert "multiple of 8" in str(tolerant.errors[1])
    # The good line works; a bad result whose key is good defers that key; of two lines for one
    # key the first counts.
    good = tolerant.lookup("cltaddr", "192.0.2.1")
    assert good is not None and str(good.value) == "REJECT"
    broken = tolerant.lookup("from", "ok@example.org")
    assert broken is not None and isinstance(broken.value, BrokenEntry)
    assert "access:5: unknown result 'MAYBE'" in broken.value.text
    assert tolerant.lookup("cltaddr", "10.1.2.3") is None  # its line was refused as a whole
