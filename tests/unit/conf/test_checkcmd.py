"""meta1 check-config, the sample file, the generated docs and the import rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conf_testdata import ROOT

from meta1py.conf import check_accounts, check_files, load_config, parse_config
from meta1py.conf.checkcmd import main
from meta1py.conf.docgen import render

SAMPLE = ROOT / "etc" / "meta1.conf"


def test_docs_are_not_stale() -> None:
    current = (ROOT / "docs" / "meta1.conf.md").read_text()
    assert current == render(), "regenerate: python -m meta1py.conf.docgen > docs/meta1.conf.md"


def test_docs_mention_every_option() -> None:
    text = render()
    for name in ("max_recipients", "IO_timeout", "DNS_timeout", "relayhost", "flags", "retry_max"):
        assert f"`{name}`" in text


def test_sample_parses_and_is_the_default_config(in_tmp: Path) -> None:
    cfg = load_config(SAMPLE)
    assert check_files(cfg) == []
    # The sample spells out the defaults (hostname aside): -n of it is at most the hostname.
    assert cfg.smtps[0].listen_socket[0].port == 2525
    assert cfg.queue_directory == in_tmp / "var" / "queue"


def test_check_config_valid_file_is_silent(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = in_tmp / "ok.conf"
    conf.write_text("smtps { max_recipients = 5; }\n")
    rc = main(["-f", str(conf)])
    out, err = capsys.readouterr()
    if os.geteuid() == 0:  # root: the default users must exist; here they usually do not
        assert rc in (0, 1) and (rc == 0 or f"meta1 setup -f {conf}" in err)
        return
    assert (rc, out, err) == (0, "", "")


def test_check_config_n_prints_changes(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # accounts are only checked as root
    conf = in_tmp / "ok.conf"
    conf.write_text("smtps { max_recipients = 5; }\nqmgr { retry_min = 60; }\n")
    assert main(["-f", str(conf), "-n"]) == 0
    out = capsys.readouterr().out
    assert "max_recipients = 5;" in out and "retry_min = 1m;" in out
    assert parse_config(out) == load_config(conf)


def test_check_config_reports_all_errors(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = in_tmp / "bad.conf"
    conf.write_text("hostnme = x;\nsmtps { max_recipients = 0; }\n")
    assert main(["-f", str(conf)]) == 1
    err = capsys.readouterr().err
    assert f"{conf}:1:1: unknown option 'hostnme'" in err
    assert f"{conf}:2:26: max_recipients: 0 is out of range" in err
    assert "hint: did you mean 'hostname'?" in err


def test_check_config_honours_meta1_conf(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = in_tmp / "env.conf"
    conf.write_text("log_level = loud;\n")
    monkeypatch.setenv("META1_CONF", str(conf))
    assert main([]) == 1
    assert "env.conf:1:13" in capsys.readouterr().err


def test_defaults_output_parses_to_defaults(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--defaults"]) == 0
    out = capsys.readouterr().out
    assert "max_message_size = 10M;" in out
    assert parse_config(out) == parse_config("")


def test_missing_map_file_is_reported(in_tmp: Path) -> None:
    cfg = parse_config("smar {\n  aliases = nothere;\n}\n", str(in_tmp / "m.conf"))
    (err,) = check_files(cfg)
    assert (err.line, err.column) == (2, 3)
    assert "does not exist" in err.message and "queue_directory" in err.hint


def test_check_config_reports_every_bad_map_line(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # accounts are only checked as root
    (in_tmp / "aliases").write_text("postmaster: root\nops: :include:ops.list\nsales: bob\n")
    (in_tmp / "routes").write_text("ok.test smtp:\nbad.test nonsense\n")
    (in_tmp / "tls_policy").write_text("example.com encrypt\nexample.org bogus\n")
    (in_tmp / "access").write_text("cltaddr:10.  OK\nfrom:x@example.org  MAYBE\n")
    conf = in_tmp / "maps.conf"
    conf.write_text(
        f"smar {{ aliases = {in_tmp / 'aliases'}; routes = {in_tmp / 'routes'};"
        f" access = {in_tmp / 'access'}; }}\n"
        f"smtpc {{ tls_policy = {in_tmp / 'tls_policy'}; }}\n"
    )
    assert main(["-f", str(conf)]) == 1
    err = capsys.readouterr().err
    assert f"{in_tmp / 'aliases'}:2:1: relative :include: path" in err
    assert f"{in_tmp / 'routes'}:2:1: expected 'transport:nexthop'" in err
    assert f"{in_tmp / 'tls_policy'}:2:1: tls_requirements: unknown item 'bogus'" in err
    assert f"{in_tmp / 'access'}:2:1: unknown result 'MAYBE'" in err
    assert "ops: :include:ops.list" in err and "deferred (451 4.3.5)" in err
    # The good lines are not reported.
    assert ":1:1:" not in err and ":3:1:" not in err


def test_accounts_checked_only_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config("qmgr {\n  user = no_such_user_meta1x;\n}\n", "u.conf")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert check_accounts(cfg) == []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    errors = check_accounts(cfg)
    mine = [e for e in errors if "no_such_user_meta1x" in e.message]
    assert len(mine) == 1 and (mine[0].line, mine[0].column) == (2, 3)
    assert mine[0].hint.startswith("create the accounts and directories with: meta1 setup -f u.conf")
    assert mine[0].hint.endswith(
        "useradd --system --no-create-home --shell /usr/sbin/nologin no_such_user_meta1x)"
    )


def test_console_script_and_import_rules() -> None:
    code = (
        "import sys, meta1py.conf, meta1py.conf.checkcmd, meta1py.conf.docgen;"
        "bad = [m for m in ('trio', 'socket') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    rc = subprocess.run(
        [sys.executable, "-m", "meta1py.cli", "check-config", "--defaults"], capture_output=True, text=True
    )
    assert rc.returncode == 0 and "listen_socket {" in rc.stdout


TLS_FILES_CONF = """\
smtps {
  listen_socket { port = 2525; }
  tls {
    cert_file = cert.pem;
    key_file = key.pem;
    CA_file = ca.pem;
    CRL_file = crl.pem;
  }
  password_file = passwd;
}
smtpc { tls { cert_file = client.pem; CA_directory = cadir; } }
"""


def test_tls_and_password_files_are_checked(in_tmp: Path) -> None:
    cfg = parse_config(TLS_FILES_CONF, str(in_tmp / "t.conf"))
    errors = check_files(cfg)
    found = {(e.line, e.column): e.message for e in errors}
    assert sorted(found) == [(4, 5), (5, 5), (6, 5), (7, 5), (9, 3), (11, 15), (11, 39)]
    assert found[(4, 5)].startswith("cert_file file ") and "does not exist" in found[(4, 5)]
    assert found[(9, 3)].startswith("password_file file ")
    assert found[(11, 39)].startswith("CA_directory directory ")
    assert all("queue_directory" in e.hint for e in errors)


def test_readable_tls_files_pass_and_unreadable_ones_do_not(in_tmp: Path) -> None:
    cfg = parse_config(TLS_FILES_CONF, str(in_tmp / "t.conf"))
    for name in ("cert.pem", "key.pem", "ca.pem", "crl.pem", "passwd", "client.pem"):
        path = cfg.queue_directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    (cfg.queue_directory / "cadir").mkdir()
    assert check_files(cfg) == []
    (cfg.queue_directory / "cadir").rmdir()
    (cfg.queue_directory / "cadir").write_text("not a directory\n")
    (cfg.queue_directory / "passwd").unlink()
    (cfg.queue_directory / "passwd").mkdir()
    problems = sorted(e.message for e in check_files(cfg))
    assert len(problems) == 2
    assert problems[0].startswith("CA_directory directory ") and problems[0].endswith("is not a directory")
    assert problems[1].startswith("password_file file ") and problems[1].endswith("is not a regular file")
    if os.geteuid() != 0:  # root reads anything
        (cfg.queue_directory / "passwd").rmdir()
        (cfg.queue_directory / "passwd").write_text("x\n")
        (cfg.queue_directory / "passwd").chmod(0)
        (problem,) = [e.message for e in check_files(cfg) if "password_file" in e.message]
        assert problem.endswith("is not readable")


def test_check_config_reports_missing_certificate(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = in_tmp / "t.conf"
    conf.write_text(TLS_FILES_CONF)
    assert main(["-f", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "t.conf:4:5: cert_file file" in err and "does not exist" in err
