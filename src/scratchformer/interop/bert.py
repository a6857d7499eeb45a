"""BERT weights in and out of Hugging Face's layout.

HF's ``BertForSequenceClassification`` and our ``EncoderClassifier`` with
``type_vocab_size``, ``embed_norm`` and ``pooler`` set compute the same
function: word + position + token-type embeddings and a LayerNorm of their
sum, post-norm blocks with GELU, the first token's state through dense+tanh
(the pooler), dropout, a linear classifier. The names differ
(``BERT_WEIGHT_MAP``), and HF keeps separate query/key/value projections
where we keep one (3C, C) ``in_proj`` (``BERT_FUSED``: ours = concatenation
of theirs, in that order). Nothing is transposed: both use ``nn.Linear``.

Reading a directory never unpickles: ``model.safetensors`` (or a sharded
index) is preferred; ``pytorch_model.bin`` is parsed as data by
``torch_zip.read_torch_zip`` (the pickle's instructions are read, never
run, and only tensors and plain containers are accepted), since even
``torch.load(weights_only=True)`` runs Python's unpickler over the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from ..io import atomic_write_bytes, load_json, save_json
from ..errors import CheckpointError, ConfigError
from ..models.config import EncoderClassifierConfig
from ..models.encoder_classifier import EncoderClassifier

log = logging.getLogger(__name__)

# --- the name map, as data ---------------------------------------------------

#: Prefix of the base model (``BertModel``) inside ``BertForSequenceClassification``.
BERT_BASE_PREFIX = "bert."

#: HF BERT name (base-model layout; ``{i}`` is the layer) -> our ``EncoderClassifier`` name.
BERT_WEIGHT_MAP: dict[str, str] = {
    "embeddings.word_embeddings.weight": "embed.tok.weight",
    "embeddings.position_embeddings.weight": "embed.pos.weight",
    "embeddings.token_type_embeddings.weight": "embed.types.weight",
    "embeddings.LayerNorm.weight": "embed.norm.weight",
    "embeddings.LayerNorm.bias": "embed.norm.bias",
    "encoder.layer.{i}.attention.output.dense.weight": "encoder.blocks.{i}.attn.out_proj.weight",
    "encoder.layer.{i}.attention.output.dense.bias": "encoder.blocks.{i}.attn.out_proj.bias",
    "encoder.layer.{i}.attention.output.LayerNorm.weight": "encoder.blocks.{i}.attn_norm.weight",
    "encoder.layer.{i}.attention.output.LayerNorm.bias": "encoder.blocks.{i}.attn_norm.bias",
    "encoder.layer.{i}.intermediate.dense.weight": "encoder.blocks.{i}.mlp.up.weight",
    "encoder.layer.{i}.intermediate.dense.bias": "encoder.blocks.{i}.mlp.up.bias",
    "encoder.layer.{i}.output.dense.weight": "encoder.blocks.{i}.mlp.down.weight",
    "encoder.layer.{i}.output.dense.bias": "encoder.blocks.{i}.mlp.down.bias",
    "encoder.layer.{i}.output.LayerNorm.weight": "encoder.blocks.{i}.mlp_norm.weight",
    "encoder.layer.{i}.output.LayerNorm.bias": "encoder.blocks.{i}.mlp_norm.bias",
    "pooler.dense.weight": "pooler.weight",
    "pooler.dense.bias": "pooler.bias",
}

#: Our fused projection -> HF's three tensors, concatenated along dim 0 in this order.
BERT_FUSED: dict[str, tuple[str, str, str]] = {
    f"encoder.blocks.{{i}}.attn.in_proj.{p}": tuple(
        f"encoder.layer.{{i}}.attention.self.{qkv}.{p}" for qkv in ("query", "key", "value")
    )
    for p in ("weight", "bias")
}

#: The classification head sits outside the base model, at the top level.
BERT_HEAD: dict[str, str] = {"classifier.weight": "head.weight", "classifier.bias": "head.bias"}

#: Buffers some HF versions save; they are not weights.
BERT_IGNORED: frozenset[str] = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})

#: DistilBERT (HF name without the ``distilbert.`` prefix) -> ours. No token types, no pooler in
#: the base model: ``DistilBertForSequenceClassification``'s ``pre_classifier`` (dense + ReLU) is our pooler.
DISTILBERT_WEIGHT_MAP: dict[str, str] = {
    "embeddings.word_embeddings.weight": "embed.tok.weight",
    "embeddings.position_embeddings.weight": "embed.pos.weight",
    "embeddings.LayerNorm.weight": "embed.norm.weight",
    "embeddings.LayerNorm.bias": "embed.norm.bias",
    "transformer.layer.{i}.attention.out_lin.weight": "encoder.blocks.{i}.attn.out_proj.weight",
    "transformer.layer.{i}.attention.out_lin.bias": "encoder.blocks.{i}.attn.out_proj.bias",
    "transformer.layer.{i}.sa_layer_norm.weight": "encoder.blocks.{i}.attn_norm.weight",
    "transformer.layer.{i}.sa_layer_norm.bias": "encoder.blocks.{i}.attn_norm.bias",
    "transformer.layer.{i}.ffn.lin1.weight": "encoder.blocks.{i}.mlp.up.weight",
    "transformer.layer.{i}.ffn.lin1.bias": "encoder.blocks.{i}.mlp.up.bias",
    "transformer.layer.{i}.ffn.lin2.weight": "encoder.blocks.{i}.mlp.down.weight",
    "transformer.layer.{i}.ffn.lin2.bias": "encoder.blocks.{i}.mlp.down.bias",
    "transformer.layer.{i}.output_layer_norm.weight": "encoder.blocks.{i}.mlp_norm.weight",
    "transformer.layer.{i}.output_layer_norm.bias": "encoder.blocks.{i}.mlp_norm.bias",
}
DISTILBERT_FUSED: dict[str, tuple[str, str, str]] = {
    f"encoder.blocks.{{i}}.attn.in_proj.{p}": tuple(
        f"transformer.layer.{{i}}.attention.{qkv}.{p}" for qkv in ("q_lin", "k_lin", "v_lin")
    )
    for p in ("weight", "bias")
}
DISTILBERT_HEAD: dict[str, str] = {
    "pre_classifier.weight": "pooler.weight",
    "pre_classifier.bias": "pooler.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


@dataclass(frozen=True)
class Layout:
    """One model family's names: the base model's prefix inside the classifier, the weight map,
    the fused q|k|v map, the head (outside the base model) and the buffers that are not weights."""

    model_type: str
    prefix: str
    weight_map: dict[str, str]
    fused: dict[str, tuple[str, str, str]]
    head: dict[str, str]
    ignored: frozenset[str]


LAYOUTS: dict[str, Layout] = {
    "bert": Layout("bert", "bert.", BERT_WEIGHT_MAP, BERT_FUSED, BERT_HEAD, BERT_IGNORED),
    "distilbert": Layout("distilbert", "distilbert.", DISTILBERT_WEIGHT_MAP, DISTILBERT_FUSED, DISTILBERT_HEAD,
                         frozenset({"embeddings.position_ids"})),
}

#: HF ``hidden_act`` -> our activation.
BERT_ACTIVATIONS: dict[str, str] = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"


def _layers(template: str, n_layer: int) -> list[int | None]:
    return list(range(n_layer)) if "{i}" in template else [None]


# --- configs -------------------------------------------------------------------


def encoder_config_from_bert(hf_config: Mapping[str, Any], **overrides: Any) -> EncoderClassifierConfig:
    """Our ``EncoderClassifierConfig`` for a HF BERT ``config.json`` dict.

    Raises:
        ConfigError: a required key is missing, or an option our encoder cannot express is set.
    """
    if hf_config.get("model_type", "bert") != "bert":
        raise ConfigError(f"config has model_type={hf_config.get('model_type')!r}; bert_from_hf converts 'bert' configs")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in hf_config]
    if missing:
        raise ConfigError(f"BERT config lacks {missing}; is this a Hugging Face BERT config.json?")
    act = hf_config.get("hidden_act", "gelu")
    if act not in BERT_ACTIVATIONS:
        raise ConfigError(f"BERT hidden_act={act!r} has no scratchformer equivalent; supported: {sorted(BERT_ACTIVATIONS)}")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(
            f"BERT position_embedding_type={hf_config['position_embedding_type']!r} is not supported (only 'absolute')"
        )
    if hf_config.get("is_decoder") or hf_config.get("add_cross_attention"):
        raise ConfigError("a BERT decoder (is_decoder / add_cross_attention) cannot become an EncoderClassifier")
    labels = hf_config.get("id2label")
    num_labels = len(labels) if isinstance(labels, Mapping) and labels else hf_config.get("num_labels", 2)
    fields = dict(
        vocab_size=hf_config["vocab_size"],
        d_model=hf_config["hidden_size"],
        n_head=hf_config["num_attention_heads"],
        n_layer=hf_config["num_hidden_layers"],
        d_ff=hf_config.get("intermediate_size", 4 * hf_config["hidden_size"]),
        max_len=hf_config.get("max_position_embeddings", 512),
        dropout=hf_config.get("hidden_dropout_prob", 0.1),
        positional="learned",
        norm="layernorm",
        norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        norm_first=False,
        activation=BERT_ACTIVATIONS[act],
        bias=True,
        pad_token_id=hf_config.get("pad_token_id", 0),
        init_std=hf_config.get("initializer_range", 0.02),
        num_classes=num_labels,
        pooling="first",
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        embed_norm=True,
        pooler=True,
    )
    fields.update(overrides)
    return EncoderClassifierConfig.from_dict(fields)


def encoder_config_from_distilbert(hf_config: Mapping[str, Any], **overrides: Any) -> EncoderClassifierConfig:
    """Our ``EncoderClassifierConfig`` for a HF DistilBERT ``config.json`` dict: BERT's shape without
    token types, the first token's state through dense + ReLU (``pre_classifier``) before the head.

    Raises:
        ConfigError: a required key is missing, sinusoidal positions, or an unknown activation.
    """
    missing = [k for k in ("vocab_size", "dim", "n_layers", "n_heads") if k not in hf_config]
    if missing:
        raise ConfigError(f"DistilBERT config lacks {missing}; is this a Hugging Face DistilBERT config.json?")
    if hf_config.get("sinusoidal_pos_embds"):
        raise ConfigError("DistilBERT sinusoidal_pos_embds=true is not supported (only learned positions)")
    act = hf_config.get("activation", "gelu")
    if act not in BERT_ACTIVATIONS:
        raise ConfigError(f"DistilBERT activation={act!r} has no scratchformer equivalent; supported: {sorted(BERT_ACTIVATIONS)}")
    labels = hf_config.get("id2label")
    num_labels = len(labels) if isinstance(labels, Mapping) and labels else hf_config.get("num_labels", 2)
    fields = dict(
        vocab_size=hf_config["vocab_size"], d_model=hf_config["dim"], n_head=hf_config["n_heads"],
        n_layer=hf_config["n_layers"], d_ff=hf_config.get("hidden_dim", 4 * hf_config["dim"]),
        max_len=hf_config.get("max_position_embeddings", 512), dropout=hf_config.get("dropout", 0.1),
        positional="learned", norm="layernorm", norm_eps=1e-12, norm_first=False, activation=BERT_ACTIVATIONS[act],
        bias=True, pad_token_id=hf_config.get("pad_token_id", 0), init_std=hf_config.get("initializer_range", 0.02),
        num_classes=num_labels, pooling="first", type_vocab_size=0, embed_norm=True, pooler=True,
        pooler_activation="relu",
    )  # fmt: skip
    fields.update(overrides)
    return EncoderClassifierConfig.from_dict(fields)


#: model_type -> the function reading its config.
CONFIG_READERS = {"bert": encoder_config_from_bert, "distilbert": encoder_config_from_distilbert}


def bert_config_from_encoder(cfg: EncoderClassifierConfig) -> dict[str, Any]:
    """The HF BERT ``config.json`` dict of a BERT-shaped ``EncoderClassifierConfig``.

    Raises:
        ConfigError: naming the first field that BERT cannot express.
    """
    needed = dict(
        positional="learned", positional_options={}, norm="layernorm", norm_first=False, bias=True, use_mlp=True,
        use_residual=True, scale_embeddings=False, pooling="first", embed_norm=True, pooler=True,
        pooler_activation="tanh",
    )  # fmt: skip
    for name, value in needed.items():
        if getattr(cfg, name) != value:
            raise ConfigError(
                f"EncoderClassifierConfig.{name}={getattr(cfg, name)!r} has no BERT equivalent; BERT needs {name}={value!r}"
            )
    if cfg.type_vocab_size < 1:
        raise ConfigError("EncoderClassifierConfig.type_vocab_size=0 has no BERT equivalent; BERT needs >= 1")
    if cfg.activation not in _ACTIVATIONS_OUT:
        raise ConfigError(f"activation={cfg.activation!r} has no BERT equivalent; choose one of {sorted(_ACTIVATIONS_OUT)}")
    return {
        "model_type": "bert",
        "architectures": ["BertForSequenceClassification"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.d_ff,
        "hidden_act": _ACTIVATIONS_OUT[cfg.activation],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.init_std,
        "layer_norm_eps": 1e-12 if cfg.norm_eps is None else cfg.norm_eps,
        "pad_token_id": 0 if cfg.pad_token_id is None else cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(cfg.num_classes)},
        "problem_type": "single_label_classification",
    }


# --- state dicts -----------------------------------------------------------------


def state_dict_from_bert(
    hf_state: Mapping[str, Tensor], cfg: EncoderClassifierConfig, model_type: str = "bert"
) -> tuple[dict[str, Tensor], set[str]]:
    """Rename HF BERT (or DistilBERT) tensors into our layout, joining query/key/value.

    Accepts the prefixed layout of the sequence classifier (``bert.``,
    ``distilbert.``) and the bare base-model layout. Returns (our state dict,
    the names of our head tensors the checkpoint lacks), which the caller
    keeps freshly initialised (a base model has no ``classifier``; for
    DistilBERT no ``pre_classifier`` either, our ``pooler``).

    Raises:
        CheckpointError: listing missing tensors, unexpected tensors and shape mismatches.
    """
    layout = LAYOUTS[model_type]
    prefix = layout.prefix if any(k.startswith(layout.prefix) for k in hf_state) else ""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in EncoderClassifier(cfg).state_dict().items()}
    ours: dict[str, Tensor] = {}
    used: set[str] = set()
    missing, mismatched = [], []

    def take(theirs: str) -> Tensor | None:
        if theirs not in hf_state:
            missing.append(theirs)
            return None
        used.add(theirs)
        return hf_state[theirs]

    for hf, name in layout.weight_map.items():
        for i in _layers(hf, cfg.n_layer):
            t = take(prefix + hf.format(i=i))
            if t is not None:
                ours[name.format(i=i)] = t
    for name, parts in layout.fused.items():
        for i in range(cfg.n_layer):
            ts = [take(prefix + p.format(i=i)) for p in parts]
            if all(t is not None for t in ts):
                ours[name.format(i=i)] = torch.cat(ts, dim=0)  # (3C, C) or (3C,)
    fresh = set()
    for hf, name in layout.head.items():  # each head tensor is optional: absent ones start fresh
        if hf in hf_state:
            ours[name] = take(hf)
        else:
            fresh.add(name)
    for name, t in ours.items():
        if tuple(t.shape) != expected[name]:
            mismatched.append(f"{name}: {tuple(t.shape)} in the checkpoint, {expected[name]} expected")
    ignored = {prefix + n for n in layout.ignored}
    unexpected = sorted(k for k in hf_state if k not in used and k not in ignored)
    if missing or unexpected or mismatched:
        problems = [f"{what} {items}" for what, items in
                    (("missing tensors", missing), ("unexpected tensors", unexpected), ("shape mismatches", mismatched))
                    if items]
        raise CheckpointError(
            f"checkpoint does not match a {model_type} with {cfg.n_layer} layers, width {cfg.d_model}, "
            f"vocab_size={cfg.vocab_size}: " + "; ".join(problems)
        )
    return {k: v.contiguous() for k, v in ours.items()}, fresh


def state_dict_to_bert(model: EncoderClassifier) -> dict[str, Tensor]:
    """Our BERT-shaped classifier's weights under HF ``BertForSequenceClassification`` names."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    n = model.config.n_layer
    out = {}
    for hf, name in BERT_WEIGHT_MAP.items():
        for i in _layers(hf, n):
            out[BERT_BASE_PREFIX + hf.format(i=i)] = state[name.format(i=i)]
    for name, parts in BERT_FUSED.items():
        for i in range(n):
            for part, t in zip(parts, state[name.format(i=i)].chunk(3, dim=0)):
                out[BERT_BASE_PREFIX + part.format(i=i)] = t
    for hf, name in BERT_HEAD.items():
        out[hf] = state[name]
    return {k: v.contiguous().clone() for k, v in out.items()}


