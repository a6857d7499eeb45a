"""Decoding: cache equivalence, strategy equivalences, Hugging Face parity, bad input.

Every expectation is computed independently of ``scratchformer.generate``: a
naive argmax loop over full forward passes, teacher-forced log-probabilities,
Hugging Face's own ``generate`` and logits processors, or a rule written out.
"""

from __future__ import annotations

import gc
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from scratchformer.errors import ConfigError, DataError
from scratchformer.generate import (
    GenerationConfig,
    apply_repetition_penalty,
    ban_repeated_ngrams,
    best_of_n,
    generate,
    stream,
    top_k_filter,
    top_p_filter,
)
from scratchformer.models import GPT, EncoderDecoder, EncoderDecoderConfig, GPTConfig
from scratchformer.models.fast_decode import DecodeStep
from scratchformer.nn import ACTIVATIONS, POSITIONAL
from scratchformer.nn.linear import fast_linears, KernelTuner, onednn_available

torch.set_num_threads(2)

CACHEABLE = sorted(name for name, scheme in POSITIONAL.items() if scheme.supports_cache)  # from the registry
V = 23


def gpt(positional: str = "learned", seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, d_model=32, n_head=4, n_layer=2, max_len=48, positional=positional, init_std=0.3)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def encdec(positional: str = "learned", seed: int = 0, **kw) -> EncoderDecoder:
    torch.manual_seed(seed)
    cfg = EncoderDecoderConfig(
        src_vocab_size=17, tgt_vocab_size=V, d_model=32, n_head=4, n_layer=2, max_len=40, positional=positional,
        norm_first=True, init_std=0.3, **kw,
    )  # fmt: skip
    return EncoderDecoder(cfg).eval()


PLACES = dict(positional_options={"window": 1}, position_restart_token_id=3)
"""The adder's recipe on random tokens: place_rope with a window, source places restarting after id 3."""
ENCDEC_POSITIONS = [(name, {}) for name in CACHEABLE] + [("place_rope", PLACES)]


