"""Checks of what a model is given, shared by the models and by ``generate``: one check per input,
one error type (:class:`~scratchformer.errors.DataError`, a ``ValueError``), raised before any work.

Legend: B batch, T length, S key length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import DataError

ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
"""Integer dtypes token ids may come in."""


def check_ids(ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """DataError unless ``ids`` is a (B, T) integer tensor with every id in [0, vocab_size).

    One pass over the ids (``aminmax``). The values are not read inside
    ``torch.compile``, where that would break the graph (the embedding lookup
    still fails on a bad id there, with torch's less specific message).
    """
    if not isinstance(ids, Tensor) or ids.dtype not in ID_DTYPES:
        raise DataError(f"{name} must be an integer tensor of token ids, got {type(ids).__name__} {getattr(ids, 'dtype', '')}")
    if ids.dim() != 2:
        raise DataError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}; use ids[None] for one sequence")
    if ids.numel() == 0 or torch.compiler.is_compiling():
        return
    lo, hi = (int(v) for v in torch.aminmax(ids))
    if lo < 0 or hi >= vocab_size:
        raise DataError(f"{name} contains token id {hi if hi >= vocab_size else lo}, outside the vocabulary [0, {vocab_size})")


def check_length(S: int, max_len: int) -> None:
    """DataError unless a sequence of S positions fits the model's learned or tabulated positions."""
    if S > max_len:
        raise DataError(
            f"sequence length {S} exceeds the model's max_len={max_len}; "
            f"shorten the input or build the model with a larger max_len"
        )


def check_mask(mask: Tensor | None, B: int, S: int, name: str) -> None:
    """DataError unless ``mask`` is None or (B, S), one entry per key position."""
    if mask is not None and tuple(mask.shape) != (B, S):
        raise DataError(f"{name} must have shape ({B}, {S}) to cover every key position, got {tuple(mask.shape)}")


def drop_full_mask(mask: Tensor | None) -> Tensor | None:
    """``None`` when the (B, S) padding mask marks every position real, else ``mask``.

    Masking nothing is the same as having no mask, and without one causal
    self-attention takes SDPA's ``is_causal`` kernel instead of building and
    applying a (B, 1, T, S) boolean mask. On a GPU the test costs one host sync,
    and under ``torch.compile`` one graph break.
    """
    if mask is not None and bool(mask.all()):
        return None
    return mask
