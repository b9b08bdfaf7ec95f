"""``meta1 explain``: smar's answer at RCPT TO, step by step, from the same code smar runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_access_policy import ACCESS_TEXT, CASES  # the same table, through the command

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
    session = ["-f", str(conf), "--client", "192.0.2.66", "--client-resolve", "no", "--helo", "c.example"]
    session += ["--from", "a@example.org"]
    rc = main([*session, "--to", "bob@example.test", "--to", "postmaster@example.test"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1  # one recipient refused
    assert out[0] == "client [192.0.2.66], HELO c.example, MAIL FROM:<a@example.org>"
    first = out[out.index("RCPT TO:<bob@example.test>") + 1 : out.index("RCPT TO:<postmaster@example.test>")]
    assert first == [
        "  client name: none; cltresolve no",
        "  to: no entry (tried to:bob@example.test, to:bob@, to:example.test, to:.test)",
        "  cltaddr: cltaddr:192.0.2.66 -> REJECT: refuses",
        "  => 550 5.7.1 client [192.0.2.66]: access denied (refused)",
    ]
    second = out[out.index("RCPT TO:<postmaster@example.test>") + 1 :]
    assert second[1] == "  to: to:postmaster@ -> OK: passes"
    assert second[2] == "  cltaddr: cltaddr:192.0.2.66 -> REJECT: refusal overridden by the recipient's entry"
    assert "  delivered to: alice@example.test" in second
    assert second[-1] == "  => 250 2.1.5 Ok (accepted)"


def test_relay_discard_and_an_unknown_user(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-f", str(conf), "--client", "198.51.100.1", "--client-name", "mx.example.net"]
    assert main([*args, "--from", "a@example.org", "--to", "x@remote.example"]) == 1
    assert "=> 554 5.7.1 <x@remote.example>: Relay access denied (refused)" in capsys.readouterr().out
    # Authenticated: may relay.
    assert main([*args, "--from", "a@example.org", "--to", "x@remote.example", "--auth", "alice"]) == 0
    assert main([*args, "--from", "newsletter@example.org", "--to", "alice@example.test"]) == 0
    assert "(accepted, then discarded)" in capsys.readouterr().out
    assert main([*args, "--from", "<>", "--to", "nobody@example.test"]) == 1
    assert "=> 550 5.1.1" in capsys.readouterr().out


@pytest.mark.parametrize(("facts", "expected"), CASES)
def test_explain_answers_as_the_policy_table_says(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    facts: tuple[str, str, str, str],
    expected: tuple[str, int | None, bool],
) -> None:
    # The lookup-order table of test_access_policy, through the command: the same answers.
    (tmp_path / "access").write_text(ACCESS_TEXT)
    conf = tmp_path / "meta1.conf"
    conf.write_text(
        f"local_domains = {{ example.test }};\nqueue_directory = {tmp_path / 'q'};\n"
        f"smar {{ access = {tmp_path / 'access'}; }}\nsmtps {{ relay_clients = {{ 192.0.2.250 }}; }}\n"
    )
    client, helo, sender, rcpt = facts
    args = ["-f", str(conf), "--client", client, "--client-resolve", "no", "--helo", helo]
    rc = main([*args, "--from", sender or "<>", "--to", rcpt])
    last = capsys.readouterr().out.splitlines()[-1]
    action, code, relay = expected
    if action == "refuse":
        assert (rc, last.split()[1]) == (1, str(code)), last
    elif action == "discard":
        assert rc == 0 and last.endswith("(accepted, then discarded)"), last
    elif rcpt.endswith("@example.test") or relay:
        assert rc == 0 and last.startswith("  => 250 "), last
    else:
        assert rc == 1 and "Relay access denied" in last, last


def test_smtps_mail_rules_come_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "meta1.conf"
    conf.write_text(
        f"local_domains = {{ example.test }};\nqueue_directory = {tmp_path / 'q'};\n"
        "smtps submission { require_auth = yes; sender_must_match_login = yes; }\n"
    )
    args = ["-f", str(conf), "--service", "submission", "--client", "192.0.2.1", "--client-resolve", "no"]
    assert main([*args, "--from", "alice@example.test", "--to", "x@remote.example"]) == 1
    out = capsys.readouterr().out
    assert "  smtps: => 530 5.7.0 Authentication required (refused before any recipient)" in out
    assert main([*args, "--auth", "bob", "--from", "alice@example.test", "--to", "x@remote.example"]) == 1
    assert "  smtps: => 553 5.7.1" in capsys.readouterr().out
    assert main([*args, "--auth", "alice", "--from", "alice@example.test", "--to", "x@remote.example"]) == 0
    assert "=> 250 2.1.5 Ok (accepted)" in capsys.readouterr().out
