"""The errors of maps: parse errors of a map file, and a source that cannot answer now."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BrokenEntry", "MapError", "MapErrors", "MapTempError"]


@dataclass(frozen=True, slots=True)
class MapError:
    """One problem found while parsing a map file.

    Attributes:
        path: the file name as given to the parser.
        line: 1-based physical line number.
        message: what is wrong, for an operator.
    """

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class BrokenEntry:
    """The value of a key whose line in the map file has an error.

    A map loaded at run time keeps its good lines and logs its bad ones (bad content never stops
    the MTA). A bad line whose key could still be read leaves this in the map under that key, so
    that a lookup that reaches the key fails temporarily (451 4.3.5, a deferral) instead of
    falling through to a less specific entry or to "no entry": a broken route or TLS policy must
    not send mail somewhere else, or without the TLS it asks for, and a broken alias must not
    deliver to a mailbox of the same name.
    """

    error: MapError

    @property
    def text(self) -> str:
        """For replies and logs: ``path:line: message``."""
        return f"map entry unusable: {self.error}"


class MapErrors(Exception):
    """A map file has errors; ``errors`` lists all of them in file order."""

    def __init__(self, errors: list[MapError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class MapTempError(Exception):
    """A map source could not answer now (server down, timeout, deadline passed).

    Raised by :meth:`meta1py.maps.source.MapSource.lookup`. The caller turns it into a temporary
    failure (a 4xx reply, a deferred recipient), never into "no entry": a missing answer must not
    route mail as if the map had nothing to say. The file source never raises it.
    """
