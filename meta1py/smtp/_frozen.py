"""A faster ``__init__`` for the frozen slotted dataclasses of the SMTP core.

The events, addresses and ESMTP parameters are declared as
``@dataclass(frozen=True, slots=True)`` (style guide §2) and keep everything
that gives them: equality, hashing, ``repr``, ``__match_args__``,
``dataclasses.fields`` and the refusal of assignment after construction.

Only the generated ``__init__`` is replaced. A frozen dataclass's
``__init__`` must go around its own ``__setattr__`` (which raises), and does
so with ``object.__setattr__(self, name, value)`` per field: a name lookup
on every store. The server core builds about fifteen of these values per
mail transaction, and on the benchmark machine that lookup was a tenth of
the core's time. The replacement stores through each slot's member
descriptor directly (``Cls.field.__set__``), which is what
``object.__setattr__`` ends up calling, so the resulting object is the same.
``tests/unit/smtp/test_fast_paths.py`` checks that both constructors build
equal objects, with and without defaults, and that assignment still raises.

The source of the new ``__init__`` is built from the class declaration only
(field names and defaults), never from peer data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

__all__ = ["fast_init"]

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Give a frozen slotted dataclass an ``__init__`` that stores through its slots.

    Args:
        cls: A class made with ``@dataclass(frozen=True, slots=True)``, without
            ``__post_init__`` or ``default_factory`` fields.

    Returns:
        The same class, its ``__init__`` replaced.

    Raises:
        TypeError: If ``cls`` is not such a class.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__")
    namespace: dict[str, Any] = {}
    args: list[str] = []
    body: list[str] = []
    for i, f in enumerate(dataclasses.fields(cast(Any, cls))):
        if f.default_factory is not dataclasses.MISSING or not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported field")
        if not f.name.isidentifier():  # pragma: no cover - dataclasses already requires it
            raise TypeError(f"bad field name {f.name!r}")
        namespace[f"_set{i}"] = getattr(cls, f.name).__set__
        if f.default is dataclasses.MISSING:
            args.append(f.name)
        else:
            namespace[f"_default{i}"] = f.default
            args.append(f"{f.name}=_default{i}")
        body.append(f"    _set{i}(self, {f.name})")
    source = f"def __init__(self, {', '.join(args)}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, namespace)  # built from the class declaration above, never from peer data
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning a method
    return cls
