"""Parse meta1.conf text into the model, collecting every error on the way.

Pipeline: a tokenizer built from the grammar's own terminal patterns (so meta1.lark stays the one
definition) feeds Lark's LALR parser token by token through its interactive interface. That lets
us repair the common slips (a missing ';', a missing '}' at the end of the file, an unterminated
string) and carry on, so that every error in a file is reported in one run. The tree is turned
into a small AST, includes are spliced in, and a generic builder walks the schema (the model's
field metadata) to produce the frozen model.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from meta1py.conf.errors import ConfigError, ConfigErrors
from meta1py.conf.mapspec import MapSpec
from meta1py.conf.model import Config
from meta1py.conf.schema import (
    InvalidValue,
    ListValue,
    OptionSpec,
    RawValue,
    Scalar,
    SectionSpec,
    Time,
    did_you_mean,
    options_of,
    sections_of,
)
from meta1py.contract import smar_data_directory

if TYPE_CHECKING:
    from lark import Lark, Token, Tree

# Lark itself is imported where a text is parsed, not with this module: workers get the
# configuration as an already parsed tree (config_wire, parse_config_wire) and never load it.

_MAX_ERRORS = 100
_MAX_INCLUDE_DEPTH = 16
_MAX_FILE_BYTES = 16 * 1024 * 1024
_TOP = "at the top level"

_PUNCT_TEXT = {"EQUAL": "'='", "SEMICOLON": "';'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','"}


def build_parser(grammar: str) -> Lark:
    """Lark's LALR parser for ``grammar``, built from the grammar itself (about 30 ms)."""
    from lark import Lark

    return Lark(grammar, parser="lalr", lexer="basic", propagate_positions=False)


def _tabled_parser(grammar: str) -> Lark | None:
    """The parser loaded from the tables in :mod:`meta1py.conf.lalr_table` (a few ms), when they
    were made from this very grammar with this Lark version; None otherwise."""
    import hashlib

    import lark
    from lark import Lark

    from meta1py.conf import lalr_table

    digest = hashlib.sha256(grammar.encode()).hexdigest()
    if (lalr_table.GRAMMAR_SHA256, lalr_table.LARK_VERSION) != (digest, lark.__version__):
        return None
    # A dict, so Lark.load reads data (never a pickle); the data is a literal in our own module.
    return Lark.load({"data": lalr_table.DATA, "memo": lalr_table.MEMO})


@functools.cache
def _lark() -> tuple[Lark, re.Pattern[str]]:
    """The LALR parser and the tokenizer regex, made once per process."""
    grammar = (Path(__file__).with_name("meta1.lark")).read_text(encoding="utf-8")
    parser = _tabled_parser(grammar) or build_parser(grammar)
    # One alternation of every terminal, longest-first is unnecessary: WORD excludes the
    # punctuation, so the terminals never overlap.
    order = ["WS", "COMMENT", "STRING", "WORD", "EQUAL", "SEMICOLON", "LBRACE", "RBRACE", "COMMA"]
    by_name = {t.name: t.pattern.to_regexp() for t in parser.terminals}
    master = re.compile("|".join(f"(?P<{n}>{by_name[n]})" for n in order) + r"|(?P<BAD>.)", re.DOTALL)
    return parser, master


# ---------------------------------------------------------------------------------------------
# Sources and error collection


@dataclass
class _Source:
    """One file (or string) being parsed."""

    path: str
    text: str
    index: int
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines = self.text.split("\n")

    def line(self, n: int) -> str:
        if 1 <= n <= len(self.lines):
            return self.lines[n - 1].rstrip("\r")
        return ""

    @property
    def directory(self) -> Path:
        if self.path.startswith("<"):
            return Path.cwd()
        return Path(self.path).parent


class _TooMany(Exception):
    """Raised internally once the error limit is hit."""


class _Errors:
    """Collects errors; drops semantic errors on lines that already have a syntax error."""

    def __init__(self) -> None:
        self.items: list[tuple[int, ConfigError]] = []
        self.syntax_lines: set[tuple[str, int]] = set()

    def add(
        self, src: _Source, line: int, column: int, message: str, hint: str = "", syntax: bool = False
    ) -> None:
        key = (src.path, line)
        if key in self.syntax_lines:
            return  # one clear message per line: the rest would be echoes of the first
        if syntax:
            self.syntax_lines.add(key)
        self.items.append((src.index, ConfigError(src.path, line, column, message, hint, src.line(line))))
        if len(self.items) >= _MAX_ERRORS:
            raise _TooMany

    def sorted(self) -> list[ConfigError]:
        return [e for _, e in sorted(self.items, key=lambda p: (p[0], p[1].line, p[1].column))]


