"""TLS building blocks shared by smtps and smtpc.

Modules:

- :mod:`meta1py.tls.requirements`: smtpc's ``tls_requirements`` value and its text syntax. Pure (no
  ``ssl``, ``ctypes`` or trio), so :mod:`meta1py.conf` imports it at the top.
- :mod:`meta1py.tls.hook`: peer-chain access, the OpenSSL verify callback that lets smtps request a
  client certificate without enforcing it, and records the chain (why and how: its docstring).
- :mod:`meta1py.tls.contexts`: settings, and the ``ssl.SSLContext`` objects built from them.
- :mod:`meta1py.tls.facts`: what a finished handshake was, for the log and the ``Received:`` header.
- :mod:`meta1py.tls.checks`: judging smtpc's handshake against the destination's requirements.

Import from the module that defines a name (``from meta1py.tls.contexts import server_context``):
this package imports nothing itself, so that ``conf``, which imports only the requirements, does
not pull in ``ssl`` and ``ctypes``.
"""
