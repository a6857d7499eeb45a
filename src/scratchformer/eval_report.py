"""A run directory's evaluation report: ``scratchformer eval``'s ``eval.json`` and accuracy-by-length plot.

The last stage of the data flow: it loads a finished run
(:func:`scratchformer.train.load_run`), evaluates it with
:mod:`scratchformer.evaluate` and writes what it found into the run
directory. :mod:`scratchformer.evaluate` itself knows nothing of runs, so
the trainer can call it without a cycle.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .io import load_json, save_json
from .errors import CheckpointError, ConfigError
from .evaluate import LengthTable, evaluate_by_length, evaluate_split
from .train.run import load_run
from .viz.lengths import plot_accuracy_by_length

log = logging.getLogger(__name__)


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    split: str | None = None,
    weights: str = "model",
    batch_size: int = 256,
    max_per_length: int | None = None,
    compare: Iterable[str | os.PathLike] = (),
    teacher_forced: bool = True,
    **generate_options: Any,
) -> dict[str, Any]:
    """Evaluate a run directory and write ``eval.json`` and ``plots/accuracy_by_length.png`` into it.

    Args:
        run_dir: a directory written by the trainer (config.json, weights, tokenizer.json).
        split: the split to evaluate (default "test" if the task has it, else its last split).
        weights: "model", "best" or a weights path (see ``scratchformer.train.load_run``).
        max_per_length: cap on problems per length (None: all).
        compare: other run directories whose ``eval.json`` tables join the plot as extra lines.
        teacher_forced: also compute the teacher-forced split metrics (loss, token accuracy, ...).
        **generate_options: decoding options for :func:`~scratchformer.evaluate.evaluate_by_length`.
    Returns:
        the dict written to eval.json: ``run``, ``task``, ``split``, ``metrics``
        (teacher-forced), ``by_length`` (a LengthTable dict or None) and ``plot``.
    """
    run = load_run(run_dir, weights=weights)
    task = run.build_task()
    if split is None:
        split = "test" if "test" in task.split_names else task.split_names[-1]
    task.check_split(split)
    name = getattr(run.config, "name", None) or Path(run_dir).name
    result: dict[str, Any] = {"run": name, "task": task.name, "split": split, "weights": str(run.weights)}
    if teacher_forced:
        result["metrics"] = evaluate_split(run.model, task, split, batch_size=batch_size)
    table = None
    try:
        table = evaluate_by_length(
            run.model, task, split, tokenizer=run.tokenizer or task.tokenizer, batch_size=batch_size,
            max_per_length=max_per_length, label=name, **generate_options,
        )  # fmt: skip
    except ConfigError as e:
        log.info("no accuracy-by-length table for %s: %s", name, e)
    result["by_length"] = table.to_dict() if table is not None else None
    result["plot"] = None
    if table is not None:
        tables = {name: table}
        for other in compare:
            other_table = _read_table(other)
            tables[other_table.label or Path(other).name] = other_table
        plot = Path(run_dir) / "plots" / "accuracy_by_length.png"
        plot_accuracy_by_length(tables, plot, title=f"{task.name} ({split})")
        result["plot"] = str(plot.relative_to(run_dir))
    save_json(Path(run_dir) / "eval.json", _json_safe(result))
    return result


def _read_table(run_dir: str | os.PathLike) -> LengthTable:
    path = Path(run_dir) / "eval.json"
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist; run evaluate_run on {str(run_dir)!r} first")
    data = load_json(path)
    if not data.get("by_length"):
        raise CheckpointError(f"{str(path)!r} has no accuracy-by-length table to compare")
    table = LengthTable.from_dict(data["by_length"])
    table.label = table.label or data.get("run", "") or Path(run_dir).name
    return table


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, keys -> str, recursively."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


__all__ = ["evaluate_run"]
