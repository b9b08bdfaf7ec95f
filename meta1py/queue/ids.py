"""Queue ids: short, time-ordered, unguessable names for messages.

A queue id is 12 characters from a 31-symbol alphabet: the digits and upper-case letters without the
lookalikes ``0 O 1 I L``, so an operator can read one aloud or retype it from a log line.

The 12 symbols are one base-31 number (about 59 bits) in mixed radix: the arrival second since
2024-01-01 UTC times 2**27, plus 27 random bits from :mod:`secrets`. Ids therefore sort by arrival
second (the alphabet is in ASCII order, so string order is numeric order), a later id cannot be
predicted from an earlier one, and the format lasts about 185 years. Ids are not sequential, so they
reveal nothing about the message rate.

The last two symbols name the content file's subdirectory (:mod:`meta1py.queue.content`). A caller may
fix them (``suffix``) so that messages written close together share a directory, and one directory
fsync covers a whole batch of them; such an id keeps about 17 random bits (2**27 / 31**2).

27 random bits per second do collide now and then under load (about 0.4% of seconds at 1,000
messages per second), so an id is only *claimed* by creating its content file with ``O_EXCL``
(:class:`meta1py.queue.content.ContentWriter` does that and draws again on a collision). Code that
needs a message id must get it from there, not from :func:`new_queue_id` directly.

:func:`is_queue_id` is the strict check for ids that arrive over RPC or on the command line; an id that
passes it contains no ``/``, ``.`` or NUL, so it is safe to use as a file name.
"""

from __future__ import annotations

import re
import secrets
import time

__all__ = [
    "ALPHABET",
    "QUEUE_ID_LENGTH",
    "SEED_SUFFIXES",
    "SUFFIXES",
    "is_queue_id",
    "is_seed_subdir",
    "new_queue_id",
    "queue_id_time",
]

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
assert len(ALPHABET) == 31 and list(ALPHABET) == sorted(ALPHABET)
QUEUE_ID_LENGTH = 12

_BASE = len(ALPHABET)
_RANDOM_BITS = 27
_EPOCH_S = 1_704_067_200  # 2024-01-01T00:00:00Z
_MAX_VALUE = _BASE**QUEUE_ID_LENGTH
_MAX_SECONDS = _MAX_VALUE >> _RANDOM_BITS
#: How many different two-symbol endings an id can have (the content subdirectories).
SUFFIXES = _BASE * _BASE
#: The suffixes ``0 .. SEED_SUFFIXES - 1`` (subdirectories whose name starts with the alphabet's
#: first symbol) are the *seed* subdirectories: mcp makes them before any worker starts, the
#: other 930 once the workers run (a directory costs about 0.2 ms on ext4; all 961 made a first
#: start 0.2 s slower). A writer that draws a subdirectory that does not exist yet uses a seed one.
SEED_SUFFIXES = _BASE
# fullmatch, not match + "$": "$" would also accept a trailing newline.
_QUEUE_ID_RE = re.compile(r"[2-9A-HJKMNP-Z]{12}")


def new_queue_id(now: float | None = None, suffix: int | None = None) -> str:
    """Return a fresh queue id for the current (or the given) time.

    Args:
        now: seconds since the Unix epoch; ``None`` means ``time.time()``. A clock before 2024 is
            clamped to 2024 (the id is still valid, it just sorts first).
        suffix: ``0 <= suffix < SUFFIXES`` fixes the id's last two symbols (``ALPHABET[suffix //
            31] + ALPHABET[suffix % 31]``); the other random bits stay random. ``None``: all 27
            bits are random.

    Returns:
        A 12-character string for which :func:`is_queue_id` is true.
    """
    seconds = int((time.time() if now is None else now) - _EPOCH_S)
    seconds = min(max(seconds, 0), _MAX_SECONDS - 1)
    value = (seconds << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
    if suffix is not None:
        if not 0 <= suffix < SUFFIXES:
            raise ValueError(f"suffix out of range: {suffix}")
        # Move the value to the nearest one below with the wanted remainder, staying in this
        # second (2**27 is far larger than 961, so there is always one).
        value -= (value - suffix) % SUFFIXES
        if value < seconds << _RANDOM_BITS:
            value += SUFFIXES
    chars = []
    for _ in range(QUEUE_ID_LENGTH):
        value, digit = divmod(value, _BASE)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def is_seed_subdir(name: str) -> bool:
    """Tell whether content subdirectory ``name`` is a seed one (made before any worker starts)."""
    return name[:1] == ALPHABET[0]


def is_queue_id(value: object) -> bool:
    """Tell whether ``value`` is a well-formed queue id (a ``str`` of 12 alphabet symbols)."""
    return isinstance(value, str) and _QUEUE_ID_RE.fullmatch(value) is not None


def queue_id_time(qid: str) -> float:
    """Return the arrival second encoded in a queue id (seconds since the Unix epoch).

    Raises:
        ValueError: ``qid`` is not a queue id.
    """
    if not is_queue_id(qid):
        raise ValueError(f"not a queue id: {qid!r}")
    value = 0
    for char in qid:
        value = value * _BASE + ALPHABET.index(char)
    return float((value >> _RANDOM_BITS) + _EPOCH_S)
