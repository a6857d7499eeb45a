"""Typed configuration: one base for every config dataclass (models, tasks, training).

A config is a dataclass deriving from :class:`Config`. Every field is parsed
strictly by its declared type when the object is made (from Python, a TOML
or JSON file, or ``key=value`` on the command line): a boolean only from
``true``/``false``/``1``/``0`` (any case), an integer only from a whole
number, a float only from a finite number, a ``Literal`` only from one of its
choices. A mismatch is a :class:`~scratchformer.errors.ConfigError` naming the
field, the value and the type. Subclasses add their own checks in
``__post_init__`` after calling ``super().__post_init__()``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin

from .errors import ConfigError, did_you_mean

C = TypeVar("C", bound="Config")

INT_LIMIT = 2**63
"""Integers in configs fit a signed 64-bit integer (what torch and NumPy take)."""

_TRUE, _FALSE = ("true", "1"), ("false", "0")
_INT_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")


class Config:
    """Base of config dataclasses: strict typed fields, ``to_dict``, ``from_dict``
    (unknown keys are errors with a did-you-mean), ``replace`` and field checks."""

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            setattr(self, f.name, parse_typed(value, hints[f.name], f"{type(self).__name__}.{f.name}"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists when dumped)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], where: str | None = None) -> C:
        """Build ``cls`` from ``data``, each value parsed by its field's type.

        Args:
            where: how errors name the fields (``"model"`` gives ``model.bias=...``);
                default the class name.

        Raises:
            ConfigError: an unknown key (with a did-you-mean), a value of the wrong
                type, or a value the class's checks refuse.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where or cls.__name__} must be a table/dict of options, got {data!r}")
        names = cls.field_names()
        hints = _type_hints(cls)
        prefix = where or cls.__name__
        parsed: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise ConfigError(
                    f"unknown {cls.__name__} field {key!r}{did_you_mean(str(key), names)}; fields are {names}"
                )
            parsed[key] = parse_typed(value, hints[key], f"{prefix}.{key}")
        return cls(**parsed)

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})

    # --- checks used by __post_init__ -------------------------------------
    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")

    def _at_least(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{type(self).__name__}.{name}={value!r} must be an integer >= {minimum}")

    def _probability(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{type(self).__name__}.{name} must be in [0, 1), got {value!r}")

    def _choice(self, name: str, choices: typing.Iterable[str]) -> None:
        value = getattr(self, name)
        choices = list(choices)
        if value not in choices:
            raise ConfigError(
                f"{type(self).__name__}.{name}={value!r} is not one of {choices}{did_you_mean(str(value), choices)}"
            )


def literal_choices(cls: type, name: str) -> list[str]:
    """The allowed values of a ``Literal[...]`` field."""
    tp = _type_hints(cls)[name]
    if get_origin(tp) is typing.Literal:
        return list(get_args(tp))
    return []


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def type_name(tp: Any) -> str:
    """A readable name of a field type (``int``, ``bool or None``, ``one of ['a', 'b']``)."""
    origin = get_origin(tp)
    if tp is type(None):
        return "None"
    if origin is typing.Literal:
        return f"one of {list(get_args(tp))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin in (list, tuple, dict):
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {' and '.join(sorted({type_name(a) for a in args}))}s"
        if origin is dict:
            return "a table/dict"
        return f"a list of {type_name(args[0]) if args else 'values'}s"
    return getattr(tp, "__name__", str(tp))


def parse_typed(value: Any, tp: Any, label: str) -> Any:
    """``value`` as the declared type ``tp`` (see the module docstring); ConfigError naming ``label`` if it is not one."""
    try:
        return _parse(value, tp)
    except _Mismatch as e:
        hint = f" ({e.hint})" if e.hint else ""
        raise ConfigError(f"{label}={value!r} is not {_article(type_name(tp))}{hint}") from None


def _article(name: str) -> str:
    if name.startswith(("one of", "a ", "None")):
        return name
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


class _Mismatch(Exception):
    def __init__(self, hint: str = "") -> None:
        self.hint = hint


def _parse(value: Any, tp: Any) -> Any:
    origin = get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch()
    if origin in (typing.Union, types.UnionType):
        return _parse_union(value, get_args(tp))
    if origin is typing.Literal:
        choices = list(get_args(tp))
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        raise _Mismatch(did_you_mean(str(value), [str(c) for c in choices]).strip(" ()"))
    if tp in _SCALARS:
        return _SCALARS[tp](value)
    if origin is dict or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch()
    if origin in (list, tuple) or tp in (list, tuple):
        return _parse_sequence(value, tp)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch()
    return value


def _parse_union(value: Any, args: tuple[Any, ...]) -> Any:
    if value is None and type(None) in args:
        return None
    hints = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _parse(value, arg)
        except _Mismatch as e:
            hints.append(e.hint)
    raise _Mismatch(next((h for h in hints if h), ""))


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _Mismatch("write true or false")


def _parse_int(value: Any) -> int:
    if isinstance(value, str) and _INT_TEXT.match(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Mismatch("write a whole number")
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise _Mismatch("whole numbers in configs lie within +-2**63")
    return value


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Mismatch("write a number")
    try:
        if isinstance(value, (str, int)):
            value = float(value)
    except ValueError:
        raise _Mismatch("write a number") from None
    except OverflowError:
        raise _Mismatch("too large") from None
    if not isinstance(value, float):
        raise _Mismatch("write a number")
    if not math.isfinite(value):
        raise _Mismatch("it must be finite")
    return value


def _parse_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch("write it as a string")


_SCALARS = {bool: _parse_bool, int: _parse_int, float: _parse_float, str: _parse_str}


def _parse_sequence(value: Any, tp: Any) -> list[Any] | tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _Mismatch("write a list, e.g. [1, 2]")
    args = get_args(tp)
    if get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _Mismatch(f"it needs {len(args)} entries, got {len(value)}")
        return tuple(_parse(v, a) for v, a in zip(value, args))
    item = args[0] if args else Any
    items = [_parse(v, item) for v in value]
    return tuple(items) if (get_origin(tp) or tp) is tuple else items
