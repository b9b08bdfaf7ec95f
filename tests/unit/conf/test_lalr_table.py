"""The committed LALR tables (meta1py.conf.lalr_table) match meta1.lark, and the parser uses them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lark
import pytest

import meta1py.conf.parser as parser_module
from meta1py.conf import lalr_table

GRAMMAR = Path(parser_module.__file__).with_name("meta1.lark").read_text(encoding="utf-8")
ROOT = Path(__file__).resolve().parents[3]
# Lark numbers the LALR states differently from one build to the next (set order), so the tables
# are compared by what they parse, not by their text.
CORPUS = sorted(
    [
        ROOT / "etc/meta1.conf",
        ROOT / "contrib/container/meta1.conf",
        *ROOT.glob("tests/data/conf/good/*.conf"),
    ]
)


def test_the_committed_tables_are_those_of_the_grammar() -> None:
    """Fails after meta1.lark or Lark changed: run ``python -m meta1py.conf.lalrgen``."""
    assert lalr_table.GRAMMAR_SHA256 == hashlib.sha256(GRAMMAR.encode()).hexdigest()
    assert lalr_table.LARK_VERSION == lark.__version__


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_tabled_and_built_parsers_agree(path: Path) -> None:
    tabled = parser_module._tabled_parser(GRAMMAR)
    assert tabled is not None
    text = path.read_text(encoding="utf-8")
    assert tabled.parse(text) == parser_module.build_parser(GRAMMAR).parse(text)


def test_the_parser_is_loaded_from_the_tables() -> None:
    assert parser_module._tabled_parser(GRAMMAR) is not None


def test_another_grammar_is_built_not_loaded() -> None:
    assert parser_module._tabled_parser(GRAMMAR + "\n// changed\n") is None


def test_tabled_and_built_parsers_give_the_same_trees() -> None:
    text = 'hostname = "mx.example";\nsmtps { listen_socket { address = 127.0.0.1; port = 25; } }\n'
    tabled = parser_module._tabled_parser(GRAMMAR)
    assert tabled is not None
    assert tabled.parse(text) == parser_module.build_parser(GRAMMAR).parse(text)
