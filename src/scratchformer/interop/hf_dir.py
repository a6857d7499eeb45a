"""A Hugging Face-format model directory on disk, as the command line uses it.

``load_hf_dir(path)`` reads ``config.json``, builds our model from the
weights (GPT-2 through ``gpt2_from_hf``, BERT through ``bert_from_hf``) and
the tokenizer from ``tokenizer.json`` (or GPT-2's ``vocab.json`` +
``merges.txt``, or BERT's ``vocab.txt``) with the ``tokenizers`` library.
Nothing is unpickled; ``transformers`` is not needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def is_hf_dir(path: str | os.PathLike) -> bool:
    """True for a directory with a HF ``config.json`` (one naming a ``model_type``) and weights."""
    path = Path(path)
    config = path / CONFIG_NAME
    if not config.is_file() or not any((path / n).is_file() for n in WEIGHT_NAMES):
        return False
    try:
        return "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, TypeError):
        return False


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` behind the small interface scratchformer's commands use
    (``encode``, ``decode``, ``id_to_token``, special token ids, ``vocab_size``)."""

    def __init__(self, tokenizer, special: dict[str, str | None]) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

        def tid(name: str) -> int | None:
            token = special.get(name)
            return None if token is None else tokenizer.token_to_id(token)

        self.bos_token_id, self.eos_token_id = tid("bos_token"), tid("eos_token")
        self.pad_token_id, self.unk_token_id = tid("pad_token"), tid("unk_token")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, with the special tokens the model expects (BERT's [CLS] ... [SEP]; none for GPT-2)."""
        return self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        token = self._tok.id_to_token(int(i))
        return token if token is not None else f"<{i}>"


def _special_tokens(path: Path) -> dict[str, str | None]:
    """Special tokens named by tokenizer_config.json / special_tokens_map.json."""
    out: dict[str, str | None] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{f} is not valid JSON: {e}") from None
            for key in ("bos_token", "eos_token", "pad_token", "unk_token", "cls_token", "sep_token"):
                value = data.get(key)
                if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
                    value = value.get("content")
                if isinstance(value, str):
                    out.setdefault(key, value)
    return out


def load_hf_tokenizer(path: str | os.PathLike, model_type: str) -> HFTokenizer:
    """The tokenizer files of a HF directory: ``tokenizer.json``, else GPT-2's ``vocab.json`` +
    ``merges.txt``, else BERT's ``vocab.txt``.

    Raises:
        CheckpointError: none of them is there (naming the files to add).
    """
    import tokenizers

    path = Path(path)
    special = _special_tokens(path)
    if model_type == "gpt2":
        for key in ("bos_token", "eos_token", "unk_token"):
            special.setdefault(key, "<|endoftext|>")
    elif model_type in ("bert", "distilbert"):
        for key, value in (("pad_token", "[PAD]"), ("unk_token", "[UNK]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]")):
            special.setdefault(key, value)
    if (path / "tokenizer.json").is_file():
        tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tok = tokenizers.ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    elif (path / "vocab.txt").is_file():
        config = path / "tokenizer_config.json"
        lower = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True) if config.is_file() else True
        tok = tokenizers.BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)
    else:
        raise CheckpointError(
            f"{path} has no tokenizer files: add tokenizer.json (or vocab.json + merges.txt for GPT-2, "
            "vocab.txt for BERT), as the model's Hugging Face repository provides them"
        )
    return HFTokenizer(tok, special)


@dataclass
class HFModelDir:
    """A loaded HF directory: our model (eval mode), its tokenizer, and which of our architectures it is."""

    path: Path
    model: nn.Module
    tokenizer: HFTokenizer
    arch: str  # "gpt" or "encoder_classifier"
    hf_config: dict[str, Any]


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / CONFIG_NAME
    if not f.is_file():
        raise CheckpointError(f"{str(path)!r} has no config.json; is it a Hugging Face model directory?")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from None


def load_hf_dir(path: str | os.PathLike, tokenizer: bool = True) -> HFModelDir:
    """Our model and the tokenizer of a HF GPT-2 or BERT directory.

    Raises:
        CheckpointError: not a HF directory, an unsupported ``model_type``,
            missing weights or tokenizer files (each naming what to add).
    """
    path = Path(path)
    hf_config = read_hf_config(path)
    model_type = hf_config.get("model_type")
    if model_type == "gpt2":
        from .gpt2 import gpt2_from_hf

        model, arch = gpt2_from_hf(path), "gpt"
    elif model_type == "bert":
        from .bert import bert_from_hf

        model, arch = bert_from_hf(path), "encoder_classifier"
    else:
        raise CheckpointError(
            f"{path} holds a {model_type!r} model; scratchformer reads Hugging Face GPT-2 ('gpt2') and BERT "
            "('bert') directories"
        )
    tok = load_hf_tokenizer(path, model_type) if tokenizer else None
    return HFModelDir(path=path, model=model, tokenizer=tok, arch=arch, hf_config=hf_config)


__all__ = ["HFModelDir", "HFTokenizer", "is_hf_dir", "load_hf_dir", "load_hf_tokenizer", "read_hf_config"]
