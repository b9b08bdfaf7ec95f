"""Benchmark: smtps TLS handshakes that request a client certificate, two ways.

1. ``stdlib+hook``: what smtps does (``meta1py.tls.contexts.server_context`` with ``request_cert``): the
   interpreter's ``ssl`` module with the recording verify callback installed through ctypes
   (``meta1py.tls.hook``).
2. ``pyOpenSSL``: a prototype of the alternative, an ``OpenSSL.SSL.Context`` with
   ``set_verify(VERIFY_PEER, callback)`` behind a small adapter that gives ``trio.SSLStream`` the
   ``ssl.SSLObject`` surface it uses (``wrap_bio``, ``do_handshake``, ``read``, ``write``, ``unwrap``,
   ``ssl`` exceptions), pumping bytes between the ``ssl.MemoryBIO`` pair and pyOpenSSL's own memory BIO.

The client is the stdlib ``ssl`` client smtpc uses. Rows (server, client certificate):

- ``stdlib, no request_cert``: no CertificateRequest at all (the floor);
- ``stdlib CERT_OPTIONAL, known cert, no hook``: requesting without the hook, which only works for a
  certificate the CA file knows; against the next row it shows what the hook itself costs;
- ``stdlib+hook, known cert`` / ``unknown cert``: smtps today;
- ``pyOpenSSL adapter, unknown cert``: the prototype (request, record, never refuse).

Full handshakes only (neither side resumes). Printed per CPU second of this process (both ends run in
it), as medians of interleaved rounds: handshakes over synchronous memory BIOs (the TLS libraries
alone), handshakes through ``trio.SSLStream`` on a ``memory_stream_pair`` (what a session costs), and
the throughput of a 10 MB body sent client to server through ``trio.SSLStream`` (the adapter copies
every record once more). Note that pyOpenSSL runs cryptography's bundled OpenSSL, which may be a
different version from the interpreter's: the first line prints both.

Run: .venv/bin/python bench/tls_handshake.py [--seconds 1] [--rounds 5]   (about 15 s per round)
"""

from __future__ import annotations

import argparse
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

import trio
import trio.testing
from OpenSSL import SSL

from meta1py.tls.contexts import ClientTlsSettings, ServerTlsSettings, client_context, server_context
from meta1py.tls.facts import tls_facts
from meta1py.tls.hook import hook_available
from meta1py_testing.certs import Pki, make_pki

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------
# The pyOpenSSL prototype (benchmark only: not used by meta1py)


class PyOpenSslObject:
    """The part of ``ssl.SSLObject`` that ``trio.SSLStream`` and ``tls_facts`` use, over pyOpenSSL."""

    def __init__(
        self, context: PyOpenSslContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool
    ) -> None:
        self.context = context
        self.server_side = server_side
        self.chain: dict[int, bytes] = {}
        self.errors: list[tuple[int, int]] = []
        self._in, self._out = incoming, outgoing
        self._eof_sent = False
        self._conn = SSL.Connection(context.ssl, None)
        self._conn.set_app_data(self)
        if server_side:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()

    def _call(self, fn: Callable[[], T]) -> T:
        data = self._in.read()
        if data:
            self._conn.bio_write(data)
        if self._in.eof and not self._eof_sent:
            self._eof_sent = True
            self._conn.bio_shutdown()
        try:
            return fn()
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("want read") from None
        except SSL.ZeroReturnError:
            raise ssl.SSLZeroReturnError("TLS close_notify") from None
        except SSL.SysCallError as exc:
            raise ssl.SSLEOFError(str(exc)) from None
        except SSL.Error as exc:
            raise ssl.SSLError(str(exc)) from None
        finally:
            while True:
                try:
                    chunk = self._conn.bio_read(65536)
                except SSL.WantReadError:
                    break
                if not chunk:
                    break
                self._out.write(chunk)

    def do_handshake(self) -> None:
        self._call(self._conn.do_handshake)

    def read(self, n: int = 65536) -> bytes:
        return self._call(lambda: self._conn.recv(n))

    def write(self, data: bytes) -> int:
        return self._call(lambda: self._conn.sendall(data))

    def unwrap(self) -> None:
        self._call(self._conn.shutdown)

    def pending(self) -> int:
        return self._conn.pending()

    def version(self) -> str | None:
        return self._conn.get_protocol_version_name()

    def cipher(self) -> tuple[str, str, int] | None:
        name = self._conn.get_cipher_name()
        if name is None:
            return None
        return name, self._conn.get_cipher_version() or "", self._conn.get_cipher_bits() or 0

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return cert.public_bytes(Encoding.DER) if cert is not None else None


