"""Helpers for meta1py's tests and benchmarks: a separate, optional package (``testing/``).

It is not part of the meta1py wheel and meta1py never imports it (tests/unit/test_import_rules.py);
``scripts/install.sh test`` installs it next to meta1py, editable.

Modules:
    peers: real peers on loopback -- Postfix's smtp-sink, an aiosmtpd recording sink, Dovecot's
        LMTP service, the swaks client -- each a context manager that starts, waits until
        ready and stops the peer by pid.

Nothing is imported here: importing ``meta1py_testing`` must stay cheap and free of test-only
dependencies (aiosmtpd is imported only when a recording sink is started).
"""
