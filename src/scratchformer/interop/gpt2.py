"""GPT-2 weights in and out of Hugging Face's layout.

Hugging Face's GPT-2 and our ``GPT`` compute the same function: learned
positions, pre-norm blocks with LayerNorm, one fused q|k|v projection, a
4x MLP and an LM head tied to the token embedding. Only the names and one
storage convention differ: HF's ``Conv1D`` stores a weight as (in, out) and
computes ``x @ W + b``, while ``nn.Linear`` stores (out, in). So converting is
a renaming (``GPT2_WEIGHT_MAP``) plus a transpose of the four Conv1D weights
per layer (``GPT2_TRANSPOSED``), nothing else.

Loading never executes code: ``model.safetensors`` is read with safetensors,
and ``pytorch_model.bin`` by ``torch_zip.read_torch_zip``, which parses the
pickle's instructions without running them and accepts only tensors and
plain containers.

``transformers`` is needed only to convert to or from a live HF model object;
reading and writing a directory needs just torch and safetensors.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from ..io import atomic_write_bytes, load_json, save_json
from ..errors import CheckpointError, ConfigError
from ..models.config import GPTConfig
from ..models.gpt import GPT

log = logging.getLogger(__name__)

# --- the name map, as data ---------------------------------------------------

#: Prefix of the base model (``GPT2Model``) inside ``GPT2LMHeadModel``.
#: Checkpoints saved from ``GPT2Model`` (the original OpenAI ``gpt2`` files
#: among them) carry no prefix; checkpoints saved from the LM-head model do.
GPT2_BASE_PREFIX = "transformer."

#: HF GPT-2 name (base-model layout; ``{i}`` is the layer) -> our ``GPT`` name.
GPT2_WEIGHT_MAP: dict[str, str] = {
    "wte.weight": "embed.tok.weight",
    "wpe.weight": "embed.pos.weight",
    "h.{i}.ln_1.weight": "decoder.blocks.{i}.attn_norm.weight",
    "h.{i}.ln_1.bias": "decoder.blocks.{i}.attn_norm.bias",
    "h.{i}.attn.c_attn.weight": "decoder.blocks.{i}.attn.in_proj.weight",
    "h.{i}.attn.c_attn.bias": "decoder.blocks.{i}.attn.in_proj.bias",
    "h.{i}.attn.c_proj.weight": "decoder.blocks.{i}.attn.out_proj.weight",
    "h.{i}.attn.c_proj.bias": "decoder.blocks.{i}.attn.out_proj.bias",
    "h.{i}.ln_2.weight": "decoder.blocks.{i}.mlp_norm.weight",
    "h.{i}.ln_2.bias": "decoder.blocks.{i}.mlp_norm.bias",
    "h.{i}.mlp.c_fc.weight": "decoder.blocks.{i}.mlp.up.weight",
    "h.{i}.mlp.c_fc.bias": "decoder.blocks.{i}.mlp.up.bias",
    "h.{i}.mlp.c_proj.weight": "decoder.blocks.{i}.mlp.down.weight",
    "h.{i}.mlp.c_proj.bias": "decoder.blocks.{i}.mlp.down.bias",
    "ln_f.weight": "decoder.final_norm.weight",
    "ln_f.bias": "decoder.final_norm.bias",
}

#: Conv1D weights, stored (in, out) by HF and (out, in) by nn.Linear.
GPT2_TRANSPOSED: frozenset[str] = frozenset(
    {"h.{i}.attn.c_attn.weight", "h.{i}.attn.c_proj.weight", "h.{i}.mlp.c_fc.weight", "h.{i}.mlp.c_proj.weight"}
)

#: Buffers older HF versions saved with every layer: the causal-mask triangle
#: and the fill value for masked scores. They are not weights; we rebuild the
#: mask ourselves, so they are skipped by name (and only these).
GPT2_IGNORED: frozenset[str] = frozenset({"h.{i}.attn.bias", "h.{i}.attn.masked_bias"})

#: The LM head sits outside the base model, at the top level of the checkpoint.
GPT2_LM_HEAD = ("lm_head.weight", "lm_head.weight")

#: HF ``activation_function`` -> our activation. "gelu_new" and
#: "gelu_pytorch_tanh" are both the tanh approximation of GELU.
GPT2_ACTIVATIONS: dict[str, str] = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_ACTIVATIONS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

#: HF GPT-2 options our GPT cannot express -> the only value we accept.
GPT2_UNSUPPORTED: dict[str, Any] = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}

SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"


def _expand(template: str, n_layer: int) -> list[str]:
    return [template.format(i=i) for i in range(n_layer)] if "{i}" in template else [template]


def _name_pairs(n_layer: int) -> list[tuple[str, str, bool]]:
    """(hf_name, our_name, transpose) for every weight of the base model."""
    pairs = []
    for hf, ours in GPT2_WEIGHT_MAP.items():
        for i in range(n_layer) if "{i}" in hf else [None]:
            pairs.append((hf.format(i=i), ours.format(i=i), hf in GPT2_TRANSPOSED))
    return pairs


# --- configs -------------------------------------------------------------------


def gpt_config_from_gpt2(hf_config: Mapping[str, Any], **overrides: Any) -> GPTConfig:
    """Our ``GPTConfig`` for a Hugging Face GPT-2 config dict (``config.json``).

    GPT-2's three dropout rates become our single ``dropout`` (``resid_pdrop``).
    Token ids (bos/eos/pad) belong to the tokenizer and are not carried over.
    ``overrides`` (e.g. ``attn_impl="reference"``) replace fields afterwards.

    Raises:
        ConfigError: a required key is missing, the activation is unknown, or an
            option our GPT cannot express is set (the error names the option).
    """
    model_type = hf_config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ConfigError(f"config has model_type={model_type!r}; only GPT-2 ('gpt2') configs can be converted")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in hf_config]
    if missing:
        raise ConfigError(f"GPT-2 config lacks {missing}; is this a Hugging Face GPT-2 config.json?")
    for option, supported in GPT2_UNSUPPORTED.items():
        value = hf_config.get(option, supported)
        if value != supported:
            raise ConfigError(
                f"GPT-2 option {option}={value!r} is not supported by scratchformer's GPT "
                f"(only {option}={supported!r}); this checkpoint cannot be converted exactly"
            )
    act = hf_config.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise ConfigError(
            f"GPT-2 activation_function={act!r} has no scratchformer equivalent; supported: {sorted(GPT2_ACTIVATIONS)}"
        )
    rates = {k: hf_config.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(rates.values())) > 1:
        log.warning("GPT-2 dropout rates differ (%s); scratchformer uses one dropout, resid_pdrop", rates)
    n_embd = hf_config["n_embd"]
    fields = dict(
        vocab_size=hf_config["vocab_size"],
        d_model=n_embd,
        n_head=hf_config["n_head"],
        n_layer=hf_config["n_layer"],
        d_ff=hf_config.get("n_inner") or 4 * n_embd,
        max_len=hf_config["n_positions"],
        dropout=rates["resid_pdrop"],
        positional="learned",
        norm="layernorm",
        norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        norm_first=True,
        activation=GPT2_ACTIVATIONS[act],
        bias=True,
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
        init_std=hf_config.get("initializer_range", 0.02),
    )
    fields.update(overrides)
    return GPTConfig.from_dict(fields)


def gpt2_config_from_gpt(cfg: GPTConfig) -> dict[str, Any]:
    """The Hugging Face GPT-2 ``config.json`` dict for our ``GPTConfig``.

    Raises:
        ConfigError: the config uses something GPT-2 does not have (rotary
            positions, RMSNorm, post-norm, no biases, ...), naming the field.
    """
    needed = dict(
        positional="learned", positional_options={}, norm="layernorm", norm_first=True, bias=True,
        use_mlp=True, use_residual=True, scale_embeddings=False,
    )  # fmt: skip
    for name, value in needed.items():
        if getattr(cfg, name) != value:
            raise ConfigError(
                f"GPTConfig.{name}={getattr(cfg, name)!r} has no GPT-2 equivalent; GPT-2 needs {name}={value!r}"
            )
    if cfg.activation not in _ACTIVATIONS_OUT:
        raise ConfigError(
            f"GPTConfig.activation={cfg.activation!r} has no GPT-2 equivalent; choose one of {sorted(_ACTIVATIONS_OUT)}"
        )
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None if cfg.d_ff == 4 * cfg.d_model else cfg.d_ff,
        "activation_function": _ACTIVATIONS_OUT[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5 if cfg.norm_eps is None else cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": cfg.pad_token_id,
        "use_cache": True,
        **GPT2_UNSUPPORTED,
    }


# --- state dicts -----------------------------------------------------------------


def state_dict_from_gpt2(hf_state: Mapping[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """Rename and transpose a HF GPT-2 state dict into our ``GPT`` layout.

    Accepts both layouts HF writes: with the ``transformer.`` prefix
    (``GPT2LMHeadModel``) or without (``GPT2Model``). Returns every key of
    ``GPT(cfg).state_dict()``, so ``load_state_dict(strict=True)`` succeeds.

    Raises:
        CheckpointError: listing every missing tensor, unexpected tensor and
            shape mismatch; or an untied LM head in a tied config.
    """
    prefix = GPT2_BASE_PREFIX if any(k.startswith(GPT2_BASE_PREFIX) for k in hf_state) else ""
    head_hf, head_ours = GPT2_LM_HEAD
    expected = _expected_shapes(cfg)
    ours: dict[str, Tensor] = {}
    missing, mismatched = [], []
    for hf, name, transpose in _name_pairs(cfg.n_layer):
        key = prefix + hf
        if key not in hf_state:
            missing.append(key)
            continue
        t = hf_state[key]
        t = t.t() if transpose and t.dim() == 2 else t  # Conv1D (in, out) -> Linear (out, in)
        if tuple(t.shape) != expected[name]:
            shown = tuple(hf_state[key].shape)
            want = expected[name][::-1] if transpose else expected[name]
            mismatched.append(f"{key}: {shown} in the checkpoint, {want} expected")
            continue
        ours[name] = t.contiguous()
    if head_hf in hf_state:
        ours[head_ours] = hf_state[head_hf].contiguous()
    elif not cfg.tie_embeddings:
        missing.append(head_hf)
    ignored = {n for tmpl in GPT2_IGNORED for n in _expand(prefix + tmpl, cfg.n_layer)}
    known = {prefix + hf for hf, _, _ in _name_pairs(cfg.n_layer)} | ignored | {head_hf}
    unexpected = sorted(k for k in hf_state if k not in known)
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing tensors {missing}")
        if unexpected:
            problems.append(f"unexpected tensors {unexpected}")
        if mismatched:
            problems.append(f"shape mismatches {mismatched}")
        raise CheckpointError(
            f"checkpoint does not match a GPT-2 with n_layer={cfg.n_layer}, n_embd={cfg.d_model}, "
            f"vocab_size={cfg.vocab_size}, n_positions={cfg.max_len}: " + "; ".join(problems)
        )
    wte = ours["embed.tok.weight"]
    if cfg.tie_embeddings:
        if head_ours in ours and not torch.equal(ours[head_ours].to(wte.dtype), wte):
            raise CheckpointError(
                "lm_head.weight differs from wte.weight although tie_word_embeddings=True; "
                "set tie_word_embeddings=false in config.json if the head is really separate"
            )
        ours[head_ours] = wte
    elif tuple(ours[head_ours].shape) != expected[head_ours]:
        raise CheckpointError(
            f"lm_head.weight has shape {tuple(ours[head_ours].shape)}, expected {expected[head_ours]}"
        )
    return ours


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    # built on the meta device: shapes without allocating or initialising weights
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}


def state_dict_to_gpt2(model: GPT) -> dict[str, Tensor]:
    """Our GPT's weights under HF ``GPT2LMHeadModel`` names (Conv1D weights
    transposed, contiguous copies on CPU). ``lm_head.weight`` is included only
    when the head is not tied (as HF saves it)."""
    state = model.state_dict()
    out = {}
    for hf, name, transpose in _name_pairs(model.config.n_layer):
        t = state[name].detach()
        out[GPT2_BASE_PREFIX + hf] = (t.t() if transpose else t).contiguous().cpu().clone()
    if not model.config.tie_embeddings:
        out[GPT2_LM_HEAD[0]] = state[GPT2_LM_HEAD[1]].detach().contiguous().cpu().clone()
    return out


# --- public entry points ----------------------------------------------------------


def gpt2_from_hf(obj: Any, **overrides: Any) -> GPT:
    """Build our ``GPT`` from Hugging Face GPT-2 weights, in eval mode.

    Args:
        obj: a ``GPT2LMHeadModel`` or ``GPT2Model`` object, or the path of a
            local directory in HF format: ``config.json`` plus
            ``model.safetensors`` (preferred), a sharded
            ``model.safetensors.index.json``, or ``pytorch_model.bin`` (parsed
            as data by ``torch_zip.read_torch_zip``: the pickle never runs).
        overrides: ``GPTConfig`` fields to change, e.g. ``attn_impl="reference"``.
    Returns:
        a float32 ``GPT`` on the CPU whose logits equal HF's.
    Raises:
        CheckpointError: the directory is missing files, is not GPT-2, or its
            tensors do not match the config (listing them).
        ConfigError: the config uses an option our GPT cannot express.
        TypeError: ``obj`` is neither a path nor a HF model.
    """
    if isinstance(obj, (str, os.PathLike)):
        hf_config, hf_state = _read_directory(Path(obj))
    elif hasattr(obj, "config") and hasattr(obj, "state_dict"):
        hf_config = obj.config.to_dict()
        hf_state = obj.state_dict()
    else:
        raise TypeError(
            f"gpt2_from_hf expects a GPT2LMHeadModel/GPT2Model or a directory path, got {type(obj).__name__}"
        )
    if hf_config.get("model_type") != "gpt2":
        raise CheckpointError(
            f"model_type={hf_config.get('model_type')!r}, not 'gpt2'; gpt2_from_hf converts only GPT-2 checkpoints"
        )
    cfg = gpt_config_from_gpt2(hf_config, **overrides)
    model = GPT(cfg)
    model.load_state_dict(state_dict_from_gpt2(hf_state, cfg), strict=True)
    return model.eval()


def gpt2_to_hf(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` (eval mode) holding our GPT's weights.

    Raises:
        ConfigError: the model uses a component GPT-2 does not have.
        ImportError: transformers is not installed (``pip install scratchformer[hf]``).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = gpt2_config_from_gpt(model.config)
    hf_cfg = {k: v for k, v in hf_cfg.items() if k != "model_type"}
    hf = GPT2LMHeadModel(GPT2Config(**hf_cfg))
    state = state_dict_to_gpt2(model)
    if model.config.tie_embeddings:
        state[GPT2_LM_HEAD[0]] = state[GPT2_BASE_PREFIX + "wte.weight"]
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def save_gpt2_hf(model: GPT, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in Hugging Face GPT-2
    layout, so ``GPT2LMHeadModel.from_pretrained(directory)`` loads it.
    Both files are written atomically. Returns the directory."""
    directory = Path(directory)
    hf_config = gpt2_config_from_gpt(model.config)  # check before writing anything
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / SAFETENSORS_NAME, save(state_dict_to_gpt2(model), metadata={"format": "pt"}))
    save_json(directory / CONFIG_NAME, hf_config)
    return directory