# ---------------------------------------------------------------------------------------------
# Tokenizer and LALR parse with repair


def _tokenize(src: _Source, errors: _Errors) -> list[Token]:
    from lark import Token

    _, master = _lark()
    text = src.text
    tokens: list[Token] = []
    append = tokens.append
    line, line_start, skip_to = 1, 0, 0
    # The master regex ends with a catch-all, so finditer walks every character of the text.
    for m in master.finditer(text):
        kind = m.lastgroup
        pos = m.start()
        if kind == "WS":
            # Counted even inside a skipped unterminated string, whose white space may end the line.
            value = m.group()
            nl = value.count("\n")
            if nl:
                line += nl
                line_start = pos + value.rindex("\n") + 1
            continue
        if kind == "COMMENT" or pos < skip_to:
            continue
        column = pos - line_start + 1
        if kind == "BAD":
            ch = m.group()
            if ch == '"':
                errors.add(src, line, column, "unterminated string", 'close it with " on the same line', True)
                # Treat the rest of the line as the string, so the parse goes on cleanly.
                eol = text.find("\n", pos)
                eol = len(text) if eol < 0 else eol
                append(Token("STRING", text[pos:eol] + '"', pos, line, column))
                skip_to = eol
            else:
                errors.add(src, line, column, f"unexpected character {ch!r}", "", True)
            continue
        assert kind is not None  # every alternative is a named group
        value = m.group()
        append(Token(kind, value, pos, line, column, line, column + len(value), m.end()))
    return tokens


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type in _PUNCT_TEXT:
        return _PUNCT_TEXT[tok.type]
    shown = str(tok) if len(tok) <= 30 else str(tok)[:27] + "..."
    return repr(shown)


def _expected_text(expected: set[str]) -> str:
    names = []
    for t in ("SEMICOLON", "EQUAL", "LBRACE", "RBRACE", "COMMA"):
        if t in expected:
            names.append(_PUNCT_TEXT[t])
    if "WORD" in expected or "STRING" in expected:
        names.append("a name or value")
    return " or ".join(names) if names else "something else"


def _after(tok: Token) -> tuple[int, int]:
    """Line and column just after a token (where a missing ';' belongs)."""
    return tok.line or 1, (tok.column or 1) + len(tok)


def _brace_owner(tokens: list[Token], i: int) -> str:
    """What the '{' at tokens[i] opens, for messages: "section 'smtps'" or "a list"."""
    if i >= 1 and tokens[i - 1].type == "EQUAL":
        return "the list"
    if i >= 2 and tokens[i - 1].type in ("WORD", "STRING") and tokens[i - 2].type == "WORD":
        if i < 3 or tokens[i - 3].type != "EQUAL":
            return f"section '{tokens[i - 2]} {tokens[i - 1]}'"
    if i >= 1 and tokens[i - 1].type == "WORD":
        return f"section '{tokens[i - 1]}'"
    return "this brace"


