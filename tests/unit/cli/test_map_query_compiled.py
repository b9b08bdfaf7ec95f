"""``meta1 map query`` on compiled maps, sequences and socketmap servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meta1py.cli.makemap import main as makemap
from meta1py.cli.map import main
from meta1py.maps.socketmap import NetstringDecoder, Reply, encode_reply, parse_request


def test_a_compiled_map_answers_as_its_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "access").write_text("cltaddr:10.1.2.  RELAY\nfrom:postmaster@  QUICK:OK\n")
    assert makemap(["access", str(tmp_path / "access")]) == 0
    keys = ["cltaddr:10.1.2.3", "from:postmaster+x@example.org"]
    assert main(["query", "-v", f"access:cdb:{tmp_path / 'access'}", *keys]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "cltaddr:10.1.2.3\tRELAY  (matched cltaddr:10.1.2.)",
        "from:postmaster+x@example.org\tQUICK:OK  (matched from:postmaster@)",
    ]
    assert main(["query", f"access:cdb:{tmp_path / 'access'}", "cltaddr:10.2.0.1"]) == 1


def test_the_configured_sequence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "routes.local").write_text("a.test smtp:[192.0.2.1]\nbroken.test smtp:[x\n")
    (tmp_path / "routes").write_text("a.test smtp:[192.0.2.2]\n.b.test lmtp:unix:/run/lmtp\n* smtp:\n")
    assert makemap(["routes", str(tmp_path / "routes")]) == 0
    conf = tmp_path / "meta1.conf"
    conf.write_text(f"smar {{ routes = {{ {tmp_path / 'routes.local'}, cdb:{tmp_path / 'routes'} }}; }}\n")
    keys = ["x@a.test", "mx.b.test", "other.org"]
    assert main(["query", "-f", str(conf), "-v", "routes", *keys]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "x@a.test\tsmtp:[192.0.2.1]  (matched a.test)",  # the first map wins
        "mx.b.test\tlmtp:unix:/run/lmtp  (matched .b.test)",
        "other.org\tsmtp:  (matched *)",
    ]
    assert "routes.local:2: missing ']'" in err
    assert main(["query", "-f", str(conf), "routes", "broken.test"]) == 75


def test_compiled_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "aliases").write_text("postmaster: alice\nalice: alice, bob@remote.example\n")
    assert makemap(["aliases", str(tmp_path / "aliases")]) == 0
    assert main(["query", f"aliases:cdb:{tmp_path / 'aliases'}", "alice+x@localhost"]) == 0
    assert capsys.readouterr().out == "alice, bob@remote.example\n"


def test_bad_specs_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "access:hash:/etc/access", "from:a@b"]) == 64
    assert "the compiled type is cdb" in capsys.readouterr().err
    assert main(["query", "routes:socketmap:inet:127.0.0.1:1:r", "a.test"]) == 64
    assert main(["query", f"tls_policy:cdb:{tmp_path / 'p'}", "a.test"]) == 64
    assert main(["query", f"access:cdb:{tmp_path / 'missing'}", "from:a@b"]) == 78
    (tmp_path / "routes").write_text("a.test smtp:\n")
    assert makemap(["routes", str(tmp_path / "routes")]) == 0
    assert main(["query", f"access:cdb:{tmp_path / 'routes'}", "from:a@b"]) == 78
    assert "compiled as a routes map, used as access" in capsys.readouterr().err


@pytest.fixture
def socketmap_server() -> Iterator[tuple[int, list[str]]]:
    """A blocking socketmap server on 127.0.0.1: one connection, answers from a dict."""
    values = {"from:a@b.test": "REJECT", "from:bad@b.test": "NOPE"}
    asked: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        decoder = NetstringDecoder()
        with conn:
            while True:
                data = conn.recv(4096)
                decoder.receive_data(data)
                while (payload := decoder.next_payload()) is not None:
                    name, key = parse_request(payload)
                    asked.append(key if name == "access" else f"{name}?{key}")
                    if key == "from:temp@b.test":
                        reply = Reply("TEMP", "database down")
                    elif key in values:
                        reply = Reply("OK", values[key])
                    else:
                        reply = Reply("NOTFOUND")
                    conn.sendall(encode_reply(reply))
                if not data:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], asked
    listener.close()
    thread.join(timeout=10)


def test_a_socketmap_server(
    socketmap_server: tuple[int, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    port, asked = socketmap_server
    spec = f"access:socketmap:inet:127.0.0.1:{port}:access"
    assert (
        main(["query", "-v", spec, "from:a@b.test", "from:x@b.test", "from:bad@b.test", "from:temp@b.test"])
        == 75
    )
    out, err = capsys.readouterr()
    assert out.splitlines() == ["from:a@b.test\tREJECT  (matched from:a@b.test)"]
    assert "from:bad@b.test: map entry unusable" in err and "unknown result 'NOPE'" in err
    assert "from:temp@b.test: socketmap:inet:127.0.0.1" in err and "TEMP database down" in err
    assert asked[:4] == ["from:a@b.test", "from:x@b.test", "from:x@", "from:b.test"]
