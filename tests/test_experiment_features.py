"""Features the tutorials' experiments need: the decoder's causal switch,
place-value positions, label smoothing, the seq2seq adder's extra formats,
teacher-forced accuracy by length."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchformer.errors import ConfigError
from scratchformer.evaluate import evaluate_by_length, teacher_forced_by_length
from scratchformer.generate import generate
from scratchformer.models import EncoderDecoder, EncoderDecoderConfig
from scratchformer.tasks import build_task
from scratchformer import losses as L
from scratchformer.train.config import TrainConfig

torch.set_num_threads(2)
V = 13


def encdec(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(d_model=16, n_head=2, n_layer=2, max_len=40, init_std=0.3, src_vocab_size=V, tgt_vocab_size=V)
    return EncoderDecoder(EncoderDecoderConfig(**{**base, **kw})).eval()


def rand_ids(B, T, seed):
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the decoder's causal switch
@torch.no_grad()
@pytest.mark.parametrize("causal", [True, False])
def test_decoder_without_causal_mask_lets_the_future_change_the_past(causal):
    model = encdec(decoder_causal=causal)
    src, dec = rand_ids(2, 5, 1), rand_ids(2, 6, 2)
    changed = dec.clone()
    changed[:, -1] = (changed[:, -1] % (V - 1)) + 1  # another token at the last position only
    before, after = model(src, decoder_input_ids=dec), model(src, decoder_input_ids=changed)
    moved = (before[:, :-1] - after[:, :-1]).abs().max().item()
    assert (moved == 0.0) if causal else (moved > 1e-3)


@torch.no_grad()
def test_non_causal_decoder_generates_without_a_cache_by_recomputing():
    model = encdec(decoder_causal=False, seed=3)
    assert not model.supports_cache and encdec().supports_cache
    src = rand_ids(2, 5, 4)
    out = generate(model, encoder_input_ids=src, max_new_tokens=5)
    dec = torch.full((2, 1), model.config.start_token_id)
    for _ in range(5):  # by hand: re-run the whole prefix each step
        dec = torch.cat([dec, model(src, decoder_input_ids=dec)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, dec)
    with pytest.raises(ValueError, match="decoder_causal=False"):
        generate(model, encoder_input_ids=src, max_new_tokens=2, use_cache=True)


# --------------------------------------------------------------------------- place-value positions
def test_source_positions_restart_after_the_separator():
    model = encdec(position_restart_token_id=10)
    src = torch.tensor([[1, 2, 3, 10, 4, 5, 0], [7, 10, 1, 2, 3, 4, 5]])
    assert model.source_positions(src).tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]
    assert model.source_positions(src, torch.tensor([[2], [0]])).tolist()[0] == [2, 3, 4, 5, 2, 3, 4]
    assert encdec().source_positions(src) is None  # plain 0..S-1


@torch.no_grad()
def test_place_value_positions_reach_the_embeddings():
    plain, coupled = encdec(seed=5), encdec(seed=5, position_restart_token_id=10)
    src = torch.tensor([[1, 2, 10, 4, 5]])
    a, b = plain.encode(src), coupled.encode(src)
    assert not torch.allclose(a, b)
    # the same as feeding the coupled ids to the plain model's embedder by hand
    x = plain.src_embed(src, position_ids=torch.tensor([[0, 1, 2, 0, 1]]))
    manual, _ = plain.encoder(x, plain.src_embed.pos)
    torch.testing.assert_close(manual, b)


def test_random_position_offset_acts_in_training_only():
    model = encdec(seed=6, train_position_offset=8)
    src, labels = rand_ids(3, 5, 7), rand_ids(3, 4, 8)
    with torch.no_grad():
        ev1, ev2 = model(src, labels=labels), model(src, labels=labels)
        torch.testing.assert_close(ev1, ev2)
        model.train()
        torch.manual_seed(0)
        tr1 = model(src, labels=labels)
        torch.manual_seed(1)
        tr2 = model(src, labels=labels)
    assert not torch.allclose(tr1, tr2) and not torch.allclose(tr1, ev1)


def test_position_options_are_checked():
    with pytest.raises(ConfigError, match="positional='rope'"):
        EncoderDecoderConfig(src_vocab_size=V, tgt_vocab_size=V, positional="rope", train_position_offset=4)
    EncoderDecoderConfig(src_vocab_size=V, tgt_vocab_size=V, positional="place_rope", position_restart_token_id=10)
    with pytest.raises(ConfigError, match="outside the source vocabulary"):
        EncoderDecoderConfig(src_vocab_size=V, tgt_vocab_size=V, position_restart_token_id=V)
    with pytest.raises(ConfigError, match="max_len"):
        EncoderDecoderConfig(src_vocab_size=V, tgt_vocab_size=V, max_len=16, train_position_offset=16)


# --------------------------------------------------------------------------- place-value rotary positions
def _rotary_score(q, k, q_ids, k_ids, base=10000.0):
    """Scores q_t . k_s / sqrt(D) after RoPE, written with complex numbers (not the module's tables):
    pair (i, i + D/2) is one complex number, turned by id * base^(-2i/D); q (H, T, D), k (H, S, D)."""
    D = q.size(-1)
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    qc = torch.complex(q[..., : D // 2].double(), q[..., D // 2 :].double())  # (H, T, D/2)
    kc = torch.complex(k[..., : D // 2].double(), k[..., D // 2 :].double())  # (H, S, D/2)
    turn = torch.polar(torch.ones((), dtype=torch.float64), (q_ids[:, None, None] - k_ids[None, :, None]).double() * theta)  # (T, S, D/2)
    return (qc[:, :, None] * kc[:, None].conj() * turn).sum(-1).real / math.sqrt(D)  # (H, T, S)


@torch.no_grad()
def test_place_rope_cross_attention_turns_by_the_difference_of_places():
    """The decoder's cross-attention weights, recomputed by hand: queries turned by the decoder's
    index, keys by the source's place (numbered afresh after '+', id 10), keys more than the window
    away weighted exactly 0, and a query with no key in its window still a distribution (no NaN)."""
    model = encdec(seed=11, n_layer=1, norm_first=True, positional="place_rope", positional_options={"window": 1},
                   position_restart_token_id=10)
    src = torch.tensor([[1, 2, 3, 10, 4, 5]])  # places 0 1 2 3 0 1
    dec = torch.tensor([[12, 7, 8, 9, 7, 8, 9]])  # decoder places 0..6; 5 and 6 have no key within 1
    seen = {}
    handle = model.decoder.blocks[0].cross_attn.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(x=args[0], context=kwargs["context"]), with_kwargs=True)
    try:
        _, att = model(src, decoder_input_ids=dec, output_attentions=True)
    finally:
        handle.remove()
    got = att["decoder"][0]["cross"][0]  # (H, T, S)
    attn = model.decoder.blocks[0].cross_attn
    C, H = 16, 2
    w, b = attn.in_proj.weight, attn.in_proj.bias
    q = (seen["x"][0] @ w[:C].T + b[:C]).view(-1, H, C // H).transpose(0, 1)  # (H, T, D)
    k = (seen["context"][0] @ w[C:2 * C].T + b[C:2 * C]).view(-1, H, C // H).transpose(0, 1)  # (H, S, D)
    q_ids, k_ids = torch.arange(7), torch.tensor([0, 1, 2, 3, 0, 1])
    far = (q_ids[:, None] - k_ids[None, :]).abs() > 1  # (T, S)
    scores = _rotary_score(q, k, q_ids, k_ids)
    near = ~far.all(-1)  # queries with some key in their window: far keys weigh exactly 0
    expect = scores.masked_fill(far, -math.inf).softmax(-1)
    torch.testing.assert_close(got[:, near].double(), expect[:, near], atol=1e-5, rtol=0)
    assert (got[:, near] * far[near]).abs().max() == 0 and far[near].any()
    # the others (places 5 and 6) fall back to every key: finite, as without a window (to float32's
    # resolution of a score next to the window's bias)
    assert not near.all() and torch.isfinite(got).all()
    torch.testing.assert_close(got[:, ~near].double(), scores[:, ~near].softmax(-1), atol=1e-3, rtol=0)
    # the places matter: numbering the source 0..5 instead changes the weights
    plain = encdec(seed=11, n_layer=1, norm_first=True, positional="place_rope", positional_options={"window": 1})
    assert not torch.allclose(plain(src, decoder_input_ids=dec, output_attentions=True)[1]["decoder"][0]["cross"], got[None])


@torch.no_grad()
def test_place_rope_sees_only_differences_of_places():
    """Shifting every place id, encoder and decoder alike, changes nothing (so a training offset is
    harmless); shifting only the source's changes the answer."""
    model = encdec(seed=12, positional="place_rope", positional_options={"window": 2}, position_restart_token_id=10)
    src, dec = torch.tensor([[1, 2, 3, 10, 4, 5, 6]]), torch.tensor([[12, 7, 8, 9, 7]])
    memory = model.encode(src)
    places = model.source_positions(src)
    logits, _ = model.decode(dec, memory, source_positions=places)
    shift = torch.tensor([[5]])
    moved = model.encode(src, position_offset=shift)
    moved_logits, _ = model.decode(dec, moved, source_positions=places + 5, position_offset=shift)
    torch.testing.assert_close(moved, memory, atol=1e-5, rtol=0)
    torch.testing.assert_close(moved_logits, logits, atol=1e-5, rtol=0)
    source_only, _ = model.decode(dec, memory, source_positions=places + 5)
    assert (source_only - logits).abs().max() > 1e-3


# --------------------------------------------------------------------------- label smoothing
def test_label_smoothing_is_the_smoothed_cross_entropy():
    model = encdec(seed=9)
    batch = {"encoder_input_ids": rand_ids(2, 5, 10), "labels": rand_ids(2, 4, 11)}
    batch["labels"][1, 3] = -100
    eps = 0.1
    out = L.loss_for("seq2seq", eps)(model, batch)
    logp = out.logits.float().log_softmax(-1)  # (B, T, V)
    keep = batch["labels"] != -100
    nll = -logp.gather(-1, batch["labels"].clamp(min=0)[..., None])[..., 0]
    uniform = -logp.mean(-1)
    by_hand = ((1 - eps) * nll + eps * uniform)[keep].sum()
    torch.testing.assert_close(out.loss_sum, by_hand)
    assert int(out.count) == 7
    plain = L.loss_for("seq2seq")(model, batch).loss_sum
    assert plain < out.loss_sum  # smoothing costs something on a near-random model's confident rows
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="regression"):
        L.loss_for("regression", 0.1)


