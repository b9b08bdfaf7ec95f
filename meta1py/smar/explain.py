"""``meta1 explain``: what smar would answer at RCPT TO, and why, without sending mail.

    meta1 explain [-f FILE] --client IP [--helo NAME] --from ADDR --to ADDR [--to ADDR...]
                  [--auth USER] [--service NAME]

For each recipient it prints every access map check in the order smar makes them (the map key that
matched and what it did, or the keys it tried), then the recipient's own checks and the reply an
SMTP client would get. It reads the same configuration and maps as smar, with the same code
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
}


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    ap = argparse.ArgumentParser(prog="meta1 explain", description="Explain smar's answer at RCPT TO.")
    ap.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    ap.add_argument("--client", required=True, metavar="IP", help="the client's IP address")
    ap.add_argument("--helo", default="", metavar="NAME", help="the HELO/EHLO name")
    ap.add_argument("--from", dest="sender", required=True, metavar="ADDR", help="MAIL FROM ('' or <>: null)")
    ap.add_argument("--to", dest="rcpts", action="append", required=True, metavar="ADDR", help="RCPT TO")
    ap.add_argument("--auth", default=None, metavar="USER", help="the session authenticated as USER")
    ap.add_argument("--service", default="", metavar="NAME", help="the smtps section's name")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    from meta1py.conf import ConfigErrors, config_file, load_config
    from meta1py.maps import MapErrors
    from meta1py.maps.access import keys_for
    from meta1py.rpc.messages import SmarRecipientCheckRequest
    from meta1py.smar.policy import RcptFacts, decide_rcpt
    from meta1py.smar.resolver import Resolver
    from meta1py.smar.router import Router
    from meta1py.smar.service import SmarService

    try:
        cfg = load_config(config_file(args.config))
        router = Router(cfg, Resolver.from_config(cfg.smar, cfg.smtpc))
    except ConfigErrors as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    except MapErrors as exc:
        print(f"meta1 explain: {exc}", file=sys.stderr)
        return EX_CONFIG
    service = SmarService(cfg, router)
    sender = args.sender.strip().strip("<>")
    auth = f", AUTH {args.auth}" if args.auth else ""
    print(f"client [{args.client}], HELO {args.helo or '(none)'}, MAIL FROM:<{sender}>{auth}")
    status = EX_OK
    for rcpt in args.rcpts:
        rcpt = rcpt.strip().strip("<>")
        print(f"RCPT TO:<{rcpt}>")
        access = router.access
        if access is None:
            print("  access map: none configured")
        else:
            for step in decide_rcpt(access, RcptFacts(args.client, args.helo, sender, rcpt)).steps:
                if step.key is None:
                    tried = ", ".join(keys_for(step.tag, step.subject)) or "(nothing to look up)"
                    print(f"  {step.tag}: no entry (tried {tried})")
                else:
                    print(f"  {step.tag}: {step.key} -> {step.result}: {_EFFECTS[step.effect]}")
        request = SmarRecipientCheckRequest(
            client_address=args.client,
            service=args.service,
            authenticated=args.auth,
            sender=sender,
            recipient=rcpt,
            helo=args.helo,
        )
        answer = service.check(request)
        reply = answer.reply
        if answer.action == "accept" and answer.expanded:
            print(f"  delivered to: {', '.join(answer.expanded)}")
        verdict = {"accept": "accepted", "discard": "accepted, then discarded"}.get(answer.action, "refused")
        print(f"  => {reply.code} {reply.enhanced} {reply.text} ({verdict})")
        if answer.action not in ("accept", "discard"):
            status = EX_REFUSED
    return status
