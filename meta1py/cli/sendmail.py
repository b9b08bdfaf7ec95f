"""``meta1 sendmail``: the sendmail(8)-compatible command line submission interface.

Installed as ``/usr/sbin/sendmail`` (a wrapper that runs ``meta1 sendmail``, see ``meta1 setup
--sendmail``), it lets cron, scripts and PHP's mail() submit mail. The message is read from
standard input and handed to the running MTA over SMTP on its first listener (loopback), like
any other client, so it passes the same checks and gets the same durability: smtps answers 250
only once the message is on stable storage.

When smtps cannot take the message (the MTA is stopped, or answers 4xx), it is not refused: it
is written into the pickup directory (``queue_directory/pickup``, Postfix's maildrop), durably,
and qmgr queues it when it starts, or within ``qmgr { pickup_interval }`` when it runs (see
:mod:`meta1py.cli.postdrop` for who may write there and how). Exit status 0 means the message is
on stable storage in one place or the other. Recipients refused with 4xx while others were
accepted go to the pickup directory too; recipients refused with 5xx are reported on stderr.

Modes (one per call):
  (default), -bm  submit the message on standard input
  -bs           an SMTP session on standard input and output (:mod:`meta1py.cli.sendmail_smtp`)
  -bv           verify the recipients through the running MTA (RCPT TO, no mail sent)
  -bp           list the queue (mailq; same as ``meta1 queue list``)
  -q            deliver queued mail now (``meta1 queue flush``); -qRSITE only mail for SITE,
                -qIQUEUEID only that message; -q30m and other intervals are accepted and ignored
  -bi, -I       newaliases (``meta1 newaliases``)

Flags:
  -t            take recipients from To:, Cc: and Bcc: (plus any given as arguments); Bcc: is removed
  -f ADDR       envelope sender (also -fADDR, -r ADDR); -f '<>' for the null sender
  -F NAME       full name for a From: header added when the message has none
  -i, -oi       a line with a single "." does not end the input
  -N NOTIFY     DSN NOTIFY (never, or success,delay,failure)
  -R RET        DSN RET (full or hdrs)
  -V ENVID      DSN ENVID
  -v            say on stderr where the message went
  -C FILE       configuration file (also --config FILE)
  -oXXX, -B, -m, -n, -G, -U, -Am, -Ac, -L LABEL, -h HOPS   accepted and ignored (as Postfix does)

A recipient or sender without a domain gets ``@hostname`` (Postfix's ``myorigin``), so that
``MAILTO=root`` in a crontab reaches root.
"""

from __future__ import annotations

import email.utils
import getpass
import os
import pwd
import re
import smtplib
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING, BinaryIO, Literal

from meta1py.envelope import DSN_RETS, NOTIFY_KEYWORDS

if TYPE_CHECKING:
    from meta1py.conf import Config
    from meta1py.queue.pickup import PickupEnvelope

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75

_IGNORED_FLAGS = {"-B", "-m", "-n", "-bm", "-U", "-Am", "-Ac", "-G"}
_IGNORED_WITH_VALUE = {"-L", "-h"}
_QUEUE_INTERVAL = re.compile(r"(?:[0-9]+[smhdw]?)+\Z")

Mode = Literal["submit", "smtp", "verify", "list", "flush", "newaliases"]


@dataclass
class SendmailArgs:
    """What the command line asked for."""

    recipients: list[str] = field(default_factory=list)
    mode: Mode = "submit"
    extract: bool = False
    sender: str | None = None
    full_name: str | None = None
    ignore_dots: bool = False
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None
    config: str | None = None
    verbose: bool = False
    #: -qRSITE: flush only mail for SITE; -qIID: only message ID.
    flush_site: str | None = None
    flush_ids: list[str] = field(default_factory=list)
    #: -q30m and the like: noted, nothing done.
    queue_interval: str | None = None

    @property
    def list_queue(self) -> bool:
        """-bp (mailq)."""
        return self.mode == "list"


class UsageError(Exception):
    """A command line sendmail does not accept."""


