"""The tls_policy map: parsing, lookup order, and how smtpc picks requirements per recipient."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1py.conf import parse_config
from meta1py.maps import BrokenEntry, MapErrors
from meta1py.maps.tls_policy import destination_nexthop, parse_tls_policy
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py.tls.requirements import TlsRequirements
from meta1py.worker import WorkerConfigError

FP = "AB" * 32
POLICY = f"""\
# key                  requirements
example.com            verify; hostnames=mx.example.com
.example.com           encrypt
deep.sub.example.com   none
bank.example           cert_fps={FP}
[smtp.example.net]:587 verify
[192.0.2.7]            encrypt
*                      may
"""


def test_lookup_order() -> None:
    policy = parse_tls_policy(POLICY, "tls_policy")
    assert policy.lookup(None, "example.com") == TlsRequirements("verify", hostnames=("mx.example.com",))
    assert policy.lookup(None, "EXAMPLE.com.") == policy.lookup(None, "example.com")
    assert policy.lookup(None, "a.b.example.com").level == "encrypt"  # type: ignore[union-attr]
    assert policy.lookup(None, "deep.sub.example.com").level == "none"  # type: ignore[union-attr]
    bank = policy.lookup(None, "bank.example")
    assert bank is not None and bank.level == "encrypt" and bank.cert_fps == (":".join(["AB"] * 32),)
    assert policy.lookup(None, "elsewhere.org") == TlsRequirements("may")
    # A bracketed nexthop is looked up first, with its port, then without.
    assert policy.lookup("[smtp.example.net]:587", "example.com").level == "verify"  # type: ignore[union-attr]
    assert policy.lookup("[192.0.2.7]:25", "example.com").level == "encrypt"  # type: ignore[union-attr]
    assert policy.lookup("[192.0.2.8]:25", "bank.example") == bank


def test_no_default_entry_means_none() -> None:
    policy = parse_tls_policy("example.com encrypt\n")
    assert policy.lookup(None, "example.org") is None


def test_every_error_is_reported_with_its_line() -> None:
    text = "example.com\nexample.org bogus\nexample.com encrypt\nexample.com verify\n* may\n* none\n"
    with pytest.raises(MapErrors) as info:
        parse_tls_policy(text, "p")
    lines = [(e.line, e.message) for e in info.value.errors]
    # Line 3 repeats the key of line 1 (whose value is bad): a duplicate too.
    assert [n for n, _ in lines] == [1, 2, 3, 4, 6]
    assert "has no tls_requirements" in lines[0][1]
    assert "unknown item 'bogus'" in lines[1][1]
    assert all("duplicate" in message for _n, message in lines[2:])


@pytest.mark.parametrize(
    ("destination", "nexthop"),
    [
        ("smtp:[127.0.0.1]:2525", "[127.0.0.1]:2525"),
        ("smtp:example.com", None),
        ("smtp:example.com:26", None),
    ],
)
def test_destination_nexthop(destination: str, nexthop: str | None) -> None:
    assert destination_nexthop(destination) == nexthop


def test_agents_use_policy_then_option(tmp_path: Path) -> None:
    (tmp_path / "tls_policy").write_text(POLICY.replace("*                      may\n", ""))
    cfg = parse_config(
        f"queue_directory = {tmp_path};\nsmtpc {{ tls_requirements = encrypt; tls_policy = tls_policy; }}\n"
    )
    agents = DeliveryAgents(cfg)
    assert agents.requirements_for("smtp:example.com", "u@example.com").level == "verify"
    assert agents.requirements_for("smtp:example.org", "u@example.org").level == "encrypt"
    assert agents.requirements_for("smtp:[192.0.2.7]:25", "u@example.org").level == "encrypt"
    assert agents.requirements_for("smtp:[smtp.example.net]:587", "u@example.org").level == "verify"


def test_a_bad_policy_line_defers_its_key_and_a_missing_certificate_is_a_config_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "tls_policy").write_text("example.com bogus\nexample.org encrypt\n* may\n")
    cfg = parse_config(f"queue_directory = {tmp_path};\nsmtpc {{ tls_policy = tls_policy; }}\n")
    agents = DeliveryAgents(cfg)  # bad content never stops smtpc
    broken = agents.requirements_for("smtp:example.com", "a@example.com")
    # Not "*  may": a broken entry must not weaken what the operator asked for.
    assert isinstance(broken, BrokenEntry) and "unknown item" in broken.text
    assert agents.requirements_for("smtp:example.org", "a@example.org") == TlsRequirements("encrypt")
    cfg = parse_config(f"queue_directory = {tmp_path};\nsmtpc {{ tls {{ cert_file = missing.pem; }} }}\n")
    with pytest.raises(WorkerConfigError, match=r"missing\.pem"):
        DeliveryAgents(cfg)
