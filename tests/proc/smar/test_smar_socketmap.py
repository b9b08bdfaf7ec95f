"""smar's socketmap client against real socketmap servers on loopback (meta1py.smar.socketmap),
and the router's access_source over a sequence with a socketmap."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from meta1py.conf import parse_config
from meta1py.maps import BrokenEntry, MapTempError
from meta1py.maps.access import AccessResult, keys_for
from meta1py.maps.socketmap import NetstringDecoder, Reply, encode_reply, parse_request
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Router
from meta1py.smar.socketmap import SocketmapClient

VALUES = {"from:a@b.test": "REJECT", "from:b.test": "RELAY", "to:abuse@": "QUICK:OK", "to:bad@": "NOPE"}

# What the server does for a key (anything else: OK or NOTFOUND from VALUES).
Behaviour = Callable[[str], "bytes | None"]


def special(key: str) -> bytes | None:
    """The test server's misbehaviours, chosen by the key."""
    if key == "from:temp@b.test":
        return encode_reply(Reply("TEMP", "database down"))
    if key == "from:timeout@b.test":
        return encode_reply(Reply("TIMEOUT", "backend slow"))
    if key == "from:perm@b.test":
        return encode_reply(Reply("PERM", "no such map"))
    if key == "from:garbage@b.test":
        return b"this is not a netstring,"
    if key == "from:huge@b.test":
        return encode_reply(Reply("OK", "x" * 200_000))
    return None


class Server:
    """A socketmap server written for the test: one task per connection."""

    def __init__(self, *, close_after_reply: bool = False) -> None:
        self.close_after_reply = close_after_reply
        self.asked: list[tuple[str, str]] = []
        self.connections = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            await self._serve(stream)
        except trio.BrokenResourceError:
            pass  # the client hung up on a reply it refused (too long): that is its right

    async def _serve(self, stream: trio.abc.Stream) -> None:
        decoder = NetstringDecoder()
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                decoder.receive_data(data)
                while (payload := decoder.next_payload()) is not None:
                    name, key = parse_request(payload)
                    self.asked.append((name, key))
                    if key == "from:silent@b.test":
                        await trio.sleep_forever()  # never answers: the client's deadline passes
                    reply = special(key)
                    if reply is None:
                        value = VALUES.get(key)
                        reply = encode_reply(Reply("NOTFOUND") if value is None else Reply("OK", value))
                    await stream.send_all(reply)
                    if self.close_after_reply:
                        return
                if not data:
                    return


async def start_tcp(nursery: trio.Nursery, server: Server) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def start_unix(nursery: trio.Nursery, server: Server, path: Path) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    await nursery.start(trio.serve_listeners, server.handle, [trio.SocketListener(sock)])


def soon(seconds: float = 5.0) -> float:
    return trio.current_time() + seconds


async def test_lookups_over_one_persistent_tcp_connection() -> None:
    server = Server()
    async with trio.open_nursery() as nursery:
        port = await start_tcp(nursery, server)
        client = SocketmapClient("access", inet_address=("127.0.0.1", port))
        assert await client.lookup("from:a@b.test", deadline=soon()) == "REJECT"
        assert await client.lookup("from:nobody@b.test", deadline=soon()) is None
        assert await client.lookup("to:abuse@", deadline=soon()) == "QUICK:OK"
        assert server.connections == 1 and client.connections == 1
        assert server.asked[0] == ("access", "from:a@b.test")
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_unix_socket_server(tmp_path: Path) -> None:
    server = Server()
    async with trio.open_nursery() as nursery:
        await start_unix(nursery, server, tmp_path / "map.sock")
        client = SocketmapClient("access", unix_path=str(tmp_path / "map.sock"))
        assert await client.lookup("from:b.test", deadline=soon()) == "RELAY"
        await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("from:temp@b.test", "TEMP database down"),
        ("from:timeout@b.test", "TIMEOUT backend slow"),
        ("from:perm@b.test", "PERM no such map"),
        ("from:garbage@b.test", "not a netstring"),
        ("from:huge@b.test", "over the limit of 100000"),
    ],
)
async def test_failures_are_temporary_and_the_next_lookup_works(key: str, message: str) -> None:
    server = Server()
    async with trio.open_nursery() as nursery:
        port = await start_tcp(nursery, server)
        client = SocketmapClient("access", inet_address=("127.0.0.1", port))
        with pytest.raises(MapTempError, match=message):
            await client.lookup(key, deadline=soon())
        # A broken reply closes the connection (its state is unknown); a status reply keeps it.
        assert await client.lookup("from:a@b.test", deadline=soon()) == "REJECT"
        assert client.connections == (2 if "netstring" in message or "limit" in message else 1)
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_server_that_does_not_answer_times_out() -> None:
    server = Server()
    async with trio.open_nursery() as nursery:
        port = await start_tcp(nursery, server)
        client = SocketmapClient("access", inet_address=("127.0.0.1", port))
        started = trio.current_time()
        with pytest.raises(MapTempError, match="no answer in time"):
            await client.lookup("from:silent@b.test", deadline=started + 0.3)
        assert trio.current_time() - started < 5
        # The connection was closed (a late reply would answer the next request): a new one.
        assert await client.lookup("from:a@b.test", deadline=soon()) == "REJECT"
        assert client.connections == 2
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_no_server_and_a_deadline_already_past() -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        client = SocketmapClient("access", inet_address=("127.0.0.1", port))
        with pytest.raises(MapTempError, match="cannot connect"):
            await client.lookup("from:a@b.test", deadline=soon())
    with pytest.raises(MapTempError):
        await client.lookup("from:a@b.test", deadline=trio.current_time() - 1)


