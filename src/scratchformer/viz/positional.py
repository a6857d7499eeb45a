"""Pictures of positional encodings.

For a scheme with a table (``sinusoidal``, ``sinusoidal_xl``, or a run's
``learned`` positions) ``plot_positional_table`` draws the tutorials' two
plots: the table as a heatmap (position x dimension) and its first
dimensions as waves along the positions. RoPE has no table to add; what it
changes is the attention score, which ``plot_rope_scores`` shows: the score
of one query and key vector placed at every pair of positions, a pattern
that depends only on the offset between them.

Legend: L positions, C model width, D head width.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..nn.attention import apply_rotary
from ..nn.positional import RotaryPositions, build_positional
from .figure import new_figure, save_png

#: Schemes drawn from their own definition (no run needed).
TABLE_SCHEMES = ("sinusoidal", "sinusoidal_xl")
#: Every name ``scratchformer viz positional`` accepts besides a run directory.
PLOTTABLE = (*TABLE_SCHEMES, "rope")


def positional_table(name: str, length: int, d_model: int, **options) -> Tensor:
    """The (L, C) table a fixed scheme adds to the token embeddings of a length-L sequence.

    For ``sinusoidal_xl`` it is the table of a sequence of exactly ``length``
    positions (its rows depend on the length).
    """
    if name not in TABLE_SCHEMES:
        raise ConfigError(f"positional scheme {name!r} has no fixed table; tables exist for {list(TABLE_SCHEMES)}")
    pe = build_positional(name, d_model=d_model, n_head=1, max_len=length, **options)
    x = torch.zeros(1, length, d_model)
    return pe.embed(x, torch.arange(length))[0]  # (L, C)


def plot_positional_table(table: Tensor, path: str | os.PathLike, title: str, n_waves: int = 4) -> Path:
    """Heatmap of ``table`` (L, C) and its first ``n_waves`` dimensions as curves over the positions."""
    table = table.detach().float().cpu()
    L, C = table.shape
    fig = new_figure(10, 8)
    ax = fig.add_subplot(2, 1, 1)
    mesh = ax.pcolormesh(table.numpy(), cmap="RdBu", vmin=-float(table.abs().max()), vmax=float(table.abs().max()))
    ax.set_xlabel("dimension")
    ax.set_ylabel("position")
    ax.set_title(title)
    fig.colorbar(mesh, ax=ax)
    ax = fig.add_subplot(2, 1, 2)
    for d in range(min(n_waves, C)):
        ax.plot(table[:, d].numpy(), label=f"dimension {d}")
    ax.set_xlabel("position")
    ax.set_ylabel("value")
    ax.set_title(f"the first {min(n_waves, C)} dimensions")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True, alpha=0.3)
    return save_png(fig, path)


def rope_scores(length: int, head_dim: int, base: float = 10000.0) -> Tensor:
    """Scores (L, L) of the all-ones query at position m against the all-ones key at position n, after rotation.

    RoPE makes this a function of m - n alone (the matrix is constant along
    each diagonal). Scaled by 1/D, so the score at offset 0 is 1.
    """
    rope = RotaryPositions(d_model=head_dim, n_head=1, max_len=length, base=base)
    cos, sin = rope.rotary(0, length, torch.device("cpu"))  # 2 x (L, D)
    ones = torch.ones(1, 1, length, head_dim)  # (B=1, H=1, L, D)
    q = apply_rotary(ones, cos, sin)[0, 0]  # (L, D)
    return q @ q.T / head_dim  # (L, L)


def plot_rope_scores(path: str | os.PathLike, length: int = 64, head_dim: int = 32, base: float = 10000.0) -> Path:
    """Heatmap of ``rope_scores`` and the score as a function of the relative offset."""
    scores = rope_scores(length, head_dim, base)
    fig = new_figure(10, 8)
    ax = fig.add_subplot(2, 1, 1)
    mesh = ax.pcolormesh(scores.numpy(), cmap="RdBu", vmin=-1.0, vmax=1.0)
    ax.invert_yaxis()
    ax.set_xlabel("key position n")
    ax.set_ylabel("query position m")
    ax.set_title(f"RoPE: score of one query and key at every pair of positions (D={head_dim}, base={base:g})")
    fig.colorbar(mesh, ax=ax)
    ax = fig.add_subplot(2, 1, 2)
    offsets = torch.arange(length)
    ax.plot(offsets.numpy(), scores[length - 1, length - 1 - offsets].numpy(), marker=".")
    ax.set_xlabel("relative offset m - n")
    ax.set_ylabel("score")
    ax.set_title("the same score against the offset alone")
    ax.grid(True, alpha=0.3)
    return save_png(fig, path)


def learned_table(model: torch.nn.Module) -> Tensor:
    """The (max_len, C) learned position table of a model (its first ``Embedder``)."""
    from ..nn.positional import LearnedPositions

    for module in model.modules():
        if isinstance(module, LearnedPositions):
            return module.weight.detach()
    raise ConfigError("this model has no learned positions (model.positional is not 'learned'); nothing to draw")


__all__ = [
    "PLOTTABLE",
    "TABLE_SCHEMES",
    "learned_table",
    "plot_positional_table",
    "plot_rope_scores",
    "positional_table",
    "rope_scores",
]
