"""Start-up benchmark: from ``meta1 run`` to the first ``220`` greeting, and to a stopped MTA.

Usage (from the repository root, as any user)::

    .venv/bin/python bench/startup.py [--runs N] [--python PATH] [--test-mode [--zone-file FILE]] [--no-peer]

Each run writes a minimal configuration into a fresh temporary directory (queue and Maildir there,
a free loopback port, no TLS; as root the workers run as the users of ``meta1 setup``, otherwise as
the invoking user), starts
``python -m meta1py run -f FILE`` and connects to the port again and again until a connection gets
the ``220`` greeting. It prints, per run and as medians over the runs:

- ``220``: seconds from starting the process to the first byte of the greeting;
- ``imports``: seconds ``python -c "import meta1py.mcp.main"`` takes on its own (the floor that lazy
  imports attack);
- ``stop``: seconds from SIGTERM to the process's exit;
- as root, and unless ``--no-peer``: the same for a private Postfix (bench/relay.py's instance),
  run after each meta1py run so that both see the same machine: ``postfix check`` (a fresh
  queue) and ``postfix start`` to its smtpd's first 220, and ``postfix stop`` to every process
  gone; and the ratio of the medians.

The goal of the operator issue: the first 220 in under 0.3 s (median). With ``--test-mode`` the
daemon runs as ``meta1 run --test-mode`` (control API on another free loopback port, and with
``--zone-file`` smar's fake DNS): the goal of issue 21 is the first 220 in under 0.5 s. Every
process the script starts is stopped by pid; the temporary directories are removed.
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


def one_run(python: str, test_mode: bool = False, zone_file: Path | None = None) -> tuple[float, float]:
    """Seconds to the first 220, and seconds from SIGTERM to exit."""
    work = Path(tempfile.mkdtemp(prefix="meta1-startup-"))
    work.chmod(0o755)  # as root, the workers (meta1q, ...) must reach the queue inside
    try:
        port = free_port()
        conf = work / "meta1.conf"
        text = (
            f"queue_directory = {work / 'queue'};\nmail_directory = {work / 'mail'};\n"
            f"smtps {{ listen_socket {{ address = 127.0.0.1; port = {port}; }} }}\n"
        )
        command = [python, "-m", "meta1py", "run", "-f", str(conf)]
        if test_mode:
            zone = f' zone_file = "{zone_file.resolve()}";' if zone_file is not None else ""
            text += f"test_mode {{ listen = 127.0.0.1:{free_port()};{zone} }}\n"
            command.insert(4, "--test-mode")
        conf.write_text(text)
        # As an installed MTA runs: with its bytecode cached (a shell may disable that).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        started = time.monotonic()
        proc = subprocess.Popen(
            command,
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


def postfix_run() -> tuple[float, float]:
    """Postfix, as the peer of the same run: seconds from ``postfix check`` (which makes a fresh
    queue, as meta1py's first start does) and ``postfix start`` to the first 220 of its smtpd, and
    seconds from ``postfix stop`` to every process gone. A private instance (bench/relay.py's)."""
    from relay import PostfixMta

    mta = PostfixMta(free_port())
    started = time.monotonic()
    try:
        mta.start()
        ready = time.monotonic() - started
    finally:
        stopping = time.monotonic()
        mta.close()
    return ready, time.monotonic() - stopping


def import_time(python: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.monotonic()
    subprocess.run([python, "-c", "import meta1py.mcp.main"], check=True, env=env)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run meta1 with")
    parser.add_argument("--test-mode", action="store_true", help="run meta1 run --test-mode (goal 0.5 s)")
    parser.add_argument("--zone-file", type=Path, help="with --test-mode: test_mode { zone_file }")
    parser.add_argument(
        "--no-peer", action="store_true", help="do not time Postfix in the same run (the default as root)"
    )
    args = parser.parse_args()
    peer = not args.no_peer and os.geteuid() == 0 and Path("/usr/sbin/postfix").exists()
    if args.zone_file is not None and not args.test_mode:
        parser.error("--zone-file needs --test-mode")
    goal = "0.5" if args.test_mode else "0.3"
    who = "root: production mode, the worker users of meta1 setup" if os.geteuid() == 0 else "one user"
    mode = " in test mode" + (f" with {args.zone_file}" if args.zone_file else "") if args.test_mode else ""
    print(f"running as {who}{mode}", flush=True)
    readies, stops, imports, peer_readies, peer_stops = [], [], [], [], []
    for n in range(args.runs):
        ready, stop = one_run(args.python, args.test_mode, args.zone_file)
        imported = import_time(args.python)
        readies.append(ready)
        stops.append(stop)
        imports.append(imported)
        line = f"run {n + 1:2}: 220 after {ready:.3f} s, stop {stop:.3f} s, imports {imported:.3f} s"
        if peer:  # interleaved, so that both see the same machine
            peer_ready, peer_stop = postfix_run()
            peer_readies.append(peer_ready)
            peer_stops.append(peer_stop)
            line += f"; postfix: 220 after {peer_ready:.3f} s, stop {peer_stop:.3f} s"
        print(line, flush=True)
    print(
        f"median over {args.runs} runs: 220 after {statistics.median(readies):.3f} s"
        f" (min {min(readies):.3f}, max {max(readies):.3f}), stop {statistics.median(stops):.3f} s,"
        f" imports of mcp alone {statistics.median(imports):.3f} s; goal: 220 in < {goal} s"
    )
    if peer:
        ratio = statistics.median(readies) / statistics.median(peer_readies)
        print(
            f"postfix, same runs: 220 after {statistics.median(peer_readies):.3f} s"
            f" (min {min(peer_readies):.3f}, max {max(peer_readies):.3f}),"
            f" stop {statistics.median(peer_stops):.3f} s;"
            f" ratio meta1py/postfix to the first 220: {ratio:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