class PyOpenSslContext:
    """``ssl.SSLContext.wrap_bio`` over an ``OpenSSL.SSL.Context`` that requests and records."""

    def __init__(self, pki: Pki) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding

        self._der = Encoding.DER
        self.ssl = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.ssl.set_min_proto_version(SSL.TLS1_2_VERSION)
        self.ssl.use_certificate_chain_file(str(pki.server.cert))
        self.ssl.use_privatekey_file(str(pki.server.key))
        self.ssl.load_verify_locations(str(pki.ca.cert))
        self.ssl.set_verify(SSL.VERIFY_PEER, self._verify)
        self.ssl.set_verify_depth(9)

    def _verify(self, conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        record: PyOpenSslObject = conn.get_app_data()
        record.chain[depth] = cert.to_cryptography().public_bytes(self._der)
        if not ok:
            record.errors.append((depth, errno))
        return True  # request, record, never refuse

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> PyOpenSslObject:
        return PyOpenSslObject(self, incoming, outgoing, server_side)


# ---------------------------------------------------------------------------------------------------
# Drivers


def sync_handshake(server_ctx: Any, client_ctx: ssl.SSLContext) -> None:
    """One full handshake over memory BIOs, both ends in this thread."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done_s = done_c = False
    for _ in range(20):
        if not done_c:
            try:
                client.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                server.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_s and done_c:
            return
    raise RuntimeError("handshake did not finish")


async def trio_session(server_ctx: Any, client_ctx: ssl.SSLContext, body: bytes = b"") -> bytes:
    """Handshake through trio.SSLStream; send ``body`` client to server; return the server's facts."""
    left, right = trio.testing.memory_stream_pair()
    server: trio.SSLStream[Any] = trio.SSLStream(left, server_ctx, server_side=True)
    client: trio.SSLStream[Any] = trio.SSLStream(right, client_ctx, server_hostname="localhost")
    received = bytearray()

    async def serve() -> None:
        await server.do_handshake()
        while len(received) < len(body) + 4:
            received.extend(await server.receive_some(65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.do_handshake()
        await client.send_all(b"ping" + body)
    return bytes(tls_facts(server).peer_subject or "", "ascii")


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU second of ``fn`` over about ``seconds`` of CPU time (after one warm-up call).

    CPU time of this process, not wall time: both ends run here, and other load on the machine then
    changes the figures less.
    """
    fn()
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        fn()
        n += 1
    return n / (time.process_time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (the median is printed)")
    args = ap.parse_args()
    if not hook_available():
        raise SystemExit("the verify hook is not available on this Python: nothing to compare")
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        stdlib_server = server_context(
            ServerTlsSettings(pki.server.cert, pki.server.key, ca_file=pki.ca.cert, request_cert=True)
        )
        no_request = server_context(
            ServerTlsSettings(pki.server.cert, pki.server.key, ca_file=pki.ca.cert, request_cert=False)
        )
        py_server = PyOpenSslContext(pki)
        # A stdlib server that requests without the hook: only a certificate its CA file knows passes.
        optional = server_context(
            ServerTlsSettings(pki.server.cert, pki.server.key, ca_file=pki.ca.cert, request_cert=False)
        )
        optional.verify_mode = ssl.CERT_OPTIONAL
        unknown = client_context(
            ClientTlsSettings(pki.other_client.cert, pki.other_client.key, ca_file=pki.ca.cert), verify=False
        )
        known = client_context(
            ClientTlsSettings(pki.client.cert, pki.client.key, ca_file=pki.ca.cert), verify=False
        )
        # The hook and the prototype must request, accept and record the unknown client certificate.
        for ctx in (stdlib_server, py_server):
            facts = trio.run(trio_session, ctx, unknown)
            assert facts.decode() == pki.other_client.subject, facts
        body = b"x" * (10 * 1024 * 1024)
        pyopenssl_lib = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        print(f"OpenSSL: ssl {ssl.OPENSSL_VERSION}; pyOpenSSL {pyopenssl_lib}")
        rows: list[tuple[str, Any, ssl.SSLContext]] = [
            ("stdlib, no request_cert", no_request, unknown),
            ("stdlib CERT_OPTIONAL, known cert, no hook", optional, known),
            ("stdlib+hook, known cert", stdlib_server, known),
            ("stdlib+hook, unknown cert", stdlib_server, unknown),
            ("pyOpenSSL adapter, unknown cert", py_server, unknown),
        ]
        # Rounds interleave the variants, and the median is printed: the machine may be shared.
        figures: dict[str, list[list[float]]] = {name: [[], [], []] for name, _s, _c in rows}
        for _round in range(args.rounds):
            for name, server, client in rows:
                sync, in_trio, mb_s = figures[name]
                sync.append(rate(lambda s=server, c=client: sync_handshake(s, c), args.seconds))
                in_trio.append(rate(lambda s=server, c=client: trio.run(trio_session, s, c), args.seconds))
                start = time.process_time()
                trio.run(trio_session, server, client, body)
                mb_s.append(len(body) / (time.process_time() - start) / 1e6)
        print(f"per CPU second; medians of {args.rounds} rounds of {args.seconds:g} s")
        print(f"{'server, client certificate':<42}{'sync hs/s':>10}{'trio hs/s':>10}{'10 MB body MB/s':>17}")
        for name, (sync, in_trio, mb_s) in figures.items():
            print(f"{name:<42}{median(sync):>10.0f}{median(in_trio):>10.0f}{median(mb_s):>17.1f}")


if __name__ == "__main__":
    main()
