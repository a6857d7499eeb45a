"""Length generalisation of addition: the methods, the inference-time knobs, per-length evaluation.

A *method* is a small registry entry (:data:`METHODS`): the overrides that
turn the base run config into that method (a format of
``tasks/lengthgen.py`` and a positional encoding). Every trained run is then
scored three ways, cheapest knobs last:

- ``last``: the final weights;
- ``best``: the weights best on the validation length (just past training),
  kept by the trainer as ``best.safetensors``;
- ``best+temp``: those weights with the attention-logit temperature chosen
  on the same validation length (:func:`with_attention_temperature`).

Legend: B batch, T length, C model width.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import unknown_name
from .tasks.base import Task
from .train.losses import lm_loss, teacher_forced_exact_match

logger = logging.getLogger(__name__)

BASELINE_POSITIONS = {"learned": "learned", "sinusoidal": "sinusoidal", "rope": "rope", "alibi": "alibi", "nope": "none"}

METHODS: dict[str, dict[str, Any]] = {
    **{
        f"{name}-{fmt}": {"task.format": fmt, "model.positional": positional}
        for name, positional in BASELINE_POSITIONS.items()
        for fmt in ("plain", "reversed")
    },
    "coupled": {"task.format": "coupled", "model.positional": "place", "model.positional_options": {"max_offset": 60}},
    "abacus": {"task.format": "abacus", "model.positional": "place", "model.positional_options": {"max_offset": 60}},
    "hints-nope": {"task.format": "hints", "model.positional": "none"},
    "hints-rope": {"task.format": "hints", "model.positional": "rope"},
}
"""Method name -> dotted config overrides. Baselines: ``<positions>-<plain|reversed>``."""

TEMPERATURES: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
"""Attention-logit temperatures tried on the validation split."""


def method_overrides(name: str) -> dict[str, Any]:
    if name not in METHODS:
        raise unknown_name("length-generalisation method", name, METHODS)
    return copy.deepcopy(METHODS[name])


def apply_dotted(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with ``{"section.key": value}`` overrides set."""
    out = copy.deepcopy(config)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})[key] = value
    return out


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def exact_match_by_length(model: nn.Module, task: Task, split: str, batch_size: int = 256) -> dict[int, float]:
    """Greedy-decoding exact match of ``split``, per problem length (the batch's ``lengths``).

    One teacher-forced pass per batch gives the greedy result exactly (see
    ``teacher_forced_exact_match``); rows are batched by length, so long
    problems never pad short ones.
    """
    ds = task.dataset(split)
    lengths = task.example_lengths(split)
    was_training = model.training
    model.eval()
    out: dict[int, float] = {}
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        correct = 0
        for start in range(0, len(rows), batch_size):
            batch = task.collate([ds[int(i)] for i in rows[start : start + batch_size]])
            res = lm_loss(model, batch)
            correct += int(teacher_forced_exact_match(res.logits, res.targets).sum())
        out[int(n)] = correct / len(rows)
    model.train(was_training)
    return out


