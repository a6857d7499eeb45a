"""Decoding: greedy, sampling (temperature, top-k, top-p), beam search, best-of-n, streaming.

``generate(model, input_ids, **options)`` works for ``GPT`` (the prompt is
``input_ids``) and ``EncoderDecoder`` (the source is ``encoder_input_ids``;
``input_ids`` optionally forces a decoder prefix). The option names and their
meaning are Hugging Face's (``max_new_tokens``, ``do_sample``, ``top_k``,
``num_beams``, ...), collected and checked by :class:`GenerationConfig`
before any tensor is computed. See docs/decoding.md.

How one step turns logits into the next token (Hugging Face's order):

1. repetition penalty, 2. no-repeat-n-gram ban  (every strategy)
3. temperature, 4. top-k, 5. top-p              (sampling only)

then argmax (greedy), a draw from the softmax (sampling), or the beam update.

The key/value cache (``model.new_cache()``) is used when the positional
encoding allows it (``use_cache=None``, the default); each step then runs the
model on the new token only.

Legend: B prompts, R rows per prompt (num_beams or num_return_sequences),
N = B * R decoding rows, T0 prompt length, L current length, V vocabulary,
K candidates kept per beam step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, DataError, did_you_mean
from .models.inputs import check_ids
from .models.fast_decode import DecodeStep

log = logging.getLogger(__name__)

#: what beam search adds to a score to rule a candidate out (Hugging Face's constant)
_EXCLUDED = -1.0e9


# ---------------------------------------------------------------------------- options
@dataclass
class GenerationConfig:
    """Every decoding option, with Hugging Face's names and defaults.

    Attributes:
        max_new_tokens: tokens to add after the prompt (>= 0).
        do_sample: draw from the distribution instead of taking the argmax.
        temperature: divide logits by this when sampling; 0 means greedy.
        top_k: keep the k most likely tokens when sampling (None or 0: all).
        top_p: keep the smallest set of tokens whose probability reaches p, in (0, 1].
        repetition_penalty: > 0; a token already in the sequence has its
            positive logit divided by it and its negative logit multiplied.
        no_repeat_ngram_size: ban any token that would repeat an n-gram (0: off).
        num_beams: 1 for greedy/sampling, > 1 for beam search.
        length_penalty: beam score = sum of log-probs / (generated length ** length_penalty).
        early_stopping: True, False or "never" (Hugging Face's beam stopping rules).
        num_return_sequences: rows returned per prompt (<= num_beams in beam search;
            sampling draws that many independent samples).
        eos_token_id: an id or list of ids that end a sequence, or None.
        pad_token_id: fills a row after its EOS; default the (first) EOS id.
        decoder_start_token_id: EncoderDecoder only; default the model's start token.
        use_cache: None = use the key/value cache when the positional encoding
            supports it; True demands it (error if unsupported); False never.
        output_scores / output_logits: with ``return_dict_in_generate``, keep the
            processed scores / raw logits of every step.
        return_dict_in_generate: return a :class:`GenerateOutput` instead of ids.
        generator: a ``torch.Generator`` for reproducible sampling.
        streamer: an object with ``put(ids)`` and ``end()`` (see :func:`generate`).
    """

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    use_cache: bool | None = None
    output_scores: bool = False
    output_logits: bool = False
    return_dict_in_generate: bool = False
    generator: torch.Generator | None = None
    streamer: Any = None

    def __post_init__(self) -> None:
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")

        integer("max_new_tokens", 0)
        integer("num_beams", 1)
        integer("num_return_sequences", 1)
        integer("no_repeat_ngram_size", 0)
        if self.top_k is not None:
            integer("top_k", 0)
        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}={value!r} must be a finite number")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature!r} must be a number >= 0 (0 means greedy)")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p={self.top_p!r} must be in (0, 1]; 1 keeps every token")
        if not isinstance(self.repetition_penalty, (int, float)) or self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty={self.repetition_penalty!r} must be > 0 (1.0 is no penalty)")
        if not isinstance(self.length_penalty, (int, float)) or isinstance(self.length_penalty, bool):
            raise ConfigError(f"length_penalty={self.length_penalty!r} must be a number")
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(f"early_stopping={self.early_stopping!r} must be True, False or 'never'")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ConfigError(
                f"num_return_sequences={self.num_return_sequences} is more than num_beams={self.num_beams}; "
                "beam search can return at most num_beams sequences per prompt"
            )
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.sampling:
            raise ConfigError(
                f"num_return_sequences={self.num_return_sequences} with greedy decoding would repeat one sequence; "
                "pass do_sample=True or num_beams >= num_return_sequences"
            )
        if self.streamer is not None and self.num_beams > 1:
            raise ConfigError("streamer works with greedy decoding and sampling only, not with num_beams > 1")
        if self.streamer is not None and not (hasattr(self.streamer, "put") and hasattr(self.streamer, "end")):
            raise ConfigError(f"streamer={self.streamer!r} needs put(ids) and end() methods")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise ConfigError(f"generator must be a torch.Generator, got {type(self.generator).__name__}")
        if self.use_cache not in (None, True, False):
            raise ConfigError(f"use_cache={self.use_cache!r} must be None, True or False")
        eos = self.eos_ids
        if eos is not None and (not eos or any(isinstance(e, bool) or not isinstance(e, int) for e in eos)):
            raise ConfigError(f"eos_token_id={self.eos_token_id!r} must be an int, a non-empty list of ints, or None")
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
            raise ConfigError(f"pad_token_id={self.pad_token_id!r} must be an int or None")

        narrowing = self.top_k or (self.top_p is not None and self.top_p < 1)
        if not self.do_sample and (self.temperature != 1.0 or narrowing):
            log.warning("temperature/top_k/top_p only act when sampling; pass do_sample=True (they are ignored now)")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> GenerationConfig:
        """Build from keyword options; an unknown name is a ConfigError with a did-you-mean."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in kwargs:
            if key not in names:
                raise ConfigError(
                    f"generate() got an unknown option {key!r}{did_you_mean(key, names)}; valid options are {sorted(names)}"
                )
        return cls(**kwargs)

    @property
    def sampling(self) -> bool:
        """True when tokens are drawn at random (do_sample with a temperature above 0)."""
        return bool(self.do_sample) and self.temperature > 0

    @property
    def eos_ids(self) -> list[int] | None:
        if self.eos_token_id is None:
            return None
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)


