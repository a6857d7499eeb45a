"""Properties of the building blocks in scratchformer.nn, each checked against
an independent computation (a formula written out here, torch's own module, or
numpy), never against the module's own output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchformer.errors import ConfigError
from scratchformer.models import GPTConfig, TransformerConfig
from scratchformer.nn import (
    ACTIVATIONS,
    NORMS,
    POSITIONAL,
    Block,
    BlockSpec,
    FeedForward,
    LayerNorm,
    MultiHeadAttention,
    Residual,
    RMSNorm,
    TutorialLayerNorm,
    apply_rotary,
    attention_mask_for,
    build_norm,
    build_positional,
    causal_mask,
    causal_multi_head_attention,
    fused_attention,
    multi_head_attention,
    reference_attention,
    self_attention,
    sinusoid_position_encoding,
)
from scratchformer.nn.norm import layer_norm_formula
from scratchformer.nn.positional import alibi_slopes

torch.set_num_threads(2)


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def naive_attention(q, k, v, allowed=None, bias=None):
    """softmax(q k^T / sqrt(D) + bias) v with python-level masking, float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.size(-1))
    if bias is not None:
        scores = scores + bias.double()
    if allowed is not None:
        scores = torch.where(allowed, scores, torch.tensor(-1e300, dtype=torch.float64))
    w = scores.softmax(-1)
    return torch.einsum("bhts,bhsd->bhtd", w, v), w


def right_padding(lengths, S):
    return (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, S)


# --------------------------------------------------------------------------- masks


def test_causal_mask_is_lower_triangle_and_offsets_for_cache():
    m = causal_mask(4)
    assert m.dtype == torch.bool
    for i in range(4):
        for j in range(4):
            assert bool(m[i, j]) == (j <= i)
    m2 = causal_mask(2, 5)  # the last 2 of 5 positions
    assert m2.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_attention_mask_for_combines_padding_and_causal():
    pad = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    m = attention_mask_for(4, 4, key_padding=pad, causal=True)
    assert m.shape == (2, 1, 4, 4)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                assert bool(m[b, 0, i, j]) == (j <= i and bool(pad[b, j]))
    # a query row that sees nothing (left padding + causal) is made to see everything
    left = torch.tensor([[0, 0, 1, 1]])
    m = attention_mask_for(4, 4, key_padding=left, causal=True)
    assert m[0, 0, 0].all() and m[0, 0, 1].all()
    assert m[0, 0, 2].tolist() == [False, False, True, False]


# --------------------------------------------------------------------------- attention


MASK_KINDS = ["none", "padding", "causal", "padding+causal", "alibi", "alibi+padding+causal"]


def make_mask_and_bias(kind, B, H, T, S):
    pad = right_padding([S, max(1, S - 2)][:B], S)
    mask = None
    if "padding" in kind:
        mask = pad.bool()[:, None, None, :]
    if "causal" in kind:
        c = causal_mask(T, S)
        mask = c if mask is None else mask & c
    bias = None
    if "alibi" in kind:
        dist = (torch.arange(T)[:, None] + (S - T) - torch.arange(S)[None, :]).abs().float()
        bias = -alibi_slopes(H)[:, None, None] * dist
    return mask, bias


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("T,S", [(5, 5), (3, 6)])
def test_reference_and_fused_attention_agree_with_formula(kind, T, S):
    B, H, D = 2, 4, 8
    q, k, v = rand(B, H, T, D, seed=1), rand(B, H, S, D, seed=2), rand(B, H, S, D, seed=3)
    mask, bias = make_mask_and_bias(kind, B, H, T, S)
    out_ref, w = reference_attention(q, k, v, mask, bias, need_weights=True)
    out_fused = fused_attention(q, k, v, mask, bias)
    expect_out, expect_w = naive_attention(q, k, v, mask, bias)
    torch.testing.assert_close(out_ref.double(), expect_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_fused, out_ref, atol=1e-5, rtol=1e-5)
    assert w.shape == (B, H, T, S)
    torch.testing.assert_close(w.double(), expect_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T), atol=1e-6, rtol=0)
    if mask is not None:
        assert (w.masked_select(~mask.expand_as(w)) == 0).all()
    # weights are not returned unless asked
    assert reference_attention(q, k, v, mask, bias)[1] is None


