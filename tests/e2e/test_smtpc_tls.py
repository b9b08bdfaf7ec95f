"""smtpc's STARTTLS and tls_requirements end to end: real meta1, an aiosmtpd sink with STARTTLS.

Every case starts the daemon with a routes map entry ``example.net smtp:[127.0.0.1]:PORT`` that
points at the sink, sends one message to ``x@example.net`` and checks either that the sink got it
over TLS or that it was deferred with the reason in the log and in ``meta1 queue show``.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from meta1py_testing.certs import Pki, make_pki
from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import RecordingSink, recording_sink

pytestmark = pytest.mark.e2e

MESSAGE = b"From: a@example.org\r\nTo: x@example.net\r\nSubject: tls\r\n\r\nhello over TLS\r\n"
DEADLINE_S = 60.0


@dataclass
class Setup:
    daemon: Meta1Daemon
    sink: RecordingSink
    pki: Pki


def _readable(directory: Path) -> None:
    # As root the workers run as a throw-away user: keys must be readable by it (make_pki writes 0600).
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def _server_context(pki: Pki, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    if require_client_cert:
        context.load_verify_locations(pki.ca.cert)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@contextmanager
def running(
    make_daemon: Callable[..., Meta1Daemon],
    *,
    smtpc: Callable[[Pki], str] = lambda pki: "",
    policy: Callable[[Pki], str] | None = None,
    starttls: bool = True,
    require_client_cert: bool = False,
    sink_tls12_only: bool = False,
) -> Iterator[Setup]:
    """The sink (with or without STARTTLS) and a daemon routing example.net to it."""
    smtpc_text = _SMTPC_PLACEHOLDER + (" tls_policy = ../tls_policy;" if policy is not None else "")
    daemon = make_daemon(sections={"smar": "routes = ../routes;", "smtpc": smtpc_text})
    pki = make_pki(daemon.dir / "tls")
    _readable(pki.directory)
    # The smtpc settings name files of the PKI, which only exists once the daemon's directory does.
    daemon.write_config(daemon.conf_path.read_text().replace(_SMTPC_PLACEHOLDER, smtpc(pki)))
    if policy is not None:
        (daemon.dir / "tls_policy").write_text(policy(pki))
    context = _server_context(pki, require_client_cert) if starttls else None
    if context is not None and sink_tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    with recording_sink(starttls_context=context) as sink:
        (daemon.dir / "routes").write_text(f"example.net smtp:[127.0.0.1]:{sink.port}\n")
        with daemon:
            yield Setup(daemon, sink, pki)


_SMTPC_PLACEHOLDER = "#SMTPC#\n"


def send(daemon: Meta1Daemon) -> str:
    """Submit one message for x@example.net; returns its queue id."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("x@example.net")[0] == 250
        code, text = client.data(MESSAGE)
    assert code == 250, text
    return text.split()[-1].decode()