def prompt(B: int = 2, T: int = 5, seed: int = 1, vocab: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def naive_greedy(model: GPT, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Argmax of a full forward pass, appended one token at a time (no cache, no tricks)."""
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def teacher_forced_logprob(model: GPT, seq: torch.Tensor, T0: int) -> torch.Tensor:
    """(N,) sum over positions >= T0 of log p(seq[t] | seq[:t]) from one full forward pass."""
    with torch.no_grad():
        lp = F.log_softmax(model(seq).float(), dim=-1)  # (N, L, V)
    tok = lp[:, T0 - 1 : -1].gather(2, seq[:, T0:, None]).squeeze(2)
    return tok.sum(1)


# ---------------------------------------------------------------- cache equivalence
@pytest.mark.parametrize("positional", CACHEABLE)
def test_gpt_cache_matches_no_cache_greedy_and_beam(positional):
    model, ids = gpt(positional), prompt()
    kw = dict(max_new_tokens=12, return_dict_in_generate=True, output_logits=True, output_scores=True)
    a = generate(model, ids, use_cache=True, **kw)
    b = generate(model, ids, use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.sequences, naive_greedy(model, ids, 12))
    for x, y in zip(a.logits, b.logits, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    a = generate(model, ids, use_cache=True, num_beams=3, num_return_sequences=2, **kw)
    b = generate(model, ids, use_cache=False, num_beams=3, num_return_sequences=2, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.sequences_scores, b.sequences_scores, atol=1e-5, rtol=0)
    for x, y in zip(a.scores, b.scores, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional,options", ENCDEC_POSITIONS)
def test_encoder_decoder_cache_matches_no_cache(positional, options):
    model, src = encdec(positional, **options), prompt(2, 6, vocab=17)
    src[:, 2] = 3  # a restart token (a plain token for the schemes without place ids)
    mask = torch.ones_like(src)
    mask[1, 4:] = 0  # right padding in the source
    kw = dict(encoder_input_ids=src, encoder_attention_mask=mask, max_new_tokens=10)
    kw.update(return_dict_in_generate=True, output_logits=True)
    a, b = generate(model, use_cache=True, **kw), generate(model, use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert (a.sequences[:, 0] == model.config.start_token_id).all()
    for x, y in zip(a.logits, b.logits, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    # the decoder logits at each step equal one teacher-forced pass over the produced tokens
    with torch.no_grad():
        full = model(src, a.sequences[:, :-1], encoder_attention_mask=mask)  # (B, T, V)
    torch.testing.assert_close(torch.stack(a.logits, 1), full, atol=1e-5, rtol=0)
    a = generate(model, use_cache=True, num_beams=4, **kw)
    b = generate(model, use_cache=False, num_beams=4, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.sequences_scores, b.sequences_scores, atol=1e-5, rtol=0)


def test_sinusoidal_xl_decodes_without_cache_and_refuses_one():
    model, ids = gpt("sinusoidal_xl"), prompt()
    out = generate(model, ids, max_new_tokens=6)  # use_cache=None: falls back to full passes
    assert torch.equal(out, naive_greedy(model, ids, 6))
    with pytest.raises(ValueError, match="use_cache=False"):
        generate(model, ids, max_new_tokens=6, use_cache=True)


# ---------------------------------------------------------------- strategy equivalences
def test_single_beam_search_is_greedy():
    from scratchformer.generate import _beam_search, _prepare

    model, ids = gpt("rope"), prompt()
    cfg, setup = _prepare(model, ids, None, None, None, GenerationConfig(max_new_tokens=10, num_beams=1))
    with torch.no_grad():
        beam = _beam_search(setup())
    assert torch.equal(beam.sequences, naive_greedy(model, ids, 10))
    assert torch.equal(generate(model, ids, max_new_tokens=10, num_beams=1), naive_greedy(model, ids, 10))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_1_and_temperature_0_are_greedy(seed):
    model, ids = gpt(), prompt()
    greedy = naive_greedy(model, ids, 10)
    g = torch.Generator().manual_seed(seed)
    assert torch.equal(generate(model, ids, max_new_tokens=10, do_sample=True, top_k=1, generator=g), greedy)
    assert torch.equal(generate(model, ids, max_new_tokens=10, do_sample=True, temperature=0.0), greedy)


def test_sampling_is_reproducible_with_a_seeded_generator():
    model, ids = gpt(), prompt()
    kw = dict(max_new_tokens=20, do_sample=True, temperature=1.5, num_return_sequences=3)
    a = generate(model, ids, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, ids, generator=torch.Generator().manual_seed(7), **kw)
    c = generate(model, ids, generator=torch.Generator().manual_seed(8), **kw)
    assert a.shape == (6, 25) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :5], ids.repeat_interleave(3, 0))


def test_sampled_tokens_respect_top_k_and_top_p():
    model, ids = gpt(), prompt()
    out = generate(
        model, ids, max_new_tokens=15, do_sample=True, top_k=5, return_dict_in_generate=True, output_scores=True,
        output_logits=True, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    for t, (scores, logits) in enumerate(zip(out.scores, out.logits)):
        tok = out.sequences[:, 5 + t]
        top5 = logits.topk(5).indices
        assert (top5 == tok[:, None]).any(1).all()
        assert (torch.isfinite(scores).sum(1) == 5).all()
    out = generate(
        model, ids, max_new_tokens=15, do_sample=True, top_p=0.6, return_dict_in_generate=True, output_logits=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    for t, logits in enumerate(out.logits):
        probs = logits.softmax(-1)
        for row in range(probs.size(0)):
            tok = int(out.sequences[row, 5 + t])
            higher = probs[row][probs[row] > probs[row, tok]].sum()
            assert higher < 0.6  # the token lies inside the nucleus


def test_temperature_sharpens_the_sampled_distribution():
    model, ids = gpt(), prompt(1, 5)
    with torch.no_grad():
        argmax = int(model(ids)[0, -1].argmax())
    firsts = {}
    for temp in (0.3, 3.0):
        out = generate(
            model, ids.expand(200, -1), max_new_tokens=1, do_sample=True, temperature=temp,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        firsts[temp] = (out[:, -1] == argmax).float().mean()
    assert firsts[0.3] > firsts[3.0]


# ---------------------------------------------------------------- processors (rules written out)
def test_repetition_penalty_divides_positive_and_multiplies_negative():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seq = torch.tensor([[0, 1, 1]])
    out = apply_repetition_penalty(seq, scores, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, 3.0]]))


def test_no_repeat_ngram_bans_completions_of_seen_ngrams():
    seq = torch.tensor([[1, 2, 3, 1, 2]])
    out = ban_repeated_ngrams(seq, torch.zeros(1, 5), 3)  # "1 2" was followed by 3
    assert out[0, 3] == float("-inf") and torch.isfinite(out[0, [0, 1, 2, 4]]).all()
    assert torch.equal(ban_repeated_ngrams(seq[:, :1], torch.zeros(1, 5), 3), torch.zeros(1, 5))


def test_no_repeat_ngram_generation_never_repeats_an_ngram():
    model, ids = gpt(seed=3), prompt(3, 4)
    out = generate(model, ids, max_new_tokens=30, no_repeat_ngram_size=2)
    for row in out.tolist():
        grams = list(zip(row, row[1:]))
        assert len(grams) == len(set(grams))
    plain = generate(model, ids, max_new_tokens=30)
    assert any(len(set(zip(r, r[1:]))) < len(r) - 1 for r in plain.tolist())  # the ban did something


def test_filters_match_hugging_face_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 30, generator=g) * 3
    seq = torch.randint(0, 30, (4, 7), generator=g)
    for k in (1, 3, 29):
        assert torch.equal(top_k_filter(scores, k), TopKLogitsWarper(k)(seq, scores))
    for p in (0.1, 0.5, 0.9, 1.0):
        assert torch.equal(top_p_filter(scores, p), TopPLogitsWarper(p)(seq, scores))
    assert torch.equal(apply_repetition_penalty(seq, scores, 1.3), RepetitionPenaltyLogitsProcessor(1.3)(seq, scores.clone()))
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.2)
    from scratchformer.generate import process_scores

    expected = scores.clone()
    for proc in (RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)):
        expected = proc(seq, expected)
    assert torch.equal(process_scores(cfg, seq, scores), expected)


# ---------------------------------------------------------------- EOS, padding, batching
def test_rows_stop_at_eos_and_are_padded_after():
    model, ids = gpt(seed=2), prompt(4, 3)
    free = naive_greedy(model, ids, 15)[:, 3:]
    eos = Counter(free.flatten().tolist()).most_common(1)[0][0]
    out = generate(model, ids, max_new_tokens=15, eos_token_id=eos, pad_token_id=V - 1)
    for r, row in enumerate(out[:, 3:].tolist()):
        ref = free[r].tolist()
        if eos in ref:
            k = ref.index(eos)
            assert row[: k + 1] == ref[: k + 1] and all(t == V - 1 for t in row[k + 1 :])
        else:
            assert row == ref[: len(row)]
    done = [eos in r for r in free.tolist()]
    if all(done):  # stops as soon as every row has finished
        assert out.size(1) == 3 + max(r.tolist().index(eos) + 1 for r in free)


@pytest.mark.parametrize("positional", CACHEABLE)
def test_left_padded_batch_equals_each_row_alone(positional):
    model = gpt(positional)
    rows = [prompt(1, n, seed=n)[0] for n in (3, 6, 4)]
    T = 6
    ids = torch.full((3, T), 0)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    for use_cache in (True, False):
        out = generate(model, ids, attention_mask=mask, max_new_tokens=8, use_cache=use_cache)
        for i, r in enumerate(rows):
            alone = generate(model, r[None], max_new_tokens=8)
            assert torch.equal(out[i, T:], alone[0, len(r) :]), (positional, use_cache, i)


@pytest.mark.parametrize("positional,options", [("learned", {}), ("place_rope", PLACES)])
def test_encoder_padding_does_not_change_the_output(positional, options):
    model = encdec(positional, **options)
    src = prompt(1, 5, vocab=17)
    src[0, 2] = 3
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    kw = dict(max_new_tokens=8, return_dict_in_generate=True, output_logits=True)
    a = generate(model, encoder_input_ids=src, **kw)
    b = generate(model, encoder_input_ids=padded, encoder_attention_mask=mask, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- beam search
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beam_scores_are_length_normalised_logprobs_in_order(length_penalty):
    model, ids = gpt(seed=4), prompt(2, 4)
    free = naive_greedy(model, ids, 10)[:, 4:]
    eos = Counter(free.flatten().tolist()).most_common(1)[0][0]
    out = generate(
        model, ids, max_new_tokens=10, num_beams=4, num_return_sequences=4, eos_token_id=eos, pad_token_id=V - 1,
        length_penalty=length_penalty, return_dict_in_generate=True,
    )  # fmt: skip
    scores = out.sequences_scores.view(2, 4)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    for i, seq in enumerate(out.sequences):
        new = seq[4:].tolist()
        n = new.index(eos) + 1 if eos in new else len(new)
        lp = teacher_forced_logprob(model, seq[None, : 4 + n], 4)
        assert math.isclose(float(out.sequences_scores[i]), float(lp) / n**length_penalty, abs_tol=1e-4)


def test_beam_search_finds_at_least_the_greedy_score():
    model, ids = gpt(seed=5), prompt(3, 4)
    greedy = naive_greedy(model, ids, 8)
    beam = generate(model, ids, max_new_tokens=8, num_beams=5, length_penalty=0.0)
    assert (teacher_forced_logprob(model, beam, 4) >= teacher_forced_logprob(model, greedy, 4) - 1e-5).all()


# ---------------------------------------------------------------- Hugging Face parity
@pytest.fixture(scope="module")
def hf_pair():
    transformers = pytest.importorskip("transformers")
    from scratchformer.interop.gpt2 import gpt2_from_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    return hf, gpt2_from_hf(hf)


def _hf_generate(hf, ids, **kw):
    with torch.no_grad():
        return hf.generate(ids, **kw)


def test_hf_parity_greedy_and_beam(hf_pair):
    hf, ours = hf_pair
    ids = prompt(3, 5, vocab=50)
    plain = dict(max_new_tokens=20, pad_token_id=49, attention_mask=torch.ones_like(ids))
    greedy = generate(ours, ids, max_new_tokens=20)
    assert torch.equal(greedy, _hf_generate(hf, ids, do_sample=False, eos_token_id=None, **plain))
    eos = Counter(greedy[:, 5:].flatten().tolist()).most_common(1)[0][0]  # a token that does occur
    assert torch.equal(
        generate(ours, ids, max_new_tokens=20, eos_token_id=eos, pad_token_id=49),
        _hf_generate(hf, ids, do_sample=False, eos_token_id=eos, **plain),
    )
    for lp, es in [(1.0, False), (0.0, False), (2.0, False), (0.5, True), (1.5, "never"), (-1.0, False)]:
        kw = dict(num_beams=4, eos_token_id=eos, length_penalty=lp, early_stopping=es, num_return_sequences=2)
        theirs = _hf_generate(hf, ids, do_sample=False, output_scores=True, return_dict_in_generate=True, **kw, **plain)
        mine = generate(ours, ids, max_new_tokens=20, pad_token_id=49, return_dict_in_generate=True, **kw)
        assert torch.equal(mine.sequences, theirs.sequences), (lp, es)
        torch.testing.assert_close(mine.sequences_scores, theirs.sequences_scores, atol=1e-5, rtol=0)
    nothing = dict(num_beams=4, eos_token_id=None)
    assert torch.equal(generate(ours, ids, max_new_tokens=20, **nothing), _hf_generate(hf, ids, do_sample=False, **nothing, **plain))


@pytest.mark.parametrize("kernel", [None, "row", "copy", "onednn", "torch"])
def test_hf_parity_batch1_greedy_with_wide_weights(monkeypatch, kernel):
    """Batch-1 greedy decoding with wide weights (n_embd 256, and a vocabulary of 600 for a head
    of 153,600 numbers) gives Hugging Face's tokens, whichever kernel the step's matmuls take
    (None: measured)."""
    transformers = pytest.importorskip("transformers")
    import scratchformer.generate as G
    from scratchformer.interop.gpt2 import gpt2_from_hf

    if kernel == "onednn" and not onednn_available():
        pytest.skip("this PyTorch has no oneDNN linear kernel")

    class Forced(DecodeStep):  # a decoding step plugged into generate's seam
        def __init__(self, model):
            super().__init__(model, force=kernel)

    monkeypatch.setattr(G, "DECODE_STEPS", (Forced,))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=600, n_positions=64, n_embd=256, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ours = gpt2_from_hf(hf).eval()
    for seed in range(3):
        ids = prompt(1, 6, seed=seed, vocab=600)
        theirs = _hf_generate(hf, ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0,
                              attention_mask=torch.ones_like(ids))  # fmt: skip
        assert torch.equal(generate(ours, ids, max_new_tokens=24), theirs)


def test_hf_parity_left_padded_batch_and_processors(hf_pair):
    hf, ours = hf_pair
    ids = prompt(3, 7, vocab=50)
    mask = torch.ones_like(ids)
    mask[0, :3] = mask[1, :1] = 0
    ids[mask == 0] = 49
    kw = dict(max_new_tokens=15, pad_token_id=49)
    theirs = _hf_generate(hf, ids, attention_mask=mask, do_sample=False, eos_token_id=None, **kw)
    assert torch.equal(generate(ours, ids, attention_mask=mask, **kw), theirs)
    extra = dict(repetition_penalty=1.5, no_repeat_ngram_size=2)
    theirs = _hf_generate(hf, ids, attention_mask=mask, do_sample=False, eos_token_id=None, **extra, **kw)
    assert torch.equal(generate(ours, ids, attention_mask=mask, **extra, **kw), theirs)
    theirs = _hf_generate(hf, ids, attention_mask=mask, do_sample=False, eos_token_id=None, num_beams=3, **kw)
    assert torch.equal(generate(ours, ids, attention_mask=mask, num_beams=3, **kw), theirs)


# ---------------------------------------------------------------- streaming and best-of-n
def test_stream_yields_the_generated_columns_in_order():
    model, ids = gpt(), prompt()
    kw = dict(max_new_tokens=9, do_sample=True, top_k=5)
    full = generate(model, ids, generator=torch.Generator().manual_seed(3), **kw)
    it = stream(model, ids, generator=torch.Generator().manual_seed(3), **kw)
    cols = list(it)
    assert len(cols) == 9 and torch.equal(torch.stack(cols, 1), full[:, 5:])
    assert torch.equal(it.sequences, full)
    assert torch.is_grad_enabled()  # inference mode does not leak out of the iterator
    full[:, 0] = 0  # outputs are ordinary tensors: editable in place
    cols[0] += 1

    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(("put", value.clone()))

        def end(self):
            self.calls.append(("end", None))

    rec = Recorder()
    out = generate(model, ids, max_new_tokens=4, streamer=rec)
    assert torch.equal(rec.calls[0][1], ids) and rec.calls[-1][0] == "end"
    assert torch.equal(torch.stack([v for _, v in rec.calls[1:-1]], 1), out[:, 5:])


def test_best_of_n_picks_the_best_by_logprob_and_by_a_scorer():
    model, ids = gpt(), prompt(2, 4)
    out = best_of_n(model, ids, 6, max_new_tokens=6, generator=torch.Generator().manual_seed(0), temperature=2.0)
    assert out.candidates.shape == (2, 6, 10)
    for b in range(2):
        lp = teacher_forced_logprob(model, out.candidates[b], 4)
        torch.testing.assert_close(out.logprobs[b], lp, atol=1e-4, rtol=0)
        assert torch.equal(out.sequences[b], out.candidates[b, int(lp.argmax())])

    def count_of_seven(prompt_ids, new_ids):
        return float(new_ids.count(7))

    out = best_of_n(model, ids, 6, scorer=count_of_seven, max_new_tokens=6, temperature=2.0,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    for b in range(2):
        counts = [(c[4:] == 7).sum().item() for c in out.candidates[b]]
        assert (out.sequences[b][4:] == 7).sum().item() == max(counts)


# ---------------------------------------------------------------- bad input, before any work
class CountingGPT(GPT):
    calls = 0

    def forward(self, *a, **k):
        CountingGPT.calls += 1
        return super().forward(*a, **k)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(max_new_tokens=40), ConfigError, ["max_len=48", "max_new_tokens=40"]),
        (dict(max_new_tokens=-1), ConfigError, ["max_new_tokens"]),
        (dict(top_p=0.0, do_sample=True), ConfigError, ["top_p"]),
        (dict(top_p=1.5, do_sample=True), ConfigError, ["top_p"]),
        (dict(num_beams=0), ConfigError, ["num_beams"]),
        (dict(num_beams=2, num_return_sequences=3), ConfigError, ["num_return_sequences", "num_beams"]),
        (dict(num_return_sequences=2), ConfigError, ["num_return_sequences"]),
        (dict(temperature=-1.0), ConfigError, ["temperature"]),
        (dict(repetition_penalty=0.0), ConfigError, ["repetition_penalty"]),
        (dict(eos_token_id=V), ConfigError, ["eos_token_id"]),
        (dict(max_new_token=5), ConfigError, ["max_new_token", "did you mean 'max_new_tokens'"]),
        (dict(early_stopping="sometimes"), ConfigError, ["early_stopping"]),
    ],
)
def test_bad_options_are_named_before_any_work(kwargs, error, words):
    torch.manual_seed(0)
    model = CountingGPT(GPTConfig(vocab_size=V, d_model=16, n_head=2, n_layer=1, max_len=48)).eval()
    CountingGPT.calls = 0
    with pytest.raises(error) as info:
        generate(model, prompt(2, 10), **kwargs)
    for w in words:
        assert w in str(info.value)
    assert CountingGPT.calls == 0


def test_bad_inputs_are_named():
    model = gpt()
    with pytest.raises(DataError, match="token id 99"):
        generate(model, torch.tensor([[1, 99]]))
    with pytest.raises(ConfigError, match="max_len=48"):
        generate(model, torch.zeros(1, 49, dtype=torch.long), max_new_tokens=0)
    with pytest.raises(DataError, match="left padding"):
        generate(model, torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(DataError, match="encoder_input_ids"):
        generate(encdec(), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ConfigError, match="beam"):
        stream(model, prompt(), num_beams=2)


def test_zero_new_tokens_returns_the_prompt():
    model, ids = gpt(), prompt()
    assert torch.equal(generate(model, ids, max_new_tokens=0), ids)
    assert torch.equal(generate(model, ids, max_new_tokens=0, num_beams=2), ids)


# ---------------------------------------------------------------- the lean decode step (models/fast_decode.py)
def _padded_batch(model: GPT, lengths=(3, 6, 4), T: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :], mask[i, T - n :] = prompt(1, n, seed=n)[0], 1
    return ids, mask


def _step_vs_forward(model: GPT, ids: torch.Tensor, mask: torch.Tensor | None, steps: int = 6,
                     force: str | None = None) -> None:
    """Feed the prompt, then the same tokens one at a time, to forward (cache a)
    and to the fast step (cache b; its kernels measured, or ``force``d): the last position's
    logits must agree to 1e-5 of their scale at every call (the issue's tolerance), and so
    must a full no-cache pass."""
    assert DecodeStep.supports(model) is None, "this configuration should be covered by DecodeStep"
    step = DecodeStep(model, force=force)
    B, T0 = ids.shape
    full_mask = None if mask is None else torch.cat([mask, mask.new_ones(B, steps)], dim=1)
    positions = None if mask is None else (full_mask.cumsum(-1) - 1).clamp(min=0)
    seq = ids
    with torch.no_grad():
        a, b = model.new_cache(), model.new_cache(capacity=T0 + 2)  # b must also grow past its capacity
        p0 = None if mask is None else positions[:, :T0]
        expected = model(ids, attention_mask=mask, position_ids=p0, cache=a)[:, -1]
        # the whole prompt at once: the head then multiplies one row instead of T0 (another gemm
        # blocking), so allow float rounding relative to the logits' scale
        assert (step(ids, b, mask, p0) - expected).abs().max() <= 1e-5 * expected.abs().max().clamp(min=1.0)
        for t in range(steps):
            L = T0 + t
            tok = torch.randint(0, V, (B, 1), generator=torch.Generator().manual_seed(t))
            m = None if full_mask is None else full_mask[:, : L + 1]
            p = None if positions is None else positions[:, L : L + 1]
            expected = model(tok, attention_mask=m, position_ids=p, cache=a)[:, -1]  # (B, V)
            got = step(tok, b, m, p)
            # the step multiplies 2-D rows, forward 3-D batches (another blocking; and under another
            # linear backend another kernel): float rounding relative to the logits' scale
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max().clamp(min=1.0)
            seq = torch.cat([seq, tok], dim=1)
            full = model(seq, attention_mask=m, position_ids=None if positions is None else positions[:, : L + 1])
            # cache vs no cache differ only in float summation order: relative to the logits' scale
            assert (got - full[:, -1]).abs().max() <= 1e-5 * full.abs().max().clamp(min=1.0)
        assert a.length == b.length == T0 + steps


@pytest.mark.parametrize("positional", CACHEABLE)
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_decode_step_equals_forward_with_cache(positional, norm_first, activation):
    model = gpt(positional, norm_first=norm_first, activation=activation)
    _step_vs_forward(model, prompt(2, 5), None)


@pytest.mark.parametrize("positional", CACHEABLE)
def test_decode_step_equals_forward_on_a_left_padded_batch(positional):
    model = gpt(positional)
    ids, mask = _padded_batch(model)
    _step_vs_forward(model, ids, mask)


@pytest.mark.parametrize(
    "options",
    [
        dict(norm="rmsnorm"),
        dict(norm="layernorm_tutorial", norm_first=False),
        dict(norm="none"),
        dict(use_residual=False),
        dict(use_mlp=False),
        dict(bias=False, tie_embeddings=False),
        dict(attn_impl="reference", positional="alibi"),
        dict(scale_embeddings=True, positional="sinusoidal"),
        dict(positional="learned", positional_options={"scale": 0.125}),
        dict(norm_eps=1e-3, n_layer=3, n_head=2),
        # the GPT tutorial's adder: post-norm with a final norm, no attention bias, a head bias, Xavier
        dict(norm_first=False, final_norm=True, attn_bias=False, lm_head_bias=True, tie_embeddings=False,
             init="xavier", activation="relu"),
    ],
)
def test_decode_step_equals_forward_for_other_components(options):
    _step_vs_forward(gpt(**options), prompt(2, 4), None)
    ids, mask = _padded_batch(gpt(**options))
    _step_vs_forward(gpt(**options), ids, mask)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN linear kernel")
@pytest.mark.parametrize("positional", ["learned", "rope"])
@pytest.mark.parametrize("activation", ["gelu_tanh", "swiglu"])
def test_decode_step_through_onednn_equals_forward(positional, activation):
    """The step's matmuls through oneDNN (every one, whatever its size) against forward through
    oneDNN and through torch's kernel."""
    model = gpt(positional, activation=activation)
    plain = gpt(positional, activation=activation)  # forward through torch's kernel
    fast_linears(model, KernelTuner(force="onednn"))  # forward through oneDNN
    _step_vs_forward(model, prompt(2, 5), None, force="onednn")
    ids, mask = _padded_batch(model)
    _step_vs_forward(model, ids, mask, force="onednn")
    ids = prompt(2, 5)
    with torch.no_grad():
        a, b = plain.new_cache(), model.new_cache()
        expected = plain(ids, cache=a)[:, -1]
        got = DecodeStep(model, force="onednn")(ids, b)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max().clamp(min=1.0)


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    """Replace ``module.name`` by a wrapper that counts its calls in the returned [count]."""
    calls, real = [0], getattr(module, name)

    def counted(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN linear kernel")
def test_decode_step_counts_on_onednn_only_without_gradients(monkeypatch):
    import scratchformer.models.fast_decode as fd

    calls = _count_calls(monkeypatch, fd, "onednn_linear")
    model = gpt()
    with torch.no_grad():
        DecodeStep(model, force="onednn")(prompt(2, 1), model.new_cache())
    assert calls[0] > 0  # oneDNN's kernel when no gradient is wanted
    calls[0] = 0
    DecodeStep(model, force="onednn")(prompt(2, 1), model.new_cache()).sum().backward()  # with gradients: torch's
    assert calls[0] == 0
    assert all(p.grad is not None for p in model.parameters())  # every parameter reached by backward
    # a step built without gradients (its (in, out) copies made under no_grad), then used with them
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        step = DecodeStep(model, force="copy")
        step(prompt(2, 1), model.new_cache())  # its kernels (on (in, out) copies) chosen for the no-gradient case first
    step(prompt(2, 1), model.new_cache()).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("positional", CACHEABLE)
@pytest.mark.parametrize("stepper", ["decode_step", "forward"])
def test_gradients_through_cached_steps_equal_the_no_cache_gradients(positional, stepper):
    """A prompt through forward with the cache, then three one-token steps, all with autograd on:
    the gradients of a loss on the four last-position logits equal those of one no-cache forward
    (the cache extends out of place while autograd records, so nothing saved is overwritten). The
    cache's capacity is below the final length, so it also grows. (With ALiBi, SDPA's float mask
    path saves no cache views, so those two cases would pass even with in-place appends.)"""
    model, ids = gpt(positional), prompt(2, 7)
    params = [p for p in model.parameters()]

    def loss_of(logits):  # (B, 4, V) -> a scalar that depends on every logit
        return (logits.logsumexp(-1) * torch.arange(1.0, 5.0)).sum()

    expected = torch.autograd.grad(loss_of(model(ids)[:, 3:]), params)
    cache = model.new_cache(capacity=5)
    logits = [model(ids[:, :4], cache=cache)[:, -1]]
    for t in range(4, 7):
        tok = ids[:, t : t + 1]
        logits.append(DecodeStep(model)(tok, cache) if stepper == "decode_step" else model(tok, cache=cache)[:, -1])
    got = torch.autograd.grad(loss_of(torch.stack(logits, 1)), params)
    for g, e in zip(got, expected):
        assert (g - e).abs().max() <= 1e-5 * e.abs().max().clamp(min=1.0)


def test_kv_cache_switches_between_in_place_and_recorded_appends():
    """Appends with autograd recording make new storage and keep every cached position; a
    no-grad append after them grows back to the capacity and writes in place again; a static
    (cross-attention) cache extended while recording keeps its keys."""
    from scratchformer.nn.attention import KVCache

    def kv(T, grad=False):
        t = torch.randn(1, 2, 2, T, 3)
        return t.requires_grad_() if grad else t

    cache, parts = KVCache(capacity=8), []
    for T, grad in ((2, False), (1, True), (2, True), (1, False), (1, False)):
        parts.append(kv(T, grad))
        with torch.set_grad_enabled(grad):
            k, v = cache.append_kv(parts[-1])
        whole = torch.cat(parts, dim=3)
        assert torch.equal(k, whole[:, 0]) and torch.equal(v, whole[:, 1])
    assert cache.kv.size(3) == 8  # back to the capacity once nothing records
    ptr = cache.kv.data_ptr()
    with torch.no_grad():
        cache.append_kv(kv(1))
    assert cache.kv.data_ptr() == ptr  # in place again
    static = KVCache()
    k0, v0 = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3)
    static.set_static(k0, v0)
    k, v = static.update(torch.randn(1, 2, 1, 3, requires_grad=True), torch.randn(1, 2, 1, 3))
    assert k.shape == (1, 2, 5, 3) and torch.equal(k[:, :, :4], k0) and torch.equal(v[:, :, :4], v0)


def test_decode_step_refuses_what_it_cannot_reproduce():
    model = gpt(dropout=0.1).train()
    assert "dropout" in DecodeStep.supports(model)
    with pytest.raises(ValueError, match="dropout"):
        DecodeStep(model)
    assert DecodeStep.supports(gpt(dropout=0.1).eval()) is None  # dropout is off in eval mode
    assert DecodeStep.supports(gpt(dropout=0.0).train()) is None  # and a no-op at p=0
    hooked = gpt()
    hooked.decoder.blocks[1].mlp.register_forward_hook(lambda m, i, o: o)
    assert "hooks" in DecodeStep.supports(hooked)  # the step would skip the hook
    assert "cache" in DecodeStep.supports(gpt("sinusoidal_xl"))
    assert "not a GPT" in DecodeStep.supports(encdec())

    class Sub(GPT):  # a forward of its own: the step would not run it
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs) * 2

    sub = Sub(gpt().config)
    assert "not a GPT with GPT's forward" in DecodeStep.supports(sub)
    assert torch.equal(generate(sub, prompt(), max_new_tokens=4),
                       generate(sub, prompt(), max_new_tokens=4, use_cache=False))
    with pytest.raises(ValueError, match="force"):
        DecodeStep(gpt(), force="mkl")


def test_decode_step_checks_shapes_and_generate_falls_back_to_forward_with_hooks():
    model, ids = gpt(), prompt(2, 4)
    with torch.no_grad():
        cache = model.new_cache()
        model(ids, cache=cache)
        with pytest.raises(ValueError, match=r"\(batch, new tokens\)"):
            DecodeStep(model)(torch.zeros(2, dtype=torch.long), cache)
        assert cache.length == 4  # nothing was appended by the failed call
        expected = model(torch.cat([ids, ids[:, :1]], 1))[:, -1]
        torch.testing.assert_close(DecodeStep(model)(ids[:, :1], cache), expected, atol=1e-5, rtol=0)
    with pytest.raises(DataError, match=f"token id {V}"):
        generate(model, torch.full((2, 1), V), max_new_tokens=2)
    want = generate(model, ids, max_new_tokens=3)
    # a hook rules the lean step out: generate runs forward, hook included, with the same tokens
    calls = []
    model.lm_head.register_forward_hook(lambda m, i, o: calls.append(1))
    assert torch.equal(generate(model, ids, max_new_tokens=3), want)
    assert len(calls) == 3  # the prompt, then two steps


@pytest.mark.parametrize("options", [dict(), dict(positional="rope", activation="swiglu", norm_first=False)])
def test_generate_decodes_with_the_fast_step_and_the_same_tokens(monkeypatch, options):
    model, ids = gpt(**options), prompt(2, 5)
    calls = []
    real = DecodeStep.__call__

    def counting(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(DecodeStep, "__call__", counting)
    out = generate(model, ids, max_new_tokens=10)
    assert len(calls) == 10  # the prompt, then every step
    assert torch.equal(out, naive_greedy(model, ids, 10))
    beams = generate(model, ids, max_new_tokens=6, num_beams=3)
    assert torch.equal(beams, generate(model, ids, max_new_tokens=6, num_beams=3, use_cache=False))


def test_kv_cache_preallocates_to_its_capacity_and_grows_past_it():
    from scratchformer.nn.attention import KVCache

    cache = KVCache(capacity=5)
    k = torch.randn(2, 3, 4, 8)
    keys, _ = cache.update(k[:, :, :2], k[:, :, :2])
    storage = cache.k
    assert storage.size(2) == 5  # allocated once, at the final length
    for t in range(2, 4):
        keys, values = cache.update(k[:, :, t : t + 1], -k[:, :, t : t + 1])
        assert cache.k is storage
    assert torch.equal(keys, k) and torch.equal(values[:, :, 2:], -k[:, :, 2:])
    cache.update(k, k)  # 8 > capacity: grows, keeping what was cached
    assert cache.length == 8 and torch.equal(cache.keys_values()[0][:, :, :4], k)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="capacity"):
            KVCache(capacity=bad)


def test_kv_cache_crop_forgets_the_positions_after_it():
    """Cropped and re-appended equals appended once (storage kept); a model cache crops every layer."""
    from scratchformer.models.stack import ModelCache
    from scratchformer.nn.attention import KVCache

    k = torch.randn(2, 3, 6, 8)
    once, cropped = KVCache(capacity=6), KVCache(capacity=6)
    once.update(k, -k)
    cropped.update(k[:, :, :4], -k[:, :, :4])
    storage = cropped.k
    cropped.crop(2)
    assert cropped.length == 2
    keys, values = cropped.update(k[:, :, 2:], -k[:, :, 2:])
    assert cropped.k is storage
    assert torch.equal(keys, once.keys_values()[0]) and torch.equal(values, once.keys_values()[1])
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=f"length={bad}.*holds 6"):
            cropped.crop(bad)
    both = ModelCache([KVCache(), KVCache()])
    for c in both.self_attn:
        c.update(k, k)
    both.crop(1)
    assert both.length == 1 and [c.length for c in both.self_attn] == [1, 1]


def _timings(monkeypatch, step_winner: str, product_winner: str = "copy") -> list[str]:
    """Make every measurement say: ``product_winner`` (where offered) is the fastest product alone,
    and ``step_winner`` ("measured" or "torch") the fastest whole step; returns ["step"] per step trial."""
    import scratchformer.nn.linear as lin

    measured = []

    def fake(candidates, **_):
        for run in candidates.values():
            run()  # every candidate still runs (the trial steps too)
        if "measured" in candidates:
            measured.append("step")
            return {name: 1.0 if name == step_winner else 2.0 for name in candidates}
        return {name: 1.0 if name == product_winner else 2.0 for name in candidates}

    monkeypatch.setattr(lin, "time_candidates", fake)
    return measured


@pytest.mark.parametrize("winner", ["measured", "torch"])
def test_decode_step_keeps_the_measured_kernels_only_if_the_whole_step_is_faster(monkeypatch, winner):
    """Products that win alone (here: every one on an (in, out) copy) are kept only if a whole step
    with them beats F.linear everywhere; the trial steps leave the cache as one real call does, and
    the logits equal forward's. A prompt (several tokens per row) never copies the weights."""
    from scratchformer.nn.linear import KernelTuner

    steps = _timings(monkeypatch, winner)
    model = gpt()
    step = DecodeStep(model, tuner=KernelTuner())
    ids = prompt(2, 5)
    with torch.no_grad():
        a, b = model.new_cache(), model.new_cache(capacity=9)
        torch.testing.assert_close(step(ids, b), model(ids, cache=a)[:, -1], atol=1e-5, rtol=0)
        assert not step.copies and not steps  # a prompt: F.linear or oneDNN, nothing to compare
        for t in range(3):
            tok = prompt(2, 1, seed=t)
            torch.testing.assert_close(step(tok, b), model(tok, cache=a)[:, -1], atol=1e-5, rtol=0)
            assert b.length == a.length == 6 + t
        assert steps == ["step"]  # measured once, at the first one-token call
        assert bool(step.copies) == (winner == "measured")
        kinds = step.tuner.choices
        assert [v for k, v in kinds.items() if k.startswith("decode-step")] == [winner]


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN linear kernel")
def test_a_prompt_takes_the_products_choices_without_a_whole_step_trial(monkeypatch):
    """A prompt runs once: its products take what measured fastest alone (here oneDNN), with no
    whole-step trial (it would run the prompt several more times) and no weight copies."""
    import scratchformer.models.fast_decode as fd
    from scratchformer.nn.linear import KernelTuner

    steps = _timings(monkeypatch, "torch", product_winner="onednn")
    onednn = _count_calls(monkeypatch, fd, "onednn_linear")
    model, ids = gpt(), prompt(2, 5)
    step = DecodeStep(model, tuner=KernelTuner())
    with torch.no_grad():
        torch.testing.assert_close(step(ids, model.new_cache()), model(ids)[:, -1], atol=1e-5, rtol=0)
        onednn[0] = 0
        step(ids, model.new_cache())  # the same shape again: its plan, no measuring
    assert steps == [] and not step.copies
    assert onednn[0] == 4 * 2 + 1  # one run: 4 products per block, 2 blocks, the head


def test_a_forced_step_keeps_its_plans_apart_by_batch_and_length():
    """B=1, T=4 and B=4, T=1 have the same row count; each gets its own plan (the head's rows differ)."""
    model = gpt()
    step = DecodeStep(model, force="row")
    with torch.no_grad():
        one = prompt(1, 4)
        torch.testing.assert_close(step(one, model.new_cache()), model(one)[:, -1], atol=1e-5, rtol=0)
        four = prompt(4, 1, seed=3)
        torch.testing.assert_close(step(four, model.new_cache()), model(four)[:, -1], atol=1e-5, rtol=0)


def test_a_decode_step_takes_torch_for_a_choice_it_does_not_know(monkeypatch):
    """A recorded name that is no kernel of the step (a hand-edited kernel cache) means F.linear."""
    import scratchformer.models.fast_decode as fd
    from scratchformer.nn.linear import KernelTuner

    monkeypatch.setattr("scratchformer.nn.linear.time_candidates", lambda *a, **k: pytest.fail("measured"))
    calls = _count_calls(monkeypatch, fd, "row_linear")
    model, ids = gpt(), prompt(1, 1)
    step = DecodeStep(model, tuner=KernelTuner())
    x = torch.zeros(1, model.config.d_model)
    for lin in (model.decoder.blocks[0].attn.in_proj, model.decoder.blocks[0].attn.out_proj,
                model.decoder.blocks[0].mlp.up, model.decoder.blocks[0].mlp.down, model.lm_head):
        w = lin.weight
        step.tuner.choices[step.tuner.shape_key("decode", x.new_zeros(1, w.size(1)), w, lin.bias, False)] = "mkl"
    with torch.no_grad():
        torch.testing.assert_close(step(ids, model.new_cache()), model(ids)[:, -1], atol=1e-5, rtol=0)
    assert calls[0] == 0 and not step.copies


def test_cropping_a_cache_autograd_saved_never_writes_over_what_it_saved():
    from scratchformer.models.stack import ModelCache
    from scratchformer.nn.attention import KVCache

    cache = KVCache(capacity=8)
    k = torch.randn(1, 2, 3, 4, requires_grad=True)
    keys, _ = cache.update(k, k)  # tracked: new storage, which the graph may have saved
    saved = keys.detach().clone()
    cache.crop(1)
    with torch.no_grad():
        cache.update(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    assert torch.equal(keys.detach(), saved) and cache.length == 3
    both, four = ModelCache([KVCache(), KVCache()]), torch.randn(1, 2, 4, 4)
    both.self_attn[0].update(four, four)
    both.self_attn[1].update(four[:, :, :2], four[:, :, :2])
    with pytest.raises(ValueError, match="length=3.*holds 2"):
        both.crop(3)  # layer 0 could, layer 1 cannot: neither changes
    assert [c.length for c in both.self_attn] == [4, 2]


def test_decode_step_follows_the_model_dtype():
    model, ids = gpt().to(torch.bfloat16), prompt(2, 5)
    with torch.no_grad():
        a, b = model.new_cache(), model.new_cache()
        model(ids, cache=a)
        model(ids, cache=b)
        step = DecodeStep(model)  # built after .to(): it reads the bfloat16 weights
        for t in range(4):
            tok = prompt(2, 1, seed=t)
            got = step(tok, b)
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got, model(tok, cache=a)[:, -1])  # bfloat16 tolerances


def test_kv_cache_append_kv_writes_keys_and_values_in_one_buffer():
    from scratchformer.nn.attention import KVCache

    torch.manual_seed(0)
    B, H, D = 2, 3, 4
    qkv = torch.randn(B, 9, 3, H, D).permute(0, 2, 3, 1, 4)  # (B, 3, H, 9, D), strided like a fused projection
    k_ref, v_ref = qkv[:, 1], qkv[:, 2]
    fused, split = KVCache(capacity=4), KVCache(capacity=4)
    keys, values = fused.append_kv(qkv[:, 1:, :, :2])  # a 2-token prompt
    split.update(k_ref[:, :, :2], v_ref[:, :, :2])
    storage = fused.kv
    assert storage.shape == (B, 2, H, 4, D)  # allocated once, at the capacity
    for t in range(2, 4):  # steps within the capacity write into the same buffer
        keys, values = fused.append_kv(qkv[:, 1:, :, t : t + 1])
        split.update(k_ref[:, :, t : t + 1], v_ref[:, :, t : t + 1])
        assert fused.kv is storage
    assert torch.equal(keys, k_ref[:, :, :4]) and torch.equal(values, v_ref[:, :, :4])
    # k and v are views of the one buffer, and update() writes through them
    assert fused.k.data_ptr() == storage[:, 0].data_ptr() and fused.v.data_ptr() == storage[:, 1].data_ptr()
    keys, values = fused.update(k_ref[:, :, 4:6], v_ref[:, :, 4:6])  # past the capacity: grows, keeping the rest
    keys, values = fused.append_kv(qkv[:, 1:, :, 6:])
    assert fused.length == 9 and fused.kv.size(3) >= 9
    assert torch.equal(keys, k_ref) and torch.equal(values, v_ref)
    assert torch.equal(fused.keys_values()[1], v_ref)
    fused.reorder(torch.tensor([1, 1]))  # beam search: both rows become row 1
    keys, values = fused.keys_values()
    assert torch.equal(keys, k_ref[[1, 1]]) and torch.equal(values, v_ref[[1, 1]])
    assert fused.k.data_ptr() == fused.kv[:, 0].data_ptr()  # the views follow the reordered buffer


def _wide_gpt() -> GPT:
    """A GPT whose weights are big enough that measuring may well choose row_linear."""
    return gpt(d_model=256, n_head=4, init_std=0.05)


def test_the_decode_steps_measurements_leave_the_global_rng_alone():
    from scratchformer.nn.linear import KernelTuner

    model = _wide_gpt()
    state = torch.get_rng_state()
    tuner = KernelTuner()
    with torch.no_grad():
        DecodeStep(model, tuner=tuner)(prompt(1, 1), model.new_cache())
    assert tuner.choices  # it did measure
    assert torch.equal(torch.get_rng_state(), state)


def test_decode_step_one_row_through_row_linear_equals_forward(monkeypatch):
    """Batch-1 steps forced to row_linear take it (counted), and their logits equal forward's;
    a batch of 2 cannot take it; measured choices (whatever they are) equal forward's too."""
    import scratchformer.models.fast_decode as fd

    calls = _count_calls(monkeypatch, fd, "row_linear")
    model = _wide_gpt()
    _step_vs_forward(model, prompt(1, 5), None, force="row")
    assert calls[0] > 0
    calls[0] = 0
    _step_vs_forward(model, prompt(2, 5), None, force="row")
    assert calls[0] == 0
    _step_vs_forward(model, prompt(1, 5), None, force="torch")
    assert calls[0] == 0  # "torch" means torch's kernels
    _step_vs_forward(model, prompt(1, 5), None)  # measured


def test_the_step_owns_its_weight_copies_and_generate_sees_every_weight_change():
    """Greedy tokens with the cache (steps on (in, out) copies) equal the no-cache ones after every
    kind of weight change: in place, new storage, a DLPack alias, new strides, a fused optimizer's
    step (which bumps no version counter). Each generate call builds its own step, whose copies
    go with it; importing the module installs no optimizer hook."""
    import weakref

    from torch.optim.optimizer import _global_optimizer_post_hooks

    import scratchformer.generate as G

    assert not _global_optimizer_post_hooks
    model = _wide_gpt()
    ids = prompt(1, 4)
    steps = []
    real = G._decode_step_for

    def forced(m):
        step = real(m)
        step.force = "row"  # every one-row product on a copy
        steps.append(weakref.ref(step))
        return step

    G_decode = pytest.MonkeyPatch()
    G_decode.setattr(G, "_decode_step_for", forced)
    try:
        def cached_equals_uncached():
            return torch.equal(generate(model, ids, max_new_tokens=12),
                               generate(model, ids, max_new_tokens=12, use_cache=False))

        assert cached_equals_uncached()
        w = model.decoder.blocks[0].attn.in_proj.weight
        with torch.no_grad():
            w.mul_(-1.5)  # in place: a new version
        assert cached_equals_uncached()
        w.data = torch.randn_like(w) * 0.05  # new storage, same version
        assert cached_equals_uncached()
        alias = torch.from_dlpack(w.detach())  # another storage over the same memory
        alias.mul_(-1.5)
        w.data = alias
        assert cached_equals_uncached()
        sq = model.decoder.blocks[0].attn.out_proj.weight
        sq.data = sq.data.t()  # same storage, offset and version; other strides
        assert cached_equals_uncached()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        model.train()
        data = prompt(4, 16, seed=2)
        model.loss(data, data).backward()
        opt.step()
        model.eval()
        assert cached_equals_uncached()
    finally:
        G_decode.undo()
    step = DecodeStep(model, force="row")
    with torch.no_grad():
        step(ids[:, :1], model.new_cache())  # one row: every matmul on an (in, out) copy
    weights = {id(p): p for p in model.parameters()}
    assert len(step.copies) == 4 * 2 + 1  # 4 matmuls per block, 2 blocks, the head
    assert all(torch.equal(c, weights[i].detach().t()) for i, c in step.copies.items())
    copy = weakref.ref(next(iter(step.copies.values())))
    del step
    gc.collect()
    assert copy() is None  # the copies went with their step
    assert steps and all(s() is None for s in steps)  # and generate kept none of its steps
    assert not _global_optimizer_post_hooks


# ---------------------------------------------------------------------- an encoder-decoder's bad inputs name the argument
def test_encoder_decoder_bad_inputs_name_the_argument():
    torch.manual_seed(0)
    model = EncoderDecoder(EncoderDecoderConfig(src_vocab_size=11, tgt_vocab_size=13, d_model=16, n_head=2, n_layer=1,
                                                max_len=12)).eval()  # fmt: skip
    with pytest.raises(DataError, match=r"encoder_input_ids.*token id 11"):
        generate(model, encoder_input_ids=torch.tensor([[1, 11]]))
    with pytest.raises(DataError, match=r"encoder_input_ids.*max_len=12"):
        generate(model, encoder_input_ids=torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, encoder_input_ids=torch.ones(1, 3, dtype=torch.long), max_new_tokens=12)
    for bad, name in [(dict(top_p=-0.5, do_sample=True), "top_p"), (dict(num_beams=1.5), "num_beams"),
                      (dict(max_new_tokens=-3), "max_new_tokens")]:  # fmt: skip
        with pytest.raises(ConfigError, match=name):
            generate(model, encoder_input_ids=torch.ones(1, 3, dtype=torch.long), **bad)
