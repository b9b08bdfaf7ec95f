"""Typed RPC messages: registration, strict validation, JSON mapping (sans-IO).

A message is a frozen dataclass registered with `@rpc_message`. Its field types are limited to what
JSON can carry without ambiguity: ``str``, ``int``, ``float``, ``bool``, ``None``, ``X | None``,
``bytes`` (base64 on the wire), ``tuple[X, ...]`` and ``list[X]``, ``Literal[...]`` enums, and
nested dataclasses registered with `@rpc_struct` (or `@rpc_message`).

Decoding is strict because the sender may be compromised: an unknown type, a missing or extra
field, a wrong JSON type (``true`` is not an int), an over-long string or sequence, an integer
outside 64 bits or a non-finite float is an `RpcProtocolError`. Encoding runs the same checks and
raises `RpcEncodeError`, so a local bug is caught before the peer would drop the connection.

Validators are built once per class (lazily, so nested classes may be defined in any order) and
cached; `check_schemas()` builds them all, which the tests call to catch bad declarations early.

Naming and documentation rules (checked at registration): class names are ``<Area><Noun><Verb>``
in CapWords, and the docstring has ``Sender:`` and ``Receiver:`` lines, from which
`message_table()` generates the table in ``docs/rpc.md``.

This module imports neither trio nor socket.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Literal, TypeVar

from meta1py.rpc.errors import RpcEncodeError, RpcProtocolError

DEFAULT_MAX_STR_LEN = 64 * 1024
"""Default cap on a ``str`` field (characters) or ``bytes`` field (bytes)."""
DEFAULT_MAX_ITEMS = 10_000
"""Default cap on the number of items of a ``tuple``/``list`` field."""
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

_NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9]{1,63}$")
_DOC_LINE_RE = re.compile(r"^\s*(Sender|Receiver):\s*(.+?)\s*$", re.MULTILINE)


class RpcMessage:
    """Base class of every RPC message and nested struct.

    Subclasses are frozen dataclasses; `rpc_message` registers them by class name.
    """

    __slots__ = ()
    response: ClassVar[type[RpcMessage] | None] = None


R = TypeVar("R", bound=RpcMessage)


class RpcRequest(RpcMessage, Generic[R]):
    """Base class of a message that expects a reply of type ``R``.

    Declare the reply class in the base: ``class SmarResolveRequest(RpcRequest[SmarResolveReply])``.
    `rpc_message` copies it into the ``response`` class variable, which `RpcChannel.call` uses to
    check the reply type, and type checkers see the return type of ``call``.
    """

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class MessageInfo:
    """What the registry knows about one message class."""

    cls: type[RpcMessage]
    sender: str
    receiver: str
    response: type[RpcMessage] | None


_REGISTRY: dict[str, MessageInfo] = {}
_STRUCTS: set[type] = set()
_CODECS: dict[type, _ClassCodec] = {}
# Registered messages only (never structs alone): wire name -> decoder, class -> encoder.
_DECODERS: dict[str, Callable[[Any], Any]] = {}
_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def caps(*, max_len: int | None = None, max_items: int | None = None) -> dict[str, int | None]:
    """Field metadata with explicit caps: ``x: str = field(metadata=caps(max_len=64))``.

    Plain `dataclasses.field` is used (not a wrapper) so that type checkers still know whether
    the field has a default.

    Args:
        max_len: cap on the length of a ``str`` (characters) or ``bytes`` (bytes) value, also
            applied to the items of a sequence field. Default `DEFAULT_MAX_STR_LEN`.
        max_items: cap on the number of items of a sequence field. Default `DEFAULT_MAX_ITEMS`.

    Returns:
        The metadata mapping.
    """
    return {"rpc_max_len": max_len, "rpc_max_items": max_items}


def _check_dataclass(cls: type, message: bool) -> None:
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: RPC messages must be frozen dataclasses")
    if message and not issubclass(cls, RpcMessage):
        raise TypeError(f"{cls.__name__}: RPC messages must subclass RpcMessage or RpcRequest")


T = TypeVar("T")


def rpc_struct(cls: type[T]) -> type[T]:
    """Mark a frozen dataclass as usable inside messages (not sendable on its own)."""
    _check_dataclass(cls, message=False)
    _STRUCTS.add(cls)
    return cls


def _declared_response(cls: type) -> type[RpcMessage] | None:
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is RpcRequest:
                (arg,) = typing.get_args(base)
                if not (isinstance(arg, type) and issubclass(arg, RpcMessage)):
                    raise TypeError(f"{cls.__name__}: RpcRequest[...] needs a message class")
                return arg
    if issubclass(cls, RpcRequest):
        raise TypeError(f"{cls.__name__}: declare the reply as RpcRequest[ReplyClass]")
    return None


def rpc_message(cls: type[R]) -> type[R]:
    """Register a frozen dataclass as an RPC message, under its class name.

    Raises:
        TypeError: the class is not a frozen dataclass subclassing `RpcMessage`, its name is not
            CapWords, it is already registered, or its docstring lacks ``Sender:``/``Receiver:``.
    """
    _check_dataclass(cls, message=True)
    name = cls.__name__
    if not _NAME_RE.match(name):
        raise TypeError(f"{name}: message names are <Area><Noun><Verb> in CapWords")
    if name in _REGISTRY:
        raise TypeError(f"{name}: an RPC message of that name is already registered")
    found = dict(_DOC_LINE_RE.findall(cls.__doc__ or ""))
    if "Sender" not in found or "Receiver" not in found:
        raise TypeError(f"{name}: the docstring must have 'Sender:' and 'Receiver:' lines")
    response = _declared_response(cls)
    if response is not None:
        if response.__name__ not in _REGISTRY or _REGISTRY[response.__name__].cls is not response:
            raise TypeError(f"{name}: reply class {response.__name__} must be registered first")
        cls.response = response
    sender, receiver = (found[k].rstrip(".").replace("|", "/") for k in ("Sender", "Receiver"))
    _REGISTRY[name] = MessageInfo(cls, sender, receiver, response)
    _STRUCTS.add(cls)
    return cls


def message_class(name: str) -> type[RpcMessage] | None:
    """The registered message class called ``name``, or None."""
    info = _REGISTRY.get(name)
    return None if info is None else info.cls


def registered_messages() -> list[MessageInfo]:
    """Every registered message, in registration order."""
    return list(_REGISTRY.values())


# --- validators -------------------------------------------------------------------------------
# A converter takes a value and returns the converted value or raises _Invalid. Each type gets a
# pair: (from_json, to_json). For JSON-native types both are the same check.


class _Invalid(Exception):
    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def under(self, segment: str) -> _Invalid:
        self.path = segment + ("." + self.path if self.path and self.path[0] != "[" else self.path)
        return self


Conv = Callable[[Any], Any]


def _tname(value: object) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "object"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _str_conv(max_len: int) -> Conv:
    def conv(value: Any) -> Any:
        if type(value) is not str:
            raise _Invalid(f"expected str, got {_tname(value)}")
        if len(value) > max_len:
            raise _Invalid(f"string longer than {max_len}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Invalid("string is not valid Unicode (lone surrogate)") from None
        return value

    return conv


def _int_conv(value: Any) -> Any:
    if type(value) is not int:
        raise _Invalid(f"expected int, got {_tname(value)}")
    if not INT_MIN <= value <= INT_MAX:
        raise _Invalid("integer out of 64-bit range")
    return value


def _float_conv(value: Any) -> Any:
    if type(value) is not float:
        raise _Invalid(f"expected float, got {_tname(value)}")
    if not math.isfinite(value):
        raise _Invalid("float is not finite")
    return value


def _bool_conv(value: Any) -> Any:
    if type(value) is not bool:
        raise _Invalid(f"expected bool, got {_tname(value)}")
    return value


def _none_conv(value: Any) -> Any:
    if value is not None:
        raise _Invalid(f"expected null, got {_tname(value)}")
    return value


def _bytes_convs(max_len: int) -> tuple[Conv, Conv]:
    max_b64 = 4 * ((max_len + 2) // 3)

    def from_json(value: Any) -> Any:
        if type(value) is not str:
            raise _Invalid(f"expected base64 str, got {_tname(value)}")
        if len(value) > max_b64:
            raise _Invalid(f"bytes longer than {max_len}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid("invalid base64") from None

    def to_json(value: Any) -> Any:
        if type(value) is not bytes:
            raise _Invalid(f"expected bytes, got {type(value).__name__}")
        if len(value) > max_len:
            raise _Invalid(f"bytes longer than {max_len}")
        return base64.b64encode(value).decode("ascii")

    return from_json, to_json


def _literal_conv(values: tuple[Any, ...]) -> Conv:
    # Pairs of (type, value) so that True does not match Literal[1] (True == 1 in Python).
    allowed = frozenset((type(v), v) for v in values)
    for v in values:
        if type(v) not in (str, int, bool):
            raise TypeError(f"Literal values must be str, int or bool, not {v!r}")

    def conv(value: Any) -> Any:
        if type(value) not in (str, int, bool) or (type(value), value) not in allowed:
            shown = repr(value)[:40] if type(value) in (str, int, bool) else _tname(value)
            raise _Invalid(f"{shown} is not one of {sorted(map(repr, values))}")
        return value

    return conv


def _optional_convs(inner: tuple[Conv, Conv]) -> tuple[Conv, Conv]:
    inner_from, inner_to = inner

    def from_json(value: Any) -> Any:
        return None if value is None else inner_from(value)

    def to_json(value: Any) -> Any:
        return None if value is None else inner_to(value)

    return from_json, to_json


def _seq_convs(item: tuple[Conv, Conv], max_items: int, as_tuple: bool) -> tuple[Conv, Conv]:
    item_from, item_to = item
    py_type = tuple if as_tuple else list

    def from_json(value: Any) -> Any:
        if type(value) is not list:
            raise _Invalid(f"expected array, got {_tname(value)}")
        if len(value) > max_items:
            raise _Invalid(f"more than {max_items} items")
        index = 0
        try:
            result = [item_from(v) for v in value]
        except _Invalid as exc:
            # Find the offending index only on the error path, to keep the loop tight.
            for index, v in enumerate(value):  # noqa: B007
                try:
                    item_from(v)
                except _Invalid:
                    break
            raise exc.under(f"[{index}]") from None
        return tuple(result) if as_tuple else result

    def to_json(value: Any) -> Any:
        if type(value) is not py_type:
            raise _Invalid(f"expected {py_type.__name__}, got {type(value).__name__}")
        if len(value) > max_items:
            raise _Invalid(f"more than {max_items} items")
        return [item_to(v) for v in value]

    return from_json, to_json


def _nested_convs(cls: type) -> tuple[Conv, Conv]:
    # Resolved lazily: the nested class may be declared after the class that uses it.
    def from_json(value: Any) -> Any:
        return _codec(cls).from_json(value)

    def to_json(value: Any) -> Any:
        if type(value) is not cls:
            raise _Invalid(f"expected {cls.__name__}, got {type(value).__name__}")
        return _codec(cls).to_json(value)

    return from_json, to_json


def _build(tp: Any, max_len: int, max_items: int, where: str) -> tuple[Conv, Conv]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        conv = _str_conv(max_len)
        return conv, conv
    if tp is bool:
        return _bool_conv, _bool_conv
    if tp is int:
        return _int_conv, _int_conv
    if tp is float:
        return _float_conv, _float_conv
    if tp is type(None) or tp is None:
        return _none_conv, _none_conv
    if tp is bytes:
        return _bytes_convs(max_len)
    if origin is Literal:
        conv = _literal_conv(args)
        return conv, conv
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) != 1 or len(args) != 2:
            raise TypeError(f"{where}: only 'X | None' unions are supported, not {tp!r}")
        return _optional_convs(_build(others[0], max_len, max_items, where))
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: use tuple[X, ...], not {tp!r}")
        return _seq_convs(_build(args[0], max_len, max_items, where), max_items, True)
    if origin is list:
        return _seq_convs(_build(args[0], max_len, max_items, where), max_items, False)
    if isinstance(tp, type) and tp in _STRUCTS:
        return _nested_convs(tp)
    raise TypeError(f"{where}: unsupported RPC field type {tp!r}")


def _utf8_ok(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inline_check(tp: Any, var: str, max_len: int) -> str | None:
    """A Python expression that is true when ``var`` passes the check of type ``tp``.

    Only the JSON-native scalar types are inlined (their value is passed through unchanged); it
    must accept exactly what the matching converter above accepts. None means: call the converter.
    """
    if tp is int:
        return f"type({var}) is int and {INT_MIN} <= {var} <= {INT_MAX}"
    if tp is str:
        return f"type({var}) is str and len({var}) <= {max_len} and ({var}.isascii() or _utf8_ok({var}))"
    if tp is bool:
        return f"type({var}) is bool"
    if tp is float:
        return f"type({var}) is float and _isfinite({var})"
    return None


class _ClassCodec:
    """The validators of one dataclass, built once.

    ``from_json`` and ``to_json`` are functions generated for the class from its field
    declarations (the technique `dataclasses` uses for ``__init__``): straight-line code with the
    scalar checks inlined and no loop over field tuples, about twice as fast as the generic loop.
    The generated code only ever sees the class declaration, never wire data. Any value that
    fails a check sends the generated function to the generic loop (`_from_json_slow`,
    `_to_json_slow`), which runs the same checks again and raises the detailed `_Invalid`; so
    the two paths accept exactly the same values and the error messages are unchanged.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls)
        convs: list[tuple[str, Conv, Conv]] = []
        inline: list[tuple[Any, int]] = []
        for f in dataclasses.fields(cls):
            max_len = f.metadata.get("rpc_max_len") or DEFAULT_MAX_STR_LEN
            max_items = f.metadata.get("rpc_max_items") or DEFAULT_MAX_ITEMS
            from_json, to_json = _build(hints[f.name], max_len, max_items, f"{cls.__name__}.{f.name}")
            convs.append((f.name, from_json, to_json))
            inline.append((hints[f.name], max_len))
        self.fields = tuple(convs)
        self.names = frozenset(name for name, _, _ in convs)
        self.from_json: Conv = self._from_json_slow
        self.to_json: Callable[[Any], dict[str, Any]] = self._to_json_slow
        self._generate(cls, inline)

    def _generate(self, cls: type, inline: list[tuple[Any, int]]) -> None:
        names = [name for name, _, _ in self.fields]
        if not all(name.isidentifier() for name in names):  # pragma: no cover - always identifiers
            return
        env: dict[str, Any] = {
            "_Invalid": _Invalid,
            "_utf8_ok": _utf8_ok,
            "_isfinite": math.isfinite,
            "_slow_from": self._from_json_slow,
            "_slow_to": self._to_json_slow,
            "_cls": cls,
            "_new": object.__new__,
        }
        dc_fields = dataclasses.fields(cls)
        # Building the instance through the slot descriptors skips the frozen __init__ and its
        # object.__setattr__ per field; only when __init__ would do nothing more than that.
        direct = (
            "__slots__" in cls.__dict__
            and not hasattr(cls, "__post_init__")
            and all(f.init for f in dc_fields)
            and all(isinstance(cls.__dict__.get(n), types.MemberDescriptorType) for n in names)
        )
        dec = [
            "def from_json(obj):",
            f"    if type(obj) is not dict or len(obj) != {len(names)}:",
            "        return _slow_from(obj)",
        ]
        enc = ["def to_json(msg):"]
        if names:
            dec.append("    try:")
            dec += [f"        v{i} = obj[{n!r}]" for i, n in enumerate(names)]
            dec += ["    except KeyError:", "        return _slow_from(obj)"]
            enc += [f"    v{i} = msg.{n}" for i, n in enumerate(names)]
        converted: list[int] = []
        for i, (_, from_json, to_json) in enumerate(self.fields):
            check = _inline_check(inline[i][0], f"v{i}", inline[i][1])
            if check is None:
                env[f"_from{i}"] = from_json
                env[f"_to{i}"] = to_json
                converted.append(i)
            else:
                dec += [f"    if not ({check}):", "        return _slow_from(obj)"]
                enc += [f"    if not ({check}):", "        return _slow_to(msg)"]
        if converted:
            dec.append("    try:")
            dec += [f"        v{i} = _from{i}(v{i})" for i in converted]
            dec += ["    except _Invalid:", "        return _slow_from(obj)"]
            enc.append("    try:")
            enc += [f"        v{i} = _to{i}(v{i})" for i in converted]
            enc += ["    except _Invalid:", "        return _slow_to(msg)"]
        if direct:
            for i, n in enumerate(names):
                env[f"_set{i}"] = cls.__dict__[n].__set__
            dec.append("    inst = _new(_cls)")
            dec += [f"    _set{i}(inst, v{i})" for i in range(len(names))]
            dec.append("    return inst")
        else:
            args = ", ".join(f"{n}=v{i}" for i, n in enumerate(names))
            dec += [
                "    try:",
                f"        return _cls({args})",
                "    except (TypeError, ValueError):",
                "        return _slow_from(obj)",
            ]
        enc.append("    return {" + ", ".join(f"{n!r}: v{i}" for i, n in enumerate(names)) + "}")
        # The source is built from the class declaration only, never from wire data.
        exec("\n".join(dec), env)
        exec("\n".join(enc), env)
        self.from_json = env["from_json"]
        self.to_json = env["to_json"]

    def _from_json_slow(self, obj: Any) -> Any:
        if type(obj) is not dict:
            raise _Invalid(f"expected object, got {_tname(obj)}")
        if len(obj) != len(self.fields) or obj.keys() != self.names:
            missing = sorted(self.names - obj.keys())
            extra = sorted(repr(k)[:40] for k in obj.keys() - self.names)
            raise _Invalid(f"missing fields {missing}, unknown fields {extra}")
        kwargs = {}
        for name, from_json, _ in self.fields:
            try:
                kwargs[name] = from_json(obj[name])
            except _Invalid as exc:
                raise exc.under(name) from None
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as exc:
            # A __post_init__ check of the message class refused the values.
            raise _Invalid(f"rejected by {self.cls.__name__}: {exc}") from None

    def _to_json_slow(self, msg: Any) -> dict[str, Any]:
        out = {}
        for name, _, to_json in self.fields:
            try:
                out[name] = to_json(getattr(msg, name))
            except _Invalid as exc:
                raise exc.under(name) from None
        return out