def _parse_tokens(src: _Source, tokens: list[Token], errors: _Errors) -> Tree[Any] | None:
    from lark import Token
    from lark.exceptions import UnexpectedToken

    parser, _ = _lark()
    ip = parser.parse_interactive("")
    state = ip.parser_state
    opened: list[int] = []  # indexes of unmatched '{' tokens
    prev: Token | None = None

    def semicolon_at(tok: Token) -> Token:
        return Token.new_borrow_pos("SEMICOLON", ";", tok)

    for i, tok in enumerate(tokens):
        try:
            state.feed_token(tok)
        except UnexpectedToken as e:
            expected = set(e.expected)
            # A missing ';' is the most common slip: the next statement starts on a new line, or
            # the section closes. Insert it (after the previous token) and go on.
            if (
                prev is not None
                and "SEMICOLON" in expected
                and (tok.line != prev.line or tok.type == "RBRACE")
            ):
                trial = state.copy()
                try:
                    trial.feed_token(semicolon_at(tok))
                    trial.feed_token(tok)
                except UnexpectedToken:
                    pass
                else:
                    line, col = _after(prev)
                    errors.add(
                        src,
                        line,
                        col,
                        "missing ';'",
                        f"end the statement with ';' after {_describe(prev)}",
                        True,
                    )
                    state = trial
                    ip.parser_state = state
                    prev = tok
                    _track(tokens, i, opened)
                    continue
            if "COMMA" in expected and "RBRACE" in expected and opened:
                # Inside a list that was never closed: close it and carry on with this token.
                brace = tokens[opened[-1]]
                trial = state.copy()
                try:
                    trial.feed_token(Token.new_borrow_pos("RBRACE", "}", tok))
                    trial.feed_token(tok)
                except UnexpectedToken:
                    pass
                else:
                    errors.add(
                        src,
                        tok.line or 1,
                        tok.column or 1,
                        "missing '}' at the end of the list",
                        f"the list opened on line {brace.line} (separate items with ',')",
                        True,
                    )
                    state = trial
                    ip.parser_state = state
                    opened.pop()
                    _track(tokens, i, opened)
                    prev = tok
                    continue
            message = f"unexpected {_describe(tok)}"
            hint = f"expected {_expected_text(expected)}"
            if tok.type == "RBRACE" and not opened:
                hint = "there is no '{' for this '}' to close"
            elif prev is not None and prev.type == "EQUAL" and tok.type == "SEMICOLON":
                message, hint = "missing value", "write a value between '=' and ';'"
            elif "SEMICOLON" in expected and tok.type in ("WORD", "STRING"):
                hint = "expected ';' (a value that contains spaces must be quoted)"
            errors.add(src, tok.line or 1, tok.column or 1, message, hint, True)
            continue  # drop the token
        _track(tokens, i, opened)
        prev = tok

    # End of file: close what is still open, each with a message pointing at where it opened.
    for _ in range(len(tokens) + 2):
        end = Token("$END", "", len(src.text), len(src.lines), 1)
        try:
            return state.feed_token(end, True)
        except UnexpectedToken as e:
            expected = set(e.expected)
            if "SEMICOLON" in expected and prev is not None:
                line, col = _after(prev)
                errors.add(
                    src, line, col, "missing ';'", f"end the statement with ';' after {_describe(prev)}", True
                )
                try:
                    state.feed_token(semicolon_at(prev))
                    continue
                except UnexpectedToken:
                    return None
            if "RBRACE" in expected and opened:
                j = opened.pop()
                brace = tokens[j]
                errors.add(
                    src,
                    brace.line or 1,
                    brace.column or 1,
                    f"'{{' of {_brace_owner(tokens, j)} is never closed",
                    "add the missing '}' (the file ended while this was still open)",
                    True,
                )
                try:
                    state.feed_token(Token.new_borrow_pos("RBRACE", "}", brace))
                    continue
                except UnexpectedToken:
                    return None
            line, col = _after(prev) if prev is not None else (1, 1)
            errors.add(src, line, col, "unexpected end of file", f"expected {_expected_text(expected)}", True)
            return None
    return None


def _track(tokens: list[Token], i: int, opened: list[int]) -> None:
    t = tokens[i].type
    if t == "LBRACE":
        opened.append(i)
    elif t == "RBRACE" and opened:
        opened.pop()


# ---------------------------------------------------------------------------------------------
# AST


@dataclass
class _Option:
    name: Scalar
    value: RawValue
    src: _Source


@dataclass
class _Section:
    keyword: Scalar
    label: Scalar | None
    items: list[Any]
    src: _Source


@dataclass
class _Directive:
    name: Scalar
    value: Scalar
    src: _Source


def _name(tok: Token) -> Scalar:
    return Scalar(str(tok), False, tok.line or 1, tok.column or 1)


def _value(tree: Tree[Any], src: _Source, errors: _Errors) -> Scalar:
    tok = cast("Token", tree.children[0])
    line, col = tok.line or 1, tok.column or 1
    if tok.type == "WORD":
        return Scalar(str(tok), False, line, col)
    body = str(tok)[1:-1]
    if "\\" not in body:
        return Scalar(body, True, line, col)
    out, k = [], 0
    while k < len(body):
        c = body[k]
        if c == "\\" and k + 1 < len(body):
            nxt = body[k + 1]
            if nxt not in '"\\':
                errors.add(
                    src,
                    line,
                    col + 1 + k,
                    f"unknown escape '\\{nxt}' in string",
                    'only \\" and \\\\ are escapes',
                    True,
                )
            out.append(nxt if nxt in '"\\' else "\\" + nxt)
            k += 2
        else:
            out.append(c)
            k += 1
    return Scalar("".join(out), True, line, col)


