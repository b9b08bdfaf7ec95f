"""smtpc's command and file delivery agents (the ``pipe`` and ``file`` transports), and home
Maildir deliveries (``home_mailbox``).

smar routes an aliases(5) ``"|command"`` or ``/file`` target (or one from an ``:include:`` or
``.forward`` file) as ``pipe`` or ``file``, with the account that runs it (``route.local``).
For each recipient, smtpc:

1. refuses the delivery when ``allow_mail_to_commands``/``allow_mail_to_files`` does not allow
   its source (smar checked it already; a second check costs nothing), and refuses a message
   that already holds ``Delivered-To: <origin>`` (a mail loop, 5.4.6), as the Maildir agent does;
2. formats the message into an anonymous memory file: the mbox ``From`` line, ``Return-Path:``,
   ``Delivered-To:`` and the message with LF line ends (quoted ``>From`` lines and a closing
   empty line for files; :mod:`meta1py.message.mbox`); for a file target ending in ``/``
   (Postfix's Maildir form) the Maildir file's content instead, as for a home Maildir below, and
   a Maildir file name (:func:`meta1py.smtpc.maildir.maildir_unique_name`);
3. hands it to the root helper (:mod:`meta1py.smtpc.runas`), which runs it as the account, and
   turns the helper's answer into a result: Postfix's statuses for commands (sysexits codes,
   ``Command died with status N``, a signal defers, the time limit bounces) and for files (a full
   disk or a lock that does not come defers, a file that cannot be written bounces; a Maildir:
   ``delivered to maildir as NAME`` or ``maildir delivery failed: PATH: ...``).

Home Maildirs (Postfix's ``home_mailbox``): smar routes a local user's mail as ``maildir`` with
the account (``route.local``, source ``home_mailbox``) and ``route.path`` its home Maildir.
smtpc refuses a looping message (5.4.6) as the Maildir agent does, writes the Maildir file's
content (``Return-Path:``, ``Delivered-To:``, LF line ends) into a memfd, picks the file name
(:func:`meta1py.smtpc.maildir.maildir_unique_name`) and hands both to the helper, whose runner
writes the file as the user. The statuses are Postfix local(8)'s (:func:`home_maildir_result`).

The helper is started by :meth:`LocalHelper.start` in smtpc's ``prepare`` (as root, before the
privilege drop), only when commands, files or home Maildirs are enabled.
"""

from __future__ import annotations

import array
import contextlib
import errno
import io
import json
import logging
import os
import socket
import subprocess
import sys
from typing import Any

import trio

from meta1py.conf import Config
from meta1py.conf.model import HOME_MAILBOX_MIN_UID
from meta1py.envelope import DeliveryStatus
from meta1py.maps.aliases import base_local_part, parse_local_target_address, split_address
from meta1py.message.delivered_to import delivered_to_header, has_delivered_to
from meta1py.message.mbox import from_line, write_message
from meta1py.message.return_path import read_head_without_return_path, return_path_header
from meta1py.queue.content import open_content
from meta1py.rpc.messages import (
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpcRecipientResult,
    SmtpcRecipientValue,
    SmtpReplyValue,
)
from meta1py.smtp.status import (
    PERM_BAD_DESTINATION_MAILBOX,
    PERM_BAD_DESTINATION_SYSTEM,
    PERM_MAIL_SYSTEM_OTHER,
    PERM_MAILBOX_OTHER,
    PERM_MEDIA_OTHER,
    PERM_NOT_AUTHORIZED,
    PERM_PROTOCOL_ERROR,
    PERM_ROUTING_LOOP,
    PERM_SECURITY_OTHER,
    PERM_SYSTEM_MISCONFIGURED,
    SUCCESS,
    TEMP_MAIL_SYSTEM_ERROR,
    TEMP_MAILBOX_FULL,
    TEMP_SYSTEM_MISCONFIGURED,
)
from meta1py.smtpc.maildir import maildir_unique_name, write_maildir_message
from meta1py.smtpc.runas import MAX_REQUEST_BYTES, Policy

__all__ = ["LocalAgent", "LocalHelper", "helper_policy", "home_maildir_result", "local_delivery_enabled"]

log = logging.getLogger(__name__)

