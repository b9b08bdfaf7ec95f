"""Scripted replies (meta1py.testmode.scripts): the rules' JSON, their validation, which one answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meta1py.testmode.scripts import ScriptBook, ScriptError, ScriptSource, dumps, loads

ISSUE_EXAMPLES = """{"rules": [
  {"direction": "in",  "phase": "rcpt", "to": "fail@example.test", "reply": "550 5.1.1 No such user"},
  {"direction": "out", "phase": "rcpt", "domain": "slow.test", "times": 2,
   "reply": "451 4.4.1 Try again later"},
  {"direction": "in",  "phase": "data", "from": "a@b.test", "reply": "552 5.3.4 Message too big"},
  {"direction": "out", "phase": "connect", "domain": "hang.test", "hang": 30}
]}"""


def test_the_examples_of_the_docs_parse_and_round_trip() -> None:
    rules = loads(ISSUE_EXAMPLES)
    assert len(rules) == 4
    assert loads(dumps(rules)) == rules
    assert str(rules[0].reply) == "550 5.1.1 No such user"
    assert rules[3].hang == 30 and rules[3].reply is None


def test_a_rule_answers_the_event_it_names_and_no_other() -> None:
    book = ScriptBook(loads(ISSUE_EXAMPLES))
    assert book.take("in", "rcpt", to="FAIL@Example.TEST") is not None
    assert book.take("in", "rcpt", to="ok@example.test") is None
    assert book.take("out", "rcpt", to="fail@example.test") is None  # another direction
    assert book.take("in", "data", sender="a@b.test", to="x@y.test") is not None
    assert book.take("in", "data", sender="c@b.test") is None


def test_times_lets_the_event_through_after_n_answers() -> None:
    """ "the first 2 deliveries to slow.test -> 451, then 250"."""
    book = ScriptBook(loads(ISSUE_EXAMPLES))
    answers = [book.take("out", "rcpt", to=f"u{i}@slow.test") for i in range(3)]
    assert [a is not None for a in answers] == [True, True, False]


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ('{"direction": "in", "phase": "rcpt", "reply": "999 nonsense"}', "not an SMTP reply"),
        ('{"direction": "in", "phase": "rcpt", "reply": "550 4.1.1 mixed"}', "does not belong"),
        ('{"direction": "in", "phase": "rcpt", "reply": "354 go on"}', "intermediate"),
        ('{"direction": "in", "phase": "rcpt", "reply": "250 ok"}', "refuses"),
        ('{"direction": "up", "phase": "rcpt", "reply": "550 no"}', "direction"),
        ('{"direction": "in", "phase": "quit", "reply": "550 no"}', "phase"),
        ('{"direction": "in", "phase": "helo", "to": "a@b", "reply": "550 no"}', '"to"'),
        ('{"direction": "in", "phase": "rcpt", "hang": 5, "reply": "550 no"}', "hang"),
        ('{"direction": "out", "phase": "rcpt", "hang": -1}', "hang"),
        ('{"direction": "out", "phase": "rcpt"}', "give a reply"),
        ('{"direction": "out", "phase": "rcpt", "reply": "451 x", "times": 0}', "times"),
        ('{"direction": "out", "phase": "rcpt", "reply": "451 x", "colour": "red"}', "unknown key"),
        ('{"direction": "out", "phase": "rcpt", "reply": "451\\r\\n250 x"}', "not an SMTP reply"),
    ],
)
def test_a_bad_rule_is_refused_with_its_number_and_the_reason(rule: str, says: str) -> None:
    with pytest.raises(ScriptError) as err:
        loads('{"rules": [{"direction": "in", "phase": "rcpt", "reply": "550 ok"}, ' + rule + "]}")
    assert "rule 2" in str(err.value) or "unknown key" in str(err.value)
    assert says in str(err.value)


@pytest.mark.parametrize("text", ["", "not json", "[1, 2", '{"rules": 5}', '{"rulez": []}', '"rules"'])
def test_what_is_not_a_script_is_refused(text: str) -> None:
    with pytest.raises(ScriptError):
        loads(text)


def test_the_source_rereads_its_file_and_restarts_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "scripts.json"
    source = ScriptSource(path)
    assert source.current().rules == ()  # no file: no rules
    path.write_text('{"rules": [{"direction": "out", "phase": "rcpt", "times": 1, "reply": "451 4.0.0 x"}]}')
    book = source.current()
    assert book.take("out", "rcpt", to="a@b.test") is not None
    assert source.current().take("out", "rcpt", to="a@b.test") is None  # same file: count kept
    new = tmp_path / "new.json"
    new.write_text(path.read_text())
    os.replace(new, path)  # as the control API writes it
    assert source.current().take("out", "rcpt", to="a@b.test") is not None
    path.write_text("broken")
    assert source.current().rules == ()
