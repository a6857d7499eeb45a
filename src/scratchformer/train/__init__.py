"""Training: the trainer, optimizers and schedules, losses, checkpoints, run directories, distributed.

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
from scratchformer.train.losses import LOSSES, LossOutput, teacher_forced_exact_match
from scratchformer.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, decay_groups, lr_at, param_groups
from scratchformer.train.run import Run, build_model, load_run
from scratchformer.train.trainer import NonFiniteLossError, TrainResult, evaluate_split, train

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
    "teacher_forced_exact_match",
    "train",
]