def _items(children: list[Any], src: _Source, errors: _Errors) -> list[Any]:
    from lark import Token, Tree

    out: list[Any] = []
    for node in children:
        if not isinstance(node, Tree):
            continue
        kids: list[Any] = [c for c in node.children if not (isinstance(c, Token) and c.type in _PUNCT_TEXT)]
        if node.data == "option":
            name, val = kids[0], kids[1]
            raw: RawValue
            if val.data == "list":
                brace = val.children[0]
                vals = tuple(_value(v, src, errors) for v in val.children if isinstance(v, Tree))
                raw = ListValue(vals, brace.line or 1, brace.column or 1)
            else:
                raw = _value(val, src, errors)
            out.append(_Option(_name(name), raw, src))
        elif node.data == "section":
            label = kids[1]
            sub = _items(kids[2:], src, errors)
            out.append(
                _Section(_name(kids[0]), _value(label, src, errors) if label is not None else None, sub, src)
            )
        elif node.data == "directive":
            out.append(_Directive(_name(kids[0]), _value(kids[1], src, errors), src))
    return out


def _parse_source(src: _Source, errors: _Errors) -> list[Any]:
    tokens = _tokenize(src, errors)
    tree = _parse_tokens(src, tokens, errors)
    if tree is None:
        return []
    return _items(tree.children, src, errors)


# ---------------------------------------------------------------------------------------------
# Where options and sections belong (for "wrong section" hints)


def _where_index() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    options: dict[str, list[str]] = {}
    sections: dict[str, list[str]] = {}

    def walk(cls: type, where: str) -> None:
        for _, spec in options_of(cls):
            options.setdefault(spec.name, []).append(where)
        for _, sspec in sections_of(cls):
            sections.setdefault(sspec.keyword, []).append(where)
            walk(sspec.cls, f"in section '{sspec.keyword}'")

    walk(Config, _TOP)
    return options, sections


_OPTION_HOMES, _SECTION_HOMES = _where_index()


# ---------------------------------------------------------------------------------------------
# Builder: AST + schema -> model


