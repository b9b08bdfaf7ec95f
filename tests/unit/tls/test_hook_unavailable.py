"""Where the verify hook cannot be installed, request_cert fails loudly: in check-config and in smtps.

The hook's absence is simulated by replacing :func:`meta1py.tls.hook.probe`, the one function every
caller asks. Also here: the requirements grammar loads no ``ssl``/``ctypes``, so conf can import it.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from tls_handshake import handshake

from meta1py.conf import parse_config
from meta1py.conf.checkcmd import main as check_config
from meta1py.smtps.service import prepare
from meta1py.tls import hook
from meta1py.tls.contexts import (
    ClientTlsSettings,
    ServerTlsSettings,
    TlsConfigError,
    client_context,
    server_context,
)
from meta1py.worker import WorkerConfigError
from meta1py_testing.certs import Pki

SIMULATED = "simulated: no libssl here"


@pytest.fixture
def no_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hook, "probe", lambda: SIMULATED)


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accounts are checked only as root; these tests are about TLS."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


def _conf(tmp_path: Path, pki: Pki, tls_extra: str = "", smtps_extra: str = "") -> Path:
    conf = tmp_path / "meta1.conf"
    conf.write_text(
        f"queue_directory = {tmp_path};\n"
        "smtps {\n"
        f"  listen_socket {{ address = 127.0.0.1; port = 2525; }}{smtps_extra}\n"
        "  tls {\n"
        f"    cert_file = {pki.server.cert};\n"
        f"    key_file = {pki.server.key};\n"
        f"{tls_extra}"
        "  }\n"
        "}\n"
    )
    return conf


def test_check_config_rejects_explicit_request_cert_without_hook(
    tmp_path: Path, pki: Pki, no_hook: None, not_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _conf(tmp_path, pki, "    flags = { request_cert };\n")
    assert check_config(["-f", str(conf)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{conf}:7:5: request_cert cannot be honoured on this Python: {SIMULATED}"
    assert lines[1:3] == ["    flags = { request_cert };", "    ^"]
    assert lines[3].startswith("hint: turn it off with tls { flags = { dont_request_cert }; }")


def test_check_config_rejects_default_request_cert_at_cert_file(
    tmp_path: Path, pki: Pki, no_hook: None, not_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _conf(tmp_path, pki)
    assert check_config(["-f", str(conf)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        f"{conf}:5:5: request_cert (on by default with a cert_file) cannot be honoured on this Python:"
        f" {SIMULATED}"
    )


@pytest.mark.parametrize(
    ("tls_extra", "smtps_extra"),
    [("    flags = { dont_request_cert };\n", ""), ("", " flags = { dont_request_cert };")],
)
def test_check_config_accepts_dont_request_cert_without_hook(
    tmp_path: Path,
    pki: Pki,
    no_hook: None,
    not_root: None,
    capsys: pytest.CaptureFixture[str],
    tls_extra: str,
    smtps_extra: str,
) -> None:
    conf = _conf(tmp_path, pki, tls_extra, smtps_extra)
    assert check_config(["-f", str(conf)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not hook.hook_available(), reason="needs the verify hook")
def test_check_config_accepts_request_cert_with_hook(
    tmp_path: Path, pki: Pki, not_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _conf(tmp_path, pki, "    flags = { request_cert };\n")
    assert check_config(["-f", str(conf)]) == 0
    assert capsys.readouterr().err == ""


def test_server_context_refuses_request_cert_without_hook(pki: Pki, no_hook: None) -> None:
    settings = ServerTlsSettings(pki.server.cert, pki.server.key, ca_file=pki.ca.cert, request_cert=True)
    with pytest.raises(TlsConfigError, match=f"request_cert cannot be honoured on this Python: {SIMULATED}"):
        server_context(settings)
    # Without request_cert the context works, and asks no client for a certificate.
    context = server_context(
        ServerTlsSettings(pki.server.cert, pki.server.key, ca_file=pki.ca.cert, request_cert=False)
    )
    assert context.verify_mode == ssl.CERT_NONE


def test_smtps_refuses_to_start_the_section_without_hook(tmp_path: Path, pki: Pki, no_hook: None) -> None:
    cfg = parse_config(_conf(tmp_path, pki).read_text(), "meta1.conf")
    # The worker logs a WorkerConfigError as CRITICAL and exits 78; mcp does not restart it.
    with pytest.raises(WorkerConfigError, match=f"tls: request_cert cannot be honoured.*{SIMULATED}"):
        prepare(cfg)


def test_client_contexts_work_without_hook(pki: Pki, no_hook: None) -> None:
    settings = ClientTlsSettings(ca_file=pki.ca.cert)
    server = server_context(ServerTlsSettings(pki.server.cert, pki.server.key, request_cert=False))
    result = handshake(server, client_context(settings, verify=True))
    assert result.ok
    assert hook.verify_record(result.client) is None  # nothing was installed


@pytest.mark.parametrize(
    "statement",
    [
        "import meta1py.tls",
        "import meta1py.tls.requirements",
        "import meta1py.conf",
    ],
)
def test_requirements_load_no_ssl_or_ctypes(statement: str) -> None:
    check = "import sys; print(sorted({'ssl', '_ssl', 'ctypes', 'socket', 'trio'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", f"{statement}; {check}"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
