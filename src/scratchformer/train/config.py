"""The run configuration: model, task, training options and seed, in one typed object.

A run is described by a :class:`RunConfig`::

    seed = 0
    name = "addition"            # run directory: <train.out_dir>/<name> (default: a timestamp)
    [model]  arch = "gpt", then any field of the architecture's config class
    [task]   name = "addition_gpt", then any field of the task's config class
    [train]  any field of :class:`TrainConfig`

It is filled from the embedded default (:data:`DEFAULT_RUN`), then a config
file (TOML or JSON), then ``key=value`` overrides with dotted keys
(``model.n_layer=4 task.max_digits=3 train.steps=1000``). Every key is checked
against the dataclass it lands in; an unknown key is a ConfigError with a
did-you-mean before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..config import INT_LIMIT, Config, parse_typed
from ..errors import ConfigError, did_you_mean, unknown_name

if TYPE_CHECKING:
    from ..tasks.base import TaskConfig

Precision = Literal["auto", "fp32", "bf16"]
FLOAT32_MAX = 3.4028234663852886e38
Distributed = Literal["ddp", "fsdp"]


@dataclass
class TrainConfig(Config):
    """Options of the training loop.

    Attributes:
        steps: optimizer updates in the whole run.
        batch_size: examples per optimizer update, summed over gradient
            accumulation micro-steps and distributed ranks (the *global*
            batch); must be divisible by ``grad_accum * world_size``.
        grad_accum: micro-batches per update (gradients are summed, the loss
            is normalised by the global count of targets, so accumulation
            gives the same update as one big batch).
        optimizer: a name in ``scratchformer.train.optim.OPTIMIZERS``.
        lr: peak learning rate (for ``noam``: the factor in front of the formula).
        weight_decay: AdamW decay of Linear weights (the other group gets 0).
        optimizer_options: extra keyword arguments for the optimizer (e.g. betas, momentum).
        schedule: a name in ``scratchformer.train.optim.SCHEDULES``.
        warmup_steps: linear warm-up length (noam, cosine).
        min_lr_ratio: cosine floor as a fraction of ``lr``.
        grad_clip: max global gradient norm; 0 disables clipping.
        label_smoothing: epsilon of label smoothing in the training loss
            (0: none); evaluation losses are never smoothed.
        device: "auto" (CUDA if available), "cpu" or "cuda[:i]".
        threads: CPU threads for torch (0: torch's default, one per core).
            On a busy machine 1 thread per process is often fastest.
        precision: "auto" (bf16 autocast on GPU, fp32 on CPU), "fp32" or "bf16".
        compile: wrap the model in ``torch.compile``.
        linear_backend: how Linear layers multiply on the CPU: "auto" (None
            too: each shape's kernel measured on this machine, F.linear unless
            another is faster), "torch" (plain ``F.linear``) or "onednn"
            (oneDNN for every float32 product). See ``scratchformer.nn.linear``.
            Every checkpoint records the kernels chosen, so a resumed run
            multiplies as the original did (bit-identical results).
        distributed: under torchrun with several processes: "ddp" or "fsdp".
        eval_every: evaluate every this many steps (0: only at the end).
        eval_split: split evaluated during training (default: the first split
            after the training split).
        eval_max_examples: cap on evaluated examples per split (0: all).
        eval_batch_size: batch size for evaluation.
        best_metric: metric that selects the best checkpoint ("auto": exact
            match for generative tasks, accuracy for classification, else loss).
        log_every: write a training line to metrics.jsonl every this many steps.
        checkpoint_every: save a resumable checkpoint every this many steps
            (0: only at the end).
        keep_checkpoints: how many step checkpoints to keep on disk.
        log_tensorboard: also write TensorBoard event files (needs ``tensorboard``).
        progress: show a tqdm bar; None: only when stderr is a terminal and
            ``CI`` is unset.
        out_dir: parent directory of run directories.
    """

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    device: str = "auto"
    threads: int = 0
    precision: Precision = "auto"
    compile: bool = False
    linear_backend: str | None = None
    distributed: Distributed = "ddp"
    eval_every: int = 500
    eval_split: str | None = None
    eval_max_examples: int = 2000
    eval_batch_size: int = 512
    best_metric: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_tensorboard: bool = False
    progress: bool | None = None
    out_dir: str = "runs"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("steps", "batch_size", "grad_accum", "eval_batch_size", "log_every", "keep_checkpoints")
        for name in ("eval_every", "checkpoint_every", "eval_max_examples", "warmup_steps", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "weight_decay", "grad_clip", "min_lr_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
            if value > FLOAT32_MAX:  # the optimizers hold them as float32 tensors
                raise ConfigError(f"TrainConfig.{name}={value!r} is beyond float32's range; use at most 3.4e38")
        if not isinstance(self.label_smoothing, (int, float)) or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"TrainConfig.label_smoothing={self.label_smoothing!r} must be in [0, 1) (e.g. 0.1)")
        if self.min_lr_ratio > 1:
            raise ConfigError(f"TrainConfig.min_lr_ratio={self.min_lr_ratio} must be <= 1 (a fraction of lr)")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}; "
                "batch_size is the global batch of one optimizer update"
            )
        self._choice("precision", ["auto", "fp32", "bf16"])
        self._choice("distributed", ["ddp", "fsdp"])
        if self.linear_backend is not None:
            self._choice("linear_backend", ["auto", "torch", "onednn"])
        if not isinstance(self.optimizer_options, dict):
            raise ConfigError(f"TrainConfig.optimizer_options must be a table/dict, got {self.optimizer_options!r}")
        from .optim import OPTIMIZERS, SCHEDULES  # late: optim imports torch models

        self._choice("optimizer", OPTIMIZERS)
        self._choice("schedule", SCHEDULES)


@dataclass
class RunConfig:
    """Everything that defines a run, typed.

    Attributes:
        arch: the architecture, a key of ``scratchformer.models.MODELS``.
        model: the architecture's config (``GPTConfig``, ...). Fields the user
            left out hold class defaults until :meth:`with_model` fills them
            from the task (vocabulary size, context length, pad id, ...).
        model_given: the model fields the user set; the others may come from the task.
        task_name: the task, a key of ``scratchformer.tasks.TASKS``.
        task: the task's config (``AdditionGPTConfig``, ...).
        train: the training options.
        seed: seeds everything (0 <= seed < 2**63).
        name: the run directory's name under ``train.out_dir`` (None: a timestamp).
        init_from: start from these weights: a run directory or a Hugging Face
            GPT-2/BERT/DistilBERT directory (see ``scratchformer.train.init_from``).

    The JSON form (config.json, ``--print-config``) nests ``arch`` in
    ``model`` and ``name`` in ``task``; ``model`` holds only ``model_given``.
    """

    arch: str
    model: Config
    task_name: str
    task: TaskConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    name: str | None = None
    model_given: tuple[str, ...] = ()
    init_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        model = self.model.to_dict()
        return {
            "model": {"arch": self.arch, **{k: model[k] for k in model if k in self.model_given}},
            "task": {"name": self.task_name, **self.task.to_dict()},
            "train": self.train.to_dict(),
            "seed": self.seed,
            "name": self.name,
            "init_from": self.init_from,
        }

    def with_model(self, model: Config) -> RunConfig:
        """This config with a complete model config (every field given)."""
        return dataclasses.replace(self, model=model, model_given=tuple(model.to_dict()))

    def given_model_options(self) -> dict[str, Any]:
        """The model fields the user set, by name."""
        return {k: getattr(self.model, k) for k in self.model_given}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build and check a RunConfig, every value parsed by its declared type.

        Raises:
            ConfigError: an unknown key anywhere (with a did-you-mean), a value of
                the wrong type (naming the key, the value and the type), or an
                impossible value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config must be a table/object, got {data!r}")
        data = dict(data)
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                raise ConfigError(f"unknown config key {key!r}{did_you_mean(str(key), TOP_LEVEL_KEYS)}; "
                                  f"top-level keys are {list(TOP_LEVEL_KEYS)}")
        for section in ("model", "task", "train"):
            if not isinstance(data.get(section, {}), Mapping):
                raise ConfigError(f"config section {section!r} must be a table/dict, got {data.get(section)!r}")
        model = dict(data.get("model", {}))
        task = dict(data.get("task", {}))
        arch = model.pop("arch", None)
        task_name = task.pop("name", None)
        model_cls, model_config_cls = model_classes(arch)  # unknown arch / task name: a did-you-mean error first
        task_cls = task_class(task_name)
        _check_section_keys("model", model, model_config_cls, "arch")
        _check_section_keys("task", task, task_cls.config_class, "name")
        seed = parse_typed(data.get("seed", 0), int, "seed")
        if not 0 <= seed < INT_LIMIT:
            raise ConfigError(f"seed={seed} must be an integer in [0, 2**63)")
        name = parse_typed(data.get("name"), str | None, "name")
        if name is not None:
            check_run_name(name)
        init_from = parse_typed(data.get("init_from"), str | None, "init_from")
        if init_from is not None and not init_from.strip():
            raise ConfigError("init_from='' must be the path of a run directory or a Hugging Face model directory")
        return cls(
            arch=arch,
            model=model_config_cls.from_dict(model, where="model"),
            task_name=task_name,
            task=task_cls.config_class.from_dict(task, where="task"),
            train=TrainConfig.from_dict(data.get("train", {}), where="train"),
            seed=seed,
            name=name,
            model_given=tuple(model),
            init_from=init_from,
        )


def check_run_name(name: str) -> None:
    """ConfigError unless ``name`` can name one directory under ``train.out_dir``."""
    bad = next((c for c in name if c in "/\\\0" or not c.isprintable()), None)
    if not name.strip() or set(name) <= {"."} or bad is not None or len(name.encode("utf-8")) > 200:
        why = (f"it holds {bad!r}" if bad is not None else "it is too long (over 200 bytes)"
               if len(name.encode("utf-8")) > 200 else "it is empty or only dots")
        raise ConfigError(f"name={name!r} cannot name a run directory: {why}; use letters, digits, '-', '_' "
                          "(a path belongs in --run-dir or train.out_dir)")


def _check_section_keys(section: str, options: Mapping[str, Any], config_cls: type, ident: str) -> None:
    valid = [ident, *config_cls.field_names()]
    for key in options:
        if key not in valid:
            dotted = [f"{section}.{k}" for k in valid]
            raise ConfigError(
                f"unknown config key '{section}.{key}'{did_you_mean(f'{section}.{key}', dotted)}; "
                f"valid {section} keys for this {'arch' if section == 'model' else 'task'}: {valid}"
            )


TOP_LEVEL_KEYS = ("model", "task", "train", "seed", "name", "init_from")

DEFAULT_RUN: dict[str, Any] = {
    "seed": 0,
    "name": None,
    "model": {
        "arch": "gpt",
        "d_model": 64,
        "n_head": 4,
        "n_layer": 2,
    },
    "task": {
        "name": "addition_gpt",
        "max_digits": 3,
        "min_digits": 3,
        "reverse_answer": True,
        "num_examples": 60_000,
        "split_fractions": [0.9, 0.05, 0.05],
    },
    "train": {
        "steps": 1500,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.1,
        "schedule": "cosine",
        "warmup_steps": 100,
        "min_lr_ratio": 0.05,
        "eval_every": 250,
        "checkpoint_every": 250,
        "eval_max_examples": 3000,
        "threads": 0,  # torch default: one per core. On a CPU shared with other jobs, train.threads=1 avoids oversubscription
    },
}
"""The README's main job: a small GPT learns 3-digit addition with the
answer written least-significant digit first. Tuned in docs/training.md."""


# ---------------------------------------------------------------------- checks
def model_classes(arch: Any) -> tuple[type, type]:
    from ..models import MODELS

    if not isinstance(arch, str) or arch not in MODELS:
        raise unknown_name("model.arch", str(arch), MODELS)
    return MODELS[arch]


def task_class(name: Any) -> type:
    from ..tasks import TASKS

    if not isinstance(name, str) or name not in TASKS:
        raise unknown_name("task.name", str(name), TASKS)
    return TASKS[name]


def section_keys(cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    """Valid keys of each section for the chosen arch and task (for did-you-mean)."""
    model = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else {}
    task = cfg.get("task") if isinstance(cfg.get("task"), Mapping) else {}
    keys: dict[str, list[str]] = {"train": [f.name for f in dataclasses.fields(TrainConfig)]}
    try:
        _, mcfg = model_classes(model.get("arch"))
        keys["model"] = ["arch", *(f.name for f in dataclasses.fields(mcfg))]
    except ConfigError:
        keys["model"] = ["arch"]
    try:
        tcls = task_class(task.get("name"))
        keys["task"] = ["name", *(f.name for f in dataclasses.fields(tcls.config_class))]
    except ConfigError:
        keys["task"] = ["name"]
    return keys


# ---------------------------------------------------------------------- files and overrides
def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (``.json``) config file into a dict.

    Raises:
        ConfigError: the file is missing, unreadable, not valid TOML/JSON, or
            has another extension.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                          "save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {str(path)!r} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table/object at the top level")
    return data


def parse_value(text: str) -> Any:
    """A command-line value: a JSON literal (``4``, ``1e-3``, ``true``, ``[1,2]``, ``null``) or else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update (returns a new dict). Changing ``model.arch`` or
    ``task.name`` drops the previous section's options, which belong to the old class."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key in ("model", "task") and isinstance(value, Mapping):
            ident = "arch" if key == "model" else "name"
            old = out.get(key, {})
            if ident in value and value[ident] != old.get(ident):
                out[key] = {}
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings with dotted keys to a config dict.

    Raises:
        ConfigError: a string without ``=``, a key outside every section, or an
            unknown field (with a did-you-mean over every valid dotted key).
    """
    out = copy.deepcopy(data)
    pending: list[tuple[list[str], Any, str]] = []
    for item in overrides:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=1000)")
        pending.append((key.split("."), raw, key))
    # identity keys first, so model.arch=... decides which fields model.* may use
    pending.sort(key=lambda p: p[0] not in (["model", "arch"], ["task", "name"]))
    for parts, raw, key in pending:
        value = _parse_override(raw, parts, out)
        if len(parts) == 1:
            if parts[0] not in ("seed", "name", "init_from"):
                raise _unknown_key(key, out)
            out[parts[0]] = value
            continue
        section, field_name = parts[0], ".".join(parts[1:])
        if section not in ("model", "task", "train") or len(parts) > 2 and section != "train":
            raise _unknown_key(key, out)
        if parts[1:] in (["arch"], ["name"]):
            out = merge(out, {section: {field_name: value}})
            continue
        valid = section_keys(out)[section]
        if parts[1] not in valid:
            raise _unknown_key(key, out)
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {key!r}: config section {section!r} is {target!r}, not a table")
        for p in parts[1:-1]:  # train.optimizer_options.momentum=0.9
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a table")
        target[parts[-1]] = value
    return out


def _parse_override(raw: str, parts: list[str], data: Mapping[str, Any]) -> Any:
    """A command-line value: the text itself for a string field (``name=2024`` names a run "2024"),
    else a JSON literal or the text (:func:`parse_value`); the field's type is checked later."""
    if parts == ["name"]:
        return None if raw == "null" else raw
    if len(parts) != 2 or parts[1] in ("arch", "name"):
        return parse_value(raw)
    try:
        cls = {"train": lambda: TrainConfig,
               "model": lambda: model_classes(data["model"].get("arch"))[1],
               "task": lambda: task_class(data["task"].get("name")).config_class}[parts[0]]()
        tp = typing.get_type_hints(cls)[parts[1]]
    except (KeyError, AttributeError, ConfigError):
        return parse_value(raw)
    if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                     and set(typing.get_args(tp)) == {str, type(None)}):
        return None if raw == "null" and tp is not str else raw
    return parse_value(raw)


def _unknown_key(key: str, data: Mapping[str, Any]) -> ConfigError:
    keys = section_keys(data)
    valid = ["seed", "name", "init_from", *(f"{s}.{k}" for s, ks in keys.items() for k in ks)]
    return ConfigError(f"unknown config key {key!r}{did_you_mean(key, valid)}; see `scratchformer train --help` "
                       "for the sections (model.*, task.*, train.*, seed, name)")


def resolve_config(config_file: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """The embedded default, then ``config_file``, then ``overrides``; checked."""
    data = copy.deepcopy(DEFAULT_RUN)
    if config_file is not None:
        data = merge(data, load_config_file(config_file))
    data = apply_overrides(data, overrides)
    return RunConfig.from_dict(data)