def _codec(cls: type) -> _ClassCodec:
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = _ClassCodec(cls)
    return codec


def check_schemas() -> None:
    """Build every registered class's validators now.

    Raises:
        TypeError: a field has an unsupported type.
    """
    for cls in [*(i.cls for i in _REGISTRY.values()), *_STRUCTS]:
        _codec(cls)


def message_to_json(msg: RpcMessage) -> tuple[str, dict[str, Any]]:
    """The wire name and JSON body of a registered message.

    Raises:
        RpcEncodeError: the message class is not registered or a field breaks its schema.
    """
    cls = type(msg)
    to_json = _ENCODERS.get(cls)
    if to_json is None:
        info = _REGISTRY.get(cls.__name__)
        if info is None or info.cls is not cls:
            raise RpcEncodeError(f"{cls.__name__} is not a registered RPC message")
        to_json = _ENCODERS[cls] = _codec(cls).to_json
    try:
        return cls.__name__, to_json(msg)
    except _Invalid as exc:
        raise RpcEncodeError(f"{cls.__name__}.{exc.path}: {exc.reason}") from None


def message_from_json(name: Any, body: Any) -> RpcMessage:
    """Build a message from its wire name and JSON body, validating every field.

    Raises:
        RpcProtocolError: unknown name or a body that breaks the schema.
    """
    from_json = _DECODERS.get(name) if type(name) is str else None
    if from_json is None:
        info = _REGISTRY.get(name) if type(name) is str else None
        if info is None:
            raise RpcProtocolError(f"unknown message type {str(name)[:64]!r}")
        from_json = _DECODERS[name] = _codec(info.cls).from_json
    try:
        msg: RpcMessage = from_json(body)
    except _Invalid as exc:
        where = f"{name}.{exc.path}" if exc.path else name
        raise RpcProtocolError(f"{where}: {exc.reason}") from None
    return msg