def with_attention_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """A copy of ``model`` whose attention logits are divided by ``temperature``.

    softmax(q.k / sqrt(D) / tau): the query projection (weights and bias) is
    scaled by 1 / tau, which scales every content logit and nothing else.
    Rotary positions rotate q linearly, so they commute with the scaling; an
    additive ALiBi bias is left unscaled. Temperature < 1 sharpens attention,
    which helps when longer inputs spread it over more keys.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    hot = copy.deepcopy(model)
    for module in hot.modules():
        proj = getattr(module, "in_proj", None)
        if proj is None or not hasattr(module, "n_head"):
            continue
        C = proj.weight.size(1)
        with torch.no_grad():
            proj.weight[:C] /= temperature  # rows of q in the fused (3C, C) projection
            if proj.bias is not None:
                proj.bias[:C] /= temperature
    return hot


def choose_temperature(
    model: nn.Module, task: Task, split: str = "val", temperatures: Sequence[float] = TEMPERATURES
) -> tuple[float, dict[float, float]]:
    """The temperature with the best mean exact match on ``split`` (ties: closest to 1), and every score."""
    scores = {}
    for tau in temperatures:
        by_length = exact_match_by_length(with_attention_temperature(model, tau), task, split)
        scores[tau] = float(np.mean(list(by_length.values())))
    best = max(scores, key=lambda t: (scores[t], -abs(t - 1.0)))
    return best, scores


# ---------------------------------------------------------------------- answering a user's problem
@torch.no_grad()
def greedy_answer(model: nn.Module, task_config: dict[str, Any], tokenizer: Any, text: str) -> dict[str, str]:
    """Solve ``"123+456="`` (ordinary numbers) with a run of ``addition_lengthgen``.

    The problem is written in the run's format (reversed, place ids, hints),
    decoded greedily token by token (place-value formats give each new token
    its id), and the model's answer read back as an ordinary number.

    Returns:
        {"prompt": the model's prompt, "raw": what the model wrote,
         "answer": the sum it means (or "?" when unreadable)}.
    """
    from .tasks.lengthgen import EOS, context_length, get_format, parse_user_problem

    fmt = get_format(task_config.get("format", "coupled"))
    a, b = parse_user_problem(text)
    enc = fmt.encode(a, b)
    prompt = list(enc.tokens[: enc.prompt_length])
    ids = [tokenizer.token_to_id(t) for t in prompt]
    place = list(fmt.prompt_position_ids(a, b)) if fmt.place_ids else None
    limit = getattr(getattr(model, "config", None), "max_len", None)
    needed = context_length(fmt, max(len(a), len(b)))
    if limit is not None and needed > limit:
        raise ValueError(f"{len(a)}- and {len(b)}-digit operands need {needed} tokens; this model holds {limit}")
    per_digit = 2 if fmt.hints else 1
    eos = tokenizer.token_to_id(EOS)
    written: list[int] = []
    for k in range(per_digit * (max(len(a), len(b)) + 1) + 1):
        x = torch.tensor([ids + written])
        positions = None
        if place is not None:
            positions = torch.tensor([place + [fmt.answer_position_id(j) for j in range(len(written))]])
        logits = model(x, None, positions)  # (1, T, V)
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        written.append(token)
    raw = tokenizer.decode(written)
    answer = fmt.read_answer(raw)
    return {"prompt": "".join(prompt[1:]), "raw": raw, "answer": "?" if answer is None else answer}


# ---------------------------------------------------------------------- one run, every knob
KNOBS = ("last", "best", "best+temp")
"""How a run is scored: final weights; weights best on the validation length; those with the chosen temperature."""


def evaluate_run_lengths(run_dir: Any, temperatures: Sequence[float] = TEMPERATURES, test_split: str = "test",
                         val_split: str = "val", in_dist_split: str = "in_dist") -> dict[str, Any]:
    """Exact match by operand length of one ``addition_lengthgen`` run under each of :data:`KNOBS`.

    Returns:
        {"by_length": {knob: {length: exact match}}, "in_dist": {knob: exact match},
         "val": {knob: exact match}, "temperature": the chosen one, "temperature_scores": {tau: val score}}.
        Without ``best.safetensors`` the "best" knobs use the final weights.
    """
    from pathlib import Path

    from .train.run import load_run

    run = load_run(run_dir)
    task = run.build_task()
    best_path = Path(run_dir) / "best.safetensors"
    best = load_run(run_dir, weights="best").model if best_path.is_file() else run.model
    tau, scores = choose_temperature(best, task, val_split, temperatures)
    models = {"last": run.model, "best": best, "best+temp": with_attention_temperature(best, tau)}
    out: dict[str, Any] = {"by_length": {}, "in_dist": {}, "val": {}, "temperature": tau,
                           "temperature_scores": scores}
    for knob, model in models.items():
        out["by_length"][knob] = exact_match_by_length(model, task, test_split)
        for name, split in (("in_dist", in_dist_split), ("val", val_split)):
            if split in task.split_names:
                table = exact_match_by_length(model, task, split)
                counts = np.bincount(task.example_lengths(split))
                out[name][knob] = float(sum(v * counts[n] for n, v in table.items()) / counts.sum())
    return out
