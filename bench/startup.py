"""Start-up benchmark: from ``meta1 run`` to the first ``220`` greeting, and to a stopped MTA.

Usage (from the repository root, as any user)::

    .venv/bin/python bench/startup.py [--runs N] [--python PATH]

Each run writes a minimal configuration into a fresh temporary directory (queue and Maildir there,
a free loopback port, no TLS; as root the workers run as the users of ``meta1 setup``, otherwise as
the invoking user), starts
``python -m meta1py run -f FILE`` and connects to the port again and again until a connection gets
the ``220`` greeting. It prints, per run and as medians over the runs:

- ``220``: seconds from starting the process to the first byte of the greeting;
- ``imports``: seconds ``python -c "import meta1py.mcp.main"`` takes on its own (the floor that lazy
  imports attack);
- ``stop``: seconds from SIGTERM to the process's exit.

The goal of the operator issue: the first 220 in under 0.3 s (median). Every process the script
starts is stopped by pid; the temporary directories are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def greeting(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(4).startswith(b"220")
    return False


def one_run(python: str) -> tuple[float, float]:
    """Seconds to the first 220, and seconds from SIGTERM to exit."""
    work = Path(tempfile.mkdtemp(prefix="meta1-startup-"))
    work.chmod(0o755)  # as root, the workers (meta1q, ...) must reach the queue inside
    try:
        port = free_port()
        conf = work / "meta1.conf"
        conf.write_text(
            f"queue_directory = {work / 'queue'};\nmail_directory = {work / 'mail'};\n"
            f"smtps {{ listen_socket {{ address = 127.0.0.1; port = {port}; }} }}\n"
        )
        # As an installed MTA runs: with its bytecode cached (a shell may disable that).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        started = time.monotonic()
        proc = subprocess.Popen(
            [python, "-m", "meta1py", "run", "-f", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=work,
        )
        try:
            while not greeting(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"meta1 run exited with {proc.returncode} before the greeting")
                if time.monotonic() - started > DEADLINE_S:
                    raise RuntimeError("no greeting within the deadline")
                time.sleep(0.002)
            ready = time.monotonic() - started
        finally:
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return ready, time.monotonic() - stopping
    finally:
        shutil.rmtree(work, ignore_errors=True)
        # The next run starts on a quiet disk, as a first start in a fresh container does (not
        # behind the journal of this run's thousand directories).
        os.sync()


def import_time(python: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.monotonic()
    subprocess.run([python, "-c", "import meta1py.mcp.main"], check=True, env=env)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run meta1 with")
    args = parser.parse_args()
    who = "root: production mode, the worker users of meta1 setup" if os.geteuid() == 0 else "one user"
    print(f"running as {who}", flush=True)
    readies, stops, imports = [], [], []
    for n in range(args.runs):
        ready, stop = one_run(args.python)
        imported = import_time(args.python)
        readies.append(ready)
        stops.append(stop)
        imports.append(imported)
        print(
            f"run {n + 1:2}: 220 after {ready:.3f} s, stop {stop:.3f} s, imports {imported:.3f} s", flush=True
        )
    print(
        f"median over {args.runs} runs: 220 after {statistics.median(readies):.3f} s"
        f" (min {min(readies):.3f}, max {max(readies):.3f}), stop {statistics.median(stops):.3f} s,"
        f" imports of mcp alone {statistics.median(imports):.3f} s; goal: 220 in < 0.3 s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
