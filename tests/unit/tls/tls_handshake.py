"""A synchronous TLS handshake over memory BIOs: real OpenSSL on both sides, no sockets, no event loop."""

from __future__ import annotations

import dataclasses
import ssl


@dataclasses.dataclass
class Handshake:
    """Both ends of a finished (or failed) handshake."""

    server: ssl.SSLObject
    client: ssl.SSLObject
    server_error: ssl.SSLError | None = None
    client_error: ssl.SSLError | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> Handshake:
    """Run a handshake between two contexts, pumping bytes until both finish or one fails."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    client = client_context.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    result = Handshake(server, client)
    done = {"server": False, "client": False}
    for _ in range(50):
        for name, obj in (("client", client), ("server", server)):
            if done[name] or getattr(result, f"{name}_error") is not None:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                setattr(result, f"{name}_error", exc)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if (done["server"] or result.server_error) and (done["client"] or result.client_error):
            break
    # TLS 1.3: the client finishes first; the server's view of the client certificate is complete
    # once it has processed the client's Finished, which the loop above delivers.
    return result
