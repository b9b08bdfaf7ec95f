"""Maps: formats (aliases, routes, access, tls_policy) over sources (a text file, a compiled file,
a socketmap server; sequences of them).

A *format* knows its file syntax, what a value means and in which order keys are tried; a *source*
answers "the value of this exact key". The modules:

* :mod:`meta1py.maps.errors`: :class:`MapError` / :class:`MapErrors` (parse errors rendered as
  ``path:line: message``; a parser collects every error of a file before raising, so an operator
  sees them all at once), :class:`BrokenEntry` (what a bad line leaves under its key when a map
  is loaded at run time, ``strict=False``: the good lines work, lookups of that key fail
  temporarily) and :class:`MapTempError` (a source cannot answer now).
* :mod:`meta1py.maps.source`: the :class:`MapSource` interface and the file source
  (:class:`FileSource`, :class:`ReloadingMap`: a parsed file that is re-read when it changes;
  its bad lines are logged, never fatal).
* :mod:`meta1py.maps.lines`: the line syntax the map files share (comments, continuation lines,
  ``key value`` splitting, ``file:line`` errors).
* :mod:`meta1py.maps.keys`: the key order of the maps keyed by domain (name, ``.parent``, ``*``).
* :mod:`meta1py.maps.aliases`, :mod:`meta1py.maps.routes`, :mod:`meta1py.maps.tls_policy`,
  :mod:`meta1py.maps.access`: the formats.
* :mod:`meta1py.maps.cdb` and :mod:`meta1py.maps.compiled`: compiled maps (``meta1 makemap``
  writes ``FILE.cdb``; ``cdb:FILE`` in meta1.conf reads it, reopened when it is replaced).
* :mod:`meta1py.maps.views`: sequences of maps (``{ a, b }`` in meta1.conf: each key from the
  first map that has it) and a format's map class over any table of its values; the access map
  fetched key by key from members that must be asked (:class:`~meta1py.maps.views.AccessSource`).
* :mod:`meta1py.maps.socketmap`: the socketmap protocol without I/O (smar's trio client is
  :mod:`meta1py.smar.socketmap`).

Everything here is pure: files are read with plain ``open``/``os.stat`` and nothing imports trio
or socket, so parsing and lookups are unit-tested as plain functions.
"""

from __future__ import annotations

from meta1py.maps.errors import BrokenEntry, MapError, MapErrors, MapTempError
from meta1py.maps.source import FileSource, MapSource, ReloadingMap, Table, read_map_file

__all__ = [
    "BrokenEntry",
    "FileSource",
    "MapError",
    "MapErrors",
    "MapSource",
    "MapTempError",
    "ReloadingMap",
    "Table",
    "read_map_file",
]
