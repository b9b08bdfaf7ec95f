"""smtps TLS and AUTH end to end: real ``meta1 run``, real TLS clients (openssl, swaks, smtplib)."""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meta1py.passwords import hash_password
from meta1py_testing.certs import Pki, make_pki
from meta1py_testing.daemon import Meta1Daemon, free_port, poll
from meta1py_testing.peers import RecordingSink, recording_sink

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "correct horse battery"
TIMEOUT = 60
MESSAGE = b"From: alice@localhost\r\nTo: someone\r\nSubject: tls test\r\n\r\nhello over TLS\r\n"

# Relative to queue_directory (daemon.dir/queue): the files live in daemon.dir.
TLS_SECTION = "tls { cert_file = ../pki/server.crt; key_file = ../pki/server.key; CA_file = ../pki/ca.crt; }"


@dataclass
class Setup:
    daemon: Meta1Daemon
    pki: Pki
    sink: RecordingSink
    implicit_port: int
    submission_port: int


def _prepare_files(directory: Path) -> Pki:
    pki = make_pki(directory / "pki")
    # As production wants them: keys and the password file readable by their owner alone (root
    # when the tests run as root). smtps loads them before it drops privileges.
    (directory / "pki").chmod(0o755)
    for key in (directory / "pki").glob("*.key"):
        key.chmod(0o600)
    passwd = directory / "passwd"
    passwd.write_text(f"# test users\n{USER}:{hash_password(PASSWORD)}\n")
    passwd.chmod(0o600)
    return pki


@pytest.fixture
def setup(make_daemon: Callable[..., Meta1Daemon], worker_accounts: dict[str, Any]) -> Iterator[Setup]:
    """A daemon with STARTTLS + AUTH on its main port, an implicit-TLS port, and a submission section.

    The main section lets only 127.0.0.2 relay, so the loopback test client relays only after AUTH;
    example.net is routed to a recording sink.
    """
    with recording_sink() as sink:
        implicit_port = free_port()
        submission_port = free_port()
        users = worker_accounts.get("users")
        user, group = users["smtps"] if users else (worker_accounts.get("user"),) * 2
        account = f"user = {user}; group = {group};" if user else ""
        smtps = (
            f"listen_socket {{ address = 127.0.0.1; port = {implicit_port}; tls = implicit; }} "
            f"{TLS_SECTION} password_file = ../passwd; relay_clients = {{ 127.0.0.2 }}; "
            "max_auth_failures = 3;"
        )
        submission = (
            f"smtps submission {{ {account} "
            f"listen_socket {{ address = 127.0.0.1; port = {submission_port}; }} "
            f"{TLS_SECTION} password_file = ../passwd; relay_clients = {{ 127.0.0.2 }}; "
            "require_auth = yes; sender_must_match_login = yes; }"
        )
        daemon = make_daemon(
            submission, sections={"smtps": smtps, "smar": "routes = ../routes;"}, ready_timeout=90
        )
        pki = _prepare_files(daemon.dir)
        (daemon.dir / "routes").write_text(f"example.net smtp:[127.0.0.1]:{sink.port}\n")
        with daemon:
            yield Setup(daemon, pki, sink, implicit_port, submission_port)


