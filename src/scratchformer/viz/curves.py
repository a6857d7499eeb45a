"""Training curves from ``metrics.jsonl``: loss, accuracy and learning rate, several runs overlaid.

Each run keeps one colour; training lines are solid, evaluation lines dashed
with markers. A panel appears only when some run logged its quantity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from .figure import new_figure, save_png

#: Accuracy-like keys, in the order a panel prefers them.
ACCURACY_KEYS = ("accuracy", "exact_match", "token_accuracy")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (a truncated last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} has no metrics.jsonl; is it a run directory written by `scratchformer train`?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves at most one partial line
    return records


def _series(records: list[dict[str, Any]], event: str, key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in records if r.get("event") == event and isinstance(r.get(key), (int, float))]
    return [r["step"] for r in rows], [float(r[key]) for r in rows]


def plot_curves(runs: Sequence[str | os.PathLike], path: str | os.PathLike, labels: Sequence[str] | None = None,
                title: str = "") -> Path:
    """Draw loss, accuracy and learning rate against the step for every run in ``runs``.

    Args:
        runs: run directories, each with a ``metrics.jsonl``.
        path: the PNG to write.
        labels: legend names (default: the directories' names).
    Returns:
        the written path.
    """
    if not runs:
        raise ConfigError("plot_curves needs at least one run directory")
    labels = list(labels) if labels is not None else [Path(r).name or str(r) for r in runs]
    if len(labels) != len(runs):
        raise ConfigError(f"{len(labels)} labels for {len(runs)} runs")
    data = [read_metrics(r) for r in runs]
    panels = []
    if any(_series(d, "train", "loss")[0] for d in data):
        panels.append("loss")
    if any(_series(d, e, k)[0] for d in data for e in ("train", "eval") for k in ACCURACY_KEYS):
        panels.append("accuracy")
    if any(_series(d, "train", "lr")[0] for d in data):
        panels.append("learning rate")
    if not panels:
        raise CheckpointError(f"no training records in {[str(r) for r in runs]}: nothing to draw")
    fig = new_figure(7.5, 2.8 * len(panels))
    axes = {name: fig.add_subplot(len(panels), 1, i + 1) for i, name in enumerate(panels)}
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for records, label, color in zip(data, labels, colors):
        if "loss" in axes:
            axes["loss"].plot(*_series(records, "train", "loss"), color=color, label=f"{label} train")
            steps, values = _series(records, "eval", "loss")
            if steps:
                axes["loss"].plot(steps, values, color=color, ls="--", marker="o", ms=3, label=f"{label} eval")
        if "accuracy" in axes:
            for event, style in (("train", {}), ("eval", {"ls": "--", "marker": "o", "ms": 3})):
                for key in ACCURACY_KEYS:
                    steps, values = _series(records, event, key)
                    if steps:
                        axes["accuracy"].plot(steps, values, color=color, label=f"{label} {event} {key.replace('_', ' ')}",
                                              **style)
                        break
        if "learning rate" in axes:
            axes["learning rate"].plot(*_series(records, "train", "lr"), color=color, label=label)
    for name, ax in axes.items():
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    if "loss" in axes:
        axes["loss"].set_yscale("log")
    if "accuracy" in axes:
        axes["accuracy"].set_ylim(-0.02, 1.02)
    axes[panels[-1]].set_xlabel("step")
    if title:
        axes[panels[0]].set_title(title)
    return save_png(fig, path)


__all__ = ["ACCURACY_KEYS", "plot_curves", "read_metrics"]
