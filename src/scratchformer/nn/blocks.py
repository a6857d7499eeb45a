"""Transformer blocks: attention (+ cross-attention) and feed-forward, each
wrapped in residual + norm.

Two placements of the norm:
- post-norm (2017 paper, the tutorials): x = norm(x + sublayer(x))
- pre-norm (GPT-2):                      x = x + sublayer(norm(x))
Without residual connections (a rung of the ablation ladder) the ``x +``
disappears and the rest stays.

Legend: B batch, T length, S context length, C model width.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .attention import AttentionImpl, KVCache, MultiHeadAttention
from .feedforward import FeedForward
from .norm import build_norm


@dataclass(frozen=True)
class BlockSpec:
    """Everything a block needs; built by the model from its config."""

    d_model: int
    n_head: int
    d_ff: int
    dropout: float = 0.0
    activation: str = "relu"
    norm: str = "layernorm"
    norm_eps: float | None = None
    norm_first: bool = False
    use_mlp: bool = True
    use_residual: bool = True
    bias: bool = True
    attn_impl: AttentionImpl = "fused"


class Residual(nn.Module):
    """One sublayer with its norm, in either placement, with or without the skip."""

    def __init__(self, spec: BlockSpec, sublayer: nn.Module) -> None:
        super().__init__()
        self.sublayer = sublayer
        self.norm = build_norm(spec.norm, spec.d_model, spec.norm_eps, spec.bias)
        self.norm_first, self.use_residual = spec.norm_first, spec.use_residual

    def forward(self, x: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor | None]:
        h = self.norm(x) if self.norm_first else x
        out = self.sublayer(h, *args, **kwargs)
        out, weights = out if isinstance(out, tuple) else (out, None)
        y = x + out if self.use_residual else out
        return (y if self.norm_first else self.norm(y)), weights


class Block(nn.Module):
    """Self-attention, optional cross-attention, optional feed-forward.

    An encoder block is ``Block(spec, causal=False)``; a decoder block is
    ``Block(spec, causal=True, cross_attention=True)``; a GPT block is
    ``Block(spec, causal=True)``.
    """

    def __init__(self, spec: BlockSpec, causal: bool = False, cross_attention: bool = False) -> None:
        super().__init__()

        def mha(is_causal: bool) -> MultiHeadAttention:
            return MultiHeadAttention(spec.d_model, spec.n_head, spec.dropout, spec.bias, spec.attn_impl, is_causal)

        self.attn = Residual(spec, mha(causal))
        self.cross = Residual(spec, mha(False)) if cross_attention else None
        ffn = FeedForward(spec.d_model, spec.d_ff, spec.activation, spec.dropout, spec.bias)
        self.mlp = Residual(spec, ffn) if spec.use_mlp else None

    def forward(
        self,
        x: Tensor,
        key_padding: Tensor | None = None,
        context: Tensor | None = None,
        context_padding: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        bias: Tensor | None = None,
        cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """
        Args:
            x: (B, T, C). key_padding: (B, S_self) 1 = real.
            context: (B, S, C) encoder output (decoder blocks); context_padding: (B, S).
            rope, bias, cache: see ``MultiHeadAttention``.
        Returns:
            (x (B, T, C), {"self": weights, "cross": weights} when need_weights)
        """
        weights: dict[str, Tensor] = {}
        x, w = self.attn(x, key_padding=key_padding, rope=rope, bias=bias, cache=cache, need_weights=need_weights)
        if w is not None:
            weights["self"] = w
        if self.cross is not None:
            x, w = self.cross(x, context=context, key_padding=context_padding, cache=cross_cache, need_weights=need_weights)
            if w is not None:
                weights["cross"] = w
        if self.mlp is not None:
            x, _ = self.mlp(x)
        return x, weights
