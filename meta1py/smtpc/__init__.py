"""smtpc: the meta1py delivery agents.

NAME
    smtpc -- delivers queued messages over SMTP, LMTP, into Maildir, or to aliases(5) commands
    and files.

DESCRIPTION
    smtpc receives delivery requests from qmgr (a transaction and the hosts to try, in order),
    reads the message content from the queue, delivers it (through ``relayhost`` when set), and
    reports a per-recipient result that says whether a failure is temporary or permanent. It
    limits connections per destination (``max_connections``) and in total
    (``max_connections_total``). Commands and files (``pipe`` and ``file`` routes) are run by
    its helper as the account smar named (meta1py.smtpc.local, docs/smtpc.md), and so is a
    local user's home Maildir with ``home_mailbox`` (written as the user). In test mode it
    connects nowhere: every SMTP and LMTP session goes to a captured destination in memory, and
    what it accepts is written to ``<queue_directory>/test/messages`` (meta1py.smtpc.captured).

SECURITY
    Runs as the ``smtpc`` section's user (``meta1c``) when mcp is root. It reads content files
    but never writes the envelope store; it treats remote servers' replies as untrusted input:
    a malformed one (bare LF, NUL, bad code, a line past 2,048 bytes) is a temporary failure
    (``451 4.5.0 malformed reply from HOST: ...``), and at most ``mx_session_limit`` hosts that
    answer are tried for one delivery. When ``allow_mail_to_commands``, ``allow_mail_to_files``
    or ``home_mailbox`` is set, its ``prepare`` step (still root) starts the helper
    meta1py.smtpc.runas, which stays root to run commands, file and home Maildir deliveries as
    their users (never root, never a worker account); smtpc formats the message for it and
    never gains a privilege itself.

PEERS
    Serves ``smtpc.sock`` (client: qmgr, which sends the deliveries and gets the results as the
    replies, and asks for smtpc's counters and recent errors with ``WorkerStatsRequest``); smtpc
    itself calls no other worker. Message names are in docs/rpc.md. Talks to its helper over a
    private socketpair (JSON requests with the message attached as a memfd).

DIAGNOSTICS
    Log lines ``meta1py/smtpc[PID]: ...``. Exit statuses as every worker: 0, 1 crash (mcp
    restarts it), 64, 77, 78.
"""
