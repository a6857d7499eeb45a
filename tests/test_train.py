"""The trainer: parameter groups, schedules, accumulation, checkpoints, resume after SIGKILL,
non-finite stops, run-directory contents, and that training lowers the loss."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scratchformer.errors import CheckpointError, ConfigError
from scratchformer.nn import linear as linear_module
from scratchformer.nn.linear import TunedLinear, onednn_available
from scratchformer.models import (
    GPT,
    EncoderClassifier,
    EncoderClassifierConfig,
    EncoderDecoder,
    EncoderDecoderConfig,
    GPTConfig,
)
from scratchformer.train import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    decay_groups,
    latest_checkpoint,
    load_checkpoint,
    load_run,
    lr_at,
    resolve_config,
    save_checkpoint,
    teacher_forced_exact_match,
    train,
)
from scratchformer import losses as losses_module
from scratchformer.train.data import ResumableSampler, split_global_batch
from scratchformer.train.run import build_run
from scratchformer.train.trainer import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]

FEWER = ("task.num_examples=1000", "train.eval_max_examples=100")  # the data of some runs below


# ---------------------------------------------------------------------- parameter groups
def _models() -> list[nn.Module]:
    return [
        GPT(GPTConfig(vocab_size=19, d_model=16, n_head=2, n_layer=2, max_len=16)),  # tied lm_head
        GPT(GPTConfig(vocab_size=19, d_model=16, n_head=2, n_layer=1, max_len=16, tie_embeddings=False, norm="rmsnorm")),
        EncoderClassifier(EncoderClassifierConfig(vocab_size=19, d_model=16, n_head=2, n_layer=1, max_len=16)),
        EncoderDecoder(EncoderDecoderConfig(src_vocab_size=19, tgt_vocab_size=19, d_model=16, n_head=2, n_layer=1,
                                            max_len=16, tie_encoder_decoder_embeddings=True)),
    ]


@pytest.mark.parametrize("model", _models(), ids=["gpt_tied", "gpt_untied_rms", "classifier", "seq2seq_tied"])
def test_every_parameter_is_in_exactly_one_group(model):
    decay, no_decay = decay_groups(model)
    all_params = {id(p): n for n, p in model.named_parameters()}
    assert set(decay) | set(no_decay) == set(all_params.values())
    assert not set(decay) & set(no_decay)
    assert len(decay) + len(no_decay) == len(all_params)  # tied weights counted once
    params = dict(model.named_parameters())
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name in decay:  # only Linear weights decay, never an embedding (even when tied to a Linear)
        assert id(params[name]) in linear_weights and id(params[name]) not in embedding_weights, name
    for name in no_decay:
        p = params[name]
        assert name.endswith("bias") or id(p) not in linear_weights or id(p) in embedding_weights, name
    opt = build_optimizer("adamw", model, lr=1e-3, weight_decay=0.1)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(all_params)  # the optimizer holds each tensor once
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_tied_gpt_weight_is_an_undecayed_embedding():
    model = _models()[0]
    decay, no_decay = decay_groups(model)
    assert model.lm_head.weight is model.embed.tok.weight
    assert "embed.tok.weight" in no_decay and "lm_head.weight" not in decay + no_decay
    assert any(n.startswith("decoder.blocks.0.attn") and n.endswith("weight") for n in decay)
    assert not any("norm" in n for n in decay)


def test_adam2017_uses_the_paper_settings():
    opt = build_optimizer("adam2017", nn.Linear(3, 3), lr=1.0)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-9


def test_unknown_optimizer_and_schedule_suggest_a_name():
    with pytest.raises(ValueError, match="did you mean 'adamw'"):
        build_optimizer("adamww", nn.Linear(2, 2), lr=1.0)
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        lr_at("cosin", 1, 1.0, total_steps=10)


# ---------------------------------------------------------------------- schedules
def test_noam_values_at_known_steps():
    def noam(step):
        return lr_at("noam", step, 1.0, total_steps=10**6, warmup_steps=4000, d_model=512)

    assert noam(4000) == pytest.approx(512**-0.5 * 4000**-0.5, rel=1e-12)  # the peak: both terms meet
    assert noam(4000) == pytest.approx(6.987712429686844e-04, rel=1e-12)
    assert noam(1) == pytest.approx(512**-0.5 * 4000**-1.5, rel=1e-12)
    assert noam(16000) == pytest.approx(noam(4000) / 2, rel=1e-12)  # inverse square root decay
    assert noam(2000) == pytest.approx(noam(4000) / 2, rel=1e-12)  # linear warm-up
    assert lr_at("noam", 4000, 2.0, total_steps=1, warmup_steps=4000, d_model=512) == pytest.approx(2 * noam(4000))


def test_cosine_and_constant_values():
    def cos(step):
        return lr_at("cosine", step, 1e-3, total_steps=1100, warmup_steps=100, min_lr_ratio=0.1)

    assert cos(50) == pytest.approx(0.5e-3)
    assert cos(100) == pytest.approx(1e-3)
    assert cos(600) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way down: the mean of peak and floor
    assert cos(1100) == pytest.approx(1e-4)
    assert cos(5000) == pytest.approx(1e-4)  # stays at the floor
    steps = [cos(s) for s in range(100, 1101)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    assert all(lr_at("constant", s, 0.3, total_steps=10) == 0.3 for s in (1, 5, 1000))


# ---------------------------------------------------------------------- data stream
def test_sampler_state_round_trip_and_epochs():
    a = ResumableSampler(10, seed=3)
    first = a.take(7)
    state = a.state_dict()
    rest = a.take(25)  # crosses three epoch boundaries
    b = ResumableSampler(10, seed=99)
    b.load_state_dict(state)
    assert b.take(25) == rest
    epoch0 = first + rest[:3]
    assert sorted(epoch0) == list(range(10))  # an epoch is a permutation


def test_global_batch_shards_are_disjoint_and_cover():
    idx = list(range(100, 124))
    shards = [split_global_batch(idx, 3, 2, r) for r in range(2)]
    flat = [i for r in range(2) for micro in shards[r] for i in micro]
    assert sorted(flat) == idx
    with pytest.raises(ValueError, match="divisible"):
        split_global_batch(list(range(10)), 3, 1, 0)


# ---------------------------------------------------------------------- accumulation
def test_grad_accumulation_equals_one_big_batch(tmp_path, tiny_config):
    # SGD makes the update proportional to the gradient, so a wrong normalisation
    # (mean of micro-batch means with different numbers of answer tokens) would show.
    common = ["train.steps=3", "train.optimizer=sgd", "train.lr=0.5", "train.schedule=constant", "train.grad_clip=0",
              "train.batch_size=32"]
    big = train(tiny_config(*common, "name=big"))
    acc = train(tiny_config(*common, "name=acc", "train.grad_accum=4"))
    a = load_file(big.run_dir / "model.safetensors")
    b = load_file(acc.run_dir / "model.safetensors")
    start = GPT_init(tiny_config)
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 1e-3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def GPT_init(tiny_config):
    run = train(tiny_config("train.steps=1", "train.lr=0", "train.optimizer=sgd", "name=init"))
    return load_file(run.run_dir / "model.safetensors")


# ---------------------------------------------------------------------- run directory
def test_run_directory_contents_and_metrics_fields(tmp_path, tiny_config):
    result = train(tiny_config("train.steps=6", "train.eval_every=3", "train.checkpoint_every=3", "name=r"))
    run_dir = result.run_dir
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "tokenizer.json", "best.safetensors", "results.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["arch"] == "gpt" and config["model"]["vocab_size"] == 19
    assert config["task"]["name"] == "addition_gpt" and config["task"]["max_digits"] == 2
    assert config["train"]["steps"] == 6 and config["seed"] == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5, 6]
    for r in train_lines:
        assert {"loss", "lr", "tokens_per_s", "grad_norm"} <= set(r) and math.isfinite(r["loss"])
    evals = [r for r in records if r["event"] in ("eval", "final")]
    assert {r["step"] for r in evals} == {3, 6}
    for r in evals:
        assert 0.0 <= r["exact_match"] <= 1.0 and 0.0 <= r["token_accuracy"] <= 1.0
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert {r["split"] for r in records if r["event"] == "final"} == {"val", "test"}
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_00000003", "step_00000006"]
    run = load_run(run_dir)
    assert not run.model.training
    assert run.tokenizer.decode(run.tokenizer.encode("12+34=")) == "12+34="
    final = load_file(run_dir / "model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in run.model.state_dict().items())


def test_training_a_tiny_classifier_lowers_the_loss(tmp_path):
    result = train(resolve_config(None, [
        "model.arch=encoder_classifier", "model.d_model=32", "model.n_head=2", "model.n_layer=2",
        "task.name=difference_sign", "task.train_lengths=3..5", "task.test_lengths=[5]",
        "task.train_examples_per_length=300", "task.test_examples_per_length=200",
        "train.steps=100", "train.batch_size=32", "train.lr=1e-2", "train.warmup_steps=5", "train.eval_every=0",
        "train.checkpoint_every=0", "train.progress=false", "train.log_every=1", f"train.out_dir={tmp_path}",
        "train.threads=1",
    ]))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert result.metrics["test"]["accuracy"] > 0.7  # held-out problems (chance: about 0.5)


# ---------------------------------------------------------------------- exact match in one pass
def test_teacher_forced_exact_match_agrees_with_greedy_decoding():
    pytest.importorskip("scratchformer.generate")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, d_model=32, n_head=2, n_layer=2, max_len=24)).eval()
    prompts = torch.randint(0, 13, (16, 5))
    greedy = model.generate(prompts, max_new_tokens=6, do_sample=False)  # (16, 11)
    assert greedy.shape == (16, 11)
    labels = greedy.clone()
    labels[:, :5] = -100  # only the generated part is a target
    # rows 8.. get one target changed: greedy would not have written it
    pos = torch.randint(5, 11, (8,))
    labels[torch.arange(8, 16), pos] = (labels[torch.arange(8, 16), pos] + 1) % 13
    with torch.no_grad():
        logits = model(greedy)  # teacher forcing on the (possibly wrong) targets' prefix is the greedy prefix
    ok = teacher_forced_exact_match(logits[:, :-1], labels[:, 1:])
    assert ok.tolist() == [True] * 8 + [False] * 8


def test_teacher_forced_exact_match_rules():
    logits = torch.zeros(3, 4, 5)
    logits[:, :, 2] = 1.0  # argmax 2 everywhere
    targets = torch.tensor([[-100, 2, 2, -100], [-100, 2, 3, -100], [-100, -100, -100, -100]])
    assert teacher_forced_exact_match(logits, targets).tolist() == [True, False, False]


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_restores_optimizer_state(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    opt = build_optimizer("adamw", model, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    state = {"rng": torch.get_rng_state(), "note": ("a", 1), "nested": {3: [1.5, None, True]}}
    path = save_checkpoint(tmp_path, 3, model.state_dict(), opt.state_dict(), state, arch="mlp")
    ckpt = load_checkpoint(path)
    assert ckpt.step == 3 and ckpt.state["note"] == ("a", 1) and ckpt.state["nested"] == {3: [1.5, None, True]}
    assert torch.equal(ckpt.state["rng"], state["rng"])
    expected = opt.state_dict()
    assert ckpt.optimizer["param_groups"] == expected["param_groups"]
    for pid, s in expected["state"].items():
        for k, v in s.items():
            assert torch.equal(ckpt.optimizer["state"][pid][k], v)
    fresh = build_optimizer("adamw", model, lr=1e-2, weight_decay=0.1)
    fresh.load_state_dict(ckpt.optimizer)  # torch accepts it as is


def test_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path, tiny_config):
    result = train(tiny_config("train.steps=2", "train.checkpoint_every=1", "name=r"))
    run_dir = result.run_dir
    weights = run_dir / "model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated|not a readable"):
        load_run(run_dir)

    save_file({"some.other.weight": torch.zeros(3)}, str(weights))  # foreign safetensors
    with pytest.raises(CheckpointError, match="not a scratchformer weights file"):
        load_run(run_dir)

    marker = tmp_path / "pwned"

    class Exploit:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights.write_bytes(pickle.dumps({"w": Exploit()}))
    with pytest.raises(CheckpointError):
        load_run(run_dir)
    assert not marker.exists()

    newest = latest_checkpoint(run_dir)
    assert newest.name == "step_00000002"
    opt_file = newest / "optimizer.safetensors"
    opt_file.write_bytes(opt_file.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(newest)
    assert latest_checkpoint(run_dir).name == "step_00000001"  # the damaged one is skipped
    (run_dir / "checkpoints" / "step_00000001" / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="manifest"):
        load_checkpoint(run_dir / "checkpoints" / "step_00000001")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "missing")


@pytest.mark.parametrize("backend", [None, "auto", "torch", "onednn"])
def test_the_runs_linear_backend_is_applied_to_its_model_only_and_recorded(tmp_path, monkeypatch, backend, tiny_config):
    if backend == "onednn" and not onednn_available():
        pytest.skip("this PyTorch has no oneDNN linear kernel")
    seen = []
    real = losses_module.LOSSES["lm"]

    def spy(model, batch):
        seen.append({(type(m), getattr(getattr(m, "tuner", None), "force", None))
                     for m in model.modules() if isinstance(m, nn.Linear)})
        return real(model, batch)

    monkeypatch.setitem(losses_module.LOSSES, "lm", spy)
    extra = [] if backend is None else [f"train.linear_backend={backend}"]
    train(tiny_config("train.steps=2", *extra, "name=backend"))
    expected = {
        None: {(TunedLinear, None)}, "auto": {(TunedLinear, None)},  # measured (None: "auto")
        "torch": {(nn.Linear, None)}, "onednn": {(TunedLinear, "onednn")},
    }[backend]
    assert seen and all(s == expected for s in seen)
    assert type(GPT(GPTConfig(vocab_size=19, d_model=16, n_head=2, n_layer=1, max_len=16)).lm_head) is nn.Linear
    recorded = json.loads((tmp_path / "backend" / "config.json").read_text())["train"]["linear_backend"]
    assert recorded == (backend or "auto")


def test_a_resumed_run_reuses_the_recorded_kernel_choices(tmp_path, monkeypatch, tiny_config):
    """Every product measured (no size floor): the checkpoint records each shape's kernel, and the
    resumed run loads them and measures none of those shapes again."""
    monkeypatch.setattr(linear_module, "MEASURE_MIN_MACS", 0)
    measured = []
    real = linear_module.time_candidates
    def counted(candidates, **kw):  # products measured one at a time (not the first step's whole-pass check)
        if "measured" not in candidates:
            measured.append(1)
        return real(candidates, **kw)

    monkeypatch.setattr(linear_module, "time_candidates", counted)
    cfg = tiny_config("train.steps=2", "train.checkpoint_every=1", "name=kernels")
    train(cfg)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "kernels"))
    recorded = ckpt.state["kernels"]
    assert recorded and len(measured) == len(recorded)
    loaded = []
    real_load = linear_module.KernelTuner.load
    monkeypatch.setattr(linear_module.KernelTuner, "load", lambda self, c: loaded.append(dict(c)) or real_load(self, c))
    measured.clear()
    train(tiny_config("train.steps=4", "train.checkpoint_every=1", "name=kernels"),
          run_dir=tmp_path / "kernels", resume=True)
    assert recorded in loaded
    train_keys = [k for k in recorded if " grad " in k]
    assert train_keys and len(measured) <= len(recorded) - len(train_keys)  # the training shapes: none again


def _fake_kernel_timings(monkeypatch, whole_pass_winner: str) -> list[str]:
    """Every product measured (no size floor) and oneDNN the fastest alone; the first step's
    whole-pass check says ``whole_pass_winner``. Returns one entry per whole-pass check."""
    monkeypatch.setattr(linear_module, "MEASURE_MIN_MACS", 0)
    checks = []

    def fake(candidates, **_):
        for run in candidates.values():
            run()
        if "measured" in candidates:
            checks.append(whole_pass_winner)
            return {name: 1.0 if name == whole_pass_winner else 2.0 for name in candidates}
        return {name: 1.0 if name == "onednn" else 2.0 for name in candidates}

    monkeypatch.setattr(linear_module, "time_candidates", fake)
    return checks


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN linear kernel")
def test_the_first_steps_kernel_check_leaves_the_run_as_it_would_have_been(tmp_path, monkeypatch, tiny_config,
                                                                          read_metrics):
    """The check's forward and backward passes (dropout on) draw from a forked RNG and their
    gradients are dropped: the run's losses equal, bit for bit, those of a run without the check."""
    import scratchformer.train.trainer as trainer_module

    def losses(name: str) -> list[float]:
        run = train(tiny_config("train.steps=4", "model.dropout=0.2", f"name={name}")).run_dir
        return [r["loss"] for r in read_metrics(run) if r.get("event") == "train"]

    checks = _fake_kernel_timings(monkeypatch, "measured")
    checked = losses("checked")
    assert checks == ["measured"]
    monkeypatch.setattr(trainer_module, "check_kernels", lambda *a: checks.append("skipped"))
    assert losses("unchecked") == checked and checks[-1] == "skipped"