class _Builder:
    def __init__(self, errors: _Errors, first: _Source) -> None:
        self.errors = errors
        self.locations: dict[str, tuple[str, int, int]] = {}
        self.file_count = first.index + 1
        self.stack: list[str] = [self._key(first)]

    @staticmethod
    def _key(src: _Source) -> str:
        if src.path.startswith("<"):
            return src.path
        try:
            return os.path.realpath(src.path)
        except (OSError, ValueError):
            return src.path

    # includes ---------------------------------------------------------------------------
    def expand(self, items: list[Any]) -> Iterator[Any]:
        for item in items:
            if isinstance(item, _Directive) and item.name.text.lower() == "include":
                loaded = self.include(item)
                if loaded is not None:
                    self.stack.append(loaded[0])
                    try:
                        yield from self.expand(loaded[1])
                    finally:
                        self.stack.pop()
            else:
                yield item

    def include(self, d: _Directive) -> tuple[str, list[Any]] | None:
        src, v = d.src, d.value
        if not v.text:
            self.errors.add(src, v.line, v.column, "empty include file name")
            return None
        target = Path(v.text)
        if not target.is_absolute():
            target = src.directory / target
        try:
            key = os.path.realpath(target)
        except (OSError, ValueError):
            key = str(target)
        if key in self.stack:
            chain = " -> ".join([*(Path(p).name for p in self.stack[self.stack.index(key) :]), target.name])
            self.errors.add(src, v.line, v.column, f"include cycle: {chain}", "remove one of these includes")
            return None
        if len(self.stack) > _MAX_INCLUDE_DEPTH:
            self.errors.add(
                src, v.line, v.column, "includes nested too deeply", f"at most {_MAX_INCLUDE_DEPTH} levels"
            )
            return None
        text = _read_text(str(target), lambda m, h: self.errors.add(src, v.line, v.column, m, h), v.text)
        if text is None:
            return None
        inc = _Source(str(target), text, self.file_count)
        self.file_count += 1
        return key, _parse_source(inc, self.errors)

    # sections ---------------------------------------------------------------------------
    def build(self, cls: type, items: list[Any], where: str, prefix: str) -> Any:
        opts = {spec.name: (attr, spec) for attr, spec in options_of(cls)}
        sects = {spec.keyword: (attr, spec) for attr, spec in sections_of(cls)}
        values: dict[str, Any] = {}
        seen: dict[str, _Option] = {}
        found: dict[str, list[_Section]] = {}
        for item in self.expand(items):
            if isinstance(item, _Option):
                self.option(item, opts, sects, where, prefix, values, seen)
            elif isinstance(item, _Section):
                self.section_item(item, opts, sects, where, found)
            else:
                self.directive(item, opts)
        for keyword, nodes in found.items():
            attr, sspec = sects[keyword]
            values[attr] = self.subsections(sspec, nodes, f"{prefix}{attr}")
        return cls(**values)

    def option(
        self,
        item: _Option,
        opts: dict[str, tuple[str, OptionSpec]],
        sects: dict[str, tuple[str, SectionSpec]],
        where: str,
        prefix: str,
        values: dict[str, Any],
        seen: dict[str, _Option],
    ) -> None:
        name = item.name
        key = name.text.lower()
        src = item.src
        if key not in opts:
            if key in sects:
                self.errors.add(
                    src,
                    name.line,
                    name.column,
                    f"'{name.text}' is a section, not an option",
                    f"write {key} {{ ... }}",
                )
                return
            homes = _OPTION_HOMES.get(key)
            if homes:
                self.errors.add(
                    src,
                    name.line,
                    name.column,
                    f"option '{name.text}' does not belong {where}",
                    f"it belongs {' or '.join(homes)}",
                )
                return
            near = did_you_mean(key, list(opts) + list(sects))
            hint = f"did you mean '{near}'?" if near else "'meta1 check-config --defaults' lists every option"
            self.errors.add(src, name.line, name.column, f"unknown option '{name.text}' {where}", hint)
            return
        attr, spec = opts[key]
        first = seen.get(key)
        if first is not None:
            at = f"line {first.name.line}" if first.src is src else f"{first.src.path}:{first.name.line}"
            self.errors.add(
                src,
                name.line,
                name.column,
                f"duplicate option '{name.text}' (already set on {at})",
                "remove one of them",
            )
            return
        seen[key] = item
        try:
            values[attr] = spec.type.parse(item.value)
        except InvalidValue as e:
            bad: Scalar | ListValue = e.at if e.at is not None and e.at.line else item.value
            line = bad.line if bad.line else name.line
            self.errors.add(src, line, bad.column or name.column, f"{spec.spelling}: {e.message}", e.hint)
            return
        self.locations[prefix + attr] = (src.path, name.line, name.column)

    def section_item(
        self,
        item: _Section,
        opts: dict[str, tuple[str, OptionSpec]],
        sects: dict[str, tuple[str, SectionSpec]],
        where: str,
        found: dict[str, list[_Section]],
    ) -> None:
        kw = item.keyword
        key = kw.text.lower()
        src = item.src
        if key not in sects:
            if key in opts:
                self.errors.add(
                    src,
                    kw.line,
                    kw.column,
                    f"'{kw.text}' is an option, not a section",
                    f"write {key} = VALUE;",
                )
                return
            homes = _SECTION_HOMES.get(key)
            if homes:
                self.errors.add(
                    src,
                    kw.line,
                    kw.column,
                    f"section '{kw.text}' does not belong {where}",
                    f"it belongs {' or '.join(homes)}",
                )
                return
            near = did_you_mean(key, list(sects) + list(opts))
            hint = f"did you mean '{near}'?" if near else "sections here: " + (", ".join(sects) or "none")
            self.errors.add(src, kw.line, kw.column, f"unknown section '{kw.text}' {where}", hint)
            return
        _, sspec = sects[key]
        if item.label is not None and not sspec.labelled:
            lb = item.label
            self.errors.add(
                src, lb.line, lb.column, f"section '{key}' takes no name", f"write {key} {{ ... }}"
            )
            return
        others = found.setdefault(key, [])
        for other in others:
            same = other.label.text if other.label else None
            mine = item.label.text if item.label else None
            if not sspec.repeatable or (sspec.labelled and same == mine):
                at = (
                    f"line {other.keyword.line}"
                    if other.src is src
                    else f"{other.src.path}:{other.keyword.line}"
                )
                what = f"{key} {mine}" if mine else key
                hint = "merge the two sections"
                if sspec.labelled and mine is None:
                    hint = f"give each {key} section its own name, like: {key} mx {{ ... }}"
                elif sspec.labelled:
                    hint = "give each section its own name"
                self.errors.add(src, kw.line, kw.column, f"duplicate section '{what}' (first on {at})", hint)
                return
        others.append(item)

    def subsections(self, sspec: SectionSpec, nodes: list[_Section], prefix: str) -> Any:
        where = f"in section '{sspec.keyword}'"
        built = []
        for n, node in enumerate(nodes):
            sub_prefix = f"{prefix}[{n}]." if sspec.repeatable else f"{prefix}."
            obj = self.build(sspec.cls, node.items, where, sub_prefix)
            if sspec.labelled:
                label = node.label.text if node.label is not None else None
                obj = dataclasses.replace(obj, name=label)
            self.locations[sub_prefix.rstrip(".")] = (node.src.path, node.keyword.line, node.keyword.column)
            built.append(obj)
        return tuple(built) if sspec.repeatable else built[0]

    def directive(self, item: _Directive, opts: dict[str, tuple[str, OptionSpec]]) -> None:
        name, src = item.name, item.src
        key = name.text.lower()
        if key in opts or key in _OPTION_HOMES:
            self.errors.add(
                src,
                item.value.line,
                item.value.column,
                f"missing '=' after '{name.text}'",
                f"write {name.text} = {item.value.text};",
            )
            return
        near = did_you_mean(key, ["include"])
        hint = "did you mean 'include'?" if near else "options are written name = value;"
        self.errors.add(src, name.line, name.column, f"unknown statement '{name.text}'", hint)