@dataclass
class GenerateOutput:
    """What ``generate(..., return_dict_in_generate=True)`` returns.

    Attributes:
        sequences: (N, L) prompt + new tokens (GPT) or decoder tokens from the
            start token (EncoderDecoder); N = B * num_return_sequences.
        scores: per step, the processed scores (N', V) the token was chosen
            from (log-probabilities in beam search, where N' = B * num_beams), or None.
        logits: per step, the raw model logits (N', V), or None.
        sequences_scores: beam search only: (N,) the length-penalised score of each returned sequence.
    """

    sequences: Tensor
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None
    sequences_scores: Tensor | None = None


class Streamer(Protocol):
    """Receives tokens as they are produced: ``put(prompt (B, T0))`` once, then
    ``put(tokens (N,))`` per step, then ``end()`` (Hugging Face's protocol)."""

    def put(self, value: Tensor) -> None: ...

    def end(self) -> None: ...


# ---------------------------------------------------------------------------- logits processing
def apply_repetition_penalty(seq: Tensor, scores: Tensor, penalty: float) -> Tensor:
    """seq (N, L) tokens so far, scores (N, V). Every token in ``seq`` gets its
    score divided by ``penalty`` if positive, multiplied if negative."""
    picked = scores.gather(1, seq)  # (N, L)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, seq, picked)


def ban_repeated_ngrams(seq: Tensor, scores: Tensor, n: int) -> Tensor:
    """Set to -inf every token that would complete an n-gram already in ``seq`` (N, L)."""
    L = seq.size(1)
    if L < n:  # no complete n-gram yet (a token now would make the first)
        return scores
    windows = seq.unfold(1, n, 1)  # (N, L - n + 1, n)
    prefix = seq[:, L - n + 1 :]  # (N, n - 1), the tail the next token extends
    match = (windows[:, :, :-1] == prefix[:, None, :]).all(-1)  # (N, W)
    hits = torch.zeros_like(scores).scatter_add_(1, windows[:, :, -1], match.to(scores.dtype))  # (N, V)
    return scores.masked_fill(hits > 0, float("-inf"))


