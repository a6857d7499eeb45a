"""Building blocks of the Transformer, each readable on its own."""

from .attention import (
    KVCache,
    MultiHeadAttention,
    apply_rotary,
    attention,
    causal_multi_head_attention,
    fused_attention,
    multi_head_attention,
    reference_attention,
    self_attention,
)
from .blocks import Block, BlockSpec, Residual
from .feedforward import ACTIVATIONS, FeedForward
from .masks import attention_mask_for, causal_mask, combine, ensure_visible, padding_mask
from .norm import NORMS, LayerNorm, RMSNorm, TutorialLayerNorm, build_norm
from .positional import POSITIONAL, PositionalEncoding, build_positional, sinusoid_position_encoding

__all__ = [
    "ACTIVATIONS", "NORMS", "POSITIONAL", "Block", "BlockSpec", "FeedForward", "KVCache", "LayerNorm",
    "MultiHeadAttention", "PositionalEncoding", "RMSNorm", "Residual", "TutorialLayerNorm", "apply_rotary",
    "attention", "attention_mask_for", "build_norm", "build_positional", "causal_mask",
    "causal_multi_head_attention", "combine", "ensure_visible", "fused_attention", "multi_head_attention",
    "padding_mask", "reference_attention", "self_attention", "sinusoid_position_encoding",
]