# ---------------------------------------------------------------------------------------------
# Whole-config checks and path resolution


def _check(cfg: Config, b: _Builder, src: _Source) -> None:
    loc = b.locations

    def add(key: str, message: str, hint: str = "") -> None:
        # Fall back to the enclosing section when the value is a default (no line of its own).
        while key not in loc and "." in key:
            key = key.rsplit(".", 1)[0]
        path, line, col = loc.get(key, (src.path, 0, 0))
        where = (
            src if path == src.path else _Source(path, _read_text(path, lambda m, h: None) or "", src.index)
        )
        b.errors.add(where, line, col, message, hint)

    t = cfg.test_mode
    if t.enable and not t.allow_non_loopback and not ipaddress.ip_address(t.listen[0]).is_loopback:
        add(
            "test_mode.listen",
            f"the test-mode control API may not listen on {t.listen[0]}: it is not a loopback address",
            "use 127.0.0.1 or ::1, or say allow_non_loopback = yes if this network is the test's own",
        )
    q = cfg.qmgr
    if q.retry_min > q.retry_max:
        add(
            "qmgr.retry_min" if "qmgr.retry_min" in loc else "qmgr.retry_max",
            "retry_min is larger than retry_max",
            "make retry_min <= retry_max",
        )
    used: dict[tuple[str, int], str] = {}
    for i, s in enumerate(cfg.smtps):
        for j, ls in enumerate(s.listen_socket):
            key = (
                f"smtps[{i}].listen_socket[{j}]" if f"smtps[{i}].listen_socket[{j}]" in loc else f"smtps[{i}]"
            )
            addr = (ls.address, ls.port)
            if addr in used:
                add(
                    key,
                    f"address {ls.address} port {ls.port} is already used by {used[addr]}",
                    "every listen_socket needs its own address and port",
                )
            else:
                used[addr] = f"smtps {s.name}" if s.name else "another smtps section"
            if ls.tls == "implicit" and s.tls.cert_file is None:
                add(
                    f"smtps[{i}].listen_socket[{j}].tls",
                    "tls = implicit needs a certificate in this smtps section",
                    "add tls { cert_file = ...; key_file = ...; } to the section",
                )
    for i, s in enumerate(cfg.smtps):
        # smtps needs both halves; the worker would refuse to start (exit 78) otherwise.
        if s.tls.key_file is not None and s.tls.cert_file is None:
            add(f"smtps[{i}].tls.key_file", "key_file is set but cert_file is not", "add cert_file")
        if s.tls.cert_file is not None and s.tls.key_file is None:
            add(f"smtps[{i}].tls.cert_file", "cert_file is set but key_file is not", "add key_file")
    # smtpc may keep its key in cert_file, but a key alone is a mistake.
    if cfg.smtpc.tls.key_file is not None and cfg.smtpc.tls.cert_file is None:
        add("smtpc.tls.key_file", "key_file is set but cert_file is not", "add cert_file")
    grey = cfg.smar.greylisting
    if grey.delay >= grey.retry_window:
        add(
            "smar.greylisting.delay" if "smar.greylisting.delay" in loc else "smar.greylisting.retry_window",
            f"greylisting delay ({Time().format(grey.delay)}) must be shorter than retry_window"
            f" ({Time().format(grey.retry_window)})",
            "a retry must be able to come after the delay and before the triplet is forgotten",
        )
    for kind in ("dnsbl", "dnswl", "rhsbl"):
        for i, dns_list in enumerate(getattr(cfg.smar, kind)):
            if dns_list.zone is None:
                add(f"smar.{kind}[{i}]", f"this {kind} section has no zone", 'add zone = "bl.example.net";')


