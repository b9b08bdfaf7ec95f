"""Helpers for meta1py's tests, shipped with the package so that any test tier can use them.

Modules:
    peers: real peers on loopback -- Postfix's smtp-sink, an aiosmtpd recording sink, Dovecot's
        LMTP service, the swaks client -- each a context manager that starts, waits until
        ready and stops the peer by pid.

Nothing is imported here: importing ``meta1py.testing`` must stay cheap and free of test-only
dependencies (aiosmtpd is imported only when a recording sink is started).
"""
