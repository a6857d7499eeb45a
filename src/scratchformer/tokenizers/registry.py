"""Tokenizers by name, and loading any saved tokenizer by its ``"type"`` field."""

from __future__ import annotations

import os
from typing import Any

from scratchformer.errors import DataError, did_you_mean
from scratchformer.tokenizers.arithmetic import ArithmeticTokenizer
from scratchformer.tokenizers.base import Tokenizer, read_tokenizer_json
from scratchformer.tokenizers.bpe import BPETokenizer
from scratchformer.tokenizers.char import CharTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "arithmetic": ArithmeticTokenizer,
    "bpe": BPETokenizer,
}
"""Registry: the JSON ``"type"`` name of each tokenizer class."""


def _class_for(kind: Any, where: str) -> type[Tokenizer]:
    if kind not in TOKENIZERS:
        hint = did_you_mean(kind, TOKENIZERS) if isinstance(kind, str) else ""
        raise DataError(f"{where} has unknown tokenizer type {kind!r}{hint}; known types: {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind]


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild any tokenizer from its :meth:`Tokenizer.to_dict` form; DataError if foreign."""
    if not isinstance(data, dict):
        raise DataError(f"a tokenizer dict must be a JSON object, got {type(data).__name__}")
    return _class_for(data.get("type"), "tokenizer dict").from_dict(data)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer saved by :meth:`Tokenizer.save`, whatever its type.

    Raises:
        DataError: naming ``path``, if it is missing, not JSON, not a
            scratchformer tokenizer, or of an unknown type.
    """
    data = read_tokenizer_json(path)
    cls = _class_for(data["type"], str(path))
    try:
        return cls.from_dict(data)
    except DataError as err:
        raise DataError(f"{path}: {err}") from err
