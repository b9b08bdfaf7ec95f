"""Test mode's DNS with a real ``meta1 run`` (issue 21): a zone file, or no DNS at all.

As root the daemon runs in production mode (four worker users): smar reads the zone file after it
dropped privileges. No DNS server runs and ``smar { nameserver }`` names a loopback port where
nothing answers: every route below comes from the zone file, or from no lookup at all. The
captures are read through the control API (``GET /messages/wait``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py.pytest_plugin import Meta1
from meta1py_testing.daemon import Meta1Daemon, free_port

pytestmark = pytest.mark.e2e

ZONE = Path(__file__).parents[1] / "data" / "zones" / "test.zone"
SMAR = f"nameserver = {{ 127.0.0.1:{free_port()} }}; DNS_timeout = 2s;"
QMGR = "retry_min = 1s; retry_max = 2s;"


def _daemon(make_daemon: Callable[..., Meta1Daemon], zone: str | None) -> tuple[Meta1Daemon, Meta1]:
    api_port = free_port()
    zone_line = f"zone_file = {zone};" if zone else ""
    daemon = make_daemon(
        f"test_mode {{ enable = yes; listen = 127.0.0.1:{api_port}; {zone_line} }}",
        sections={"smar": SMAR, "qmgr": QMGR},
    )
    return daemon, Meta1(f"http://127.0.0.1:{api_port}", "127.0.0.1", daemon.port)


def _zone_copy(daemon: Meta1Daemon, text: str | None = None) -> Path:
    path = daemon.dir / "test.zone"
    if text is None:
        shutil.copyfile(ZONE, path)
    else:
        path.write_text(text)
    path.chmod(0o644)
    return path


def test_zone_file_routes_by_mx(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon, meta1 = _daemon(make_daemon, "../test.zone")
    _zone_copy(daemon)
    daemon.start()
    daemon.wait_for_log(r"TEST MODE: DNS answers from \S+test\.zone \(\d+ records\)")
    meta1.send("ann@example.test", "app@example.test", subject="by MX")
    mail = meta1.wait_for_message(to="ann@example.test", timeout=30)
    assert mail["destination"] == "smtp:example.test"
    assert mail["subject"] == "by MX" and mail["status"] == "delivered"
    # The zone's preferred MX host (10 mx1), not the domain itself.
    daemon.wait_for_log(r"delivered qid=\S+ to=ann@example\.test relay=mx1\.example\.test ")


def test_zone_file_bounces_a_domain_it_does_not_have(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon, meta1 = _daemon(make_daemon, "../test.zone")
    _zone_copy(daemon)
    daemon.start()
    meta1.send("bob@nowhere.test", "app@example.test", subject="lost")
    # NXDOMAIN is permanent: the sender gets a bounce, delivered by MX to example.test.
    bounce = meta1.wait_for_message(to="app@example.test", kind="bounce", timeout=30)
    assert bounce["destination"] == "smtp:example.test"
    assert "nowhere.test does not exist" in bounce["text"]


def test_without_zone_file_every_domain_is_its_own_destination(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    daemon, meta1 = _daemon(make_daemon, None)
    daemon.start()
    daemon.wait_for_log("TEST MODE: no DNS")
    meta1.send(["carol@anything.example", "dave@other.example"], "app@example.test")
    for address in ("carol@anything.example", "dave@other.example"):
        mail = meta1.wait_for_message(to=address, timeout=30)
        assert mail["destination"] == "smtp:" + address.partition("@")[2]
    daemon.wait_for_log(r"to=carol@anything\.example relay=anything\.example ")


def test_bad_zone_file_stops_the_start(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon, _meta1 = _daemon(make_daemon, "../test.zone")
    path = _zone_copy(daemon, "$ORIGIN example.test.\n@ MX 10 mx1\nmx1 FOO 192.0.2.1\n")
    daemon.start(wait_ready=False)
    assert daemon.wait() == 78
    log = daemon.log_text()
    assert f"zone_file {path}:3: unknown rdatatype 'FOO'" in log
    assert "meta1.conf:" in log  # located at the option that names the file
