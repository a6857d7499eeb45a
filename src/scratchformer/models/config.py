"""Config dataclasses of the architectures. Each validates itself on creation,
so a bad value is an error naming the field before any tensor is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import Config
from ..errors import ConfigError
from ..nn.feedforward import ACTIVATIONS
from ..nn.norm import NORMS
from ..nn.positional import POSITIONAL


@dataclass
class TransformerConfig(Config):
    """Options shared by every Transformer stack.

    The ablation ladder is a walk through four switches: ``use_mlp``,
    ``positional`` ("none" to drop positions), ``norm`` ("none" to drop it)
    and ``use_residual``; "deeper" is ``n_layer``.

    ``bias`` is every Linear's and norm's bias; ``attn_bias`` (None: as
    ``bias``) overrides it for the attention projections (the GPT tutorial's
    attention has none, its feed-forward has). ``final_norm`` (None: only
    for pre-norm stacks) puts a norm after the last block. ``init`` is
    "normal" (N(0, init_std) for Linear and Embedding weights) or "xavier"
    (Xavier-uniform for every parameter with two or more dimensions, as the
    GPT tutorial initialises).
    """

    vocab_size: int = 64
    d_model: int = 128
    n_head: int = 4
    n_layer: int = 2
    d_ff: int = 0  # 0 means 4 * d_model
    max_len: int = 256
    dropout: float = 0.0
    positional: str = "learned"
    positional_options: dict[str, Any] = field(default_factory=dict)
    norm: str = "layernorm"
    norm_eps: float | None = None  # None: the norm's own default
    norm_first: bool = False  # False: post-norm (2017 paper); True: pre-norm (GPT-2)
    activation: str = "relu"
    use_mlp: bool = True
    use_residual: bool = True
    bias: bool = True
    attn_bias: bool | None = None
    final_norm: bool | None = None
    init: Literal["normal", "xavier"] = "normal"
    attn_impl: Literal["fused", "reference"] = "fused"
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model)
    tie_embeddings: bool = False
    pad_token_id: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("vocab_size", "d_model", "n_head", "n_layer", "max_len")
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
        self._positive("d_ff")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                f"choose n_head among {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0][:8]}..."
            )
        self._probability("dropout")
        if self.init_std <= 0:
            raise ConfigError(f"{type(self).__name__}.init_std={self.init_std} must be > 0 (GPT-2 uses 0.02)")
        if self.norm_eps is not None and self.norm_eps <= 0:
            raise ConfigError(f"{type(self).__name__}.norm_eps={self.norm_eps} must be > 0, or null for the norm's default")
        self._choice("positional", POSITIONAL)
        self._choice("norm", NORMS)
        self._choice("activation", ACTIVATIONS)
        self._choice("attn_impl", ["fused", "reference"])
        self._choice("init", ["normal", "xavier"])
        for name in ("attn_bias", "final_norm"):
            if getattr(self, name) not in (None, True, False):
                raise ConfigError(f"{type(self).__name__}.{name} must be true, false or null, got {getattr(self, name)!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id={self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.positional == "rope" and (self.d_model // self.n_head) % 2:
            raise ConfigError(f"positional='rope' needs an even head width, got d_model/n_head={self.d_model // self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass
class GPTConfig(TransformerConfig):
    """Decoder-only language model; GPT-2's choices by default."""

    norm_first: bool = True
    activation: str = "gelu"
    tie_embeddings: bool = True
    dropout: float = 0.0
    lm_head_bias: bool = False  # the GPT tutorial's head has one


@dataclass
class EncoderClassifierConfig(TransformerConfig):
    """Encoder + pooling + linear head. ``causal``: each position attends only to itself and the
    positions before it (then the last position, the class token, still sees the whole input)."""

    num_classes: int = 2
    pooling: Literal["last", "first", "mean"] = "last"
    type_vocab_size: int = 0  # > 0: BERT's token-type (segment) embeddings
    embed_norm: bool = False  # a norm of the embedding sum (BERT)
    pooler: bool = False  # a dense layer and pooler_activation on the pooled state before the head (BERT)
    pooler_activation: Literal["tanh", "relu"] = "tanh"  # BERT's tanh; DistilBERT's pre-classifier uses relu
    causal: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("num_classes")
        self._choice("pooling", ["last", "first", "mean"])
        self._choice("pooler_activation", ["tanh", "relu"])
        if isinstance(self.type_vocab_size, bool) or not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise ConfigError(f"EncoderClassifierConfig.type_vocab_size must be an integer >= 0, got {self.type_vocab_size!r}")
        if not isinstance(self.causal, bool):
            raise ConfigError(f"EncoderClassifierConfig.causal must be true or false, got {self.causal!r}")


