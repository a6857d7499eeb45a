"""Losses, as pure functions of (model, batch), keyed by ``task.kind``; the trainer and the evaluator share them.

Every loss returns a :class:`LossOutput` holding the *sum* of per-target
losses and the number of targets, not a mean: the trainer divides by the
count of targets in the whole global batch, so gradient accumulation and
data parallelism give exactly the update of one big batch even when
micro-batches hold different numbers of target tokens.

B batch, T length, V vocabulary, K classes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, unknown_name
from .tasks.base import IGNORE_INDEX, Batch


@dataclass
class LossOutput:
    """What a loss function returns.

    Attributes:
        loss_sum: scalar, differentiable: sum of the per-target losses.
        count: scalar long: how many targets were scored.
        logits: the model output the loss was computed from, aligned with
            ``targets``: (B, T, V) with (B, T) targets for token tasks, (B, K)
            with (B,) for classification, (B,) with (B,) for regression.
        targets: see ``logits``.
    """

    loss_sum: Tensor
    count: Tensor
    logits: Tensor
    targets: Tensor


def _token_ce(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> LossOutput:
    loss_sum = F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return LossOutput(loss_sum, (targets != IGNORE_INDEX).sum(), logits, targets)


# ``label_smoothing`` (epsilon): the target distribution puts 1 - epsilon on the
# label and spreads epsilon uniformly over all V classes (torch's definition).
# The trainer smooths only the training loss; evaluation reports the plain
# cross-entropy, so validation losses stay comparable across settings.
def lm_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> LossOutput:
    """Next-token cross-entropy: position t predicts ``labels[:, t + 1]``; -100 is ignored.
    A task's ``position_ids`` (place-value formats), when present, go to the model."""
    if "position_ids" in batch:
        logits = model(batch["input_ids"], batch.get("attention_mask"), batch["position_ids"])  # (B, T, V)
    else:
        logits = model(batch["input_ids"], batch.get("attention_mask"))  # (B, T, V)
    return _token_ce(logits[:, :-1], batch["labels"][:, 1:], label_smoothing)


def seq2seq_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> LossOutput:
    """Target cross-entropy; the model shifts ``labels`` right itself, so position t predicts ``labels[:, t]``."""
    logits = model(
        batch["encoder_input_ids"],
        labels=batch["labels"],
        encoder_attention_mask=batch.get("encoder_attention_mask"),
    )  # (B, T, V)
    return _token_ce(logits, batch["labels"], label_smoothing)


def classification_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> LossOutput:
    """Cross-entropy of one class per example."""
    logits = model(batch["input_ids"], batch.get("attention_mask"))  # (B, K)
    labels = batch["labels"]
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=label_smoothing)
    return LossOutput(loss_sum, torch.tensor(labels.numel(), device=labels.device), logits, labels)


def regression_loss(model: nn.Module, batch: Batch) -> LossOutput:
    """Squared error (the trainer's normalisation makes it the MSE)."""
    pred = model(batch["inputs"]).squeeze(-1)  # (B,)
    targets = batch["targets"]
    loss_sum = F.mse_loss(pred.float(), targets, reduction="sum")
    return LossOutput(loss_sum, torch.tensor(targets.numel(), device=targets.device), pred, targets)


LOSSES: dict[str, Callable[[nn.Module, Batch], LossOutput]] = {
    "lm": lm_loss,
    "seq2seq": seq2seq_loss,
    "classification": classification_loss,
    "regression": regression_loss,
}
"""Loss function of each task kind."""


def loss_for(kind: str, label_smoothing: float = 0.0) -> Callable[[nn.Module, Batch], LossOutput]:
    """The loss of task kind ``kind``; with ``label_smoothing`` > 0, its smoothed form.

    Raises:
        ConfigError: label smoothing for a kind without classes (regression).
    """
    if kind not in LOSSES:
        raise unknown_name("task kind", kind, LOSSES)
    if not label_smoothing:
        return LOSSES[kind]
    if kind == "regression":
        raise ConfigError(f"train.label_smoothing={label_smoothing} needs classes; a regression task has none (use 0)")
    return functools.partial(LOSSES[kind], label_smoothing=label_smoothing)


def target_count(kind: str, batch: Batch) -> int:
    """How many targets ``batch`` holds (what its loss_sum sums over), without running the model."""
    if kind == "lm":
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    if kind == "seq2seq":
        return int((batch["labels"] != IGNORE_INDEX).sum())
    if kind == "classification":
        return int(batch["labels"].numel())
    if kind == "regression":
        return int(batch["targets"].numel())
    raise unknown_name("task kind", kind, LOSSES)


def batch_tokens(batch: Batch) -> int:
    """Real (non-padding) tokens a batch feeds the model, for tokens/s; examples for feature inputs."""
    n = 0
    if "attention_mask" in batch:
        n += int(batch["attention_mask"].sum())
    elif "input_ids" in batch:
        n += batch["input_ids"].numel()
    if "encoder_attention_mask" in batch:  # seq2seq: source tokens plus target tokens
        n += int(batch["encoder_attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())
    return n or int(next(iter(batch.values())).shape[0])


#: The accuracy the trainer logs while training, by task kind (kinds without one are absent).
TRAIN_ACCURACY_KEY = {"lm": "token_accuracy", "seq2seq": "token_accuracy", "classification": "accuracy"}


def correct_predictions(kind: str, out: LossOutput) -> Tensor | None:
    """How many of the batch's scored targets the argmax predicts (a scalar tensor, left on the
    device), for the training accuracy; None for a kind without accuracy (regression)."""
    if kind not in TRAIN_ACCURACY_KEY:
        return None
    pred = out.logits.detach().argmax(-1)
    return ((pred == out.targets) & (out.targets != IGNORE_INDEX)).sum()
