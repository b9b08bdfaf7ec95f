"""``meta1 sendmail``: the sendmail(8)-compatible command line submission interface.

Installed as ``/usr/sbin/sendmail`` (a symlink to a wrapper that runs ``meta1 sendmail``), it lets
cron, scripts and PHP's mail() submit mail.  The message is read from standard input and handed
to the running MTA over SMTP on its first listener (loopback), exactly like any other client, so
it passes the same checks and gets the same durability: exit status 0 means smtps answered 250,
i.e. the message is on stable storage.  When the MTA is not running or answers with a temporary
error, the message is *not* queued: we say so on stderr and exit 75 (EX_TEMPFAIL), which cron and
the PHP mail() function report to their caller, so nothing is lost silently.

Supported flags (the common ones of sendmail and Postfix's sendmail):
  -t            take recipients from To:, Cc: and Bcc: (plus any given as arguments); Bcc: is removed
  -f ADDR       envelope sender (also -fADDR, -r ADDR)
  -F NAME       full name for a From: header added when the message has none
  -i, -oi       a line with a single "." does not end the input
  -oXXX, -B, -v, -m, -n, -bm  accepted and ignored (as Postfix does)
  -N NOTIFY     DSN NOTIFY (never, or success,delay,failure)
  -R RET        DSN RET (full or hdrs)
  -V ENVID      DSN ENVID
  -bp           list the queue (same as ``meta1 queue list``)
  -C FILE       configuration file (also -f FILE with ``meta1 sendmail --config FILE``)
"""

from __future__ import annotations

import email.utils
import getpass
import re
import smtplib
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

from meta1py.envelope import DSN_RETS

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75

_IGNORED_FLAGS = {"-B", "-v", "-m", "-n", "-bm", "-U", "-Am", "-Ac"}


@dataclass
class SendmailArgs:
    """What the command line asked for."""

    recipients: list[str] = field(default_factory=list)
    extract: bool = False
    sender: str | None = None
    full_name: str | None = None
    ignore_dots: bool = False
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None
    config: str | None = None
    list_queue: bool = False


class UsageError(Exception):
    """A command line sendmail does not accept."""


def parse_args(argv: Sequence[str]) -> SendmailArgs:
    """Parse sendmail's flags, which allow ``-fADDR`` and ``-f ADDR`` alike.

    Raises:
        UsageError: an unknown flag or a flag missing its value.
    """
    args = SendmailArgs()
    i = 0
    with_value = {
        "-f": "sender",
        "-r": "sender",
        "-F": "full_name",
        "-N": "notify",
        "-R": "ret",
        "-V": "envid",
        "-C": "config",
        "--config": "config",
    }
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            args.recipients.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            args.recipients.append(arg)
            continue
        if arg == "-t":
            args.extract = True
        elif arg in ("-i", "-oi"):
            args.ignore_dots = True
        elif arg == "-bp":
            args.list_queue = True
        elif arg == "-bs":
            raise UsageError("-bs (SMTP on standard input) is not supported; connect to the SMTP port")
        elif arg in _IGNORED_FLAGS or arg.startswith("-o") or arg.startswith("-X"):
            continue
        else:
            for flag, attr in with_value.items():
                if arg == flag:
                    if i >= len(argv):
                        raise UsageError(f"option {flag} needs a value")
                    setattr(args, attr, argv[i])
                    i += 1
                    break
                if not flag.startswith("--") and arg.startswith(flag) and len(arg) > len(flag):
                    setattr(args, attr, arg[len(flag) :])
                    break
            else:
                raise UsageError(f"unknown option {arg}")
    if args.ret is not None and args.ret.upper() not in DSN_RETS:
        raise UsageError("-R takes full or hdrs")
    return args


def read_message(stream: object, ignore_dots: bool) -> bytes:
    """Read the message from standard input with CRLF line endings.

    Without -i, a line holding a single "." ends the input (sendmail's traditional rule).
    """
    raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()  # type: ignore[attr-defined]
    assert isinstance(raw, bytes)
    lines = re.split(rb"\r\n|\r|\n", raw)
    if lines and lines[-1] == b"":
        lines.pop()
    if not ignore_dots:
        for n, line in enumerate(lines):
            if line == b".":
                lines = lines[:n]
                break
    return b"".join(line + b"\r\n" for line in lines)


def _split_headers(message: bytes) -> tuple[bytes, bytes]:
    end = message.find(b"\r\n\r\n")
    if end < 0:
        # Only headers, or a body with no header section at all.
        if message and re.match(rb"[!-9;-~]+:", message):
            return message, b""
        return b"", message
    return message[: end + 2], message[end + 4 :]


def _remove_header(headers: bytes, name: str) -> bytes:
    out: list[bytes] = []
    skipping = False
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(name.lower().encode() + b":")
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)


