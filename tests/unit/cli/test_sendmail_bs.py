"""``sendmail -bs`` offline: the SMTP session on a pipe when smtps does not answer.

The session (meta1py.cli.sendmail_smtp.StdioSession) is driven in memory, bytes in and bytes out,
with no smtps to talk to (``connect`` finds nobody, as when the MTA is stopped) and the real pickup
writer on a temporary directory. tests/e2e/test_sendmail_compat.py drives the real command with
smtplib, against the running daemon and with the daemon stopped.
"""

from __future__ import annotations

import io
from pathlib import Path

from meta1py.cli.postdrop import DropError
from meta1py.cli.sendmail_smtp import StdioSession
from meta1py.queue.pickup import (
    PickupEnvelope,
    encode_envelope,
    read_pickup,
    write_pickup_file,
)


def session(tmp_path: Path, *, can_drop: bool = True, fail: bool = False) -> StdioSession:
    def drop(env: PickupEnvelope, content: bytes) -> str:
        if fail:
            raise DropError("disk full")
        return write_pickup_file(tmp_path, [encode_envelope(env), content])

    return StdioSession(
        "host.example",
        max_message_bytes=10_000,
        max_recipients=3,
        connect=lambda: None,
        drop=drop,
        can_drop=lambda: can_drop,
    )


def talk(s: StdioSession, data: bytes) -> list[str]:
    out, _done = s.receive(data)
    return out.decode().splitlines()


def picked(tmp_path: Path) -> list[tuple[PickupEnvelope, bytes]]:
    found = []
    for path in sorted(tmp_path.iterdir()):
        got = bytearray()
        env = read_pickup(
            io.BytesIO(path.read_bytes()), max_content_bytes=10**6, max_recipients=10, sink=got.extend
        )
        found.append((env, bytes(got)))
    return found


def test_a_pipelined_transaction_goes_to_the_pickup_directory(tmp_path: Path) -> None:
    s = session(tmp_path)
    assert s.greeting().startswith(b"220 host.example ESMTP")
    ehlo = talk(s, b"EHLO client\r\n")
    assert (
        ehlo[0] == "250-host.example"
        and "250-PIPELINING" in ehlo
        and any(line[4:] == "SMTPUTF8" for line in ehlo)
    )
    assert "250-DSN" in ehlo and "250-SIZE 10000" in ehlo
    replies = talk(
        s,
        b"MAIL FROM:<me@host.example> RET=HDRS ENVID=run+2B1\r\n"
        b"RCPT TO:<ops@example.net> NOTIFY=FAILURE\r\n"
        b"RCPT TO:<bad address>\r\n"
        b"DATA\r\n",
    )
    assert replies[0].startswith("250 2.1.0") and replies[1].startswith("250 2.1.5")
    assert replies[2].startswith("501 5.1.3") and replies[3].startswith("354")
    done = talk(s, b"Subject: offline\r\n\r\n..dot-stuffed\r\n.\r\n")
    assert len(done) == 1 and done[0].startswith("250 2.0.0 Ok: queued as ")
    [(env, content)] = picked(tmp_path)
    assert done[0].endswith(s.queued[0]) and (tmp_path / s.queued[0]).is_file()
    assert env.sender == "me@host.example" and [r.address for r in env.recipients] == ["ops@example.net"]
    assert env.recipients[0].notify == ("FAILURE",) and env.ret == "HDRS" and env.envid == "run+1"
    assert content == b"Subject: offline\r\n\r\n.dot-stuffed\r\n"
    out, done_flag = s.receive(b"QUIT\r\n")
    assert out.startswith(b"221 2.0.0") and done_flag


def test_data_without_recipients_and_the_recipient_limit(tmp_path: Path) -> None:
    s = session(tmp_path)
    s.greeting()
    talk(s, b"HELO client\r\n")
    assert talk(s, b"MAIL FROM:<>\r\n")[0].startswith("250")
    assert talk(s, b"DATA\r\n")[0].startswith("554 5.5.1")
    for n in range(3):
        assert talk(s, f"RCPT TO:<r{n}@example.net>\r\n".encode())[0].startswith("250")
    assert talk(s, b"RCPT TO:<r9@example.net>\r\n")[0].startswith("452 4.5.3")
    assert talk(s, b"RSET\r\n")[0].startswith("250")
    assert talk(s, b"RCPT TO:<r@example.net>\r\n")[0].startswith("503")
    assert not list(tmp_path.iterdir())


def test_no_smtps_and_no_pickup_directory_keeps_the_message_with_the_client(tmp_path: Path) -> None:
    s = session(tmp_path, can_drop=False)
    s.greeting()
    talk(s, b"EHLO client\r\n")
    assert talk(s, b"MAIL FROM:<me@host.example>\r\n")[0].startswith("451 4.3.0")


def test_a_failed_pickup_write_is_a_temporary_failure(tmp_path: Path) -> None:
    s = session(tmp_path, fail=True)
    s.greeting()
    replies = talk(s, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    assert replies[-1].startswith("354")
    assert talk(s, b"Subject: x\r\n\r\nbody\r\n.\r\n")[0].startswith("451 4.3.0")


def test_the_end_of_input_ends_the_session(tmp_path: Path) -> None:
    s = session(tmp_path)
    s.greeting()
    talk(s, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: cut")
    out, done = s.receive(b"")
    assert done and out == b""
    assert not list(tmp_path.iterdir())  # an unfinished message is never queued
