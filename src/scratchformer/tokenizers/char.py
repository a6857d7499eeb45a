"""Character tokenizer fitted on a corpus: one token per character.

Id layout (fixed):

====  =========  ====================================================
id    token      meaning
====  =========  ====================================================
0     ``<pad>``  padding (0, so zero-filled tensors are padding)
1     ``<bos>``  beginning of sequence
2     ``<eos>``  end of sequence
3     ``<unk>``  a character not kept by ``fit``
4...  chars      most frequent character first; ties keep the order
                 of first appearance in the corpus
====  =========  ====================================================

The frequency order is the one Keras' ``Tokenizer(char_level=True)`` gives,
shifted by the four special ids. Unlike Keras, ``num_words`` counts kept
characters only (Keras counts its reserved id 0 too) and ``lower`` defaults
to False.

Special tokens are never recognised inside text: ``"<pad>"`` encodes as five
characters.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from scratchformer.errors import ConfigError, DataError
from scratchformer.tokenizers.base import (
    FORMAT_VERSION,
    ClosedVocabTokenizer,
    UnknownPolicy,
    check_header,
    check_unknown_policy,
    require_field,
)

logger = logging.getLogger(__name__)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens in id order; characters start at ``len(SPECIAL_TOKENS)``."""


class CharTokenizer(ClosedVocabTokenizer):
    """One id per character, ordered by corpus frequency (see module docstring).

    Build one with :meth:`fit`; the constructor takes an explicit character list.

    Args:
        chars: the kept characters in id order (id ``4 + i`` for ``chars[i]``).
        unknown: what ``encode`` does with a character not in ``chars``:
            "unk" maps it to ``<unk>`` (id 3), "error" raises DataError naming
            the character and its position.
        lower: lower-case text before encoding (positions in errors then refer
            to the lower-cased text).
    """

    type_name = "char"

    PAD_ID = PAD_ID
    BOS_ID = BOS_ID
    EOS_ID = EOS_ID
    UNK_ID = UNK_ID

    def __init__(self, chars: Sequence[str], unknown: UnknownPolicy = "unk", lower: bool = False) -> None:
        super().__init__(unknown)
        chars = tuple(chars)
        seen: set[str] = set()
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise DataError(f"CharTokenizer characters must be single-character strings, got {c!r}")
            if c in seen:
                raise DataError(f"character {c!r} appears twice in the CharTokenizer vocabulary")
            seen.add(c)
        self._chars = chars
        self._char_to_id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
        self.lower = lower

    @classmethod
    def fit(
        cls,
        corpus: str | Iterable[str],
        num_words: int | None = None,
        unknown: UnknownPolicy = "unk",
        lower: bool = False,
    ) -> CharTokenizer:
        """Count characters in ``corpus`` and keep them by frequency.

        Args:
            corpus: one text, or an iterable of texts.
            num_words: keep at most this many characters (the most frequent);
                None keeps all.
            unknown: unseen-character policy for ``encode`` ("unk" or "error").
            lower: lower-case the corpus here and every text in ``encode``.

        Raises:
            DataError: the corpus has no characters, or holds a non-str item.
            ConfigError: ``num_words`` is not a positive int, or a bad policy.
        """
        check_unknown_policy(unknown)
        if num_words is not None and (isinstance(num_words, bool) or not isinstance(num_words, int) or num_words < 1):
            raise ConfigError(f"num_words={num_words!r} must be a positive int or None")
        texts = [corpus] if isinstance(corpus, str) else corpus
        counts: Counter[str] = Counter()  # insertion order = order of first appearance
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"corpus item {index} is a {type(text).__name__}, not a str")
            counts.update(text.lower() if lower else text)
        if not counts:
            raise DataError("cannot fit a CharTokenizer on an empty corpus (it has no characters); pass at least one non-empty text")
        # sorted() is stable, so equal counts keep first-appearance order.
        ordered = sorted(counts, key=lambda c: counts[c], reverse=True)
        if num_words is not None and len(ordered) > num_words:
            logger.debug("CharTokenizer.fit: keeping %d of %d characters", num_words, len(ordered))
            ordered = ordered[:num_words]
        return cls(ordered, unknown=unknown, lower=lower)

    # ------------------------------------------------------------------ vocabulary
    @property
    def chars(self) -> tuple[str, ...]:
        """Kept characters in id order (the first has id 4)."""
        return self._chars

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self._chars)

    @property
    def special_token_ids(self) -> set[int]:
        return set(range(len(SPECIAL_TOKENS)))

    def token_to_id(self, token: str) -> int:
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        if token in self._char_to_id:
            return self._char_to_id[token]
        raise DataError(f"token {token!r} is not in the CharTokenizer vocabulary")

    def id_to_token(self, token_id: int) -> str:
        (token_id,) = self._check_ids([token_id])
        if token_id < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[token_id]
        return self._chars[token_id - len(SPECIAL_TOKENS)]

    # ------------------------------------------------------------------ encode / decode
    def _encode_text(self, text: str) -> list[int]:
        if self.lower:
            text = text.lower()
        ids = []
        for pos, c in enumerate(text):
            i = self._char_to_id.get(c)
            if i is None:
                i = self._unknown_id(
                    f"character {c!r} at position {pos} is not in the CharTokenizer vocabulary "
                    f"(fit on a corpus containing it, or use unknown='unk')"
                )
            ids.append(i)
        return ids

    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        n_special = len(SPECIAL_TOKENS)
        parts = []
        for i in ids:
            if i < n_special:
                if not skip_special_tokens:
                    parts.append(SPECIAL_TOKENS[i])
            else:
                parts.append(self._chars[i - n_special])
        return "".join(parts)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "format_version": FORMAT_VERSION,
            "special_tokens": list(SPECIAL_TOKENS),
            "chars": list(self._chars),
            "unknown": self.unknown,
            "lower": self.lower,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        check_header(data, cls.type_name)
        specials = require_field(data, "special_tokens", list)
        if specials != list(SPECIAL_TOKENS):
            raise DataError(f"char tokenizer dict has special_tokens {specials}, expected {list(SPECIAL_TOKENS)}")
        chars = require_field(data, "chars", list)
        unknown = cls._unknown_from_dict(data)
        return cls(chars, unknown=unknown, lower=require_field(data, "lower", bool))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unknown={self.unknown!r}, lower={self.lower})"
