"""Models built from a run config and a task, and finished runs loaded back from their directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..tasks import build_task
from ..tasks.base import Task
from .checkpoint import load_model_weights
from .config import RunConfig, model_classes


def derived_model_options(arch: str, task: Task) -> dict[str, Any]:
    """Model options the task determines (vocabulary sizes, pad/start ids, classes, context length, input width)."""
    tok = task.tokenizer
    out: dict[str, Any] = {}
    if arch in ("gpt", "encoder_classifier") and tok is not None:
        out.update(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id)
    if arch in ("gpt", "encoder_classifier"):
        context = task_context_length(task)
        if context:
            out["max_len"] = context
    if arch == "encoder_classifier":
        if hasattr(task, "num_classes"):
            out["num_classes"] = task.num_classes
        if getattr(task, "classifier_position", None) in ("last", "first", "mean"):
            out["pooling"] = task.classifier_position
    if arch == "encoder_decoder" and tok is not None:
        out.update(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id,
                   vocab_size=tok.vocab_size)  # vocab_size is unused by the model but bounds pad_token_id
        if hasattr(task, "decoder_start_token_id"):
            out["decoder_start_token_id"] = task.decoder_start_token_id
    if arch == "mlp":
        example = task.dataset(task.split_names[0])[0]
        if "inputs" in example:
            inputs = example["inputs"]
            out["in_dim"] = int(getattr(inputs, "shape", (1,))[0]) if getattr(inputs, "ndim", 0) else 1
            out["out_dim"] = 1
    return out


def task_context_length(task: Task) -> int | None:
    """The longest token sequence the task feeds a model: its ``block_size`` or ``max_length`` option,
    else the longest row of its datasets; None if unknown."""
    for name in ("block_size", "max_length"):
        value = getattr(task.config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    longest = 0
    for split in task.split_names:
        ds = task.dataset(split)
        lengths = getattr(ds, "row_lengths", None)
        if lengths is not None and len(lengths):
            longest = max(longest, int(max(lengths)))
    return longest or None


def build_model(model_options: dict[str, Any], task: Task) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model ``model_options`` describes (``arch`` + config fields) for ``task``.

    Options the task determines fill in what ``model_options`` leaves out.
    Returns the model and its full options (``arch`` + every config field),
    which is what config.json records.
    """
    options = dict(model_options)
    arch = options.pop("arch", None)
    model_cls, config_cls = model_classes(arch)
    for key, value in derived_model_options(arch, task).items():
        options.setdefault(key, value)
    config = config_cls.from_dict(options)
    return model_cls(config), {"arch": arch, **config.to_dict()}


def check_task_fits_model(arch: str, task: Task) -> None:
    """ConfigError when the architecture cannot learn the task's kind."""
    fits = {"lm": ("gpt",), "seq2seq": ("encoder_decoder",), "classification": ("encoder_classifier",),
            "regression": ("mlp",)}
    if arch not in fits.get(task.kind, (arch,)):
        raise ConfigError(
            f"model.arch={arch!r} cannot train task {task.name!r} of kind {task.kind!r}; "
            f"use model.arch={fits[task.kind][0]!r}"
        )


@dataclass
class Run:
    """A finished (or checkpointed) run loaded from its directory.

    Attributes:
        run_dir: the directory.
        config: the effective run config.
        model: the model with the chosen weights, in eval mode, on CPU.
        tokenizer: the task's tokenizer (None if the task has none).
        weights: which weights file was loaded.
    """

    run_dir: Path
    config: RunConfig
    model: nn.Module
    tokenizer: Any
    weights: Path

    @property
    def arch(self) -> str:
        return self.config.model["arch"]

    def build_task(self) -> Task:
        """Rebuild the run's task (deterministic from its options, so the same splits)."""
        options = {k: v for k, v in self.config.task.items() if k != "name"}
        return build_task(self.config.task["name"], **options)


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The RunConfig in ``run_dir/config.json``; CheckpointError if it is not a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a scratchformer run directory (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunConfig.from_dict(data)
    except (json.JSONDecodeError, ConfigError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r} is not a valid scratchformer run config: {e}") from None


def load_run(run_dir: str | os.PathLike, weights: str = "model") -> Run:
    """Load a run directory: config, tokenizer, and the model in eval mode.

    Args:
        weights: "model" (``model.safetensors``: the latest/final weights),
            "best" (``best.safetensors``) or a path to a weights file.

    Raises:
        CheckpointError: not a run directory, weights missing, truncated or
            not matching the config.
    """
    from ..tokenizers import load_tokenizer

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    options = dict(config.model)
    arch = options.pop("arch")
    model_cls, config_cls = model_classes(arch)
    try:
        model = model_cls(config_cls.from_dict(options))
    except ConfigError as e:
        raise CheckpointError(f"{str(run_dir / 'config.json')!r} has an invalid model config: {e}") from None
    path = {"model": run_dir / "model.safetensors", "best": run_dir / "best.safetensors"}.get(weights, Path(weights))
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist (has the run saved weights yet?)")
    load_model_weights(model, path, arch)
    model.eval()
    tok_path = run_dir / "tokenizer.json"
    tokenizer = load_tokenizer(tok_path) if tok_path.is_file() else None
    return Run(run_dir=run_dir, config=config, model=model, tokenizer=tokenizer, weights=path)