def _set_mode(args: SendmailArgs, mode: Mode, flag: str) -> None:
    if args.mode != "submit" and args.mode != mode:
        raise UsageError(f"{flag} cannot be combined with another mode (-bs, -bv, -bp, -q, -bi)")
    args.mode = mode


def _queue_flag(args: SendmailArgs, arg: str) -> None:
    """-q, -qRSITE, -qIQUEUEID, -qINTERVAL."""
    rest = arg[2:]
    if rest.startswith("R") and len(rest) > 1:
        args.flush_site = rest[1:]
    elif rest.startswith("I") and len(rest) > 1:
        args.flush_ids.append(rest[1:])
    elif rest and _QUEUE_INTERVAL.match(rest):
        args.queue_interval = rest
    elif rest:
        raise UsageError(f"{arg}: use -q, -qRSITE or -qIQUEUEID (-qS and -qG are not supported)")
    _set_mode(args, "flush", "-q")


def parse_args(argv: Sequence[str]) -> SendmailArgs:
    """Parse sendmail's flags, which allow ``-fADDR`` and ``-f ADDR`` alike.

    Raises:
        UsageError: an unknown flag, a flag missing its value, or two modes.
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
    modes: dict[str, Mode] = {
        "-bs": "smtp",
        "-bv": "verify",
        "-bp": "list",
        "-bi": "newaliases",
        "-I": "newaliases",
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
        elif arg == "-v":
            args.verbose = True
        elif arg in modes:
            _set_mode(args, modes[arg], arg)
        elif arg.startswith("-q"):
            _queue_flag(args, arg)
        elif arg in ("-bd", "-bD"):
            raise UsageError(f"{arg}: meta1py's daemon is started with meta1 run")
        elif arg in _IGNORED_WITH_VALUE:
            if i >= len(argv):
                raise UsageError(f"option {arg} needs a value")
            i += 1
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
    if args.notify is not None:
        words = {w.strip().upper() for w in args.notify.split(",")}
        if not words <= NOTIFY_KEYWORDS or ("NEVER" in words and len(words) > 1):
            raise UsageError("-N takes never, or a list of success, delay and failure")
    if args.mode == "verify" and not args.recipients:
        raise UsageError("-bv: name the addresses to verify")
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


def qualify(address: str, hostname: str) -> str:
    """``address`` with ``@hostname`` added when it has no domain (Postfix's myorigin);
    angle brackets are removed, ``<>`` becomes the null address ``""``."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if address and "@" not in address:
        address = f"{address}@{hostname}"
    return address


def prepare(args: SendmailArgs, message: bytes, hostname: str, user: str) -> tuple[str, list[str], bytes]:
    """Work out the envelope and the headers to add, as Postfix's cleanup does for local mail.

    Returns:
        ``(sender, recipients, message)``; the sender is ``""`` for ``-f '<>'``.

    Raises:
        UsageError: no recipients.
    """
    headers, body = _split_headers(message)
    parsed = BytesHeaderParser(policy=compat32).parsebytes(headers + b"\r\n")
    sender = qualify(args.sender, hostname) if args.sender is not None else f"{user}@{hostname}"
    recipients = list(args.recipients)
    if args.extract:
        fields = parsed.get_all("To", []) + parsed.get_all("Cc", []) + parsed.get_all("Bcc", [])
        recipients += [addr for _name, addr in email.utils.getaddresses(fields) if addr]
        headers = _remove_header(headers, "Bcc")
    recipients = [qualify(r, hostname) for r in recipients if qualify(r, hostname)]
    if not recipients:
        raise UsageError("no recipients given (use -t or name them as arguments)")
    added: list[str] = []
    if parsed.get("From") is None:
        display = args.full_name
        from_address = sender or f"MAILER-DAEMON@{hostname}"
        added.append(
            "From: " + (email.utils.formataddr((display, from_address)) if display else from_address)
        )
    if parsed.get("Date") is None:
        added.append("Date: " + email.utils.formatdate(localtime=True))
    if parsed.get("Message-ID") is None:
        added.append("Message-ID: " + email.utils.make_msgid(domain=hostname))
    extra = "".join(h + "\r\n" for h in added).encode()
    if headers and not headers.endswith(b"\r\n"):
        headers += b"\r\n"
    return sender, recipients, extra + headers + b"\r\n" + body


def login_name() -> str:
    """The name of the user running the command (by uid, not from $USER, as Postfix does)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def _target(cfg: Config) -> tuple[str, int]:
    smtps = cfg.smtps[0]
    sock = next((s for s in smtps.listen_socket if s.tls == "none"), smtps.listen_socket[0])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(sock.address, sock.address)
    return host, sock.port


@dataclass
class SubmitResult:
    """What smtps made of a submission.

    Attributes:
        status: the exit status if nothing else is done (0: queued for every recipient that was
            not refused for good).
        text: for stderr (empty when all went well).
        retry: recipients smtps did not take for a temporary reason (or at all, when it could
            not be reached): they go to the pickup directory.
    """

    status: int
    text: str = ""
    retry: list[str] = field(default_factory=list)


def _rcpt_options(args: SendmailArgs) -> list[str]:
    return [f"NOTIFY={args.notify.upper().replace(' ', '')}"] if args.notify else []


def submit(
    host: str,
    port: int,
    sender: str,
    recipients: list[str],
    message: bytes,
    args: SendmailArgs,
    timeout: float = 60.0,
) -> SubmitResult:
    """Hand the message to smtps."""
    try:
        client = smtplib.SMTP(host, port, timeout=timeout, local_hostname="localhost")
    except smtplib.SMTPConnectError as exc:
        # A greeting other than 220: 421 (busy, shutting down) is for later, 554 is a refusal.
        raw = exc.smtp_error
        said = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        text = f"the mail system at {host}:{port} refused the connection: {exc.smtp_code} {said}"
        if exc.smtp_code >= 500:
            return SubmitResult(EX_UNAVAILABLE, text)
        return SubmitResult(EX_TEMPFAIL, text, list(recipients))
    except (OSError, smtplib.SMTPException) as exc:
        return SubmitResult(
            EX_TEMPFAIL, f"cannot connect to the mail system at {host}:{port}: {exc}", list(recipients)
        )
    accepted: list[str] = []
    temp: list[str] = []
    try:
        client.ehlo()
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if client.has_extn("dsn"):
            if args.ret:
                mail_options.append(f"RET={args.ret.upper()}")
            if args.envid:
                from meta1py.smtp.client import xtext_encode

                mail_options.append(f"ENVID={xtext_encode(args.envid)}")
            rcpt_options = _rcpt_options(args)
        if client.has_extn("8bitmime") and not message.isascii():
            mail_options.append("BODY=8BITMIME")
        if client.has_extn("smtputf8") and not all(a.isascii() for a in [sender, *recipients]):
            mail_options.append("SMTPUTF8")
        code, reply = client.mail(sender, mail_options)
        if code >= 400:
            text = f"sender <{sender}> refused: {code} {reply.decode(errors='replace')}"
            if code < 500:
                return SubmitResult(EX_TEMPFAIL, text, list(recipients))
            return SubmitResult(EX_UNAVAILABLE, text)
        refused = []
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt, rcpt_options)
            if code >= 400:
                refused.append((rcpt, code, reply.decode(errors="replace")))
                if code < 500:
                    temp.append(rcpt)
            else:
                accepted.append(rcpt)
        refusals = "; ".join(f"<{r}>: {c} {t}" for r, c, t in refused if c >= 500)
        for r, c, t in refused:
            if c >= 500:
                print(f"meta1 sendmail: recipient <{r}> refused: {c} {t}", file=sys.stderr)
        if not accepted:
            if temp:
                return SubmitResult(EX_TEMPFAIL, "recipients refused for now", temp)
            return SubmitResult(EX_NOUSER, f"all recipients refused: {refusals}")
        code, reply = client.data(message)
        if code >= 400:
            text = f"message refused: {code} {reply.decode(errors='replace')}"
            if code < 500:
                return SubmitResult(EX_TEMPFAIL, text, accepted + temp)
            return SubmitResult(EX_UNAVAILABLE, text)
        return SubmitResult(EX_OK, "", temp)
    except smtplib.SMTPDataError as exc:
        raw = exc.smtp_error
        error = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        text = f"message refused: {exc.smtp_code} {error}"
        if exc.smtp_code < 500:
            return SubmitResult(EX_TEMPFAIL, text, accepted + temp)
        return SubmitResult(EX_UNAVAILABLE, text)
    except (OSError, smtplib.SMTPException) as exc:
        # The outcome is unknown: the message goes to the pickup directory too. At least once:
        # a duplicate is possible, a loss is not.
        unsent = accepted + temp + [r for r in recipients if r not in accepted and r not in temp]
        return SubmitResult(EX_TEMPFAIL, f"the mail system failed during submission: {exc}", unsent)
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def pickup_envelope(args: SendmailArgs, sender: str, recipients: list[str], message: bytes) -> PickupEnvelope:
    """The envelope of a message that goes to the pickup directory."""
    from meta1py.queue.pickup import PickupEnvelope, PickupRecipient

    notify = tuple(sorted(w.strip().upper() for w in args.notify.split(","))) if args.notify else None
    ret = args.ret.upper() if args.ret else None
    return PickupEnvelope(
        sender=sender,
        recipients=tuple(PickupRecipient(r, notify) for r in recipients),
        ret="FULL" if ret == "FULL" else "HDRS" if ret == "HDRS" else None,
        envid=args.envid,
        body="7BIT" if message.isascii() else "8BITMIME",
        smtputf8=not all(a.isascii() for a in [sender, *recipients]),
        size=len(message),
    )


def _drop(cfg: Config, envelope: PickupEnvelope, content: bytes) -> str:
    from meta1py.cli.postdrop import drop

    return drop(cfg.queue_directory, envelope, content)


def _can_drop(cfg: Config) -> bool:
    from meta1py.cli.postdrop import may_write, postdrop_program
    from meta1py.queue.pickup import pickup_directory

    return may_write(pickup_directory(cfg.queue_directory)) or os.access(postdrop_program(), os.X_OK)


def deliver(cfg: Config, args: SendmailArgs, stdin: BinaryIO | object) -> int:
    """The default mode: read the message, give it to smtps, or to the pickup directory."""
    from meta1py.cli.postdrop import DropError
    from meta1py.queue.pickup import content_problem

    try:
        message = read_message(stdin, args.ignore_dots)
        hostname = cfg.hostname or socket.getfqdn()
        sender, recipients, message = prepare(args, message, hostname, login_name())
    except UsageError as exc:
        print(f"meta1 sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    host, port = _target(cfg)
    result = submit(host, port, sender, recipients, message, args)
    if result.status == EX_OK and not result.retry:
        if args.verbose:
            print(f"meta1 sendmail: queued by the mail system at {host}:{port}", file=sys.stderr)
        return EX_OK
    if not result.retry:
        print(f"meta1 sendmail: {result.text}; message not sent", file=sys.stderr)
        return result.status
    problem = content_problem(message)
    if problem is not None:
        print(f"meta1 sendmail: {result.text}; and the message cannot be queued: {problem}", file=sys.stderr)
        return EX_DATAERR if result.status == EX_OK else result.status
    try:
        name = _drop(cfg, pickup_envelope(args, sender, result.retry, message), message)
    except DropError as exc:
        why = result.text or "recipients refused for now"
        print(
            f"meta1 sendmail: {why}, and cannot put the message into the pickup directory: {exc}; "
            + ("message not sent" if result.status != EX_OK else "not sent to " + ", ".join(result.retry)),
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    if args.verbose:
        why = result.text or "recipients refused for now"
        print(f"meta1 sendmail: {why}; queued in the pickup directory as {name}", file=sys.stderr)
    return EX_OK


def verify(cfg: Config, args: SendmailArgs) -> int:
    """-bv: ask the running MTA about each address (MAIL FROM, RCPT TO, RSET: no mail is sent).

    Prints ``ADDRESS... deliverable`` or ``ADDRESS... undeliverable: REPLY`` (sendmail's form) per
    address; exit 0 when all are deliverable, 67 when one is not, 75 when one could not be
    decided now or the MTA does not answer.
    """
    hostname = cfg.hostname or socket.getfqdn()
    sender = qualify(args.sender, hostname) if args.sender is not None else f"{login_name()}@{hostname}"
    host, port = _target(cfg)
    try:
        client = smtplib.SMTP(host, port, timeout=60.0, local_hostname="localhost")
    except (OSError, smtplib.SMTPException) as exc:
        print(
            f"meta1 sendmail: cannot verify: no answer from the mail system at {host}:{port}: {exc}",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    status = EX_OK
    try:
        client.ehlo()
        code, reply = client.mail(sender)
        if code >= 400:
            text = reply.decode(errors="replace")
            print(f"meta1 sendmail: cannot verify: sender <{sender}> refused: {code} {text}", file=sys.stderr)
            return EX_TEMPFAIL if code < 500 else EX_UNAVAILABLE
        for address in args.recipients:
            rcpt = qualify(address, hostname)
            code, reply = client.rcpt(rcpt)
            text = " ".join(reply.decode(errors="replace").split())
            if code < 400:
                print(f"{rcpt}... deliverable")
            elif code < 500:
                print(f"{rcpt}... deferred: {code} {text}")
                if status == EX_OK:
                    status = EX_TEMPFAIL
            else:
                print(f"{rcpt}... undeliverable: {code} {text}")
                status = EX_NOUSER
        client.rset()
    except (OSError, smtplib.SMTPException) as exc:
        print(f"meta1 sendmail: cannot verify: the mail system failed: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
    return status


def smtp_session(cfg: Config) -> int:
    """-bs: SMTP on standard input and output."""
    from meta1py.cli.sendmail_smtp import run

    host, port = _target(cfg)

    def connect() -> smtplib.SMTP | None:
        try:
            client = smtplib.SMTP(host, port, timeout=60.0, local_hostname="localhost")
        except (OSError, smtplib.SMTPException):
            return None
        try:
            code, _ = client.ehlo()
        except (OSError, smtplib.SMTPException):
            client.close()
            return None
        if code != 250:
            client.close()
            return None
        return client

    return run(cfg, connect, lambda env, content: _drop(cfg, env, content), lambda: _can_drop(cfg))


def main(argv: list[str]) -> int:
    """Entry point of ``meta1 sendmail``."""
    if argv in (["--help"], ["-?"]):
        # Not -h: sendmail's -h N (hop count) is accepted and ignored.
        print("usage: meta1 sendmail [flags] [recipient...]   (sendmail(8)-compatible)\n")
        print(__doc__.split("\n\n", 1)[1].strip())
        return EX_OK
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
    config = ["-f", str(config_path)] if config_path else []
    if args.mode == "list":
        from meta1py.cli.queue import main as queue_main

        return queue_main(["list", *config])
    if args.mode == "flush":
        from meta1py.cli.queue import main as queue_main

        if args.queue_interval is not None:
            print(
                f"meta1 sendmail: -q{args.queue_interval} ignored: qmgr retries deferred mail by "
                "itself (qmgr retry_min, retry_max); -q alone delivers queued mail now",
                file=sys.stderr,
            )
            return EX_OK
        site = ["--to", args.flush_site] if args.flush_site else []
        return queue_main(["flush", *config, *site, *args.flush_ids])
    if args.mode == "newaliases":
        from meta1py.cli.newaliases import main as newaliases_main

        return newaliases_main(config)
    if args.mode == "verify":
        return verify(cfg, args)
    if args.mode == "smtp":
        return smtp_session(cfg)
    return deliver(cfg, args, sys.stdin)
