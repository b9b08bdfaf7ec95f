"""The layout's import rules (docs/internals.md, "The map"), checked on the source.

* the five process packages never import one another: they talk over RPC only;
* shared code never imports a process package (the dispatcher ``cli`` starts ``mcp`` by name);
* the sans-IO cores (``smtp/``, the RPC codec and schema, the TLS requirements grammar, the
  config language, ``contract``, the map formats and sources in ``maps/``, the message transforms
  in ``message/``) import no I/O: no sockets, no trio, no ssl, no processes.

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import meta1py

PACKAGE = Path(meta1py.__file__).parent
PROCESSES = ("mcp", "smtps", "smtpc", "smar", "qmgr")
# Modules that do I/O or run an event loop; the sans-IO cores must not import them.
IO_MODULES = frozenset(
    {"socket", "ssl", "trio", "asyncio", "selectors", "subprocess", "sqlite3", "ctypes", "fcntl", "select"}
)
SANS_IO = (
    "smtp",
    "rpc/codec.py",
    "rpc/schema.py",
    "rpc/messages.py",
    "contract.py",
    "metrics.py",
    "httpget.py",
    "status.py",
    "tls/requirements.py",
    "maps",
    "message",
)


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(("meta1py", *parts)), path


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # "from meta1py import qmgr" names a package too
                yield node.lineno, f"{target}.{alias.name}"


def _process_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PROCESSES else None


def _sans_io(path: Path) -> bool:
    rel = path.relative_to(PACKAGE).as_posix()
    return any(rel == entry or rel.startswith(entry + "/") for entry in SANS_IO)


def _violations() -> list[str]:
    found: list[str] = []
    for module, path in _modules():
        mine = _process_of(module)
        for line, target in _imports(module, path):
            where = f"{path.relative_to(PACKAGE)}:{line}: imports {target}"
            theirs = _process_of(target) if target.startswith("meta1py.") else None
            if theirs is not None and theirs != mine:
                if mine is None:
                    found.append(f"{where} (shared code must not import a process package)")
                else:
                    found.append(f"{where} ({mine} must not import {theirs})")
            if target.split(".")[0] == "meta1py_testing":
                found.append(f"{where} (the test helpers are not part of meta1py)")
            if _sans_io(path) and target.split(".")[0] in IO_MODULES:
                found.append(f"{where} (sans-IO module)")
    return found


def test_import_rules_hold() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("meta1py.smtps.x", "from meta1py.qmgr import manager\n", "smtps must not import qmgr"),
        ("meta1py.smtps.x", "from ..smar.router import Router\n", "smtps must not import smar"),
        ("meta1py.maps.x", "import meta1py.smtpc.delivery\n", "shared code must not import"),
        ("meta1py.smtp.x", "def f():\n    import trio\n", "sans-IO module"),
        ("meta1py.qmgr.x", "from meta1py_testing.peers import smtp_sink\n", "not part of meta1py"),
    ],
)
def test_the_check_finds_a_violation(
    module: str, source: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = module.split(".")[1:]
    fake = tmp_path.joinpath(*parts[:-1], parts[-1] + ".py")
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    assert any(expected in v for v in _violations()), _violations()