def _normpath(base: Path, p: Path) -> Path:
    return Path(os.path.normpath(base / p))


def _resolve_paths(obj: Any, qdir: Path) -> Any:
    changes: dict[str, Any] = {}
    for attr, spec in options_of(type(obj)):
        v = getattr(obj, attr)
        if spec.base == "queue" and isinstance(v, Path) and not v.is_absolute():
            changes[attr] = _normpath(qdir, v)
        elif spec.base == "queue" and isinstance(v, MapSpec):
            changes[attr] = v.resolved(qdir)
        elif spec.base == "smar" and isinstance(v, Path) and not v.is_absolute():
            changes[attr] = _normpath(smar_data_directory(qdir), v)
    for attr, sspec in sections_of(type(obj)):
        v = getattr(obj, attr)
        changes[attr] = (
            tuple(_resolve_paths(x, qdir) for x in v) if sspec.repeatable else _resolve_paths(v, qdir)
        )
    return dataclasses.replace(obj, **changes) if changes else obj


def _read_text(path: str, report: Any, shown: str | None = None) -> str | None:
    """Read a config file as UTF-8; report problems as (message, hint) and return None."""
    name = shown if shown is not None else path
    try:
        if not os.path.isfile(path):
            if os.path.exists(path):
                report(f"{name!r} is not a regular file", "")
            else:
                report(
                    f"cannot read {name!r}: no such file",
                    "relative include paths are relative to the including file",
                )
            return None
        with open(path, "rb") as fh:
            data = fh.read(_MAX_FILE_BYTES + 1)
    except OSError as e:
        report(f"cannot read {name!r}: {e.strerror or e}", "")
        return None
    if len(data) > _MAX_FILE_BYTES:
        report(f"{name!r} is larger than {_MAX_FILE_BYTES // 1024 // 1024}M", "")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        report(f"{name!r} is not valid UTF-8 (line {line})", "save the file as UTF-8")
        return None


# ---------------------------------------------------------------------------------------------
# Public entry points


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse configuration text into a `Config`.

    Args:
        text: the file's contents.
        path: the name used in error messages; includes are relative to its directory
            (to the current directory for ``<string>``).

    Returns:
        The model, with every path absolute.

    Raises:
        ConfigErrors: with every problem found.
    """
    return _parse(text, path, 0)


def _parse(text: str, path: str, _index: int, items: list[Any] | None = None) -> Config:
    errors = _Errors()
    src = _Source(path, text, 0)
    builder = _Builder(errors, src)
    cfg: Config | None = None
    try:
        if items is None:
            items = _parse_source(src, errors)
        cfg = builder.build(Config, items, _TOP, "")
        if "hostname" not in builder.locations:
            from meta1py.conf.model import _fqdn

            cfg = dataclasses.replace(cfg, hostname=_fqdn())
        try:
            cwd = Path.cwd()
        except OSError:
            cwd = None
        qdir = cfg.queue_directory
        if not qdir.is_absolute():
            if cwd is None:
                where = builder.locations.get("queue_directory", (path, 0, 0))
                errors.add(
                    src,
                    where[1],
                    where[2],
                    f"relative path {str(qdir)!r} cannot be resolved: the current directory is gone",
                    "use an absolute queue_directory",
                )
                qdir = Path("/") / qdir
            else:
                qdir = _normpath(cwd, qdir)
        cfg = _resolve_paths(dataclasses.replace(cfg, queue_directory=qdir), qdir)
        cfg = dataclasses.replace(
            cfg, path=None if path.startswith("<") else Path(path), locations=builder.locations
        )
        _check(cfg, builder, src)
    except _TooMany:
        pass
    if errors.items:
        raise ConfigErrors(errors.sorted())
    assert cfg is not None
    return cfg


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and parse a configuration file (None: the built-in defaults only).

    Raises:
        ConfigErrors: the file cannot be read or is invalid.
    """
    if path is None:
        return parse_config("", "<defaults>")
    name = os.fspath(path)
    problems: list[ConfigError] = []
    text = _read_text(name, lambda m, h: problems.append(ConfigError(name, 0, 0, m, h)))
    if text is None:
        raise ConfigErrors(problems)
    return parse_config(text, name)


