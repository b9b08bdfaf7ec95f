"""RPC between meta1py processes: typed, schema-checked messages over Unix stream sockets.

* `meta1py.rpc.codec`: the wire format (length-prefixed JSON frames), sans-IO.
* `meta1py.rpc.schema`: message registration and strict validation, sans-IO.
* `meta1py.rpc.messages`: every message, with its sender and receiver.
* `meta1py.rpc.channel`: the trio connection (`RpcChannel`), `serve_unix`, `connect_unix`,
  `RpcClient`.
* `meta1py.rpc.caller`: `Caller` and `Notifier`, what a process needs of a peer (typed calls).
* `meta1py.rpc.handlers`: `Handlers`, the answers a process serves, registered by request type.
* `meta1py.rpc.doc`: ``python -m meta1py.rpc.doc docs/rpc.md`` regenerates the message table.

See ``docs/rpc.md``.
"""

from typing import TYPE_CHECKING

from meta1py.lazyexports import lazy_exports

if TYPE_CHECKING:
    from meta1py.rpc.caller import Caller, Notifier
    from meta1py.rpc.channel import (
        Handler,
        RpcChannel,
        RpcClient,
        connect_unix,
        open_channel_pair,
        serve_unix,
        unix_listener_from_fd,
    )
    from meta1py.rpc.codec import DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder, decode_frame, encode_frame
    from meta1py.rpc.errors import (
        RpcEncodeError,
        RpcError,
        RpcPeerGoneError,
        RpcProtocolError,
        RpcRemoteError,
        RpcTimeoutError,
    )
    from meta1py.rpc.handlers import Handlers
    from meta1py.rpc.schema import RpcMessage, RpcRequest, caps, rpc_message, rpc_struct

# The package names load their module on first use (PEP 562): importing meta1py.rpc.messages or
# the codec must not import trio with the channel (mcp imports the messages before trio).
_LAZY = {
    "Caller": "meta1py.rpc.caller",
    "DEFAULT_MAX_FRAME_BYTES": "meta1py.rpc.codec",
    "Frame": "meta1py.rpc.codec",
    "FrameDecoder": "meta1py.rpc.codec",
    "Handler": "meta1py.rpc.channel",
    "Handlers": "meta1py.rpc.handlers",
    "Notifier": "meta1py.rpc.caller",
    "RpcChannel": "meta1py.rpc.channel",
    "RpcClient": "meta1py.rpc.channel",
    "RpcEncodeError": "meta1py.rpc.errors",
    "RpcError": "meta1py.rpc.errors",
    "RpcMessage": "meta1py.rpc.schema",
    "RpcPeerGoneError": "meta1py.rpc.errors",
    "RpcProtocolError": "meta1py.rpc.errors",
    "RpcRemoteError": "meta1py.rpc.errors",
    "RpcRequest": "meta1py.rpc.schema",
    "RpcTimeoutError": "meta1py.rpc.errors",
    "caps": "meta1py.rpc.schema",
    "connect_unix": "meta1py.rpc.channel",
    "decode_frame": "meta1py.rpc.codec",
    "encode_frame": "meta1py.rpc.codec",
    "open_channel_pair": "meta1py.rpc.channel",
    "rpc_message": "meta1py.rpc.schema",
    "rpc_struct": "meta1py.rpc.schema",
    "serve_unix": "meta1py.rpc.channel",
    "unix_listener_from_fd": "meta1py.rpc.channel",
}


__getattr__ = lazy_exports("meta1py.rpc", _LAZY, globals())


__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Caller",
    "Frame",
    "FrameDecoder",
    "Handler",
    "Handlers",
    "Notifier",
    "RpcChannel",
    "RpcClient",
    "RpcEncodeError",
    "RpcError",
    "RpcMessage",
    "RpcPeerGoneError",
    "RpcProtocolError",
    "RpcRemoteError",
    "RpcRequest",
    "RpcTimeoutError",
    "caps",
    "connect_unix",
    "decode_frame",
    "encode_frame",
    "open_channel_pair",
    "rpc_message",
    "rpc_struct",
    "serve_unix",
    "unix_listener_from_fd",
]