def test_fused_is_causal_flag_equals_explicit_mask():
    q, k, v = rand(1, 2, 6, 4, seed=4), rand(1, 2, 6, 4, seed=5), rand(1, 2, 6, 4, seed=6)
    torch.testing.assert_close(
        fused_attention(q, k, v, is_causal=True), reference_attention(q, k, v, causal_mask(6))[0], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_mha_fused_and_reference_agree(causal, cross):
    torch.manual_seed(0)
    fused = MultiHeadAttention(16, 4, impl="fused", causal=causal).eval()
    ref = MultiHeadAttention(16, 4, impl="reference", causal=causal).eval()
    ref.load_state_dict(fused.state_dict())
    x = rand(2, 5, 16, seed=7)
    ctx = rand(2, 7, 16, seed=8) if cross else None
    pad = right_padding([7, 4], 7) if cross else right_padding([5, 3], 5)
    H = 4
    bias = None if cross else -alibi_slopes(H)[:, None, None] * (torch.arange(5)[:, None] - torch.arange(5)).abs()
    for kp in (None, pad):
        for b in (None, bias):
            a, _ = fused(x, ctx, key_padding=kp, bias=b)
            r, w = ref(x, ctx, key_padding=kp, bias=b, need_weights=True)
            torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
            assert w.shape == (2, 4, 5, 7 if cross else 5)


def copy_into_torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    theirs = nn.MultiheadAttention(ours.d_model, ours.n_head, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.in_proj.weight)
        theirs.in_proj_bias.copy_(ours.in_proj.bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    return theirs.eval()


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_torch_multihead_attention(impl, padding, causal):
    torch.manual_seed(1)
    ours = MultiHeadAttention(16, 4, impl=impl, causal=causal).eval()
    with torch.no_grad():  # non-zero biases so the bias layout is checked too
        ours.in_proj.bias.normal_()
        ours.out_proj.bias.normal_()
    theirs = copy_into_torch_mha(ours)
    x = rand(2, 6, 16, seed=9)
    keep = right_padding([6, 4], 6)  # ours: 1 = real; right padding so no row is empty
    out, w = ours(x, key_padding=keep if padding else None, need_weights=True)
    expect, expect_w = theirs(
        x, x, x,
        key_padding_mask=(keep == 0) if padding else None,  # torch: True = ignore
        attn_mask=~causal_mask(6) if causal else None,  # torch: True = not allowed
        need_weights=True,
        average_attn_weights=False,
    )
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, expect_w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", [False, True])
def test_cross_attention_matches_torch_multihead_attention(padding):
    torch.manual_seed(2)
    ours = MultiHeadAttention(16, 2).eval()
    with torch.no_grad():
        ours.in_proj.bias.normal_()
        ours.out_proj.bias.normal_()
    theirs = copy_into_torch_mha(ours)
    x, ctx = rand(2, 3, 16, seed=10), rand(2, 7, 16, seed=11)  # T=3 queries, S=7 keys
    keep = right_padding([7, 2], 7)
    out, _ = ours(x, context=ctx, key_padding=keep if padding else None)
    expect, _ = theirs(x, ctx, ctx, key_padding_mask=(keep == 0) if padding else None)
    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    if padding:  # the padded keys really are ignored: change them, nothing moves
        ctx2 = ctx.clone()
        ctx2[1, 2:] = rand(5, 16, seed=12)
        torch.testing.assert_close(ours(x, context=ctx2, key_padding=keep)[0], out)
        assert not torch.allclose(ours(x, context=ctx2)[0], ours(x, context=ctx)[0], atol=1e-4)


def test_mha_causal_self_attention_ignores_the_future():
    torch.manual_seed(3)
    for impl in ("fused", "reference"):
        mha = MultiHeadAttention(8, 2, impl=impl, causal=True).eval()
        x = rand(1, 6, 8, seed=13)
        y = x.clone()
        y[:, 4:] += 1.0
        a, b = mha(x)[0], mha(y)[0]
        torch.testing.assert_close(a[:, :4], b[:, :4])
        assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-4)
        z = x.clone()
        z[:, 1] += 1.0  # an earlier change does reach later positions
        assert not torch.allclose(mha(z)[0][:, 2:], a[:, 2:], atol=1e-4)


# --------------------------------------------------------------------------- functional API


def mha_from_matrices(W_Q, W_K, W_V, W_O, n_head, causal=False):
    C = W_Q.size(0)
    mha = MultiHeadAttention(C, n_head, causal=causal, impl="reference").eval()
    with torch.no_grad():
        mha.in_proj.weight.copy_(torch.cat([W_Q, W_K, W_V], dim=1).T)
        mha.in_proj.bias.zero_()
        mha.out_proj.weight.copy_(W_O.T)
        mha.out_proj.bias.zero_()
    return mha


def test_functional_attention_agrees_with_module():
    C, H = 12, 3
    x = rand(2, 5, C, seed=20)
    W_Q, W_K, W_V, W_O = (rand(C, C, seed=21 + i) * 0.3 for i in range(4))
    out = multi_head_attention(x, W_Q, W_K, W_V, W_O, num_heads=H)
    torch.testing.assert_close(out, mha_from_matrices(W_Q, W_K, W_V, W_O, H)(x)[0], atol=1e-5, rtol=1e-5)
    out_c = causal_multi_head_attention(x, W_Q, W_K, W_V, W_O, num_heads=H)
    torch.testing.assert_close(
        out_c, mha_from_matrices(W_Q, W_K, W_V, W_O, H, causal=True)(x)[0], atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(out, out_c, atol=1e-4)
    # single head: self_attention with (C, C) matrices equals one head and an identity output map
    single = self_attention(x, W_Q, W_K, W_V)
    torch.testing.assert_close(single, mha_from_matrices(W_Q, W_K, W_V, torch.eye(C), 1)(x)[0], atol=1e-5, rtol=1e-5)
    # and the written-out formula, independently
    q, k, v = x @ W_Q, x @ W_K, x @ W_V
    expect = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), -1) @ v
    torch.testing.assert_close(single, expect, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_heads"):
        multi_head_attention(x, W_Q, W_K, W_V, W_O, num_heads=5)


def test_functional_self_attention_projects_to_other_width():
    x = rand(1, 4, 6, seed=30)
    W = [rand(6, 3, seed=31 + i) for i in range(3)]
    out = self_attention(x, *W, causal=True)
    assert out.shape == (1, 4, 3)
    v = x @ W[2]
    torch.testing.assert_close(out[:, 0], v[:, 0])  # the first position sees only itself


# --------------------------------------------------------------------------- positional encodings


def test_sinusoidal_matches_vaswani_at_hand_computed_points():
    d = 8
    pe = build_positional("sinusoidal", d_model=d, n_head=2, max_len=50)
    table = pe.embed(torch.zeros(1, 50, d), torch.arange(50))[0]
    # PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same)
    assert table[0].tolist() == pytest.approx([0, 1, 0, 1, 0, 1, 0, 1], abs=1e-7)
    assert table[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert table[1, 1].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert table[1, 2].item() == pytest.approx(math.sin(0.1), abs=1e-6)  # 10000^(2/8) = 10
    assert table[7, 5].item() == pytest.approx(math.cos(7 / 100), abs=1e-6)  # i=2: 10000^(4/8) = 100
    assert table[42, 6].item() == pytest.approx(math.sin(42 / 1000), abs=1e-6)
    assert table[42, 7].item() == pytest.approx(math.cos(42 / 1000), abs=1e-6)
    # the encoding is added to the input and follows the given positions
    x = rand(2, 3, d, seed=40)
    pos = torch.tensor([[5, 6, 7], [0, 0, 1]])
    torch.testing.assert_close(pe.embed(x, pos), x + table[pos])


def test_learned_positions_add_a_row_per_position():
    pe = build_positional("learned", d_model=4, n_head=1, max_len=10)
    x = rand(1, 3, 4, seed=41)
    torch.testing.assert_close(pe.embed(x, torch.tensor([2, 9, 0])), x + pe.weight[[2, 9, 0]])
    assert any(p.requires_grad for p in pe.parameters())


def xl_table(L, C, M=0, clamp=0, causal=False, max_timescale=1e4):
    """The chomsky-hierarchy formula re-derived with plain loops."""
    positions = list(range(L + M, 0 if causal else -L, -1))
    if clamp:
        positions = [max(-clamp, min(clamp, p)) for p in positions]
    half = C // 2
    out = np.zeros((len(positions), 2 * half))
    for r, p in enumerate(positions):
        for j in range(half):
            angle = p * max_timescale ** (-(2 * j) / C)
            out[r, j] = math.sin(angle)
            out[r, half + j] = math.cos(angle)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("M,clamp", [(0, 0), (3, 0), (0, 4), (2, 3)])
def test_sinusoidal_xl_table_matches_rederivation(causal, M, clamp):
    L, C = 7, 10
    got = sinusoid_position_encoding(L, C, memory_length=M, clamp_length=clamp, causal=causal)
    expect = xl_table(L, C, M, clamp, causal)
    assert got.shape == ((L + M) if causal else (2 * L + M), C)
    np.testing.assert_allclose(got, expect, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_sinusoidal_xl_embed_adds_first_T_rows(causal):
    pe = build_positional("sinusoidal_xl", d_model=6, n_head=2, max_len=20, causal=causal, memory_length=1)
    x = rand(2, 5, 6, seed=42)
    expect = x + torch.from_numpy(xl_table(5, 6, M=1, causal=causal)[:5]).float()
    torch.testing.assert_close(pe.embed(x, torch.arange(5)), expect)
    assert pe.supports_cache is False


def test_rope_scores_depend_only_on_relative_offset():
    d_model, H = 16, 2
    D = d_model // H
    pe = build_positional("rope", d_model=d_model, n_head=H, max_len=64)
    q, k = rand(1, 1, 1, D, seed=43), rand(1, 1, 1, D, seed=44)

    def score(m, n):
        cos, sin = pe.rotary(0, 64, torch.device("cpu"))
        qm = apply_rotary(q, cos[m : m + 1], sin[m : m + 1])
        kn = apply_rotary(k, cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum().item()

    for m, n, s in [(3, 1, 10), (0, 5, 20), (7, 7, 33)]:
        assert score(m, n) == pytest.approx(score(m + s, n + s), abs=1e-4)
    # ...but they do depend on the offset, and rotation preserves the norm
    assert abs(score(5, 0) - score(0, 0)) > 1e-3
    cos, sin = pe.rotary(9, 1, torch.device("cpu"))
    assert apply_rotary(q, cos, sin).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)
    # position 0 is the identity; pair (i, i + D/2) rotates by angle pos * 10000^(-2i/D)
    cos0, sin0 = pe.rotary(0, 1, torch.device("cpu"))
    torch.testing.assert_close(apply_rotary(q, cos0, sin0), q)
    c, s_ = pe.rotary(3, 1, torch.device("cpu"))
    r = apply_rotary(q, c, s_)[0, 0, 0]
    i = 1
    ang = 3 * 10000 ** (-2 * i / D)
    a, b = q[0, 0, 0, i].item(), q[0, 0, 0, i + D // 2].item()
    assert r[i].item() == pytest.approx(a * math.cos(ang) - b * math.sin(ang), abs=1e-5)
    assert r[i + D // 2].item() == pytest.approx(b * math.cos(ang) + a * math.sin(ang), abs=1e-5)


def test_alibi_slopes_and_bias():
    pe = build_positional("alibi", d_model=16, n_head=8, max_len=32)
    expected = [1 / 2 ** (i + 1) for i in range(8)]  # 1/2, 1/4, ..., 1/256
    assert pe.slopes.tolist() == pytest.approx(expected, rel=1e-6)
    bias = pe.attention_bias(0, 4, 4, True, torch.device("cpu"))
    assert bias.shape == (8, 4, 4)
    for h in range(8):
        for i in range(4):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-expected[h] * (i - j), abs=1e-7)
    # with a cache the single new query sits at position ``start``
    step = pe.attention_bias(5, 1, 6, True, torch.device("cpu"))
    assert step[0, 0].tolist() == pytest.approx([-0.5 * (5 - j) for j in range(6)])
    # 6 heads (not a power of two): 4 slopes of the 4-head ladder, then every other one of the 8-head ladder
    assert alibi_slopes(6).tolist() == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


def test_none_positional_does_nothing():
    pe = build_positional("none", d_model=8, n_head=2, max_len=16)
    x = rand(1, 3, 8, seed=45)
    assert torch.equal(pe.embed(x, torch.arange(3)), x)
    assert pe.rotary(0, 3, torch.device("cpu")) is None
    assert pe.attention_bias(0, 3, 3, True, torch.device("cpu")) is None
    assert list(pe.parameters()) == []


def test_unknown_positional_name_is_config_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"positional.*'sinusodal'.*did you mean 'sinusoidal'"):
        build_positional("sinusodal", d_model=8, n_head=2, max_len=16)
    with pytest.raises(ConfigError, match="rope"):
        build_positional("rope", d_model=6, n_head=2, max_len=16)  # head width 3 is odd
    with pytest.raises(ConfigError, match="learned"):
        build_positional("learned", d_model=8, n_head=2, max_len=16, colour="red")


# --------------------------------------------------------------------------- norms


def test_layernorm_matches_torch():
    x = rand(3, 5, 16, seed=50) * 3 + 1
    ours, theirs = LayerNorm(16), nn.LayerNorm(16)
    with torch.no_grad():
        w, b = rand(16, seed=51), rand(16, seed=52)
        ours.weight.copy_(w), ours.bias.copy_(b)
        theirs.weight.copy_(w), theirs.bias.copy_(b)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)
    # the written-out formula (LayerNorm itself may run torch's fused kernel)
    torch.testing.assert_close(layer_norm_formula(x, w, b, 1e-5), theirs(x), atol=1e-6, rtol=0)
    mean = x.mean(-1, keepdim=True)
    var_biased = ((x - mean) ** 2).sum(-1, keepdim=True) / 16
    torch.testing.assert_close(ours(x), w * (x - mean) / torch.sqrt(var_biased + 1e-5) + b, atol=1e-5, rtol=0)
    assert build_norm("layernorm", 16).__class__ is LayerNorm


def test_tutorial_layernorm_differs_from_torch_and_equals_its_formula():
    C = 16
    x = rand(3, 5, C, seed=53)
    ln = TutorialLayerNorm(C, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(rand(C, seed=54))
        ln.bias.copy_(rand(C, seed=55))
    xd = x.double()
    mean = xd.sum(-1, keepdim=True) / C
    std_unbiased = (((xd - mean) ** 2).sum(-1, keepdim=True) / (C - 1)).sqrt()
    expect = ln.weight.double() * (xd - mean) / (std_unbiased + 1e-6) + ln.bias.double()
    torch.testing.assert_close(ln(x).double(), expect, atol=1e-5, rtol=1e-5)
    torch_ln = F.layer_norm(x, (C,), ln.weight, ln.bias, eps=1e-6)
    assert (ln(x) - torch_ln).abs().max().item() > 1e-3


def test_rmsnorm_equals_formula():
    C = 16
    x = rand(2, 4, C, seed=56)
    n = RMSNorm(C, eps=1e-6)
    with torch.no_grad():
        n.weight.copy_(rand(C, seed=57))
    xd = x.double()
    expect = xd / torch.sqrt((xd**2).mean(-1, keepdim=True) + 1e-6) * n.weight.double()
    torch.testing.assert_close(n(x).double(), expect, atol=1e-5, rtol=1e-5)
    assert not any("bias" in name for name, _ in n.named_parameters())


def test_none_norm_is_identity_and_unknown_norm_errors():
    x = rand(2, 3, 4, seed=58)
    assert torch.equal(build_norm("none", 4)(x), x)
    with pytest.raises(ConfigError, match="rmsnorm"):
        build_norm("rmsnrom", 4)


# --------------------------------------------------------------------------- feed-forward and residual


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_feedforward_formula(activation):
    torch.manual_seed(4)
    ff = FeedForward(8, 20, activation).eval()
    x = rand(2, 3, 8, seed=60)
    h = linear(x, ff.up)
    if activation == "relu":
        h = torch.clamp(h, min=0)
    elif activation == "gelu":
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    elif activation == "gelu_tanh":
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    else:
        h = h * torch.sigmoid(h) * linear(x, ff.gate)
    torch.testing.assert_close(ff(x), linear(h, ff.down), atol=1e-5, rtol=1e-5)
    assert (ff.gate is not None) == (activation == "swiglu")


def test_feedforward_unknown_activation():
    with pytest.raises(ConfigError, match="did you mean 'gelu'"):
        FeedForward(4, 8, "gelux")


class Doubler(nn.Module):
    """A known sublayer: f(x) = 2x + 1."""

    def forward(self, x):
        return 2 * x + 1


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("use_residual", [True, False])
def test_residual_placements(norm_first, use_residual):
    spec = BlockSpec(d_model=6, n_head=2, d_ff=12, norm="layernorm", norm_first=norm_first, use_residual=use_residual)
    r = Residual(spec.norm_first, spec.use_residual)
    x = rand(2, 3, 6, seed=61)

    def norm(t):
        return (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)

    def f(t):
        return 2 * t + 1

    if norm_first:
        expect = (x if use_residual else 0) + f(norm(x))  # pre: x + f(norm(x))
    else:
        expect = norm((x if use_residual else 0) + f(x))  # post: norm(x + f(x))
    y, w = r(x, build_norm(spec.norm, spec.d_model), Doubler())
    assert w is None
    torch.testing.assert_close(y, expect, atol=1e-5, rtol=1e-5)


def test_block_parts_follow_spec():
    spec = BlockSpec(d_model=8, n_head=2, d_ff=16)
    enc, dec = Block(spec), Block(spec, causal=True, cross_attention=True)
    assert enc.cross_attn is None and enc.cross_attn_norm is None
    assert dec.cross_attn is not None and dec.cross_attn_norm is not None
    assert not enc.attn.causal and dec.attn.causal and not dec.cross_attn.causal
    no_mlp = Block(BlockSpec(d_model=8, n_head=2, d_ff=16, use_mlp=False))
    assert no_mlp.mlp is None and no_mlp.mlp_norm is None


# --------------------------------------------------------------------------- gradcheck


def test_gradcheck_reference_attention_with_mask_and_bias():
    B, H, T, S, D = 1, 2, 3, 4, 3
    q = rand(B, H, T, D, seed=70, dtype=torch.float64).requires_grad_()
    k = rand(B, H, S, D, seed=71, dtype=torch.float64).requires_grad_()
    v = rand(B, H, S, D, seed=72, dtype=torch.float64).requires_grad_()
    bias = rand(H, T, S, seed=73, dtype=torch.float64).requires_grad_()
    mask = causal_mask(T, S) & right_padding([3], S).bool()[:, None, None, :]
    assert torch.autograd.gradcheck(lambda q, k, v, b: reference_attention(q, k, v, mask, b)[0], (q, k, v, bias))


def test_gradcheck_fused_attention():
    B, H, T, S, D = 1, 2, 3, 4, 3
    q = rand(B, H, T, D, seed=74, dtype=torch.float64).requires_grad_()
    k = rand(B, H, S, D, seed=75, dtype=torch.float64).requires_grad_()
    v = rand(B, H, S, D, seed=76, dtype=torch.float64).requires_grad_()
    mask = causal_mask(T, S)
    bias = rand(H, T, S, seed=77, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: fused_attention(q, k, v, mask, bias), (q, k, v))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_gradcheck_multihead_attention(impl):
    torch.manual_seed(5)
    mha = MultiHeadAttention(4, 2, impl=impl, causal=True).double().eval()
    x = rand(1, 3, 4, seed=78, dtype=torch.float64).requires_grad_()
    ctx = rand(1, 2, 4, seed=79, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mha(x)[0], (x,))
    assert torch.autograd.gradcheck(lambda x, c: mha(x, context=c)[0], (x, ctx))


@pytest.mark.parametrize("name", sorted(NORMS))
def test_gradcheck_norms(name):
    n = build_norm(name, 5).double()
    params = dict(n.named_parameters())  # weight (and bias) where the norm has them
    with torch.no_grad():
        for i, p in enumerate(params.values()):
            p.copy_(rand(5, seed=80 + 2 * i, dtype=torch.float64))
    x = rand(2, 5, seed=81, dtype=torch.float64).requires_grad_()
    names = list(params)

    def f(x, *values):
        return torch.func.functional_call(n, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()))


def test_gradcheck_written_out_layer_norm():
    x = rand(2, 5, seed=82, dtype=torch.float64).requires_grad_()
    w = rand(5, seed=83, dtype=torch.float64).requires_grad_()
    b = rand(5, seed=84, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: layer_norm_formula(x, w, b, 1e-5), (x, w, b))


# --------------------------------------------------------------------------- the tutorial's LayerNorm and the Transformer-XL table, by their formulas
def test_positional_registry_holds_the_six_named_schemes_and_fused_is_default():
    # (a subset: tests of every scheme are parametrised from POSITIONAL, so a new one is tested by registering it)
    assert {"learned", "sinusoidal", "sinusoidal_xl", "rope", "alibi", "none"} <= set(POSITIONAL)
    assert TransformerConfig().attn_impl == "fused"
    assert GPTConfig().attn_impl == "fused"
    assert MultiHeadAttention(8, 2).impl == "fused"


def test_tutorial_layernorm_adds_eps_outside_the_square_root():
    # with a large eps the two placements differ by far more than any tolerance
    C, eps = 6, 0.5
    x = rand(3, C, seed=1) * 0.3
    ln = TutorialLayerNorm(C, eps=eps)
    xd = x.double()
    mean = xd.mean(-1, keepdim=True)
    std_unbiased = (((xd - mean) ** 2).sum(-1, keepdim=True) / (C - 1)).sqrt()
    outside = (xd - mean) / (std_unbiased + eps)
    inside = (xd - mean) / torch.sqrt(std_unbiased**2 + eps)
    assert (outside - inside).abs().max() > 1e-2
    torch.testing.assert_close(ln(x).double(), outside, atol=1e-6, rtol=1e-6)


def xl_table_timescales(L, C, max_timescale, min_timescale):
    """DeepMind's chomsky-hierarchy table, causal, no memory, re-derived with loops."""
    freqs = [f * min_timescale for f in range(math.ceil(C / min_timescale))]
    rows = []
    for p in range(L, 0, -1):
        angles = [p * max_timescale ** (-f / C) for f in freqs]
        rows.append([math.sin(a) for a in angles] + [math.cos(a) for a in angles])
    return np.array(rows)


@pytest.mark.parametrize("max_timescale,min_timescale", [(100.0, 2.0), (1e4, 4.0), (50.0, 3.0)])
def test_sinusoidal_xl_honours_max_and_min_timescale(max_timescale, min_timescale):
    L, C = 5, 12
    got = sinusoid_position_encoding(L, C, max_timescale=max_timescale, min_timescale=min_timescale, causal=True)
    np.testing.assert_allclose(got, xl_table_timescales(L, C, max_timescale, min_timescale), atol=1e-12)


def test_sinusoidal_xl_module_passes_max_timescale_through():
    pe = build_positional("sinusoidal_xl", d_model=6, n_head=2, max_len=16, max_timescale=100.0)
    x = torch.zeros(1, 4, 6)
    expect = torch.from_numpy(xl_table_timescales(4, 6, 100.0, 2.0)).float()
    torch.testing.assert_close(pe.embed(x, torch.arange(4))[0], expect)
