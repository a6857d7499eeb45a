"""Training: the trainer, optimizers and schedules, checkpoints, run directories, distributed.

See docs/training.md.
"""

from scratchformer.train.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    save_model_weights,
)
from scratchformer.train.config import DEFAULT_RUN, RunConfig, TrainConfig, apply_overrides, resolve_config
from scratchformer.evaluate import evaluate_split, teacher_forced_exact_match
from scratchformer.losses import LOSSES, LossOutput
from scratchformer.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, decay_groups, lr_at, param_groups
from scratchformer.train.run import Run, build_model, load_run
from scratchformer.train.trainer import NonFiniteLossError, TrainResult, TrainState, setup, train, train_step

__all__ = [
    "DEFAULT_RUN",
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "Checkpoint",
    "LossOutput",
    "NonFiniteLossError",
    "Run",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "apply_overrides",
    "build_model",
    "build_optimizer",
    "decay_groups",
    "evaluate_split",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "load_run",
    "lr_at",
    "param_groups",
    "resolve_config",
    "save_checkpoint",
    "save_model_weights",
    "setup",
    "teacher_forced_exact_match",
    "train",
    "train_step",
]