def with_test_mode(cfg: Config) -> Config:
    """``cfg`` with ``test_mode { enable = yes; }``: ``meta1 run --test-mode`` (or ``META1_TEST=1``).

    Raises:
        ConfigErrors: its ``test_mode { listen }`` is not loopback and ``allow_non_loopback`` is
            not set (at that option when the file sets it).
    """
    t = cfg.test_mode
    if not t.allow_non_loopback and not ipaddress.ip_address(t.listen[0]).is_loopback:
        where = cfg.locations.get("test_mode.listen") or (str(cfg.path or "<defaults>"), 0, 0)
        raise ConfigErrors(
            [
                ConfigError(
                    where[0],
                    where[1],
                    where[2],
                    f"the test-mode control API may not listen on {t.listen[0]}: not a loopback address",
                    "use 127.0.0.1 or ::1, or say allow_non_loopback = yes if this network is the test's own",
                )
            ]
        )
    return dataclasses.replace(cfg, test_mode=dataclasses.replace(t, enable=True))


# ---------------------------------------------------------------------------------------------
# The configuration as mcp sends it to the workers: the parsed tree of its dump, as JSON


WIRE_KEY = "meta1-config-tree"


def config_wire(cfg: Config) -> str:
    """The effective configuration as workers get it (mcp writes it into their config memfd).

    It is the tree Lark made of ``dump_config(cfg)``, as JSON: a worker turns it into the model
    with the same builder as a file (:func:`parse_config_wire`) without loading Lark, which keeps
    Lark's import and the parse off a worker's start-up.
    """
    from meta1py.conf.dump import dump_config

    text = dump_config(cfg, only_changed=False)
    errors = _Errors()
    items = _parse_source(_Source("<effective config>", text, 0), errors)
    if errors.items:  # a dump always parses (tests/unit/conf/test_roundtrip.py)
        raise ConfigErrors(errors.sorted())
    return json.dumps({WIRE_KEY: 1, "items": [_item_json(item) for item in items]}, separators=(",", ":"))


def parse_config_wire(data: str) -> Config:
    """The model from :func:`config_wire`'s text.

    Raises:
        ConfigErrors: not such a text, or it does not make a valid configuration.
    """
    path = "<config from mcp>"
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get(WIRE_KEY) != 1:
            raise ValueError("not a configuration tree")
        src = _Source(path, "", 0)
        items = [_item_from_json(item, src) for item in obj["items"]]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigErrors([ConfigError(path, 0, 0, f"unreadable configuration tree: {exc}", "")]) from None
    return _parse("", path, 0, items)


def _scalar_json(value: Scalar) -> list[Any]:
    return [value.text, value.quoted, value.line, value.column]


def _scalar_from_json(obj: Any) -> Scalar:
    text, quoted, line, column = obj
    if not isinstance(text, str) or not isinstance(quoted, bool):
        raise ValueError("bad scalar")
    return Scalar(text, quoted, int(line), int(column))


def _item_json(item: Any) -> dict[str, Any]:
    if isinstance(item, _Option):
        value = item.value
        raw: Any = (
            {"list": [_scalar_json(v) for v in value.items], "at": [value.line, value.column]}
            if isinstance(value, ListValue)
            else _scalar_json(value)
        )
        return {"option": _scalar_json(item.name), "value": raw}
    if isinstance(item, _Section):
        return {
            "section": _scalar_json(item.keyword),
            "label": None if item.label is None else _scalar_json(item.label),
            "items": [_item_json(sub) for sub in item.items],
        }
    return {"directive": _scalar_json(item.name), "value": _scalar_json(item.value)}


def _item_from_json(obj: dict[str, Any], src: _Source) -> Any:
    if "option" in obj:
        value = obj["value"]
        raw: RawValue = (
            ListValue(
                tuple(_scalar_from_json(v) for v in value["list"]), int(value["at"][0]), int(value["at"][1])
            )
            if isinstance(value, dict)
            else _scalar_from_json(value)
        )
        return _Option(_scalar_from_json(obj["option"]), raw, src)
    if "section" in obj:
        label = obj["label"]
        return _Section(
            _scalar_from_json(obj["section"]),
            None if label is None else _scalar_from_json(label),
            [_item_from_json(sub, src) for sub in obj["items"]],
            src,
        )
    return _Directive(_scalar_from_json(obj["directive"]), _scalar_from_json(obj["value"]), src)
