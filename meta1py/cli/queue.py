"""``meta1 queue``: the operator's view of the queue and its controls (mailq, postqueue, postsuper).

Reading (``list``, ``show``, ``stats``) opens the envelope store read-only; SQLite's WAL lets it
do so while qmgr runs, and what it shows is what is durable.  Changing (``flush``, ``delete``,
``bounce``, ``hold``, ``release``, ``requeue``) goes through qmgr over ``qmgr.sock`` when qmgr runs, because
qmgr owns the queue; when it does not run, ``delete``, ``hold`` and ``release`` change the store
directly (``flush``, ``bounce`` and ``requeue`` need the running qmgr). A change of more than
`BATCH_MESSAGES` messages goes in batches, with a progress bar on a terminal (``-q``: none); its
output is the same as one request's.

Run it as root or as the queue's owner. ``list`` works for every other user too: it asks the running
qmgr over its showq socket (:mod:`meta1py.queue.showq`; ``authorized_mailq_users``). The
``--json`` output of ``list`` is documented in ``docs/queue.md`` and is stable: one JSON object per
message per line, like ``postqueue -j``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.policy
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from meta1py.cli.progress import progress_bar
from meta1py.conf import Config, ConfigErrors, config_file, load_config
from meta1py.contract import rpc_socket_path
from meta1py.queue.content import open_content, remove_content
from meta1py.queue.envelopes import (
    DeleteMessage,
    Envelope,
    EnvelopeStore,
    SetHold,
    StoreOp,
    envelope_store_path,
)
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import is_queue_id
from meta1py.queue.listing import envelope_json, message_state, queue_listing

EX_USAGE = 64
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
EX_INTERRUPTED = 130  # 128 + SIGINT, as the shell reports a command Ctrl-C stopped


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _store(cfg: Config) -> EnvelopeStore | None:
    path = envelope_store_path(cfg.queue_directory)
    if not path.exists():
        return None
    return EnvelopeStore(path, readonly=True)


def _list_filters(args: argparse.Namespace) -> dict[str, Any]:
    """``list``'s filters as :func:`~meta1py.queue.listing.queue_listing` takes them (None: off)."""
    state = "deferred" if args.deferred else "active" if args.active else "hold" if args.hold else None
    return {"state": state, "domain": args.to, "sender": args.sender}


def _reads_store(cfg: Config) -> bool:
    """Whether this user reads the envelope store itself (root, the queue's owner) rather than
    asking qmgr's showq (everyone else: :mod:`meta1py.queue.showq`)."""
    if os.access(envelope_store_path(cfg.queue_directory), os.R_OK):
        return True
    # No store yet, or none readable: the queue's owner (and root) may still list the directory.
    return os.access(cfg.queue_directory, os.R_OK | os.X_OK)


