"""Attention masks, all in one place.

Convention: a mask is a boolean tensor that broadcasts to the attention scores
(B, H, T, S) and is True where a query may look at a key. ``None`` means "see
everything". Masks combine with logical AND.

Legend: B batch, H heads, T query length, S key length.
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Turn a Hugging Face style ``attention_mask`` (B, S), 1 for a real token
    and 0 for padding, into a key mask of shape (B, 1, 1, S)."""
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must have shape (batch, length), got {tuple(attention_mask.shape)}"
        )
    return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """The look-ahead mask (T, S): query i sees key j iff j <= i + (S - T).

    With S == T this is the usual lower triangle; with S > T the queries are
    the last T positions of S (decoding with a key/value cache).
    """
    S = T if S is None else S
    offset = S - T
    q = torch.arange(T, device=device)[:, None]  # (T, 1)
    k = torch.arange(S, device=device)[None, :]  # (1, S)
    return k <= q + offset  # (T, S)


def combine(*masks: Tensor | None) -> Tensor | None:
    """AND together any number of masks; ``None`` entries are ignored."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else out & m
    return out


def ensure_visible(mask: Tensor | None) -> Tensor | None:
    """Let query rows that see no key at all see every key instead.

    Such rows belong to padding queries (e.g. a left-padded position under a
    causal mask). Their outputs are never used, but an all-masked softmax is
    NaN, and NaN would leak into gradients. Rows with at least one visible key
    are unchanged, so real positions are unaffected.
    """
    if mask is None:
        return None
    return mask | ~mask.any(dim=-1, keepdim=True)


def attention_mask_for(
    T: int,
    S: int,
    *,
    key_padding: Tensor | None = None,
    causal: bool = False,
    device: torch.device | str | None = None,
) -> Tensor | None:
    """The full boolean mask for one attention call.

    Args:
        T, S: query and key lengths.
        key_padding: (B, S) with 1 for real keys, or None.
        causal: add the look-ahead mask.
    Returns:
        A mask broadcastable to (B, H, T, S), or None when nothing is masked.
    """
    pad = padding_mask(key_padding) if key_padding is not None else None  # (B, 1, 1, S)
    # a single query at the end of the keys (cached decoding) sees them all
    look_ahead = causal_mask(T, S, device=device) if causal and T > 1 else None  # (T, S)
    return ensure_visible(combine(pad, look_ahead))