# --------------------------------------------------------------------------- the adder's formats
@pytest.mark.parametrize("reverse_answer", [False, True])
@pytest.mark.parametrize("zero_padding", [True, False])
def test_seq2seq_adder_formats_round_trip(reverse_answer, zero_padding):
    task = build_task("addition_seq2seq", train_lengths="3..6", test_lengths="7..12", train_examples_per_length=30,
                      test_examples_per_length=20, reverse_answer=reverse_answer, zero_padding=zero_padding)
    for p in task.prompts("test"):
        left, right = p.text.split("+")
        total = str(int(left[::-1]) + int(right[::-1]))
        digits, _, rest = p.answer.partition("#")
        assert digits == (total[::-1] if reverse_answer else total)
        assert rest == ("0" * (p.length - len(total)) if zero_padding else "")
        assert len(p.text) == p.length if zero_padding else len(p.text) == len(left) + 1 + len(right)
        assert task.check_answer(p.ids, p.answer) and not task.check_answer(p.ids, "1" + p.answer)
    batch = task.collate([task.dataset("test")[i] for i in range(8)])
    tgt_tokens = (batch["labels"] != -100).sum(-1)
    if not zero_padding:  # the loss covers the sum and '#' only
        assert tgt_tokens.tolist() == [len(task.prompts("test")[i].answer) for i in range(8)]