# --- documentation ----------------------------------------------------------------------------


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_text(a) for a in args)
    if origin is tuple:
        return f"tuple[{_type_text(args[0])}, ...]"
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    return getattr(tp, "__name__", repr(tp))


def _fields_text(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    parts = []
    for f in dataclasses.fields(cls):
        caps = []
        if f.metadata.get("rpc_max_len"):
            caps.append(f"≤{f.metadata['rpc_max_len']}")
        if f.metadata.get("rpc_max_items"):
            caps.append(f"≤{f.metadata['rpc_max_items']} items")
        cap = f" ({', '.join(caps)})" if caps else ""
        parts.append(f"`{f.name}`: {_type_text(hints[f.name])}{cap}")
    return "; ".join(parts) or "(none)"


def message_table(module_prefix: str = "meta1py.") -> str:
    """A Markdown table of the registered messages and nested structs, for ``docs/rpc.md``.

    Args:
        module_prefix: only classes defined in modules starting with this are listed (tests
            register messages of their own, which do not belong in the docs).
    """
    lines = [
        "| message | sender | receiver | reply | fields |",
        "|---|---|---|---|---|",
    ]
    for info in _REGISTRY.values():
        if not info.cls.__module__.startswith(module_prefix):
            continue
        reply = f"`{info.response.__name__}`" if info.response else "—"
        lines.append(
            f"| `{info.cls.__name__}` | {info.sender} | {info.receiver} | {reply} "
            f"| {_fields_text(info.cls)} |"
        )
    structs = sorted(
        (c for c in _STRUCTS if c.__name__ not in _REGISTRY and c.__module__.startswith(module_prefix)),
        key=lambda c: c.__name__,
    )
    if structs:
        lines += ["", "| nested struct | fields |", "|---|---|"]
        for cls in structs:
            lines.append(f"| `{cls.__name__}` | {_fields_text(cls)} |")
    return "\n".join(lines) + "\n"
