"""The access map's verdict at RCPT: delayed client and sender checks, QUICK, CONT, overrides."""

from __future__ import annotations

import pytest

from meta1py.maps.access import parse_access
from meta1py.smar.policy import ListResult, PolicyFacts, Stage, access_keys, decide

ACCESS_TEXT = """\
cltaddr:192.0.2.66                REJECT
cltaddr:192.0.2.99                QUICK:ERROR:554 5.7.1 you are blocked everywhere
cltaddr:10.0.0.                   RELAY
cltaddr:10.0.1.                   QUICK:RELAY
cltaddr:172.16.                   CONT
cltaddr:172.                      TEMPFAIL
ehlo:localhost                    ERROR:5.7.1 do not call yourself localhost
from:spammer@example.org          REJECT
from:newsletter@example.org       DISCARD
from:example.org                  CONT
from:.org                         TEMPFAIL
from:<>                           OK
to:abuse@                         OK
to:partner.example                RELAY
to:closed@example.test            ERROR:550 5.2.1 mailbox closed
protectedrcpt:board@example.test  from:.example.test cltaddr:10.9.
"""
ACCESS = parse_access(ACCESS_TEXT, "access")

CLIENT, HELO = "198.51.100.7", "client.example.net"

# (client, helo, sender, recipient) -> (action, reply code or None, relay)
CASES = [
    # Nothing matches: no objection.
    ((CLIENT, HELO, "alice@example.net", "bob@example.test"), ("pass", None, False)),
    # Client, HELO and sender refusals.
    (("192.0.2.66", HELO, "alice@example.net", "bob@example.test"), ("refuse", 550, False)),
    ((CLIENT, "LocalHost", "alice@example.net", "bob@example.test"), ("refuse", 550, False)),
    ((CLIENT, HELO, "spammer+x@example.org", "bob@example.test"), ("refuse", 550, False)),
    # A recipient entry OK overrides them (delayed checks): abuse@ is reachable by everyone...
    (("192.0.2.66", "localhost", "spammer@example.org", "abuse@example.test"), ("pass", None, False)),
    # ...but not past a QUICK refusal.
    (("192.0.2.99", HELO, "alice@example.net", "abuse@example.test"), ("refuse", 554, False)),
    # CONT: no decision from that check; the less specific key of the same tag is not tried.
    ((CLIENT, HELO, "alice@example.org", "bob@example.test"), ("pass", None, False)),
    ((CLIENT, HELO, "alice@mail.other.org", "bob@example.test"), ("refuse", 450, False)),
    (("172.16.5.5", HELO, "alice@example.net", "bob@example.test"), ("pass", None, False)),
    (("172.17.5.5", HELO, "alice@example.net", "bob@example.test"), ("refuse", 450, False)),
    # RELAY: from a client network, or to a recipient domain.
    (("10.0.0.5", HELO, "alice@example.net", "x@elsewhere.example"), ("pass", None, True)),
    ((CLIENT, HELO, "alice@example.net", "x@partner.example"), ("pass", None, True)),
    # QUICK:RELAY skips the later checks (the sender's REJECT is never looked at).
    (("10.0.1.5", "localhost", "spammer@example.org", "x@elsewhere.example"), ("pass", None, True)),
    # A plain RELAY does not: the sender is still refused.
    (("10.0.0.5", HELO, "spammer@example.org", "x@elsewhere.example"), ("refuse", 550, True)),
    # DISCARD: accepted, then dropped. The null sender has its own key.
    ((CLIENT, HELO, "newsletter@example.org", "bob@example.test"), ("discard", None, False)),
    ((CLIENT, HELO, "", "bob@example.test"), ("pass", None, False)),
    # A refusing recipient entry.
    ((CLIENT, HELO, "alice@example.net", "closed@example.test"), ("refuse", 550, False)),
    # protectedrcpt: only the listed senders and clients.
    ((CLIENT, HELO, "ceo@example.test", "board@example.test"), ("refuse", 550, False)),
    ((CLIENT, HELO, "ceo@hq.example.test", "board@example.test"), ("pass", None, False)),
    (("10.9.8.7", HELO, "someone@example.net", "board@example.test"), ("pass", None, False)),
]


