"""EncoderDecoder: the 2017 Transformer with separate source and target vocabularies.

Legend: B batch, S source length, T target length, C width, V target vocabulary.
"""

from __future__ import annotations

import torch
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
        self.decoder = Stack(config, config.n_decoder_layer, causal=config.decoder_causal, cross_attention=True)
        # tied: logits reuse the target embedding rows, so there is no separate head
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.tgt_vocab_size, bias=False)
        init_weights(self, config.init_std, config.init)
        if config.tie_encoder_decoder_embeddings:
            self.tgt_embed.tok.weight = self.src_embed.tok.weight

    @property
    def supports_cache(self) -> bool:
        """Whether incremental decoding with a key/value cache gives the same logits as recomputing."""
        return self.tgt_embed.pos.supports_cache and self.config.decoder_causal

    def source_positions(self, encoder_input_ids: Tensor, offset: Tensor | None = None) -> Tensor | None:
        """(B, S) position ids of the source: numbered afresh after each
        ``position_restart_token_id``, plus ``offset`` (B, 1); None when both
        are unused (the plain 0..S-1)."""
        restart = self.config.position_restart_token_id
        if restart is None and offset is None:
            return None
        B, S = encoder_input_ids.shape
        index = torch.arange(S, device=encoder_input_ids.device).expand(B, S)  # (B, S)
        if restart is None:
            positions = index
        else:
            after = torch.zeros_like(encoder_input_ids, dtype=torch.bool)  # (B, S): the token before is a restart
            after[:, 1:] = encoder_input_ids[:, :-1] == restart
            segment_start = torch.where(after, index, 0).cummax(dim=1).values  # (B, S)
            positions = index - segment_start
        return positions if offset is None else positions + offset

    def encode(
        self,
        encoder_input_ids: Tensor,
        encoder_attention_mask: Tensor | None = None,
        output_attentions: bool = False,
        position_offset: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[dict[str, Tensor]]]:
        """(B, S) -> memory (B, S, C), and the encoder's per-layer {"self": (B, H, S, S)} when asked.
        ``position_offset`` (B, 1) shifts every source position (training only, see the config)."""
        check_mask(encoder_attention_mask, *encoder_input_ids.shape, "encoder_attention_mask")
        positions = self.source_positions(encoder_input_ids, position_offset)  # (B, S) or None
        x = self.src_embed(encoder_input_ids, position_ids=positions)
        x, attentions = self.encoder(
            x, self.src_embed.pos, key_padding=encoder_attention_mask, need_weights=output_attentions,
            positions=positions,
        )
        return (x, attentions) if output_attentions else x

    def new_cache(self, capacity: int | None = None) -> ModelCache:
        """Empty caches: self-attention (``capacity``: the final decoder length, when
        known) and cross-attention (filled once from the encoder output)."""
        if not self.tgt_embed.pos.supports_cache:
            raise ValueError(f"positional={self.config.positional!r} cannot decode with a cache; pass use_cache=False")
        if not self.config.decoder_causal:
            raise ValueError("a decoder without the causal mask (decoder_causal=False) cannot decode with a cache: "
                             "each new token changes what earlier positions see; pass use_cache=False")
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
        position_offset: Tensor | None = None,
        source_positions: Tensor | None = None,
    ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """decoder_input_ids (B, T), memory (B, S, C) -> logits (B, T, V); ``position_offset`` as in ``encode``.

        ``source_positions`` (B, S): the encoder's position ids, ``source_positions(encoder_input_ids,
        position_offset)``, for a scheme whose cross-attention reads them (place_rope); None: 0..S-1.
        The decoder's own ids are its indices (answer digit t of a reversed answer is place t)."""
        start = cache.length if cache is not None else 0
        positions = None
        if position_offset is not None:  # (B, 1) + (T,) -> (B, T)
            positions = position_offset + torch.arange(start, start + decoder_input_ids.size(1), device=position_offset.device)
        x = self.tgt_embed(decoder_input_ids, start, position_ids=positions)  # (B, T, C)
        x, attentions = self.decoder(
            x,
            self.tgt_embed.pos,
            start,
            key_padding=decoder_attention_mask,
            context=memory,
            context_padding=encoder_attention_mask,
            cache=cache,
            need_weights=output_attentions,
            positions=positions,
            context_positions=source_positions,
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
        offset = None
        if self.training and self.config.train_position_offset > 0:  # train every position id (see the config)
            longest = max(encoder_input_ids.size(1), decoder_input_ids.size(1))
            high = min(self.config.train_position_offset, self.config.max_len - longest)
            offset = torch.randint(0, high + 1, (encoder_input_ids.size(0), 1), device=encoder_input_ids.device)
        encoded = self.encode(encoder_input_ids, encoder_attention_mask, output_attentions, offset)
        memory, enc_att = encoded if output_attentions else (encoded, None)
        check_mask(decoder_attention_mask, *decoder_input_ids.shape, "decoder_attention_mask")
        logits, dec_att = self.decode(
            decoder_input_ids, memory, encoder_attention_mask, decoder_attention_mask, output_attentions=output_attentions,
            position_offset=offset, source_positions=self.source_positions(encoder_input_ids, offset),
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
