"""The socketmap protocol of sendmail and Postfix, without I/O: bytes in, replies out.

A client asks a socketmap server for one key at a time over a stream connection (Unix or TCP) that
stays open for many requests. Requests and replies are netstrings (``LENGTH:DATA,`` with LENGTH
in decimal)::

    request   NAME KEY              the map's name, one space, the key
    reply     OK VALUE              found: the value
              NOTFOUND              not found (a space may follow)
              TEMP reason           the server cannot answer now
              TIMEOUT reason        it timed out itself
              PERM reason           a permanent error of the server

See Postfix's socketmap_table(5) and sendmail's cf/README ("socket map"). A reply is refused when
it is longer than ``max_reply_bytes`` (Postfix's ``socketmap_max_reply_size``, 100,000) or is not
a netstring, not UTF-8, or not one of the five statuses: the client then closes the connection,
whose state it no longer knows. The codec keeps no other state, so a fuzzer can throw anything at
:class:`ReplyDecoder`: it either yields replies or raises :class:`SocketmapProtocolError`.

The trio client that uses this is :mod:`meta1py.smar.socketmap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "Reply",
    "ReplyDecoder",
    "SocketmapProtocolError",
    "encode_reply",
    "encode_request",
    "parse_reply",
    "parse_request",
]

#: Postfix's ``socketmap_max_reply_size``.
DEFAULT_MAX_REPLY_BYTES = 100_000

Status = Literal["OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM"]
_STATUSES: dict[str, Status] = {s: s for s in ("OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM")}


class SocketmapProtocolError(Exception):
    """The peer broke the protocol (a reply that is not a netstring, too long, an unknown status)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: its status and the text after it (the value for OK, the reason otherwise)."""

    status: Status
    text: str = ""


def _netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def encode_request(name: str, key: str) -> bytes:
    """The request for ``key`` in the server's map ``name``.

    Raises:
        ValueError: ``name`` is empty or holds white space (the server splits at the first space).
    """
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"bad socketmap name {name!r}")
    return _netstring(f"{name} {key}".encode())


def encode_reply(reply: Reply) -> bytes:
    """A reply as a server sends it (for servers and tests)."""
    return _netstring(f"{reply.status} {reply.text}".encode())


def parse_request(payload: bytes) -> tuple[str, str]:
    """A request's ``(name, key)`` (for servers and tests).

    Raises:
        SocketmapProtocolError: no space, or not UTF-8.
    """
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise SocketmapProtocolError("request is not UTF-8") from None
    name, space, key = text.partition(" ")
    if not space or not name:
        raise SocketmapProtocolError(f"request without 'NAME KEY': {text[:60]!r}")
    return name, key


def parse_reply(payload: bytes) -> Reply:
    """One reply netstring's contents as a :class:`Reply`.

    Raises:
        SocketmapProtocolError: not UTF-8, or an unknown status.
    """
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise SocketmapProtocolError("reply is not UTF-8") from None
    word, _, rest = text.partition(" ")
    status = _STATUSES.get(word)
    if status is None:
        raise SocketmapProtocolError(f"unknown reply {text[:60]!r}")
    return Reply(status, rest)


class NetstringDecoder:
    """Netstrings out of a byte stream (``receive_data`` bytes in, ``next_payload`` out).

    Args:
        max_bytes: the longest payload accepted.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> None:
        self.max_bytes = max_bytes
        self._digits = len(str(max_bytes))
        self._buffer = bytearray()
        self.eof = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the peer; ``b""`` means it closed the connection."""
        if not data:
            self.eof = True
        self._buffer += data

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished netstring are buffered."""
        return bool(self._buffer)

    def next_payload(self) -> bytes | None:
        """The next whole netstring's payload, or None when more bytes are needed.

        Raises:
            SocketmapProtocolError: the bytes are not a netstring, the length is over
                ``max_bytes``, or the peer closed the connection in the middle of one.
        """
        buf = self._buffer
        colon = buf.find(b":", 0, self._digits + 2)
        if colon < 0:
            if len(buf) > self._digits or (buf and not buf.isdigit()):
                raise SocketmapProtocolError(f"not a netstring (or one over the limit): {bytes(buf[:20])!r}")
            if self.eof and buf:
                raise SocketmapProtocolError("connection closed in the middle of a reply")
            return None
        head = bytes(buf[:colon])
        if not head.isdigit() or (len(head) > 1 and head.startswith(b"0")):
            raise SocketmapProtocolError(f"bad netstring length {head[:20]!r}")
        size = int(head)
        if size > self.max_bytes:
            raise SocketmapProtocolError(f"reply of {size} bytes is over the limit of {self.max_bytes}")
        end = colon + 1 + size
        if len(buf) <= end:
            if self.eof:
                raise SocketmapProtocolError("connection closed in the middle of a reply")
            return None
        if buf[end] != ord(","):
            raise SocketmapProtocolError("netstring does not end with ','")
        payload = bytes(buf[colon + 1 : end])
        del buf[: end + 1]
        return payload


class ReplyDecoder(NetstringDecoder):
    """Replies out of a byte stream (a client's side)."""

    def next_reply(self) -> Reply | None:
        """The next whole reply, or None when more bytes are needed.

        Raises:
            SocketmapProtocolError: see :meth:`NetstringDecoder.next_payload` and :func:`parse_reply`.
        """
        payload = self.next_payload()
        return None if payload is None else parse_reply(payload)
