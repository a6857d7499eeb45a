"""Models built from a run config and a task, and finished runs loaded back from their directory."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import Config
from ..io import load_json
from ..errors import CheckpointError, ConfigError
from ..tasks import build_task
from ..tasks.base import Task
from .checkpoint import load_model_weights
from .config import RunConfig, model_classes

logger = logging.getLogger(__name__)


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


def model_config_for(arch: str, given: dict[str, Any], task: Task) -> Config:
    """The complete model config of ``arch`` for ``task``: the ``given`` options, and for every
    option left out, what the task determines (:func:`derived_model_options`) or the class default.

    Raises:
        ConfigError: an invalid option, a context shorter than the task's
            longest sequence, or a model too big for this machine's memory.
    """
    _, config_cls = model_classes(arch)
    config = config_cls.from_dict({**derived_model_options(arch, task), **given}, where="model")
    context = task_context_length(task) if arch in ("gpt", "encoder_classifier") else None
    if context and config.max_len < context:
        raise ConfigError(
            f"model.max_len={config.max_len} is shorter than the task's longest sequence ({context} tokens); "
            f"use model.max_len >= {context}, or leave it out to take it from the task"
        )
    check_model_fits_memory(config)
    return config


def parameter_count(config: Config) -> int:
    """Roughly how many numbers a model of ``config`` holds (embeddings, positions, blocks, head)."""
    c = config.to_dict()
    if "d_model" not in c:
        dims = [c["in_dim"], *c["hidden_dims"], c["out_dim"]]
        return sum(a * b + b for a, b in zip(dims, dims[1:]))
    d, d_ff = c["d_model"], c["d_ff"] or 4 * c["d_model"]
    layers = c["n_layer"] + c.get("n_encoder_layer", 0) + c.get("n_decoder_layer", 0)
    vocab = c["vocab_size"] + c.get("src_vocab_size", 0) + 2 * c.get("tgt_vocab_size", 0)
    return vocab * d + 2 * c["max_len"] * d + layers * (4 * d * d + 2 * d * d_ff + 8 * d)


def check_model_fits_memory(config: Config) -> None:
    """ConfigError if the model's weights alone (float32) would not fit in this machine's memory."""
    need = 4 * parameter_count(config)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        sizes = {k: v for k, v in config.to_dict().items()
                 if k in ("max_len", "vocab_size", "d_model", "d_ff", "n_layer") and isinstance(v, int)}
        raise ConfigError(
            f"the model would need about {need / 2**30:.0f} GiB for its weights alone, more than this machine's "
            f"{have / 2**30:.0f} GiB ({', '.join(f'model.{k}={v}' for k, v in sizes.items())}); make it smaller"
        )


def build_run(cfg: RunConfig) -> tuple[Task, nn.Module, RunConfig]:
    """Build the task and the model ``cfg`` describes; checks that they fit each other first.

    Returns the task, the model, and the effective run config: ``cfg`` with the
    complete model config (what config.json records).
    """
    task = build_task(cfg.task_name, cfg.task)
    check_task_fits_model(cfg.arch, task)
    model_config = model_config_for(cfg.arch, cfg.given_model_options(), task)
    model_cls, _ = model_classes(cfg.arch)
    return task, _construct(model_cls, model_config), cfg.with_model(model_config)


def _construct(model_cls: type[nn.Module], config: Config) -> nn.Module:
    try:
        return model_cls(config)
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "alloc" not in str(e).lower():
            raise
        raise ConfigError(f"not enough memory to build the model ({e}); make it smaller") from None


def build_model(model_options: dict[str, Any], task: Task) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model ``model_options`` describes (``arch`` + config fields) for ``task``.

    Options the task determines fill in what ``model_options`` leaves out.
    Returns the model and its full options (``arch`` + every config field).
    """
    options = dict(model_options)
    arch = options.pop("arch", None)
    model_cls, _ = model_classes(arch)
    config = model_config_for(arch, options, task)
    return _construct(model_cls, config), {"arch": arch, **config.to_dict()}


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
        bos_first: training sequences start with the BOS token (``task.json``),
            so a text prompt needs it prepended.
    """

    run_dir: Path
    config: RunConfig
    model: nn.Module
    tokenizer: Any
    weights: Path
    bos_first: bool = False

    @property
    def arch(self) -> str:
        return self.config.arch

    def build_task(self) -> Task:
        """Rebuild the run's task (deterministic from its options, so the same splits)."""
        return build_task(self.config.task_name, self.config.task)

    def task_for_prompts(self) -> Task:
        """The run's task without its splits, for formatting prompts and presenting answers."""
        from ..tasks import TASKS

        return TASKS[self.config.task_name].for_prompts(self.config.task, self.tokenizer)


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The RunConfig in ``run_dir/config.json``; CheckpointError if it is not a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a scratchformer run directory (no config.json)")
    data = load_json(path, "run config")
    try:
        return RunConfig.from_dict(data)
    except ConfigError as e:
        raise CheckpointError(f"{str(path)!r} is not a valid scratchformer run config: {e}") from None


