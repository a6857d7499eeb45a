"""GPT: a decoder-only language model.

Legend: B batch, T new positions, S all positions (cache + new), C width, V vocabulary.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attention import KVCache
from ..tasks.base import IGNORE_INDEX
from .inputs import check_mask, drop_full_mask
from .stack import Embedder, ModelCache, Stack, init_weights
from .config import GPTConfig


class GPT(nn.Module):
    """Token + position embeddings, causal blocks, final norm, LM head.

    ``model(input_ids) -> logits (B, T, V)``. With ``cache`` (from
    ``new_cache()``) the call processes only the new tokens and extends the
    cache; ``attention_mask`` must then cover cached and new positions.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embedder(config, config.vocab_size)
        self.decoder = Stack(config, config.n_layer, causal=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        init_weights(self, config.init_std, config.init)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.tok.weight

    def new_cache(self, capacity: int | None = None) -> ModelCache:
        """An empty key/value cache, one ``KVCache`` per block. ``capacity``: the
        final length, when known (storage is then allocated once); None grows as needed."""
        if not self.embed.pos.supports_cache:
            raise ValueError(
                f"positional={self.config.positional!r} gives a position an encoding that depends on the "
                "sequence length, so it cannot decode with a key/value cache; pass use_cache=False"
            )
        return ModelCache([KVCache(capacity=capacity) for _ in self.decoder.blocks])

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: ModelCache | None = None,
        output_attentions: bool = False,
        logits_to_keep: int = 0,
    ) -> Tensor | tuple[Tensor, list[dict[str, Tensor]]]:
        """
        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, S) 1 for real tokens, 0 for padding, or None.
            position_ids: (B, T) positions for absolute encodings (left-padded
                batches start each row at 0); default: start..start+T-1.
            cache: a ``ModelCache`` to read and extend, or None.
            output_attentions: also return per-layer {"self": (B, H, T, S)}.
            logits_to_keep: apply the LM head to the last this many positions
                only (Hugging Face's name; 0: every position). Decoding without
                a cache needs the last one.
        Returns:
            logits (B, T, V) (T = logits_to_keep when that is > 0), and the attentions when asked.
        """
        B, T = input_ids.shape
        keep = None if isinstance(logits_to_keep, bool) else getattr(logits_to_keep, "__index__", lambda: None)()
        if keep is None or keep < 0:
            raise ValueError(f"logits_to_keep={logits_to_keep!r} must be an integer >= 0 (0: every position)")
        start = cache.length if cache is not None else 0
        check_mask(attention_mask, B, start + T, "attention_mask")
        attention_mask = drop_full_mask(attention_mask)  # no padding: the fused causal path
        x = self.embed(input_ids, start, position_ids)  # (B, T, C)
        x, attentions = self.decoder(
            x, self.embed.pos, start, key_padding=attention_mask, cache=cache, need_weights=output_attentions,
            positions=position_ids,
        )
        if keep:
            x = x[:, -keep:]  # (B, logits_to_keep, C)
        logits = self.lm_head(x)  # (B, T, V)
        return (logits, attentions) if output_attentions else logits

    def loss(self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Next-token cross-entropy; ``labels`` (B, T) aligned with input_ids, -100 ignored."""
        logits = self(input_ids, attention_mask)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)

    def generate(self, input_ids: Tensor, **kwargs):
        """Decode new tokens after ``input_ids``; see ``scratchformer.generate.generate``
        (Hugging Face argument names: max_new_tokens, do_sample, top_k, num_beams, ...)."""
        from ..generate import generate

        return generate(self, input_ids, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
