"""``meta1 explain``: what smar would answer at RCPT TO, and why, without sending mail.

    meta1 explain [-f FILE] --client IP [--client-name NAME | --client-resolve ok|no|temp]
                  [--helo NAME] --from ADDR --to ADDR [--to ADDR...] [--auth USER]
                  [--tls] [--cert-subject DN] [--cert-issuer DN] [--service NAME]

For each recipient it prints the client's forward-confirmed name (looked up in DNS unless
``--client-name`` or ``--client-resolve`` says what to assume), every access map check and DNS
list in the order smar makes them (the map key that matched and what it did, or the keys it
tried), then the recipient's own checks, greylisting, and the reply an SMTP client would get.
Greylisting is only read, never updated: explaining a triplet does not start its delay.
It reads the same configuration and maps as smar, with the same code
(:func:`meta1py.smar.policy.decide_rcpt` and :meth:`meta1py.smar.service.SmarService.check`), so
the answer is the one the running MTA gives (give or take a map edited in the last second). It
lives in the smar package because it is smar's logic run offline; ``meta1`` dispatches to it by
name, as it does to mcp for ``meta1 run``.

Exit 0 when every recipient would be accepted, 1 when one would not, 64 for bad usage, 78 for a
bad configuration or an unreadable map.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meta1py.smar.policy import Step
    from meta1py.smar.service import SmarService

EX_OK, EX_REFUSED, EX_USAGE, EX_CONFIG = 0, 1, 64, 78

_EFFECTS = {
    "none": "no decision",
    "pass": "passes",
    "refuse": "refuses",
    "overridden": "refusal overridden by the recipient's entry",
    "relay": "passes, relaying allowed",
    "quick": "final (QUICK): no further access check",
    "discard": "accept and discard",
    "broken": "broken line: temporary failure",
    "allowed": "protected recipient, and this client or sender may mail it",
    "trusted": "listed: the client is trusted (no block lists, no greylisting)",
    "skipped": "not asked (client trusted)",
}


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="meta1 explain", description="Explain smar's answer at RCPT TO.")
    ap.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    ap.add_argument("--client", required=True, metavar="IP", help="the client's IP address")
    ap.add_argument(
        "--client-name", default=None, metavar="NAME", help="its verified name (no reverse DNS lookup)"
    )
    ap.add_argument(
        "--client-resolve",
        choices=("ok", "no", "temp"),
        default=None,
        help="the reverse DNS outcome to assume (no lookup); ok needs --client-name",
    )
    ap.add_argument("--helo", default="", metavar="NAME", help="the HELO/EHLO name")
    ap.add_argument("--from", dest="sender", required=True, metavar="ADDR", help="MAIL FROM ('' or <>: null)")
    ap.add_argument("--to", dest="rcpts", action="append", required=True, metavar="ADDR", help="RCPT TO")
    ap.add_argument("--auth", default=None, metavar="USER", help="the session authenticated as USER")
    ap.add_argument("--tls", action="store_true", help="the session uses TLS (STARTTLS or port 465)")
    ap.add_argument(
        "--cert-subject", default="", metavar="DN", help="the client's verified certificate subject"
    )
    ap.add_argument("--cert-issuer", default="", metavar="DN", help="its issuer")
    ap.add_argument("--service", default="", metavar="NAME", help="the smtps section's name")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    if args.client_resolve == "ok" and not args.client_name:
        print("meta1 explain: --client-resolve ok needs --client-name", file=sys.stderr)
        return EX_USAGE
    if (args.cert_subject or args.cert_issuer) and not args.tls:
        args.tls = True  # a client certificate comes with TLS
    import trio

    from meta1py.conf import ConfigErrors, config_file, load_config
    from meta1py.maps import MapErrors
    from meta1py.smar.resolver import Resolver, ZoneFileError
    from meta1py.smar.router import Router
    from meta1py.smar.service import SmarService

    try:
        cfg = load_config(config_file(args.config))
        router = Router(cfg, Resolver.from_config(cfg.smar, cfg.smtpc, cfg.test_mode))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    except ZoneFileError as exc:
        print(f"meta1 explain: zone_file {exc}", file=sys.stderr)
        return EX_CONFIG
    except MapErrors as exc:
        print(f"meta1 explain: {exc}", file=sys.stderr)
        return EX_CONFIG
    if cfg.smar.greylisting.enable:
        from pathlib import Path

        from meta1py.smar.greycmd import become_owner

        # As root, read the greylist as its owner: SQLite may create its -shm file even to read.
        problem = become_owner(Path(cfg.smar.greylisting.database).parent)
        if problem is not None:
            print(f"meta1 explain: {problem}", file=sys.stderr)
            return EX_CONFIG
    service = SmarService(cfg, router, dry_run=True)
    return trio.run(_explain, service, args)


async def _explain(service: SmarService, args: argparse.Namespace) -> int:
    from meta1py.rpc.messages import SmarRecipientCheckRequest
    from meta1py.smar.resolver import ReverseName

    sender = args.sender.strip().strip("<>")
    auth = f", AUTH {args.auth}" if args.auth else ""
    tls = ", TLS" if args.tls else ""
    if args.cert_subject or args.cert_issuer:
        tls += f" (client certificate {args.cert_subject or '?'}, issuer {args.cert_issuer or '?'})"
    print(f"client [{args.client}], HELO {args.helo or '(none)'}, MAIL FROM:<{sender}>{auth}{tls}")
    reverse: ReverseName | None = None
    if args.client_name:
        reverse = ReverseName(args.client_resolve or "ok", args.client_name)
    elif args.client_resolve:
        reverse = ReverseName(args.client_resolve)
    refused = _mail_refusal(service, args.service, sender, args.auth)
    if refused is not None:
        print(f"MAIL FROM:<{sender}>")
        print(f"  smtps: => {refused} (refused before any recipient)")
        return EX_REFUSED
    status = EX_OK
    for rcpt in args.rcpts:
        rcpt = rcpt.strip().strip("<>")
        print(f"RCPT TO:<{rcpt}>")
        request = SmarRecipientCheckRequest(
            client_address=args.client,
            service=args.service,
            authenticated=args.auth,
            sender=sender,
            recipient=rcpt,
            helo=args.helo,
            cert_subject=args.cert_subject,
            cert_issuer=args.cert_issuer,
        )
        explained = await service.explain(request, reverse=reverse)
        facts = explained.facts
        if facts.client_resolve:
            name = f"{facts.client_name} (forward-confirmed)" if facts.client_name else "none"
            print(f"  client name: {name}; cltresolve {facts.client_resolve}")
        if facts.may_relay:
            print("  relay client (relay_clients or AUTH): may relay; trusted")
        if service.router.access is None:
            print("  access map: none configured")
        for step in explained.policy.steps if explained.policy is not None else ():
            print(_step_line(step))
        answer = explained.reply
        reply = answer.reply
        if service.greylist is not None and explained.policy is not None:
            if explained.greylisted:
                print(f"  greylisting: deferred: {reply.text}")
            elif explained.policy.trusted or facts.may_relay:
                print("  greylisting: skipped (client trusted)")
            elif answer.action == "accept":
                print("  greylisting: passes (whitelisted network, or a triplet past its delay)")
        if answer.action == "accept" and answer.expanded:
            print(f"  delivered to: {', '.join(answer.expanded)}")
        verdict = {"accept": "accepted", "discard": "accepted, then discarded"}.get(answer.action, "refused")
        print(f"  => {reply.code} {reply.enhanced} {reply.text} ({verdict})")
        if answer.action not in ("accept", "discard"):
            status = EX_REFUSED
    return status


def _mail_refusal(service: SmarService, name: str, sender: str, auth: str | None) -> str | None:
    """smtps's own MAIL FROM rules (require_auth, sender_must_match_login) on the section
    ``name``: the refusing reply as one line, or None."""
    from meta1py.smar.service import smtps_section
    from meta1py.submission import submission_refusal

    cfg = service.config
    section = smtps_section(cfg, name)
    if section is None:
        return None
    reply = submission_refusal(section, sender, auth, cfg.local_domains)
    if reply is None:
        return None
    return f"{reply.code} {reply.enhanced or ''} {' '.join(reply.lines)}".replace("  ", " ")


def _step_line(step: Step) -> str:
    from meta1py.maps.access import keys_for

    if step.tag in ("dnsbl", "dnswl", "rhsbl"):
        head = f"  {step.tag} {step.subject}:"
        if step.effect == "skipped":
            return f"{head} not asked (client trusted)"
        if step.key is None:
            return f"{head} not listed"
        return f"{head} {step.key} -> {step.result}: {_EFFECTS[step.effect]}"
    if step.key is None:
        tried = ", ".join(keys_for(step.tag, step.subject)) or "(nothing to look up)"
        return f"  {step.tag}: no entry (tried {tried})"
    return f"  {step.tag}: {step.key} -> {step.result}: {_EFFECTS[step.effect]}"