_MAX_TEXT = 400
#: How much longer than the command time limit smtpc waits for the runner's answer.
_ANSWER_GRACE_S = 30.0
#: Postfix's command_expansion_filter: other characters in exported values become "_".
_ENV_SAFE = frozenset("1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

# sysexits(3) statuses and what Postfix's sys_exits table makes of them: (code, status, text).
_SYSEXITS: dict[int, tuple[int, str, str]] = {
    64: (550, PERM_MAIL_SYSTEM_OTHER, "command line usage error"),
    65: (550, PERM_MEDIA_OTHER, "data format error"),
    66: (550, PERM_MAIL_SYSTEM_OTHER, "cannot open input"),
    67: (550, PERM_BAD_DESTINATION_MAILBOX, "user unknown"),
    68: (550, PERM_BAD_DESTINATION_SYSTEM, "host name unknown"),
    69: (550, PERM_MAIL_SYSTEM_OTHER, "service unavailable"),
    70: (550, PERM_MAIL_SYSTEM_OTHER, "internal software error"),
    71: (451, TEMP_MAIL_SYSTEM_ERROR, "system resource problem"),
    72: (550, PERM_MAIL_SYSTEM_OTHER, "critical OS file missing"),
    73: (550, PERM_MAILBOX_OTHER, "can't create user output file"),
    74: (550, PERM_MAIL_SYSTEM_OTHER, "input/output error"),
    75: (451, TEMP_MAIL_SYSTEM_ERROR, "temporary failure"),
    76: (550, PERM_PROTOCOL_ERROR, "remote error in protocol"),
    77: (550, PERM_SECURITY_OTHER, "permission denied"),
    78: (550, PERM_SYSTEM_MISCONFIGURED, "local configuration error"),
}


def local_delivery_enabled(config: Config) -> bool:
    """Whether commands, files or home Maildirs may be delivered at all (the helper is needed)."""
    return bool(config.allow_mail_to_commands or config.allow_mail_to_files or config.home_mailbox)


def helper_policy(config: Config) -> Policy:
    """What the helper allows, from the configuration (see :class:`meta1py.smtpc.runas.Policy`)."""
    workers = [config.qmgr, config.smar, config.smtpc, *config.smtps]
    alias_files: list[str] = []
    if config.smar.aliases is not None:
        from meta1py.maps.compiled import compiled_path

        for member in config.smar.aliases.files:
            assert member.path is not None
            kind = member.kind
            alias_files.append(str(member.path) if kind == "text" else compiled_path(member.path, kind))
    return Policy(
        {
            "commands": list(config.allow_mail_to_commands),
            "files": list(config.allow_mail_to_files),
            "forbidden_users": sorted({w.user for w in workers}),
            "forbidden_groups": sorted({w.group for w in workers}),
            "default_privs": config.default_privs,
            "alias_files": alias_files,
            "time_limit_s": config.command_time_limit,
            "home_mailbox": config.home_mailbox,
            "home_min_uid": HOME_MAILBOX_MIN_UID,
        }
    )


class LocalHelperGoneError(Exception):
    """The helper process is gone: no command or file can be delivered until smtpc restarts."""


class LocalHelper:
    """smtpc's side of the root helper: its socket, and one call per delivery.

    Args:
        sock: the ``SOCK_SEQPACKET`` socket to the helper.
        process: the helper process (None when the socket leads elsewhere, in tests).
    """

    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes] | None = None) -> None:
        self.sock = sock
        self.process = process
        self._lock = trio.Lock()

    @classmethod
    def start(cls, config: Config) -> LocalHelper:
        """Start the helper (``python -I -m meta1py.smtpc.runas``); it keeps smtpc's privileges.

        Called by smtpc's ``prepare``, before the privilege drop.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "meta1py.smtpc.runas",
                    str(theirs.fileno()),
                    helper_policy(config).to_json(),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
            )
        finally:
            theirs.close()
        log.info("local delivery helper started (pid %d)", process.pid)
        return cls(ours, process)

    def close(self) -> None:
        """Close the socket (the helper exits at end of file) and reap it."""
        self.sock.close()
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def run(self, request: dict[str, Any], message_fd: int, timeout_s: float) -> dict[str, Any]:
        """Send one delivery to the helper and wait for the runner's answer.

        Raises:
            LocalHelperGoneError: the helper's socket is closed.
        """
        answer_ours, answer_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        data = json.dumps(request).encode()
        if len(data) > MAX_REQUEST_BYTES:
            answer_ours.close()
            answer_theirs.close()
            return {"refused": "request too large"}
        fds = array.array("i", [message_fd, answer_theirs.fileno()])
        try:
            async with self._lock:
                await trio.lowlevel.wait_writable(self.sock)
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as exc:
            answer_ours.close()
            raise LocalHelperGoneError(f"the local delivery helper is gone: {exc}") from exc
        finally:
            answer_theirs.close()
        answer = trio.socket.from_stdlib_socket(answer_ours)
        with answer:
            with trio.move_on_after(timeout_s):
                reply = await answer.recv(MAX_REQUEST_BYTES)
                if not reply:
                    return {"error": "the local delivery runner ended without an answer"}
                try:
                    result = json.loads(reply)
                except ValueError:
                    return {"error": f"bad answer from the local delivery runner: {reply[:100]!r}"}
                return result if isinstance(result, dict) else {"error": "bad answer"}
        return {"error": f"no answer from the local delivery runner within {timeout_s:g}s"}


def _censor(value: str) -> str:
    return "".join(c if c in _ENV_SAFE else "_" for c in value)


def _environment(
    origin: str, sender: str, orcpt: str | None, home: str, user: str, shell: str
) -> dict[str, str]:
    """Postfix local(8)'s environment for a command, values censored as Postfix does."""
    local, domain = split_address(origin)
    base = base_local_part(local)
    env = {
        "HOME": home,
        "LOGNAME": user,
        "USER": user,
        "SHELL": shell or "/bin/sh",
        "PATH": "/usr/bin:/bin",
        "SENDER": _censor(sender),
        "RECIPIENT": _censor(origin),
        "LOCAL": _censor(local),
    }
    if domain:
        env["DOMAIN"] = _censor(domain)
    if base != local:
        env["EXTENSION"] = _censor(local[len(base) + 1 :])
    if orcpt and orcpt.lower().startswith("rfc822;"):
        env["ORIGINAL_RECIPIENT"] = _censor(orcpt[7:])
    return env


