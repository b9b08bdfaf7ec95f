"""The configuration as mcp sends it to the workers (``config_wire``): the parsed tree, as JSON.

A worker builds the same model from it as from the file, without loading Lark, which keeps Lark
off every worker's start-up (bench/startup.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meta1py.conf import ConfigErrors, config_wire, load_config, parse_config, parse_config_wire

ROOT = Path(__file__).resolve().parents[3]
CORPUS = sorted([ROOT / "etc/meta1.conf", *ROOT.glob("tests/data/conf/good/*.conf")])


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_a_worker_builds_the_same_model_as_mcp(path: Path) -> None:
    cfg = load_config(path)
    assert parse_config_wire(config_wire(cfg)) == cfg


def test_lists_labels_and_quoted_values_survive() -> None:
    cfg = parse_config(
        'hostname = "mx.example";\nlocal_domains = { a.example, "b.example" };\n'
        "smtps \"submission\" { listen_socket { address = 127.0.0.1; port = 587; } }\n"
        "test_mode { enable = yes; }\n"
    )
    again = parse_config_wire(config_wire(cfg))
    assert again == cfg and again.local_domains == ("a.example", "b.example")


@pytest.mark.parametrize(
    "bad", ["{}", '{"meta1-config-tree": 2, "items": []}', "{not json", '{"meta1-config-tree": 1}']
)
def test_what_is_not_a_tree_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigErrors, match="configuration tree"):
        parse_config_wire(bad)


def test_no_worker_loads_lark() -> None:
    code = (
        "import sys\n"
        "import meta1py.worker, meta1py.smtps.main, meta1py.smar.main\n"
        "import meta1py.qmgr.main, meta1py.smtpc.main\n"
        "print(sorted(m for m in sys.modules if m == 'lark' or m.startswith('lark.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
