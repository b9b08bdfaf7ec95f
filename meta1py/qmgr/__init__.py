"""qmgr: the meta1py queue manager.

NAME
    qmgr -- owns the envelopes of queued mail: commits, schedules, retries, bounces.

DESCRIPTION
    qmgr is the only process that writes the envelope store (``envelopes.sqlite`` in the queue
    directory, group-committed). smtps hands it each accepted transaction and waits for the
    commit that covers it before answering 250. qmgr asks smar where each recipient goes, asks
    smtpc to deliver, records per-recipient results, retries temporary failures between
    ``retry_min`` and ``retry_max``, and bounces after ``queue_lifetime``. It removes content
    files once every recipient has a final state. On start it recovers what a crash left.

SECURITY
    Runs as the ``qmgr`` section's user (``meta1q``) when mcp is root; owns the queue directory.
    It trusts nothing it receives over RPC beyond the schema-checked message types: a
    compromised smtps can only submit transactions, not rewrite the queue.

PEERS
    Serves ``qmgr.sock`` (clients: smtps and the ``meta1 queue`` CLI). Client of
    ``smar.sock`` (routing) and ``smtpc.sock`` (delivery). Message names are in docs/rpc.md.

DIAGNOSTICS
    Log lines ``meta1py/qmgr[PID]: ...``; one maillog line per message state change (queued,
    delivered, deferred, bounced, and requeued when smtpc went away during a delivery: no attempt
    is counted and it is tried again as soon as qmgr is connected to smtpc again). Exit
    statuses as every worker: 0, 1 crash (mcp restarts it), 64, 77, 78.
"""