async def test_a_server_that_closes_idle_connections() -> None:
    """Postfix's and sendmail's servers may drop a connection between requests: asked again."""
    server = Server(close_after_reply=True)
    async with trio.open_nursery() as nursery:
        port = await start_tcp(nursery, server)
        client = SocketmapClient("access", inet_address=("127.0.0.1", port))
        for _ in range(3):
            assert await client.lookup("from:a@b.test", deadline=soon()) == "REJECT"
        assert server.connections == 3
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_concurrent_lookups_share_the_connection_in_turn() -> None:
    server = Server()
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        port = await start_tcp(nursery, server)
        client = SocketmapClient("access", inet_address=("127.0.0.1", port))

        async def ask(key: str) -> None:
            results[key] = await client.lookup(key, deadline=soon())

        async with trio.open_nursery() as inner:
            for key in ["from:a@b.test", "from:b.test", "to:abuse@", "from:x@y.test"] * 5:
                inner.start_soon(ask, key)
        assert results == {
            "from:a@b.test": "REJECT",
            "from:b.test": "RELAY",
            "to:abuse@": "QUICK:OK",
            "from:x@y.test": None,
        }
        assert client.connections == 1
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_the_routers_access_source_over_a_sequence(tmp_path: Path) -> None:
    (tmp_path / "access.local").write_text("from:a@b.test OK\n")
    server = Server()
    async with trio.open_nursery() as nursery:
        port = await start_tcp(nursery, server)
        cfg = parse_config(
            f'queue_directory = "{tmp_path}"; local_domains = {{ example.com }};'
            f" smar {{ access = {{ access.local, socketmap:inet:127.0.0.1:{port}:access }}; }}"
        )
        router = Router(cfg, Resolver.from_config(cfg.smar))
        assert router.access_source is not None
        keys = [
            *keys_for("from", "a@b.test"),
            *keys_for("to", "abuse@example.com"),
            *keys_for("to", "bad@x.test"),
        ]
        snap = await router.access_source.snapshot(keys, deadline=soon())
        assert snap.get("from:a@b.test") == AccessResult("ok")  # the text map first
        match = snap.lookup("from", "a@b.test")
        assert match is not None and match.key == "from:a@b.test"
        match = snap.lookup("to", "abuse@example.com")
        assert match is not None and str(match.value) == "QUICK:OK"
        broken = snap.get("to:bad@")
        assert isinstance(broken, BrokenEntry)  # the server's value does not parse: deferred
        assert ("access", "from:a@b.test") not in server.asked
        # The synchronous view cannot wait for the server: a temporary failure, never "no entry".
        sync = router.access
        assert sync is not None and sync.get("from:a@b.test") == AccessResult("ok")
        unanswered = sync.lookup("from", "x@y.test")
        assert unanswered is not None and isinstance(unanswered.value, BrokenEntry)
        nursery.cancel_scope.cancel()


async def test_the_access_source_fails_when_the_server_is_down(tmp_path: Path) -> None:
    cfg = parse_config(
        f'queue_directory = "{tmp_path}"; smar {{ access = socketmap:unix:nothing.sock:access; }}'
    )
    router = Router(cfg, Resolver.from_config(cfg.smar))
    assert router.access_source is not None
    with pytest.raises(MapTempError, match="cannot connect"):
        await router.access_source.snapshot(["from:a@b.test"], deadline=soon())


async def test_text_and_compiled_maps_answer_at_once(tmp_path: Path) -> None:
    (tmp_path / "access").write_text("from:a@b.test REJECT\n")
    cfg = parse_config(f'queue_directory = "{tmp_path}"; smar {{ access = access; }}')
    router = Router(cfg, Resolver.from_config(cfg.smar))
    assert router.access_source is not None
    snap = await router.access_source.snapshot(["from:a@b.test"], deadline=soon())
    assert snap is router.access  # the map itself: no copy, no waiting
