"""Value types, error rendering and the public API, tested directly."""

from __future__ import annotations

import pytest

from meta1py.conf import (
    Config,
    ConfigError,
    ConfigErrors,
    Relayhost,
    dump_config,
    load_config,
    parse_config,
)
from meta1py.conf.schema import InvalidValue, Scalar, Size, Time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("30s", 30.0),
        ("5m3s", 303.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1500ms", 1.5),
        ("1H30M", 5400.0),
        ("0", 0.0),
    ],
)
def test_time_units(text: str, seconds: float) -> None:
    t = Time()
    assert t.parse(Scalar(text)) == seconds
    assert t.parse(Scalar(t.format(seconds))) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "5m3", "1.5s", "-1", "s5"])
def test_bad_times(text: str) -> None:
    with pytest.raises(InvalidValue):
        Time().parse(Scalar(text))


@pytest.mark.parametrize(
    ("text", "size"), [("512", 512), ("64K", 65536), ("10M", 10485760), ("1G", 1 << 30), ("2k", 2048)]
)
def test_size_units(text: str, size: int) -> None:
    s = Size()
    assert s.parse(Scalar(text)) == size
    assert s.parse(Scalar(s.format(size))) == size


def test_error_rendering_has_source_caret_and_hint() -> None:
    err = ConfigError("a.conf", 2, 5, "bad thing", "do this", "\tab cd")
    assert str(err).splitlines() == ["a.conf:2:5: bad thing", "\tab cd", "\t   ^", "hint: do this"]
    many = ConfigErrors([err, ConfigError("a.conf", 0, 0, "no place")])
    assert str(many).splitlines()[-1] == "a.conf: no place"


def test_all_errors_in_one_run() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config("hostnme = a;\nlog_level = loud;\nqmgr { retry_min = soon; }\n", "x.conf")
    assert [(e.line, e.column) for e in info.value.errors] == [(1, 1), (2, 13), (3, 20)]
    assert "x.conf:1:1: unknown option 'hostnme'" in str(info.value)


def test_defaults_give_working_non_root_mta(in_tmp: object) -> None:
    cfg = load_config(None)
    assert cfg == parse_config("")
    assert cfg.local_domains == ("localhost",)
    (smtps,) = cfg.smtps
    assert (smtps.listen_socket[0].address, smtps.listen_socket[0].port) == ("127.0.0.1", 2525)
    assert str(cfg.mail_directory).endswith("var/mail")
    assert cfg.run_directory == cfg.queue_directory / "run"
    assert "vrfy" not in smtps.flags and "bare_newline_normalize" not in smtps.flags
    assert {"pipelining", "8bitmime", "chunking", "request_cert"} <= smtps.flags
    assert cfg.hostname


def test_model_is_frozen_and_hashable() -> None:
    cfg = parse_config("")
    with pytest.raises(AttributeError):
        cfg.hostname = "x"  # type: ignore[misc]
    assert hash(cfg) == hash(parse_config(""))


def test_relayhost_forms() -> None:
    def rh(text: str) -> Relayhost | None:
        return parse_config(f"smtpc {{ relayhost = {text}; }}").smtpc.relayhost

    assert rh("[mail.example]:587") == Relayhost("mail.example", 587, False)
    assert rh("[mail.example]") == Relayhost("mail.example", 25, False)
    assert rh("mail.example") == Relayhost("mail.example", 25, True)
    assert rh("[::1]:2525") == Relayhost("::1", 2525, False)


def test_dump_round_trips_absolute_paths_and_all_smtps(in_tmp: object) -> None:
    text = """queue_directory = /srv/q; smar { aliases = a; routes = "/etc/r t"; }
    smtps a { listen_socket { port = 1; } } smtps b { listen_socket { port = 2; tls = implicit; }
    tls { cert_file = c.pem; key_file = k.pem; } }"""
    cfg = parse_config(text)
    assert cfg.smar.aliases is not None and str(cfg.smar.aliases) == "/srv/q/a"
    for only_changed in (True, False):
        again = parse_config(dump_config(cfg, only_changed))
        assert again == cfg
        assert [s.name for s in again.smtps] == ["a", "b"]


def test_only_changed_output_is_empty_for_defaults() -> None:
    assert dump_config(parse_config("")) == ""


def test_locations_recorded() -> None:
    cfg = parse_config("\n  smtps { max_recipients = 3; }", "f.conf")
    assert cfg.locations["smtps[0].max_recipients"] == ("f.conf", 2, 11)


def test_config_is_a_plain_dataclass() -> None:
    assert Config().smtps[0].listen_socket[0].port == 2525
