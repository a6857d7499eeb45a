"""Fixed vocabulary for the arithmetic tasks: one token per symbol.

Ids 0-17 are the vocabulary of the GPT adder tutorial; id 18 adds ``#``, the
end-of-sum marker of the encoder-decoder adder.

- 0-9: the digits ``0``-``9`` (id = the digit's value)
- 10 ``+``, 11 ``*``, 12 ``-``, 13 ``=``
- 14 ``<EOS>``, 15 ``<BOS>``, 16 ``<pad>``, 17 ``??`` (unknown): the special tokens
- 18 ``#``: end of the sum in the seq2seq adder (an ordinary token)

Every symbol is one token. The four special tokens are also recognised when
their literal spelling appears in text: ``"<BOS>12+3="`` encodes to
``[15, 1, 2, 10, 3, 13]``. Matching is exact and case-sensitive.
"""

from __future__ import annotations

from typing import Any, Final

from scratchformer.errors import DataError
from scratchformer.tokenizers.base import (
    FORMAT_VERSION,
    ClosedVocabTokenizer,
    check_header,
    require_field,
)

PLUS_ID: Final = 10
TIMES_ID: Final = 11
MINUS_ID: Final = 12
EQUALS_ID: Final = 13
EOS_ID: Final = 14
BOS_ID: Final = 15
PAD_ID: Final = 16
UNK_ID: Final = 17
END_OF_SUM_ID: Final = 18

ARITHMETIC_VOCAB: tuple[str, ...] = (
    *"0123456789",
    "+", "*", "-", "=",
    "<EOS>", "<BOS>", "<pad>", "??",
    "#",
)  # fmt: skip
"""Token strings in id order: ``ARITHMETIC_VOCAB[i]`` is the token with id ``i``."""

_TOKEN_TO_ID: dict[str, int] = {tok: i for i, tok in enumerate(ARITHMETIC_VOCAB)}
_SPECIAL_IDS: frozenset[int] = frozenset({EOS_ID, BOS_ID, PAD_ID, UNK_ID})
# Multi-character literals tried before single characters, longest first.
_LITERALS: tuple[str, ...] = tuple(sorted((t for t in ARITHMETIC_VOCAB if len(t) > 1), key=len, reverse=True))


class ArithmeticTokenizer(ClosedVocabTokenizer):
    """The fixed arithmetic vocabulary (see the id table in the module docstring).

    Args:
        unknown: what ``encode`` does with a symbol outside the vocabulary:
            "unk" maps it to ``??`` (id 17), "error" raises DataError naming the
            symbol and its position.
    """

    type_name = "arithmetic"

    PLUS_ID = PLUS_ID
    TIMES_ID = TIMES_ID
    MINUS_ID = MINUS_ID
    EQUALS_ID = EQUALS_ID
    EOS_ID = EOS_ID
    BOS_ID = BOS_ID
    PAD_ID = PAD_ID
    UNK_ID = UNK_ID
    END_OF_SUM_ID = END_OF_SUM_ID

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(ARITHMETIC_VOCAB)

    @property
    def plus_token_id(self) -> int:
        return PLUS_ID

    @property
    def times_token_id(self) -> int:
        return TIMES_ID

    @property
    def minus_token_id(self) -> int:
        return MINUS_ID

    @property
    def equals_token_id(self) -> int:
        return EQUALS_ID

    @property
    def end_of_sum_token_id(self) -> int:
        """Id of ``#``, which ends the sum in the seq2seq adder's targets."""
        return END_OF_SUM_ID

    @property
    def digit_ids(self) -> tuple[int, ...]:
        """Ids of ``"0"``..``"9"``: ``digit_ids[d] == d``."""
        return tuple(range(10))

    @property
    def special_token_ids(self) -> set[int]:
        return set(_SPECIAL_IDS)

    def token_to_id(self, token: str) -> int:
        if token in _TOKEN_TO_ID:
            return _TOKEN_TO_ID[token]
        raise DataError(f"token {token!r} is not in the arithmetic vocabulary {list(ARITHMETIC_VOCAB)}")

    def id_to_token(self, token_id: int) -> str:
        (token_id,) = self._check_ids([token_id])
        return ARITHMETIC_VOCAB[token_id]

    # ------------------------------------------------------------------ encode / decode
    def _encode_text(self, text: str) -> list[int]:
        ids = []
        pos = 0
        while pos < len(text):
            for literal in _LITERALS:
                if text.startswith(literal, pos):
                    ids.append(_TOKEN_TO_ID[literal])
                    pos += len(literal)
                    break
            else:
                symbol = text[pos]
                i = _TOKEN_TO_ID.get(symbol)
                if i is None:
                    i = self._unknown_id(
                        f"symbol {symbol!r} at position {pos} is not in the arithmetic vocabulary "
                        f"{list(ARITHMETIC_VOCAB)} (or use unknown='unk')"
                    )
                ids.append(i)
                pos += 1
        return ids

    def _decode_ids(self, ids: list[int], skip_special_tokens: bool) -> str:
        return "".join(ARITHMETIC_VOCAB[i] for i in ids if not (skip_special_tokens and i in _SPECIAL_IDS))

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        # The vocabulary is fixed; it is written out so a file is self-describing
        # and a changed table is caught on load.
        return {
            "type": self.type_name,
            "format_version": FORMAT_VERSION,
            "vocab": list(ARITHMETIC_VOCAB),
            "unknown": self.unknown,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArithmeticTokenizer:
        check_header(data, cls.type_name)
        vocab = require_field(data, "vocab", list)
        if vocab != list(ARITHMETIC_VOCAB):
            raise DataError(
                f"arithmetic tokenizer dict has vocab {vocab}, but this scratchformer's is {list(ARITHMETIC_VOCAB)}"
            )
        return cls(unknown=cls._unknown_from_dict(data))

    def __repr__(self) -> str:
        return f"ArithmeticTokenizer(unknown={self.unknown!r})"
