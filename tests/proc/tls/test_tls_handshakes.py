"""Real TLS handshakes with trio.SSLStream: server contexts, client certificates, reload, requirements."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest
import trio
import trio.testing

from meta1py.tls.checks import check_requirements
from meta1py.tls.contexts import (
    ClientTlsSettings,
    ReloadableServerContext,
    ServerTlsSettings,
    TlsConfigError,
    client_context,
    server_context,
)
from meta1py.tls.facts import TlsFacts, received_clause, tls_facts
from meta1py.tls.hook import hook_available
from meta1py.tls.requirements import parse_tls_requirements
from meta1py_testing.certs import Pki, issue_cert

needs_hook = pytest.mark.skipif(not hook_available(), reason="needs the verify hook")


def _server_settings(pki: Pki, **kw: object) -> ServerTlsSettings:
    return ServerTlsSettings(pki.server.cert, pki.server.key, ca_file=pki.ca.cert, **kw)  # type: ignore[arg-type]


def _client(pki: Pki, which: str | None = None, verify: bool = False) -> ssl.SSLContext:
    files = getattr(pki, which) if which else None
    settings = ClientTlsSettings(
        cert_file=files.cert if files else None, key_file=files.key if files else None, ca_file=pki.ca.cert
    )
    return client_context(settings, verify=verify)


async def _pair(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[trio.SSLStream[trio.abc.Stream], trio.SSLStream[trio.abc.Stream]]:
    """Handshake both ends over an in-memory stream pair; return (server, client) streams."""
    left, right = trio.testing.memory_stream_pair()
    server: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(left, server_ctx, server_side=True)
    client: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(right, client_ctx, server_hostname=hostname)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    # TLS 1.3: make sure the server has processed everything the client sent after its Finished.
    await client.send_all(b"ping")
    assert await server.receive_some(4) == b"ping"
    return server, client


async def _facts_for_client_cert(pki: Pki, which: str | None, **kw: object) -> TlsFacts:
    server, _client_stream = await _pair(server_context(_server_settings(pki, **kw)), _client(pki, which))
    return tls_facts(server)


@needs_hook
async def test_unknown_client_certificate_is_accepted_and_recorded(pki: Pki) -> None:
    facts = await _facts_for_client_cert(pki, "other_client")
    assert facts.peer_subject == pki.other_client.subject
    assert facts.peer_issuer == pki.other_ca.subject
    assert facts.peer_verified is False
    assert facts.verify_error is not None and "local issuer" in facts.verify_error
    assert facts.peer_fingerprint == pki.other_client.fingerprint
    assert facts.protocol == "TLSv1.3"


@needs_hook
async def test_self_signed_client_certificate_is_accepted(pki: Pki) -> None:
    facts = await _facts_for_client_cert(pki, "self_signed")
    assert facts.peer_subject == pki.self_signed.subject
    assert facts.peer_verified is False


@needs_hook
async def test_ca_signed_client_certificate_is_verified(pki: Pki) -> None:
    facts = await _facts_for_client_cert(pki, "client")
    assert facts.peer_subject == "CN=client.example.test,O=meta1py tests"
    assert facts.peer_verified is True
    assert facts.verify_error is None
    assert received_clause(facts).endswith(
        '(Client subject "CN=client.example.test,O=meta1py tests",'
        ' Issuer "CN=meta1py Test Root CA,O=meta1py tests" (verified OK))'
    )


@needs_hook
async def test_revoked_client_certificate_is_not_verified(pki: Pki) -> None:
    facts = await _facts_for_client_cert(pki, "revoked_client", crl_file=pki.crl)
    assert facts.peer_verified is False
    assert facts.verify_error is not None and "revoked" in facts.verify_error
    facts = await _facts_for_client_cert(pki, "client", crl_file=pki.crl)
    assert facts.peer_verified is True


@needs_hook
async def test_chain_deeper_than_verify_depth_is_not_verified(pki: Pki, tmp_path: Path) -> None:
    deep = issue_cert(tmp_path, "deep", pki.intermediate, "deep client", client=True, include_chain=True)
    settings = ClientTlsSettings(cert_file=deep.cert, key_file=deep.key)
    for depth, verified in ((0, False), (1, True)):
        ctx = server_context(_server_settings(pki, verify_depth=depth))
        server, _c = await _pair(ctx, client_context(settings, verify=False))
        assert tls_facts(server).peer_verified is verified, depth


async def test_no_client_certificate(pki: Pki) -> None:
    facts = await _facts_for_client_cert(pki, None)
    assert facts.peer_subject is None and facts.peer_verified is False
    assert (
        received_clause(facts)
        == f"(using TLSv1.3 with cipher {facts.cipher} ({facts.bits}/{facts.bits} bits))"
    )


async def test_dont_request_cert(pki: Pki) -> None:
    facts = await _facts_for_client_cert(pki, "client", request_cert=False)
    assert facts.peer_subject is None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def test_tls_1_1_refused_by_default(pki: Pki) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1.1 is deprecated: that is the point
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_context(_server_settings(pki)), server_side=True)
    client_stream = trio.SSLStream(right, client, server_hostname="localhost")
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client_stream.do_handshake)
    causes = [str(leaf.__cause__) for leaf in _leaves(info.value) if leaf.__cause__ is not None]
    # The server refuses: OpenSSL reports "unsupported protocol" on the server's side.
    assert any("UNSUPPORTED_PROTOCOL" in c for c in causes), causes
    # Control: the same client gets through when the operator allows TLS 1.1.
    allow = server_context(_server_settings(pki, min_protocol="TLSv1.1", ciphers="DEFAULT:@SECLEVEL=0"))
    server_stream, _c = await _pair(allow, client)
    assert tls_facts(server_stream).protocol == "TLSv1.1"


async def test_tls_1_2_client(pki: Pki) -> None:
    client = _client(pki)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    server, _c = await _pair(server_context(_server_settings(pki)), client)
    facts = tls_facts(server)
    assert facts.protocol == "TLSv1.2" and facts.bits >= 128


async def test_reload(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    reloadable = ReloadableServerContext(ServerTlsSettings(cert, key))
    old_server, old_client = await _pair(reloadable.context, _client(pki))
    assert old_client.getpeercert(binary_form=True) == pki.server.der

    # A broken certificate file: the reload fails, says why, and the old context stays.
    cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    old_context = reloadable.context
    reason = reloadable.reload()
    assert reason is not None and str(cert) in reason
    assert reloadable.context is old_context and reloadable.generation == 1
    _s, c = await _pair(reloadable.context, _client(pki))
    assert c.getpeercert(binary_form=True) == pki.server.der

    # A renewed certificate: new sessions get it, the old session carries on.
    renewed = issue_cert(tmp_path, "renewed", pki.ca, "localhost", ["localhost"])
    shutil.copy(renewed.cert, cert)
    shutil.copy(renewed.key, key)
    assert reloadable.reload() is None and reloadable.generation == 2
    _s, c = await _pair(reloadable.context, _client(pki))
    assert c.getpeercert(binary_form=True) == renewed.der
    await old_client.send_all(b"still here")
    assert await old_server.receive_some(10) == b"still here"
    await old_server.send_all(b"yes")
    assert await old_client.receive_some(3) == b"yes"


def test_startup_errors_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="cannot read"):
        server_context(ServerTlsSettings(tmp_path / "missing.crt", tmp_path / "missing.key"))
    with pytest.raises(TlsConfigError, match="cannot load certificate"):
        server_context(ServerTlsSettings(pki.server.cert, pki.client.key))  # key of another certificate
    with pytest.raises(TlsConfigError, match="unknown TLS protocol"):
        server_context(ServerTlsSettings(pki.server.cert, pki.server.key, min_protocol="SSLv3"))
    with pytest.raises(TlsConfigError, match="ciphers"):
        server_context(ServerTlsSettings(pki.server.cert, pki.server.key, ciphers="NO-SUCH-CIPHER"))


async def _serve_once(
    listeners: list[trio.SocketListener],
    ctx: ssl.SSLContext,
    results: list[TlsFacts],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    sock = await listeners[0].accept()
    stream = trio.SSLStream(sock, ctx, server_side=True)
    await stream.do_handshake()
    results.append(tls_facts(stream))
    await stream.send_all(b"hello from trio\n")
    try:
        while await stream.receive_some(1024):
            pass
    except trio.BrokenResourceError:
        pass
    await trio.aclose_forcefully(stream)


@needs_hook
async def test_openssl_s_client(pki: Pki) -> None:
    """A real peer: openssl s_client with a client certificate against a trio server on loopback."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    results: list[TlsFacts] = []
    argv = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-CAfile", str(pki.ca.cert), "-verify_return_error", "-verify_hostname", "localhost",
        "-cert", str(pki.other_client.cert), "-key", str(pki.other_client.key), "-brief",
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(_serve_once, listeners, server_context(_server_settings(pki)), results)
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            output = b""
            with trio.fail_after(60):
                while b"hello from trio" not in output:
                    chunk = await proc.stdout.receive_some(4096)
                    if not chunk:
                        break
                    output += chunk
                await proc.stdin.aclose()  # EOF on stdin: s_client closes the connection and exits
                while chunk := await proc.stdout.receive_some(4096):
                    output += chunk
                await proc.wait()
        finally:
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
    text = output.decode(errors="replace")
    assert "hello from trio" in text, text
    assert "Verification: OK" in text, text
    assert len(results) == 1
    facts = results[0]
    assert facts.peer_subject == pki.other_client.subject and facts.peer_verified is False
    for listener in listeners:
        await listener.aclose()


async def test_requirements_over_trio(pki: Pki) -> None:
    """Fingerprint and host name requirements judged on a trio.SSLStream (opportunistic client)."""
    _server, client = await _pair(server_context(_server_settings(pki)), _client(pki), "mx1.example.test")
    right = parse_tls_requirements(f"cert_fps={pki.server.fingerprint_hex} hostnames=mx1.example.test")
    assert check_requirements(right, client, "mx1.example.test") is None
    wrong_fp = parse_tls_requirements(f"cert_fps={pki.self_signed.fingerprint}")
    assert check_requirements(wrong_fp, client, "mx1.example.test").startswith(  # type: ignore[union-attr]
        f"certificate fingerprint mismatch: got {pki.server.fingerprint}"
    )
    wrong_name = parse_tls_requirements("hostnames=mx2.example.test")
    assert check_requirements(wrong_name, client, "mx1.example.test").startswith(  # type: ignore[union-attr]
        "hostname mismatch"
    )
    verify = parse_tls_requirements(f'verify root_ca_subjects="{pki.ca.subject}"')
    assert check_requirements(verify, client, "mx1.example.test") is None
