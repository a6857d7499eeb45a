"""Properties of the architectures: causality, padding invariance, cache equals
no cache, teacher forcing, pooling, weight tying, the ablation switches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from scratchformer.models import (
    GPT,
    MLP,
    MODELS,
    EncoderClassifier,
    EncoderClassifierConfig,
    EncoderDecoder,
    EncoderDecoderConfig,
    GPTConfig,
    MLPConfig,
    shift_right,
)
from scratchformer.nn import POSITIONAL, LayerNorm, RMSNorm, TutorialLayerNorm, causal_multi_head_attention

torch.set_num_threads(2)

POSITIONALS = sorted(POSITIONAL)  # every scheme: a new one is tested by registering it
CACHEABLE = sorted(name for name, scheme in POSITIONAL.items() if scheme.supports_cache)
"""The schemes whose encoding of a position does not depend on the sequence length."""
V = 13


def tiny(cls, **kw):
    # init_std large enough that attention is far from uniform, so small
    # mistakes (a wrong key, a wrong position) move the outputs visibly
    base = dict(d_model=16, n_head=2, n_layer=2, max_len=32, init_std=0.3)
    if cls is EncoderDecoderConfig:
        base.update(src_vocab_size=V, tgt_vocab_size=V)
    else:
        base.update(vocab_size=V)
    base.update(kw)
    return cls(**base)


def build(model_cls, cfg_cls, seed=0, **kw):
    torch.manual_seed(seed)
    model = model_cls(tiny(cfg_cls, **kw)).eval()
    with torch.no_grad():  # norms start at (1, 0); perturb so they are really exercised
        for m in model.modules():
            if isinstance(m, (LayerNorm, TutorialLayerNorm, RMSNorm, nn.LayerNorm)):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
    return model


def ids(B, T, seed=0, vocab=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (B, T), generator=g)


def right_mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


# --------------------------------------------------------------------------- causality


def gpt_fn(impl, positional, norm_first=True):
    model = build(GPT, GPTConfig, attn_impl=impl, positional=positional, norm_first=norm_first)
    return model, lambda x: model(x)


def encdec_fn(impl, positional, norm_first=False):
    model = build(EncoderDecoder, EncoderDecoderConfig, attn_impl=impl, positional=positional, norm_first=norm_first)
    src = ids(2, 5, seed=99)
    return model, lambda y: model(src, decoder_input_ids=y)


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("arch", ["gpt", "encdec"])
@torch.no_grad()
def test_future_tokens_never_change_the_past(arch, impl, positional):
    _, f = (gpt_fn if arch == "gpt" else encdec_fn)(impl, positional)
    T, t = 8, 4
    x = ids(2, T, seed=1)
    base = f(x)
    y = x.clone()
    y[:, t + 1 :] = (y[:, t + 1 :] % (V - 1)) + 1  # change every token after t
    assert not torch.equal(x, y)
    out = f(y)
    torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
    assert (out[:, t + 1 :] - base[:, t + 1 :]).abs().max() > 1e-4  # the change itself is seen
    z = x.clone()
    z[:, 1] = (z[:, 1] % (V - 1)) + 1  # an earlier token does change every later output
    out = f(z)
    torch.testing.assert_close(out[:, :1], base[:, :1], atol=1e-6, rtol=0)
    assert ((out[:, 1:] - base[:, 1:]).abs().amax(dim=-1) > 1e-6).all()


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("arch", ["gpt", "encdec"])
def test_gradient_of_output_wrt_future_embeddings_is_exactly_zero(arch, impl, positional):
    model, f = (gpt_fn if arch == "gpt" else encdec_fn)(impl, positional)
    embed = model.embed.tok if arch == "gpt" else model.tgt_embed.tok
    captured = {}

    def hook(module, inputs, output):
        output.retain_grad()
        captured["emb"] = output

    handle = embed.register_forward_hook(hook)
    T, t = 7, 3
    try:
        out = f(ids(2, T, seed=2))
    finally:
        handle.remove()
    out[:, t].pow(2).sum().backward()
    grad = captured["emb"].grad  # (B, T, C)
    assert torch.count_nonzero(grad[:, t + 1 :]) == 0
    assert (grad[:, : t + 1].abs().amax(dim=-1) > 0).all()


# --------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
@torch.no_grad()
def test_classifier_ignores_appended_padding(pooling, impl):
    model = build(EncoderClassifier, EncoderClassifierConfig, pooling=pooling, attn_impl=impl, num_classes=3)
    x = ids(2, 5, seed=3)
    base = model(x)
    padded = torch.cat([x, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    mask = right_mask([5, 5], 8)
    torch.testing.assert_close(model(padded, mask), base, atol=1e-5, rtol=0)
    # without the mask, the pads are read
    assert (model(padded) - base).abs().max() > 1e-4
    # and a shorter row in a batch equals that row alone
    mask2 = right_mask([5, 3], 8)
    torch.testing.assert_close(model(padded, mask2)[1], model(x[1:, :3])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", CACHEABLE)
@torch.no_grad()
def test_gpt_right_padding_changes_no_real_position(positional):
    model = build(GPT, GPTConfig, positional=positional)
    x = ids(2, 6, seed=4)
    base = model(x)
    padded = torch.cat([x, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    out = model(padded, right_mask([6, 6], 9))
    torch.testing.assert_close(out[:, :6], base, atol=1e-5, rtol=0)
    # a row with a shorter length matches that row run alone
    out = model(padded, right_mask([6, 4], 9))
    torch.testing.assert_close(out[1, :4], model(x[1:, :4])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", CACHEABLE)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@torch.no_grad()
def test_gpt_left_padding_with_position_ids(positional, impl):
    model = build(GPT, GPTConfig, positional=positional, attn_impl=impl)
    a, b = ids(1, 6, seed=5), ids(1, 3, seed=6)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], dim=1)])  # row 1 left-padded
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(batch, mask, position_ids=position_ids)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], model(a)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 3:], model(b)[0], atol=1e-5, rtol=0)


@torch.no_grad()
def test_encoder_decoder_source_padding_respected():
    model = build(EncoderDecoder, EncoderDecoderConfig)
    src, tgt = ids(2, 5, seed=7), ids(2, 4, seed=8)
    base = model(src, tgt)
    padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    out = model(padded, tgt, encoder_attention_mask=right_mask([5, 5], 8))
    torch.testing.assert_close(out, base, atol=1e-5, rtol=0)
    assert (model(padded, tgt) - base).abs().max() > 1e-4  # unmasked pads are read
    # the pad tokens' content is irrelevant under the mask
    other = padded.clone()
    other[:, 5:] = 7
    torch.testing.assert_close(
        model(other, tgt, encoder_attention_mask=right_mask([5, 5], 8)), base, atol=1e-5, rtol=0
    )


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("positional", CACHEABLE)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@torch.no_grad()
def test_gpt_cache_one_token_at_a_time_equals_full_forward(positional, impl):
    model = build(GPT, GPTConfig, positional=positional, attn_impl=impl)
    x = ids(2, 9, seed=9)
    full = model(x)
    cache = model.new_cache()
    steps = [model(x[:, :3], cache=cache)]  # a prompt, then one token at a time
    for t in range(3, 9):
        steps.append(model(x[:, t : t + 1], cache=cache))
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", CACHEABLE)
@torch.no_grad()
def test_encoder_decoder_decode_with_cache_equals_full(positional):
    model = build(EncoderDecoder, EncoderDecoderConfig, positional=positional)
    src, tgt = ids(2, 6, seed=10), ids(2, 5, seed=11)
    src_mask = right_mask([6, 4], 6)
    memory = model.encode(src, src_mask)
    full, _ = model.decode(tgt, memory, src_mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache)[0] for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_sinusoidal_xl_refuses_a_cache():
    with pytest.raises(ValueError, match="sinusoidal_xl"):
        build(GPT, GPTConfig, positional="sinusoidal_xl").new_cache()
    with pytest.raises(ValueError, match="sinusoidal_xl"):
        build(EncoderDecoder, EncoderDecoderConfig, positional="sinusoidal_xl").new_cache()


# --------------------------------------------------------------------------- EncoderClassifier


def capture_encoder_output(model, x, mask):
    seen = {}

    def hook(module, inputs, output):
        seen["x"] = output[0]  # (B, T, C), after the final norm

    handle = model.encoder.register_forward_hook(hook)
    try:
        logits = model(x, mask)
    finally:
        handle.remove()
    return logits, seen["x"]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["last", "first", "mean"])
@torch.no_grad()
def test_classifier_pooling_by_hand(pooling, side):
    model = build(EncoderClassifier, EncoderClassifierConfig, pooling=pooling, num_classes=3)
    x = ids(3, 6, seed=12)
    lengths = [6, 4, 2]
    mask = right_mask(lengths, 6)
    if side == "left":
        mask = mask.flip(1)
    logits, h = capture_encoder_output(model, x, mask)
    for b in range(3):
        real = [t for t in range(6) if mask[b, t] == 1]
        if pooling == "last":
            vec = h[b, real[-1]]
        elif pooling == "first":
            vec = h[b, 0]
        else:
            vec = sum(h[b, t] for t in real) / len(real)
        expect = vec @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(logits[b], expect, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- EncoderDecoder


@torch.no_grad()
def test_teacher_forcing_is_shift_right_with_start_token():
    model = build(EncoderDecoder, EncoderDecoderConfig)
    start = model.config.start_token_id
    assert start == V  # None -> a dedicated extra id
    assert model.tgt_embed.tok.num_embeddings == V + 1
    src, labels = ids(2, 5, seed=13), ids(2, 4, seed=14)
    labels[1, 3] = -100
    dec_in = torch.tensor([[start, *labels[0, :3].tolist()], [start, *labels[1, :3].tolist()]])
    assert torch.equal(shift_right(labels, start, 0), dec_in)
    torch.testing.assert_close(model(src, labels=labels), model(src, decoder_input_ids=dec_in))
    assert shift_right(torch.tensor([[4, -100, 5]]), 9, 0).tolist() == [[9, 4, 0]]
    # loss is the cross-entropy against the labels themselves (position t predicts labels[t])
    logits = model(src, labels=labels)
    expect = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(model.loss(src, labels), expect)


@torch.no_grad()
def test_explicit_start_token_id():
    model = build(EncoderDecoder, EncoderDecoderConfig, decoder_start_token_id=2)
    assert model.config.start_token_id == 2 and model.tgt_embed.tok.num_embeddings == V
    labels = ids(1, 3, seed=15)
    assert shift_right(labels, 2)[0, 0].item() == 2


@torch.no_grad()
def test_greedy_step_by_step_equals_teacher_forcing():
    model = build(EncoderDecoder, EncoderDecoderConfig, seed=3)
    src = ids(2, 5, seed=16)
    start = model.config.start_token_id
    dec = torch.full((2, 1), start)
    step_logits = []
    for _ in range(6):  # re-run the decoder on the growing prefix, no cache
        last = model(src, decoder_input_ids=dec)[:, -1]
        step_logits.append(last)
        dec = torch.cat([dec, last.argmax(-1, keepdim=True)], dim=1)
    generated = dec[:, 1:]
    tf = model(src, labels=generated)  # teacher forcing on what was generated
    torch.testing.assert_close(tf, torch.stack(step_logits, dim=1), atol=1e-5, rtol=0)
    assert torch.equal(tf.argmax(-1), generated)


@torch.no_grad()
def test_separate_source_and_target_vocabularies():
    torch.manual_seed(0)
    model = EncoderDecoder(tiny(EncoderDecoderConfig, src_vocab_size=20, tgt_vocab_size=7)).eval()
    assert model.src_embed.tok.num_embeddings == 20
    assert model.tgt_embed.tok.num_embeddings == 8  # + start token
    src = torch.tensor([[19, 18, 3]])  # ids beyond the target vocabulary are fine in the source
    logits = model(src, decoder_input_ids=torch.tensor([[7, 1]]))
    assert logits.shape == (1, 2, 7)
    with pytest.raises(ValueError, match=r"token id 20"):
        model(torch.tensor([[20]]), decoder_input_ids=torch.tensor([[7]]))
    with pytest.raises(ValueError, match=r"token id 8"):
        model(src, decoder_input_ids=torch.tensor([[8]]))
    tied = EncoderDecoder(tiny(EncoderDecoderConfig, tie_encoder_decoder_embeddings=True, decoder_start_token_id=0))
    assert tied.src_embed.tok.weight is tied.tgt_embed.tok.weight


# --------------------------------------------------------------------------- GPT details


def test_gpt_logits_to_keep_is_the_tail_of_the_full_logits():
    model = build(GPT, GPTConfig).eval()
    x = ids(2, 6)
    full = model(x)
    for k in (1, 3, 6):
        torch.testing.assert_close(model(x, logits_to_keep=k), full[:, -k:], atol=1e-6, rtol=1e-5)
    assert torch.equal(model(x, logits_to_keep=0), full)
    torch.testing.assert_close(model(x, logits_to_keep=np.int64(2)), full[:, -2:], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"logits_to_keep=-1 must be an integer >= 0"):
        model(x, logits_to_keep=-1)


def test_gpt_max_len_enforced():
    model = build(GPT, GPTConfig, max_len=8)
    model(ids(1, 8))
    with pytest.raises(ValueError, match="max_len=8"):
        model(ids(1, 9))
    cache = model.new_cache()
    model(ids(1, 7), cache=cache)
    model(ids(1, 1), cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model(ids(1, 1), cache=cache)


def test_gpt_weight_tying():
    tied = build(GPT, GPTConfig, tie_embeddings=True)
    assert tied.lm_head.weight is tied.embed.tok.weight
    untied = build(GPT, GPTConfig, tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embed.tok.weight
    assert not torch.equal(untied.lm_head.weight, untied.embed.tok.weight)
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == V * 16
    # a gradient step on the head moves the tied embedding too
    loss = tied(ids(1, 4)).sum()
    loss.backward()
    assert tied.embed.tok.weight.grad is tied.lm_head.weight.grad


@pytest.mark.parametrize("scale", [False, True])
@torch.no_grad()
def test_scale_embeddings(scale):
    model = build(GPT, GPTConfig, positional="none", scale_embeddings=scale)
    x = ids(2, 5, seed=17)
    factor = math.sqrt(16) if scale else 1.0
    torch.testing.assert_close(model.embed(x), model.embed.tok.weight[x] * factor)


def test_gpt_loss_is_shifted_cross_entropy():
    model = build(GPT, GPTConfig)
    x = ids(2, 6, seed=18)
    labels = x.clone()
    labels[0, :2] = -100
    logits = model(x)
    total, n = 0.0, 0
    for b in range(2):
        for t in range(5):
            if labels[b, t + 1] != -100:
                total -= torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]]
                n += 1
    torch.testing.assert_close(model.loss(x, labels), total / n)


@torch.no_grad()
def test_mlp_is_linear_relu_layers():
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_dim=5, hidden_dims=[7, 6], out_dim=2))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(5, 7), (7, 6), (6, 2)]
    x = torch.randn(4, 5)
    h = x
    for i, l in enumerate(linears):
        h = h @ l.weight.T + l.bias
        if i < 2:
            h = h.clamp(min=0)
    torch.testing.assert_close(model(x), h)
    assert MODELS["mlp"] == (MLP, MLPConfig)


def test_model_registry_builds_each():
    for name, (model_cls, cfg_cls) in MODELS.items():
        cfg = cfg_cls() if name == "mlp" else tiny(cfg_cls)
        assert isinstance(model_cls(cfg), nn.Module)


# --------------------------------------------------------------------------- ablation ladder


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_use_mlp_false_removes_feedforward():
    with_mlp = build(GPT, GPTConfig, use_mlp=True)
    without = build(GPT, GPTConfig, use_mlp=False)
    assert not any(".mlp." in n for n, _ in without.named_parameters())
    assert any(".mlp." in n for n, _ in with_mlp.named_parameters())
    C, F = 16, 64
    per_layer = C * F + F + F * C + C + 2 * C  # up, down, and the mlp residual's LayerNorm
    assert n_params(with_mlp) - n_params(without) == 2 * per_layer


@torch.no_grad()
def test_no_positions_makes_the_encoder_permutation_equivariant():
    perm = torch.tensor([3, 0, 4, 1, 2])
    x = ids(2, 5, seed=19)
    model = build(EncoderClassifier, EncoderClassifierConfig, positional="none", pooling="mean", num_classes=3)
    logits, h = capture_encoder_output(model, x, None)
    logits_p, h_p = capture_encoder_output(model, x[:, perm], None)
    torch.testing.assert_close(h_p, h[:, perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_p, logits, atol=1e-5, rtol=0)
    # with positions the same permutation is visible
    learned = build(EncoderClassifier, EncoderClassifierConfig, positional="learned", pooling="mean", num_classes=3)
    with torch.no_grad():
        learned.embed.pos.weight.normal_()
    assert (learned(x[:, perm]) - learned(x)).abs().max() > 1e-4


def test_norm_none_has_no_norm_parameters():
    model = build(GPT, GPTConfig, norm="none")
    assert not any("norm" in n for n, _ in model.named_parameters())
    assert not any(isinstance(m, (LayerNorm, TutorialLayerNorm, RMSNorm, nn.LayerNorm)) for m in model.modules())
    normed = build(GPT, GPTConfig, norm="layernorm")
    # 2 layers x 2 sublayers + final norm, each weight and bias of width 16
    assert n_params(normed) - n_params(model) == 5 * 2 * 16
    rms = build(GPT, GPTConfig, norm="rmsnorm")
    assert n_params(rms) - n_params(model) == 5 * 16


@pytest.mark.parametrize("norm_first", [False, True])
@torch.no_grad()
def test_use_residual_false_changes_outputs(norm_first):
    a = build(GPT, GPTConfig, use_residual=True, norm_first=norm_first)
    b = GPT(tiny(GPTConfig, use_residual=False, norm_first=norm_first)).eval()
    b.load_state_dict(a.state_dict())
    x = ids(2, 5, seed=20)
    assert (a(x) - b(x)).abs().max() > 1e-4


@torch.no_grad()
def test_n_layer_changes_depth():
    one = build(GPT, GPTConfig, n_layer=1)
    three = build(GPT, GPTConfig, n_layer=3)
    assert len(one.decoder.blocks) == 1 and len(three.decoder.blocks) == 3
    per_block = (n_params(three) - n_params(one)) / 2
    assert per_block == n_params(three.decoder.blocks[0])
    # the first block carried over: same weights, different depth, different output
    two = GPT(tiny(GPTConfig, n_layer=2)).eval()
    state = {k: v for k, v in three.state_dict().items() if "blocks.2." not in k}
    two.load_state_dict(state)
    x = ids(1, 5, seed=21)
    assert (two(x) - three(x)).abs().max() > 1e-4
    ed = build(EncoderDecoder, EncoderDecoderConfig, n_layer=2, n_encoder_layer=3, n_decoder_layer=1)
    assert len(ed.encoder.blocks) == 3 and len(ed.decoder.blocks) == 1


def test_alibi_reference_attention_runs_in_bfloat16():
    """The float32 ALiBi bias is cast to the scores' dtype: a bf16 model with the written-out
    attention runs, and agrees with the fused path to bf16 rounding."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=31, d_model=32, n_head=4, n_layer=2, max_len=16, positional="alibi")
    ids = torch.randint(0, 31, (2, 9))
    ref = GPT(GPTConfig(**cfg, attn_impl="reference")).eval().to(torch.bfloat16)
    fused = GPT(GPTConfig(**cfg, attn_impl="fused")).eval().to(torch.bfloat16)
    fused.load_state_dict(ref.state_dict())
    with torch.no_grad():
        a, b = ref(ids), fused(ids)
    assert a.dtype == torch.bfloat16
    assert (a.float() - b.float()).abs().max() <= 0.05 * b.float().abs().max()


