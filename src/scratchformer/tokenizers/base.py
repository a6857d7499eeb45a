"""The tokenizer interface every scratchformer tokenizer implements.

A tokenizer turns text into a list of integer ids and back. The base class
owns everything that does not depend on the vocabulary: adding BOS/EOS,
checking ids before decoding, batching with padding and attention masks, and
saving to / loading from JSON. A subclass supplies four things:

- ``_encode_text(text) -> list[int]``: ids for ``text`` without BOS/EOS,
- ``_decode_ids(ids, skip_special_tokens) -> str``: text for valid ids,
- the vocabulary look-ups (``vocab_size``, ``token_to_id``, ``id_to_token``,
  the special-token id properties),
- ``to_dict()`` / ``from_dict()`` for its JSON form.

A closed-vocabulary tokenizer (char, arithmetic) derives from
:class:`ClosedVocabTokenizer`, which serves the special ids from class
constants and implements the "unk"/"error" unknown-symbol policy.

JSON form: a dict with ``"type"`` (the registry name, e.g. ``"char"``),
``"format_version"`` and the tokenizer's own fields. ``save`` writes it
atomically; ``load`` and :func:`scratchformer.tokenizers.load_tokenizer`
read it back. Nothing here ever unpickles.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from scratchformer.io import atomic_write_text
from scratchformer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the tokenizer JSON format this code writes and reads."""

PaddingSide = Literal["right", "left"]

UnknownPolicy = Literal["unk", "error"]
"""What ``encode`` does with a symbol outside a fixed vocabulary: map it to UNK, or raise."""
UNKNOWN_POLICIES: tuple[str, ...] = ("unk", "error")


def check_unknown_policy(unknown: str) -> None:
    """ConfigError unless ``unknown`` is one of ``UNKNOWN_POLICIES``."""
    if unknown not in UNKNOWN_POLICIES:
        raise ConfigError(f"unknown={unknown!r} is not one of {list(UNKNOWN_POLICIES)}")


@dataclass
class BatchEncoding:
    """A padded batch of encoded texts.

    B batch, T padded length.

    Attributes:
        input_ids: (B, T) int64 token ids; padded positions hold ``pad_token_id``.
        attention_mask: (B, T) int64, 1 for a real token, 0 for padding.
        lengths: the B unpadded lengths (after any truncation).
    """

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device | str) -> BatchEncoding:
        """Return a copy with both tensors moved to ``device``."""
        return BatchEncoding(self.input_ids.to(device), self.attention_mask.to(device), list(self.lengths))


