"""mcp: the meta1py master control process.

NAME
    mcp -- start, supervise and stop the meta1py worker processes (``meta1 run [-f FILE]``).

DESCRIPTION
    mcp reads meta1.conf (``-f``, else ``$META1_CONF``, else /etc/meta1/meta1.conf if it exists,
    else the built-in defaults) and reports every error before doing anything else. It then
    creates and repairs the queue, content, run, mail and smar data directories as the
    ownership model says (meta1py.ownership), checks that the worker users can read Python,
    binds every smtps ``listen_socket``, the metrics endpoint (``metrics { listen }``, passed to
    qmgr) and the RPC sockets ``qmgr.sock``, ``smar.sock`` and ``smtpc.sock`` in
    ``run_directory``, writes ``mcp.pid`` there, and starts qmgr, smar, smtpc
    and smtps, each inheriting only its own descriptors: forked from a preloaded fork server
    (meta1py.mcp.forkserver), so that they share the interpreter's memory, or as a fresh
    interpreter (``python -m meta1py.<name>``) without one. It reports ``READY=1`` to
    ``$NOTIFY_SOCKET`` once every worker said it is ready.

    A worker that dies is restarted with exponential backoff (0.1 s doubling to 60 s, back to
    0.1 s after 30 s of steady running); ``restart_dependencies`` are restarted with it. mcp
    never gives up on a worker that keeps dying: the other workers keep serving meanwhile. Only
    exit status 64, 77 or 78 (usage, privileges, configuration: a restart cannot fix them) is a
    hard failure: mcp stops every worker and exits. SIGTERM/SIGINT stop the
    workers in reverse order (smtps first) and mcp exits 0. SIGHUP re-reads the configuration;
    a valid one is applied by restarting the workers one at a time while the listening sockets
    stay open, an invalid one is logged and ignored. See docs/mcp.md.

SECURITY
    mcp runs as root when started as root (to bind port 25 and create directories) and never
    reads network input. Each worker drops to its section's ``user``/``group`` itself before it
    serves (meta1py.worker), then proves it cannot regain root. Started by another user, mcp and
    all workers run as that user.

PEERS
    No RPC. Workers get their descriptors via ``META1_FDS``, the config on stdin, a ready pipe
    and a lifeline pipe (EOF: mcp died). mcp talks to systemd with sd_notify datagrams
    (READY=1, RELOADING=1, STOPPING=1, STATUS=...), and writes ``run_directory/mcp.status``
    (the workers' pids, start times and restarts, its own recent errors) for qmgr and
    ``meta1 status``; it reads nothing back.

DIAGNOSTICS
    Log lines ``meta1py/mcp[PID]: LEVEL: ...`` on stderr (or syslog with ``--syslog``);
    ``log_format = json`` or ``postfix`` changes the layout of every process's lines
    (docs/logs.md).
    Exit statuses: 0 clean stop; 1 a worker could not be started; 64 usage error (mcp
    or a worker); 71 a socket, directory or pid file could not be set up (the message names the
    address or path); 77 a worker could not drop privileges; 78 configuration error.
"""
