"""Write a `Config` back as configuration text (``check-config -n``, mcp -> workers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meta1py.conf.model import Config
from meta1py.conf.schema import OptionSpec, options_of, quote, sections_of
from meta1py.contract import smar_data_directory


def option_default(spec: OptionSpec, qdir: Path, cwd: Path) -> Any:
    """The value the option would have if it were not set, given the config's queue directory."""
    value = spec.default_value()
    if isinstance(value, Path) and not value.is_absolute():
        base = cwd if spec.base == "cwd" else smar_data_directory(qdir) if spec.base == "smar" else qdir
        value = Path(os.path.normpath(base / value))
    return value


def _emit(obj: Any, indent: str, only_changed: bool, qdir: Path, cwd: Path, out: list[str]) -> None:
    cls = type(obj)
    for attr, spec in options_of(cls):
        value = getattr(obj, attr)
        if value is None:
            continue  # None is always the default: there is nothing to write
        if only_changed and value == option_default(spec, qdir, cwd):
            continue
        out.append(f"{indent}{spec.spelling} = {spec.type.format(value)};")
    for attr, sspec in sections_of(cls):
        value = getattr(obj, attr)
        if sspec.repeatable:
            if only_changed and value == sspec.default():
                continue
            for sub in value:
                label = getattr(sub, "name", None) if sspec.labelled else None
                head = f"{sspec.keyword} {quote(label)}" if label is not None else sspec.keyword
                body: list[str] = []
                _emit(sub, indent + "  ", only_changed, qdir, cwd, body)
                out.append(f"{indent}{head} {{" + ("" if body else " }"))
                if body:
                    out.extend(body)
                    out.append(f"{indent}}}")
        else:
            body = []
            _emit(value, indent + "  ", only_changed, qdir, cwd, body)
            if body or not only_changed:
                out.append(f"{indent}{sspec.keyword} {{" + ("" if body else " }"))
                if body:
                    out.extend(body)
                    out.append(f"{indent}}}")


def dump_config(cfg: Config, only_changed: bool = True) -> str:
    """Configuration text that parses back to a `Config` equal to ``cfg``.

    Args:
        cfg: the configuration.
        only_changed: write only settings that differ from their defaults. Defaults that depend
            on the environment (hostname, a relative queue_directory) are compared with their
            value here, so a process with another cwd should be given ``only_changed=False``.

    Returns:
        The text, one statement per line.
    """
    cwd = Path.cwd()
    out: list[str] = []
    _emit(cfg, "", only_changed, cfg.queue_directory, cwd, out)
    return "\n".join(out) + "\n" if out else ""


def defaults_text() -> str:
    """Every option with its default, annotated; the text parses to the default config."""
    out: list[str] = ["# meta1.conf: every option with its default (meta1 check-config --defaults)"]

    def walk(cls: type, indent: str) -> None:
        for _, spec in options_of(cls):
            out.append(f"{indent}# {spec.doc}")
            if spec.default is None or spec.dynamic_default is not None:
                shown = spec.default_doc or "not set"
                out.append(f"{indent}# {spec.spelling} = {spec.example};  (default: {shown})")
            elif spec.default_doc:
                out.append(f"{indent}# default: {spec.default_doc}")
                out.append(f"{indent}{spec.spelling} = {spec.type.format(spec.static_default())};")
            else:
                out.append(f"{indent}{spec.spelling} = {spec.default_text()};")
        for _, sspec in sections_of(cls):
            out.append("")
            out.append(f"{indent}# {sspec.doc}")
            if sspec.optional:  # absent by default: shown commented out
                out.append(f"{indent}# {sspec.keyword} {{  (default: none)")
                walk(sspec.cls, indent + "#   ")
                out.append(f"{indent}# }}")
                continue
            out.append(f"{indent}{sspec.keyword} {{")
            walk(sspec.cls, indent + "  ")
            out.append(f"{indent}}}")

    walk(Config, "")
    return "\n".join(out) + "\n"