class Tokenizer(abc.ABC):
    """Text <-> token ids. See the module docstring for what a subclass supplies."""

    type_name: ClassVar[str]
    """Registry name, written as ``"type"`` in the JSON form."""

    # ------------------------------------------------------------------ subclass API
    @abc.abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Ids for ``text`` with no BOS/EOS added. Raises DataError on text it cannot encode."""

    @abc.abstractmethod
    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Text for ``ids``, each already checked to be in ``range(vocab_size)``."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``range(vocab_size)``."""

    @property
    def pad_token_id(self) -> int | None:
        """Id used to pad batches, or None if this tokenizer has none."""
        return None

    @property
    def bos_token_id(self) -> int | None:
        """Beginning-of-sequence id, or None."""
        return None

    @property
    def eos_token_id(self) -> int | None:
        """End-of-sequence id, or None."""
        return None

    @property
    def unk_token_id(self) -> int | None:
        """Id that stands for text outside the vocabulary, or None."""
        return None

    @property
    @abc.abstractmethod
    def special_token_ids(self) -> set[int]:
        """Ids that ``decode(..., skip_special_tokens=True)`` drops."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int:
        """Id of ``token``; DataError if it is not in the vocabulary."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """Token string of ``token_id``; DataError if out of range."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, including ``"type"`` and ``"format_version"``."""

    @classmethod
    @abc.abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        """Inverse of :meth:`to_dict`; DataError on a malformed or foreign dict."""

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Encode one text.

        Args:
            text: the string to encode.
            add_special_tokens: if True, prepend ``bos_token_id`` and append
                ``eos_token_id`` (each only if the tokenizer has one).

        Returns:
            the token ids, a list of ints in ``range(vocab_size)``.

        Raises:
            DataError: ``text`` is not a str, or holds something the tokenizer
                refuses (see each tokenizer's unknown-symbol policy).
        """
        if not isinstance(text, str):
            raise DataError(f"encode expects a str, got {type(text).__name__} {text!r:.80}")
        ids = self._encode_text(text)
        if add_special_tokens:
            if self.bos_token_id is not None:
                ids = [self.bos_token_id, *ids]
            if self.eos_token_id is not None:
                ids = [*ids, self.eos_token_id]
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Decode token ids to text.

        Args:
            ids: a 1-D sequence of ints (list, tuple, 1-D tensor or array).
            skip_special_tokens: drop the ids in ``special_token_ids``.

        Raises:
            DataError: an id is not an int or not in ``range(vocab_size)``.
        """
        return self._decode_ids(self._check_ids(ids), skip_special_tokens)

    def _check_ids(self, ids: Iterable[int] | torch.Tensor) -> list[int]:
        if isinstance(ids, torch.Tensor) and ids.dim() != 1:
            raise DataError(f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        checked = []
        for pos, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, int):
                raise DataError(f"token id at position {pos} is {i!r} ({type(i).__name__}), not an int")
            if not 0 <= i < self.vocab_size:
                raise DataError(
                    f"token id {i} at position {pos} is outside the vocabulary (ids are 0..{self.vocab_size - 1})"
                )
            checked.append(i)
        return checked

    def encode_batch(
        self,
        texts: Sequence[str],
        padding_side: PaddingSide = "right",
        max_length: int | None = None,
        truncation: bool = False,
        pad_to: int | None = None,
        add_special_tokens: bool = False,
    ) -> BatchEncoding:
        """Encode several texts into one padded batch.

        Args:
            texts: B strings.
            padding_side: "right" puts padding after the tokens, "left" before
                them (what decoder-only generation wants).
            max_length: the longest allowed encoding. A longer one is an error,
                or is cut to its first ``max_length`` ids if ``truncation``.
            truncation: cut encodings longer than ``max_length`` instead of failing.
            pad_to: pad every row to exactly this length (default: the
                longest row in the batch).
            add_special_tokens: as in :meth:`encode` (added before truncation).

        Returns:
            BatchEncoding with (B, T) ``input_ids`` and ``attention_mask``.

        Raises:
            DataError: a text cannot be encoded, is longer than ``max_length``
                without ``truncation``, or is longer than ``pad_to``.
            ConfigError: a bad argument (unknown padding side, truncation without
                max_length, no pad token while padding is needed).
        """
        if isinstance(texts, str):
            raise DataError("encode_batch expects a sequence of strings, got one str; wrap it in a list: [text]")
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side={padding_side!r} is not 'right' or 'left'")
        for name, value in (("max_length", max_length), ("pad_to", pad_to)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name}={value!r} must be a non-negative int or None")
        if truncation and max_length is None:
            raise ConfigError("truncation=True needs max_length; pass max_length=N")

        rows: list[list[int]] = []
        for index, text in enumerate(texts):
            try:
                ids = self.encode(text, add_special_tokens=add_special_tokens)
            except DataError as err:
                raise DataError(f"text {index}: {err}") from err
            if max_length is not None and len(ids) > max_length:
                if not truncation:
                    raise DataError(
                        f"text {index} encodes to {len(ids)} tokens, more than max_length={max_length}; "
                        f"pass truncation=True to cut it, or raise max_length"
                    )
                ids = ids[:max_length]
            rows.append(ids)

        lengths = [len(r) for r in rows]
        longest = max(lengths, default=0)
        width = longest if pad_to is None else pad_to
        if longest > width:
            index = lengths.index(longest)
            raise DataError(
                f"text {index} has {longest} tokens, more than pad_to={pad_to}; "
                f"raise pad_to, or set max_length={pad_to} with truncation=True"
            )
        pad_id = self.pad_token_id
        if pad_id is None and any(n < width for n in lengths):
            raise ConfigError(f"{type(self).__name__} has no pad token, so it cannot pad a batch")

        input_ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for b, ids in enumerate(rows):
            n = len(ids)
            start = 0 if padding_side == "right" else width - n
            input_ids[b, start : start + n] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, start : start + n] = 1
        return BatchEncoding(input_ids=input_ids, attention_mask=attention_mask, lengths=lengths)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically; return the path."""
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        logger.debug("saved %s tokenizer (vocab %d) to %s", self.type_name, self.vocab_size, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a tokenizer of this class from a JSON file written by :meth:`save`.

        Raises:
            DataError: the file is missing, not JSON, not a tokenizer, or a
                tokenizer of another type.
        """
        data = read_tokenizer_json(path)
        if data["type"] != cls.type_name:
            raise DataError(
                f"{path} holds a {data['type']!r} tokenizer, not {cls.type_name!r}; "
                f"use scratchformer.tokenizers.load_tokenizer to load any type"
            )
        try:
            return cls.from_dict(data)
        except DataError as err:
            raise DataError(f"{path}: {err}") from err

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ClosedVocabTokenizer(Tokenizer):
    """A tokenizer with a closed vocabulary: fixed special ids and an unknown-symbol policy.

    A subclass sets the class constants ``PAD_ID``, ``BOS_ID``, ``EOS_ID`` and
    ``UNK_ID`` (the special-token id properties return them), calls
    ``super().__init__(unknown)``, maps a symbol outside its vocabulary with
    :meth:`_unknown_id`, and reads its ``"unknown"`` JSON field with
    :meth:`_unknown_from_dict`.

    Args:
        unknown: "unk" maps a symbol outside the vocabulary to ``UNK_ID``,
            "error" raises DataError (ConfigError for any other value).
    """

    PAD_ID: ClassVar[int]
    BOS_ID: ClassVar[int]
    EOS_ID: ClassVar[int]
    UNK_ID: ClassVar[int]

    def __init__(self, unknown: UnknownPolicy = "unk") -> None:
        check_unknown_policy(unknown)
        self.unknown: UnknownPolicy = unknown

    @property
    def pad_token_id(self) -> int:
        return self.PAD_ID

    @property
    def bos_token_id(self) -> int:
        return self.BOS_ID

    @property
    def eos_token_id(self) -> int:
        return self.EOS_ID

    @property
    def unk_token_id(self) -> int:
        return self.UNK_ID

    def _unknown_id(self, message: str) -> int:
        """``UNK_ID`` under the "unk" policy; under "error", DataError(``message``).

        ``message`` names the symbol, its position and the fix.
        """
        if self.unknown == "error":
            raise DataError(message)
        return self.UNK_ID

    @classmethod
    def _unknown_from_dict(cls, data: dict[str, Any]) -> UnknownPolicy:
        """The ``"unknown"`` field of a tokenizer dict; DataError unless it is a known policy."""
        unknown = require_field(data, "unknown", str)
        if unknown not in UNKNOWN_POLICIES:
            raise DataError(
                f"{cls.type_name} tokenizer dict has unknown={unknown!r}, not one of {list(UNKNOWN_POLICIES)}"
            )
        return unknown


