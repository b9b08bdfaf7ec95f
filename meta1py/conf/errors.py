"""Configuration errors: what went wrong, where, and what to do about it.

Every problem found in a file is collected as a `ConfigError`; the parser raises one
`ConfigErrors` holding all of them, so an operator fixes a file in one round.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigError:
    """One problem in a configuration file.

    Attributes:
        path: the file (as given by the caller, or ``<string>``/``<defaults>``).
        line: 1-based line number; 0 when the problem has no place in the file (a default value).
        column: 1-based column; 0 when unknown.
        message: what is wrong, in one line.
        hint: what to do about it, or "" when nothing useful can be said.
        source_line: the text of the offending line (without its newline), or "".
    """

    path: str
    line: int
    column: int
    message: str
    hint: str = ""
    source_line: str = ""

    @property
    def location(self) -> str:
        """``PATH:LINE:COL`` (or just ``PATH`` when the error has no position)."""
        if self.line <= 0:
            return self.path
        return f"{self.path}:{self.line}:{max(self.column, 1)}"

    def headline(self) -> str:
        """The first line of the rendering: ``PATH:LINE:COL: message``."""
        return f"{self.location}: {self.message}"

    def render(self) -> str:
        """The full rendering: headline, source line, caret line and hint."""
        out = [self.headline()]
        if self.line > 0 and self.source_line:
            out.append(self.source_line)
            # Keep tabs so that the caret lines up under the column however tabs are shown.
            prefix = self.source_line[: max(self.column, 1) - 1]
            out.append("".join(c if c == "\t" else " " for c in prefix) + "^")
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class ConfigErrors(Exception):
    """Raised when a configuration is invalid; holds every error found.

    Attributes:
        errors: the problems, in file order.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(e.render() for e in self.errors)
