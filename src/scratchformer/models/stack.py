"""The body the three architectures share: the embedder (tokens, positions),
a stack of blocks with its final norm, the per-layer decoding cache, and
weight initialisation. (Input checks are in :mod:`.inputs`.)

Legend: B batch, T length, C model width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..nn.attention import KVCache
from ..nn.blocks import Block, BlockSpec
from ..nn.norm import build_norm
from ..nn.positional import PositionalEncoding, build_positional, ids_or_indices
from .config import TransformerConfig
from .inputs import check_ids, check_length


def block_spec(cfg: TransformerConfig) -> BlockSpec:
    return BlockSpec(
        d_model=cfg.d_model,
        n_head=cfg.n_head,
        d_ff=cfg.d_ff,
        dropout=cfg.dropout,
        activation=cfg.activation,
        norm=cfg.norm,
        norm_eps=cfg.norm_eps,
        norm_first=cfg.norm_first,
        use_mlp=cfg.use_mlp,
        use_residual=cfg.use_residual,
        bias=cfg.bias,
        attn_bias=cfg.bias if cfg.attn_bias is None else cfg.attn_bias,
        attn_impl=cfg.attn_impl,
    )


def init_weights(module: nn.Module, std: float, scheme: str = "normal") -> None:
    """"normal": Normal(0, std) for Linear and Embedding weights, zero biases; norms keep (1, 0).
    "xavier": then Xavier-uniform for every parameter with two or more dimensions (embeddings and
    learned positions too), as the GPT tutorial does."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    if scheme == "xavier":
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


class Embedder(nn.Module):
    """Token embedding (optionally scaled by sqrt(C)), positions, optional token types
    (BERT's segment embedding) and norm of the sum (BERT's embedding LayerNorm), dropout."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, type_vocab_size: int = 0, norm: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, cfg.d_model)
        self.types = nn.Embedding(type_vocab_size, cfg.d_model) if type_vocab_size else None
        self.norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if norm else None
        self.pos: PositionalEncoding = build_positional(
            cfg.positional, d_model=cfg.d_model, n_head=cfg.n_head, max_len=cfg.max_len, **cfg.positional_options
        )
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.drop = nn.Dropout(cfg.dropout)
        self.max_len = cfg.max_len
        # positions 0..max_len-1 made once; a call slices them instead of building a tensor
        self.register_buffer("positions", torch.arange(cfg.max_len), persistent=False)

    def forward(
        self, ids: Tensor, start: int = 0, position_ids: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """ids: (B, T) -> (B, T, C). ``start`` is the position of ids[:, 0]; ``token_type_ids``
        (B, T) pick the type embeddings (default: type 0), when the embedder has them."""
        T = ids.size(1)
        check_ids(ids, self.tok.num_embeddings, "input_ids")
        check_length(start + T, self.max_len)
        x = self.tok(ids if ids.dtype in (torch.int64, torch.int32) else ids.long())  # (B, T, C)
        if self.scale != 1.0:
            x = x * self.scale
        if position_ids is not None and position_ids.numel() and not torch.compiler.is_compiling() \
                and int(position_ids.max()) >= self.max_len:
            check_length(int(position_ids.max()) + 1, self.max_len)
        positions = position_ids if position_ids is not None else self.positions[start : start + T]  # (T,) or (B, T)
        x = self.pos.embed(x, positions)
        if self.types is not None:
            if token_type_ids is None:
                x = x + self.types.weight[0]
            else:
                check_ids(token_type_ids, self.types.num_embeddings, "token_type_ids")
                x = x + self.types(token_type_ids)  # (B, T, C)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x) if self.training and self.drop.p > 0 else x


@dataclass
class ModelCache:
    """Key/value caches of every layer: ``self_attn[i]`` grows by one entry per
    decoded token; ``cross_attn[i]`` (encoder-decoder only) is filled once."""

    self_attn: list[KVCache]
    cross_attn: list[KVCache] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.self_attn[0].length if self.self_attn else 0

    def crop(self, length: int) -> None:
        """Forget every self-attention position from ``length`` on (cross-attention keeps the source)."""
        held = min((c.length for c in self.self_attn), default=0)
        if not 0 <= length <= held:  # checked before any layer changes
            raise ValueError(f"ModelCache.crop(length={length!r}): the cache holds {held} positions; "
                             f"use 0 <= length <= {held}")
        for c in self.self_attn:
            c.crop(length)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` in every layer (beam search)."""
        for c in self.self_attn + self.cross_attn:
            c.reorder(index)


class Stack(nn.Module):
    """N blocks, then the final norm (by default when the blocks are pre-norm; ``cfg.final_norm`` decides)."""

    def __init__(self, cfg: TransformerConfig, n_layer: int, causal: bool, cross_attention: bool = False) -> None:
        super().__init__()
        spec = block_spec(cfg)
        self.blocks = nn.ModuleList(Block(spec, causal, cross_attention) for _ in range(n_layer))
        final = cfg.norm_first if cfg.final_norm is None else cfg.final_norm
        self.final_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if final else nn.Identity()
        self.causal = causal

    def forward(
        self,
        x: Tensor,
        pos: PositionalEncoding,
        start: int = 0,
        key_padding: Tensor | None = None,
        context: Tensor | None = None,
        context_padding: Tensor | None = None,
        cache: ModelCache | None = None,
        need_weights: bool = False,
        positions: Tensor | None = None,
        context_positions: Tensor | None = None,
    ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """x (B, T, C) at positions start..start+T-1 (or a task's ``positions`` ids, (B, T)); ``context``
        (B, S, C) with ids ``context_positions`` (B, S) (None: 0..S-1) for cross-attention.
        Returns x (B, T, C) after the final norm, and each block's attention weights when asked."""
        T = x.size(1)
        S = start + T
        rope = pos.rotary(start, T, x.device, positions)  # positions: a task's (B, T) ids, for place_rope
        bias = pos.attention_bias(start, T, S, self.causal, x.device, positions)
        cross = None
        if context is not None:
            query_ids = ids_or_indices(start, T, positions, x.device)  # (B or 1, T)
            cross = pos.cross_attention(query_ids, ids_or_indices(0, context.size(1), context_positions, x.device))
        attentions = []
        for i, block in enumerate(self.blocks):
            x, w = block(
                x,
                key_padding=key_padding,
                context=context,
                context_padding=context_padding,
                rope=rope,
                bias=bias,
                cache=cache.self_attn[i] if cache is not None else None,
                cross_cache=cache.cross_attn[i] if cache is not None and cache.cross_attn else None,
                need_weights=need_weights,
                cross=cross,
            )
            attentions.append(w)
        return self.final_norm(x), attentions
