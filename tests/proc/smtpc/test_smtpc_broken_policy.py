"""A bad tls_policy line defers the recipients under its key, and only them (issue 19)."""

from __future__ import annotations

from pathlib import Path

import trio

from meta1py.conf import parse_config
from meta1py.queue.content import ContentWriter
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py_testing.jobs import delivery_request, loopback_route, serve_on_loopback


class _Sink:
    """A plain SMTP server that records the RCPT TO lines it accepted."""

    def __init__(self) -> None:
        self.rcpts: list[bytes] = []

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 sink.test ESMTP\r\n")
            buffer, in_data = b"", False
            while data := await stream.receive_some(4096):
                buffer += data
                while True:
                    if in_data:
                        end = buffer.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        buffer, in_data = buffer[end + 5 :], False
                        await stream.send_all(b"250 2.0.0 queued\r\n")
                        continue
                    if b"\r\n" not in buffer:
                        break
                    line, buffer = buffer.split(b"\r\n", 1)
                    verb = line.split(b" ", 1)[0].upper()
                    if verb == b"RCPT":
                        self.rcpts.append(line)
                    if verb == b"DATA":
                        in_data = True
                        await stream.send_all(b"354 go on\r\n")
                    elif verb == b"QUIT":
                        await stream.send_all(b"221 bye\r\n")
                        return
                    else:
                        await stream.send_all(b"250 sink.test\r\n")


async def test_a_broken_policy_entry_defers_its_recipients_only(tmp_path: Path) -> None:
    (tmp_path / "tls_policy").write_text("broken.test encrypt; bogus\n* none\n")
    cfg = parse_config(f"queue_directory = {tmp_path};\nsmtpc {{ tls_policy = tls_policy; }}\n")
    writer = ContentWriter(tmp_path)
    writer.write(b"Subject: policy\r\n\r\nbody\r\n")
    writer.close_unsynced()
    agents = DeliveryAgents(cfg)
    sink = _Sink()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agents.nursery = nursery
            port = await serve_on_loopback(nursery, sink.serve)
            # A relayhost job: one destination, recipients of two domains.
            rcpts = ["x@broken.test", "y@fine.test"]
            req = delivery_request(writer.qid, loopback_route(port), rcpts, size=25)
            reply = await agents.handle(req)
            nursery.cancel_scope.cancel()
    broken, fine = reply.results
    assert (broken.status, broken.reply.code, broken.reply.enhanced) == ("temp", 451, "4.3.5")
    assert "tls_policy:1:" in broken.reply.text
    assert (fine.status, fine.reply.code) == ("ok", 250)
    # Only the good recipient went out, and the destination is not blamed for the bad line.
    assert sink.rcpts == [b"RCPT TO:<y@fine.test>"]
    assert not reply.session_failed