# ---------------------------------------------------------------------- helpers
def check_header(data: Any, expected_type: str) -> None:
    """Check ``data`` is a tokenizer dict of ``expected_type`` in a readable format version."""
    if not isinstance(data, dict):
        raise DataError(f"a tokenizer dict must be a JSON object, got {type(data).__name__}")
    if data.get("type") != expected_type:
        raise DataError(f"expected a {expected_type!r} tokenizer dict, got type={data.get('type')!r}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DataError(f"tokenizer dict has no integer 'format_version' (got {version!r})")
    if version > FORMAT_VERSION:
        raise DataError(
            f"tokenizer format_version={version} is newer than this scratchformer reads ({FORMAT_VERSION}); "
            f"upgrade scratchformer"
        )


def require_field(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``data[key]`` if present with type ``kind``, else a DataError naming the field."""
    if key not in data:
        raise DataError(f"{data.get('type')!r} tokenizer dict is missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataError(f"field {key!r} of a {data.get('type')!r} tokenizer dict has the wrong type: {value!r:.80}")
    return value


def read_tokenizer_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse ``path`` and check it looks like a scratchformer tokenizer file.

    Returns the dict (with a str ``"type"``); DataError naming ``path`` otherwise.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read tokenizer file {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not JSON ({err}); expected a tokenizer saved by Tokenizer.save") from err
    if not isinstance(data, dict) or not isinstance(data.get("type"), str) or "format_version" not in data:
        raise DataError(
            f"{path} is JSON but not a scratchformer tokenizer (needs 'type' and 'format_version' fields)"
        )
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file in the same directory, fsync, rename)."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
