"""``meta1 explain``: smar's answer at RCPT TO, step by step, from the same code smar runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1py.smar.explain import main

ACCESS = """\
cltaddr:192.0.2.66           REJECT
to:postmaster@               OK
from:newsletter@example.org  DISCARD
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "access").write_text(ACCESS)
    (tmp_path / "aliases").write_text("postmaster: alice\nalice: alice\n")
    path = tmp_path / "meta1.conf"
    path.write_text(
        f"local_domains = {{ example.test }};\nqueue_directory = {tmp_path / 'q'};\n"
        f"smar {{ access = {tmp_path / 'access'}; aliases = {tmp_path / 'aliases'}; }}\n"
        "smtps { relay_clients = { 127.0.0.1 }; }\n"
    )
    return path


def test_each_check_and_the_final_reply(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = ["-f", str(conf), "--client", "192.0.2.66", "--helo", "c.example", "--from", "a@example.org"]
    rc = main([*session, "--to", "bob@example.test", "--to", "postmaster@example.test"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1  # one recipient refused
    assert out[0] == "client [192.0.2.66], HELO c.example, MAIL FROM:<a@example.org>"
    first = out[out.index("RCPT TO:<bob@example.test>") + 1 : out.index("RCPT TO:<postmaster@example.test>")]
    assert first == [
        "  to: no entry (tried to:bob@example.test, to:bob@, to:example.test, to:.test)",
        "  cltaddr: cltaddr:192.0.2.66 -> REJECT: refuses",
        "  => 550 5.7.1 client [192.0.2.66]: access denied (refused)",
    ]
    second = out[out.index("RCPT TO:<postmaster@example.test>") + 1 :]
    assert second[0] == "  to: to:postmaster@ -> OK: passes"
    assert second[1] == "  cltaddr: cltaddr:192.0.2.66 -> REJECT: refusal overridden by the recipient's entry"
    assert "  delivered to: alice@example.test" in second
    assert second[-1] == "  => 250 2.1.5 Ok (accepted)"


def test_relay_discard_and_an_unknown_user(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-f", str(conf), "--client", "198.51.100.1"]
    assert main([*args, "--from", "a@example.org", "--to", "x@remote.example"]) == 1
    assert "=> 554 5.7.1 <x@remote.example>: Relay access denied (refused)" in capsys.readouterr().out
    # Authenticated: may relay.
    assert main([*args, "--from", "a@example.org", "--to", "x@remote.example", "--auth", "alice"]) == 0
    assert main([*args, "--from", "newsletter@example.org", "--to", "alice@example.test"]) == 0
    assert "(accepted, then discarded)" in capsys.readouterr().out
    assert main([*args, "--from", "<>", "--to", "nobody@example.test"]) == 1
    assert "=> 550 5.1.1" in capsys.readouterr().out
