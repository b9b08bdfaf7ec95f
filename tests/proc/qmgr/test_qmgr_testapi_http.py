"""The control API's HTTP server (h11 on trio) on a real loopback socket, in process."""

from __future__ import annotations

from pathlib import Path

import trio

from meta1py.qmgr.testapi import ControlApi
from meta1py.qmgr.testserver import serve_testapi
from meta1py.testmode.capture import CaptureStore


async def _exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = bytearray()
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return bytes(out)


async def test_keep_alive_errors_and_limits(tmp_path: Path) -> None:
    with trio.fail_after(20):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        api = ControlApi(tmp_path, CaptureStore(tmp_path / "messages"), None)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_testapi, listeners[0], api)
            # Two requests on one connection, then a close.
            answer = await _exchange(
                port,
                b"GET /clock HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            assert answer.count(b"HTTP/1.1 200") == 1 and b'"offset"' in answer
            assert b"HTTP/1.1 404" in answer and b'{"error": "no such route: /nope"}' in answer
            # A body with PUT, chunked.
            body = b'{"rules": []}'
            answer = await _exchange(
                port,
                b"PUT /scripts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                + f"{len(body):x}\r\n".encode()
                + body
                + b"\r\n0\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 200") and b'{"rules": []}' in answer
            # Too large, announced: 413 before the body is read.
            answer = await _exchange(
                port, b"PUT /scripts HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 413")
            # Not HTTP: 400 with a JSON error.
            answer = await _exchange(port, b"\x00\x01 garbage\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400") and b'"error"' in answer
            # The server is still there.
            answer = await _exchange(port, b"GET /queue HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503")  # no queue in this test
            nursery.cancel_scope.cancel()