def load_run(run_dir: str | os.PathLike, weights: str = "model") -> Run:
    """Load a run directory: config, tokenizer, and the model in eval mode.

    Args:
        weights: "model" (``model.safetensors``: the latest/final weights),
            "best" (``best.safetensors``) or a path to a weights file.

    Raises:
        CheckpointError: not a run directory; a part of the run (``task.json``,
            ``tokenizer.json``, the weights) missing or unreadable; weights
            truncated, not matching the config, or holding NaN/inf.
    """
    from ..tokenizers import load_tokenizer

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    summary = load_json(run_dir / "task.json", "the run's task summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("bos_first"), bool) or "vocab_size" not in summary:
        raise CheckpointError(f"{str(run_dir / 'task.json')!r} is not a scratchformer task summary "
                              "(it needs bos_first and vocab_size); the run directory is damaged")
    arch = config.arch
    model_cls, _ = model_classes(arch)
    model = _construct(model_cls, config.model)
    path = {"model": run_dir / "model.safetensors", "best": run_dir / "best.safetensors"}.get(weights, Path(weights))
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist (has the run saved weights yet?)")
    load_model_weights(model, path, arch)
    model.eval()
    tok_path = run_dir / "tokenizer.json"
    tokenizer = None
    if summary["vocab_size"] is not None:  # the task has a tokenizer, so the run must have saved it
        if not tok_path.is_file():
            raise CheckpointError(f"{str(tok_path)!r} is missing: the run's task has a tokenizer, which the run "
                                  "directory should hold; the run directory is damaged")
        tokenizer = load_tokenizer(tok_path)
    return Run(run_dir=run_dir, config=config, model=model, tokenizer=tokenizer, weights=path,
               bos_first=summary["bos_first"])


# ---------------------------------------------------------------------- the run directory
HISTORY_DIR = "history"
"""``history/attempt_NNN.json``: the effective config of every training attempt in the run directory."""

RUN_NOTES = ("experiment_run.json",)
"""Files other scratchformer commands keep in a run directory before it first trains (the experiment
runner's record); a directory holding only these counts as empty."""


def is_run_dir(path: Path) -> bool:
    """True if ``path`` holds a readable scratchformer ``config.json``."""
    try:
        read_run_config(path)
        return True
    except CheckpointError:
        return False


def has_trained(path: Path) -> bool:
    """True if the run in ``path`` saved a checkpoint or its weights (so starting it over would lose them).

    (``best.safetensors`` alone does not count: a run killed between its first
    evaluation and its first checkpoint cannot be resumed, so it may start over.)
    """
    from .checkpoint import list_checkpoints

    return (path / "model.safetensors").exists() or bool(list_checkpoints(path))


def check_writable(path: Path) -> None:
    """ConfigError, before anything is written, if ``path`` cannot become a directory this process writes to."""
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise ConfigError(f"{str(probe)!r} is a broken symbolic link; choose another --run-dir or train.out_dir")
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{str(probe)!r} is a file, not a directory, so the run cannot be written under it; "
                          "choose another --run-dir or train.out_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{str(probe)!r} is not writable, so the run cannot be written there; "
                          "choose another --run-dir or train.out_dir")


