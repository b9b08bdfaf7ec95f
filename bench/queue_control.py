"""Measure ``meta1 queue delete --all-deferred`` on a large queue: one request against batches.

Usage::

    .venv/bin/python bench/queue_control.py [--messages N] [--modes single,batched,offline,offline-each]

For each mode a real daemon (as root in production mode when the worker users exist, see
``bench/_common.py``) gets a queue of N deferred messages (:func:`meta1py_testing.queuefill.
fill_deferred`, written while it is stopped), and the deletion of all of them is timed:

- ``single``: what ``meta1 queue`` sent before batches, one ``QueueControlRequest`` with
  ``all_deferred`` (sent here directly, with a deadline long enough to see it end);
- ``batched``: the ``meta1 queue delete --all-deferred`` command as an operator runs it (its
  Python start-up included): the ids asked of qmgr, then one request per 1,000 messages;
- ``offline``: the same command with the daemon stopped (the store changed directly, one
  transaction per 1,000 messages);
- ``offline-each``: what the command did before with the daemon stopped, one transaction per
  message (done here directly).

Prints one JSON object: seconds and messages per second per mode, and qmgr's start-up time with
the queue loaded. Every process started is stopped by the daemon harness.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import trio
from _common import worker_accounts

from meta1py.contract import rpc_socket_path
from meta1py.queue.content import remove_content
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path
from meta1py_testing.daemon import Meta1Daemon
from meta1py_testing.queuefill import fill_deferred

MODES = ("single", "batched", "offline", "offline-each")


def count_messages(daemon: Meta1Daemon) -> int:
    with EnvelopeStore(envelope_store_path(daemon.queue_directory), readonly=True) as store:
        return len(store.all_ids())


def single_request(daemon: Meta1Daemon) -> tuple[int, float]:
    """One QueueControlRequest for every deferred message, as meta1 queue sent it before."""
    from meta1py.rpc.channel import connect_unix
    from meta1py.rpc.messages import QueueControlRequest

    async def ask() -> tuple[int, float]:
        channel = await connect_unix(rpc_socket_path(daemon.run_directory, "qmgr"), name="bench")
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            started = time.perf_counter()
            reply = await channel.call(
                QueueControlRequest(action="delete", qids=(), to_domain=None, all_deferred=True),
                timeout=3600,
            )
            took = time.perf_counter() - started
            channel.close()
            nursery.cancel_scope.cancel()
        return reply.count, took

    return trio.run(ask)


def command(daemon: Meta1Daemon) -> tuple[str, float]:
    """``meta1 queue delete --all-deferred`` as an operator runs it (not on a terminal)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "meta1py", "queue", "delete", "--all-deferred", "-f", str(daemon.conf_path)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=daemon.dir,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"meta1 queue failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip(), took


def offline_each(daemon: Meta1Daemon) -> tuple[int, float]:
    """The old offline path: one transaction (one fsync) per message."""
    started = time.perf_counter()
    count = 0
    with EnvelopeStore(envelope_store_path(daemon.queue_directory)) as store:
        for env in store.list_envelopes(state="deferred"):
            if store.delete_messages([env.qid]):
                remove_content(daemon.queue_directory, env.qid)
                count += 1
    return count, time.perf_counter() - started


def run_mode(mode: str, messages: int, accounts: dict[str, Any]) -> dict[str, Any]:
    daemon = Meta1Daemon(ready_timeout=600, **accounts)
    with daemon:
        daemon.stop()
        started = time.perf_counter()
        fill_deferred(daemon.queue_directory, messages)
        filled = time.perf_counter() - started
        result: dict[str, Any] = {"fill_s": round(filled, 1)}
        if mode in ("single", "batched"):
            started = time.perf_counter()
            daemon.start()
            result["start_with_queue_s"] = round(time.perf_counter() - started, 2)
            if mode == "single":
                count, took = single_request(daemon)
                result["summary"] = f"delete: {count} messages"
            else:
                result["summary"], took = command(daemon)
            daemon.stop()
        elif mode == "offline":
            result["summary"], took = command(daemon)
        else:
            count, took = offline_each(daemon)
            result["summary"] = f"delete: {count} messages"
        left = count_messages(daemon)
    result.update(seconds=round(took, 2), per_second=round(messages / took), left_in_queue=left)
    return result


def main() -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {"messages": args.messages}
    with worker_accounts("m1b") as (accounts, accounts_text):
        results["accounts"] = accounts_text
        for mode in modes:
            results[mode] = run_mode(mode, args.messages, accounts)
            print(mode, results[mode], file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
