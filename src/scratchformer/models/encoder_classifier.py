"""EncoderClassifier: a bidirectional encoder, pooling, and a linear head.

Legend: B batch, T length, C width, K classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.linear import Linear
from .common import Embedder, Stack, check_mask, init_weights
from .config import EncoderClassifierConfig


def pool(x: Tensor, attention_mask: Tensor | None, how: str) -> Tensor:
    """(B, T, C) -> (B, C) by the last real token, the first token, or the mean of real tokens."""
    B, T, _ = x.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=x.device)
    mask = attention_mask.to(x.dtype)  # (B, T)
    if how == "first":
        return x[:, 0]
    if how == "last":  # the last position whose mask is 1 (works for left and right padding)
        idx = (mask * torch.arange(1, T + 1, device=x.device)).argmax(dim=1)  # (B,)
        return x[torch.arange(B, device=x.device), idx]
    if how == "mean":
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    raise ValueError(f"unknown pooling {how!r}")


class EncoderClassifier(nn.Module):
    """``model(input_ids, attention_mask) -> logits (B, num_classes)``."""

    def __init__(self, config: EncoderClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embedder(config, config.vocab_size)
        self.encoder = Stack(config, config.n_layer, causal=False)
        self.head = Linear(config.d_model, config.num_classes)
        init_weights(self, config.init_std)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, output_attentions: bool = False
    ) -> Tensor | tuple[Tensor, list[dict[str, Tensor]]]:
        """input_ids (B, T); attention_mask (B, T) 1 = real. Returns logits (B, K)."""
        check_mask(attention_mask, *input_ids.shape, "attention_mask")
        x = self.embed(input_ids)  # (B, T, C)
        x, attentions = self.encoder(x, self.embed.pos, key_padding=attention_mask, need_weights=output_attentions)
        logits = self.head(pool(x, attention_mask, self.config.pooling))  # (B, K)
        return (logits, attentions) if output_attentions else logits