def client_context(pki: Pki, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert:
        ctx.load_cert_chain(pki.client.cert, pki.client.key)
    return ctx


def maildir_messages(daemon: Meta1Daemon, user: str = "b") -> list[bytes]:
    new = daemon.mail_directory / "localhost" / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--ehlo",
            "client.example",
            "--timeout",
            "30",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_starttls_advertised_and_openssl_s_client(setup: Setup) -> None:
    daemon, pki = setup.daemon, setup.pki
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT) as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        assert b"STARTTLS" in text
        assert b"AUTH" not in text  # never before TLS
        code, text = client.docmd("AUTH", "PLAIN")
        assert (code, text[:5]) == (530, b"5.7.0")
    # A real peer: openssl speaks STARTTLS, verifies our chain, presents a client certificate.
    # (-quiet: otherwise s_client takes the "Q" of QUIT as its own command; it implies -ign_eof.)
    proc = subprocess.run(
        [
            "openssl",
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            f"127.0.0.1:{daemon.port}",
            "-CAfile",
            str(pki.ca.cert),
            "-verify_return_error",
            "-servername",
            "localhost",
            "-cert",
            str(pki.client.cert),
            "-key",
            str(pki.client.key),
            "-crlf",
            "-quiet",
        ],
        input="EHLO client.example\nQUIT\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    # -quiet prints the plaintext part and the verification on stderr, the TLS part on stdout.
    assert proc.returncode == 0 and "verify return:1" in proc.stderr, proc.stderr
    tls_part = proc.stdout
    assert "250-AUTH PLAIN LOGIN" in tls_part, daemon.log_text()
    assert "STARTTLS" not in tls_part
    assert "221 " in tls_part
    line = daemon.wait_for_log(
        r"tls qid=- .* protocol=TLSv1\.3 cipher=\S+ bits=\d+ trust=\S+ .*", timeout=30
    ).group()
    assert "trust=trusted" in line and pki.client.subject in line and pki.ca.subject in line, line


def test_swaks_tls_relay_needs_auth(setup: Setup) -> None:
    daemon = setup.daemon
    denied = swaks(daemon.port, "--tls", "--from", "alice@localhost", "--to", "x@example.net")
    assert denied.returncode != 0
    assert "554 5.7.1" in denied.stdout
    ok = swaks(
        daemon.port,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@localhost",
        "--to",
        "x@example.net",
        "--data",
        MESSAGE.decode(),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "235 2.7.0" in ok.stdout
    (got,) = setup.sink.wait_for_messages(1, TIMEOUT)
    assert got.rcpt_tos == ("x@example.net",)
    head = got.content.partition(b"\r\n\r\n")[0].decode()
    received = head.split("\r\nFrom:")[0]
    # The client's name is whatever this machine's DNS says of 127.0.0.1 (usually "unknown").
    assert re.match(r"Received: from client\.example \([\w.-]+ \[127\.0\.0\.1\]\)", received), received
    assert "(using TLSv1.3 with cipher " in received
    assert f"(Authenticated sender: {USER})" in received
    assert " with ESMTPSA id " in received
    log = daemon.wait_for_log(rf"authenticated user='{USER}' mechanism=PLAIN", timeout=30)
    assert log
    assert PASSWORD not in daemon.log_text()
    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode() not in daemon.log_text()


def test_smtplib_starttls_login_failure_and_rate_limit(setup: Setup) -> None:
    daemon, pki = setup.daemon, setup.pki
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT) as client:
        client.starttls(context=client_context(pki, cert=True))
        client.ehlo("client.example")
        assert client.has_extn("auth") and not client.has_extn("starttls")
        # LOGIN, the two-step exchange
        client.user, client.password = USER, PASSWORD
        code, text = client.auth("LOGIN", client.auth_login)
        assert code == 235
        assert client.sendmail("alice@localhost", ["b@localhost"], MESSAGE) == {}
    line = daemon.wait_for_log(
        r"tls qid=- .* protocol=TLSv1\.3 cipher=\S+ bits=\d+ trust=\S+ .*", timeout=30
    ).group()
    assert "trust=trusted" in line and pki.client.subject in line and pki.ca.subject in line, line
    data = poll(lambda: maildir_messages(daemon) or None, TIMEOUT, "maildir delivery")[0]
    head = data.partition(b"\n\n")[0].decode()
    assert "(using TLSv1.3 with cipher" in head
    assert f'(Client subject "{pki.client.subject}", Issuer "{pki.ca.subject}" (verified OK))' in head
    assert f"(Authenticated sender: {USER})" in head and "with ESMTPSA" in head

    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT) as client:
        client.starttls(context=client_context(pki))
        client.ehlo("client.example")
        # a cancelled exchange is not a failure
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd("*")[0] == 501
        wrong = base64.b64encode(f"\0{USER}\0wrong password".encode()).decode()
        for _ in range(3):  # max_auth_failures = 3
            code, text = client.docmd("AUTH", f"PLAIN {wrong}")
            assert (code, text[:5]) == (535, b"5.7.8")
        # The fourth attempt, even with the right password, ends the session.
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {plain}")
        assert (code, text[:5]) == (421, b"4.7.0")
    # The limit is per client IP, not per session.
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT) as client:
        client.starttls(context=client_context(pki))
        client.ehlo("client.example")
        code, _text = client.docmd("AUTH", f"PLAIN {plain}")
        assert code == 421
    daemon.wait_for_log(rf"authentication failed user='{USER}' mechanism=PLAIN", timeout=30)


