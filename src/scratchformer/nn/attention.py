"""Scaled dot-product attention and multi-head attention.

Two implementations of the same formula, softmax(Q K^T / sqrt(D) + bias) V:
``reference_attention`` writes it out (and can return the weights), and
``fused_attention`` calls torch's ``scaled_dot_product_attention``, the
default. Tests show they agree to 1e-5 in float32.

Legend: B batch, H heads, T query length, S key length, D head width,
C model width (= H * D).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import unknown_name
from .masks import attention_mask_for, causal_mask

AttentionImpl = Literal["fused", "reference"]


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attention written out.

    Args:
        q: (B, H, T, D); k, v: (B, H, S, D).
        mask: boolean, broadcastable to (B, H, T, S), True = may attend.
        bias: float, broadcastable to (B, H, T, S), added to the scores (ALiBi).
        dropout_p: dropout on the attention weights (pass 0.0 in eval mode).
    Returns:
        (output (B, H, T, D), weights (B, H, T, S) or None)
    """
    D = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)  # a float32 bias would promote bf16 scores
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, S)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (B, H, T, D)
    return out, (weights if need_weights else None)


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> Tensor:
    """The same computation through ``torch.nn.functional.scaled_dot_product_attention``.

    A boolean mask and a float bias are merged into one additive float mask,
    which SDPA accepts. Shapes as in ``reference_attention``.
    """
    attn_mask = mask
    if bias is not None:
        attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    impl: AttentionImpl = "fused",
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Dispatch to the fused or reference path; weights force the reference path."""
    if impl == "reference" or need_weights:
        return reference_attention(q, k, v, mask, bias, dropout_p, need_weights)
    if impl == "fused":
        return fused_attention(q, k, v, mask, bias, dropout_p), None
    raise unknown_name("attention implementation", impl, ["fused", "reference"])


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    Self-attention appends each step's keys/values (``update``, or
    ``append_kv`` with both in one tensor); cross-attention computes them once
    from the encoder output and keeps them (``static``). With ``capacity``
    (the final length, when the caller knows it, as ``generate`` does) the
    storage is allocated once at the first append and an append is one copy;
    without it, or past it, storage grows by doubling, so appending one token
    is amortised O(1).

    Appended keys and values live in one buffer ``kv`` (B, 2, H, allocated, D);
    ``k`` and ``v`` are its views ``kv[:, 0]`` and ``kv[:, 1]``, each
    (B, H, allocated, D), valid for positions ``[0, length)``.

    While autograd records (gradients enabled and keys or values requiring
    them), an append makes new storage instead (the cached positions and the
    new ones joined), so a backward pass through several cached calls finds
    the keys and values it saved unchanged.
    """

    def __init__(self, static: bool = False, capacity: int | None = None) -> None:
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"KVCache capacity={capacity!r} must be a positive integer or None (grow as needed)")
        self.static = static
        self.capacity = capacity
        self.kv: Tensor | None = None  # (B, 2, H, allocated, D); None until the first append, and for set_static
        self.k: Tensor | None = None  # (B, H, allocated, D)
        self.v: Tensor | None = None
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v of shape (B, H, T, D); return all keys/values (B, H, S, D)
        (views of the storage, valid until the next update)."""
        if self._tracked(k, v):
            return self._append_out_of_place(torch.stack((k, v), dim=1))
        T, L = k.size(2), self.length
        if self.kv is None or L + T > self.kv.size(3):
            self._grow(k, L + T)
        self.k.narrow(2, L, T).copy_(k)
        self.v.narrow(2, L, T).copy_(v)
        self.length = S = L + T
        return self.k.narrow(2, 0, S), self.v.narrow(2, 0, S)

    def append_kv(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """``update(kv[:, 0], kv[:, 1])`` for kv of shape (B, 2, H, T, D) (any
        strides, e.g. a view of a fused q/k/v projection), in one copy.
        Returns all keys and values, each (B, H, S, D), views of the storage
        valid until the next append."""
        if self._tracked(kv):
            return self._append_out_of_place(kv)
        T, L = kv.size(3), self.length
        if self.kv is None or L + T > self.kv.size(3):
            self._grow(kv.select(1, 0), L + T)
        self.kv.narrow(3, L, T).copy_(kv)
        self.length = S = L + T
        return self.k.narrow(2, 0, S), self.v.narrow(2, 0, S)

    def _tracked(self, *new: Tensor) -> bool:
        """Whether autograd records this append: then earlier keys and values may be saved
        for a backward pass, and writing into their storage would invalidate it."""
        return torch.is_grad_enabled() and (
            any(t.requires_grad for t in new) or (self.kv is not None and self.kv.requires_grad)
        )

    def _append_out_of_place(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """Append kv (B, 2, H, T, D) into new storage (the cached positions and kv joined), so that a
        backward pass through several cached calls sees the keys and values it saved unchanged."""
        L = self.length
        if self.kv is not None:
            kv = torch.cat((self.kv.narrow(3, 0, L), kv), dim=3)  # (B, 2, H, S, D)
        elif self.k is not None:  # set by set_static: keys and values in two tensors
            kv = torch.cat((torch.stack((self.k[:, :, :L], self.v[:, :, :L]), dim=1), kv), dim=3)
        self._set_storage(kv)
        self.length = kv.size(3)
        return self.k, self.v

    def _grow(self, k: Tensor, needed: int) -> None:
        """Allocate room for at least ``needed`` positions (shaped, typed and
        placed like ``k`` (B, H, T, D)), keeping what is cached."""
        size = self.capacity if self.capacity is not None and self.capacity >= needed else max(2 * needed, 16)
        new = k.new_empty(k.size(0), 2, k.size(1), size, k.size(3))  # (B, 2, H, size, D)
        if self.k is not None:
            new[:, 0, :, : self.length] = self.k[:, :, : self.length]
            new[:, 1, :, : self.length] = self.v[:, :, : self.length]
        self._set_storage(new)

    def _set_storage(self, kv: Tensor) -> None:
        self.kv, self.k, self.v = kv, kv[:, 0], kv[:, 1]

    def set_static(self, k: Tensor, v: Tensor) -> None:
        self.kv, self.k, self.v, self.length = None, k, v, k.size(2)

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (the next append writes there); the storage stays."""
        if not 0 <= length <= self.length:
            raise ValueError(f"KVCache.crop(length={length!r}): the cache holds {self.length} positions; "
                             f"use 0 <= length <= {self.length}")
        if self.kv is not None and self.kv.requires_grad:  # autograd may have saved the rest: never write over it
            self._set_storage(self.kv.narrow(3, 0, length))
        self.length = length

    def keys_values(self) -> tuple[Tensor, Tensor]:
        assert self.k is not None and self.v is not None
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders hypotheses)."""
        if self.kv is not None:
            self._set_storage(self.kv.index_select(0, index))
        elif self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)

    @property
    def filled(self) -> bool:
        return self.k is not None


class MultiHeadAttention(nn.Module):
    """Multi-head attention for self-attention (``context=None``) and
    cross-attention (``context`` = the encoder output).

    One input projection of shape (3C, C), laid out like
    ``torch.nn.MultiheadAttention.in_proj_weight``: rows [0, C) make queries,
    [C, 2C) keys, [2C, 3C) values. Self-attention uses it as one matmul;
    cross-attention applies the query rows to ``x`` and the key/value rows to
    ``context``.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        dropout: float = 0.0,
        bias: bool = True,
        impl: AttentionImpl = "fused",
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.n_head, self.head_dim = d_model, n_head, d_model // n_head
        self.dropout, self.impl, self.causal = dropout, impl, causal
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_padding: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        bias: Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
        key_rope: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """
        Args:
            x: (B, T, C) queries (and keys/values for self-attention).
            context: (B, S, C) keys/values source for cross-attention, or None.
            key_padding: (B, S) 1 for real keys (for self-attention with a
                cache, S counts the cached positions too).
            rope: (cos, sin), each (T, D) or (B, 1, T, D), rotary tables for the
                new positions (self-attention: queries and keys; cross: queries).
            bias: additive score bias broadcastable to (B, H, T, S) (ALiBi, a window).
            key_rope: cross-attention only: (cos, sin), each (B or 1, 1, S, D),
                rotary tables for the context's keys (applied before they are cached).
            cache: KVCache to read and extend (self) or fill once (cross).
            need_weights: also return the attention weights (B, H, T, S).
        Returns:
            (output (B, T, C), weights or None)
        """
        B, T, C = x.shape
        if context is None:  # self-attention: one matmul makes q, k, v
            qkv = self.in_proj(x).view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, H, D)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, D)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.update(k, v)  # (B, H, S, D)
        else:  # cross-attention: queries from x, keys/values from context
            w_q, w_kv = self.in_proj.weight.split([C, 2 * C])
            b_q, b_kv = (None, None) if self.in_proj.bias is None else self.in_proj.bias.split([C, 2 * C])
            q = self._heads(F.linear(x, w_q, b_q))  # (B, H, T, D)
            if rope is not None:
                q = apply_rotary(q, *rope)
            if cache is not None and cache.filled:
                k, v = cache.keys_values()  # (B, H, S, D), computed (and rotated) at the first step
            else:
                k, v = F.linear(context, w_kv, b_kv).split(C, dim=-1)  # 2 x (B, S, C)
                k, v = self._heads(k), self._heads(v)  # (B, H, S, D)
                if key_rope is not None:
                    k = apply_rotary(k, *key_rope)
                if cache is not None:
                    cache.set_static(k, v)
        S = k.size(2)
        causal = self.causal and context is None
        dropout_p = self.dropout if self.training else 0.0
        if causal and key_padding is None and bias is None and T == S and self.impl == "fused" and not need_weights:
            # the common training case: let SDPA build the triangle itself
            out, weights = fused_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
        else:
            mask = attention_mask_for(T, S, key_padding=key_padding, causal=causal, device=x.device)
            out, weights = attention(q, k, v, mask, bias, dropout_p, self.impl, need_weights)
        out = out.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        out = self.out_proj(out)
        if self.training and self.dropout > 0:  # a no-op otherwise: skip the module call
            out = self.resid_dropout(out)
        return out, weights


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D) by the angles whose cos/sin are (T, D) (or (B, 1, T, D), per row)."""
    return x * cos + rotate_half(x) * sin


# --- the attention tutorial's functional form -------------------------------
# Weights are (d_in, d_out) matrices applied as x @ W, exactly as the tutorial
# writes them. ``MultiHeadAttention`` holds the same numbers as
# in_proj.weight = cat(W_Q, W_K, W_V).T and out_proj.weight = W_O.T (no bias).


def self_attention(x: Tensor, W_Q: Tensor, W_K: Tensor, W_V: Tensor, causal: bool = False) -> Tensor:
    """Single-head self-attention. x: (B, T, C_in); W_*: (C_in, D). Returns (B, T, D)."""
    q, k, v = x @ W_Q, x @ W_K, x @ W_V  # (B, T, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, T, T)
    if causal:
        scores = scores.masked_fill(~causal_mask(x.size(1), device=x.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, T, D)


def multi_head_attention(
    x: Tensor, W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor, num_heads: int = 4, causal: bool = False
) -> Tensor:
    """Multi-head self-attention. x: (B, T, C); W_Q, W_K, W_V, W_O: (C, C). Returns (B, T, C)."""
    B, T, C = x.shape
    if C % num_heads:
        raise ValueError(f"width {C} is not divisible by num_heads={num_heads}")
    D = C // num_heads

    def heads(t: Tensor) -> Tensor:
        return t.view(B, T, num_heads, D).transpose(1, 2)  # (B, H, T, D)

    q, k, v = heads(x @ W_Q), heads(x @ W_K), heads(x @ W_V)
    mask = causal_mask(T, device=x.device) if causal else None
    out, _ = reference_attention(q, k, v, mask)  # (B, H, T, D)
    return out.transpose(1, 2).reshape(B, T, C) @ W_O  # (B, T, C)


def causal_multi_head_attention(
    x: Tensor, W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor, num_heads: int = 4
) -> Tensor:
    """Multi-head self-attention where position t sees only positions <= t."""
    return multi_head_attention(x, W_Q, W_K, W_V, W_O, num_heads, causal=True)


__all__ = [
    "AttentionImpl",
    "KVCache",
    "MultiHeadAttention",
    "apply_rotary",
    "attention",
    "causal_multi_head_attention",
    "fused_attention",
    "multi_head_attention",
    "reference_attention",
    "self_attention",
]
