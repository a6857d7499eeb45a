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
from .positional import CrossPositions


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
    attn_bias: bool = True
    attn_impl: AttentionImpl = "fused"


@dataclass(frozen=True)
class Residual:
    """How one sublayer joins the residual stream: the norm's placement and the
    skip connection. Holds no weights: the block owns the norm and the sublayer."""

    norm_first: bool = False
    use_residual: bool = True

    def __call__(self, x: Tensor, norm: nn.Module, sublayer: nn.Module, **kwargs) -> tuple[Tensor, Tensor | None]:
        h = norm(x) if self.norm_first else x
        out = sublayer(h, **kwargs)
        out, weights = out if isinstance(out, tuple) else (out, None)
        y = x + out if self.use_residual else out
        return (y if self.norm_first else norm(y)), weights


class Block(nn.Module):
    """Self-attention, optional cross-attention, optional feed-forward.

    An encoder block is ``Block(spec, causal=False)``; a decoder block is
    ``Block(spec, causal=True, cross_attention=True)``; a GPT block is
    ``Block(spec, causal=True)``.
    """

    def __init__(self, spec: BlockSpec, causal: bool = False, cross_attention: bool = False) -> None:
        super().__init__()

        def mha(is_causal: bool) -> MultiHeadAttention:
            return MultiHeadAttention(spec.d_model, spec.n_head, spec.dropout, spec.attn_bias, spec.attn_impl, is_causal)

        def norm() -> nn.Module:
            return build_norm(spec.norm, spec.d_model, spec.norm_eps, spec.bias)

        self.residual = Residual(spec.norm_first, spec.use_residual)
        self.attn = mha(causal)
        self.attn_norm = norm()
        self.cross_attn = mha(False) if cross_attention else None
        self.cross_attn_norm = norm() if cross_attention else None
        self.mlp = FeedForward(spec.d_model, spec.d_ff, spec.activation, spec.dropout, spec.bias) if spec.use_mlp else None
        self.mlp_norm = norm() if spec.use_mlp else None

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
        cross: CrossPositions | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """
        Args:
            x: (B, T, C). key_padding: (B, S_self) 1 = real.
            context: (B, S, C) encoder output (decoder blocks); context_padding: (B, S).
            rope, bias, cache: see ``MultiHeadAttention``.
            cross: positions in cross-attention (``PositionalEncoding.cross_attention``), or None.
        Returns:
            (x (B, T, C), {"self": weights, "cross": weights} when need_weights)
        """
        weights: dict[str, Tensor] = {}
        attend = dict(key_padding=key_padding, rope=rope, bias=bias, cache=cache, need_weights=need_weights)
        x, w = self.residual(x, self.attn_norm, self.attn, **attend)
        if w is not None:
            weights["self"] = w
        if self.cross_attn is not None:
            attend = dict(context=context, key_padding=context_padding, cache=cross_cache, need_weights=need_weights)
            if cross is not None:
                attend.update(rope=cross.query_rope, key_rope=cross.key_rope, bias=cross.bias)
            x, w = self.residual(x, self.cross_attn_norm, self.cross_attn, **attend)
            if w is not None:
                weights["cross"] = w
        if self.mlp is not None:
            x, _ = self.residual(x, self.mlp_norm, self.mlp)
        return x, weights
