"""smar: the meta1py address resolver.

NAME
    smar -- answers policy, recipient and routing questions: the access map, DNS lists,
    greylisting, aliases, routes, DNS (MX, A/AAAA, PTR).

DESCRIPTION
    smar decides whether a recipient is accepted -- the access map, the client's
    forward-confirmed name, the DNS lists and greylisting (meta1py.smar.policy), then a local
    recipient must exist after alias expansion and any other needs relay permission -- (for
    smtps, at RCPT TO, or at each stage with ``delay_checks = no``), and where a recipient
    goes -- Maildir, LMTP, SMTP hosts in MX order, or a command or file (aliases(5) targets, as
    the account that runs them) -- (for qmgr). It reads the ``aliases``,
    ``routes`` and ``access`` maps -- text files, files compiled by ``meta1 makemap``
    (``cdb:FILE``), socketmap servers (access only), or sequences of them, following every file
    as it changes -- the ``:include:`` files aliases name and, with ``forward_path``, local
    users' ``.forward`` files, and queries DNS (``nameserver``, ``DNS_timeout``), caching answers.

SECURITY
    Runs as the ``smar`` section's user (``meta1r``) when mcp is root. It reads maps (that user
    must be able to read them, compiled ones too: ``meta1 check-config`` checks as root), talks
    DNS and the configured socketmap servers (whose replies are bounded to 100,000 bytes and
    otherwise untrusted: anything that is not the protocol is a temporary failure). It enters
    the queue directory only to reach its own data directory ``smar/`` (the greylisting
    database); it never touches the queue itself. It treats DNS answers as untrusted input: a route holds at
    most ``smtpc { mx_address_limit }`` addresses (default 5), and every reply is cut to the RPC
    schema's caps (see meta1py.smar.mx and docs/smar.md). A recipient that names a command or a
    file is refused at RCPT TO; a command or file in the queue is routed only when expanding its
    origin again reaches it, so only targets of the operator's files ever run
    (meta1py.smar.router, docs/smar.md "Commands and files").

PEERS
    Serves ``smar.sock`` (clients: smtps, qmgr; qmgr also asks for smar's recent errors with
    ``WorkerStatsRequest``). Message names are in docs/rpc.md. Client of the
    socketmap servers that ``access`` names (meta1py.smar.socketmap).

DIAGNOSTICS
    Log lines ``meta1py/smar[PID]: ...``. Exit statuses as every worker: 0, 1 crash (mcp restarts
    it), 64, 77, 78.
"""
