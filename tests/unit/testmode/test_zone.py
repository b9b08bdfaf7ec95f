"""Test mode's fake DNS: the zone file as an authoritative server would answer it."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1py.testmode.zone import FakeZone, ZoneFileError, load_zone, parse_zone

ZONES = Path(__file__).parents[2] / "data" / "zones"


@pytest.fixture(scope="module")
def zone() -> FakeZone:
    return load_zone(ZONES / "test.zone")


def texts(zone: FakeZone, name: str, rdtype: str) -> list[str]:
    answer = zone.query(name, rdtype)
    assert answer.kind == "ok" and answer.rrset is not None, answer
    return sorted(r.to_text() for r in answer.rrset)


def test_mx_and_addresses(zone: FakeZone) -> None:
    assert texts(zone, "example.test", "MX") == ["10 mx1.example.test.", "20 mx2.example.test."]
    assert texts(zone, "MX2.Example.Test.", "A") == ["192.0.2.11"]
    assert texts(zone, "mx2.example.test", "AAAA") == ["2001:db8::11"]
    assert texts(zone, "example.test", "TXT") == ['"v=spf1 -all"']


def test_names_are_case_insensitive_and_absolute(zone: FakeZone) -> None:
    assert zone.query("EXAMPLE.TEST.", "MX").kind == "ok"
    assert zone.query("example.test", "mx").kind == "ok"


def test_nxdomain_and_nodata_differ(zone: FakeZone) -> None:
    missing = zone.query("nobody.example.test", "A")
    assert missing.kind == "nxdomain"
    # RFC 2308 §5: min(SOA TTL, MINIMUM) of the zone's SOA.
    assert missing.negative_ttl_s == 60.0
    assert zone.query("mx1.example.test", "AAAA").kind == "nodata"
    # An empty non-terminal exists (RFC 8020): it has names below it.
    assert zone.query("empty.example.test", "A").kind == "nodata"
    assert zone.query("implicit.test", "MX").kind == "nodata"


def test_names_outside_every_origin_do_not_exist(zone: FakeZone) -> None:
    answer = zone.query("elsewhere.invalid", "MX")
    assert answer.kind == "nxdomain" and answer.negative_ttl_s is None


def test_cname_is_followed(zone: FakeZone) -> None:
    answer = zone.query("www.example.test", "A")
    assert answer.kind == "ok" and answer.rrset is not None
    assert [r.to_text() for r in answer.rrset] == ["192.0.2.10"]
    assert texts(zone, "www.example.test", "CNAME") == ["mx1.example.test."]


def test_cname_loop_is_a_failure() -> None:
    zone = parse_zone("$ORIGIN loop.test.\na CNAME b\nb CNAME a\n", "loop.zone")
    answer = zone.query("a.loop.test", "A")
    assert answer.kind == "servfail" and "CNAME chain" in answer.detail


def test_reverse_names_and_dns_lists(zone: FakeZone) -> None:
    assert texts(zone, "2.0.0.127.in-addr.arpa", "PTR") == ["fcrdns.example.test."]
    assert texts(zone, "2.0.0.127.bl.test", "A") == ["127.0.0.2"]
    assert texts(zone, "2.0.0.127.bl.test", "TXT") == ['"listed: see https://bl.test/"']
    assert zone.query("3.0.0.127.bl.test", "A").kind == "nxdomain"


def test_wildcard_answers_below_its_encloser(zone: FakeZone) -> None:
    answer = zone.query("9.9.9.9.wild.bl.test", "A")
    assert answer.kind == "ok" and answer.rrset is not None
    assert answer.rrset.name.to_text() == "9.9.9.9.wild.bl.test."
    assert [r.to_text() for r in answer.rrset] == ["127.0.0.4"]
    assert zone.query("9.wild.bl.test", "TXT").kind == "nodata"


def test_records_without_ttl_get_the_default() -> None:
    zone = parse_zone("$ORIGIN t.test.\n@ MX 10 mx\nmx A 192.0.2.1\n", "t.zone")
    answer = zone.query("t.test", "MX")
    assert answer.rrset is not None and answer.rrset.ttl == 3600
    assert zone.records == 2


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("unknown-type.zone", "unknown-type.zone:3: unknown rdatatype 'FOO'"),
        ("include.zone", "include.zone:2: zone file directive '$INCLUDE' is not allowed"),
        ("cname-and-data.zone", "cname-and-data.zone:3: www.example.test. has a CNAME and other records"),
    ],
)
def test_bad_zone_files_say_where_and_why(name: str, error: str) -> None:
    with pytest.raises(ZoneFileError) as info:
        load_zone(ZONES / "bad" / name)
    assert str(info.value).startswith(f"{ZONES / 'bad' / name}:".rsplit(name, 1)[0])
    assert error in str(info.value)


def test_missing_and_empty_files() -> None:
    with pytest.raises(ZoneFileError, match="No such file or directory"):
        load_zone(ZONES / "missing.zone")
    with pytest.raises(ZoneFileError, match=r"empty\.zone: no records"):
        parse_zone("; nothing\n", "empty.zone")
