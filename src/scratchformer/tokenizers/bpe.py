"""Byte-level BPE, GPT-2 style, backed by the Hugging Face ``tokenizers`` library.

The pipeline is GPT-2's: no normaliser; the ByteLevel pre-tokenizer (GPT-2's
split regex, then every UTF-8 byte mapped to a printable character, no prefix
space); a BPE model over those characters; the ByteLevel decoder. Every byte
is in the base alphabet, so there is no unknown token and
``decode(encode(s)) == s`` for every str ``s``.

Special tokens (default ``<|endoftext|>``) are recognised where their literal
spelling appears in text. As in GPT-2, ``<|endoftext|>`` is both the
end-of-sequence and the padding token, and there is no BOS token by default,
so ``encode(text, add_special_tokens=True)`` appends ``<|endoftext|>`` only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from scratchformer.errors import ConfigError, DataError
from scratchformer.tokenizers.base import FORMAT_VERSION, Tokenizer, check_header, require_field

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
BYTE_ALPHABET_SIZE = 256


def _byte_level_pipeline(model: models.Model) -> HFTokenizer:
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


class BPETokenizer(Tokenizer):
    """Byte-level BPE wrapping a ``tokenizers.Tokenizer``.

    Build one with :meth:`train` or :meth:`from_gpt2_files`; the constructor
    wraps an existing ``tokenizers.Tokenizer`` (assumed byte-level).

    Args:
        hf_tokenizer: the ``tokenizers.Tokenizer`` to wrap (not copied).
        eos_token: end-of-sequence token string, or None for none.
        pad_token: padding token string; None means "same as eos_token".
        bos_token: beginning-of-sequence token string, or None (the default,
            as in GPT-2).

    Raises:
        ConfigError: a named token is not in the vocabulary.
    """

    type_name = "bpe"

    def __init__(
        self,
        hf_tokenizer: HFTokenizer,
        eos_token: str | None = ENDOFTEXT,
        pad_token: str | None = None,
        bos_token: str | None = None,
    ) -> None:
        self._hf = hf_tokenizer
        # Our encode_batch does padding/truncation; the backend must return raw ids.
        self._hf.no_padding()
        self._hf.no_truncation()
        self.eos_token = eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self.bos_token = bos_token
        self._eos_id = self._special_id("eos_token", self.eos_token)
        self._pad_id = self._special_id("pad_token", self.pad_token)
        self._bos_id = self._special_id("bos_token", self.bos_token)

    def _special_id(self, role: str, token: str | None) -> int | None:
        if token is None:
            return None
        i = self._hf.token_to_id(token)
        if i is None:
            raise ConfigError(
                f"{role}={token!r} is not in the BPE vocabulary; add it to special_tokens, or pass {role}=None"
            )
        return i

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        min_frequency: int = 2,
        *,
        eos_token: str | None = ENDOFTEXT,
        pad_token: str | None = None,
        bos_token: str | None = None,
    ) -> BPETokenizer:
        """Learn byte-level BPE merges from ``texts``.

        Args:
            texts: training texts (a single str is treated as one text).
            vocab_size: target vocabulary size, including the 256 byte tokens
                and ``special_tokens``; the result is smaller if the corpus
                runs out of pairs seen ``min_frequency`` times.
            special_tokens: tokens given the first ids (0, 1, ...) and never split.
            min_frequency: a pair must occur at least this often to be merged.
            eos_token, pad_token, bos_token: see the class docstring.

        Raises:
            ConfigError: ``vocab_size`` is too small to hold the byte alphabet
                and the special tokens, or a bad ``min_frequency``.
        """
        special_tokens = list(special_tokens)
        floor = BYTE_ALPHABET_SIZE + len(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < floor:
            raise ConfigError(
                f"vocab_size={vocab_size!r} is too small: byte-level BPE needs at least {floor} "
                f"(256 bytes + {len(special_tokens)} special tokens)"
            )
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ConfigError(f"min_frequency={min_frequency!r} must be a positive int")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not any(isinstance(t, str) and t.strip() for t in texts):
            raise DataError("cannot train a BPETokenizer on an empty corpus (no non-whitespace text); pass texts with content")
        hf = _byte_level_pipeline(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        logger.debug("trained byte-level BPE: vocab %d (asked %d)", hf.get_vocab_size(), vocab_size)
        return cls(hf, eos_token=eos_token, pad_token=pad_token, bos_token=bos_token)

    @classmethod
    def from_gpt2_files(
        cls,
        directory: str | os.PathLike[str],
        *,
        eos_token: str | None = ENDOFTEXT,
        pad_token: str | None = None,
        bos_token: str | None = None,
    ) -> BPETokenizer:
        """Load GPT-2 style ``vocab.json`` + ``merges.txt`` from a local directory.

        This is what Hugging Face's ``GPT2TokenizerFast`` builds from the same
        two files: the BPE model with byte-level pre-tokenizer and decoder,
        plus ``<|endoftext|>`` as a special token (its id from ``vocab.json``
        if it is there, else the next free id). Nothing is downloaded.

        Raises:
            DataError: a file is missing or cannot be parsed (names the path).
        """
        directory = Path(directory)
        vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
        for path in (vocab_path, merges_path):
            if not path.is_file():
                raise DataError(f"{path} does not exist; from_gpt2_files needs vocab.json and merges.txt in {directory}")
        try:
            model = models.BPE.from_file(str(vocab_path), str(merges_path))
        except Exception as err:  # the Rust backend raises plain Exception on bad files
            raise DataError(f"cannot read GPT-2 BPE files {vocab_path} / {merges_path}: {err}") from err
        hf = _byte_level_pipeline(model)
        specials = {t for t in (ENDOFTEXT, eos_token, pad_token, bos_token) if t is not None}
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sorted(specials)])
        return cls(hf, eos_token=eos_token, pad_token=pad_token, bos_token=bos_token)

    @property
    def backend(self) -> HFTokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (e.g. for ``backend.model.save(dir)``)."""
        return self._hf

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int | None:
        return self._pad_id

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_id

    @property
    def special_token_ids(self) -> set[int]:
        return {i for i, tok in self._hf.get_added_tokens_decoder().items() if tok.special}

    def token_to_id(self, token: str) -> int:
        i = self._hf.token_to_id(token)
        if i is None:
            raise DataError(f"token {token!r} is not in the BPE vocabulary")
        return i

    def id_to_token(self, token_id: int) -> str:
        (token_id,) = self._check_ids([token_id])
        token = self._hf.id_to_token(token_id)
        if token is None:
            raise DataError(f"token id {token_id} has no token in this BPE vocabulary")
        return token

    # ------------------------------------------------------------------ encode / decode
    def _encode_text(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "format_version": FORMAT_VERSION,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "bos_token": self.bos_token,
            # The tokenizers library's own JSON, embedded as an object.
            "hf_tokenizer": json.loads(self._hf.to_str()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        check_header(data, cls.type_name)
        embedded = require_field(data, "hf_tokenizer", (dict, str))
        tokens = {}
        for key in ("eos_token", "pad_token", "bos_token"):
            tokens[key] = require_field(data, key, (str, type(None)))
        try:
            hf = HFTokenizer.from_str(embedded if isinstance(embedded, str) else json.dumps(embedded))
        except Exception as err:  # the Rust backend raises plain Exception on bad JSON
            raise DataError(f"bpe tokenizer dict holds an unreadable 'hf_tokenizer': {err}") from err
        try:
            return cls(hf, **tokens)
        except ConfigError as err:
            raise DataError(f"bpe tokenizer dict is inconsistent: {err}") from err

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eos={self.eos_token!r}, pad={self.pad_token!r})"