def queue_show(daemon: Meta1Daemon, qid: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "meta1py.cli", "queue", "show", qid, "-f", str(daemon.conf_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout + out.stderr


def assert_delivered_over_tls(setup: Setup) -> None:
    qid = send(setup.daemon)
    (got,) = setup.sink.wait_for_messages(1, DEADLINE_S)
    assert got.tls is True
    assert list(got.rcpt_tos) == ["x@example.net"]
    setup.daemon.wait_for_log(rf"{qid}.*TLS TLSv1\.[23]", timeout=DEADLINE_S)


def wait_queue_show(daemon: Meta1Daemon, qid: str, needle: str) -> str:
    """``meta1 queue show QID`` once its output contains ``needle`` (qmgr records the deferral)."""

    def shown() -> str | None:
        text = queue_show(daemon, qid)
        return text if needle in text else None

    return poll(shown, DEADLINE_S, f"{needle!r} in meta1 queue show {qid}")


def assert_deferred(setup: Setup, reason: str) -> None:
    """The message is deferred: the reason is in the log and in ``meta1 queue show``."""
    qid = send(setup.daemon)
    setup.daemon.wait_for_log(rf"{qid}.*TLS requirements not met: {reason}", timeout=DEADLINE_S)
    shown = wait_queue_show(setup.daemon, qid, f"TLS requirements not met: {reason}")
    assert "4.7.5" in shown
    assert setup.sink.messages == []


def test_default_is_opportunistic_tls(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with running(make_daemon) as setup:
        assert_delivered_over_tls(setup)


def test_default_delivers_in_plaintext_without_starttls(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with running(make_daemon, starttls=False) as setup:
        send(setup.daemon)
        (got,) = setup.sink.wait_for_messages(1, DEADLINE_S)
        assert got.tls is False


def test_encrypt_without_starttls_defers(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with running(make_daemon, smtpc=lambda p: "tls_requirements = encrypt;", starttls=False) as setup:
        assert_deferred(setup, "no TLS offered but tls_requirements=encrypt")


def test_wrong_fingerprint_defers(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with running(
        make_daemon, policy=lambda p: f"example.net cert_fps={p.self_signed.fingerprint}\n"
    ) as setup:
        assert_deferred(setup, "certificate fingerprint mismatch")


def test_right_fingerprint_delivers(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # The fingerprint written without colons, in lower case: both spellings are accepted.
    with running(make_daemon, policy=lambda p: f"example.net cert_fps={p.server.fingerprint_hex}\n") as setup:
        assert_delivered_over_tls(setup)


def test_nexthop_key_wins_over_domain(make_daemon: Callable[..., Meta1Daemon]) -> None:
    def policy(p: Pki) -> str:
        return "[127.0.0.1] cert_fps=" + p.server.fingerprint + "\nexample.net none\n"

    with running(make_daemon, policy=policy) as setup:
        assert_delivered_over_tls(setup)


@pytest.mark.parametrize(("name", "ok"), [("mx1.example.test", True), ("mx.wrong.test", False)])
def test_hostnames(make_daemon: Callable[..., Meta1Daemon], name: str, ok: bool) -> None:
    # With cert_fps the listed name is meaningful; without verify nothing else is checked.
    with running(
        make_daemon, policy=lambda p: f".net hostnames={name}; cert_fps={p.server.fingerprint}\n"
    ) as setup:
        if ok:
            assert_delivered_over_tls(setup)
        else:
            assert_deferred(setup, "hostname mismatch")


def test_verify_with_the_test_ca_delivers(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with running(
        make_daemon,
        smtpc=lambda p: f"tls_requirements = verify; tls {{ CA_file = {p.ca.cert}; }}",
    ) as setup:
        assert_delivered_over_tls(setup)


def test_verify_without_the_test_ca_defers(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # The system store does not know the test CA.
    with running(make_daemon, policy=lambda p: "example.net verify\n") as setup:
        assert_deferred(setup, "certificate verification failed")


def test_client_certificate(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # The sink refuses the handshake without a client certificate from the test CA.
    def smtpc(p: Pki) -> str:
        return f"tls {{ cert_file = {p.client.cert}; key_file = {p.client.key}; }}"

    with running(make_daemon, smtpc=smtpc, require_client_cert=True) as setup:
        assert_delivered_over_tls(setup)


def test_failed_handshake_defers_instead_of_plaintext(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # smtpc speaks only TLS 1.3 here and the sink only up to 1.2: the handshake fails. At level
    # "may" the host is deferred, not retried in plaintext (tls_plaintext_fallback is off).
    with running(
        make_daemon, smtpc=lambda p: "tls { protocols = { TLSv1.3 }; }", sink_tls12_only=True
    ) as setup:
        qid = send(setup.daemon)
        setup.daemon.wait_for_log(rf"{qid}.*TLS handshake with .* failed", timeout=DEADLINE_S)
        shown = wait_queue_show(setup.daemon, qid, "TLS handshake with")
        assert "4.7.5" in shown
        assert setup.sink.messages == []