# --------------------------------------------------------------------------- teacher forcing by length
@torch.no_grad()
def test_teacher_forced_table_agrees_with_a_hand_count_and_differs_from_autoregressive():
    task = build_task("addition_seq2seq", train_lengths="3..5", test_lengths="6..7", train_examples_per_length=20,
                      test_examples_per_length=12)
    tok = task.tokenizer
    model = EncoderDecoder(EncoderDecoderConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size,
                                                d_model=16, n_head=2, n_layer=1, max_len=16, init_std=0.5,
                                                decoder_start_token_id=task.decoder_start_token_id)).eval()
    table = teacher_forced_by_length(model, task, "test")
    assert [r.length for r in table.rows] == [6, 7] and table.decoding == {"teacher_forced": True}
    ds, lengths = task.dataset("test"), task.example_lengths("test")
    for row in table.rows:
        idx = np.flatnonzero(lengths == row.length)
        batch = task.collate([ds[int(i)] for i in idx])
        pred = model(batch["encoder_input_ids"], labels=batch["labels"]).argmax(-1)
        hits = (pred == batch["labels"]).float()
        assert math.isclose(row.token_accuracy, float(hits.mean()), rel_tol=1e-6)  # the tutorial's accuracy_fn
        assert math.isclose(row.exact_match, float(hits.min(-1).values.mean()), rel_tol=1e-6)
    auto = evaluate_by_length(model, task, "test")
    assert [r.length for r in auto.rows] == [6, 7]


