"""Review gaps of issues 2 (foundation) and 3 (tokenizers and tasks).

Each test covers a bullet that the other test files left unshown or could not
fail on (checked by mutating a copy of the library). Expected values come from
the issues' rules and formulas written out here, never from the code's output.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from scratchformer.errors import ConfigError, DataError
from scratchformer.models import (
    GPT,
    EncoderClassifier,
    EncoderClassifierConfig,
    EncoderDecoder,
    EncoderDecoderConfig,
    GPTConfig,
    TransformerConfig,
)
from scratchformer.nn import (
    POSITIONAL,
    LayerNorm,
    MultiHeadAttention,
    RMSNorm,
    TutorialLayerNorm,
    build_positional,
    causal_multi_head_attention,
    sinusoid_position_encoding,
)
from scratchformer.tasks import build_task

torch.set_num_threads(2)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ====================================================================== issue 2


def test_positional_registry_holds_exactly_the_six_named_schemes_and_fused_is_default():
    assert set(POSITIONAL) == {"learned", "sinusoidal", "sinusoidal_xl", "rope", "alibi", "none"}
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


@pytest.mark.parametrize("norm_first", [False, True])
def test_tutorial_layernorm_is_selectable_by_config_name(norm_first):
    model = GPT(GPTConfig(vocab_size=11, d_model=8, n_head=2, n_layer=2, max_len=8,
                          norm="layernorm_tutorial", norm_first=norm_first))
    norms = [m for m in model.modules() if isinstance(m, (LayerNorm, TutorialLayerNorm, RMSNorm, nn.LayerNorm))]
    # 2 sublayers per block (+ the final norm of a pre-norm stack)
    assert len(norms) == 2 * 2 + (1 if norm_first else 0)
    assert all(type(m) is TutorialLayerNorm for m in norms)


def xl_table(L, C, max_timescale, min_timescale):
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
    np.testing.assert_allclose(got, xl_table(L, C, max_timescale, min_timescale), atol=1e-12)


def test_sinusoidal_xl_module_passes_max_timescale_through():
    pe = build_positional("sinusoidal_xl", d_model=6, n_head=2, max_len=16, max_timescale=100.0)
    x = torch.zeros(1, 4, 6)
    expect = torch.from_numpy(xl_table(4, 6, 100.0, 2.0)).float()
    torch.testing.assert_close(pe.embed(x, torch.arange(4))[0], expect)


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


# ====================================================================== issue 3: data


def test_token_array_dtype_follows_vocabulary_size(tmp_path):
    from scratchformer.tasks.text import cached_token_array, token_dtype

    # uint16 holds ids 0..65535, i.e. a vocabulary of up to 65536 tokens
    assert token_dtype(256) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(200_000) == np.uint32

    class BigVocab:
        """A stand-in tokenizer whose ids exceed uint16: char code + 65530."""

        vocab_size = 70_000

        def to_dict(self):
            return {"type": "big-vocab-stub"}

        def encode(self, text):
            return [ord(c) + 65_530 for c in text]

    text = "abc\nxyz\n"
    tokens = cached_token_array(text, "hash-of-text", BigVocab(), str(tmp_path))
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint32
    assert tokens.tolist() == [ord(c) + 65_530 for c in text]


def test_generating_100k_addition_examples_takes_seconds_not_minutes():
    start = time.perf_counter()
    task = build_task("addition_gpt", max_digits=3, num_examples=100_000, seed=0)
    batch = next(iter(task.dataloader("train", batch_size=64)))
    elapsed = time.perf_counter() - start
    assert sum(len(task.dataset(s)) for s in task.split_names) == 100_000
    assert batch["input_ids"].shape == (64, 1 + 3 + 1 + 3 + 1 + 4 + 1)
    assert elapsed < 5.0, f"100k addition examples took {elapsed:.1f} s"


def test_text_classification_eval_path_is_the_test_split(tmp_path):
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"text": f"good {i}", "label": "pos" if i % 2 else "neg"}) + "\n"
                             for i in range(20)), encoding="utf-8")
    test_rows = [("good 100", "pos"), ("good 101", "neg"), ("good 102", "pos")]
    test.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in test_rows), encoding="utf-8")
    task = build_task("text_classification", path=str(train), eval_path=str(test), split_fractions=(0.8, 0.1, 0.1))
    assert task.split_names == ("train", "val", "test")
    assert task.texts("test") == [t for t, _ in test_rows]  # the eval file, in order, untouched
    assert len(task.texts("train")) + len(task.texts("val")) == 20
    assert len(task.texts("val")) >= 1
    rows = [task.dataset("test")[i] for i in range(3)]
    assert [task.label_names[r["labels"]] for r in rows] == [y for _, y in test_rows]


def test_text_lines_lm_wikitext_uses_train_validation_test(monkeypatch):
    import scratchformer.tasks.text as text_mod

    calls = []

    def fake(name, split, cache_dir=None, data_files=None):
        calls.append((name, split))
        return ["", f" = {split} heading = \n", f" a {split} line . \n"]

    monkeypatch.setattr(text_mod, "load_wikitext", fake)
    task = build_task("text_lines_lm", wikitext="wikitext-103-raw-v1", max_length=64)
    assert sorted(calls) == sorted(("wikitext-103-raw-v1", s) for s in ("train", "validation", "test"))
    assert task.split_names == ("train", "val", "test")
    assert task.texts("val") == [" = validation heading = ", " a validation line . "]  # blanks dropped


# ====================================================================== issue 3: bad input
# "each is a clear error that names the problem and the fix"


def test_bad_input_not_utf8_names_offset_and_fix(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(DataError) as info:
        build_task("text_lm", path=str(bad), cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "latin.txt" in msg and "not UTF-8" in msg and "byte offset 3" in msg
    assert "re-encode" in msg  # the fix


def test_bad_input_empty_corpus_names_the_fix(tmp_path):
    empty = tmp_path / "blank.txt"
    empty.write_text(" \n\t\n", encoding="utf-8")
    for name in ("text_lm", "text_lines_lm"):
        with pytest.raises(DataError) as info:
            build_task(name, path=str(empty), cache_dir=str(tmp_path))
        assert "blank.txt" in str(info.value) and "empty corpus" in str(info.value)
        assert "give a file with text" in str(info.value)


@pytest.mark.parametrize(
    "name,options,problem,fix",
    [
        ("difference_sign", dict(train_lengths=[2, 5]), "train_lengths holds 2", "use lengths >= 3"),
        ("addition_seq2seq", dict(test_lengths=[1]), "test_lengths holds 1", "use lengths >= 3"),
        ("addition_gpt", dict(max_digits=1, num_examples=500), "only 100 exist", "lower num_examples"),
        ("difference_sign", dict(train_lengths=[3], test_lengths=[4], train_examples_per_length=90,
                                 if_too_few="error"), "only 81 are available", "ask for at most 81"),
    ],
)
def test_bad_input_impossible_length_names_problem_and_fix(name, options, problem, fix):
    with pytest.raises((ConfigError, DataError)) as info:
        build_task(name, **options)
    assert problem in str(info.value) and fix in str(info.value)


def test_bad_input_block_longer_than_corpus(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("just a few characters here\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        build_task("text_lm", path=str(small), block_size=500, cache_dir=str(tmp_path))
    assert "fewer than block_size=500" in str(info.value) and "lower block_size" in str(info.value)


@pytest.mark.parametrize("name", ["difference_sign", "addition_seq2seq"])
def test_bad_input_eval_split_left_empty_by_exclusion(name):
    # length 3 has 81 problems for both tasks; training takes them all, nothing is left to test
    with pytest.raises(DataError) as info:
        build_task(name, train_lengths=[3], test_lengths=[3], train_examples_per_length=1000)
    msg = str(info.value)
    assert "test split is empty" in msg and "exclude_train_from_eval=False" in msg
    # and asking for contamination explicitly is allowed
    task = build_task(name, train_lengths=[3], test_lengths=[3], train_examples_per_length=1000,
                      exclude_train_from_eval=False)
    assert len(task.dataset("test")) > 0


def test_bad_input_empty_validation_split(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("one line only, but long enough for a block of tokens\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        build_task("text_lm", path=str(path), block_size=8, val_fraction=0.001, cache_dir=str(tmp_path))
    assert "0 validation tokens" in str(info.value) and "raise val_fraction" in str(info.value)
    with pytest.raises(DataError) as info:
        build_task("text_lines_lm", path=str(path), val_fraction=0.2)
    assert "empty validation split" in str(info.value) and "raise val_fraction" in str(info.value)
    with pytest.raises(DataError) as info:
        build_task("addition_gpt", max_digits=1, num_examples=5, split_fractions=(0.8, 0.1, 0.1))
    assert "split is empty" in str(info.value) and "raise num_examples" in str(info.value)


@pytest.mark.parametrize("name", ["difference_sign", "addition_seq2seq", "addition_gpt"])
@pytest.mark.parametrize("base", [11, 16, 1])
def test_bad_input_base_beyond_the_ten_digit_vocabulary(name, base):
    with pytest.raises(ConfigError) as info:
        build_task(name, base=base)
    assert f"base={base}" in str(info.value) and "base must be 2..10" in str(info.value)


@pytest.mark.parametrize("operator,limit", [("+", 17), ("-", 17), ("*", 9)])
def test_bad_input_more_digits_than_int64_arithmetic_holds(operator, limit):
    with pytest.raises(ConfigError) as info:
        build_task("addition_gpt", operator=operator, max_digits=limit + 1)
    assert f"max_digits={limit + 1}" in str(info.value) and f"use max_digits <= {limit}" in str(info.value)
    build_task("addition_gpt", operator=operator, max_digits=limit, num_examples=30)  # the limit itself works
