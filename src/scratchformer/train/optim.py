"""Optimizers with weight-decay parameter groups, and learning-rate schedules, by name.

Schedules are pure functions ``multiplier(step, ...)`` of the 1-based update
number: the ``step``-th optimizer update uses ``lr * multiplier(step)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, unknown_name


# ---------------------------------------------------------------------- parameter groups
def decay_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """Split parameter names into (decayed, not decayed).

    The rule (the GPT tutorial's ``create_optimizer``): the ``weight`` of an
    ``nn.Linear`` is decayed; biases, norm weights, embeddings and positional
    tables are not. A weight shared between a Linear and an Embedding (tied
    input/output embeddings) counts once, as an embedding, under the name
    ``model.named_parameters()`` gives it. Every parameter lands in exactly
    one list; both lists are sorted.
    """
    names = {id(p): n for n, p in model.named_parameters()}  # de-duplicated: tied weights once
    linear_weights: set[int] = set()
    embedding_weights: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            linear_weights.add(id(module.weight))
        elif isinstance(module, nn.Embedding):
            embedding_weights.add(id(module.weight))
    decay = sorted(names[i] for i in names if i in linear_weights and i not in embedding_weights)
    no_decay = sorted(names[i] for i in names if i not in linear_weights or i in embedding_weights)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: decayed Linear weights, then everything else with decay 0."""
    params = dict(model.named_parameters())
    decay, no_decay = decay_groups(model)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay, "names": decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "names": no_decay},
    ]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------- optimizers
def _fused_supported(model: nn.Module) -> bool:
    """torch's fused AdamW (one kernel for every parameter): floating parameters on the CPU or CUDA."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


def _adamw(model: nn.Module, lr: float, weight_decay: float, **options: Any) -> torch.optim.Optimizer:
    options.setdefault("betas", (0.9, 0.95))
    options.setdefault("fused", _fused_supported(model))
    return torch.optim.AdamW(_strip_names(param_groups(model, weight_decay)), lr=lr, **options)


def _adam2017(model: nn.Module, lr: float, weight_decay: float, **options: Any) -> torch.optim.Optimizer:
    """Adam with the settings of "Attention Is All You Need": betas (0.9, 0.98), eps 1e-9, no decay."""
    options.setdefault("betas", (0.9, 0.98))
    options.setdefault("eps", 1e-9)
    return torch.optim.Adam(model.parameters(), lr=lr, **options)


def _adam(model: nn.Module, lr: float, weight_decay: float, **options: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **options)


def _sgd(model: nn.Module, lr: float, weight_decay: float, **options: Any) -> torch.optim.Optimizer:
    """Plain SGD (the regression warm-up); ``momentum`` via optimizer_options."""
    return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay, **options)


def _strip_names(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "names"} for g in groups]


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adam2017": _adam2017,
    "adam": _adam,
    "sgd": _sgd,
}
"""Optimizer factories ``f(model, lr, weight_decay, **options)`` by name."""


def build_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float = 0.0, **options: Any
) -> torch.optim.Optimizer:
    """The optimizer registered as ``name`` over ``model``'s parameters.

    Raises:
        ConfigError: unknown name (did-you-mean) or an option the optimizer rejects.
    """
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    options = {k: tuple(v) if k == "betas" else v for k, v in options.items()}
    try:
        return OPTIMIZERS[name](model, lr, weight_decay, **options)
    except TypeError as e:
        raise ConfigError(f"optimizer {name!r} rejected train.optimizer_options={options}: {e}") from None


# ---------------------------------------------------------------------- schedules
def constant(step: int, **_: Any) -> float:
    """1 at every step."""
    return 1.0


def noam(step: int, *, d_model: int, warmup_steps: int, **_: Any) -> float:
    """``d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)`` (the 2017 paper); peaks at ``step = warmup``.

    Multiplies ``train.lr``, which plays the paper's role of a constant factor
    (1.0 reproduces the paper).
    """
    if step < 1:
        raise ValueError(f"noam is defined for steps >= 1, got {step}")
    warmup = max(warmup_steps, 1)
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def cosine(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float, **_: Any) -> float:
    """Linear warm-up from ``1/warmup`` to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``
    at ``total_steps`` (and flat after)."""
    if step <= warmup_steps:
        return step / warmup_steps if warmup_steps else 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_warmup(step: int, *, warmup_steps: int, **_: Any) -> float:
    """Linear warm-up, then constant."""
    return min(1.0, step / warmup_steps) if warmup_steps else 1.0


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant,
    "noam": noam,
    "cosine": cosine,
    "warmup": linear_warmup,
}
"""LR multipliers by name: ``f(step, total_steps=, warmup_steps=, min_lr_ratio=, d_model=)``."""


def lr_at(
    name: str,
    step: int,
    lr: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    d_model: int | None = None,
) -> float:
    """The learning rate of the ``step``-th (1-based) update under schedule ``name``."""
    if name not in SCHEDULES:
        raise unknown_name("schedule", name, SCHEDULES)
    if name == "noam" and d_model is None:
        raise ConfigError("schedule 'noam' needs the model width d_model; this model has none (use 'cosine')")
    return lr * SCHEDULES[name](
        step, total_steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, d_model=d_model
    )
