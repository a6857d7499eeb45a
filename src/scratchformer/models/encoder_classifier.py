"""EncoderClassifier: a bidirectional encoder, pooling, and a linear head.

Legend: B batch, T length, C width, K classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .inputs import check_mask
from .stack import Embedder, Stack, init_weights
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


POOLER_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class EncoderClassifier(nn.Module):
    """``model(input_ids, attention_mask) -> logits (B, num_classes)``.

    With ``type_vocab_size``, ``embed_norm`` and ``pooler`` set (and post-norm
    GELU blocks) it is BERT's sequence classifier: token + position + type
    embeddings and a LayerNorm of their sum; the first token's state through
    a dense layer and tanh (the pooler), then the linear head.
    """

    def __init__(self, config: EncoderClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embedder(config, config.vocab_size, config.type_vocab_size, config.embed_norm)
        self.encoder = Stack(config, config.n_layer, causal=config.causal)
        self.pooler = nn.Linear(config.d_model, config.d_model) if config.pooler else None
        self.head_dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, config.num_classes)
        init_weights(self, config.init_std, config.init)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """The encoder's last hidden states (B, T, C) (and per-layer attentions when asked)."""
        check_mask(attention_mask, *input_ids.shape, "attention_mask")
        x = self.embed(input_ids, token_type_ids=token_type_ids)  # (B, T, C)
        return self.encoder(x, self.embed.pos, key_padding=attention_mask, need_weights=output_attentions)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_attentions: bool = False,
        token_type_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[dict[str, Tensor]]]:
        """input_ids (B, T); attention_mask (B, T) 1 = real; token_type_ids (B, T). Returns logits (B, K)."""
        x, attentions = self.encode(input_ids, attention_mask, token_type_ids, output_attentions)
        pooled = pool(x, attention_mask, self.config.pooling)  # (B, C)
        if self.pooler is not None:  # BERT: dense + tanh (DistilBERT: relu), then dropout before the head
            pooled = POOLER_ACTIVATIONS[self.config.pooler_activation](self.pooler(pooled))
            if self.training and self.head_dropout.p > 0:
                pooled = self.head_dropout(pooled)
        logits = self.head(pooled)  # (B, K)
        return (logits, attentions) if output_attentions else logits