def prepare(args: SendmailArgs, message: bytes, hostname: str, user: str) -> tuple[str, list[str], bytes]:
    """Work out the envelope and the headers to add, as Postfix's cleanup does for local mail.

    Returns:
        ``(sender, recipients, message)``.

    Raises:
        UsageError: no recipients.
    """
    headers, body = _split_headers(message)
    parsed = BytesHeaderParser(policy=compat32).parsebytes(headers + b"\r\n")
    sender = args.sender if args.sender is not None else f"{user}@{hostname}"
    recipients = list(args.recipients)
    if args.extract:
        fields = parsed.get_all("To", []) + parsed.get_all("Cc", []) + parsed.get_all("Bcc", [])
        recipients += [addr for _name, addr in email.utils.getaddresses(fields) if addr]
        headers = _remove_header(headers, "Bcc")
    if not recipients:
        raise UsageError("no recipients given (use -t or name them as arguments)")
    added: list[str] = []
    if parsed.get("From") is None:
        display = args.full_name
        added.append("From: " + (email.utils.formataddr((display, sender)) if display else sender))
    if parsed.get("Date") is None:
        added.append("Date: " + email.utils.formatdate(localtime=True))
    if parsed.get("Message-ID") is None:
        added.append("Message-ID: " + email.utils.make_msgid(domain=hostname))
    extra = "".join(h + "\r\n" for h in added).encode()
    if headers and not headers.endswith(b"\r\n"):
        headers += b"\r\n"
    return sender, recipients, extra + headers + b"\r\n" + body


def _target(cfg: object) -> tuple[str, int]:
    smtps = cfg.smtps[0]  # type: ignore[attr-defined]
    sock = next((s for s in smtps.listen_socket if s.tls == "none"), smtps.listen_socket[0])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(sock.address, sock.address)
    return host, sock.port


def submit(
    host: str,
    port: int,
    sender: str,
    recipients: list[str],
    message: bytes,
    args: SendmailArgs,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Hand the message to smtps; return (exit status, message for stderr)."""
    try:
        client = smtplib.SMTP(host, port, timeout=timeout, local_hostname="localhost")
    except OSError as exc:
        return EX_TEMPFAIL, f"cannot connect to the mail system at {host}:{port}: {exc}; message not sent"
    try:
        client.ehlo()
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if client.has_extn("dsn"):
            if args.ret:
                mail_options.append(f"RET={args.ret.upper()}")
            if args.envid:
                mail_options.append(f"ENVID={args.envid}")
            if args.notify:
                rcpt_options.append(f"NOTIFY={args.notify.upper()}")
        if client.has_extn("8bitmime") and any(b > 127 for b in message):
            mail_options.append("BODY=8BITMIME")
        code, reply = client.mail(sender, mail_options)
        if code >= 400:
            status = EX_TEMPFAIL if code < 500 else EX_UNAVAILABLE
            return status, f"sender <{sender}> refused: {code} {reply.decode(errors='replace')}"
        refused = []
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt, rcpt_options)
            if code >= 400:
                refused.append((rcpt, code, reply.decode(errors="replace")))
        if len(refused) == len(recipients):
            temp = any(code < 500 for _r, code, _t in refused)
            text = "; ".join(f"<{r}>: {c} {t}" for r, c, t in refused)
            return (EX_TEMPFAIL if temp else EX_NOUSER), f"all recipients refused: {text}"
        code, reply = client.data(message)
        if code >= 400:
            status = EX_TEMPFAIL if code < 500 else EX_UNAVAILABLE
            return status, f"message refused: {code} {reply.decode(errors='replace')}"
        for r, c, t in refused:
            print(f"meta1 sendmail: recipient <{r}> refused: {c} {t}", file=sys.stderr)
        return EX_OK, ""
    except (OSError, smtplib.SMTPException) as exc:
        return EX_TEMPFAIL, f"mail system failed during submission: {exc}; message not sent"
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def main(argv: list[str]) -> int:
    """Entry point of ``meta1 sendmail``."""
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"meta1 sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    from meta1py.conf import ConfigErrors, config_file, load_config

    config_path = config_file(args.config)
    try:
        cfg = load_config(config_path)
    except ConfigErrors as exc:
        print(f"meta1 sendmail: configuration error:\n{exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if args.list_queue:
        from meta1py.cli.queue import main as queue_main

        return queue_main(["list", *(["-f", config_path] if config_path else [])])
    try:
        message = read_message(sys.stdin, args.ignore_dots)
        user = getpass.getuser()
        sender, recipients, message = prepare(args, message, cfg.hostname or socket.getfqdn(), user)
    except UsageError as exc:
        print(f"meta1 sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    host, port = _target(cfg)
    status, text = submit(host, port, sender, recipients, message, args)
    if text:
        print(f"meta1 sendmail: {text}", file=sys.stderr)
    return status
