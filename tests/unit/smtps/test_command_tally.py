"""smtps's count of a session's commands, in Postfix's words (``disconnect from ... ehlo=1 ...``)."""

from __future__ import annotations

from meta1py.smtp import events as ev
from meta1py.smtp.address import Address, NullPath
from meta1py.smtps.tally import CommandTally


def test_a_plain_session_counts_each_command_once() -> None:
    tally = CommandTally()
    for event, code in (
        (ev.Ehlo("client.example"), 250),
        (ev.MailFrom(Address("a", "example.org"), ev.MailParams()), 250),
        (ev.RcptTo(Address("b", "example.net"), ev.RcptParams()), 250),
        (ev.DataStart(), 354),
        (None, 250),  # the end of the data: the reply that ends DATA
        (ev.Quit(), 221),
    ):
        if event is not None:
            tally.command(event)
        tally.reply(code)
    assert tally.summary() == "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"
    assert tally.last == "QUIT"


def test_failures_are_written_ok_over_given() -> None:
    tally = CommandTally()
    tally.command(ev.Ehlo("c.example"))
    tally.reply(250)
    tally.command(ev.MailFrom(NullPath(), ev.MailParams()))
    tally.reply(250)
    for _ in range(2):
        tally.command(ev.RcptTo(Address("x", "elsewhere.test"), ev.RcptParams()))
        tally.reply(554)
    tally.command(ev.DataStart())
    tally.reply(554)  # no valid recipients: DATA fails without a 354
    assert tally.summary() == "ehlo=1 mail=1 rcpt=0/2 data=0/1 commands=2/5"
    assert tally.last == "DATA"


def test_auth_counts_once_over_its_challenges() -> None:
    tally = CommandTally()
    tally.command(ev.Ehlo("c.example"))
    tally.reply(250)
    tally.command(ev.StartTls())
    tally.reply(220)
    tally.command(ev.Ehlo("c.example"))
    tally.reply(250)
    tally.command(ev.Auth("LOGIN", None))
    tally.reply(334)
    tally.command(ev.AuthResponse("YWxpY2U="))
    tally.reply(334)
    tally.command(ev.AuthResponse("Z3Vlc3M="))
    tally.reply(535)
    tally.command(ev.Quit())
    tally.reply(221)
    # fail2ban's postfix filter (mode ddos) looks for auth=0/N on this line.
    assert tally.summary() == "ehlo=2 starttls=1 auth=0/1 quit=1 commands=4/5"


def test_no_command_and_the_greeting_alone() -> None:
    tally = CommandTally()
    tally.reply(220)  # the greeting ends no command
    assert (tally.summary(), tally.last) == ("commands=0", "CONNECT")
