"""The training benchmark compares equal computations, and the speed changes keep numerics.

- The baseline GPT, given scratchformer's weights, computes the same loss and
  gradients (so the benchmark times two implementations of one function).
- LayerNorm's fused forward equals the written-out formula, values and gradients.
- Dropping an all-ones attention mask changes no logit or gradient; a mask with
  padding is kept.
- Token-id checking still rejects ids outside the vocabulary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from scratchformer.models import GPT, GPTConfig
from scratchformer.models.inputs import check_ids, drop_full_mask
from scratchformer.nn.norm import LayerNorm, layer_norm_formula

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from baseline_gpt import BaselineGPT  # noqa: E402


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=13, d_model=16, n_head=2, n_layer=2, max_len=12)
    return GPT(GPTConfig(**{**cfg, **kw}))


def randomise(model: torch.nn.Module) -> None:
    """Random values everywhere (norm gains and biases too), so a wrongly mapped tensor shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def baseline_from(sf: GPT) -> BaselineGPT:
    c = sf.config
    bl = BaselineGPT(c.vocab_size, c.d_model, c.n_head, c.n_layer, c.max_len)
    with torch.no_grad():
        bl.tok.weight.copy_(sf.embed.tok.weight)
        bl.pos.weight.copy_(sf.embed.pos.weight)
        for b, s in zip(bl.blocks, sf.decoder.blocks):
            pairs = [
                (b.ln1, s.attn_norm), (b.attn.qkv, s.attn.in_proj), (b.attn.proj, s.attn.out_proj),
                (b.ln2, s.mlp_norm), (b.mlp.fc, s.mlp.up), (b.mlp.proj, s.mlp.down),
            ]
            for mb, ms in pairs:
                mb.weight.copy_(ms.weight)
                mb.bias.copy_(ms.bias)
        bl.ln_f.weight.copy_(sf.decoder.final_norm.weight)
        bl.ln_f.bias.copy_(sf.decoder.final_norm.bias)
    return bl


def test_baseline_computes_the_same_loss_and_gradients_as_scratchformer():
    sf = small_gpt()
    randomise(sf)
    bl = baseline_from(sf)
    assert sum(p.numel() for p in sf.parameters()) == sum(p.numel() for p in bl.parameters())
    x = torch.randint(0, 13, (3, 11), generator=torch.Generator().manual_seed(2))
    loss_sf = sf.loss(x, x, torch.ones_like(x))  # labels = inputs; the model shifts
    loss_bl = bl(x[:, :-1], x[:, 1:])  # nanoGPT convention: targets already shifted
    torch.testing.assert_close(loss_sf, loss_bl, rtol=1e-5, atol=1e-6)
    loss_sf.backward()
    loss_bl.backward()
    torch.testing.assert_close(sf.embed.tok.weight.grad, bl.tok.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        sf.decoder.blocks[0].attn.in_proj.weight.grad, bl.blocks[0].attn.qkv.weight.grad, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_equals_its_written_out_formula(bias):
    torch.manual_seed(0)
    ln = LayerNorm(24, eps=1e-5, bias=bias)
    randomise(ln)
    x = (torch.randn(3, 5, 24) * 4 + 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = ln(x), layer_norm_formula(x2, ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    (gx, *gp) = torch.autograd.grad(y, [x, *ln.parameters()], g)
    (gx_ref, *gp_ref) = torch.autograd.grad(y_ref, [x2, *ln.parameters()], g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(gp, gp_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_drop_full_mask_keeps_any_mask_with_padding():
    full = torch.ones(2, 5, dtype=torch.long)
    assert drop_full_mask(full) is None
    assert drop_full_mask(None) is None
    padded = full.clone()
    padded[1, 0] = 0
    assert drop_full_mask(padded) is padded


def test_all_ones_mask_gives_the_same_logits_and_gradients_as_no_mask():
    x = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(3))
    grads = []
    for mask in (None, torch.ones_like(x)):
        model = small_gpt(attn_impl="reference")  # the path a kept mask would take
        logits = model(x, mask)
        logits.square().sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [-1, 13, 99])
def test_ids_outside_the_vocabulary_are_rejected_with_the_bad_id(bad):
    ids = torch.tensor([[0, 5, bad, 12]])
    with pytest.raises(ValueError, match=rf"token id {bad}\b.*\[0, 13\)"):
        check_ids(ids, 13, "input_ids")
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        small_gpt()(ids)


def test_benchmark_writes_json_and_a_markdown_table(tmp_path):
    import bench_train

    bench_train.main([
        "--sections", "speed", "--no-compile", "--warmup", "1", "--rounds", "2", "--per-round", "1",
        "--threads", "1", "--out-dir", str(tmp_path),
    ])
    report = json.loads((tmp_path / "bench_train.json").read_text())
    rows = report["speed"]["rows"]
    assert set(rows) == {"scratchformer eager", "baseline eager"}
    for r in rows.values():
        assert r["steps"] == 2 and r["tokens_per_s"] == pytest.approx(12 * 64 / (r["median_ms"] / 1e3))
    ratio = report["speed"]["ratios"]["scratchformer eager / baseline eager"]["ratio"]
    assert ratio == pytest.approx(rows["baseline eager"]["median_ms"] / rows["scratchformer eager"]["median_ms"])
    md = (tmp_path / "bench_train.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| scratchformer eager / baseline eager |")]
    assert len(table) == 1 and f"**{ratio:.2f}x**" in table[0]
