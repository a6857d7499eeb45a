"""Typed configuration: dataclasses that validate themselves and round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from .errors import CheckpointError, ConfigError, did_you_mean

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for config dataclasses: ``to_dict``, ``from_dict`` (unknown keys
    are errors with a did-you-mean), ``replace`` and field checks."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown {cls.__name__} field {key!r}{did_you_mean(key, names)}; fields are {names}")
        return cls(**data)

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})

    # --- checks used by __post_init__ -------------------------------------
    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")

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
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    if get_origin(tp) is typing.Literal:
        return list(get_args(tp))
    return []


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    """Parse the UTF-8 JSON file ``path`` (the reading side of :func:`save_json`).

    Callers check that the file exists first, so that error can say what the file is for.

    Raises:
        CheckpointError: the file is not UTF-8 or not valid JSON (naming the path).
        OSError: the file cannot be read.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {e}") from None