# --------------------------------------------------------------------------- the language-modelling practical
LINES = ["First Citizen:", "Before we proceed any further, hear me speak.", "All:", "Speak, speak.",
         "You are all resolved rather to die than to famish?", "Resolved. resolved.",
         "First, you know Caius Marcius is chief enemy to the people.", "We know't, we know't."] * 4


def _lines_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_gpt2_tokenizer_from_local_vocab_and_merges_files(tmp_path):
    from scratchformer.tokenizers import BPETokenizer

    source = BPETokenizer.train(LINES, vocab_size=300)
    gpt2_dir = tmp_path / "gpt2"
    gpt2_dir.mkdir()
    source.backend.model.save(str(gpt2_dir))  # vocab.json + merges.txt, the files GPT-2 ships
    task = build_task("text_lines_lm", path=str(_lines_file(tmp_path)), tokenizer=f"gpt2:{gpt2_dir}", max_length=16)
    assert task.tokenizer.encode(LINES[1]) == source.encode(LINES[1])
    with pytest.raises(ConfigError, match="gpt2:<directory"):
        build_task("text_lines_lm", path=str(_lines_file(tmp_path)), tokenizer="gtp2")


def _lm_run(tmp_path, *extra):
    from scratchformer.train import train
    from scratchformer.train.config import resolve_config

    cfg = resolve_config(None, [
        "model.arch=gpt", "model.d_model=32", "model.n_head=2", "model.n_layer=2",
        "task.name=text_lines_lm", f"task.path={_lines_file(tmp_path)}", "task.tokenizer=bpe", "task.vocab_size=300",
        f"task.cache_dir={tmp_path / 'cache'}", "task.max_length=24", "task.val_fraction=0.25",
        "train.batch_size=8", "train.eval_every=10", "train.checkpoint_every=0", "train.progress=false",
        "train.threads=1", "train.log_every=1", f"train.out_dir={tmp_path / 'runs'}", *extra,
    ])
    return train(cfg)


def test_padded_lines_are_loss_free_and_the_initial_loss_is_ln_v(tmp_path):
    from scratchformer.train.run import build_model

    task = build_task("text_lines_lm", path=str(_lines_file(tmp_path)), tokenizer="bpe", vocab_size=300,
                      cache_dir=str(tmp_path / "c"), max_length=24)
    batch = task.collate([task.dataset("train")[i] for i in range(8)])
    lengths = batch["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) > 1  # the batch really is padded
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()
    torch.manual_seed(0)
    model, _ = build_model({"arch": "gpt", "d_model": 64, "n_head": 2, "n_layer": 2}, task)
    out = L.loss_for("lm")(model.eval(), batch)
    assert int(out.count) == int((lengths - 1).sum())  # real next-token targets only
    V = task.tokenizer.vocab_size
    assert abs(float(out.loss_sum.detach() / out.count) - math.log(V)) < 0.05  # small init: near-uniform predictions


def test_tensorboard_events_are_written_and_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _lm_run(tmp_path, "train.steps=20", "train.log_tensorboard=true")
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "val/loss", "val/perplexity"} <= set(tags)
    val = events.Scalars("val/loss")
    metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if m.get("split") == "val"]
    assert [e.step for e in val] == [m["step"] for m in logged] and {10, 20} <= {e.step for e in val}
    assert [e.value for e in val] == pytest.approx([m["loss"] for m in logged], rel=1e-6)
    train_steps = [e.step for e in events.Scalars("train/loss")]
    assert train_steps == list(range(1, 21))
    assert math.exp(val[-1].value) == pytest.approx(events.Scalars("val/perplexity")[-1].value, rel=1e-5)


