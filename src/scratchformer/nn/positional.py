"""Positional encodings, chosen by name from one registry.

A scheme can act in up to four places, each a method with a do-nothing
default, so the model never asks which scheme it holds:

- ``embed(x, positions)``: add absolute encodings to the token embeddings
  (learned, sinusoidal, sinusoidal_xl);
- ``rotary(start, T)``: cos/sin tables that rotate queries and keys (rope);
- ``attention_bias(start, T, S)``: a bias added to the attention scores (alibi);
- ``cross_attention(query_ids, key_ids)``: rotary tables and a bias for an
  encoder-decoder's cross-attention (place_rope).

Legend: B batch, T new positions, S key positions, C model width, H heads,
D head width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, unknown_name


class PositionalEncoding(nn.Module):
    """Base class: no positional information at all (the ``none`` scheme)."""

    #: False when the encoding of a position depends on the sequence length,
    #: which rules out incremental decoding with a key/value cache.
    supports_cache = True
    #: True when the scheme reads the caller's position ids rather than only the indices
    #: start..start+T-1 (the encoder-decoder's place-value switches need such a scheme).
    reads_position_ids = False

    def __init__(self, *, d_model: int, n_head: int, max_len: int) -> None:
        super().__init__()
        self.d_model, self.n_head, self.max_len = d_model, n_head, max_len

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, T, C); positions: (T,) or (B, T) absolute indices. Returns (B, T, C)."""
        return x

    def rotary(
        self, start: int, T: int, device: torch.device, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """cos/sin tables for positions start..start+T-1, each (T, D); a scheme that rotates by the
        caller's ``positions`` (B, T) returns (B, 1, T, D) tables instead."""
        return None

    def attention_bias(
        self, start: int, T: int, S: int, causal: bool, device: torch.device, positions: Tensor | None = None
    ) -> Tensor | None:
        """A bias for the scores, (H, T, S) (or (B, 1, T, S) from the caller's ``positions``), or None."""
        return None

    def cross_attention(self, query_ids: Tensor, key_ids: Tensor) -> CrossPositions | None:
        """What cross-attention sees of positions: decoder queries of ids ``query_ids`` (B or 1, T)
        meet encoder keys of ids ``key_ids`` (B or 1, S). None: nothing (the 2017 paper's choice)."""
        return None


class CrossPositions(NamedTuple):
    """Positions in cross-attention: rotary tables for the queries and for the keys (each
    (B or 1, 1, T or S, D), or None) and a score bias (B or 1, 1, T, S), or None."""

    query_rope: tuple[Tensor, Tensor] | None
    key_rope: tuple[Tensor, Tensor] | None
    bias: Tensor | None


def ids_or_indices(start: int, T: int, positions: Tensor | None, device: torch.device) -> Tensor:
    """(B or 1, T): the caller's position ids of T tokens, or their indices start..start+T-1."""
    if positions is not None:
        return positions.view(-1, T)
    return torch.arange(start, start + T, device=device)[None]


FAR = -1e4
"""The score bias of a key outside a window. Whenever some key lies within the window a far
key's weight is exactly 0 (exp underflows, in float32 and bfloat16 alike), as with -inf; a query
with no key in its window (a decoder position past the end of the answer) gets finite weights
over every key instead of NaN, like an all-masked row in ``masks.ensure_visible``."""


def window_bias(query_ids: Tensor, key_ids: Tensor, window: int) -> Tensor:
    """(B or 1, 1, T, S): 0 where a key's id is within ``window`` of the query's, else ``FAR``.
    query_ids: (B or 1, T); key_ids: (B or 1, S)."""
    far = (query_ids[:, :, None] - key_ids[:, None, :]).abs() > window  # (B, T, S)
    return torch.zeros(far.shape, device=far.device).masked_fill(far, FAR)[:, None]  # (B, 1, T, S)


class LearnedPositions(PositionalEncoding):
    """A trained vector per position (GPT-2, BERT), added times ``scale`` (tutorial 000 adds it
    divided by sqrt(d_model): ``scale = d_model ** -0.5``)."""

    reads_position_ids = True

    def __init__(self, *, d_model: int, n_head: int, max_len: int, scale: float = 1.0) -> None:
        super().__init__(d_model=d_model, n_head=n_head, max_len=max_len)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ConfigError(f"learned positions: scale={scale!r} must be a number > 0")
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.scale = float(scale)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.scale != 1.0:
            return x + self.scale * self.weight[positions]  # (B, T, C)
        return x + self.weight[positions]  # (B, T, C)


def vaswani_table(max_len: int, d_model: int, base: float = 10000.0) -> Tensor:
    """PE[pos, 2i] = sin(pos / base^(2i/C)), PE[pos, 2i+1] = cos(pos / base^(2i/C))."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (L, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (C/2,)
    angle = pos / base ** (two_i / d_model)  # (L, C/2)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table.float()  # (L, C)


class SinusoidalPositions(PositionalEncoding):
    """The fixed sine/cosine table of "Attention Is All You Need" (sin on even, cos on odd dims)."""

    reads_position_ids = True

    def __init__(self, *, d_model: int, n_head: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__(d_model=d_model, n_head=n_head, max_len=max_len)
        self.register_buffer("table", vaswani_table(max_len, d_model, base), persistent=False)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table[positions].to(x.dtype)  # (B, T, C)


def sinusoid_position_encoding(
    sequence_length: int,
    hidden_size: int,
    memory_length: int = 0,
    max_timescale: float = 1e4,
    min_timescale: float = 2.0,
    clamp_length: int = 0,
    causal: bool = False,
) -> np.ndarray:
    """Transformer-XL style table as in DeepMind's neural_networks_chomsky_hierarchy.

    Positions run *downwards*: L+M, L+M-1, ..., 1 when ``causal`` (L + M rows),
    and L+M, ..., -L+1 otherwise (2L + M rows), optionally clipped to
    [-clamp_length, clamp_length]. Frequencies are max_timescale^(-f/C) for
    f = 0, min_timescale, 2*min_timescale, ...; the sines of all frequencies
    come first, then the cosines (concatenated, not interleaved).
    Returns an array of shape (rows, 2 * ceil(C / min_timescale)).
    """
    freqs = np.arange(0, hidden_size, min_timescale)
    inv_freq = max_timescale ** (-freqs / hidden_size)  # (C/2,)
    stop = 0 if causal else -sequence_length
    pos_seq = np.arange(sequence_length + memory_length, stop, -1.0)  # (rows,)
    if clamp_length:
        pos_seq = np.clip(pos_seq, -clamp_length, clamp_length)
    angles = np.einsum("i,j->ij", pos_seq, inv_freq)  # (rows, C/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


class SinusoidalXLPositions(PositionalEncoding):
    """``sinusoid_position_encoding`` added to the token embeddings.

    A sequence of length T receives the first T rows of the table built for
    length T. With ``causal=True`` and no memory (the chomsky-hierarchy
    default) that is the whole table: position t gets the encoding of T - t,
    so a token's encoding depends on the sequence length. Hence no key/value
    cache for this scheme (``supports_cache = False``).
    """

    supports_cache = False

    def __init__(
        self,
        *,
        d_model: int,
        n_head: int,
        max_len: int,
        max_timescale: float = 1e4,
        min_timescale: float = 2.0,
        memory_length: int = 0,
        clamp_length: int = 0,
        causal: bool = True,
    ) -> None:
        super().__init__(d_model=d_model, n_head=n_head, max_len=max_len)
        if d_model % 2:
            raise ConfigError(f"sinusoidal_xl needs an even d_model, got d_model={d_model}")
        if min_timescale != 2.0:
            # the table's width is 2 * ceil(C / min_timescale); only 2 matches C
            raise ConfigError(f"sinusoidal_xl needs min_timescale=2 to match d_model, got {min_timescale}")
        self.options = dict(
            max_timescale=max_timescale,
            min_timescale=min_timescale,
            memory_length=memory_length,
            clamp_length=clamp_length,
            causal=causal,
        )
        # The first T rows of the length-T table hold positions T+M, ..., M+1 (clamped),
        # which are the last T of the first max_len rows of the length-max_len table.
        table = sinusoid_position_encoding(max_len, d_model, **self.options)[:max_len]
        self.register_buffer("table", torch.from_numpy(table).float(), persistent=False)  # (max_len, C)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        T = x.size(1)
        return x + self.table[self.max_len - T :].to(x.dtype)  # (B, T, C)


class RotaryPositions(PositionalEncoding):
    """RoPE: rotate each (i, i + D/2) pair of query/key dimensions by pos * base^(-2i/D).

    Scores q_m . k_n then depend on positions only through m - n.
    """

    def __init__(self, *, d_model: int, n_head: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__(d_model=d_model, n_head=n_head, max_len=max_len)
        D = d_model // n_head
        if D % 2:
            raise ConfigError(f"rope needs an even head width, got d_model/n_head={D}")
        inv_freq = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq  # (L, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, D)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rotary(
        self, start: int, T: int, device: torch.device, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.cos[start : start + T], self.sin[start : start + T]  # 2 x (T, D)


class PlaceRotary(RotaryPositions):
    """RoPE by the caller's place-value ids: scores depend on the difference of two tokens' ids.

    Position coupling (tasks/lengthgen.py) with rotary instead of learned
    vectors: a query of place i meets the keys of place i (and i - 1, for the
    carry) at the same id difference whatever i is, so no id needs to have
    been trained and no random offset is needed. Without ``positions`` the ids
    are the token indices (plain RoPE), so cached decoding works as for rope.

    In an encoder-decoder the ids mean the same on both sides (operand digit i
    and answer digit i have id i), so this scheme also rotates cross-attention:
    queries by the decoder's ids, keys by the encoder's (plain rope leaves
    cross-attention alone: indices of two different sequences mean nothing to
    each other).

    ``window`` > 0 also hides every key whose id differs from the query's by
    more than ``window`` (a bias of ``FAR``), in self- and cross-attention:
    attention then only ever sees id differences that training showed, however
    long the problem. With caller ids the window needs the whole sequence at
    once (the ids of cached keys are not kept).
    """

    reads_position_ids = True

    def __init__(self, *, d_model: int, n_head: int, max_len: int, base: float = 10000.0, window: int = 0) -> None:
        super().__init__(d_model=d_model, n_head=n_head, max_len=max_len, base=base)
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ConfigError(f"place_rope: window={window!r} must be an int >= 0 (0: no window)")
        self.window = window

    def attention_bias(
        self, start: int, T: int, S: int, causal: bool, device: torch.device, positions: Tensor | None = None
    ) -> Tensor | None:
        if not self.window:
            return None
        if positions is not None and (start or S != T):
            raise ValueError("place_rope with a window and position ids needs the whole sequence at once (no cache)")
        keys = positions if positions is not None else torch.arange(S, device=device)
        return window_bias(ids_or_indices(start, T, positions, device), keys.view(-1, S), self.window)

    def rotary(
        self, start: int, T: int, device: torch.device, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if positions is None:
            return super().rotary(start, T, device)
        return self._tables(positions.view(-1, positions.size(-1)))

    def cross_attention(self, query_ids: Tensor, key_ids: Tensor) -> CrossPositions:
        bias = window_bias(query_ids, key_ids, self.window) if self.window else None
        return CrossPositions(self._tables(query_ids), self._tables(key_ids), bias)

    def _tables(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """ids (B or 1, T) -> cos, sin, each (B or 1, 1, T, D)."""
        return self.cos[ids][:, None], self.sin[ids][:, None]


def alibi_slopes(n_head: int) -> Tensor:
    """Head slopes of ALiBi: 2^(-8/n), 2^(-16/n), ... for n a power of two;
    otherwise the slopes of the next lower power of two, then every other
    slope of the next higher one (Press et al., 2022)."""

    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(powers(n_head))
    lower = 2 ** math.floor(math.log2(n_head))
    extra = powers(2 * lower)[0::2][: n_head - lower]
    return torch.tensor(powers(lower) + extra)


class ALiBiPositions(PositionalEncoding):
    """ALiBi: no embedding; each head adds -slope * distance to its scores."""

    def __init__(self, *, d_model: int, n_head: int, max_len: int) -> None:
        super().__init__(d_model=d_model, n_head=n_head, max_len=max_len)
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)

    def attention_bias(
        self, start: int, T: int, S: int, causal: bool, device: torch.device, positions: Tensor | None = None
    ) -> Tensor:
        q = torch.arange(start, start + T, device=device)[:, None]  # (T, 1)
        k = torch.arange(S, device=device)[None, :]  # (1, S)
        distance = (q - k).abs().float()  # (T, S); only k <= q survive a causal mask
        return -self.slopes.to(device)[:, None, None] * distance  # (H, T, S)


class PlacePositions(PositionalEncoding):
    """A trained vector per *place-value* id, with a random offset per row in training.

    For tasks that give each token a position id by meaning rather than by
    index (position coupling, Abacus embeddings: digits of equal significance
    share an id; see tasks/lengthgen.py). Id 0 means "no place" (operators,
    BOS) and is never shifted; in training every other id of a row moves by
    the same offset drawn from 0..``max_offset``, so the vectors of ids longer
    problems use at test time (offset 0) are trained too.

    Needs ``position_ids`` from the caller (the default 0..T-1 would treat
    token indices as places). ``table="sinusoidal"`` uses the fixed sine
    table instead of trained vectors, multiplied by ``scale`` (then no offset
    is needed for untrained ids, but one still helps the model not to rely on
    absolute places).
    """

    reads_position_ids = True

    def __init__(
        self, *, d_model: int, n_head: int, max_len: int, max_offset: int = 0, table: str = "learned",
        scale: float = 1.0,
    ) -> None:
        super().__init__(d_model=d_model, n_head=n_head, max_len=max_len)
        if isinstance(max_offset, bool) or not isinstance(max_offset, int) or not 0 <= max_offset < max_len:
            raise ConfigError(f"place positions: max_offset={max_offset!r} must be an int in 0..{max_len - 1} (max_len)")
        self.max_offset = max_offset
        if table == "learned":
            self.weight = nn.Parameter(torch.empty(max_len, d_model))
            nn.init.normal_(self.weight, std=0.02)
        elif table == "sinusoidal":
            # scale: the raw table's rows have norm sqrt(C/2), which can drown small token embeddings
            self.register_buffer("weight", scale * vaswani_table(max_len, d_model), persistent=False)
        else:
            raise ConfigError(f"place positions: table={table!r} must be 'learned' or 'sinusoidal'")

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.training and self.max_offset:
            rows = positions.view(-1, positions.size(-1))  # (B or 1, T)
            offset = torch.randint(0, self.max_offset + 1, (x.size(0), 1), device=x.device)  # (B, 1)
            positions = torch.where(rows > 0, rows + offset, rows)  # (B, T)
            top = int(positions.max())
            if top >= self.max_len:
                raise ValueError(
                    f"place id {top} (with a training offset up to {self.max_offset}) exceeds the table of "
                    f"max_len={self.max_len}; lower positional_options.max_offset or raise max_len"
                )
        return x + self.weight[positions]  # (B, T, C)


POSITIONAL: dict[str, type[PositionalEncoding]] = {
    "none": PositionalEncoding,
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "sinusoidal_xl": SinusoidalXLPositions,
    "rope": RotaryPositions,
    "alibi": ALiBiPositions,
    "place": PlacePositions,
    "place_rope": PlaceRotary,
}


def build_positional(name: str, *, d_model: int, n_head: int, max_len: int, **options) -> PositionalEncoding:
    """Build the scheme registered under ``name``; unknown names and options are errors."""
    if name not in POSITIONAL:
        raise unknown_name("positional encoding", name, POSITIONAL)
    try:
        return POSITIONAL[name](d_model=d_model, n_head=n_head, max_len=max_len, **options)
    except TypeError as e:
        raise ConfigError(f"bad option for positional encoding {name!r}: {e}") from None
