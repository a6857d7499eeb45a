"""One way to make and save a figure: matplotlib's Agg backend without pyplot
(no display, no global state), written as PNG atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..io import atomic_write_bytes


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` drawn by the Agg backend (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created, atomic); returns the path."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
