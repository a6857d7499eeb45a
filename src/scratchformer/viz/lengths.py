"""Accuracy against problem length: one line per run, training lengths shaded.

``plot_accuracy_by_length(tables, path)`` draws the per-length tables of
:func:`scratchformer.evaluate.evaluate_by_length` (``LengthTable`` objects or
their ``to_dict()`` form) on one figure, as the tutorial compares experiments,
and writes a PNG atomically. Matplotlib runs on the non-interactive Agg
backend (no pyplot, no display).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes
from ..errors import ConfigError

METRICS = ("exact_match", "token_accuracy")


def _rows(table: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows as dicts, training lengths) from a LengthTable or its dict."""
    data = table.to_dict() if hasattr(table, "to_dict") else table
    try:
        return list(data["rows"]), list(data.get("train_lengths", []))
    except (KeyError, TypeError):
        kind = type(table).__name__
        raise ConfigError(f"expected an accuracy-by-length table (LengthTable or its dict), got {kind}") from None


def plot_accuracy_by_length(
    tables: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    metric: str = "exact_match",
    title: str = "",
) -> Path:
    """Draw accuracy (y, 0..1) against length (x), one marked line per entry of ``tables``.

    Args:
        tables: run label -> LengthTable (or its dict); at least one.
        path: the PNG to write (parent directories are created).
        metric: "exact_match" or "token_accuracy".
        title: figure title.
    Returns:
        the written path. The lengths the first table trained on are shaded,
        so in- and out-of-distribution lengths are told apart at a glance.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} must be one of {list(METRICS)}")
    if not tables:
        raise ConfigError("plot_accuracy_by_length needs at least one table")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    ax = fig.add_subplot(1, 1, 1)
    shaded = False
    for label, table in tables.items():
        rows, trained = _rows(table)
        rows = sorted(rows, key=lambda r: r["length"])
        xs = [r["length"] for r in rows]
        ys = [r[metric] if r[metric] is not None else float("nan") for r in rows]
        ax.plot(xs, ys, marker="o", label=str(label))
        if trained and not shaded:
            ax.axvspan(min(trained) - 0.5, max(trained) + 0.5, color="0.9", zorder=0, label="training lengths")
            shaded = True
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("problem length")
    ax.set_ylabel(metric.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


__all__ = ["METRICS", "plot_accuracy_by_length"]
