"""Tokenizers: a character tokenizer fitted on a corpus, the fixed arithmetic
vocabulary, and byte-level BPE. All share the :class:`Tokenizer` interface and
save to / load from one JSON format. See docs/tokenizers.md."""

from scratchformer.tokenizers.arithmetic import ARITHMETIC_VOCAB, ArithmeticTokenizer
from scratchformer.tokenizers.base import FORMAT_VERSION, BatchEncoding, Tokenizer
from scratchformer.tokenizers.bpe import ENDOFTEXT, BPETokenizer
from scratchformer.tokenizers.char import SPECIAL_TOKENS as CHAR_SPECIAL_TOKENS
from scratchformer.tokenizers.char import CharTokenizer
from scratchformer.tokenizers.registry import TOKENIZERS, load_tokenizer, tokenizer_from_dict

__all__ = [
    "ARITHMETIC_VOCAB",
    "CHAR_SPECIAL_TOKENS",
    "ENDOFTEXT",
    "FORMAT_VERSION",
    "TOKENIZERS",
    "ArithmeticTokenizer",
    "BPETokenizer",
    "BatchEncoding",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
]
