"""Property tests: generated valid configs round-trip through dump_config (check-config -n)."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta1py.conf import SMTPS_FLAGS, ConfigErrors, dump_config, parse_config

_label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8).filter(
    lambda s: not s.startswith("-")
)
_host = st.lists(_label, min_size=1, max_size=3).map(".".join)
_time = st.integers(1, 3000).map(lambda n: f"{n}s") | st.integers(1, 59).map(lambda n: f"{n}m")
_ip4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_path = st.text(string.ascii_letters + string.digits + " _-./", min_size=1, max_size=20).filter(
    lambda s: s.strip("/") != ""
)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def configs(draw: st.DrawFn) -> str:
    parts: list[str] = []
    if draw(st.booleans()):
        parts.append(f"hostname = {draw(_host)};")
    if draw(st.booleans()):
        parts.append(f"queue_directory = {_q(draw(_path))};")
    if draw(st.booleans()):
        parts.append(f"mail_directory = {_q(draw(_path))};")
    if draw(st.booleans()):
        parts.append(f"local_domains = {{ {', '.join(draw(st.lists(_host, max_size=3)))} }};")
    if draw(st.booleans()):
        parts.append(f"log_level = {draw(st.sampled_from(['debug', 'info', 'warning', 'error']))};")
    qmgr = []
    if draw(st.booleans()):
        lo = draw(st.integers(1, 1000))
        qmgr.append(f"retry_min = {lo}; retry_max = {lo + draw(st.integers(0, 5000))};")
    if draw(st.booleans()):
        qmgr.append(f"queue_lifetime = {draw(st.integers(1, 30))}d;")
    if draw(st.booleans()):
        qmgr.append(f"user = {draw(_label)}; restart_dependencies = {{ smtps }};")
    if qmgr:
        parts.append("qmgr { " + " ".join(qmgr) + " }")
    smar = []
    if draw(st.booleans()):
        servers = draw(st.lists(st.tuples(_ip4, st.integers(1, 65535)), max_size=3))
        smar.append("nameserver = { " + ", ".join(f"{ip}:{p}" for ip, p in servers) + " };")
    if draw(st.booleans()):
        smar.append(f"DNS_timeout = {draw(st.integers(100, 60000))}ms;")
    if draw(st.booleans()):
        smar.append(f"aliases = {_q(draw(_path))};")
    if smar:
        parts.append("smar { " + " ".join(smar) + " }")
    if draw(st.booleans()):
        host = draw(_host)
        port = draw(st.integers(1, 65535))
        form = draw(st.sampled_from([f"[{host}]:{port}", host, f"{host}:{port}"]))
        parts.append(f"smtpc {{ relayhost = {form}; max_connections = {draw(st.integers(1, 99))}; }}")
    names = draw(st.lists(_label, max_size=3, unique=True))
    for n, name in enumerate(names or ([None] if draw(st.booleans()) else [])):
        body = [f"listen_socket {{ port = {1000 + n}; }}"]
        if draw(st.booleans()):
            body.append(f"max_message_size = {draw(st.integers(1, 900))}M;")
        if draw(st.booleans()):
            body.append(f"IO_timeout = {draw(_time)};")
        if draw(st.booleans()):
            flags = draw(st.lists(st.sampled_from(SMTPS_FLAGS), unique=True, max_size=5))
            neg = draw(st.lists(st.booleans(), min_size=len(flags), max_size=len(flags)))
            body.append(
                "flags = { "
                + ", ".join(("no_" if b else "") + f for f, b in zip(flags, neg, strict=True))
                + " };"
            )
        if draw(st.booleans()):
            nets = draw(st.lists(st.sampled_from(["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]), max_size=3))
            body.append("relay_clients = { " + ", ".join(nets) + " };")
        parts.append(f"smtps {name or ''} {{ " + " ".join(body) + " }")
    sep = draw(st.sampled_from(["\n", " ", "\n\n  "]))
    return sep.join(parts)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.booleans())
def test_generated_configs_round_trip(text: str, only_changed: bool) -> None:
    try:
        cfg = parse_config(text)
    except ConfigErrors as e:  # the generator only makes valid configs: show why not
        raise AssertionError(f"{text}\n{e}") from e
    dumped = dump_config(cfg, only_changed)
    assert parse_config(dumped) == cfg, dumped
    # -n output is stable: dumping the re-parsed config gives the same text.
    assert dump_config(parse_config(dumped), only_changed) == dumped
