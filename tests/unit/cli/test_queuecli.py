"""``meta1 queue`` without a daemon: argument parsing, the JSON form, the mailq text."""

from __future__ import annotations

import json
import time

from meta1py.cli.queue import build_parser
from meta1py.queue.envelopes import Envelope, Recipient
from meta1py.queue.listing import PickupFile, envelope_json, format_list, message_state

QID = "3Q8W4K2XF7TB"


def envelope(hold: bool = False) -> Envelope:
    return Envelope(
        qid=QID,
        sender="",
        arrival_time=1_700_000_000.5,
        size=2048,
        hold=hold,
        recipients=(
            Recipient(
                idx=0,
                address="x@example.net",
                status="deferred",
                attempts=2,
                next_attempt=1_700_000_600.9,
                last_reply="451 4.3.0 try later",
            ),
            Recipient(idx=1, address="y@example.net", status="delivered", attempts=1, last_reply="250 ok"),
        ),
    )


def test_config_flag_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["-f", "a.conf", "list"]).config == "a.conf"
    assert parser.parse_args(["list", "--json", "-f", "b.conf"]).config == "b.conf"
    assert parser.parse_args(["flush", "-f", "c.conf", QID]).ids == [QID]
    assert parser.parse_args(["stats"]).config is None


def test_envelope_json_is_the_documented_format() -> None:
    data = json.loads(json.dumps(envelope_json(envelope())))
    assert data == {
        "queue_id": QID,
        "queue_name": "deferred",
        "arrival_time": 1_700_000_000,
        "message_size": 2048,
        "sender": "",
        "kind": "normal",
        "recipients": [
            {
                "address": "x@example.net",
                "status": "deferred",
                "attempts": 2,
                "next_attempt": 1_700_000_600,
                "delay_reason": "451 4.3.0 try later",
                "last_reply": "451 4.3.0 try later",
            },
            {
                "address": "y@example.net",
                "status": "delivered",
                "attempts": 1,
                "next_attempt": None,
                "delay_reason": None,
                "last_reply": "250 ok",
            },
        ],
    }


def test_states_and_mailq_text() -> None:
    assert message_state(envelope()) == "deferred"
    assert message_state(envelope(hold=True)) == "hold"
    text = format_list([envelope(hold=True)], now=1_700_000_000.5 + 7 * 60)
    lines = text.splitlines()
    # Postfix's layout (postqueue -p): the header, id+mark, size, asctime's first 20 characters.
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    arrival = time.asctime(time.localtime(1_700_000_000.5))[:20]
    assert lines[1] == f"{QID}!    2048 {arrival} MAILER-DAEMON"
    assert lines[2] == "(451 4.3.0 try later)".rjust(78)
    assert lines[3] == " " * 41 + "x@example.net"
    assert "y@example.net" not in text  # final recipients are not listed
    assert lines[-2:] == ["", "-- 2 Kbytes in 1 Request."]
    assert format_list([], 0) == "Mail queue is empty\n"


def test_pickup_files_are_listed_like_postfixs_maildrop_queue() -> None:
    waiting = PickupFile("0123456789abcdef0123456789abcdef", 1500, 1_700_000_000.0, 1000)
    lines = format_list([envelope()], 0, [waiting]).splitlines()
    assert lines[1].startswith(f"{QID}     2048 ")  # deferred: no mark
    assert lines[-3].startswith(waiting.name) and lines[-3].endswith("(maildrop queue, sender UID 1000)")
    assert lines[-1] == "-- 3 Kbytes in 2 Requests."
