"""smtpc: the meta1py delivery agents.

NAME
    smtpc -- delivers queued messages over SMTP, LMTP, or into Maildir.

DESCRIPTION
    smtpc receives delivery requests from qmgr (a transaction and the hosts to try, in order),
    reads the message content from the queue, delivers it (through ``relayhost`` when set), and
    reports a per-recipient result that says whether a failure is temporary or permanent. It
    limits connections per destination (``max_connections``) and in total
    (``max_connections_total``).

SECURITY
    Runs as the ``smtpc`` section's user (``meta1c``) when mcp is root. It reads content files
    but never writes the envelope store; it treats remote servers' replies as untrusted input:
    a malformed one (bare LF, NUL, bad code, a line past 2,048 bytes) is a temporary failure
    (``451 4.5.0 malformed reply from HOST: ...``), and at most ``mx_session_limit`` hosts that
    answer are tried for one delivery.

PEERS
    Serves ``smtpc.sock`` (client: qmgr, which sends the deliveries and gets the results as the
    replies); smtpc itself calls no other worker. Message names are in docs/rpc.md.

DIAGNOSTICS
    Log lines ``meta1py/smtpc[PID]: ...``. Exit statuses as every worker: 0, 1 crash (mcp
    restarts it), 64, 77, 78.
"""