@pytest.mark.parametrize(("facts", "expected"), CASES)
def test_verdicts(facts: tuple[str, str, str, str], expected: tuple[str, int | None, bool]) -> None:
    verdict = decide(ACCESS, PolicyFacts(*facts), "rcpt")
    code = verdict.reply[0] if verdict.reply is not None else None
    assert (verdict.action, code, verdict.relay) == expected


def test_the_steps_say_why() -> None:
    verdict = decide(
        ACCESS, PolicyFacts("192.0.2.66", "localhost", "spammer@example.org", "abuse@x.test"), "rcpt"
    )
    assert [(s.tag, s.key, s.result, s.effect) for s in verdict.steps] == [
        ("to", "to:abuse@", "OK", "pass"),
        ("cltaddr", "cltaddr:192.0.2.66", "REJECT", "overridden"),
        ("ehlo", "ehlo:localhost", "ERROR:550 5.7.1 do not call yourself localhost", "overridden"),
        ("from", "from:spammer@example.org", "REJECT", "overridden"),
    ]
    refused = decide(ACCESS, PolicyFacts(CLIENT, "localhost", "a@example.net", "b@example.test"), "rcpt")
    assert refused.reply == (550, "5.7.1", "do not call yourself localhost")
    default_text = decide(ACCESS, PolicyFacts("192.0.2.66", HELO, "a@example.net", "b@example.test"), "rcpt")
    assert default_text.reply == (550, "5.7.1", "client [192.0.2.66]: access denied")


def test_a_broken_entry_is_a_temporary_failure() -> None:
    access = parse_access("from:example.org  MAYBE\n", "access", strict=False)
    verdict = decide(access, PolicyFacts(CLIENT, HELO, "a@example.org", "b@example.test"), "rcpt")
    assert verdict.action == "refuse" and verdict.reply is not None
    assert verdict.reply[:2] == (451, "4.3.5") and "access:1:" in verdict.reply[2]


# -- names, certificates, DNS lists, and the stages of delay_checks = no ---------------------------

ACCESS2 = parse_access(
    """\
cltname:.dialup.example.net       ERROR:5.7.1 dial-up hosts use their provider's relay
cltname:relay.partner.example     RELAY
cltresolve:no                     ERROR:450 4.7.25 no name
cltresolve:temp                   TEMPFAIL
certsubject:CN=mx.partner.example RELAY
certissuer:"CN=Bad CA"            REJECT
cltaddr:198.51.100.9              OK
ehlo:localhost                    REJECT
from:spammer@example.org          REJECT
to:abuse@                         OK
""",
    "access2",
)

BL = ListResult("dnsbl", "bl.test", "7.100.51.198.bl.test", True, "reject", "127.0.0.2", "see bl.test")
BL_TEMP = ListResult("dnsbl", "bl.test", "7.100.51.198.bl.test", True, "tempfail", "127.0.0.2")
BL_ERROR = ListResult("dnsbl", "bl.test", "7.100.51.198.bl.test", False, error="timeout")
WL = ListResult("dnswl", "wl.test", "7.100.51.198.wl.test", True, "permit", "127.0.10.1")
RHS = ListResult("rhsbl", "dbl.test", "spam.example.org.dbl.test", True, "reject", "127.0.1.2")
NAMED = {"client_name": "mx.example.net", "client_resolve": "ok"}


def facts(**kw: object) -> PolicyFacts:
    base: dict[str, object] = {
        "client_address": "198.51.100.7",
        "helo": HELO,
        "sender": "a@example.net",
        "recipient": "bob@example.test",
        **NAMED,
    }
    base.update(kw)
    return PolicyFacts(**base)  # type: ignore[arg-type]


