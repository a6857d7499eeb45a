"""Text classification from a CSV or JSON Lines file (tutorial 001's sentiment set-up).

Each record has a text column and a label column (names configurable).
Labels are mapped to ids in sorted order (numerically if every label is an
integer, else as strings); ``task.label_names[i]`` is the label of id i.
Examples are ``<bos> text`` truncated to ``max_length`` tokens: the first
position is the class token (``classifier_position == "first"``).

N examples, T tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scratchformer.errors import ConfigError, DataError
from scratchformer.tasks.base import (
    ExampleDataset,
    PrebuiltSplitsTask,
    TaskConfig,
    check_split_fractions,
    register_task,
)
from scratchformer.tasks.files import read_records
from scratchformer.tasks.text import resolve_tokenizer

logger = logging.getLogger(__name__)

_BPE_BOS = "<|bos|>"


def label_vocabulary(labels: Sequence[Any]) -> tuple[str, ...]:
    """Distinct labels as strings, sorted numerically if all are integers, else as strings."""
    names = {str(x).strip() for x in labels}
    try:
        return tuple(sorted(names, key=int))
    except ValueError:
        return tuple(sorted(names))


@dataclass
class TextClassificationConfig(TaskConfig):
    """Classify texts from a CSV/JSONL file.

    Attributes:
        path: the data file (.csv with a header row, .jsonl or .json).
        text_column / label_column: the columns to read.
        eval_path: a separate test file (then ``path`` gives train and val
            by ``split_fractions[:2]`` renormalised); None: split ``path``.
        split_fractions: (train, val, test) fractions of ``path``, seeded shuffle.
        tokenizer, vocab_size, cache_dir: as for the text LM tasks ("char"
            is fitted on the training texts).
        max_length: tokens per example including the class token (truncation).
    """

    path: str = ""
    text_column: str = "text"
    label_column: str = "label"
    eval_path: str | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    tokenizer: str = "char"
    vocab_size: int = 1024
    max_length: int = 256
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ConfigError("text_classification needs path=<a .csv or .jsonl file>")
        self.split_fractions = check_split_fractions(self.split_fractions)
        self._at_least("max_length", 2)
        self._at_least("vocab_size", 1)


@register_task("text_classification")
class TextClassificationTask(PrebuiltSplitsTask):
    """See :class:`TextClassificationConfig`. Batch: input_ids, attention_mask, labels (B,), lengths (tokens)."""

    kind = "classification"
    config_class = TextClassificationConfig
    classifier_position = "first"

    def __init__(self, config: TextClassificationConfig) -> None:
        super().__init__(config)
        self.config: TextClassificationConfig = config
        cols = (config.text_column, config.label_column)
        records = read_records(config.path, required=cols)
        texts, raw_labels = self._columns(records, config.path)
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(texts))
        if config.eval_path is None:
            names, fractions = ("train", "val", "test"), config.split_fractions
        else:  # train/val from path, test from eval_path
            train_f, val_f = config.split_fractions[:2]
            names, fractions = ("train", "val"), (train_f / (train_f + val_f), val_f / (train_f + val_f))
        self._texts: dict[str, list[str]] = {}
        self._labels: dict[str, list[str]] = {}
        for name, (a, b), f in zip(names, _split_bounds(len(texts), fractions), fractions):
            if f > 0:
                self._texts[name] = [texts[i] for i in order[a:b]]
                self._labels[name] = [raw_labels[i] for i in order[a:b]]
        if config.eval_path is not None:
            eval_records = read_records(config.eval_path, required=cols)
            self._texts["test"], self._labels["test"] = self._columns(eval_records, config.eval_path)
        for split, split_texts in self._texts.items():
            if not split_texts:
                raise DataError(
                    f"text_classification: the {split} split of {len(texts)} records is empty "
                    f"(split_fractions={config.split_fractions}); add data or raise that fraction"
                )
        self.label_names: tuple[str, ...] = label_vocabulary(raw_labels + self._labels.get("test", []))
        self.num_classes = len(self.label_names)
        self.label_to_id = {name: i for i, name in enumerate(self.label_names)}
        self.tokenizer = resolve_tokenizer(
            config.tokenizer, self._texts["train"], config.vocab_size, config.cache_dir, bos_token=_BPE_BOS
        )
        if self.tokenizer.bos_token_id is None:
            raise ConfigError(f"{self.tokenizer!r} has no BOS token to serve as the class token; use one that has")
        self._datasets = {s: self._encode(self._texts[s], self._labels[s]) for s in self._texts}

    def _columns(self, records: list[dict[str, Any]], path: str) -> tuple[list[str], list[str]]:
        cfg = self.config
        texts, labels = [], []
        for i, rec in enumerate(records):
            text, label = rec.get(cfg.text_column), rec.get(cfg.label_column)
            if label is None or str(label).strip() == "":
                raise DataError(f"{path} record {i} has no {cfg.label_column!r} value; every row needs a label")
            if text is None:
                raise DataError(f"{path} record {i} has no {cfg.text_column!r} value")
            texts.append(str(text))
            labels.append(str(label).strip())
        return texts, labels

    def _encode(self, texts: list[str], labels: list[str]) -> ExampleDataset:
        tok, T = self.tokenizer, self.config.max_length
        rows = [[tok.bos_token_id, *tok.encode(t)][:T] for t in texts]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        input_ids = np.full((len(rows), int(lengths.max())), tok.pad_token_id, dtype=np.int64)  # (N, T)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
        mask = (np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        y = np.array([self.label_to_id[x] for x in labels], dtype=np.int64)
        return ExampleDataset(
            {"input_ids": input_ids, "attention_mask": mask, "labels": y, "lengths": lengths}, row_lengths=lengths
        )

    def texts(self, split: str) -> list[str]:
        """The raw texts of ``split``."""
        self.check_split(split)
        return list(self._texts[split])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "label_names": list(self.label_names)}


def _split_bounds(n: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    sizes = [round(n * f) for f in fractions[:-1]]
    sizes.append(max(0, n - sum(sizes)))
    edges = np.concatenate([[0], np.cumsum(sizes)]).clip(max=n)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