def top_k_filter(scores: Tensor, k: int, min_keep: int = 1) -> Tensor:
    """Keep the k highest scores per row (ties with the k-th kept), -inf elsewhere."""
    k = min(max(k, min_keep), scores.size(-1))
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # (N, 1)
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: Tensor, p: float, min_keep: int = 1) -> Tensor:
    """Nucleus filter: keep the most likely tokens until their probability reaches p."""
    sorted_scores, order = torch.sort(scores, descending=False)  # ascending, like Hugging Face
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (N, V)
    remove = cumulative <= (1 - p)
    remove[..., -min_keep:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def process_scores(cfg: GenerationConfig, seq: Tensor, scores: Tensor, min_keep: int = 1) -> Tensor:
    """Apply the processors ``cfg`` turns on, in Hugging Face's order. seq (N, L), scores (N, V)."""
    if cfg.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(seq, scores, cfg.repetition_penalty)
    if cfg.no_repeat_ngram_size > 0:
        scores = ban_repeated_ngrams(seq, scores, cfg.no_repeat_ngram_size)
    if cfg.sampling:
        if cfg.temperature != 1.0:
            scores = scores / cfg.temperature
        if cfg.top_k:
            scores = top_k_filter(scores, cfg.top_k, min_keep)
        if cfg.top_p is not None and cfg.top_p < 1.0:
            scores = top_p_filter(scores, cfg.top_p, min_keep)
    return scores


# ---------------------------------------------------------------------------- the model side
# Fast decoding steps, applied from outside the model: each has ``supports(model) -> None | reason``
# and is built as ``step(model)``; called as ``step(new_ids, cache, attention_mask, position_ids)``
# it returns the logits (N, V) after the last new token, extending the cache as ``forward`` would.
DECODE_STEPS: tuple[type, ...] = (DecodeStep,)


def _decode_step_for(model: nn.Module) -> Callable[..., Tensor] | None:
    """A new step of the first ``DECODE_STEPS`` entry that supports ``model``, else None (use forward)."""
    for step in DECODE_STEPS:
        reason = step.supports(model)
        if reason is None:
            return step(model)
        log.debug("generate: %s does not apply: %s", step.__name__, reason)
    return None


class _Runner:
    """Runs the model for the next-token logits, with or without the cache.

    ``next_logits(seq)`` takes all N rows' tokens so far (N, L) and returns the
    logits (N, V) for position L; with a cache it feeds only the tokens the
    cache has not seen. With a cache, the storage is sized for the final
    length once, and the new tokens go through the first of ``DECODE_STEPS``
    that supports the model (``DecodeStep`` for a GPT: the same logits as
    ``forward``, computed for the last position only), else through ``forward``.
    """

    def __init__(
        self,
        model: nn.Module,
        encoder_decoder: bool,
        use_cache: bool,
        mask: Tensor | None,
        positions: Tensor | None,
        memory: Tensor | None,
        encoder_mask: Tensor | None,
        total: int,
        source_positions: Tensor | None = None,
        fast: bool = True,
    ) -> None:
        self.model, self.encoder_decoder = model, encoder_decoder
        self.cache = self.fast = None
        if use_cache:
            self.cache = model.new_cache(capacity=total)  # storage allocated once, at the final length
            self.fast = _decode_step_for(model) if fast else None
        self.mask, self.positions = mask, positions  # (N, L_max) or None
        self.memory, self.encoder_mask = memory, encoder_mask  # (N, S, C), (N, S)
        self.source_positions = source_positions  # (N, S) or None: the encoder's position ids

    def next_logits(self, seq: Tensor) -> Tensor:
        L = seq.size(1)
        start = self.cache.length if self.cache is not None else 0
        mask = self.mask[:, :L] if self.mask is not None else None
        pos = self.positions[:, start:L] if self.positions is not None else None
        if self.fast is not None:  # ids already checked (the prompt) or produced by the model
            return self.fast(seq.narrow(1, start, L - start), self.cache, mask, pos).float()  # (N, V)
        new = seq[:, start:]  # (N, L - start)
        if self.encoder_decoder:
            logits, _ = self.model.decode(
                new, self.memory, self.encoder_mask, None, self.cache, source_positions=self.source_positions
            )
        else:
            logits = self.model(new, attention_mask=mask, position_ids=pos, cache=self.cache, logits_to_keep=1)
        return logits[:, -1].float()  # (N, V)

    def reorder(self, index: Tensor) -> None:
        """Row i continues from old row index[i] (beam search)."""
        if self.cache is not None:
            self.cache.reorder(index)


@dataclass
class _Job:
    """A checked, prepared decoding request."""

    cfg: GenerationConfig
    runner: _Runner
    prompt: Tensor  # (N, T0), rows already repeated R times
    batch: int  # B
    rows_per_prompt: int  # R
    total: int  # T0 + max_new_tokens
    vocab: int  # V, the size of the output distribution
    eos: Tensor | None  # (E,) ids
    pad: int | None
    original_prompt: Tensor = field(repr=False, default=None)  # (B, T0), for the streamer


def _is_encoder_decoder(model: nn.Module) -> bool:
    return hasattr(model, "encode") and hasattr(model, "decode")


def _check_mask(mask: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(mask.shape) != tuple(shape):
        raise DataError(f"{name} must have the shape of its ids {tuple(shape)}, got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise DataError(f"{name} must hold only 0 (padding) and 1 (real token)")


def _encoder_decoder_inputs(
    model: nn.Module,
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    encoder_input_ids: Tensor | None,
    encoder_attention_mask: Tensor | None,
    cfg: GenerationConfig,
) -> tuple[Tensor, int, int]:
    """An EncoderDecoder's checked inputs: the decoder's prompt (starting with the start token),
    the output vocabulary size and the decoder's input vocabulary size (with the start token)."""
    config = model.config
    if encoder_input_ids is None:
        raise DataError("an EncoderDecoder needs encoder_input_ids (the source tokens) to generate")
    if attention_mask is not None:
        raise DataError(
            "for an EncoderDecoder pass the source padding as encoder_attention_mask; attention_mask is the "
            "prompt mask of decoder-only models"
        )
    check_ids(encoder_input_ids, config.src_vocab_size, "encoder_input_ids")
    if encoder_input_ids.size(1) > config.max_len:
        raise DataError(
            f"encoder_input_ids has length {encoder_input_ids.size(1)}, more than the model's max_len={config.max_len}"
        )
    if encoder_attention_mask is not None:
        _check_mask(encoder_attention_mask, tuple(encoder_input_ids.shape), "encoder_attention_mask")
    in_vocab = model.tgt_embed.tok.num_embeddings  # includes a dedicated start token
    start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else config.start_token_id
    if not 0 <= start < in_vocab:
        raise ConfigError(f"decoder_start_token_id={start} is outside the decoder's input vocabulary [0, {in_vocab})")
    B = encoder_input_ids.size(0)
    if input_ids is None:
        return torch.full((B, 1), start, dtype=torch.long, device=encoder_input_ids.device), config.tgt_vocab_size, in_vocab
    check_ids(input_ids, in_vocab, "input_ids")
    if input_ids.size(0) != B:
        raise DataError(f"input_ids has {input_ids.size(0)} rows but encoder_input_ids has {B}")
    if input_ids.size(1) == 0 or bool((input_ids[:, 0] != start).any()):
        input_ids = torch.cat([input_ids.new_full((B, 1), start), input_ids], dim=1)
    return input_ids, config.tgt_vocab_size, in_vocab


def _check_decoder_only_inputs(
    model: nn.Module,
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    encoder_input_ids: Tensor | None,
    encoder_attention_mask: Tensor | None,
) -> None:
    """DataError unless a decoder-only model got a non-empty prompt, left-padded if padded, and no source."""
    if encoder_input_ids is not None or encoder_attention_mask is not None:
        raise DataError(f"{type(model).__name__} is decoder-only; encoder_input_ids/encoder_attention_mask do not apply")
    if input_ids is None:
        raise DataError("generate needs input_ids, the prompt (batch, length)")
    check_ids(input_ids, model.config.vocab_size, "input_ids")
    if input_ids.size(1) == 0:
        raise DataError("input_ids is empty; give at least one token (e.g. a BOS token) to condition on")
    if attention_mask is not None:
        _check_mask(attention_mask, tuple(input_ids.shape), "attention_mask")
        if not bool(attention_mask[:, -1].all()):
            raise DataError(
                "attention_mask has padding at the end of a row; decoder-only generation needs left padding "
                "(pad at the start) so every row's last token is real"
            )


def _check_position_ids(position_ids: Tensor, encdec: bool, batch: int, total: int) -> None:
    """DataError unless ``position_ids`` is a (batch, prompt + max_new_tokens) integer tensor of ids >= 0."""
    if encdec:
        raise DataError("position_ids applies to decoder-only models; an EncoderDecoder places its tokens itself")
    if not isinstance(position_ids, Tensor) or position_ids.is_floating_point() or position_ids.is_complex():
        raise DataError(f"position_ids must be an integer tensor, got {type(position_ids).__name__}"
                        f"{'' if not isinstance(position_ids, Tensor) else ' of ' + str(position_ids.dtype)}")
    if tuple(position_ids.shape) != (batch, total):
        raise DataError(
            f"position_ids has shape {tuple(position_ids.shape)}; it needs one id per prompt token and per token to "
            f"come: ({batch}, prompt length + max_new_tokens = {total})"
        )
    if position_ids.numel() and int(position_ids.min()) < 0:
        raise DataError(f"position_ids holds {int(position_ids.min())}; ids must be >= 0")


def _prepare(
    model: nn.Module,
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    encoder_input_ids: Tensor | None,
    encoder_attention_mask: Tensor | None,
    cfg: GenerationConfig,
    position_ids: Tensor | None = None,
) -> tuple[GenerationConfig, Callable[[], _Job]]:
    """Check everything that can be checked without running the model; return
    a function that does the (costly) setup: repeat rows, encode, build the cache."""
    config = model.config
    encdec = _is_encoder_decoder(model)
    R = cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences
    if encdec:
        input_ids, vocab, in_vocab = _encoder_decoder_inputs(
            model, input_ids, attention_mask, encoder_input_ids, encoder_attention_mask, cfg
        )
        pos_module = model.tgt_embed.pos
    else:
        vocab = in_vocab = config.vocab_size
        _check_decoder_only_inputs(model, input_ids, attention_mask, encoder_input_ids, encoder_attention_mask)
        pos_module = model.embed.pos
    T0 = input_ids.size(1)
    max_len = config.max_len
    if T0 > max_len:
        raise ConfigError(f"input_ids (the prompt) has {T0} tokens, more than the model's max_len={max_len}; shorten it")
    if T0 + cfg.max_new_tokens > max_len:
        raise ConfigError(
            f"prompt length {T0} + max_new_tokens={cfg.max_new_tokens} = {T0 + cfg.max_new_tokens} exceeds the "
            f"model's max_len={max_len}; use max_new_tokens <= {max_len - T0}"
        )
    if position_ids is not None:
        _check_position_ids(position_ids, encdec, input_ids.size(0), T0 + cfg.max_new_tokens)
    eos = cfg.eos_ids
    for e in eos or []:
        if not 0 <= e < vocab:
            raise ConfigError(f"eos_token_id={e} is outside the vocabulary [0, {vocab})")
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else None)
    if pad is not None and not 0 <= pad < in_vocab:
        raise ConfigError(f"pad_token_id={pad} is outside the vocabulary [0, {in_vocab})")
    can_cache = getattr(model, "supports_cache", pos_module.supports_cache)
    if cfg.use_cache is True and not can_cache:
        model.new_cache()  # raises the model's own explanation
    # given position ids: by default each step re-reads the whole sequence (a windowed scheme needs it)
    use_cache = (can_cache and position_ids is None) if cfg.use_cache is None else cfg.use_cache
    cfg = dataclasses.replace(cfg, pad_token_id=pad, use_cache=use_cache)

    def setup() -> _Job:
        device = input_ids.device
        total = T0 + cfg.max_new_tokens
        prompt = input_ids.long().repeat_interleave(R, dim=0)  # (N, T0)
        mask = positions = memory = enc_mask = src_positions = None
        if encdec:
            src, src_mask = encoder_input_ids.long(), encoder_attention_mask
            memory = model.encode(src, src_mask).repeat_interleave(R, dim=0)  # (N, S, C)
            enc_mask = src_mask.repeat_interleave(R, dim=0) if src_mask is not None else None
            src_positions = model.source_positions(src)  # (B, S) or None
            if src_positions is not None:
                src_positions = src_positions.repeat_interleave(R, dim=0)  # (N, S)
        elif attention_mask is not None and not bool(attention_mask.all()):
            m = attention_mask.long().repeat_interleave(R, dim=0)  # (N, T0)
            mask = torch.cat([m, m.new_ones(m.size(0), cfg.max_new_tokens)], dim=1)  # (N, total)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row starts at 0
        if position_ids is not None:  # the caller's, for the prompt and every token to come
            positions = position_ids.to(device).long().repeat_interleave(R, dim=0)  # (N, total)
        runner = _Runner(model, encdec, use_cache, mask, positions, memory, enc_mask, total, src_positions,
                         fast=position_ids is None)  # the fast step places tokens by count, not by given ids
        eos_t = torch.tensor(eos, device=device) if eos else None
        return _Job(cfg, runner, prompt, input_ids.size(0), R, total, vocab, eos_t, pad, input_ids)

    return cfg, setup


# ---------------------------------------------------------------------------- greedy and sampling
class _SampleLoop:
    """Greedy decoding or sampling, one step at a time (so :func:`stream` can yield).

    The output buffer (N, T0 + max_new_tokens) is allocated once; each step
    writes one column. A row that produced EOS is filled with pad afterwards;
    the loop ends when every row has, or after max_new_tokens.
    """

    def __init__(self, job: _Job) -> None:
        self.job, cfg = job, job.cfg
        N, T0 = job.prompt.shape
        self.buf = job.prompt.new_empty(N, job.total)  # (N, total)
        self.buf[:, :T0] = job.prompt
        self.length = T0
        self.unfinished = torch.ones(N, dtype=torch.bool, device=job.prompt.device) if job.eos is not None else None
        self.scores: list[Tensor] | None = [] if cfg.return_dict_in_generate and cfg.output_scores else None
        self.logits: list[Tensor] | None = [] if cfg.return_dict_in_generate and cfg.output_logits else None
        self.processing = cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0 or cfg.sampling
        self.done = cfg.max_new_tokens == 0

    def step(self) -> Tensor:
        """Choose and append one token per row; return them (N,)."""
        job, cfg, L = self.job, self.job.cfg, self.length
        seq = self.buf.narrow(1, 0, L)  # (N, L)
        logits = job.runner.next_logits(seq)  # (N, V)
        scores = process_scores(cfg, seq, logits) if self.processing else logits
        if self.logits is not None:
            self.logits.append(logits.clone())
        if self.scores is not None:
            self.scores.append(scores.clone())
        if cfg.sampling:
            probs = torch.softmax(scores, dim=-1)  # (N, V)
            token = torch.multinomial(probs, 1, generator=cfg.generator).squeeze(1)  # (N,)
        else:
            token = scores.argmax(dim=-1)  # (N,)
        if self.unfinished is not None:
            token = torch.where(self.unfinished, token, job.pad)
            self.unfinished &= ~torch.isin(token, job.eos)
        self.buf[:, L] = token
        self.length = L + 1
        if self.length == job.total or (self.unfinished is not None and not bool(self.unfinished.any())):
            self.done = True
        return token

    def output(self) -> GenerateOutput:
        return GenerateOutput(
            sequences=self.buf[:, : self.length],
            scores=tuple(self.scores) if self.scores is not None else None,
            logits=tuple(self.logits) if self.logits is not None else None,
        )


# ---------------------------------------------------------------------------- beam search
def _gather_beams(x: Tensor, index: Tensor) -> Tensor:
    """x (B, K, ...), index (B, K') -> (B, K', ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


@dataclass
class _Beams:
    """Beam search's state for B prompts with M beams each, over the output buffer of ``total`` columns.

    ``running`` (B, M, total) are the live beams and ``running_scores`` (B, M)
    their summed log-probabilities; ``finished`` (B, M, total) the best
    finished hypotheses, ``finished_scores`` (B, M) their length-penalised
    scores (``_EXCLUDED`` for empty slots) and ``is_finished`` (B, M) which
    slots hold one. ``*_parents`` (B, M, max_new_tokens) record each
    generated token's parent row (-1 where nothing was generated), to crop
    the output. ``can_improve`` (B, 1): a prompt's running beams may still
    beat its worst finished hypothesis.
    """

    running: Tensor
    running_scores: Tensor
    running_parents: Tensor
    finished: Tensor
    finished_scores: Tensor
    finished_parents: Tensor
    is_finished: Tensor
    can_improve: Tensor

    @classmethod
    def start(cls, job: _Job) -> _Beams:
        B, M = job.batch, job.cfg.num_beams
        T0, device = job.prompt.size(1), job.prompt.device
        running = job.prompt.new_full((B, M, job.total), job.pad if job.pad is not None else 0)  # (B, M, total)
        running[:, :, :T0] = job.prompt.view(B, M, T0)
        running_scores = torch.zeros(B, M, device=device)
        running_scores[:, 1:] = _EXCLUDED  # all beams start equal: only the first may expand
        parents = torch.full((B, M, job.cfg.max_new_tokens), -1, dtype=torch.long, device=device)
        return cls(
            running=running, running_scores=running_scores, running_parents=parents,
            finished=running.clone(), finished_scores=torch.full((B, M), _EXCLUDED, device=device),
            finished_parents=parents.clone(), is_finished=torch.zeros(B, M, dtype=torch.bool, device=device),
            can_improve=torch.ones(B, 1, dtype=torch.bool, device=device),
        )


def _beam_candidates(cfg: GenerationConfig, total_lp: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """The K candidates (B, K) to consider, by summed log-prob (B, M V): the top K, or K sampled
    without replacement under ``do_sample``; returns (their log-probs, their flat indices), best first."""
    if not cfg.sampling:
        return torch.topk(total_lp, K)
    pick = torch.multinomial(F.softmax(total_lp, dim=-1), K, generator=cfg.generator)  # (B, K)
    top_lp, order = total_lp.gather(1, pick).sort(dim=-1, descending=True)
    return top_lp, pick.gather(1, order)


def _beam_stops(job: _Job, token: Tensor, cur: int) -> Tensor:
    """(B, K) bool: the candidate's new token ends it (an EOS, or the buffer's last column)."""
    if cur + 1 >= job.total:
        return torch.ones_like(token, dtype=torch.bool)
    if job.eos is not None:
        return torch.isin(token, job.eos)
    return torch.zeros_like(token, dtype=torch.bool)


def _keep_finished(beams: _Beams, top_seqs: Tensor, top_parents: Tensor, top_lp: Tensor, just_finished: Tensor,
                   generated: int, cfg: GenerationConfig) -> None:
    """Merge the candidates that just finished into the M best finished hypotheses (scored
    ``log-prob / generated ** length_penalty``), unless the prompt is done or can no longer improve."""
    M = cfg.num_beams
    fin_lp = top_lp / (generated ** float(cfg.length_penalty))
    full = beams.is_finished.all(dim=-1, keepdim=True) & (cfg.early_stopping is True)
    fin_lp = fin_lp + full.to(torch.float32) * _EXCLUDED
    fin_lp = fin_lp + (~beams.can_improve).to(torch.float32) * _EXCLUDED
    fin_lp = fin_lp + (~just_finished) * _EXCLUDED
    merged_scores = torch.cat([beams.finished_scores, fin_lp], dim=1)  # (B, M + K)
    best = torch.topk(merged_scores, M).indices
    beams.finished = _gather_beams(torch.cat([beams.finished, top_seqs], dim=1), best)
    beams.finished_scores = _gather_beams(merged_scores, best)
    beams.finished_parents = _gather_beams(torch.cat([beams.finished_parents, top_parents], dim=1), best)
    beams.is_finished = _gather_beams(torch.cat([beams.is_finished, just_finished], dim=1), best)


def _beam_search(job: _Job) -> GenerateOutput:
    """Hugging Face's vectorised beam search (transformers 4.50+ ``_beam_search``).

    Each step keeps the K = max(2, 1 + #eos) * num_beams best continuations of
    all beams; those ending in EOS (or reaching the length limit) and ranked
    among the first num_beams become finished hypotheses with score
    sum_logprobs / (generated_length ** length_penalty), where the generated
    length counts every token after the prompt, EOS included; the best
    num_beams unfinished ones continue. ``early_stopping`` follows HF: True
    stops a prompt once num_beams hypotheses are finished; False stops when
    the best running beam, scored at the current length, cannot beat the
    worst finished one; "never" (with length_penalty > 0) scores it at the
    maximum length instead.
    """
    cfg = job.cfg
    B, M, V = job.batch, cfg.num_beams, job.vocab
    N, T0 = job.prompt.shape
    device = job.prompt.device
    lp, es = float(cfg.length_penalty), cfg.early_stopping
    n_eos = 0 if job.eos is None else job.eos.numel()
    K = max(2, 1 + n_eos) * M
    in_top = torch.arange(K, device=device) < M  # (K,) only the first M may finish
    min_keep = n_eos + 1 if n_eos else 2
    beams = _Beams.start(job)
    batch_offset = (torch.arange(B, device=device) * M)[:, None]  # (B, 1)
    all_scores: list[Tensor] | None = [] if cfg.return_dict_in_generate and cfg.output_scores else None
    all_logits: list[Tensor] | None = [] if cfg.return_dict_in_generate and cfg.output_logits else None

    for cur in range(T0, job.total):
        flat = beams.running[:, :, :cur].reshape(N, cur)  # (N, L)
        logits = job.runner.next_logits(flat)  # (N, V)
        log_probs = process_scores(cfg, flat, F.log_softmax(logits, dim=-1), min_keep)  # (N, V)
        if all_logits is not None:
            all_logits.append(logits.clone())
        if all_scores is not None:
            all_scores.append(log_probs.clone())
        total_lp = (log_probs.view(B, M, V) + beams.running_scores[:, :, None]).view(B, M * V)  # (B, M V)
        top_lp, pick = _beam_candidates(cfg, total_lp, K)  # (B, K)
        parent, token = pick // V, pick % V  # (B, K) beam within the prompt, new token
        top_seqs = _gather_beams(beams.running, parent)  # (B, K, total)
        top_seqs[:, :, cur] = token
        top_parents = _gather_beams(beams.running_parents, parent)  # (B, K, max_new)
        top_parents[:, :, cur - T0] = parent + batch_offset
        hits = _beam_stops(job, token, cur)

        # the best M candidates that did not stop keep running; those that stopped may join the finished
        run_lp = top_lp + hits.to(torch.float32) * _EXCLUDED
        keep = torch.topk(run_lp, M).indices  # (B, M)
        beams.running = _gather_beams(top_seqs, keep)
        beams.running_scores = _gather_beams(run_lp, keep)
        beams.running_parents = _gather_beams(top_parents, keep)
        _keep_finished(beams, top_seqs, top_parents, top_lp, hits & in_top[None, :], cur + 1 - T0, cfg)
        job.runner.reorder(beams.running_parents[:, :, cur - T0].reshape(N))

        best_len = (job.total - T0) if (es == "never" and lp > 0.0) else (cur + 1 - T0)
        best_running = beams.running_scores[:, :1] / (best_len**lp)  # (B, 1)
        worst_finished = torch.where(beams.is_finished, beams.finished_scores.min(dim=1, keepdim=True).values,
                                     _EXCLUDED)
        beams.can_improve &= (best_running > worst_finished).any(dim=-1, keepdim=True)
        done = bool(beams.is_finished.all()) and es is True
        if not bool(beams.can_improve.any()) or done or bool(hits.all()):
            break

    R = cfg.num_return_sequences
    seqs = beams.finished[:, :R].reshape(B * R, job.total)
    scores = beams.finished_scores[:, :R].reshape(B * R)
    generated = int((beams.finished_parents[:, :R] >= 0).sum(dim=-1).max()) if cfg.max_new_tokens else 0
    return GenerateOutput(
        sequences=seqs[:, : T0 + generated],
        scores=tuple(all_scores) if all_scores is not None else None,
        logits=tuple(all_logits) if all_logits is not None else None,
        sequences_scores=scores,
    )


# ---------------------------------------------------------------------------- entry points
def generate(
    model: nn.Module,
    input_ids: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    encoder_input_ids: Tensor | None = None,
    encoder_attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    **options: Any,
) -> Tensor | GenerateOutput:
    """Decode new tokens, Hugging Face style.

    Args:
        model: a ``GPT`` or an ``EncoderDecoder`` (call ``model.eval()`` first
            unless you want dropout while decoding).
        input_ids: GPT: the prompt (B, T0), left-padded when rows differ in
            length. EncoderDecoder: an optional forced decoder prefix; the
            start token is prepended when missing.
        attention_mask: GPT only: (B, T0), 1 for real tokens, 0 for the left padding.
        position_ids: GPT only, optional: (B, T0 + max_new_tokens), the position id of
            every prompt token and of every token to come (e.g. place-value ids, which
            depend on the format; default: 0, 1, 2, ... from each row's first real token).
            Decoding then runs the model's own forward, without the cache unless use_cache=True.
        encoder_input_ids, encoder_attention_mask: EncoderDecoder only: the source (B, S) and its padding mask.
        **options: the fields of :class:`GenerationConfig` (max_new_tokens,
            do_sample, temperature, top_k, top_p, repetition_penalty,
            no_repeat_ngram_size, num_beams, length_penalty, early_stopping,
            num_return_sequences, eos_token_id, pad_token_id,
            decoder_start_token_id, use_cache, output_scores, output_logits,
            return_dict_in_generate, generator, streamer).
    Returns:
        (B * num_return_sequences, L) token ids: the prompt followed by the new
        tokens (GPT), or the decoder tokens beginning with the start token
        (EncoderDecoder); rows that ended early are padded with pad_token_id.
        A :class:`GenerateOutput` when ``return_dict_in_generate=True``.
    Raises:
        ConfigError: an unknown or out-of-range option, or a prompt that with
            max_new_tokens would exceed the model's max_len; raised before any work.
        DataError: token ids outside the vocabulary, a malformed mask or malformed position ids.
    """
    cfg = GenerationConfig.from_kwargs(options)
    cfg, setup = _prepare(model, input_ids, attention_mask, encoder_input_ids, encoder_attention_mask, cfg, position_ids)
    with torch.inference_mode():
        job = setup()
        if cfg.num_beams > 1:
            if cfg.max_new_tokens:
                out = _beam_search(job)
            else:  # nothing to search: each prompt once per returned sequence
                out = GenerateOutput(job.original_prompt.long().repeat_interleave(cfg.num_return_sequences, dim=0))
        else:
            loop = _SampleLoop(job)
            if cfg.streamer is not None:
                cfg.streamer.put(job.original_prompt.cpu())
            while not loop.done:
                token = loop.step()
                if cfg.streamer is not None:
                    cfg.streamer.put(token.cpu())
            if cfg.streamer is not None:
                cfg.streamer.end()
            out = loop.output()
    out = _outside_inference_mode(out)
    return out if cfg.return_dict_in_generate else out.sequences


def _outside_inference_mode(out: GenerateOutput) -> GenerateOutput:
    """Copies that are ordinary tensors: inference-mode tensors refuse in-place
    edits and autograd outside inference mode, which would surprise a caller."""

    def copy(x):
        if x is None:
            return None
        return tuple(t.clone() for t in x) if isinstance(x, tuple) else x.clone()

    return GenerateOutput(copy(out.sequences), copy(out.scores), copy(out.logits), copy(out.sequences_scores))


class _TokenStream:
    """Iterator over the new tokens (N,) of each step; ``.sequences`` holds the result so far."""

    def __init__(self, setup: Callable[[], _Job]) -> None:
        self._setup, self._loop = setup, None

    def __iter__(self) -> _TokenStream:
        return self

    def __next__(self) -> Tensor:
        with torch.inference_mode():
            if self._loop is None:
                self._loop = _SampleLoop(self._setup())
            if self._loop.done:
                raise StopIteration
            token = self._loop.step()
        return token.clone()  # an ordinary tensor (see _outside_inference_mode)

    @property
    def sequences(self) -> Tensor | None:
        return None if self._loop is None else self._loop.buf[:, : self._loop.length].clone()


def stream(
    model: nn.Module,
    input_ids: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    encoder_input_ids: Tensor | None = None,
    encoder_attention_mask: Tensor | None = None,
    **options: Any,
) -> Iterator[Tensor]:
    """Like :func:`generate` (greedy or sampling), but yield each step's new
    tokens (N,) as soon as they are chosen. Options are checked at the call,
    before the first token; the returned iterator's ``.sequences`` is the
    (N, L) result so far.

    Example::

        for tok in stream(model, ids, max_new_tokens=50, do_sample=True):
            print(tokenizer.decode(tok.tolist()), end="", flush=True)
    """
    cfg = GenerationConfig.from_kwargs(options)
    if cfg.num_beams > 1:
        raise ConfigError("stream() yields one token per step; beam search (num_beams > 1) cannot stream")
    if cfg.return_dict_in_generate or cfg.streamer is not None:
        raise ConfigError("stream() takes neither return_dict_in_generate nor streamer; it is the stream")
    _, setup = _prepare(model, input_ids, attention_mask, encoder_input_ids, encoder_attention_mask, cfg)
    return _TokenStream(setup)


# ---------------------------------------------------------------------------- best of n
Scorer = Callable[[list[int], list[int]], float]
"""scorer(prompt_ids, new_ids) -> a number, higher is better (e.g. 1.0 if a verifier accepts)."""


@dataclass
class BestOfNOutput:
    """Result of :func:`best_of_n` for B prompts and n samples each.

    Attributes:
        sequences: (B, L) the best sample of each prompt (prompt + new tokens for GPT).
        scores: (B,) the best sample's score.
        candidates: (B, n, L) every sample.
        candidate_scores: (B, n) every sample's score.
        logprobs: (B, n) each sample's log-probability under the model
            (temperature 1, summed over the new tokens up to and including EOS).
    """

    sequences: Tensor
    scores: Tensor
    candidates: Tensor
    candidate_scores: Tensor
    logprobs: Tensor


def best_of_n(
    model: nn.Module,
    input_ids: Tensor | None,
    n: int,
    scorer: Scorer | None = None,
    **sampling_kwargs: Any,
) -> BestOfNOutput:
    """Draw ``n`` samples per prompt and keep the best by ``scorer``.

    Args:
        n: samples per prompt (>= 1).
        scorer: ``scorer(prompt_ids, new_ids) -> float``, higher is better;
            ``prompt_ids`` is the prompt without padding (EncoderDecoder: the
            source), ``new_ids`` the sample's new tokens up to and including
            EOS. None ranks by the sequence log-probability. Ties are
            broken by log-probability, so a verifier scoring 0/1 picks the most
            likely accepted sample.
        **sampling_kwargs: options of :func:`generate` (do_sample defaults to
            True; encoder_input_ids etc. pass through).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r} must be an integer >= 1")
    for key in ("num_return_sequences", "num_beams", "return_dict_in_generate", "output_logits"):
        if key in sampling_kwargs:
            raise ConfigError(f"best_of_n sets {key} itself; do not pass it")
    sampling_kwargs.setdefault("do_sample", True)
    out = generate(
        model, input_ids, num_return_sequences=n, return_dict_in_generate=True, output_logits=True, **sampling_kwargs
    )
    seqs = out.sequences  # (B n, L)
    steps = len(out.logits)
    T0 = seqs.size(1) - steps
    eos = GenerationConfig(eos_token_id=sampling_kwargs.get("eos_token_id")).eos_ids or []
    logprobs = _sequence_logprobs(out.logits, seqs[:, T0:], eos)  # (B n,)
    B = seqs.size(0) // n
    if scorer is None:
        scores = logprobs.clone()
    else:
        prompts = _prompt_rows(input_ids, sampling_kwargs)  # B lists, padding removed
        values = []
        for i, row in enumerate(seqs[:, T0:].tolist()):
            cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))  # keep the EOS, drop the padding
            values.append(float(scorer(prompts[i // n], row[:cut])))
        scores = torch.tensor(values, dtype=torch.float32)
    scores, logprobs = scores.view(B, n).cpu(), logprobs.view(B, n).cpu()
    # lexicographic (score, logprob): sort by logprob first, then stably by score
    order = torch.argsort(logprobs, dim=1, descending=True, stable=True)
    by_score = torch.argsort(scores.gather(1, order), dim=1, descending=True, stable=True)
    best = order.gather(1, by_score)[:, 0]  # (B,)
    cands = seqs.view(B, n, -1)
    rows = torch.arange(B)
    return BestOfNOutput(
        sequences=cands[rows, best.to(cands.device)],
        scores=scores[rows, best],
        candidates=cands,
        candidate_scores=scores,
        logprobs=logprobs,
    )


def _prompt_rows(input_ids: Tensor | None, kwargs: dict[str, Any]) -> list[list[int]]:
    """Each prompt as a list of ids without padding: the GPT prompt, or the EncoderDecoder source."""
    ids, mask = input_ids, kwargs.get("attention_mask")
    if kwargs.get("encoder_input_ids") is not None:
        ids, mask = kwargs["encoder_input_ids"], kwargs.get("encoder_attention_mask")
    rows = ids.tolist()
    if mask is None:
        return rows
    return [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, mask.tolist())]


def _sequence_logprobs(logits: Sequence[Tensor], new_tokens: Tensor, eos: list[int]) -> Tensor:
    """Sum over steps of log softmax(logits)[token], stopping after each row's first EOS. -> (N,)"""
    if not logits:
        return torch.zeros(new_tokens.size(0))
    lp = torch.stack([F.log_softmax(x.float(), dim=-1) for x in logits], dim=1)  # (N, steps, V)
    token_lp = lp.gather(2, new_tokens[:, :, None]).squeeze(2)  # (N, steps)
    if eos:
        is_eos = torch.isin(new_tokens, torch.tensor(eos, device=new_tokens.device)).long()
        after = (is_eos.cumsum(dim=1) - is_eos) > 0  # strictly after the first EOS
        token_lp = token_lp.masked_fill(after, 0.0)
    return token_lp.sum(dim=1)


__all__ = [
    "BestOfNOutput",
    "GenerateOutput",
    "GenerationConfig",
    "Streamer",
    "apply_repetition_penalty",
    "ban_repeated_ngrams",
    "best_of_n",
    "generate",
    "process_scores",
    "stream",
    "top_k_filter",
    "top_p_filter",
]