# --------------------------------------------------------------------------- config switches reach every architecture: norm by name, the bottom rung, tying, scaling
@pytest.mark.parametrize("norm_first", [False, True])
def test_tutorial_layernorm_is_selectable_by_config_name(norm_first):
    model = GPT(GPTConfig(vocab_size=11, d_model=8, n_head=2, n_layer=2, max_len=8,
                          norm="layernorm_tutorial", norm_first=norm_first))
    norms = [m for m in model.modules() if isinstance(m, (LayerNorm, TutorialLayerNorm, RMSNorm, nn.LayerNorm))]
    # 2 sublayers per block (+ the final norm of a pre-norm stack)
    assert len(norms) == 2 * 2 + (1 if norm_first else 0)
    assert all(type(m) is TutorialLayerNorm for m in norms)


@torch.no_grad()
def test_attention_only_rung_is_embeddings_attention_and_head():
    """The bottom of the ablation ladder: no MLP, no positions, no norm, no residual."""
    C, H, V = 8, 2, 11
    cfg = GPTConfig(vocab_size=V, d_model=C, n_head=H, n_layer=1, max_len=8, bias=False, tie_embeddings=False,
                    use_mlp=False, positional="none", norm="none", use_residual=False, init_std=0.3)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    names = {n for n, _ in model.named_parameters()}
    assert names == {"embed.tok.weight", "decoder.blocks.0.attn.in_proj.weight",
                     "decoder.blocks.0.attn.out_proj.weight", "lm_head.weight"}
    # logits = causal_mha(E[ids]) @ W_head^T, with the tutorial's (d_in, d_out) matrices
    ids = torch.tensor([[1, 4, 2, 9, 3]])
    W_in = model.decoder.blocks[0].attn.in_proj.weight  # (3C, C)
    W_Q, W_K, W_V = (W_in[i * C : (i + 1) * C].T for i in range(3))
    W_O = model.decoder.blocks[0].attn.out_proj.weight.T
    x = model.embed.tok.weight[ids]
    expect = causal_multi_head_attention(x, W_Q, W_K, W_V, W_O, num_heads=H) @ model.lm_head.weight.T
    torch.testing.assert_close(model(ids), expect, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_encoder_decoder_tied_output_projection_is_the_target_embedding():
    V, C = 9, 8
    kw = dict(src_vocab_size=13, tgt_vocab_size=V, d_model=C, n_head=2, n_layer=1, max_len=8, init_std=0.3)
    torch.manual_seed(0)
    tied = EncoderDecoder(EncoderDecoderConfig(**kw, tie_embeddings=True)).eval()
    untied = EncoderDecoder(EncoderDecoderConfig(**kw, tie_embeddings=False)).eval()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(tied) == V * C  # no separate head when tied
    seen = {}
    handle = tied.decoder.register_forward_hook(lambda mod, inp, out: seen.__setitem__("h", out[0]))
    src, dec_in = torch.tensor([[3, 12, 5]]), torch.tensor([[V, 1, 2]])  # V = the dedicated start id
    try:
        logits = tied(src, decoder_input_ids=dec_in)
    finally:
        handle.remove()
    # the start token's row exists only as an input, never as a prediction
    assert tied.tgt_embed.tok.num_embeddings == V + 1 and logits.shape == (1, 3, V)
    torch.testing.assert_close(logits, seen["h"] @ tied.tgt_embed.tok.weight[:V].T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [EncoderClassifier, EncoderDecoder])
@torch.no_grad()
def test_scale_embeddings_applies_to_every_architecture(cls):
    kw = dict(d_model=16, n_head=2, n_layer=1, max_len=8, positional="none", scale_embeddings=True)
    if cls is EncoderDecoder:
        model = cls(EncoderDecoderConfig(src_vocab_size=7, tgt_vocab_size=7, **kw))
        embedders = [model.src_embed, model.tgt_embed]
    else:
        model = cls(EncoderClassifierConfig(vocab_size=7, **kw))
        embedders = [model.embed]
    ids = torch.tensor([[1, 2, 6]])
    for e in embedders:
        torch.testing.assert_close(e(ids), e.tok.weight[ids] * 4.0)  # sqrt(16)


def test_tutorial_adder_switches_reproduce_its_parameter_count_and_initialisation():
    """The GPT tutorial's adder (2 layers, width 128, 4 heads, FFN 256, vocabulary 18, 11 positions) has
    270,226 parameters: attention without bias, feed-forward with bias, post-norm blocks plus a final
    LayerNorm, an untied head with a bias; Xavier-uniform for every matrix."""
    import math

    from scratchformer.models import GPT, GPTConfig

    cfg = dict(vocab_size=18, d_model=128, n_head=4, n_layer=2, d_ff=256, max_len=11, norm_first=False,
               activation="relu", tie_embeddings=False, attn_bias=False, final_norm=True, lm_head_bias=True)
    model = GPT(GPTConfig(**cfg, init="xavier"))
    assert sum(p.numel() for p in model.parameters()) == 270_226
    assert model.decoder.blocks[0].attn.in_proj.bias is None and model.decoder.blocks[0].mlp.up.bias is not None
    assert not isinstance(model.decoder.final_norm, torch.nn.Identity) and model.lm_head.bias is not None
    w = model.decoder.blocks[1].mlp.up.weight.detach()  # (256, 128): Xavier bound sqrt(6 / (128 + 256))
    bound = math.sqrt(6 / (128 + 256))
    assert 0.9 * bound < float(w.abs().max()) <= bound
    normal = GPT(GPTConfig(**cfg))
    assert float(normal.decoder.blocks[1].mlp.up.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    from scratchformer.errors import ConfigError

    with pytest.raises(ConfigError, match="init"):
        GPTConfig(init="kaiming")


def test_learned_positions_scale_multiplies_the_added_vectors():
    """Tutorial 000 adds its learned positions divided by sqrt(d_model): ``positional_options.scale``."""
    from scratchformer.errors import ConfigError
    from scratchformer.nn.positional import build_positional

    pos = build_positional("learned", d_model=8, n_head=2, max_len=5, scale=8**-0.5)
    x = torch.randn(2, 5, 8)
    positions = torch.arange(5)
    assert torch.allclose(pos.embed(x, positions), x + pos.weight[positions] / math.sqrt(8))
    with pytest.raises(ConfigError, match="scale"):
        build_positional("learned", d_model=8, n_head=2, max_len=5, scale=0)
