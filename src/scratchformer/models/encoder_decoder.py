"""EncoderDecoder: the 2017 Transformer with separate source and target vocabularies.

Legend: B batch, S source length, T target length, C width, V target vocabulary.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attention import KVCache
from ..tasks.base import IGNORE_INDEX
from .inputs import check_mask
from .stack import Embedder, ModelCache, Stack, init_weights
from .config import EncoderDecoderConfig


def shift_right(labels: Tensor, start_token_id: int, pad_token_id: int = 0) -> Tensor:
    """Teacher forcing input: [start, y_0, ..., y_{T-2}]; ignored labels (``IGNORE_INDEX``) become padding."""
    shifted = labels.new_full(labels.shape, start_token_id)  # (B, T)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


class EncoderDecoder(nn.Module):
    """``model(encoder_input_ids, labels=targets) -> logits (B, T, V)``, where
    the decoder input is ``shift_right(targets)``; or pass ``decoder_input_ids``."""

    def __init__(self, config: EncoderDecoderConfig) -> None:
        super().__init__()
        self.config = config
        extra = 1 if config.decoder_start_token_id is None else 0  # a dedicated start token
        self.src_embed = Embedder(config, config.src_vocab_size)
        self.tgt_embed = Embedder(config, config.tgt_vocab_size + extra)
        self.encoder = Stack(config, config.n_encoder_layer, causal=False)
        self.decoder = Stack(config, config.n_decoder_layer, causal=True, cross_attention=True)
        # tied: logits reuse the target embedding rows, so there is no separate head
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.tgt_vocab_size, bias=False)
        init_weights(self, config.init_std, config.init)
        if config.tie_encoder_decoder_embeddings:
            self.tgt_embed.tok.weight = self.src_embed.tok.weight

    def encode(
        self, encoder_input_ids: Tensor, encoder_attention_mask: Tensor | None = None, output_attentions: bool = False
    ) -> Tensor | tuple[Tensor, list[dict[str, Tensor]]]:
        """(B, S) -> memory (B, S, C), and the encoder's per-layer {"self": (B, H, S, S)} when asked."""
        check_mask(encoder_attention_mask, *encoder_input_ids.shape, "encoder_attention_mask")
        x = self.src_embed(encoder_input_ids)
        x, attentions = self.encoder(
            x, self.src_embed.pos, key_padding=encoder_attention_mask, need_weights=output_attentions
        )
        return (x, attentions) if output_attentions else x

    def new_cache(self, capacity: int | None = None) -> ModelCache:
        """Empty caches: self-attention (``capacity``: the final decoder length, when
        known) and cross-attention (filled once from the encoder output)."""
        if not self.tgt_embed.pos.supports_cache:
            raise ValueError(f"positional={self.config.positional!r} cannot decode with a cache; pass use_cache=False")
        n = len(self.decoder.blocks)
        return ModelCache([KVCache(capacity=capacity) for _ in range(n)], [KVCache(static=True) for _ in range(n)])

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        encoder_attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        cache: ModelCache | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """decoder_input_ids (B, T), memory (B, S, C) -> logits (B, T, V)."""
        start = cache.length if cache is not None else 0
        x = self.tgt_embed(decoder_input_ids, start)  # (B, T, C)
        x, attentions = self.decoder(
            x,
            self.tgt_embed.pos,
            start,
            key_padding=decoder_attention_mask,
            context=memory,
            context_padding=encoder_attention_mask,
            cache=cache,
            need_weights=output_attentions,
        )
        if self.lm_head is None:  # tied: the output projection is the target embedding
            logits = F.linear(x, self.tgt_embed.tok.weight[: self.config.tgt_vocab_size])  # (B, T, V)
        else:
            logits = self.lm_head(x)  # (B, T, V)
        return logits, attentions

    def forward(
        self,
        encoder_input_ids: Tensor,
        decoder_input_ids: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        output_attentions: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, list]]:
        """
        Args:
            encoder_input_ids: (B, S) source ids; encoder_attention_mask (B, S) 1 = real.
            decoder_input_ids: (B, T) decoder inputs, or None to use shift_right(labels).
            labels: (B, T) target ids (-100 = ignore), used only to build the decoder input.
            output_attentions: also return {"encoder": per-layer {"self"}, "decoder": per-layer
                {"self", "cross"}}, each weights (B, H, queries, keys).
        Returns:
            logits (B, T, V) — position t predicts labels[:, t].
        """
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels (the targets, shifted right internally)")
            pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
            decoder_input_ids = shift_right(labels, self.config.start_token_id, pad)
        encoded = self.encode(encoder_input_ids, encoder_attention_mask, output_attentions)
        memory, enc_att = encoded if output_attentions else (encoded, None)
        check_mask(decoder_attention_mask, *decoder_input_ids.shape, "decoder_attention_mask")
        logits, dec_att = self.decode(
            decoder_input_ids, memory, encoder_attention_mask, decoder_attention_mask, output_attentions=output_attentions
        )
        if output_attentions:
            return logits, {"encoder": enc_att, "decoder": dec_att}
        return logits

    def generate(self, input_ids: Tensor | None = None, *, encoder_input_ids: Tensor, **kwargs):
        """Decode targets for ``encoder_input_ids``; ``input_ids`` optionally forces a
        decoder prefix. See ``scratchformer.generate.generate``."""
        from ..generate import generate

        return generate(self, input_ids, encoder_input_ids=encoder_input_ids, **kwargs)

    def loss(self, encoder_input_ids: Tensor, labels: Tensor, encoder_attention_mask: Tensor | None = None) -> Tensor:
        logits = self(encoder_input_ids, labels=labels, encoder_attention_mask=encoder_attention_mask)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


__all__ = ["EncoderDecoder", "shift_right"]