# --- public entry points ----------------------------------------------------------


def bert_from_hf(obj: Any, **overrides: Any) -> EncoderClassifier:
    """Build our ``EncoderClassifier`` from Hugging Face BERT weights, in eval mode.

    Args:
        obj: a ``BertForSequenceClassification`` or ``BertModel`` object (or
            their DistilBERT counterparts), or a local HF directory
            (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).
            From a base model (no classifier) the head is freshly
            initialised with ``num_labels`` classes.
        overrides: ``EncoderClassifierConfig`` fields to change (e.g. ``num_classes=3``,
            ``attn_impl="reference"``).
    Raises:
        CheckpointError: missing files, a pickle-only directory, or tensors that do not fit.
        ConfigError: an option our encoder cannot express.
    """
    if isinstance(obj, (str, os.PathLike)):
        hf_config, hf_state = read_bert_directory(Path(obj))
    elif hasattr(obj, "config") and hasattr(obj, "state_dict"):
        hf_config, hf_state = obj.config.to_dict(), obj.state_dict()
    else:
        raise TypeError(f"bert_from_hf expects a BertForSequenceClassification/BertModel or a directory, got {type(obj).__name__}")
    model_type = hf_config.get("model_type", "bert")
    if model_type not in LAYOUTS:
        raise ConfigError(f"model_type={model_type!r}; bert_from_hf converts {sorted(LAYOUTS)} models")
    cfg = CONFIG_READERS[model_type](hf_config, **overrides)
    model = EncoderClassifier(cfg)
    state, fresh = state_dict_from_bert(hf_state, cfg, model_type)
    if fresh:
        log.info("not in the checkpoint, freshly initialised: %s (%d classes)", sorted(fresh), cfg.num_classes)
        state.update({k: v for k, v in model.state_dict().items() if k in fresh})
    model.load_state_dict(state, strict=True)
    return model.eval()


