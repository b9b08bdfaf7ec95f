"""``meta1 grey list|remove``: the greylisting database from the command line."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from meta1py.cli import main as meta1
from meta1py.smar import greycmd
from meta1py.smar.greycmd import main
from meta1py.smar.greylist import Greylist, GreyPolicy

POLICY = GreyPolicy(delay_s=60)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "meta1.conf"
    path.write_text(
        f"queue_directory = {tmp_path / 'q'};\nsmar {{ greylisting {{ enable = yes; delay = 1m; }} }}\n"
    )
    (tmp_path / "q" / "smar").mkdir(parents=True)  # mcp and meta1 setup make it
    return path


@pytest.fixture
def database(conf: Path) -> Path:
    """Two networks: 192.0.2.0/24 passed (whitelisted), 2001:db8::/64 still deferred."""
    path = conf.parent / "q" / "smar" / "greylist.db"
    now = [time.time() - 120]
    with Greylist(path, POLICY, clock=lambda: now[0]) as store:
        store.check("192.0.2.7", "alice@example.org", "bob@example.net")
        store.check("2001:db8::1", "", "postmaster@example.net")
        now[0] += 61
        store.check("192.0.2.8", "alice@example.org", "bob@example.net")
    return path


def test_list_prints_aligned_triplets_and_networks(
    conf: Path, database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-f", str(conf), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert header.split() == [
        "NETWORK",
        "SENDER",
        "RECIPIENT",
        "FIRST",
        "SEEN",
        "LAST",
        "SEEN",
        "ATTEMPTS",
        "STATE",
    ]
    rows = lines[1:3]
    assert rows[0].split()[:3] == ["192.0.2.0/24", "alice@example.org", "bob@example.net"]
    assert rows[0].split()[-2:] == ["2", "passed"]
    assert rows[1].split()[:3] == ["2001:db8::/64", "<>", "postmaster@example.net"]
    assert rows[1].split()[-2:] == ["1", "deferred"]
    # Aligned: every column starts where its header does.
    for column in ("SENDER", "RECIPIENT", "FIRST SEEN", "STATE"):
        at = header.index(column)
        assert all(row[at - 1] == " " and row[at] != " " for row in rows), column
    assert lines[3] == ""
    assert lines[4].split()[:2] == ["WHITELISTED", "NETWORK"] and lines[5].startswith("192.0.2.0/24 ")
    assert len(lines) == 6


def test_list_json(conf: Path, database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "-f", str(conf)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(t["network"], t["sender"], t["state"], t["attempts"]) for t in data["triplets"]] == [
        ("192.0.2.0/24", "alice@example.org", "passed", 2),
        ("2001:db8::/64", "<>", "deferred", 1),
    ]
    assert set(data["triplets"][0]) == {
        "network", "sender", "recipient", "first_seen", "last_seen", "attempts", "state", "expires",
    }  # fmt: skip
    [network] = data["networks"]
    assert network["network"] == "192.0.2.0/24" and isinstance(network["expires"], int)
    assert network["expires"] > time.time() + 34 * 86400


def test_list_without_a_database_creates_nothing(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(conf), "list"]) == 0
    assert capsys.readouterr().out == "no triplets\n\nno whitelisted networks\n"
    assert list((conf.parent / "q" / "smar").iterdir()) == []


def test_remove_and_its_exit_statuses(conf: Path, database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(conf), "remove", "2001:db8::5", "--from", "<>"]) == 0
    assert capsys.readouterr().out == "removed 1 triplet and 0 whitelisted networks\n"
    assert main(["-f", str(conf), "remove", "192.0.2.1", "--to", "nobody@example.net"]) == 1
    assert "nothing matched 192.0.2.1" in capsys.readouterr().err
    assert main(["-f", str(conf), "remove", "192.0.2.0/24"]) == 0
    assert capsys.readouterr().out == "removed 1 triplet and 1 whitelisted network\n"
    with Greylist(database, readonly=True) as store:
        assert store.entries().networks == () and store.entries().triplets == ()
    assert main(["-f", str(conf), "remove", "mail.example.com"]) == 64
    assert "not an IP address or network" in capsys.readouterr().err


def test_usage_and_help(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 64
    assert main(["-f", str(conf), "remove"]) == 64
    assert main(["-h"]) == 0
    assert main(["list", "-h"]) == 0
    capsys.readouterr()
    # Registered with the dispatcher by module name (shared code imports no process package).
    assert meta1(["grey", "-f", str(conf), "list"]) == 0
    assert "no triplets" in capsys.readouterr().out


def test_a_locked_database_exits_75(
    conf: Path, database: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(greycmd, "CLI_BUSY_TIMEOUT_S", 0.05)
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert main(["-f", str(conf), "remove", "192.0.2.1"]) == 75
        assert "locked" in capsys.readouterr().err
        # WAL: readers are not held up by a writer.
        assert main(["-f", str(conf), "list"]) == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_corrupt_database_exits_74(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conf.parent / "q" / "smar" / "greylist.db").write_bytes(b"\x00garbage" * 1000)
    assert main(["-f", str(conf), "list"]) == 74
    err = capsys.readouterr().err
    assert "greylist.db" in err and "not a database" in err
    assert main(["-f", str(conf), "remove", "192.0.2.1"]) == 74


def test_a_bad_configuration_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("smar {\n  greylisting { ipv6_netmask = 129; }\n}\n")
    assert main(["-f", str(bad), "list"]) == 78
    assert f"{bad}:2:32: ipv6_netmask: 129 is out of range" in capsys.readouterr().err


def test_greylisting_off_is_noted_not_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "meta1.conf"
    conf.write_text(f"queue_directory = {tmp_path / 'q'};\n")
    assert main(["-f", str(conf), "list"]) == 0
    assert "greylisting is off" in capsys.readouterr().err