# (facts, stage) -> (action, reply code or None, relay, trusted)
CASES2 = [
    # Reverse DNS: a confirmed name under a refused domain; no name; a temporary failure.
    ((facts(client_name="pc1.dialup.example.net"), "rcpt"), ("refuse", 550, False, False)),
    ((facts(client_name="", client_resolve="no"), "rcpt"), ("refuse", 450, False, False)),
    ((facts(client_name="", client_resolve="temp"), "rcpt"), ("refuse", 450, False, False)),
    # A client that may relay anyway (AUTH, relay_clients) is not refused for its reverse DNS...
    ((facts(client_name="", client_resolve="no", may_relay=True), "rcpt"), ("pass", None, False, True)),
    # ...nor one whose verified certificate an entry lets relay; a name entry RELAY relays too.
    (
        (facts(client_name="", client_resolve="no", cert_subject="CN=mx.partner.example"), "rcpt"),
        ("pass", None, True, True),
    ),
    ((facts(client_name="relay.partner.example"), "rcpt"), ("pass", None, True, True)),
    ((facts(cert_issuer="CN=Bad CA", cert_subject="CN=x"), "rcpt"), ("refuse", 550, False, False)),
    # DNS lists: a listing refuses (554, or 450 for action tempfail); a list that cannot be asked
    # is a temporary failure; a DNSWL listing or an access OK for the client trusts it.
    ((facts(lists=(BL,)), "rcpt"), ("refuse", 554, False, False)),
    ((facts(lists=(BL_TEMP,)), "rcpt"), ("refuse", 450, False, False)),
    ((facts(lists=(BL_ERROR,)), "rcpt"), ("refuse", 451, False, False)),
    ((facts(lists=(WL, BL)), "rcpt"), ("pass", None, False, True)),
    ((facts(client_address="198.51.100.9", lists=(BL,)), "rcpt"), ("pass", None, False, True)),
    ((facts(may_relay=True, lists=(BL_ERROR,)), "rcpt"), ("pass", None, False, True)),
    # A recipient entry overrides listings and failures at RCPT (delayed checks).
    ((facts(recipient="abuse@example.test", lists=(BL, RHS)), "rcpt"), ("pass", None, False, True)),
    ((facts(recipient="abuse@example.test", lists=(BL_ERROR,)), "rcpt"), ("pass", None, False, True)),
    ((facts(sender="x@spam.example.org", lists=(RHS,)), "rcpt"), ("refuse", 554, False, False)),
    # delay_checks = no: each stage runs its own checks, and no recipient entry can help.
    ((facts(sender=None, recipient=None, lists=(BL,)), "connect"), ("refuse", 554, False, False)),
    ((facts(sender=None, recipient=None, helo="localhost"), "connect"), ("pass", None, False, False)),
    ((facts(sender=None, recipient=None, helo="localhost"), "helo"), ("refuse", 550, False, False)),
    ((facts(recipient=None, lists=(BL,)), "helo"), ("pass", None, False, False)),
    ((facts(recipient=None, sender="spammer@example.org"), "mail"), ("refuse", 550, False, False)),
    (
        (facts(recipient=None, sender="x@spam.example.org", lists=(RHS,)), "mail"),
        ("refuse", 554, False, False),
    ),
    ((facts(recipient=None, lists=(BL,)), "mail"), ("pass", None, False, False)),
]


@pytest.mark.parametrize(("given", "expected"), CASES2)
def test_names_certificates_lists_and_stages(
    given: tuple[PolicyFacts, Stage], expected: tuple[str, int | None, bool, bool]
) -> None:
    verdict = decide(ACCESS2, *given)
    code = verdict.reply[0] if verdict.reply is not None else None
    assert (verdict.action, code, verdict.relay, verdict.trusted) == expected


def test_a_listing_reply_carries_the_txt_record_and_access_keys_cover_every_lookup() -> None:
    verdict = decide(None, facts(lists=(BL,)), "rcpt")
    assert verdict.reply == (
        554,
        "5.7.1",
        "Service unavailable; Client host [198.51.100.7] blocked using bl.test; see bl.test",
    )
    rhs = decide(None, facts(sender="x@spam.example.org", lists=(RHS,)), "rcpt")
    assert (
        rhs.reply is not None and "Sender address [spam.example.org] blocked using dbl.test" in rhs.reply[2]
    )
    # smar fetches these keys from a map that is not in memory before it decides.
    keys = access_keys(facts(cert_subject="CN=x"), "rcpt")
    assert keys[0] == "to:bob@example.test" and "cltaddr:198.51.100." in keys
    assert {"certsubject:CN=x", "cltname:.example.net", "cltresolve:ok", "ehlo:.example.net"} <= set(keys)
    assert keys[-1].startswith("protectedrcpt:")