def bert_to_hf(model: EncoderClassifier):
    """A ``transformers.BertForSequenceClassification`` (eval mode) holding our weights."""
    from transformers import BertConfig, BertForSequenceClassification

    hf_cfg = {k: v for k, v in bert_config_from_encoder(model.config).items() if k != "model_type"}
    hf = BertForSequenceClassification(BertConfig(**hf_cfg))
    hf.load_state_dict(state_dict_to_bert(model), strict=False)
    return hf.eval()


def save_bert_hf(model: EncoderClassifier, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` so that
    ``BertForSequenceClassification.from_pretrained(directory)`` loads our model. Returns the directory."""
    directory = Path(directory)
    hf_config = bert_config_from_encoder(model.config)  # check before writing anything
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / SAFETENSORS_NAME, save(state_dict_to_bert(model), metadata={"format": "pt"}))
    save_json(directory / CONFIG_NAME, hf_config)
    return directory


def read_bert_directory(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config dict, state dict) of a HF BERT directory: safetensors, else ``pytorch_model.bin`` read as data."""
    from .gpt2 import _load_safetensors, _load_sharded
    from .torch_zip import read_torch_zip

    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the folder holding config.json and the weights")
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; a Hugging Face BERT directory needs one")
    hf_config = load_json(directory / CONFIG_NAME)
    if not isinstance(hf_config, dict) or hf_config.get("model_type") not in LAYOUTS:
        found = hf_config.get("model_type") if isinstance(hf_config, dict) else type(hf_config).__name__
        raise CheckpointError(f"{directory / CONFIG_NAME} describes model_type={found!r}, not one of {sorted(LAYOUTS)}")
    if (directory / SAFETENSORS_NAME).is_file():
        return hf_config, _load_safetensors(directory / SAFETENSORS_NAME)
    index = directory / f"{SAFETENSORS_NAME}.index.json"
    if index.is_file():
        return hf_config, _load_sharded(index, _load_safetensors)
    if (directory / PICKLE_NAME).is_file():
        return hf_config, read_torch_zip(directory / PICKLE_NAME)  # parsed as data, never unpickled
    if (directory / f"{PICKLE_NAME}.index.json").is_file():
        return hf_config, _load_sharded(directory / f"{PICKLE_NAME}.index.json", read_torch_zip)
    raise CheckpointError(f"{directory} holds no weights: expected {SAFETENSORS_NAME}; found {sorted(p.name for p in directory.iterdir())}")


__all__ = [
    "BERT_FUSED",
    "BERT_HEAD",
    "BERT_WEIGHT_MAP",
    "DISTILBERT_FUSED",
    "DISTILBERT_HEAD",
    "DISTILBERT_WEIGHT_MAP",
    "LAYOUTS",
    "encoder_config_from_distilbert",
    "bert_config_from_encoder",
    "bert_from_hf",
    "bert_to_hf",
    "encoder_config_from_bert",
    "read_bert_directory",
    "save_bert_hf",
    "state_dict_from_bert",
    "state_dict_to_bert",
]