@dataclass
class EncoderDecoderConfig(TransformerConfig):
    """Encoder-decoder with separate source and target vocabularies.

    ``vocab_size`` is unused (kept 1 by default); the decoder's start token is
    ``decoder_start_token_id``, or, if None, an extra id ``tgt_vocab_size``
    that exists only as a decoder input (never predicted).

    ``decoder_causal=False`` drops the decoder's look-ahead mask (tutorial 000's
    "base" model): trained teacher-forced, position t then sees the target it
    must predict through the shifted input at t + 1, so it scores well
    teacher-forced and badly when it generates. Such a decoder cannot decode
    with a key/value cache (every step recomputes the whole prefix).

    Place-value positions (position coupling, Cho et al. 2024; Abacus,
    McLeish et al. 2024), for schemes that read position ids (learned,
    sinusoidal, place, place_rope): ``position_restart_token_id`` numbers the
    encoder's positions afresh after each occurrence of that token, so with
    digits written least significant first the i-th digit of every operand
    has position i, the position of the i-th answer digit a reversed answer
    puts there. With ``train_position_offset`` = K > 0, training adds a random
    offset in [0, K] to every position of an example (encoder and decoder
    alike), so positions past the training lengths are trained too;
    evaluation uses offset 0 (rotary schemes see only differences of ids,
    which an offset leaves alone). With ``positional="place_rope"`` the ids
    rotate queries and keys in all three attentions, cross-attention
    included (decoder place t against operand place i).
    """

    vocab_size: int = 1
    src_vocab_size: int = 64
    tgt_vocab_size: int = 64
    n_encoder_layer: int = 0  # 0 means n_layer
    n_decoder_layer: int = 0  # 0 means n_layer
    decoder_start_token_id: int | None = None
    src_pad_token_id: int | None = None
    tie_encoder_decoder_embeddings: bool = False  # needs equal vocabularies
    decoder_causal: bool = True  # False: no look-ahead mask in the decoder (the tutorial's "base")
    position_restart_token_id: int | None = None  # encoder positions restart after this token
    train_position_offset: int = 0  # K: random position offset in [0, K] per training example

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("src_vocab_size", "tgt_vocab_size")
        self.n_encoder_layer = self.n_encoder_layer or self.n_layer
        self.n_decoder_layer = self.n_decoder_layer or self.n_layer
        self._positive("n_encoder_layer", "n_decoder_layer")
        if self.decoder_start_token_id is not None and not 0 <= self.decoder_start_token_id < self.tgt_vocab_size:
            raise ConfigError(
                f"decoder_start_token_id={self.decoder_start_token_id} is outside the target vocabulary "
                f"[0, {self.tgt_vocab_size}); leave it None to add a dedicated start token"
            )
        if self.position_restart_token_id is not None and not 0 <= self.position_restart_token_id < self.src_vocab_size:
            raise ConfigError(
                f"position_restart_token_id={self.position_restart_token_id} is outside the source vocabulary "
                f"[0, {self.src_vocab_size})"
            )
        if isinstance(self.train_position_offset, bool) or not isinstance(self.train_position_offset, int) \
                or self.train_position_offset < 0:
            raise ConfigError(f"train_position_offset={self.train_position_offset!r} must be an integer >= 0")
        moved = self.position_restart_token_id is not None or self.train_position_offset > 0
        if moved and not POSITIONAL[self.positional].reads_position_ids:
            readers = [name for name, scheme in POSITIONAL.items() if scheme.reads_position_ids]
            raise ConfigError(
                f"position_restart_token_id / train_position_offset move positions; positional="
                f"{self.positional!r} does not read them: use one of {readers}"
            )
        if self.train_position_offset >= self.max_len:
            raise ConfigError(
                f"train_position_offset={self.train_position_offset} leaves no room in max_len={self.max_len}; "
                f"raise max_len to at least train_position_offset + the longest sequence"
            )
        if self.tie_encoder_decoder_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(
                "tie_encoder_decoder_embeddings needs src_vocab_size == tgt_vocab_size, got "
                f"{self.src_vocab_size} and {self.tgt_vocab_size}"
            )

    @property
    def start_token_id(self) -> int:
        return self.tgt_vocab_size if self.decoder_start_token_id is None else self.decoder_start_token_id


@dataclass
class MLPConfig(Config):
    """Layers of Linear + ReLU (the PyTorch warm-up); no activation after the last layer."""

    in_dim: int = 10
    hidden_dims: list[int] = field(default_factory=lambda: [64])
    out_dim: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive("in_dim", "out_dim")
        for i, h in enumerate(self.hidden_dims):
            if not isinstance(h, int) or h <= 0:
                raise ConfigError(f"MLPConfig.hidden_dims[{i}] must be a positive integer, got {h!r}")


#: Named sizes: "tiny" for tests, the GPT-2 shapes for interop.
GPT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=32, n_head=2, n_layer=2, max_len=64),
    "small": dict(d_model=128, n_head=4, n_layer=4, max_len=256),
    "gpt2": dict(vocab_size=50257, d_model=768, n_head=12, n_layer=12, max_len=1024, activation="gelu_tanh"),
    "gpt2-medium": dict(vocab_size=50257, d_model=1024, n_head=16, n_layer=24, max_len=1024, activation="gelu_tanh"),
}