def _prepare(queue_dir: str, qid: str, sender: str, origin: str, kind: str) -> int | str | None:
    """The formatted message in a memfd (its descriptor); ``"loop"`` when it already carries
    ``Delivered-To: <origin>``; None when the queue file is gone."""
    try:
        content = open_content(queue_dir, qid)
    except FileNotFoundError:
        return None
    with content:
        if has_delivered_to(content, origin):
            return "loop"
        content.seek(0)
        fd = os.memfd_create("meta1py-local", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as out:
                out.write(from_line(sender))
                with contextlib.suppress(ValueError):  # a sender that cannot be a header: none
                    out.write(return_path_header(sender, newline=b"\n"))
                out.write(delivered_to_header(origin, newline=b"\n"))
                # A Return-Path: that came with the message goes: this one is the envelope's.
                head = io.BytesIO(read_head_without_return_path(content))
                write_message(head, out, quote_from=kind == "file", blank_line=False)
                write_message(content, out, quote_from=kind == "file", blank_line=kind == "file")
        except BaseException:
            os.close(fd)
            raise
        return fd


def _prepare_maildir(queue_dir: str, qid: str, sender: str, recipient: str) -> int | str | None:
    """The Maildir file's content in a memfd (its descriptor); ``"loop"`` when the message already
    carries ``Delivered-To: <recipient>``; None when the queue file is gone."""
    try:
        content = open_content(queue_dir, qid)
    except FileNotFoundError:
        return None
    with content:
        if has_delivered_to(content, recipient):
            return "loop"
        content.seek(0)
        fd = os.memfd_create("meta1py-maildir", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as out:
                try:
                    write_maildir_message(content, out, recipient, sender)
                except ValueError:  # a sender that cannot be a header: none
                    content.seek(0)
                    out.seek(0)
                    out.truncate()
                    write_maildir_message(content, out, recipient, None)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _value(code: int, enhanced: str, text: str) -> SmtpReplyValue:
    return SmtpReplyValue(code=code, enhanced=enhanced, text=text[:_MAX_TEXT])


def _output(result: dict[str, Any]) -> str:
    text = " ".join(str(result.get("output") or "").split())
    return f". Command output: {text}" if text else ""


def command_result(command: str, result: dict[str, Any]) -> SmtpReplyValue:
    """The status of a command delivery from the runner's answer (Postfix's pipe_command)."""
    if "refused" in result:
        return _value(451, TEMP_SYSTEM_MISCONFIGURED, f"local delivery refused: {result['refused']}")
    if "error" in result:
        return _value(451, TEMP_MAIL_SYSTEM_ERROR, f"local delivery failed: {result['error']}")
    shown = f'"{command}"'
    if result.get("timeout"):
        return _value(550, PERM_MAIL_SYSTEM_OTHER, f"Command time limit exceeded: {shown}{_output(result)}")
    signum = result.get("signal")
    if signum is not None:
        return _value(
            451, TEMP_MAIL_SYSTEM_ERROR, f"Command died with signal {signum}: {shown}{_output(result)}"
        )
    status = result.get("exit")
    if status == 0:
        return _value(250, SUCCESS, f"delivered to command: {command}")
    known = _SYSEXITS.get(status) if isinstance(status, int) else None
    if known is not None:
        code, enhanced, why = known
        return _value(code, enhanced, f"{why}: {shown}{_output(result)}")
    return _value(550, PERM_MAIL_SYSTEM_OTHER, f"Command died with status {status}: {shown}{_output(result)}")


def file_result(path: str, result: dict[str, Any]) -> SmtpReplyValue:
    """The status of a file delivery from the runner's answer: appended to an mbox file, or, for a
    path ending in ``/``, written into that Maildir (Postfix local(8)'s words for each)."""
    if path.endswith("/"):
        return _maildir_result(path, result)
    return _write_result(result, f"delivered to file: {path}", f"cannot append message to file {path}")


def home_maildir_result(maildir: str, result: dict[str, Any]) -> SmtpReplyValue:
    """The status of a home Maildir delivery from the runner's answer.

    As Postfix's local(8) (``maildir delivery failed: ...``, 5.2.0): a home that is missing, not
    the user's, or a Maildir the user cannot create or write, or one reached through a symbolic
    link, bounces; Postfix defers such mail only with ``require_home_directory``, which we do
    not have. A full disk or quota defers (452 4.2.2, as our virtual Maildirs do; Postfix
    bounces a full quota), and so do passing errors (451 4.3.0).
    """
    return _maildir_result(maildir, result)


def _maildir_result(maildir: str, result: dict[str, Any]) -> SmtpReplyValue:
    return _write_result(
        result, f"delivered to maildir as {result.get('name')}", f"maildir delivery failed: {maildir}"
    )


def _write_result(result: dict[str, Any], delivered: str, failed: str) -> SmtpReplyValue:
    """The status of a file or Maildir write from the runner's answer: refused by the helper,
    done, or failed (a full disk defers, passing errors defer, the rest bounce)."""
    if "refused" in result:
        return _value(451, TEMP_SYSTEM_MISCONFIGURED, f"local delivery refused: {result['refused']}")
    if result.get("ok"):
        return _value(250, SUCCESS, delivered)
    if "errno" not in result:
        return _value(451, TEMP_MAIL_SYSTEM_ERROR, f"local delivery failed: {result.get('error')}")
    err = result["errno"]
    why = f"{failed}: {result.get('error')}"
    if err in (errno.ENOSPC, errno.EDQUOT):
        return _value(452, TEMP_MAILBOX_FULL, why)
    if err in (errno.EAGAIN, errno.EINTR, errno.EIO, errno.ESTALE, errno.ENOMEM):
        return _value(451, TEMP_MAIL_SYSTEM_ERROR, why)
    return _value(550, PERM_MAILBOX_OTHER, why)


class LocalAgent:
    """Delivers ``pipe`` and ``file`` jobs (see the module docstring).

    Args:
        config: the configuration.
        helper: the root helper, or None when commands and files are off.
    """

    def __init__(self, config: Config, helper: LocalHelper | None) -> None:
        self.config = config
        self.helper = helper
        self.queue_dir = str(config.queue_directory)

    async def deliver(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        """One result per recipient (they are delivered one after the other)."""
        results = []
        for r in req.recipients:
            reply = await self._one(req, r)
            status: DeliveryStatus = "ok" if reply.code < 400 else ("temp" if reply.code < 500 else "perm")
            results.append(SmtpcRecipientResult(idx=r.idx, status=status, reply=reply, remote_mta=None))
        return SmtpcDeliveryReply(results=tuple(results), session_failed=False)

    async def deliver_home(self, req: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        """A ``maildir`` route to a user's home Maildir (``route.local`` set): one result per
        recipient, each written by the helper's runner as the user."""
        results = []
        for r in req.recipients:
            reply = await self._home(req, r)
            status: DeliveryStatus = "ok" if reply.code < 400 else ("temp" if reply.code < 500 else "perm")
            results.append(SmtpcRecipientResult(idx=r.idx, status=status, reply=reply, remote_mta=None))
        return SmtpcDeliveryReply(results=tuple(results), session_failed=False)

    async def _home(self, req: SmtpcDeliveryRequest, r: SmtpcRecipientValue) -> SmtpReplyValue:
        route, account = req.route, req.route.local
        mailbox = self.config.home_mailbox
        if account is None or not route.path:
            return _value(451, TEMP_SYSTEM_MISCONFIGURED, "home Maildir route without an account or path")
        if self.helper is None or mailbox is None:
            # smar routed with a configuration smtpc does not have (a reload in between): wait.
            return _value(451, TEMP_SYSTEM_MISCONFIGURED, "home_mailbox is not set in smtpc")
        prepared = await trio.to_thread.run_sync(
            _prepare_maildir, self.queue_dir, req.qid, req.sender, r.address
        )
        if prepared is None:
            return _value(451, TEMP_MAIL_SYSTEM_ERROR, f"queue file {req.qid} missing")
        if prepared == "loop":
            return _value(554, PERM_ROUTING_LOOP, f"mail loop: already delivered to {r.address}")
        assert isinstance(prepared, int)
        request = {
            "kind": "maildir",
            "target": mailbox,
            "name": maildir_unique_name(self.config.hostname),
            "uid": account.uid,
            "gid": account.gid,
            "home": account.home,
            "source": account.source,
        }
        try:
            result = await self.helper.run(
                request, prepared, self.config.command_time_limit + _ANSWER_GRACE_S
            )
        except LocalHelperGoneError as exc:
            log.error("%s: %s", req.qid, exc)
            return _value(451, TEMP_MAIL_SYSTEM_ERROR, str(exc))
        finally:
            os.close(prepared)
        reply = home_maildir_result(route.path, result)
        if "refused" in result or "error" in result:
            log.error("%s: maildir %s as %s: %s", req.qid, route.path, account.user, reply.text)
        else:
            log.info(
                "%s: maildir %s as %s (uid %s): %d %s",
                req.qid,
                route.path,
                account.user,
                result.get("uid"),
                reply.code,
                reply.text,
            )
        return reply

    async def _one(self, req: SmtpcDeliveryRequest, r: SmtpcRecipientValue) -> SmtpReplyValue:
        route = req.route
        kind = "command" if route.transport == "pipe" else "file"
        account, target = route.local, route.path
        if account is None or not target:
            return _value(
                451, TEMP_SYSTEM_MISCONFIGURED, f"{route.transport} route without an account or target"
            )
        allowed = self.config.allow_mail_to_commands if kind == "command" else self.config.allow_mail_to_files
        if account.source not in allowed or self.helper is None:
            return _value(550, PERM_NOT_AUTHORIZED, f"mail to {kind} is restricted")
        parsed = parse_local_target_address(r.address)
        origin = parsed[0] if parsed is not None else r.address
        # "/path/" is Postfix's Maildir form of a file target: the Maildir file's content, no mbox.
        maildir = kind == "file" and target.endswith("/")
        if maildir:
            prepared = await trio.to_thread.run_sync(
                _prepare_maildir, self.queue_dir, req.qid, req.sender, origin
            )
        else:
            prepared = await trio.to_thread.run_sync(
                _prepare, self.queue_dir, req.qid, req.sender, origin, kind
            )
        if prepared is None:
            return _value(451, TEMP_MAIL_SYSTEM_ERROR, f"queue file {req.qid} missing")
        if prepared == "loop":
            return _value(554, PERM_ROUTING_LOOP, f"mail loop: already delivered to {origin}")
        assert isinstance(prepared, int)
        limit = self.config.command_time_limit
        request = {
            "kind": kind,
            "target": target,
            "uid": account.uid,
            "gid": account.gid,
            "home": account.home,
            "source": account.source,
            "env": _environment(origin, req.sender, r.orcpt, account.home, account.user, account.shell)
            if kind == "command"
            else {},
            "time_limit_s": limit,
        }
        if maildir:
            request["name"] = maildir_unique_name(self.config.hostname)
        try:
            result = await self.helper.run(request, prepared, limit + _ANSWER_GRACE_S)
        except LocalHelperGoneError as exc:
            log.error("%s: %s", req.qid, exc)
            return _value(451, TEMP_MAIL_SYSTEM_ERROR, str(exc))
        finally:
            os.close(prepared)
        reply = command_result(target, result) if kind == "command" else file_result(target, result)
        if "refused" in result or "error" in result:
            log.error("%s: %s %r as %s: %s", req.qid, kind, target, account.user, reply.text)
        else:
            log.info(
                "%s: %s %r as %s (uid %s): %d %s",
                req.qid,
                kind,
                target,
                account.user,
                result.get("uid"),
                reply.code,
                reply.text,
            )
        return reply
