"""qmgr: the meta1py queue manager.

NAME
    qmgr -- owns the envelopes of queued mail: commits, schedules, retries, bounces.

DESCRIPTION
    qmgr is the only process that writes the envelope store (``envelopes.sqlite`` in the queue
    directory, group-committed). smtps hands it each accepted transaction and waits for the
    commit that covers it before answering 250. qmgr asks smar where each recipient goes, asks
    smtpc to deliver, records per-recipient results, retries temporary failures between
    ``retry_min`` and ``retry_max``, and bounces after ``queue_lifetime``. It removes content
    files once every recipient has a final state. On start it recovers what a crash left. At
    start and every ``pickup_interval`` it queues the messages ``meta1 sendmail`` left in
    ``queue_directory/pickup`` while smtps could not take them (:mod:`meta1py.qmgr.pickup`).

SECURITY
    Runs as the ``qmgr`` section's user (``meta1q``) when mcp is root; owns the queue directory.
    It trusts nothing it receives over RPC beyond the schema-checked message types: a
    compromised smtps can only submit transactions, not rewrite the queue. Pickup files are
    written by local users (through the setgid ``meta1-postdrop``): qmgr reads each as hostile
    input, with capped sizes and smtps's parsers, and moves what is not a message to
    ``queue_directory/corrupt``.

    With ``metrics { listen }`` it also answers ``GET /metrics`` (Prometheus) on the socket mcp
    bound for it: its own counters, smtps's reports, smar's and smtpc's counters (asked for as
    the page is made), the queue by state and mcp's status file (docs/qmgr.md, "Metrics").

    In test mode (``test_mode { enable }``) it serves the control API and web page over HTTP on
    ``test_mode { listen }`` (:mod:`meta1py.qmgr.testserver`, docs/testmode.md).

PEERS
    Serves ``qmgr.sock`` (clients: smtps, which also sends ``QueueStatsReport``; the
    ``meta1 queue``, ``meta1 status`` and ``meta1 monitor`` CLIs). Client of ``smar.sock``
    (routing) and ``smtpc.sock`` (delivery), and of both for ``WorkerStatsRequest``. Message
    names are in docs/rpc.md. The metrics endpoint is HTTP/1.x, GET and HEAD of /metrics only.

DIAGNOSTICS
    Log lines ``meta1py/qmgr[PID]: ...``; one maillog line per message state change (queued,
    delivered, deferred, bounced, and requeued when smtpc went away during a delivery: no attempt
    is counted and it is tried again as soon as qmgr is connected to smtpc again). Exit
    statuses as every worker: 0, 1 crash (mcp restarts it), 64, 77, 78.
"""
