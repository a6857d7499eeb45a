"""Starting a run from existing weights: ``init_from=DIR``.

``DIR`` is a scratchformer run directory or a Hugging Face-format GPT-2 or
BERT directory. The checkpoint decides the model's shape (its config
replaces the run's ``model`` section, except for the options that only
change training: ``dropout`` and ``attn_impl``); the task decides what the
task decides (a classifier's number of classes: a head of another size is
made fresh). A text task that names no tokenizer uses the directory's own,
so the ids mean what the weights were trained on, and a task's sequence
length (``max_length``, ``block_size``) is cut to the checkpoint's positions.

``prepare_init_from(cfg)`` returns the run config to build, and
``load_init_weights(model, cfg)`` copies the weights into the built model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from .config import RunConfig

logger = logging.getLogger(__name__)

#: Model options a run may change when it starts from a checkpoint (nothing about the shape).
TRAINING_OPTIONS = ("dropout", "attn_impl")


def _checkpoint_model_options(path: Path) -> tuple[dict[str, Any], str]:
    """(model options with ``arch``, kind: "hf" or "run") of an init_from directory."""
    from ..interop.hf_dir import is_hf_dir, read_hf_config

    if is_hf_dir(path):
        hf_config = read_hf_config(path)
        model_type = hf_config.get("model_type")
        if model_type == "gpt2":
            from ..interop.gpt2 import gpt_config_from_gpt2

            return {"arch": "gpt", **gpt_config_from_gpt2(hf_config).to_dict()}, "hf"
        if model_type in ("bert", "distilbert"):
            from ..interop.bert import CONFIG_READERS

            options = CONFIG_READERS[model_type](hf_config).to_dict()
            options.pop("num_classes")  # the task's classes
            return {"arch": "encoder_classifier", **options}, "hf"
        raise ConfigError(f"init_from={str(path)!r} holds a {model_type!r} model; scratchformer starts from "
                          "GPT-2 ('gpt2'), BERT ('bert') and DistilBERT ('distilbert') directories, or from its own run directories")
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        from .run import read_run_config

        return dict(read_run_config(path).to_dict()["model"]), "run"
    raise ConfigError(f"init_from={str(path)!r} is neither a run directory (config.json + model.safetensors) nor a "
                      "Hugging Face directory (config.json with a model_type + model.safetensors)")


def prepare_init_from(cfg: RunConfig) -> RunConfig:
    """The run config with the model section taken from ``cfg.init_from`` (unchanged without one)."""
    if cfg.init_from is None:
        return cfg
    from ..interop.hf_dir import looks_like_hub_name, resolve_model_dir

    path = Path(cfg.init_from)
    if not path.exists() and looks_like_hub_name(cfg.init_from):
        path = resolve_model_dir(cfg.init_from)  # a Hub name: fetched into the cache, or a clear error
    if not path.is_dir():
        raise ConfigError(f"init_from={cfg.init_from!r} is not a directory")
    options, kind = _checkpoint_model_options(path)
    given = cfg.given_model_options()
    for key in TRAINING_OPTIONS:
        if key in given:
            options[key] = given[key]
    ignored = sorted(k for k, v in given.items() if k not in TRAINING_OPTIONS and options.get(k, v) != v)
    if ignored:
        logger.warning("init_from=%s decides the model's shape; ignoring model options %s", cfg.init_from, ignored)
    data = cfg.to_dict()
    task = data["task"]
    if kind == "hf" and task.get("tokenizer") in ("char", "bpe"):
        task["tokenizer"] = str(path)  # the ids must mean what the weights learned: the directory's tokenizer
        logger.info("task.tokenizer: the tokenizer of %s", path)
    for key in ("max_length", "block_size"):  # the checkpoint's positions bound the task's sequences
        if isinstance(task.get(key), int) and options.get("max_len") and task[key] > options["max_len"]:
            logger.warning("task.%s=%d is longer than %s's %d positions; using task.%s=%d",
                           key, task[key], path, options["max_len"], key, options["max_len"])
            task[key] = options["max_len"]
    return RunConfig.from_dict({**data, "model": options, "task": task, "init_from": str(path)})


def load_init_weights(model: nn.Module, cfg: RunConfig) -> None:
    """Copy the weights of ``cfg.init_from`` into ``model`` (built from ``prepare_init_from(cfg)``).

    Raises:
        CheckpointError: the weights do not fit the model (listing the tensors).
    """
    if cfg.init_from is None:
        return
    from ..interop.hf_dir import is_hf_dir

    path = Path(cfg.init_from)
    if not is_hf_dir(path):
        from .checkpoint import load_model_weights

        load_model_weights(model, path / "model.safetensors", cfg.arch)
        logger.info("initialised from the run %s", path)
        return
    state: dict[str, Tensor]
    if cfg.arch == "gpt":
        from ..interop.gpt2 import _read_directory, state_dict_from_gpt2

        _, hf_state = _read_directory(path)
        state = state_dict_from_gpt2(hf_state, model.config)
    else:
        from ..interop.bert import LAYOUTS, read_bert_directory, state_dict_from_bert

        hf_config, hf_state = read_bert_directory(path)
        head = LAYOUTS[hf_config["model_type"]].head
        own = model.state_dict()
        resized = {k for k, ours in head.items() if k in hf_state and tuple(hf_state[k].shape) != tuple(own[ours].shape)}
        if resized:
            logger.info("%s has a head of another size than the task's %d classes: %s start fresh",
                        path, model.config.num_classes, sorted(resized))
            hf_state = {k: v for k, v in hf_state.items() if k not in resized}
        state, fresh = state_dict_from_bert(hf_state, model.config, hf_config["model_type"])
        state.update({k: v for k, v in own.items() if k in fresh})
    model.load_state_dict(state, strict=True)
    logger.info("initialised from the Hugging Face directory %s", path)


__all__ = ["TRAINING_OPTIONS", "load_init_weights", "prepare_init_from"]
