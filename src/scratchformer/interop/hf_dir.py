"""A Hugging Face-format model directory on disk, as the command line uses it.

``load_hf_dir(path)`` reads ``config.json``, builds our model from the
weights (GPT-2 through ``gpt2_from_hf``, BERT through ``bert_from_hf``) and
the tokenizer from ``tokenizer.json`` (or GPT-2's ``vocab.json`` +
``merges.txt``, or BERT's ``vocab.txt``) with the ``tokenizers`` library.
Nothing is unpickled; ``transformers`` is not needed.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, DataError
from ..tokenizers.bpe import BPETokenizer

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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):  # not HF's; the run reader names the fault
        return False


def _special_tokens(path: Path) -> dict[str, str]:
    """Special tokens named by special_tokens_map.json / tokenizer_config.json."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{f} is not valid JSON: {e}") from None
            for key in ("bos_token", "eos_token", "pad_token", "cls_token", "sep_token"):
                value = data.get(key)
                if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
                    value = value.get("content")
                if isinstance(value, str):
                    out.setdefault(key, value)
    return out


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    path = Path(path)
    return any((path / n).is_file() for n in ("tokenizer.json", "vocab.txt")) or (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    )


def load_hf_tokenizer(path: str | os.PathLike, model_type: str | None = None) -> BPETokenizer:
    """The tokenizer of a HF directory as our ``BPETokenizer`` wrapper (saved and loaded as
    scratchformer JSON like any other), from ``tokenizer.json``, else GPT-2's ``vocab.json`` +
    ``merges.txt``, else BERT's ``vocab.txt``.

    ``encode`` adds no special tokens; the special ids follow the model: GPT-2's
    ``<|endoftext|>`` is eos and pad; BERT's ``[CLS]`` is bos (the class token
    a classification task puts first), ``[SEP]`` eos, ``[PAD]`` pad.

    Raises:
        CheckpointError: no tokenizer files (naming the ones to add).
    """
    import tokenizers

    path = Path(path)
    if model_type is None:
        model_type = read_hf_config(path).get("model_type")
    special = _special_tokens(path)
    if model_type in ("bert", "distilbert"):
        tokens = dict(bos_token=special.get("cls_token", "[CLS]"), eos_token=special.get("sep_token", "[SEP]"),
                      pad_token=special.get("pad_token", "[PAD]"))
    else:
        eos = special.get("eos_token", "<|endoftext|>")
        tokens = dict(eos_token=eos, pad_token=special.get("pad_token", eos), bos_token=None)
    try:
        if (path / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return BPETokenizer.from_gpt2_files(path, **tokens)
        elif (path / "vocab.txt").is_file():
            config = path / "tokenizer_config.json"
            lower = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True) if config.is_file() else True
            backend = tokenizers.BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
        else:
            raise CheckpointError(
                f"{path} has no tokenizer files: add tokenizer.json (or vocab.json + merges.txt for GPT-2, "
                "vocab.txt for BERT), as the model's Hugging Face repository provides them"
            )
        return BPETokenizer(backend, **tokens)
    except (ConfigError, DataError) as e:
        raise CheckpointError(f"the tokenizer files in {path} do not fit this model: {e}") from None


@dataclass
class HFModelDir:
    """A loaded HF directory: our model (eval mode), its tokenizer, and which of our architectures it is."""

    path: Path
    model: nn.Module
    tokenizer: BPETokenizer | None
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
    elif model_type in ("bert", "distilbert"):
        from .bert import bert_from_hf

        model, arch = bert_from_hf(path), "encoder_classifier"
    else:
        raise CheckpointError(
            f"{path} holds a {model_type!r} model; scratchformer reads Hugging Face GPT-2 ('gpt2') and BERT "
            "('bert', 'distilbert') directories"
        )
    tok = load_hf_tokenizer(path, model_type) if tokenizer else None
    return HFModelDir(path=path, model=model, tokenizer=tok, arch=arch, hf_config=hf_config)




# --- hub names ------------------------------------------------------------------------