def test_the_kernel_check_times_a_forward_and_backward_pass_of_the_run(monkeypatch, tiny_config):
    """What the check times: the run's model, forward and backward (every parameter gets a gradient),
    and the run goes on without those gradients."""
    import scratchformer.train.trainer as trainer_module

    models, seen = [], []
    real = losses_module.LOSSES["lm"]
    monkeypatch.setitem(losses_module.LOSSES, "lm", lambda model, batch: models.append(model) or real(model, batch))

    def spy(tuner, trial):
        trial()
        seen.append(all(p.grad is not None for p in models[-1].parameters() if p.requires_grad))
        return True

    monkeypatch.setattr(trainer_module, "keep_if_faster", spy)
    train(tiny_config("train.steps=2", "name=spied"))
    assert seen == [True]


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN linear kernel")
def test_kernels_slower_in_the_whole_pass_give_way_to_f_linear_and_the_checkpoint_says_so(tmp_path, monkeypatch,
                                                                                        tiny_config):
    import scratchformer.models.fast_decode as fd  # noqa: F401 (its kernels are not the trainer's)

    calls = []
    real = linear_module.onednn_linear
    monkeypatch.setattr(linear_module, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    checks = _fake_kernel_timings(monkeypatch, "torch")
    run = train(tiny_config("train.steps=3", "train.checkpoint_every=1", "name=slower")).run_dir
    assert checks == ["torch"]
    recorded = load_checkpoint(latest_checkpoint(run)).state["kernels"]
    assert recorded and set(recorded.values()) == {"torch"}
    calls.clear()
    train(tiny_config("train.steps=4", "train.checkpoint_every=1", "name=slower"), run_dir=run, resume=True)
    assert not calls and checks == ["torch"]  # the resumed run multiplies on F.linear, and checks nothing


def test_the_last_evaluation_is_reused_at_the_end_when_it_saw_the_whole_split(tmp_path, monkeypatch, tiny_config):
    import scratchformer.train.trainer as trainer_module

    calls = []
    real = trainer_module.split_sums

    def spy(model, task, split, **kwargs):
        calls.append(split)
        return real(model, task, split, **kwargs)

    monkeypatch.setattr(trainer_module, "split_sums", spy)
    train(tiny_config("train.steps=2", "train.eval_every=0", "train.eval_max_examples=0", "name=reuse"))
    records = [json.loads(x) for x in (tmp_path / "reuse" / "metrics.jsonl").read_text().splitlines()]
    (last,) = [r for r in records if r["event"] == "eval"]
    finals = {r["split"]: r for r in records if r["event"] == "final"}
    assert finals[last["split"]] == {**last, "event": "final"}
    assert calls.count(last["split"]) == 1  # evaluated once, not again at the end
    assert sorted(calls) == sorted(finals)  # every other split once


# ---------------------------------------------------------------------- non-finite loss
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, tiny_config):
    calls = {"n": 0}
    real = losses_module.LOSSES["lm"]

    def poisoned(model, batch):
        calls["n"] += 1
        out = real(model, batch)
        if calls["n"] == 5:  # the 5th update
            out.loss_sum = out.loss_sum * float("nan")
        return out

    monkeypatch.setitem(losses_module.LOSSES, "lm", poisoned)
    # F.linear: with measured kernels the first step's kernel check may call the loss too
    cfg = tiny_config("train.steps=8", "train.checkpoint_every=2", "train.linear_backend=torch", "name=nan")
    with pytest.raises(NonFiniteLossError, match="step 5"):
        train(cfg)
    run_dir = tmp_path / "nan"
    newest = latest_checkpoint(run_dir)
    assert newest is not None and newest.name == "step_00000004"
    ckpt = load_checkpoint(newest)
    assert all(torch.isfinite(t).all() for t in ckpt.model.values())
    assert not (run_dir / "results.json").exists()


