"""Exceptions raised by the RPC layer.

Callers see four outcomes besides a reply: the deadline passed (`RpcTimeoutError`), the peer went
away or broke the protocol (`RpcPeerGoneError`), the peer's handler refused the request with a
declared error (`RpcRemoteError`), or bytes on the wire were not a valid frame
(`RpcProtocolError`, raised by the codec; the channel turns it into a closed connection).
`RpcEncodeError` is a local bug: a message that does not fit its own schema or the frame cap.
"""

from __future__ import annotations


class RpcError(Exception):
    """Base class of every error the RPC layer raises."""


class RpcTimeoutError(RpcError):
    """A call's deadline passed before its reply arrived."""


class RpcPeerGoneError(RpcError):
    """The connection closed (or was closed for a protocol violation) before the reply arrived.

    Callers treat this as a temporary failure: the peer is restarted by mcp and the work is retried.
    """


class RpcProtocolError(RpcError):
    """Bytes received from the peer are not a valid frame or message.

    The receiver logs it and closes the connection; a peer that breaks the protocol is not trusted
    with another frame.
    """


class RpcEncodeError(RpcError, ValueError):
    """A message to send does not match its schema, or its frame exceeds the size cap (a local bug)."""


class RpcRemoteError(RpcError):
    """The peer's handler refused the request.

    A handler raises this (or a subclass) to answer a call with an error instead of a reply; the
    caller then receives an `RpcRemoteError` with the same `code` and `message`. Any other exception
    in a handler is a bug and propagates in the handling process.

    Attributes:
        code: a short machine-readable word, e.g. ``"unsupported"``, ``"busy"``, ``"tempfail"``.
        message: human-readable text (may come from an untrusted peer: repr it when logging).
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