#: The files a model directory needs, whether downloaded by name or by hand.
HUB_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt",
             "tokenizer_config.json", "special_tokens_map.json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def looks_like_hub_name(text: str) -> bool:
    """``gpt2``, ``bert-base-uncased``, ``owner/name``: a model name rather than a path."""
    return bool(_HUB_NAME.match(text)) and not text.endswith((".json", ".safetensors", ".txt"))


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; a Hugging Face Hub model name through ``huggingface_hub``
    (the ``hf`` extra), which downloads only config, safetensors weights and tokenizer files
    into its cache (or finds them there).

    Raises:
        CheckpointError: the path does not exist and the name cannot be fetched: the
            message says which files to download and where to put them.
    """
    path = Path(name_or_path)
    if path.exists() or not looks_like_hub_name(str(name_or_path)):
        return path
    name = str(name_or_path)
    by_hand = (
        f"To use it offline, download {', '.join(HUB_FILES[:3])} (and, if the model has no tokenizer.json, "
        f"vocab.json + merges.txt for GPT-2 or vocab.txt for BERT) from the model's page {name!r} on the "
        "Hugging Face Hub into one directory, e.g. models/" + name.replace("/", "--") + "/, and pass that directory."
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{name!r} is not a local directory. Loading by Hub name needs huggingface_hub: "
            f"pip install 'scratchformer[hf]'. {by_hand}"
        ) from None
    try:
        # $HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import): offline means the cache only
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        return Path(snapshot_download(name, allow_patterns=list(HUB_FILES), local_files_only=offline))
    except Exception as e:  # offline, unknown name, gated repository: all end the same way for the user
        raise CheckpointError(f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
                              f"Hub ({type(e).__name__}). {by_hand}") from None


# --- evaluating a HF directory on a file -------------------------------------------------


def evaluate_hf_dir(
    hf: HFModelDir,
    data: str | os.PathLike,
    *,
    batch_size: int = 16,
    max_examples: int = 0,
    block_size: int | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> dict[str, float]:
    """Metrics of a loaded HF directory on a local file.

    GPT-2: ``data`` is a text file, cut into windows of ``block_size`` tokens
    (default: the model's context); returns loss, token accuracy and
    perplexity. BERT: ``data`` is a labelled .csv/.jsonl (``text_column``,
    ``label_column``; labels are the config's label names or class numbers);
    returns loss and accuracy.
    """
    hf.model.eval()
    with torch.no_grad():
        if hf.arch == "gpt":
            return _evaluate_text(hf, Path(data), batch_size, max_examples, block_size)
        return _evaluate_labelled(hf, data, batch_size, max_examples, text_column, label_column)


def _evaluate_text(hf: HFModelDir, path: Path, batch_size: int, max_examples: int, block_size: int | None):
    import torch.nn.functional as F

    from ..tasks.files import decode_utf8

    model, tok = hf.model, hf.tokenizer
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    ids = tok.encode(decode_utf8(path.read_bytes(), path))
    T = min(block_size or model.config.max_len, model.config.max_len)
    rows = [ids[i : i + T] for i in range(0, max(len(ids) - 1, 1), T)]
    rows = [r for r in rows if len(r) > 1][: max_examples or None]
    if not rows:
        raise DataError(f"{path} has fewer than two tokens; nothing to evaluate")
    loss_sum, correct, count = 0.0, 0, 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        width = max(len(r) for r in batch)
        x = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for j, r in enumerate(batch):
            x[j, : len(r)] = torch.tensor(r)
            labels[j, : len(r)] = torch.tensor(r)
        logits = model(x)[:, :-1]  # (B, T-1, V): right padding never reaches a real position
        target = labels[:, 1:]
        loss_sum += float(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum"))
        scored = target != -100
        correct += int(((logits.argmax(-1) == target) & scored).sum())
        count += int(scored.sum())
    loss = loss_sum / count
    return {"loss": loss, "token_accuracy": correct / count, "perplexity": math.exp(min(loss, 700.0)),
            "examples": float(len(rows))}


def _evaluate_labelled(hf: HFModelDir, data, batch_size: int, max_examples: int, text_column: str,
                       label_column: str) -> dict[str, float]:
    import torch.nn.functional as F

    from ..tasks.files import read_records

    model, tok = hf.model, hf.tokenizer
    records = read_records(data, required=(text_column, label_column))[: max_examples or None]
    labels = _label_ids(records, label_column, hf, data)
    T = model.config.max_len
    loss_sum, correct = 0.0, 0
    for i in range(0, len(records), batch_size):
        rows = [[tok.bos_token_id, *tok.encode(str(r[text_column]))][: T - 1] + [tok.eos_token_id]
                for r in records[i : i + batch_size]]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):
            x[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        y = torch.tensor(labels[i : i + batch_size])
        logits = model(x, mask)  # (B, K)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    n = len(records)
    return {"loss": loss_sum / n, "accuracy": correct / n, "examples": float(n)}


def _label_ids(records: list[dict[str, Any]], label_column: str, hf: HFModelDir, data) -> list[int]:
    """Each record's class: a label name of the model's config, or a class number below num_classes."""
    label2id = {str(k): int(v) for k, v in (hf.hf_config.get("label2id") or {}).items()}
    K = hf.model.config.num_classes
    out = []
    for i, r in enumerate(records):
        raw = str(r[label_column]).strip()
        if raw in label2id:
            out.append(label2id[raw])
        elif raw.isdigit() and int(raw) < K:
            out.append(int(raw))
        else:
            raise DataError(f"{data} record {i} has label {raw!r}, which is neither one of the model's labels "
                            f"{sorted(label2id)} nor a class number below {K}")
    return out


__all__ = ["HUB_FILES", "HFModelDir", "evaluate_hf_dir", "looks_like_hub_name", "resolve_model_dir", "has_tokenizer_files", "is_hf_dir", "load_hf_dir", "load_hf_tokenizer", "read_hf_config"]