def test_huge_learning_rate_is_reported_not_saved(tmp_path, tiny_config):
    cfg = tiny_config("train.steps=30", "train.checkpoint_every=1", "train.optimizer=sgd",
                      "train.lr=1e30", "train.grad_clip=0", "train.schedule=constant", "name=huge")
    with pytest.raises(NonFiniteLossError, match=r"at step \d+") as info:
        train(cfg)
    step = int(str(info.value).split("at step ")[1].split(";")[0])
    newest = latest_checkpoint(tmp_path / "huge")
    assert newest is None or int(newest.name.split("_")[1]) < step
    if newest is not None:
        load_checkpoint(newest)  # intact


# ---------------------------------------------------------------------- resume after SIGKILL
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scratchformer", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("backend", ["auto", "onednn"])  # onednn: every matmul of this tiny model through oneDNN
def test_resume_after_sigkill_is_bit_identical(tmp_path, backend, tiny_overrides):
    if backend == "onednn" and not onednn_available():
        pytest.skip("this PyTorch has no oneDNN linear kernel")
    steps, kill_at = 40, 6
    overrides = [*tiny_overrides, f"train.steps={steps}", "train.checkpoint_every=1", "train.keep_checkpoints=3",
                 "model.dropout=0.1", f"train.out_dir={tmp_path}",  # dropout: the torch RNG must be restored too
                 f"train.linear_backend={backend}"]  # the resumed run reads it back from config.json
    # the uninterrupted run and the one to kill run side by side (2 cores)
    straight = subprocess.Popen(_cli("train", *overrides, "name=straight"), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", *overrides, "name=killed"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run_dir / "checkpoints" / f"step_{kill_at:08d}" / "manifest.json"
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    newest = latest_checkpoint(run_dir)
    assert newest is not None and int(newest.name.split("_")[1]) < steps, "the run finished before the kill"

    stale = run_dir / "checkpoints" / ".tmp-step_00000099-1"  # as if killed while writing a checkpoint
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    resumed = subprocess.run(_cli("train", "--resume", str(run_dir)), env=_env(), capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "config.json").read_text())["train"]["linear_backend"] == backend
    assert not stale.exists()
    _, err = straight.communicate(timeout=180)
    assert straight.returncode == 0, err
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(run_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # bit for bit
        assert a[k].dtype == b[k].dtype and a[k].numpy().tobytes() == b[k].numpy().tobytes(), k
    ma = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in ma if r["event"] == "train"] == [r["loss"] for r in mb if r["event"] == "train"]


