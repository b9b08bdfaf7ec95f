"""smtpc's STARTTLS decisions against a scripted loopback server (no TLS library on the far side).

The server below answers from a script and records the commands it got, so these tests show what
smtpc sends: STARTTLS injection is refused, ``encrypt`` never reaches MAIL without TLS, ``none``
never sends STARTTLS, and a refused STARTTLS at level ``may`` goes on in plaintext.
"""

from __future__ import annotations

from pathlib import Path

import trio

from meta1py.conf import parse_config
from meta1py.queue.ids import new_queue_id
from meta1py.rpc.messages import (
    SmtpcDeliveryReply,
)
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py_testing.jobs import delivery_request, loopback_route, serve_on_loopback

EHLO_REPLY = b"250-sink.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"


async def _serve(stream: trio.SocketStream, script: dict[bytes, bytes], seen: list[bytes]) -> None:
    """Answer each command line with ``script[verb]`` (default 250) until QUIT or EOF."""
    await stream.send_all(b"220 sink.test ESMTP\r\n")
    buffer = b""
    async with stream:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            buffer += data
            while b"\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n", 1)
                verb = line.split(b" ", 1)[0].upper()
                seen.append(verb)
                if verb == b"DATA":
                    await stream.send_all(b"354 go on\r\n")
                    continue
                await stream.send_all(script.get(verb, b"250 2.0.0 ok\r\n"))
                if verb == b"QUIT":
                    return


async def _deliver(
    tmp_path: Path, smtpc: str, script: dict[bytes, bytes]
) -> tuple[SmtpcDeliveryReply, list[bytes]]:
    seen: list[bytes] = []
    cfg = parse_config(f"queue_directory = {tmp_path};\nsmtpc {{ {smtpc} }}\n")
    agents = DeliveryAgents(cfg)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await serve_on_loopback(nursery, lambda s: _serve(s, script, seen))
            req = delivery_request(new_queue_id(), loopback_route(port), ["x@example.net"])
            reply = await agents.deliver(req)
            nursery.cancel_scope.cancel()
    return reply, seen


async def test_data_after_the_220_to_starttls_is_refused(tmp_path: Path) -> None:
    # RFC 3207 §5: a man in the middle appends a reply to the 220; acting on it would let him
    # answer for the TLS session.  The host is given up; nothing more is sent.
    reply, seen = await _deliver(
        tmp_path, "", {b"EHLO": EHLO_REPLY, b"STARTTLS": b"220 2.0.0 go ahead\r\n250 2.0.0 injected\r\n"}
    )
    (result,) = reply.results
    assert result.status == "temp" and "data after the 220 to STARTTLS" in result.reply.text
    assert b"MAIL" not in seen


async def test_encrypt_without_starttls_never_sends_mail(tmp_path: Path) -> None:
    no_tls = b"250-sink.test\r\n250 PIPELINING\r\n"
    reply, seen = await _deliver(tmp_path, "tls_requirements = encrypt;", {b"EHLO": no_tls})
    (result,) = reply.results
    assert result.status == "temp" and result.reply.enhanced == "4.7.5"
    assert result.reply.text == "TLS requirements not met: no TLS offered but tls_requirements=encrypt"
    assert b"MAIL" not in seen and seen[-1] == b"QUIT"


async def test_refused_starttls_at_level_may_goes_on_in_plaintext(tmp_path: Path) -> None:
    reply, seen = await _deliver(
        tmp_path, "", {b"EHLO": EHLO_REPLY, b"STARTTLS": b"454 4.7.0 TLS not available\r\n"}
    )
    assert seen[:3] == [b"EHLO", b"STARTTLS", b"MAIL"]
    # The queue file does not exist here, so the delivery itself fails after DATA; what matters
    # is that smtpc went on in plaintext after the refusal.
    assert reply.results[0].status == "temp"


async def test_refused_starttls_at_level_encrypt_defers(tmp_path: Path) -> None:
    reply, seen = await _deliver(
        tmp_path,
        "tls_requirements = encrypt;",
        {b"EHLO": EHLO_REPLY, b"STARTTLS": b"454 4.7.0 TLS not available\r\n"},
    )
    assert reply.results[0].reply.text.startswith("TLS requirements not met: STARTTLS refused: 454")
    assert b"MAIL" not in seen


async def test_level_none_never_sends_starttls(tmp_path: Path) -> None:
    _reply, seen = await _deliver(tmp_path, "tls_requirements = none;", {b"EHLO": EHLO_REPLY})
    assert b"STARTTLS" not in seen and b"MAIL" in seen
