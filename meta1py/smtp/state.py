"""The server's state table: which commands are legal where, and how replies move the state.

The state changes only when the adapter sends a reply (h11's rule: the peer's
command is a request, our reply decides). ``ServerConnection._transition`` is
the only code that changes the state, and it only looks things up here.

States::

    START     connected, greeting not sent yet
    REJECTED  554 greeting sent: only QUIT (others get 503, RFC 5321 §3.1)
    INIT      greeting sent, no successful HELO/EHLO/LHLO yet
    READY     greeted, no mail transaction
    MAIL      MAIL accepted, no recipient accepted yet
    RCPT      at least one recipient accepted
    DATA      354 sent: reading content up to <CRLF>.<CRLF>
    BDAT      at least one BDAT chunk accepted, LAST not yet seen
    AUTH      334 sent: the next line is a SASL response
    TLS       220 sent to STARTTLS: waiting for the adapter's handshake
    CLOSED    221 or 421 sent, or the peer closed
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """Server session states (see the module docstring)."""

    START = "START"
    REJECTED = "REJECTED"
    INIT = "INIT"
    READY = "READY"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"
    AUTH = "AUTH"
    TLS = "TLS"
    CLOSED = "CLOSED"


S = State
_GREETED = frozenset({S.INIT, S.READY, S.MAIL, S.RCPT, S.BDAT})
_HELLOED = frozenset({S.READY, S.MAIL, S.RCPT, S.BDAT})
_ALL_CMD = frozenset({S.REJECTED}) | _GREETED

# Command verb -> states in which it is legal. Outside them: 503 5.5.1.
# (DATA and BDAT are also accepted in MAIL so that the core can answer
# "554 no valid recipients" rather than "503", RFC 2920 §3.1.)
LEGAL: dict[str, frozenset[State]] = {
    "EHLO": _GREETED,
    "HELO": _GREETED,
    "LHLO": _GREETED,
    "MAIL": frozenset({S.READY}),
    "RCPT": frozenset({S.MAIL, S.RCPT}),
    "DATA": frozenset({S.MAIL, S.RCPT}),
    "BDAT": frozenset({S.MAIL, S.RCPT, S.BDAT}),
    "RSET": _GREETED,
    "NOOP": _GREETED,
    "QUIT": _ALL_CMD,
    "HELP": _GREETED,
    "VRFY": _GREETED,
    "EXPN": _GREETED,
    "STARTTLS": frozenset({S.READY}),
    "AUTH": frozenset({S.READY}),
}

# Reply kinds for the transition table.
OK, MORE, FAIL = "2xx", "3xx", "4xx/5xx"

# (state, what was answered) -> {reply kind: next state}. A missing entry
# means: the state does not change.
TRANSITIONS: dict[tuple[State, str], dict[str, State]] = {
    (S.START, "GREETING"): {OK: S.INIT, FAIL: S.REJECTED},
    **{(st, "HELLO"): {OK: S.READY} for st in _GREETED},
    **{(st, "RSET"): {OK: S.READY} for st in _HELLOED},
    (S.READY, "MAIL"): {OK: S.MAIL},
    (S.MAIL, "RCPT"): {OK: S.RCPT},
    (S.RCPT, "DATA"): {MORE: S.DATA},
    (S.DATA, "END"): {OK: S.READY, FAIL: S.READY},
    (S.RCPT, "BDAT"): {OK: S.BDAT, FAIL: S.READY},
    (S.BDAT, "BDAT"): {OK: S.BDAT, FAIL: S.READY},
    (S.RCPT, "BDAT_LAST"): {OK: S.READY, FAIL: S.READY},
    (S.BDAT, "BDAT_LAST"): {OK: S.READY, FAIL: S.READY},
    (S.READY, "AUTH"): {MORE: S.AUTH},
    (S.AUTH, "AUTH"): {OK: S.READY, FAIL: S.READY},
    (S.READY, "STARTTLS"): {OK: S.TLS},
    **{(st, "QUIT"): {OK: S.CLOSED} for st in _ALL_CMD},
}


# The same table flattened to (state, answered, reply kind) -> next state, so
# that the per-reply lookup is one dict probe (this runs for every reply).
NEXT: dict[tuple[State, str, str], State] = {
    (st, answered, kind): new for (st, answered), moves in TRANSITIONS.items() for kind, new in moves.items()
}


def next_state(state: State, answered: str, code: int) -> State:
    """Return the state after replying ``code`` to ``answered`` in ``state``.

    A 421 always closes the session (RFC 5321 §3.8).
    """
    if code == 421:
        return S.CLOSED
    kind = OK if code < 300 else MORE if code < 400 else FAIL
    return NEXT.get((state, answered, kind), state)
