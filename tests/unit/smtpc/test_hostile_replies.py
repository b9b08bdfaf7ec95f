"""smtpc against hostile servers (issue 16): malformed replies defer, mx_session_limit bounds sessions.

A scripted loopback server answers each command from a table and records what it got.
"""

from __future__ import annotations

from pathlib import Path

import trio

from meta1py.conf import parse_config
from meta1py.queue.ids import new_queue_id
from meta1py.rpc.messages import (
    SmarHostValue,
    SmarRouteValue,
    SmtpcDeliveryReply,
)
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py_testing.jobs import delivery_request, serve_on_loopback
from meta1py_testing.peers import free_port


async def _serve(stream: trio.SocketStream, script: dict[bytes, bytes], seen: list[bytes]) -> None:
    """Answer each command line with ``script[verb]`` (default 250) until QUIT or EOF."""
    seen.append(b"CONNECT")
    async with stream:
        try:
            await stream.send_all(script.get(b"GREETING", b"220 sink.test ESMTP\r\n"))
            buffer = b""
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buffer += data
                while b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    verb = line.split(b" ", 1)[0].upper()
                    seen.append(verb)
                    await stream.send_all(script.get(verb, b"250 2.0.0 ok\r\n"))
                    if verb == b"QUIT":
                        return
        except trio.BrokenResourceError:
            return


async def _deliver(
    tmp_path: Path, smtpc: str, script: dict[bytes, bytes], hosts: int = 1, dead_first: bool = False
) -> tuple[SmtpcDeliveryReply, list[bytes]]:
    seen: list[bytes] = []
    cfg = parse_config(f"queue_directory = {tmp_path};\nsmtpc {{ {smtpc} }}\n")
    agents = DeliveryAgents(cfg)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await serve_on_loopback(nursery, lambda s: _serve(s, script, seen))
            values = [SmarHostValue(name=f"mx{i}.test", address="127.0.0.1", port=port) for i in range(hosts)]
            if dead_first:
                dead = free_port("127.0.0.1")
                values.insert(0, SmarHostValue(name="dead.test", address="127.0.0.1", port=dead))
            route = SmarRouteValue(
                status="ok",
                transport="smtp",
                destination="smtp:hostile.test",
                hosts=tuple(values),
                path=None,
                reply=None,
            )
            req = delivery_request(new_queue_id(), route, ["x@hostile.test"])
            reply = await agents.deliver(req)
            nursery.cancel_scope.cancel()
    return reply, seen


async def test_bare_lf_reply_to_mail_is_a_temporary_failure(tmp_path: Path) -> None:
    reply, seen = await _deliver(tmp_path, "", {b"MAIL": b"250 2.1.0 ok\n"})
    (result,) = reply.results
    assert result.status == "temp"
    assert (result.reply.code, result.reply.enhanced) == (451, "4.5.0")
    assert result.reply.text.startswith("malformed reply from mx0.test[127.0.0.1]:")
    assert "bare LF" in result.reply.text
    # Nothing more is said to a server that sent garbage: no RCPT, no QUIT.
    assert b"RCPT" not in seen and b"QUIT" not in seen


async def test_malformed_greeting_leaves_the_host(tmp_path: Path) -> None:
    reply, seen = await _deliver(tmp_path, "", {b"GREETING": b"220 o\x00k\r\n"})
    (result,) = reply.results
    assert result.status == "temp" and result.reply.code == 451 and "NUL" in result.reply.text
    assert seen == [b"CONNECT"]


async def test_mx_session_limit_stops_after_two_sessions(tmp_path: Path) -> None:
    # Four hosts that all answer MAIL with 451, the first address refusing connections: the
    # refused connection does not count, two sessions do, and the last two hosts are not tried.
    script = {b"MAIL": b"451 4.3.0 try later\r\n"}
    reply, seen = await _deliver(tmp_path, "", script, hosts=4, dead_first=True)
    (result,) = reply.results
    assert result.status == "temp"
    assert seen.count(b"CONNECT") == 2
    reply, seen = await _deliver(tmp_path, "mx_session_limit = 3;", script, hosts=4, dead_first=True)
    assert seen.count(b"CONNECT") == 3
