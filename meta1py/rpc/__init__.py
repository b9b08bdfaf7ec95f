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
