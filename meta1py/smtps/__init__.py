"""smtps: the meta1py SMTP server.

NAME
    smtps -- accepts mail over ESMTP on the listening sockets mcp binds.

DESCRIPTION
    smtps serves every ``listen_socket`` of every ``smtps`` section (inherited from mcp as
    ``listen0..N`` in ``meta1py.conf.listen_sockets`` order). It speaks ESMTP through the
    sans-IO core, streams message content to a file in the queue, and answers 250 only after
    qmgr committed the transaction to stable storage. On shutdown it stops accepting and ends
    open sessions with ``421 4.3.2 Service shutting down``.

    Policy is one ordered chain of checks per SMTP stage (connect, HELO/EHLO, MAIL, RCPT, DATA,
    end of headers, end of message) in ``meta1py.smtps.stages``; each check returns a decision
    and the session turns it into the reply (docs/smtps.md "Stages"). Built in: at MAIL, the
    submission rules (``require_auth``, ``sender_must_match_login``) and ``queue_minfree``,
    checked in smtps itself; at RCPT, smar's recipient check (a local recipient must exist,
    and relaying to other domains needs ``relay_clients`` or AUTH), cached a few seconds.
    Clients and senders are not checked by smar.

    Under load and attack (``meta1py.smtps.limits``, docs/smtps.md "Limits"): sessions and
    connections per minute are limited per client address and per /24 or /64 network, with a
    reserve of ``max_sessions`` for clients below their fair share (relay_clients exempt);
    past ``stress_threshold`` timeouts shrink and the greeting waits (a client talking first
    gets 554 5.5.1); a command line has ``command_time_limit`` and DATA ``min_data_rate``; MAIL
    gets 452 4.3.1 when the queue file system is below ``queue_minfree``.

SECURITY
    Runs as the ``smtps`` section's user (``meta1s``) when mcp is root. It is the process that
    reads untrusted network input; it can only write content files and ask qmgr to commit, never
    change the queue otherwise. Peer data is logged repr()'d and truncated; AUTH data never.

PEERS
    Client of ``smar.sock`` (``SmarRecipientCheckRequest`` at RCPT) and ``qmgr.sock``
    (``QueueEnvelopeCommitRequest`` at the end of data; ``QueueStatsReport``, its counters and
    recent errors, about once a second while they change). Message names are in docs/rpc.md.

DIAGNOSTICS
    Log lines ``meta1py/smtps[PID]: ...`` with a session id; maillog ``rejected`` lines
    (``reason=pregreet`` for a client that talked first) and ``discarded`` lines (a check
    discarded the message). Connection refusals are logged once
    per client per minute. Test builds: ``META1_TEST_CRASH=smtps:after-content`` or
    ``smtps:before-250`` (meta1py.crashpoints). Exit
    statuses as every worker: 0, 1 crash (mcp restarts it), 64, 77, 78.
"""