def prepare_run_dir(cfg: RunConfig, run_dir: str | os.PathLike | None, resume: bool) -> Path:
    """Where a run writes, after refusing everything that would lose data. Writes nothing.

    A new run goes to ``run_dir``, else ``train.out_dir/name``, else
    ``train.out_dir/<timestamp>``. It may use a directory that does not exist,
    an empty one, or a run of this project that never saved weights (a start
    that failed early); anything else is refused: a directory that is not
    empty and not a run (its files are someone else's), or a run that saved
    weights (resume it instead). ``resume`` needs a run with a complete
    checkpoint.

    Raises:
        ConfigError: the directory cannot be used, with the reason and the fix.
        CheckpointError: ``resume`` of a directory that is not a readable run.
    """
    from .checkpoint import latest_checkpoint, list_checkpoints

    if resume:
        if run_dir is None:
            raise ConfigError("resume needs the run directory")
        path = Path(run_dir)
        read_run_config(path)
        if latest_checkpoint(path) is None:
            found = len(list_checkpoints(path))
            why = f"its {found} checkpoint(s) are incomplete or damaged" if found else "it has no checkpoint"
            fix = ("start a new run (another name=... or --run-dir); its weights are kept" if has_trained(path)
                   else f"start it over with `scratchformer train --run-dir {path}`")
            raise ConfigError(f"cannot resume {str(path)!r}: {why}; nothing was changed. To train again, {fix}")
        check_writable(path)
        return path
    if run_dir is not None:
        path = Path(run_dir)
    elif cfg.name:
        path = Path(cfg.train.out_dir) / cfg.name
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, i = Path(cfg.train.out_dir) / stamp, 1
        while path.exists():
            i += 1
            path = Path(cfg.train.out_dir) / f"{stamp}-{i}"
    check_writable(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise ConfigError(f"{str(path)!r} exists and is not a directory; choose another --run-dir or name=...")
        if any(p.name not in RUN_NOTES for p in path.iterdir()):
            if not is_run_dir(path):
                raise ConfigError(
                    f"{str(path)!r} is not empty and is not a scratchformer run, so its files are left alone; "
                    "choose a new or empty directory (--run-dir or name=...)"
                )
            if has_trained(path):
                raise ConfigError(
                    f"{str(path)!r} already holds a run; resume it with `scratchformer train --resume {path}` "
                    "or choose another name=... or --run-dir"
                )
            logger.info("%s holds a run that never saved weights; starting it over", path)
    return path


def start_attempt(run_dir: Path, effective: RunConfig, resume: bool, step: int) -> Path:
    """Record this training attempt's effective config in ``history/``; returns the record's path.

    A new run also writes ``config.json`` now (it names the run). A resumed run
    keeps its ``config.json`` until :func:`attempt_trained`, so an attempt that
    fails (a diverging ``train.lr``, a kill before any checkpoint) leaves the
    config a later plain ``--resume`` reads as it was.
    """
    from ..io import save_json

    history = run_dir / HISTORY_DIR
    n = 1 + sum(1 for p in history.glob("attempt_*.json")) if history.is_dir() else 1
    record = history / f"attempt_{n:03d}.json"
    save_json(record, {"attempt": n, "resumed_at_step": step if resume else None,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": effective.to_dict()})
    if not resume:
        save_json(run_dir / "config.json", effective.to_dict())
    return record


def attempt_trained(run_dir: Path, effective: RunConfig) -> None:
    """This attempt saved a checkpoint: its config becomes the run's ``config.json``."""
    from ..io import save_json

    save_json(run_dir / "config.json", effective.to_dict())
