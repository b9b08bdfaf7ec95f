"""Scripted replies: which reply a test wants for a given SMTP event, in or out.

A script is a JSON object ``{"rules": [...]}`` (the body of ``PUT /scripts``, and the format of
``test_mode { script_file }``). Each rule::

    {"direction": "in",  "phase": "rcpt", "to": "fail@example.test", "reply": "550 5.1.1 No such user"}
    {"direction": "out", "phase": "rcpt", "domain": "slow.test", "times": 2,
     "reply": "451 4.4.1 Try again later"}
    {"direction": "in",  "phase": "data", "from": "a@b.test", "reply": "552 5.3.4 Message too big"}
    {"direction": "out", "phase": "connect", "domain": "hang.test", "hang": 30}

* ``direction``: ``in`` (mail coming in: smtps answers the client) or ``out`` (delivery attempts:
  the captured destination answers smtpc).
* ``phase``: ``connect`` (the greeting), ``helo``, ``mail``, ``rcpt`` or ``data`` (the reply to
  the message content, after the final dot).
* What it matches, all optional, every one given must match (addresses and domains without
  regard to case): ``to`` (the recipient, at ``rcpt`` and ``data``), ``from`` (the sender, from
  ``mail`` on; ``""`` is the null sender), ``domain`` (the recipient's domain; for ``out`` at
  ``connect``, ``helo`` and ``mail``, the domain being delivered to), ``client`` (``in``: the
  client's IP address).
* ``reply``: ``"CODE [ENHANCED] text"``. ``in`` rules refuse (4xx or 5xx); ``out`` rules may also
  accept (2xx). The enhanced code, when given, must have the reply's class.
* ``hang``: seconds to wait before answering (``out`` only; with no ``reply`` the connection is
  then closed without one).
* ``times``: answer only the first N matching events, then let the event through (the default
  reply). Without it, a rule applies for ever.

The first rule that matches and has uses left answers. This module is pure: parsing, validation
and matching; :class:`ScriptSource` (the only I/O here) re-reads the active rules when their file
changes, which resets every rule's count.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["in", "out"]
Phase = Literal["connect", "helo", "mail", "rcpt", "data"]

DIRECTIONS: tuple[Direction, ...] = ("in", "out")
PHASES: tuple[Phase, ...] = ("connect", "helo", "mail", "rcpt", "data")
MAX_RULES = 1000
MAX_HANG_S = 3600.0
_MATCH_KEYS = ("to", "from", "domain", "client")
_KEYS = {"direction", "phase", "reply", "hang", "times", *_MATCH_KEYS}
_REPLY = re.compile(r"([2-5][0-9][0-9])(?: ([245]\.[0-9]{1,3}\.[0-9]{1,3}))?(?: (.*))?\Z", re.DOTALL)


class ScriptError(ValueError):
    """A script that is not valid; the message names the rule and what is wrong."""


@dataclass(frozen=True)
class ScriptedReply:
    """A reply a rule gives: code, enhanced status code (or None) and text."""

    code: int
    enhanced: str | None
    text: str

    def __str__(self) -> str:
        return " ".join(p for p in (str(self.code), self.enhanced or "", self.text) if p)


@dataclass(frozen=True)
class Rule:
    """One scripted reply (see the module docstring)."""

    direction: Direction
    phase: Phase
    reply: ScriptedReply | None = None
    to: str | None = None
    sender: str | None = None
    domain: str | None = None
    client: str | None = None
    hang: float = 0.0
    times: int | None = None

    def matches(
        self,
        direction: Direction,
        phase: Phase,
        *,
        to: str | None = None,
        sender: str | None = None,
        domain: str | None = None,
        client: str | None = None,
    ) -> bool:
        """Whether this rule is about this event (its count is not looked at)."""
        if (self.direction, self.phase) != (direction, phase):
            return False
        if domain is None and to is not None and "@" in to:
            domain = to.rpartition("@")[2]
        wanted = ((self.to, to), (self.sender, sender), (self.domain, domain), (self.client, client))
        return all(want is None or (got is not None and want.lower() == got.lower()) for want, got in wanted)

    def to_json(self) -> dict[str, Any]:
        """The rule as it is written in a script."""
        out: dict[str, Any] = {"direction": self.direction, "phase": self.phase}
        for key, value in (
            ("to", self.to),
            ("from", self.sender),
            ("domain", self.domain),
            ("client", self.client),
        ):
            if value is not None:
                out[key] = value
        if self.reply is not None:
            out["reply"] = str(self.reply)
        if self.hang:
            out["hang"] = self.hang
        if self.times is not None:
            out["times"] = self.times
        return out


def parse_reply(text: object, where: str) -> ScriptedReply:
    """Parse ``"550 5.1.1 No such user"``.

    Raises:
        ScriptError: not a reply a server could send.
    """
    if not isinstance(text, str):
        raise ScriptError(f'{where}: reply must be a string like "550 5.1.1 No such user"')
    m = _REPLY.match(text)
    if m is None or "\r" in text or "\n" in text:
        raise ScriptError(
            f"{where}: {text!r} is not an SMTP reply: it needs a code from 200 to 599, then an optional"
            ' enhanced code and text, on one line ("550 5.1.1 No such user")'
        )
    code, enhanced, rest = int(m.group(1)), m.group(2), (m.group(3) or "").strip()
    if enhanced is not None and enhanced[0] != str(code)[0]:
        raise ScriptError(f"{where}: enhanced code {enhanced} does not belong to a {code} reply")
    if code >= 300 and code < 400:
        raise ScriptError(f"{where}: {code} is an intermediate reply; script a final one (2xx, 4xx or 5xx)")
    return ScriptedReply(code, enhanced, rest or _default_text(code))


def _default_text(code: int) -> str:
    return "OK" if code < 400 else "Try again later (scripted)" if code < 500 else "Refused (scripted)"


def parse_rule(obj: object, index: int) -> Rule:
    """One rule of a script.

    Raises:
        ScriptError: the rule is not valid (the message says which rule and why).
    """
    where = f"rule {index + 1}"
    if not isinstance(obj, Mapping):
        raise ScriptError(f"{where}: a rule is a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ScriptError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(_KEYS))})")
    direction = obj.get("direction")
    if direction not in DIRECTIONS:
        raise ScriptError(f'{where}: direction must be "in" or "out", not {direction!r}')
    phase = obj.get("phase")
    if phase not in PHASES:
        raise ScriptError(f"{where}: phase must be one of {', '.join(PHASES)}, not {phase!r}")
    match: dict[str, str | None] = {}
    for key in _MATCH_KEYS:
        value = obj.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 320):
            raise ScriptError(f"{where}: {key} must be a string (an address, a domain or an IP address)")
        match[key] = value
    if match["to"] is not None and phase not in ("rcpt", "data"):
        raise ScriptError(f'{where}: "to" is known only from the rcpt phase on')
    if match["from"] is not None and phase in ("connect", "helo"):
        raise ScriptError(f'{where}: "from" is known only from the mail phase on')
    if match["client"] is not None and direction == "out":
        raise ScriptError(f'{where}: "client" is for mail coming in')
    reply = parse_reply(obj["reply"], where) if "reply" in obj else None
    hang = obj.get("hang", 0)
    if (
        isinstance(hang, bool)
        or not isinstance(hang, int | float)
        or not 0 <= hang <= MAX_HANG_S
        or math.isnan(hang)
    ):
        raise ScriptError(f"{where}: hang must be a number of seconds from 0 to {MAX_HANG_S:g}")
    if hang and direction == "in":
        raise ScriptError(f'{where}: hang is for delivery attempts (direction "out")')
    if reply is None and not hang:
        raise ScriptError(f'{where}: give a reply ("550 5.1.1 No such user") or a hang')
    if reply is not None and direction == "in" and reply.code < 400:
        raise ScriptError(f"{where}: a rule for mail coming in refuses: its reply is 4xx or 5xx")
    times = obj.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ScriptError(f"{where}: times must be a whole number >= 1")
    return Rule(
        direction,
        phase,
        reply,
        to=match["to"],
        sender=match["from"],
        domain=match["domain"],
        client=match["client"],
        hang=float(hang),
        times=times,
    )


def parse_script(obj: object) -> tuple[Rule, ...]:
    """A whole script: ``{"rules": [...]}`` (a bare list of rules is taken too).

    Raises:
        ScriptError: the script or one of its rules is not valid.
    """
    rules = obj.get("rules") if isinstance(obj, Mapping) else obj
    if isinstance(obj, Mapping) and set(obj) - {"rules"}:
        raise ScriptError(f'unknown key {sorted(set(obj) - {"rules"})[0]!r}: a script is {{"rules": [...]}}')
    if not isinstance(rules, Sequence) or isinstance(rules, str | bytes):
        raise ScriptError('a script is a JSON object {"rules": [...]}')
    if len(rules) > MAX_RULES:
        raise ScriptError(f"at most {MAX_RULES} rules")
    return tuple(parse_rule(rule, i) for i, rule in enumerate(rules))


def loads(text: str | bytes) -> tuple[Rule, ...]:
    """Parse a script from JSON text.

    Raises:
        ScriptError: not JSON, or not a valid script.
    """
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScriptError(f"not JSON: {exc}") from None
    return parse_script(obj)


def dumps(rules: Sequence[Rule]) -> str:
    """The JSON text of a script."""
    return json.dumps({"rules": [r.to_json() for r in rules]}, indent=2) + "\n"


@dataclass
class ScriptBook:
    """Rules and how often each has answered (one per process that applies them)."""

    rules: tuple[Rule, ...] = ()
    used: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.used = [0] * len(self.rules)

    def take(
        self,
        direction: Direction,
        phase: Phase,
        *,
        to: str | None = None,
        sender: str | None = None,
        domain: str | None = None,
        client: str | None = None,
    ) -> Rule | None:
        """The rule that answers this event, counting the use; None: no rule does."""
        for i, rule in enumerate(self.rules):
            if rule.times is not None and self.used[i] >= rule.times:
                continue
            if rule.matches(direction, phase, to=to, sender=sender, domain=domain, client=client):
                self.used[i] += 1
                return rule
        return None

    def has(self, direction: Direction) -> bool:
        """Whether any rule is about this direction (a cheap test before building facts)."""
        return any(r.direction == direction for r in self.rules)


class ScriptSource:
    """The active rules in a file, re-read when the file changes (qmgr's control API writes it
    by renaming a new file into place). A missing or invalid file means no rules."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._stamp: tuple[int, int, int] | None = None
        self._book = ScriptBook()

    def current(self) -> ScriptBook:
        """The rules now in force (one ``stat`` per call)."""
        try:
            st = os.stat(self.path)
        except OSError:
            if self._stamp is not None:
                self._stamp, self._book = None, ScriptBook()
            return self._book
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                with open(self.path, "rb") as f:
                    self._book = ScriptBook(loads(f.read()))
            except (OSError, ScriptError):
                self._book = ScriptBook()
        return self._book
