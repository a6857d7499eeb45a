"""GPT-2 interop: parity with Hugging Face on a tiny random model (no download).

Every parameter of the HF model is randomised (LayerNorm gains and all biases
too), so a wrong transpose, a swapped name or a dropped bias changes logits.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from scratchformer.errors import CheckpointError, ConfigError  # noqa: E402
from scratchformer.interop import (  # noqa: E402
    GPT2_TRANSPOSED,
    GPT2_WEIGHT_MAP,
    gpt2_config_from_gpt,
    gpt2_from_hf,
    gpt2_to_hf,
    gpt_config_from_gpt2,
    save_gpt2_hf,
)
from scratchformer.models import GPT, GPTConfig  # noqa: E402

TOL = 1e-4
V, C, L, H, P = 100, 64, 2, 4, 64


def tiny_hf(seed: int = 0, **options) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = dict(n_embd=C, n_layer=L, n_head=H, vocab_size=V, n_positions=P, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(GPT2Config(**{**cfg, **options}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf():
    return tiny_hf()


def hf_logits(model, ids, **kw):
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def our_logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture
def ids():
    return torch.randint(0, V, (3, 24), generator=torch.Generator().manual_seed(1))


# --- parity ------------------------------------------------------------------


@pytest.mark.parametrize("attn_impl", ["fused", "reference"])
def test_logits_match_hf_without_mask(hf, ids, attn_impl):
    ours = gpt2_from_hf(hf, attn_impl=attn_impl)
    assert ours.config.attn_impl == attn_impl
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL


@pytest.mark.parametrize("attn_impl", ["fused", "reference"])
def test_logits_match_hf_with_right_padding(hf, ids, attn_impl):
    ours = gpt2_from_hf(hf, attn_impl=attn_impl)
    lengths = torch.tensor([24, 17, 5])
    mask = (torch.arange(24)[None, :] < lengths[:, None]).long()  # (B, S), right padding
    a, b = our_logits(ours, ids, attention_mask=mask), hf_logits(hf, ids, attention_mask=mask)
    real = mask.bool()
    assert max_diff(a[real], b[real]) < TOL
    # padding after a token cannot change it (causality): equals the unpadded run
    assert max_diff(a[real], our_logits(ours, ids)[real]) < TOL


@pytest.mark.parametrize("attn_impl", ["fused", "reference"])
def test_logits_match_hf_with_left_padding(hf, ids, attn_impl):
    ours = gpt2_from_hf(hf, attn_impl=attn_impl)
    lengths = torch.tensor([24, 17, 5])
    mask = (torch.arange(24)[None, :] >= 24 - lengths[:, None]).long()  # (B, S), left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    a = our_logits(ours, ids, attention_mask=mask, position_ids=pos)
    b = hf_logits(hf, ids, attention_mask=mask, position_ids=pos)
    real = mask.bool()
    assert max_diff(a[real], b[real]) < TOL
    # a left-padded row gives the same logits as the same tokens unpadded
    row = ids[2:3, 24 - 5 :]
    assert max_diff(a[2, 24 - 5 :], our_logits(ours, row)[0]) < TOL


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_other_activations_and_inner_width_match(ids, activation):
    hf = tiny_hf(seed=3, activation_function=activation, n_inner=96)
    ours = gpt2_from_hf(hf)
    assert ours.config.activation == activation and ours.config.d_ff == 96
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL


def test_base_model_object_loads_with_tied_head(hf, ids):
    ours = gpt2_from_hf(hf.transformer)  # GPT2Model: no lm_head, keys without "transformer."
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL


def test_untied_head_round_trip(ids):
    hf = tiny_hf(seed=4, tie_word_embeddings=False)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    ours = gpt2_from_hf(hf)
    assert not ours.config.tie_embeddings
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL
    assert max_diff(hf_logits(gpt2_to_hf(ours), ids), hf_logits(hf, ids)) < TOL


# --- directories -------------------------------------------------------------------


def test_directory_safetensors(hf, ids, tmp_path):
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    ours = gpt2_from_hf(tmp_path)
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL
    assert not ours.training


def write_bin_directory(hf, directory):
    """The classic HF layout: config.json + pytorch_model.bin. transformers 5
    always writes safetensors, so the .bin is written the way 4.x did it."""
    hf.save_pretrained(directory, safe_serialization=False)
    if not (directory / "pytorch_model.bin").exists():
        (directory / "model.safetensors").unlink()
        torch.save(hf.state_dict(), directory / "pytorch_model.bin")
    assert not (directory / "model.safetensors").exists()


def test_directory_pytorch_bin(hf, ids, tmp_path):
    write_bin_directory(hf, tmp_path)
    ours = gpt2_from_hf(tmp_path)
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL


def test_directory_sharded_safetensors(hf, ids, tmp_path):
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = gpt2_from_hf(tmp_path)
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL


def test_old_checkpoint_layout_with_mask_buffers(hf, ids, tmp_path):
    """Original OpenAI-era files: no "transformer." prefix, plus the causal-mask
    buffers attn.bias / attn.masked_bias in every layer (ignored by name)."""
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(L):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    ours = gpt2_from_hf(tmp_path)
    assert max_diff(our_logits(ours, ids), hf_logits(hf, ids)) < TOL


# --- weights out -----------------------------------------------------------------------


def random_gpt(**changes) -> GPT:
    torch.manual_seed(5)
    cfg = GPTConfig(vocab_size=V, d_model=C, n_head=H, n_layer=L, max_len=P, activation="gelu_tanh", **changes)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_to_hf_matches_ours(ids, tie):
    ours = random_gpt(tie_embeddings=tie)
    hf = gpt2_to_hf(ours)
    assert isinstance(hf, GPT2LMHeadModel) and not hf.training
    assert max_diff(hf_logits(hf, ids), our_logits(ours, ids)) < TOL
    back = gpt2_from_hf(hf)
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_save_gpt2_hf_loads_in_transformers(ids, tmp_path):
    ours = random_gpt()
    save_gpt2_hf(ours, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert max_diff(hf_logits(hf, ids), our_logits(ours, ids)) < TOL
    assert max_diff(our_logits(gpt2_from_hf(tmp_path / "out"), ids), our_logits(ours, ids)) < TOL


def test_gpt2_config_from_gpt_refuses_what_gpt2_lacks():
    for change, field in [
        (dict(positional="rope"), "positional"),
        (dict(norm="rmsnorm"), "norm"),
        (dict(norm_first=False), "norm_first"),
        (dict(activation="swiglu"), "activation"),
        (dict(bias=False), "bias"),
    ]:
        with pytest.raises(ConfigError, match=field):
            gpt2_config_from_gpt(GPTConfig(**change))


# --- the config map --------------------------------------------------------------------


def test_config_map_follows_gpt2_fields():
    cfg = gpt_config_from_gpt2(
        dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
             layer_norm_epsilon=1e-6, activation_function="gelu_new", resid_pdrop=0.2, embd_pdrop=0.2,
             attn_pdrop=0.2, n_inner=None)
    )  # fmt: skip
    assert (cfg.vocab_size, cfg.max_len, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.d_ff) == (
        50257, 1024, 768, 12, 12, 3072,
    )  # fmt: skip
    assert cfg.norm_eps == 1e-6 and cfg.activation == "gelu_tanh" and cfg.dropout == 0.2
    assert (cfg.positional, cfg.norm, cfg.norm_first, cfg.tie_embeddings, cfg.bias) == (
        "learned", "layernorm", True, True, True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "option,value",
    [("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True), ("add_cross_attention", True),
     ("scale_attn_weights", False), ("activation_function", "quick_gelu")],
)  # fmt: skip
def test_unsupported_option_is_named(hf, option, value):
    d = {**hf.config.to_dict(), option: value}
    with pytest.raises(ConfigError, match=option):
        gpt_config_from_gpt2(d)


def test_name_map_covers_every_weight_once():
    ours = GPT(GPTConfig(vocab_size=V, d_model=C, n_head=H, n_layer=L, max_len=P)).state_dict()
    mapped = {v.format(i=i) for v in GPT2_WEIGHT_MAP.values() for i in range(L)}
    assert mapped | {"lm_head.weight"} == set(ours)
    hf_names = {k.removeprefix("transformer.") for k in tiny_hf().state_dict()} - {"lm_head.weight"}
    assert {k.format(i=i) for k in GPT2_WEIGHT_MAP for i in range(L)} == hf_names
    assert GPT2_TRANSPOSED <= set(GPT2_WEIGHT_MAP)


# --- errors ------------------------------------------------------------------------------


def test_missing_config_json(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        gpt2_from_hf(tmp_path)


def test_foreign_model_type(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="bert"):
        gpt2_from_hf(tmp_path)


def test_missing_and_unexpected_tensors_are_listed(hf, tmp_path):
    hf.config.to_json_file(tmp_path / "config.json")
    state = dict(hf.state_dict())
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.h.0.attn.rotary.inv_freq"] = torch.zeros(8)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        gpt2_from_hf(tmp_path)
    assert "transformer.h.1.mlp.c_fc.bias" in str(err.value)
    assert "transformer.h.0.attn.rotary.inv_freq" in str(err.value)


def test_shape_mismatch_is_listed(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "vocab_size": V + 1}))
    with pytest.raises(CheckpointError, match=r"wte\.weight: \(100, 64\)"):
        gpt2_from_hf(tmp_path)


def test_no_weight_file(hf, tmp_path):
    hf.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        gpt2_from_hf(tmp_path)


def test_corrupt_safetensors(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        gpt2_from_hf(tmp_path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_bin_loader_refuses_pickled_code(hf, tmp_path, container):
    marker = tmp_path / "marker"
    hf.config.to_json_file(tmp_path / "config.json")
    payload = {"transformer.wte.weight": torch.zeros(V, C), "evil": _RunsCode(marker)}
    if container == "zip":  # what torch.save writes
        torch.save(payload, tmp_path / "pytorch_model.bin")
    else:  # a bare pickle stream
        with open(tmp_path / "pytorch_model.bin", "wb") as f:
            pickle.dump(_RunsCode(marker), f, protocol=2)
    assert shutil.which("touch") and not marker.exists()
    with pytest.raises(CheckpointError, match="refusing"):
        gpt2_from_hf(tmp_path)
    assert not marker.exists()
    if container == "legacy":  # control: the payload is live, plain pickle would run it
        pickle.loads((tmp_path / "pytorch_model.bin").read_bytes())
        assert marker.exists()


def test_not_a_model_or_path():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        gpt2_from_hf(42)