# --- reading a directory ------------------------------------------------------------


def _read_directory(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the folder holding config.json and the weights")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; a Hugging Face GPT-2 directory needs one")
    hf_config = load_json(config_path)
    if not isinstance(hf_config, dict) or hf_config.get("model_type") != "gpt2":
        found = hf_config.get("model_type") if isinstance(hf_config, dict) else type(hf_config).__name__
        raise CheckpointError(f"{config_path} describes model_type={found!r}, not 'gpt2'")
    return hf_config, _read_weights(directory)


def _read_weights(directory: Path) -> dict[str, Tensor]:
    single = {SAFETENSORS_NAME: _load_safetensors, PICKLE_NAME: _load_pickle}
    for name, loader in single.items():  # safetensors first: it cannot carry code
        if (directory / name).is_file():
            return loader(directory / name)
        index = directory / f"{name}.index.json"
        if index.is_file():
            return _load_sharded(index, loader)
    present = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(
        f"{directory} holds no weights: expected {SAFETENSORS_NAME} or {PICKLE_NAME} "
        f"(or a sharded *.index.json); found {present}"
    )


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from e


def _load_pickle(path: Path) -> dict[str, Tensor]:
    """A ``torch.save`` state dict read as data, never unpickled (``torch_zip.read_torch_zip``:
    only tensors and plain containers are accepted; anything else is refused)."""
    from .torch_zip import read_torch_zip

    return read_torch_zip(path)


def _load_sharded(index: Path, loader) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a shard index with a 'weight_map': {e}") from e
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:  # an index must not point outside its directory
            raise CheckpointError(f"{index} names shard {shard!r}, which is not a plain file name")
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index} names shard {shard}, which does not exist")
        state.update(loader(path))
    listed = set(weight_map)
    if listed != set(state):
        raise CheckpointError(
            f"{index} and its shards disagree: listed but absent {sorted(listed - set(state))}, "
            f"present but unlisted {sorted(set(state) - listed)}"
        )
    return state


__all__ = [
    "GPT2_ACTIVATIONS",
    "GPT2_BASE_PREFIX",
    "GPT2_IGNORED",
    "GPT2_TRANSPOSED",
    "GPT2_UNSUPPORTED",
    "GPT2_WEIGHT_MAP",
    "gpt2_config_from_gpt",
    "gpt2_from_hf",
    "gpt2_to_hf",
    "gpt_config_from_gpt2",
    "save_gpt2_hf",
    "state_dict_from_gpt2",
    "state_dict_to_gpt2",
]
