"""``meta1 map query``: the value each key finds, with the MTA's key order (postmap -q)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1py.cli.map import main
from meta1py.maps.routes import parse_route, route_text

ROUTES = """\
example.net       smtp:[192.0.2.10]:2525
.example.net      smtp:relay.example.net
store.test        lmtp:unix:/run/dovecot/lmtp
other.test        lmtp:inet:[::1]:24
old.test          error:5.1.1 this domain is gone
bad.test          smtp:[unclosed
*                 smtp:
"""


def test_routes_follow_the_mtas_key_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "routes").write_text(ROUTES)
    keys = ["a@example.net", "mx.example.net", "elsewhere.org"]
    rc = main(["query", "-v", f"routes:{tmp_path / 'routes'}", *keys])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.splitlines() == [
        "a@example.net\tsmtp:[192.0.2.10]:2525  (matched example.net)",
        "mx.example.net\tsmtp:relay.example.net  (matched .example.net)",
        "elsewhere.org\tsmtp:  (matched *)",
    ]
    # The bad line is reported, as the MTA logs it.
    assert f"{tmp_path / 'routes'}:6: missing ']'" in err


def test_a_broken_entry_is_a_temporary_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "routes").write_text(ROUTES)
    assert main(["query", f"routes:{tmp_path / 'routes'}", "bad.test"]) == 75
    out, err = capsys.readouterr()
    assert out == "" and "bad.test: map entry unusable" in err and "deferred" in err


def test_aliases_from_the_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "aliases").write_text("postmaster: alice\nalice: alice, bob@remote.example\n")
    conf = tmp_path / "meta1.conf"
    conf.write_text(f"smar {{ aliases = {tmp_path / 'aliases'}; }}\n")
    # One key: the value alone; without its +detail, as smar expands it.
    assert main(["query", "-f", str(conf), "aliases", "alice+lists@localhost"]) == 0
    assert capsys.readouterr().out == "alice, bob@remote.example\n"
    # Not found: exit 1 and nothing printed, as postmap -q.
    assert main(["query", "-f", str(conf), "aliases", "nobody"]) == 1
    assert capsys.readouterr().out == ""


def test_tls_policy_nexthop_and_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p").write_text(
        "example.com verify; hostnames=mx1.example.com\n[smtp.provider.net]:587 encrypt\n* may\n"
    )
    keys = ["example.com", "[smtp.provider.net]:587", "x.org"]
    assert main(["query", f"tls_policy:{tmp_path / 'p'}", *keys]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "example.com\tverify; hostnames=mx1.example.com",
        "[smtp.provider.net]:587\tencrypt",
        "x.org\tmay",
    ]


def test_usage_and_unconfigured_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "nosuchmap", "x"]) == 64
    conf = tmp_path / "meta1.conf"
    conf.write_text("hostname = mx.example.test;\n")
    assert main(["query", "-f", str(conf), "routes", "x"]) == 78
    assert "no routes file is configured" in capsys.readouterr().err


@pytest.mark.parametrize("line", [r.split(None, 1)[1] for r in ROUTES.splitlines() if "unclosed" not in r])
def test_printed_routes_read_back_the_same(line: str) -> None:
    route = parse_route(line)
    assert parse_route(route_text(route)) == route


def test_access_keys_are_tag_and_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "access").write_text("cltaddr:10.1.2.  RELAY\nfrom:postmaster@  QUICK:OK\n")
    keys = ["cltaddr:10.1.2.3", "from:postmaster+x@example.org"]
    assert main(["query", "-v", f"access:{tmp_path / 'access'}", *keys]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "cltaddr:10.1.2.3\tRELAY  (matched cltaddr:10.1.2.)",
        "from:postmaster+x@example.org\tQUICK:OK  (matched from:postmaster@)",
    ]
    assert main(["query", f"access:{tmp_path / 'access'}", "cltaddr:10.2.0.1"]) == 1
    assert main(["query", f"access:{tmp_path / 'access'}", "nosuchtag:x"]) == 1
    assert "access keys are TAG:SUBJECT" in capsys.readouterr().err
