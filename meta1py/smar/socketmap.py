"""smar's socketmap client: ask an existing map server (sendmail's and Postfix's socketmap) for keys.

``access = socketmap:unix:/run/policy.sock:access;`` or ``socketmap:inet:127.0.0.1:8000:access``
makes smar ask that server for every access key it needs (the protocol, without I/O, is
:mod:`meta1py.maps.socketmap`).

* One persistent connection per configured socketmap, opened at the first lookup. Lookups are
  serialized on it with a lock (the protocol has no request ids: replies come in request order).
* Each lookup has a deadline (the caller's, on trio's clock). When it passes, the connection is
  closed (a late reply would answer the next request) and the lookup fails.
* A connection the server closed is opened again; when a request on a connection that had been
  idle fails before any reply byte came (the server dropped it meanwhile), it is sent once more on
  a new connection, within the same deadline.
* Every failure -- cannot connect, timeout, ``TEMP``, ``TIMEOUT``, ``PERM``, a reply that breaks
  the protocol or is over 100,000 bytes -- raises :class:`~meta1py.maps.errors.MapTempError`: the
  policy cannot be decided, the mail gets a temporary failure, and a WARNING is logged.
  (A ``PERM`` reply is a broken server, not a verdict on the mail.)
"""

from __future__ import annotations

import logging

import trio

from meta1py.maps.errors import MapTempError
from meta1py.maps.socketmap import (
    DEFAULT_MAX_REPLY_BYTES,
    Reply,
    ReplyDecoder,
    SocketmapProtocolError,
    encode_request,
)

__all__ = ["SocketmapClient"]

log = logging.getLogger(__name__)

_RECEIVE_BYTES = 65536


class SocketmapClient:
    """A client of one map on one socketmap server.

    Args:
        name: the map's name on the server.
        unix_path: the server's Unix socket, or
        inet_address: its ``(host, port)``.
        max_reply_bytes: the longest reply accepted.
    """

    def __init__(
        self,
        name: str,
        *,
        unix_path: str | None = None,
        inet_address: tuple[str, int] | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        if (unix_path is None) == (inet_address is None):
            raise ValueError("give exactly one of unix_path and inet_address")
        encode_request(name, "")  # checks the name
        self.name = name
        self._unix_path = unix_path
        self._inet_address = inet_address
        self._max_reply_bytes = max_reply_bytes
        self._stream: trio.abc.Stream | None = None
        self._decoder = ReplyDecoder(max_reply_bytes)
        self._lock = trio.Lock()
        #: Connections opened so far (for tests and logs).
        self.connections = 0

    @property
    def where(self) -> str:
        """The server, as written in meta1.conf (``unix:/path`` or ``inet:host:port``)."""
        if self._unix_path is not None:
            return f"unix:{self._unix_path}"
        assert self._inet_address is not None
        host, port = self._inet_address
        return f"inet:{f'[{host}]' if ':' in host else host}:{port}"

    async def lookup(self, key: str, *, deadline: float) -> str | None:
        """The value of ``key`` in the server's map, or None when the server has none.

        Args:
            key: the key, as the format makes it (``from:alice@example.org``).
            deadline: when to give up, on trio's clock.

        Raises:
            MapTempError: no answer (see the module docstring).
        """
        request = encode_request(self.name, key)
        # The deadline covers the wait for the lock too. A lookup cut off in the middle of its
        # request closes the connection itself (_ask), a lookup cut off while it waited leaves it.
        with trio.move_on_at(deadline):
            async with self._lock:
                try:
                    return await self._ask(request)
                except MapTempError as exc:
                    log.warning("socketmap %s:%s: %r: %s", self.where, self.name, key, exc)
                    raise
        log.warning("socketmap %s:%s: %r: no answer before the deadline", self.where, self.name, key)
        raise MapTempError(f"socketmap {self.where}:{self.name}: no answer in time")

    async def aclose(self) -> None:
        """Close the connection (a later lookup opens a new one)."""
        async with self._lock:
            await self._close()

    async def _ask(self, request: bytes) -> str | None:
        for attempt in (1, 2):
            reused = self._stream is not None
            stream = await self._connect()
            clean = False
            try:
                try:
                    await stream.send_all(request)
                    reply = await self._receive(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, _ClosedError) as exc:
                    if reused and attempt == 1 and not self._decoder.pending:
                        # The server dropped an idle connection: once more on a new one.
                        await self._close()
                        continue
                    raise MapTempError(f"socketmap {self.where}: connection lost: {exc}") from None
                except SocketmapProtocolError as exc:
                    raise MapTempError(f"socketmap {self.where}: {exc}") from None
                clean = True
            finally:
                if not clean:
                    await self._close()
            if reply.status == "OK":
                return reply.text
            if reply.status == "NOTFOUND":
                return None
            raise MapTempError(f"socketmap {self.where}: {reply.status} {reply.text[:200]}".rstrip())
        raise AssertionError("unreachable")

    async def _connect(self) -> trio.abc.Stream:
        if self._stream is not None:
            return self._stream
        try:
            if self._unix_path is not None:
                stream: trio.abc.Stream = await trio.open_unix_socket(self._unix_path)
            else:
                assert self._inet_address is not None
                stream = await trio.open_tcp_stream(*self._inet_address)
        except OSError as exc:
            raise MapTempError(f"socketmap {self.where}: cannot connect: {exc.strerror or exc}") from None
        self._stream = stream
        self._decoder = ReplyDecoder(self._max_reply_bytes)
        self.connections += 1
        return stream

    async def _receive(self, stream: trio.abc.Stream) -> Reply:
        while True:
            reply = self._decoder.next_reply()
            if reply is not None:
                if self._decoder.pending:
                    # Bytes after the reply answer nothing we asked: the stream is out of step.
                    raise SocketmapProtocolError("unexpected bytes after the reply")
                return reply
            if self._decoder.eof:
                raise _ClosedError("the server closed the connection")
            self._decoder.receive_data(await stream.receive_some(_RECEIVE_BYTES))

    async def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)


class _ClosedError(Exception):
    """The server closed the connection before a whole reply."""
