"""Length generalisation of addition: the inference-time knobs, per-length evaluation, the report.

A *method* is one variant of the ``addition-lengthgen`` experiment
(``experiments/addition-lengthgen.toml``): a format of ``tasks/lengthgen.py``
and a positional encoding, chosen by config. Every trained run is then
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
from .evaluate import teacher_forced_exact_match
from .losses import lm_loss

logger = logging.getLogger(__name__)

TEMPERATURES: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
"""Attention-logit temperatures tried on the validation split."""


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


# ---------------------------------------------------------------------- the experiment's evaluations
RUN_FILE = "lengthgen.json"
"""Each run's :func:`evaluate_run_lengths` result, written next to its weights for the report."""


def run_outcome(run_dir: Any, trainer_results: dict[str, Any], headline: str = "best+temp",
                temperatures: Sequence[float] = TEMPERATURES) -> dict[str, float]:
    """Metrics of one run for the experiment runner (see ``experiments/evaluations.py``).

    Metrics: ``in-dist`` and ``<n> digits`` under the ``headline`` knob, the
    chosen temperature, training steps and training CPU seconds. Every knob's
    figures go to the run's ``lengthgen.json``, which :func:`length_tables`
    reads for the report.
    """
    from pathlib import Path

    from .io import save_json

    if headline not in KNOBS:
        raise unknown_name("knob", headline, KNOBS)
    res = evaluate_run_lengths(run_dir, temperatures)
    save_json(Path(run_dir) / RUN_FILE, res)
    metrics = {"in-dist": res["in_dist"].get(headline, float("nan"))}
    metrics.update({f"{n} digits": v for n, v in res["by_length"][headline].items()})
    metrics["temperature"] = res["temperature"]
    metrics["steps"] = float(trainer_results.get("step", float("nan")))
    metrics["training CPU s"] = float(trainer_results.get("cpu_s", float("nan")))
    return metrics


def plot_lengths(series: dict[str, dict[int, list[float]]], train_max: int, path: Any, title: str) -> None:
    """One line per method (median over seeds) with its min–max band; the training range shaded.

    ``series``: method -> {operand length: [exact match of each seed]}.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from matplotlib import colormaps

    fig = Figure(figsize=(9.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axvspan(0.5, train_max + 0.5, color="0.9", label=f"training lengths 1..{train_max}")
    colours = colormaps["tab20"].colors  # 20 distinct colours; the line style changes every 20 methods
    for i, (method, points) in enumerate(series.items()):
        xs = sorted(points)
        med = [100 * float(np.median(points[x])) for x in xs]
        line = ax.plot(xs, med, marker="o", ms=3, label=method, color=colours[(2 * i) % 20 + (2 * i) // 20 % 2],
                       ls=("-", "--", ":")[i // 20 % 3])[0]
        if any(len(points[x]) > 1 for x in xs):
            ax.fill_between(xs, [100 * min(points[x]) for x in xs], [100 * max(points[x]) for x in xs],
                            color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("operand length (digits, both operands)")
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the lines
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def length_tables(run_dirs: dict[str, Any], knob: str = "best+temp") -> tuple[str, dict[str, dict[int, list[float]]]]:
    """A markdown table (median [min–max] per length, per variant) from each run's ``lengthgen.json``,
    and the per-seed values behind it. ``run_dirs``: "variant/seedK" -> run directory."""
    import json
    from pathlib import Path

    series: dict[str, dict[int, list[float]]] = {}
    for key, run_dir in run_dirs.items():
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            continue
        variant = key.rsplit("/", 1)[0]
        res = json.loads(path.read_text(encoding="utf-8"))
        for n, v in res["by_length"][knob].items():
            series.setdefault(variant, {}).setdefault(int(n), []).append(float(v))
    lengths = sorted({n for points in series.values() for n in points})

    def cell(values: list[float]) -> str:
        med = 100 * float(np.median(values))
        if len(values) > 1 and min(values) != max(values):
            return f"{med:.1f} [{100 * min(values):.1f}–{100 * max(values):.1f}]"
        return f"{med:.1f}"

    header = ["method", "seeds", *(f"{n}" for n in lengths)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, points in series.items():
        seeds = max(len(v) for v in points.values())
        rows.append("| " + " | ".join([f"`{variant}`", str(seeds), *(cell(points[n]) if n in points else "–"
                                                                       for n in lengths)]) + " |")
    return "\n".join(rows), series
