"""TLS building blocks shared by smtps and smtpc.

Modules:

- :mod:`meta1py.tls.requirements`: smtpc's ``tls_requirements`` value and its text syntax. Pure (no
  ``ssl``, ``ctypes`` or trio), so :mod:`meta1py.conf` imports it at the top.
- :mod:`meta1py.tls.hook`: peer-chain access, the OpenSSL verify callback that lets smtps request a
  client certificate without enforcing it, and records the chain (why and how: its docstring).
- :mod:`meta1py.tls.contexts`: settings, and the ``ssl.SSLContext`` objects built from them.
- :mod:`meta1py.tls.facts`: what a finished handshake was, for the log and the ``Received:`` header.
- :mod:`meta1py.tls.checks`: judging smtpc's handshake against the destination's requirements.

The public names of those modules can also be imported from here (``from meta1py.tls import
server_context``). They are loaded on first access, so importing only the requirements does not pull in
``ssl`` and ``ctypes``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meta1py.tls.checks import check_requirements
    from meta1py.tls.contexts import (
        DEFAULT_VERIFY_DEPTH,
        ClientTlsSettings,
        ReloadableServerContext,
        ServerTlsSettings,
        TlsConfigError,
        client_context,
        context_for_requirements,
        parse_protocols,
        server_context,
    )
    from meta1py.tls.facts import MAX_FACT_CHARS, TlsFacts, fingerprint_sha256, received_clause, tls_facts
    from meta1py.tls.hook import hook_available, peer_chain
    from meta1py.tls.requirements import (
        TLS_LEVELS,
        TlsRequirements,
        format_tls_requirements,
        normalise_fingerprint,
        parse_tls_requirements,
    )

#: Public name -> the module of this package that defines it.
_WHERE: dict[str, str] = {
    "check_requirements": "checks",
    **dict.fromkeys(
        (
            "DEFAULT_VERIFY_DEPTH",
            "ClientTlsSettings",
            "ReloadableServerContext",
            "ServerTlsSettings",
            "TlsConfigError",
            "client_context",
            "context_for_requirements",
            "parse_protocols",
            "server_context",
        ),
        "contexts",
    ),
    **dict.fromkeys(
        ("MAX_FACT_CHARS", "TlsFacts", "fingerprint_sha256", "received_clause", "tls_facts"), "facts"
    ),
    **dict.fromkeys(("hook_available", "peer_chain"), "hook"),
    **dict.fromkeys(
        (
            "TLS_LEVELS",
            "TlsRequirements",
            "format_tls_requirements",
            "normalise_fingerprint",
            "parse_tls_requirements",
        ),
        "requirements",
    ),
}

__all__ = [
    "DEFAULT_VERIFY_DEPTH",
    "MAX_FACT_CHARS",
    "TLS_LEVELS",
    "ClientTlsSettings",
    "ReloadableServerContext",
    "ServerTlsSettings",
    "TlsConfigError",
    "TlsFacts",
    "TlsRequirements",
    "check_requirements",
    "client_context",
    "context_for_requirements",
    "fingerprint_sha256",
    "format_tls_requirements",
    "hook_available",
    "normalise_fingerprint",
    "parse_protocols",
    "parse_tls_requirements",
    "peer_chain",
    "received_clause",
    "server_context",
    "tls_facts",
]


def __getattr__(name: str) -> object:
    """Load the module that defines ``name`` on first access (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
