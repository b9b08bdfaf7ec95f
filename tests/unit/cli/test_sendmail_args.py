"""sendmail's command line and header handling, as cron and PHP's mail() use them."""

import io

import pytest

from meta1py.cli.sendmail import UsageError, parse_args, prepare, qualify, read_message


def test_flags_with_attached_and_separate_values() -> None:
    args = parse_args(["-t", "-i", "-fbob@example.org", "-F", "Bob B", "-oem", "x@example.net"])
    assert args.extract and args.ignore_dots
    assert args.sender == "bob@example.org" and args.full_name == "Bob B"
    assert args.recipients == ["x@example.net"]
    assert parse_args(["-f", "a@b", "-oi", "c@d"]).sender == "a@b"


def test_unknown_flag_and_missing_value() -> None:
    with pytest.raises(UsageError):
        parse_args(["-Z"])
    with pytest.raises(UsageError):
        parse_args(["-f"])


def test_single_dot_ends_input_unless_i() -> None:
    raw = b"Subject: x\n\nline\n.\nafter\n"
    assert read_message(io.BytesIO(raw), ignore_dots=False) == b"Subject: x\r\n\r\nline\r\n"
    assert read_message(io.BytesIO(raw), ignore_dots=True).endswith(b".\r\nafter\r\n")


def test_extract_recipients_strips_bcc_and_adds_headers() -> None:
    msg = (
        b"To: a@example.net\r\nCc: B <b@example.net>\r\nBcc: c@example.net,\r\n d@example.net\r\n"
        b"Subject: s\r\n\r\nhi\r\n"
    )
    args = parse_args(["-t"])
    sender, rcpts, out = prepare(args, msg, "host.example", "root")
    assert sender == "root@host.example"
    assert rcpts == ["a@example.net", "b@example.net", "c@example.net", "d@example.net"]
    head = out.split(b"\r\n\r\n")[0]
    assert b"Bcc" not in head and b"d@example.net" not in head
    assert b"From: root@host.example" in head and b"Date: " in head and b"Message-ID: " in head
    assert out.endswith(b"\r\n\r\nhi\r\n")


def test_no_recipients_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        prepare(parse_args([]), b"Subject: x\r\n\r\n", "h", "u")


# -- modes (issue 20): -bs, -bv, -bp, -q, -bi/-I ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["-bs"], "smtp"),
        (["-bv", "a@example.org"], "verify"),
        (["-bp"], "list"),
        (["-q"], "flush"),
        (["-bi"], "newaliases"),
        (["-I"], "newaliases"),
        (["-bm", "-t"], "submit"),
        ([], "submit"),
    ],
)
def test_each_mode_flag_selects_its_mode(argv: list[str], mode: str) -> None:
    assert parse_args(argv).mode == mode


def test_queue_run_flags() -> None:
    args = parse_args(["-qRexample.com"])
    assert args.mode == "flush" and args.flush_site == "example.com"
    args = parse_args(["-qI3Q8W4K2XF7TB"])
    assert args.flush_ids == ["3Q8W4K2XF7TB"]
    args = parse_args(["-q30m"])
    assert args.mode == "flush" and args.queue_interval == "30m"
    with pytest.raises(UsageError, match="-qS"):
        parse_args(["-qSsender.example"])


def test_bad_combinations_and_values_are_usage_errors() -> None:
    for argv in (["-bs", "-bp"], ["-bv"], ["-bd"], ["-q", "-bi"], ["-N", "sometimes"], ["-N", "never,delay"]):
        with pytest.raises(UsageError):
            parse_args(argv)
    assert parse_args(["-L", "cron", "-h", "5", "-G", "-v", "x@example.net"]).recipients == ["x@example.net"]
    assert parse_args(["-v"]).verbose


def test_addresses_without_a_domain_get_the_hostname() -> None:
    assert qualify("root", "host.example") == "root@host.example"
    assert qualify("<ops@example.net>", "h") == "ops@example.net"
    assert qualify("<>", "h") == ""
    sender, rcpts, out = prepare(parse_args(["-f", "<>", "root"]), b"Subject: x\r\n\r\n", "host.example", "u")
    assert sender == "" and rcpts == ["root@host.example"]
    assert b"From: MAILER-DAEMON@host.example\r\n" in out