@pytest.mark.slow
def test_overfitting_one_batch_drives_the_loss_towards_zero(tmp_path):
    # the practical's sanity check: one batch of 8 lines, seen again and again
    result = _lm_run(tmp_path, "task.max_lines=8", "train.steps=150", "train.lr=3e-3", "train.warmup_steps=10",
                     "train.weight_decay=0", "train.schedule=constant", "train.eval_every=0")
    metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m.get("event") == "train"]
    assert losses[0] > 4.0 and losses[-1] < 0.1


def test_wikitext_offline_is_one_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from scratchformer.errors import DataError
    from scratchformer.tasks import text as text_mod

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        build_task("text_lines_lm", wikitext="wikitext-103-raw-v1", tokenizer="char")
    message = str(info.value)
    assert "\n" not in message and "wikitext-103-raw-v1" in message and "Couldn't reach" in message
    assert "task.path=" in message and "internet" in message
    assert text_mod.load_wikitext is not None


# --------------------------------------------------------------------------- nanoGPT side by side
def test_nanogpt_flag_checks_the_checkout_before_any_work(capsys, tmp_path):
    from scratchformer.cli import main

    try:
        code = main(["experiment", "shakespeare-char", "--quick", "--out", str(tmp_path / "out"),
                     "--nanogpt", str(tmp_path)])
    except SystemExit as e:
        code = e.code
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "not a nanoGPT checkout" in err and "train.py" in err
    assert not (tmp_path / "out").exists()


def test_nanogpt_reference_falls_back_to_the_stored_figure_naming_the_machine(tmp_path, monkeypatch):
    from scratchformer.experiments.evaluations import ExperimentContext
    from scratchformer.experiments.tutorial_evaluations import NANOGPT_ENV, nanogpt_reference

    monkeypatch.delenv(NANOGPT_ENV, raising=False)
    run_dir = tmp_path / "fast" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"elapsed_s": 40.0, "splits": {"val": {"loss": 1.85}}}))
    ctx = ExperimentContext(out_dir=tmp_path, plan=None, run_dirs={"fast/seed0": run_dir}, quick=False)
    section = nanogpt_reference(ctx, "fast", stored={"Intel Xeon": 100.0, "AMD EPYC": 149.0})
    assert section.metrics["time ratio"] in (0.4, pytest.approx(40 / 149))
    assert "stored figure" in section.markdown and "--nanogpt" in section.markdown
    assert ("met" in section.markdown) and section.metrics["ours val loss"] == 1.85


def test_the_initial_loss_evaluation_scores_a_fresh_model_built_from_the_runs_config(tiny_run):
    """initial_loss: the run's architecture and config, freshly initialised from its seed, scored on
    the split (through the public build_model); a small initialisation is near ln V."""
    import scratchformer.experiments.tutorial_evaluations  # noqa: F401 (registers the evaluation)
    from scratchformer.experiments.evaluations import EVALUATIONS, RunContext
    from scratchformer.train.run import read_run_config

    cfg = read_run_config(tiny_run)
    ctx = RunContext(run_dir=tiny_run, variant="v", seed=cfg.seed, config=cfg, quick=True)
    metrics = EVALUATIONS["initial_loss"].fn(ctx, max_examples=64).metrics
    assert metrics["ln V"] == pytest.approx(math.log(ctx.task().tokenizer.vocab_size))
    assert abs(metrics["initial loss"] - metrics["ln V"]) < 0.1
