"""The access map's verdict at RCPT: delayed client and sender checks, QUICK, CONT, overrides."""

from __future__ import annotations

import pytest

from meta1py.maps.access import parse_access
from meta1py.smar.policy import RcptFacts, decide_rcpt

ACCESS = parse_access(
    """\
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
""",
    "access",
)

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
    verdict = decide_rcpt(ACCESS, RcptFacts(*facts))
    code = verdict.reply[0] if verdict.reply is not None else None
    assert (verdict.action, code, verdict.relay) == expected


def test_the_steps_say_why() -> None:
    verdict = decide_rcpt(ACCESS, RcptFacts("192.0.2.66", "localhost", "spammer@example.org", "abuse@x.test"))
    assert [(s.tag, s.key, s.result, s.effect) for s in verdict.steps] == [
        ("to", "to:abuse@", "OK", "pass"),
        ("cltaddr", "cltaddr:192.0.2.66", "REJECT", "overridden"),
        ("ehlo", "ehlo:localhost", "ERROR:550 5.7.1 do not call yourself localhost", "overridden"),
        ("from", "from:spammer@example.org", "REJECT", "overridden"),
    ]
    refused = decide_rcpt(ACCESS, RcptFacts(CLIENT, "localhost", "a@example.net", "b@example.test"))
    assert refused.reply == (550, "5.7.1", "do not call yourself localhost")
    default_text = decide_rcpt(ACCESS, RcptFacts("192.0.2.66", HELO, "a@example.net", "b@example.test"))
    assert default_text.reply == (550, "5.7.1", "client [192.0.2.66]: access denied")


def test_a_broken_entry_is_a_temporary_failure() -> None:
    access = parse_access("from:example.org  MAYBE\n", "access", strict=False)
    verdict = decide_rcpt(access, RcptFacts(CLIENT, HELO, "a@example.org", "b@example.test"))
    assert verdict.action == "refuse" and verdict.reply is not None
    assert verdict.reply[:2] == (451, "4.3.5") and "access:1:" in verdict.reply[2]