# ---------------------------------------------------------------- mixed precision by flag
def test_bf16_flag_changes_the_computation_but_not_much(tmp_path, read_metrics, tiny_config):
    common = ["train.steps=2", "train.optimizer=sgd", "train.lr=0.1", "train.schedule=constant"]
    fp32 = train(tiny_config(*FEWER, *common, "name=fp32"))
    bf16 = train(tiny_config(*FEWER, *common, "name=bf16", "train.precision=bf16"))
    a = [r["loss"] for r in read_metrics(fp32.run_dir) if r["event"] == "train"]
    b = [r["loss"] for r in read_metrics(bf16.run_dir) if r["event"] == "train"]
    assert a[0] != b[0]  # the flag is not ignored: bf16 rounding shows in the loss
    assert b[0] == pytest.approx(a[0], rel=2e-2)
    assert load_file(bf16.run_dir / "model.safetensors")["embed.tok.weight"].dtype == torch.float32


# ---------------------------------------------------------------- best checkpoint by a chosen metric
# (mutation that survived: best updated only at the first evaluation)
@pytest.mark.parametrize("metric", ["loss", "token_accuracy"])
def test_best_weights_are_those_of_the_best_evaluation(tmp_path, metric, read_metrics, tiny_config):
    result = train(tiny_config(*FEWER, "train.steps=8", "train.eval_every=1", "train.checkpoint_every=1",
                        "train.keep_checkpoints=20", "train.lr=3e-3", f"train.best_metric={metric}", "name=b"))
    run_dir = result.run_dir
    evals = [r for r in read_metrics(run_dir) if r["event"] == "eval"]
    assert [r["step"] for r in evals] == list(range(1, 9))
    values = [r[metric] for r in evals]
    best_value = min(values) if metric == "loss" else max(values)
    best_step = evals[values.index(best_value)]["step"]  # the first step reaching it
    best = json.loads((run_dir / "best.json").read_text())
    assert best["step"] == best_step and best["metric"] == metric
    assert best["value"] == pytest.approx(best_value)
    weights = load_file(run_dir / "best.safetensors")
    at_best = load_file(run_dir / "checkpoints" / f"step_{best_step:08d}" / "model.safetensors")
    assert weights.keys() == at_best.keys() and all(torch.equal(weights[k], at_best[k]) for k in weights)
    if metric == "loss":
        assert best_step > 1  # the loss fell: a best stuck at the first evaluation would show


