"""smtps: the meta1py SMTP server.

NAME
    smtps -- accepts mail over ESMTP on the listening sockets mcp binds.

DESCRIPTION
    smtps serves every ``listen_socket`` of every ``smtps`` section (inherited from mcp as
    ``listen0..N`` in ``meta1py.worker.listen_sockets`` order). It speaks ESMTP through the
    sans-IO core, asks smar whether each client, sender and recipient may pass, streams message
    content to a file in the queue, and answers 250 only after qmgr committed the transaction to
    stable storage. On shutdown it stops accepting and ends open sessions with
    ``421 4.3.2 Service shutting down``.

SECURITY
    Runs as the ``smtps`` section's user (``meta1s``) when mcp is root. It is the process that
    reads untrusted network input; it can only write content files and ask qmgr to commit, never
    change the queue otherwise. Peer data is logged repr()'d and truncated; AUTH data never.

PEERS
    Client of ``smar.sock`` (policy) and ``qmgr.sock`` (commits). Message names are in
    docs/rpc.md.

DIAGNOSTICS
    Log lines ``meta1py/smtps[PID]: ...`` with a session id; maillog ``rejected`` lines. Exit
    statuses as every worker: 0, 1 crash (mcp restarts it), 64, 77, 78.
"""