def test_implicit_tls_listener(setup: Setup) -> None:
    daemon, pki = setup.daemon, setup.pki
    with smtplib.SMTP_SSL(
        "127.0.0.1", setup.implicit_port, timeout=TIMEOUT, context=client_context(pki)
    ) as client:
        assert client.ehlo("client.example")[0] == 250
        assert not client.has_extn("starttls")
        assert client.has_extn("auth")
        assert client.docmd("STARTTLS")[0] in (502, 503)
        client.login(USER, PASSWORD)
        assert client.sendmail("alice@localhost", ["b@localhost"], MESSAGE) == {}
    data = poll(lambda: maildir_messages(daemon) or None, TIMEOUT, "maildir delivery")[0]
    assert b"(using TLSv1.3 with cipher" in data and b"with ESMTPSA" in data


def test_starttls_injection_is_refused(setup: Setup) -> None:
    daemon = setup.daemon
    with daemon.connect(TIMEOUT) as sock:
        assert daemon.read_line(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.example\r\n")
        while not daemon.read_line(sock).startswith(b"250 "):
            pass
        # The RSET rides in the same packet as STARTTLS: it must never be answered.
        sock.sendall(b"STARTTLS\r\nRSET\r\n")
        assert daemon.read_line(sock).startswith(b"220 ")
        sock.settimeout(TIMEOUT)
        rest = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            rest += chunk
        assert b"250" not in rest
    daemon.wait_for_log(r"bytes pipelined after STARTTLS from 127\.0\.0\.1; closing", timeout=30)


def test_submission_thunderbird_style(setup: Setup) -> None:
    port = setup.submission_port
    # EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT, DATA
    ok = swaks(
        port,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--from",
        f"{USER}@localhost",
        "--to",
        "friend@example.net",
        "--data",
        MESSAGE.decode(),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    sent = [line.split("~>", 1)[1].strip().split(" ")[0] for line in lines if "~>" in line]
    assert sent[:5] == ["EHLO", "AUTH", "MAIL", "RCPT", "DATA"]
    (got,) = setup.sink.wait_for_messages(1, TIMEOUT)
    assert got.rcpt_tos == ("friend@example.net",)
    assert f"(Authenticated sender: {USER})".encode() in got.content

    # MAIL before AUTH: 530 5.7.0; someone else's address: 553 5.7.1.
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.starttls(context=client_context(setup.pki))
        client.ehlo("client.example")
        code, text = client.mail(f"{USER}@localhost")
        assert (code, text[:5]) == (530, b"5.7.0")
        client.login(USER, PASSWORD)
        code, text = client.mail("boss@localhost")
        assert (code, text[:5]) == (553, b"5.7.1")
        assert client.mail(f"{USER}@localhost")[0] == 250


def test_plaintext_without_certificate_offers_no_starttls(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with make_daemon() as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT) as client:
            text = client.ehlo("client.example")[1]
            assert b"STARTTLS" not in text and b"AUTH" not in text
            assert client.docmd("STARTTLS")[0] == 502