# ---------------------------------------------------------------- resume cleans up what the kill left
# (mutation that survived the SIGKILL test, which only sometimes kills between a log line and its checkpoint:
#  metrics.jsonl not truncated on resume)
def test_resume_drops_metric_lines_after_the_checkpoint_and_a_cut_line(tmp_path, read_metrics, tiny_config):
    common = ["train.steps=5", "train.checkpoint_every=2", "train.keep_checkpoints=10"]
    straight = train(tiny_config(*FEWER, *common, "name=straight")).run_dir
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    # as if killed while writing step 5's checkpoint, after logging steps 3..5 and half a line
    shutil.rmtree(killed / "checkpoints" / "step_00000005")
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in lines if r["event"] != "final"]
    (killed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"event": "train", "st')
    (killed / "results.json").unlink()
    assert latest_checkpoint(killed).name == "step_00000004"
    train(tiny_config(*FEWER, *common), run_dir=killed, resume=True)
    got = read_metrics(killed)
    assert [r["step"] for r in got if r["event"] == "train"] == [1, 2, 3, 4, 5]
    want = read_metrics(straight)
    assert [r["loss"] for r in got if r["event"] == "train"] == [r["loss"] for r in want if r["event"] == "train"]
    assert sorted(r["split"] for r in got if r["event"] == "final") == ["test", "val"]


# ---------------------------------------------------------------- a resumed run's time includes the earlier process's
def test_a_resumed_runs_training_time_counts_the_steps_before_the_checkpoint(tmp_path, tiny_config):
    first = train(tiny_config(*FEWER, "train.steps=20", "train.checkpoint_every=20", "name=t"))
    saved = load_checkpoint(latest_checkpoint(first.run_dir)).state["time"]
    assert 0 < saved["elapsed_s"] <= first.elapsed_s and saved["cpu_s"] > 0
    again = train(tiny_config(*FEWER, "train.steps=21", "train.checkpoint_every=20", "name=t"),
                  run_dir=first.run_dir, resume=True)  # one more step
    results = json.loads((first.run_dir / "results.json").read_text())
    assert again.elapsed_s == results["elapsed_s"] > saved["elapsed_s"]  # 20 steps before, one now
    assert results["cpu_s"] > saved["cpu_s"]


# ---------------------------------------------------------------- resuming with fewer steps than were reached
def test_resume_with_fewer_steps_than_reached_is_a_clear_error(tmp_path, tiny_config):
    cfg = tiny_config(*FEWER, "train.steps=4", "train.checkpoint_every=2", "name=short")
    result = train(cfg)
    fewer = tiny_config(*FEWER, "train.steps=2", "train.checkpoint_every=2", "name=short")
    with pytest.raises(ConfigError, match=r"train.steps=2 is below step 4"):
        train(fewer, run_dir=result.run_dir, resume=True)


# ---------------------------------------------------------------- the progress bar
# (mutation that survived: lr dropped from the bar)
def test_progress_bar_shows_steps_loss_lr_tokens_per_second_and_eta(tmp_path, capsys, tiny_config):
    train(tiny_config(*FEWER, "train.steps=6", "train.log_every=2", "train.progress=true", "name=p"))
    err = capsys.readouterr().err.replace("\r", "\n")
    lines = [line for line in err.splitlines() if "/6" in line and "loss=" in line and "lr=" in line]
    assert lines, err
    line = lines[-1]
    assert re.search(r"\b[1-6]/6\b", line)  # steps done / total
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", line)  # elapsed < ETA
    assert re.search(r"loss=\d+\.\d+", line)
    assert re.search(r"lr=\d\.\d\de-\d\d", line)
    assert re.search(r"tok_s=\d+", line)


def test_gradient_clipping_bounds_the_update(tmp_path, tiny_config):
    # with a tiny clip norm, one SGD step moves the weights by at most lr * clip in norm
    clip, lr = 1e-3, 0.5
    cfg = tiny_config(*FEWER, "train.steps=1", "train.optimizer=sgd", f"train.lr={lr}", "train.schedule=constant",
               "train.warmup_steps=0", "train.weight_decay=0", f"train.grad_clip={clip}", "name=clip")
    from scratchformer.train.rng import seed_everything

    seed_everything(cfg.seed)  # the trainer's own start, so `before` is its initial model
    # named_parameters lists a tied weight once, so it is counted once in the norm
    before = {k: v.detach().clone() for k, v in build_run(cfg)[1].named_parameters()}
    result = train(cfg)
    after = load_file(str(Path(result.run_dir) / "model.safetensors"))
    moved = math.sqrt(sum(float((after[k] - before[k]).pow(2).sum()) for k in after if k in before))
    assert 0 < moved <= lr * clip * 1.01


@pytest.mark.slow
def test_compile_flag_trains_the_same_model(tmp_path, monkeypatch, read_metrics, tiny_config):
    calls = []
    real_compile = torch.compile

    def spy(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    eager = train(tiny_config(*FEWER, "train.steps=2", "name=eager"))
    assert calls == []
    compiled = train(tiny_config(*FEWER, "train.steps=2", "train.compile=true", "name=compiled"))
    assert calls, "train.compile=true never called torch.compile"
    a = load_file(str(Path(eager.run_dir) / "model.safetensors"))
    b = load_file(str(Path(compiled.run_dir) / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    losses = [r["loss"] for r in read_metrics(Path(compiled.run_dir)) if r.get("event") == "train"]
    assert losses and all(math.isfinite(x) for x in losses)


# ---------------------------------------------------------------------- every registered optimizer and schedule
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_holds_each_parameter_once_and_lowers_a_loss(name):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=19, d_model=16, n_head=2, n_layer=1, max_len=16))
    opt = build_optimizer(name, model, lr=1e-2, weight_decay=0.1)
    held = [id(p) for group in opt.param_groups for p in group["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())  # each once (a tied weight too)
    ids = torch.randint(0, 19, (4, 12), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(5):  # the same batch again and again: any working optimizer lowers its loss
        loss = model.loss(ids, ids)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_is_a_pure_finite_non_negative_function_of_the_step(name):
    def lrs() -> list[float]:
        return [lr_at(name, step, 1e-3, total_steps=200, warmup_steps=20, min_lr_ratio=0.1, d_model=64)
                for step in range(1, 201)]

    got = lrs()
    assert all(math.isfinite(x) and x >= 0 for x in got) and max(got) > 0
    assert got == lrs()  # a function of the step alone
    assert got[-1] <= max(got)