def _list_through_showq(cfg: Config, form: Literal["text", "json"], filtered: bool) -> int:
    """mailq for a user who may not read the queue: ask qmgr over its showq socket."""
    import socket

    from meta1py.queue.showq import ShowqError, decode_answer, showq_socket_path

    if filtered:
        print(
            f"meta1 queue: list: cannot read the queue under {cfg.queue_directory}: the filters need"
            " root or the queue's owner (other users get the whole queue from qmgr)",
            file=sys.stderr,
        )
        return EX_NOPERM
    path = showq_socket_path(cfg.queue_directory)
    data = bytearray()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(120)
            sock.connect(str(path))
            sock.sendall(form.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(1 << 16):
                data += chunk
    except OSError as exc:
        print(
            f"meta1 queue: list: the mail system is down: cannot connect to {path}: "
            f"{exc.strerror or exc} (root can read the queue while it is down)",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    try:
        listing = decode_answer(bytes(data))
    except ShowqError as exc:
        print(f"meta1 queue: list: qmgr's showq: {exc}", file=sys.stderr)
        return {"denied": EX_NOPERM, "usage": EX_USAGE}.get(exc.kind, EX_TEMPFAIL)
    sys.stdout.write(listing)
    return 0


def cmd_list(cfg: Config, args: argparse.Namespace) -> int:
    form: Literal["text", "json"] = "json" if args.json else "text"
    filters = _list_filters(args)
    if not _reads_store(cfg):
        return _list_through_showq(cfg, form, any(v is not None for v in filters.values()))
    sys.stdout.write(queue_listing(cfg.queue_directory, form, **filters))
    return 0


def cmd_show(cfg: Config, args: argparse.Namespace) -> int:
    store = _store(cfg)
    env = None
    if store is not None:
        with store:
            env = store.get(args.id)
    if env is None:
        print(f"meta1 queue: {args.id}: no such message", file=sys.stderr)
        return EX_NOINPUT
    if args.json:
        print(json.dumps(envelope_json(env), sort_keys=True, indent=2))
        return 0
    print(f"queue_id: {env.qid}")
    print(f"state: {message_state(env)}   kind: {env.kind}")
    print(
        f"arrival: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(env.arrival_time))}"
        f" ({_age(time.time() - env.arrival_time)} ago)"
    )
    print(f"size: {env.size}   body: {env.body}   smtputf8: {'yes' if env.smtputf8 else 'no'}")
    print(f"sender: <{env.sender}>")
    if env.envid or env.ret:
        print(f"dsn: envid={env.envid or '-'} ret={env.ret or '-'}")
    print(f"client: [{env.client_address}] helo={env.client_helo}")
    print("recipients:")
    for r in env.recipients:
        line = f"  <{r.address}> {r.status} attempts={r.attempts}"
        if r.status == "deferred":
            line += f" next={_age(r.next_attempt - time.time())}"
        if r.destination:
            line += f" via={r.destination}"
        print(line)
        if r.last_reply:
            print(f"      {r.last_reply}")
    try:
        with open_content(cfg.queue_directory, env.qid) as content:
            if args.body:
                print("message:", flush=True)
                _copy(content, sys.stdout.buffer)
                return 0
            head = content.read(64 * 1024)
    except FileNotFoundError:
        print("headers: (content file missing)")
        return 0
    header_bytes = head.split(b"\r\n\r\n", 1)[0]
    print("headers:")
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_bytes)
    for name, value in msg.items():
        print(f"  {name}: {' '.join(str(value).split())[:300]}")
    return 0


def _copy(content: Any, out: Any) -> None:
    """The message as it is queued (our Received: on top, CRLF line ends), ended by a newline."""
    last = b"\n"
    while chunk := content.read(64 * 1024):
        out.write(chunk)
        last = chunk[-1:]
    if last != b"\n":
        out.write(b"\n")
    out.flush()


def cmd_stats(cfg: Config, args: argparse.Namespace) -> int:
    store = _store(cfg)
    envs: list[Envelope] = []
    if store is not None:
        with store:
            envs = store.list_envelopes()
    by_state: dict[str, int] = {"active": 0, "deferred": 0, "hold": 0}
    by_dest: dict[str, int] = {}
    oldest = None
    for env in envs:
        by_state[message_state(env)] += 1
        oldest = env.arrival_time if oldest is None else min(oldest, env.arrival_time)
        for r in env.recipients:
            if not r.is_final:
                key = r.destination or ("domain:" + r.address.rpartition("@")[2].lower())
                by_dest[key] = by_dest.get(key, 0) + 1
    stats = {
        "messages": len(envs),
        "by_state": by_state,
        "recipients_by_destination": dict(sorted(by_dest.items(), key=lambda kv: -kv[1])),
        "oldest_age_s": int(time.time() - oldest) if oldest is not None else None,
    }
    if args.json:
        print(json.dumps(stats, sort_keys=True))
        return 0
    print(
        f"messages: {len(envs)} (active {by_state['active']}, deferred {by_state['deferred']},"
        f" hold {by_state['hold']})"
    )
    if oldest is not None:
        print(f"oldest: {_age(time.time() - oldest)}")
    for dest, count in stats["recipients_by_destination"].items():  # type: ignore[attr-defined]
        print(f"  {count:>7}  {dest}")
    return 0


#: Messages per request to qmgr (and per transaction when qmgr is down) when a command touches
#: many. A batch of deletions, the slowest change (one durable transaction each in qmgr), takes
#: qmgr one to two seconds, far from the 60 s deadline of a call (one request for 100,000 took
#: 138 s: the command gave up after 60 s, and qmgr, its caller gone, stopped two thirds of the
#: way); 100 requests for 100,000 messages cost 2 % more than one. The bar advances per batch;
#: a command on more messages than this shows it (on a terminal; meta1py.cli.progress).
BATCH_MESSAGES = 1_000


@dataclass
class _Outcome:
    """What a change did so far: messages changed, ids not queued, messages handled."""

    count: int = 0
    missing: list[str] = field(default_factory=list)
    done: int = 0
    total: int = 0

    def summary(self, action: str) -> str:
        return f"{action}: {self.count} message{'s' if self.count != 1 else ''}"


def _batches(ids: Sequence[str], size: int = BATCH_MESSAGES) -> Iterator[tuple[str, ...]]:
    for start in range(0, len(ids), size):
        yield tuple(ids[start : start + size])


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Ctrl-C (SIGINT) waits until the block ends: one batch is sent and its answer counted, or
    committed and counted, or not begun, so that what the interrupted command says it did is
    what it did. (qmgr drops a request whose caller went away in the middle of it.) The signal
    stays pending meanwhile and is delivered, as KeyboardInterrupt, when the block ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _interrupted(action: str, outcome: _Outcome) -> int:
    print(
        f"meta1 queue: interrupted after {outcome.done} of {outcome.total} messages;"
        f" {outcome.summary(action)}",
        file=sys.stderr,
    )
    return EX_INTERRUPTED


def _control(
    cfg: Config,
    action: str,
    ids: list[str],
    to: str | None,
    all_deferred: bool,
    outcome: _Outcome,
    quiet: bool,
) -> int | None:
    """Ask the running qmgr; None when it is not running.

    Up to `BATCH_MESSAGES` messages go in one `QueueControlRequest`, as they always did. More
    named ids go in batches of that size. A selection (every message, ``--to``,
    ``--all-deferred``) is first asked of qmgr (`QueueSelectRequest`, qmgr's own test of
    what matches); when it holds more than a batch, the ids go in batches with ``among``, and
    qmgr does to each batch what one request would have done to those messages. The counts are
    added up, so the summary line is the one a single request gives.
    """
    import trio

    from meta1py.rpc.channel import RpcChannel, connect_unix
    from meta1py.rpc.errors import RpcError
    from meta1py.rpc.messages import QUEUE_SELECT_MAX_IDS, QueueControlRequest, QueueSelectRequest

    sock = rpc_socket_path(cfg.run_directory, "qmgr")

    def request(qids: tuple[str, ...] = (), among: tuple[str, ...] = ()) -> QueueControlRequest:
        return QueueControlRequest(
            action=action,  # type: ignore[arg-type]
            qids=qids,
            to_domain=to,
            all_deferred=all_deferred,
            among=among,
        )

    async def select(channel: RpcChannel) -> list[str]:
        """Every id of the selection, one page after another."""
        found: list[str] = []
        after = ""
        while True:
            page = await channel.call(
                QueueSelectRequest(
                    to_domain=to, all_deferred=all_deferred, after=after, limit=QUEUE_SELECT_MAX_IDS
                ),
                timeout=60,
            )
            found += page.qids
            if not page.more or not page.qids:
                return found
            after = page.qids[-1]

    async def change(channel: RpcChannel) -> None:
        batches: list[tuple[QueueControlRequest, int]]
        if ids:
            batches = [(request(qids=batch), len(batch)) for batch in _batches(ids)]
            outcome.total = len(ids)
        else:
            selected = await select(channel)
            outcome.total = len(selected)
            if len(selected) <= BATCH_MESSAGES:
                batches = [(request(), len(selected))]  # the one request of old, exactly
            else:
                batches = [(request(among=batch), len(batch)) for batch in _batches(selected)]
        bar = progress_bar(action, outcome.total, quiet=quiet, stream=sys.stderr, minimum=BATCH_MESSAGES)
        with bar:
            for req, size in batches:
                with _ctrl_c_after():
                    reply = await channel.call(req, timeout=60)
                    outcome.count += reply.count
                    outcome.missing += reply.missing
                    outcome.done += size
                    bar.update(outcome.done)

    async def ask() -> int | None:
        try:
            channel = await connect_unix(sock, name="meta1 queue")
        except PermissionError:
            print(
                f"meta1 queue: {action}: this user may not talk to qmgr ({sock}): run it as root",
                file=sys.stderr,
            )
            return EX_NOPERM
        except OSError:
            return None
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(channel.run)
                await change(channel)
            except RpcError as exc:
                done = ""
                if outcome.done:  # some batches were answered: say how far it got
                    done = (
                        f"; stopped after {outcome.done} of {outcome.total} messages;"
                        f" {outcome.summary(action)}"
                    )
                print(f"meta1 queue: qmgr did not answer: {exc}{done}", file=sys.stderr)
                channel.close()
                return EX_TEMPFAIL
            except KeyboardInterrupt:
                channel.close()
                return _interrupted(action, outcome)
            channel.close()
            nursery.cancel_scope.cancel()
        for qid in outcome.missing:
            print(f"meta1 queue: {qid}: no such message", file=sys.stderr)
        print(outcome.summary(action))
        return 0 if not outcome.missing else EX_NOINPUT

    return trio.run(ask)


def _change_store(
    cfg: Config, action: str, ids: list[str], all_deferred: bool, outcome: _Outcome, quiet: bool
) -> int:
    """``delete``, ``hold``, ``release`` while qmgr is down: the store directly, one transaction
    per `BATCH_MESSAGES` messages (a message's content file goes once its deletion committed)."""
    path = envelope_store_path(cfg.queue_directory)
    if not path.exists():
        print("meta1 queue: the queue is empty", file=sys.stderr)
        return EX_NOINPUT if ids else 0
    try:
        with EnvelopeStore(path) as store:
            if all_deferred:
                ids = [e.qid for e in store.list_envelopes(state="deferred")]
            outcome.total = len(ids)
            bar = progress_bar(action, len(ids), quiet=quiet, stream=sys.stderr, minimum=BATCH_MESSAGES)
            with bar:
                for batch in _batches(ids):
                    ops: list[StoreOp] = (
                        [DeleteMessage(qid) for qid in batch]
                        if action == "delete"
                        else [SetHold(qid, action == "hold") for qid in batch]
                    )
                    with _ctrl_c_after():
                        for qid, existed in zip(batch, store.apply(ops), strict=True):
                            if existed is True:
                                if action == "delete":
                                    remove_content(cfg.queue_directory, qid)
                                outcome.count += 1
                            else:
                                outcome.missing.append(qid)
                        outcome.done += len(batch)
                        bar.update(outcome.done)
    finally:
        for qid in outcome.missing:
            print(f"meta1 queue: {qid}: no such message", file=sys.stderr)
    print(outcome.summary(action))
    return EX_NOINPUT if outcome.missing else 0


def cmd_change(cfg: Config, args: argparse.Namespace) -> int:
    action = args.command
    ids: list[str] = list(getattr(args, "ids", []) or [])
    bad = [i for i in ids if not is_queue_id(i)]
    if bad:
        print(f"meta1 queue: not a queue id: {', '.join(bad)}", file=sys.stderr)
        return EX_USAGE
    to = getattr(args, "to", None)
    all_deferred = bool(getattr(args, "all_deferred", False))
    quiet = bool(getattr(args, "quiet", False))
    if action == "requeue" and not ids:
        if not getattr(args, "all", False):
            print("meta1 queue requeue: name the messages (queue ids) or --all", file=sys.stderr)
            return EX_USAGE
    if action in ("delete", "bounce", "hold", "release") and not ids and not all_deferred:
        print(
            f"meta1 queue {action}: name the messages (queue ids)"
            + (" or --all-deferred" if action == "delete" else ""),
            file=sys.stderr,
        )
        return EX_USAGE
    outcome = _Outcome()
    try:
        result = _control(cfg, action, ids, to, all_deferred, outcome, quiet)
        if result is not None:
            return result
        # qmgr is not running: change the store directly where that is safe.
        if action in ("flush", "bounce", "requeue"):
            print(f"meta1 queue {action}: qmgr is not running (start meta1 first)", file=sys.stderr)
            return EX_TEMPFAIL
        return _change_store(cfg, action, ids, all_deferred, outcome, quiet)
    except KeyboardInterrupt:
        # Ctrl-C in a long change (between two batches): what was done stays done; say how much.
        return _interrupted(action, outcome)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meta1 queue", description="Inspect and steer the mail queue.")
    config_help = "configuration file (default: $META1_CONF or /etc/meta1/meta1.conf)"
    parser.add_argument("-f", "--config", help=config_help)
    # -f is accepted after the subcommand too ("meta1 queue list -f FILE"), as operators type it;
    # SUPPRESS keeps a value given before the subcommand from being reset to None.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-f", "--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    p = add("list", "one entry per message, like mailq")
    p.add_argument("--json", action="store_true", help="one JSON object per line (docs/queue.md)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--deferred", action="store_true", help="only messages with a deferred recipient")
    group.add_argument("--active", action="store_true", help="only messages not deferred nor held")
    group.add_argument("--hold", action="store_true", help="only held messages")
    p.add_argument("--to", metavar="DOMAIN", help="only messages with a recipient in DOMAIN")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="only messages from ADDR")
    p = add("show", "envelope, recipient states and headers of one message")
    p.add_argument("id", help="queue id")
    p.add_argument("--json", action="store_true", help="the envelope as JSON (docs/queue.md)")
    p.add_argument("--body", action="store_true", help="the whole message after the envelope (postcat -q)")
    p = add("stats", "counts by state and destination, oldest message")
    p.add_argument("--json", action="store_true", help="one JSON object")
    # A change of more than BATCH_MESSAGES messages shows a progress bar on a terminal.
    changing = argparse.ArgumentParser(add_help=False)
    changing.add_argument("-q", "--quiet", action="store_true", help="no progress bar, even on a terminal")

    def add_change(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common, changing])

    p = add_change("flush", "retry deferred mail now")
    p.add_argument("ids", nargs="*", help="queue ids (none: every message)")
    p.add_argument("--to", metavar="DOMAIN", help="only messages with a recipient in DOMAIN")
    p = add_change("delete", "remove messages without a bounce")
    p.add_argument("ids", nargs="*", help="queue ids")
    p.add_argument("--all-deferred", action="store_true", help="every message with a deferred recipient")
    p = add_change(
        "requeue", "release, route afresh and retry now (postsuper -r), e.g. after a routes change"
    )
    p.add_argument("ids", nargs="*", help="queue ids")
    p.add_argument("--all", action="store_true", help="every queued message (postsuper -r ALL)")
    for name, text in (
        ("bounce", "return messages to their senders now"),
        ("hold", "put messages on hold"),
        ("release", "release held messages"),
    ):
        p = add_change(name, text)
        p.add_argument("ids", nargs="+", help="queue ids")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``meta1 queue``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code else 0
    path = config_file(args.config)
    try:
        cfg = load_config(path)
    except ConfigErrors as exc:
        print(f"meta1 queue: configuration errors:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    if args.command == "show" and not is_queue_id(args.id):
        print(f"meta1 queue: not a queue id: {args.id!r}", file=sys.stderr)
        return EX_USAGE
    handler = {"list": cmd_list, "show": cmd_show, "stats": cmd_stats}.get(args.command, cmd_change)
    try:
        return handler(cfg, args)
    except PermissionError as exc:
        # mailq run by an ordinary user: the envelope store is the queue owner's alone.
        print(
            f"meta1 queue: {args.command}: cannot read {exc.filename or cfg.queue_directory}: "
            f"{exc.strerror}; run it as root or as the queue's owner",
            file=sys.stderr,
        )
        return EX_NOPERM
    except QueueStorageError as exc:
        store = envelope_store_path(cfg.queue_directory)
        if not os.access(store, os.R_OK):
            print(
                f"meta1 queue: {args.command}: cannot read {store}; run it as root or as the queue's owner",
                file=sys.stderr,
            )
            return EX_NOPERM
        print(f"meta1 queue: {args.command}: {exc}", file=sys.stderr)
        return EX_IOERR
