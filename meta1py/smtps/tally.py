"""The commands of one SMTP session, counted as Postfix's smtpd counts them for its log.

Postfix (2.11 and later) ends a session with ``disconnect from NAME[ADDR] ehlo=1 mail=1 rcpt=0/1
data=0/1 quit=1 commands=3/5``: for each command, how many succeeded, and how many were given
when that differs; then the sum. fail2ban's postfix filter (mode ``ddos``) reads ``auth=0/N``
there, and its ``lost connection after CMD`` lines name the last command. No I/O here: the session
tells the tally what came in and what it answered.
"""

from __future__ import annotations

from meta1py.smtp import events as ev

# Postfix's order of the counts, and the names of the commands.
_ORDER = (
    "helo",
    "ehlo",
    "lhlo",
    "starttls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "bdat",
    "rset",
    "noop",
    "vrfy",
    "expn",
    "help",
    "quit",
    "unknown",
)
_NAMES: dict[type, str] = {
    ev.Helo: "helo",
    ev.Ehlo: "ehlo",
    ev.Lhlo: "lhlo",
    ev.StartTls: "starttls",
    ev.Auth: "auth",
    ev.MailFrom: "mail",
    ev.RcptTo: "rcpt",
    ev.DataStart: "data",
    ev.Bdat: "bdat",
    ev.Rset: "rset",
    ev.Noop: "noop",
    ev.Vrfy: "vrfy",
    ev.Expn: "expn",
    ev.Help: "help",
    ev.Quit: "quit",
    ev.InvalidCommand: "unknown",
}
# Replies that are not the end of a command: AUTH's challenges, DATA's go-ahead.
_INTERMEDIATE = (334, 354)


class CommandTally:
    """Commands given and commands that succeeded (a 2xx or 3xx final reply), per command."""

    __slots__ = ("_counts", "_pending", "last")

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}
        self._pending: str | None = None
        #: The last command given, as Postfix names it in ``lost connection after CMD``
        #: (``CONNECT`` before any).
        self.last = "CONNECT"

    def command(self, event: object) -> None:
        """An event from the client: a command starts (other events are ignored)."""
        name = _NAMES.get(type(event))
        if name is None:
            return
        self._pending = name
        self.last = name.upper() if name != "unknown" else "UNKNOWN"
        self._counts.setdefault(name, [0, 0])[1] += 1

    def reply(self, code: int) -> None:
        """A reply went out: the end of the pending command unless it is an intermediate one."""
        if self._pending is None or code in _INTERMEDIATE:
            return
        if code < 400:
            self._counts[self._pending][0] += 1
        self._pending = None

    def summary(self) -> str:
        """Postfix's words: ``ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4`` (empty: no command)."""
        if not self._counts:
            return "commands=0"
        words = []
        ok_sum = total_sum = 0
        for name in _ORDER:
            counts = self._counts.get(name)
            if counts is None:
                continue
            ok, total = counts
            ok_sum += ok
            total_sum += total
            words.append(f"{name}={ok}" if ok == total else f"{name}={ok}/{total}")
        words.append(f"commands={ok_sum}" if ok_sum == total_sum else f"commands={ok_sum}/{total_sum}")
        return " ".join(words)
