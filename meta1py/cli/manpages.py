"""``meta1 manpages [DIR]``: write the manual pages, generated from the Markdown pages in ``docs/``.

The pages (section and source):

================  ===========================================================
meta1(8)          docs/meta1.md: the command and every subcommand
meta1.conf(5)     docs/meta1.conf.md: every option, its default and an example
meta1-queue(1)    docs/queue.md: the queue and ``meta1 queue``
sendmail(1)       the ``meta1 sendmail`` help (modes and flags)
================  ===========================================================

The converter reads the small Markdown subset the docs use (headings, paragraphs, lists, code
blocks, tables, inline code, bold, links) and writes man(7) roff, so the pages say what the docs
say, on every change. ``docs/`` is found next to the package (a source checkout) or under
``share/doc/meta1py``. Without DIR the pages go to ``./man`` (``man8/meta1.8`` and so on); install
them with ``cp -r man/* /usr/local/share/man/``. Exit 0; 66 when the docs are not found.
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path

EX_OK, EX_USAGE, EX_NOINPUT = 0, 64, 66

PAGES = (
    ("meta1", 8, "meta1.md", "the meta1py mail transfer agent's command"),
    ("meta1.conf", 5, "meta1.conf.md", "the meta1py configuration file"),
    ("meta1-queue", 1, "queue.md", "the meta1py mail queue and meta1 queue"),
)

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)")


def _escape(text: str) -> str:
    """Roff-safe text: backslashes and hyphens escaped, anything not ASCII as a named glyph."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "".join(c if c.isascii() else f"\\[u{ord(c):04X}]" for c in text)


def inline(text: str) -> str:
    """Markdown inline markup to roff fonts (code and bold in bold, links as their text)."""
    text = _LINK.sub(r"\1", text)
    parts: list[str] = []
    pos = 0
    for m in re.finditer(r"`([^`]+)`|\*\*([^*]+)\*\*", text):
        parts.append(_escape(text[pos : m.start()]))
        parts.append("\\fB" + _escape(m.group(1) or m.group(2)) + "\\fR")
        pos = m.end()
    parts.append(_escape(text[pos:]))
    return "".join(parts)


def _line(text: str) -> str:
    # A line starting with . or ' would be a roff request.
    return "\\&" + text if text[:1] in (".", "'") else text


def convert(markdown: str, name: str, section: int, summary: str, date: str) -> str:
    """The man(7) page for one Markdown document."""
    out = [
        f'.TH "{name.upper()}" "{section}" "{date}" "meta1py" "meta1py manual"',
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(summary)}",
    ]
    lines = markdown.splitlines()
    i = 0
    in_list = False
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if stripped.startswith("```"):
            block: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out += [".PP", ".nf", ".RS 4", *(_line(_escape(b)) for b in block), ".RE", ".fi"]
            i += 1
            continue
        if stripped.startswith("#"):
            level = len(stripped) - len(stripped.lstrip("#"))
            title = stripped[level:].strip()
            if level == 1:
                out += [".SH DESCRIPTION"] if ".SH DESCRIPTION" not in out else []
            elif level == 2:
                out.append(f'.SH "{inline(title).upper()}"')
            else:
                out.append(f'.SS "{inline(title)}"')
            i += 1
            continue
        if stripped.startswith("|"):
            rows: list[list[str]] = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]]
                if not all(set(c) <= set("-: ") for c in cells):
                    rows.append([c.replace("\\|", "|") for c in cells])
                i += 1
            header, body = (rows[0], rows[1:]) if rows else ([], [])
            for row in body:
                out += [".TP", inline(row[0])]
                rest = [
                    f"{inline(h)}: {inline(c)}" if h else inline(c)
                    for h, c in zip(header[1:], row[1:], strict=False)
                ]
                out.append(_line("; ".join(r for r in rest if r)))
            continue
        if re.match(r"^\s*([-*]|\d+\.)\s+", raw):
            item = re.sub(r"^\s*([-*]|\d+\.)\s+", "", raw)
            i += 1
            while (
                i < len(lines)
                and lines[i].startswith("  ")
                and lines[i].strip()
                and not re.match(r"^\s*([-*]|\d+\.)\s+", lines[i])
            ):
                item += " " + lines[i].strip()
                i += 1
            out += [".IP \\(bu 2", _line(inline(item))]
            in_list = True
            continue
        if not stripped:
            if in_list:
                in_list = False
            i += 1
            continue
        para = [stripped]
        i += 1
        while i < len(lines) and lines[i].strip() and not re.match(r"^\s*([-*#|]|\d+\.|```)", lines[i]):
            para.append(lines[i].strip())
            i += 1
        out += [".PP", _line(inline(" ".join(para)))]
    return "\n".join(out) + "\n"


def docs_directory() -> Path | None:
    """Where the Markdown pages are: a source checkout, or an installed copy."""
    here = Path(__file__).resolve().parents[2] / "docs"
    candidates = [here, Path(sys.prefix) / "share" / "doc" / "meta1py", Path("/usr/share/doc/meta1py")]
    return next((c for c in candidates if (c / "meta1.md").is_file()), None)


def write_pages(target: Path, docs: Path, date: str | None = None) -> list[Path]:
    """Write every page under ``target``; returns the files written."""
    from meta1py.cli import sendmail

    day = date or datetime.date.today().isoformat()
    written = []
    sources = [(n, s, (docs / f).read_text(), summary) for n, s, f, summary in PAGES]
    help_text = (sendmail.__doc__ or "").split("\n\n", 1)[1]
    sources.append(("sendmail", 1, "```\n" + help_text.strip() + "\n```\n", "meta1py's sendmail interface"))
    for name, section, text, summary in sources:
        directory = target / f"man{section}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.{section}"
        path.write_text(convert(text, name, section, summary, day))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    if argv in (["-h"], ["--help"]):
        print("usage: meta1 manpages [DIR]   (write meta1(8), meta1.conf(5), meta1-queue(1), sendmail(1))")
        return EX_OK
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: meta1 manpages [DIR]", file=sys.stderr)
        return EX_USAGE
    docs = docs_directory()
    if docs is None:
        print("meta1 manpages: the docs/ directory was not found", file=sys.stderr)
        return EX_NOINPUT
    for path in write_pages(Path(argv[0] if argv else "man"), docs):
        print(path)
    return EX_OK
