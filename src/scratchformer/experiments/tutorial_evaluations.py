"""Evaluations of the sequence experiments (addition-seq2seq, shakespeare-char, text-bpe).

Registered in :data:`scratchformer.experiments.evaluations.EVALUATIONS` on
import. Each run evaluation takes ``variants``: the variants it looks at
(None: every one), since the closing comparisons (decoding strategies,
best-of-n, precision) only matter for the chosen model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .evaluations import ExperimentContext, Outcome, RunContext, Section, _length_range, register_evaluation


def _skip(ctx: RunContext, variants: list[str] | None) -> bool:
    return variants is not None and ctx.variant not in variants


def _group_means(values: dict[int, float], counts: dict[int, int], groups: list[str], name: str) -> dict[str, float]:
    out = {}
    for group in groups:
        lengths = [n for n in _length_range(group) if n in values]
        total = sum(counts[n] for n in lengths)
        out[f"{name} {group}"] = sum(values[n] * counts[n] for n in lengths) / total if total else math.nan
    return out


# ---------------------------------------------------------------------- teacher forcing
@register_evaluation("teacher_forced", "run", "accuracy per length with the true target as decoder input")
def teacher_forced(ctx: RunContext, split: str = "test", groups: list[str] | None = None,
                   max_per_length: int | None = None, label: str = "teacher-forced",
                   variants: list[str] | None = None) -> Outcome:
    """Tutorial 000's "non autoregressive" evaluation: columns "<label> token accuracy <range>" and
    "<label> exact match <range>"; curves of both by length."""
    from ..evaluate import teacher_forced_by_length

    if _skip(ctx, variants):
        return Outcome()
    table = teacher_forced_by_length(ctx.run().model, ctx.task(), split, max_per_length=max_per_length)
    counts = {r.length: r.n for r in table.rows}
    tok = {r.length: r.token_accuracy for r in table.rows}
    exact = {r.length: r.exact_match for r in table.rows}
    metrics = {**_group_means(tok, counts, groups or [], f"{label} token accuracy"),
               **_group_means(exact, counts, groups or [], f"{label} exact match")}
    return Outcome(metrics=metrics, curves={f"{label} token accuracy by length": tok,
                                            f"{label} exact match by length": exact})


# ---------------------------------------------------------------------- best of n
@register_evaluation("top_at_n", "run", "top@n accuracy of n samples as n grows (a curve)")
def top_at_n(ctx: RunContext, ns: list[int] | None = None, split: str = "test", max_problems: int = 200,
             temperature: float = 1.0, top_p: float | None = None, seed: int = 0,
             variants: list[str] | None = None) -> Outcome:
    """For each n: the fraction of problems (the first ``max_problems`` of ``split``, all lengths) that at
    least one of n samples answers right, by the task's verifier. Columns "top@<n>"; curve "top@n"."""
    import torch

    from ..evaluate import top_at_n_accuracy

    if _skip(ctx, variants):
        return Outcome()
    curve: dict[float, float] = {}
    if ctx.quick:  # the quick version checks the plumbing, not the figure
        max_problems = min(max_problems, 16)
    for n in ns or [1, 2, 4, 8, 16]:
        options: dict[str, Any] = {"do_sample": True, "temperature": temperature}
        if top_p is not None:
            options["top_p"] = top_p
        result = top_at_n_accuracy(ctx.run().model, ctx.task(), split, n, max_problems=max_problems,
                                   generator=torch.Generator().manual_seed(seed), **options)
        curve[n] = result["accuracy"]
    return Outcome(metrics={f"top@{n}": v for n, v in curve.items()}, curves={"top@n accuracy": curve})


# ---------------------------------------------------------------------- cost of a training step
_COST_SCRIPT = """
import json, resource, sys, time
import torch
from scratchformer.train import load_run
from scratchformer.losses import loss_for
from scratchformer.train.optim import build_optimizer
run = load_run(sys.argv[1]); steps = int(sys.argv[2]); tc = run.config.train
torch.manual_seed(run.config.seed)
if tc.threads:
    torch.set_num_threads(tc.threads)
task = run.build_task(); model = run.model.train()
opt = build_optimizer(tc.optimizer, model, tc.lr, tc.weight_decay, **tc.optimizer_options)
loss_fn = loss_for(task.kind)
def batches():
    while True:  # epochs, however small the training split
        yield from task.dataloader("train", batch_size=tc.batch_size, shuffle=True, seed=run.config.seed)
loader = batches()
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
        out = loss_fn(model, next(loader))
    (out.loss_sum / out.count).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
step(); step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
ms = (time.perf_counter() - t0) / steps * 1e3
print(json.dumps({"step_ms": ms, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@register_evaluation("training_cost", "run", "time per training step and peak memory, in a fresh process")
def training_cost(ctx: RunContext, steps: int = 30, variants: list[str] | None = None) -> Outcome:
    """Train ``steps`` more steps of the run's config (its precision included) in a fresh process:
    columns "step ms" (mean wall time per step) and "peak MB" (the process's peak resident memory)."""
    if _skip(ctx, variants):
        return Outcome()
    if ctx.quick:  # the quick version skips the fresh process (a second torch import)
        return Outcome(metrics={"step ms": 1e3 * ctx.trainer_results()["elapsed_s"] / ctx.config.train.steps})
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _COST_SCRIPT, str(ctx.run_dir), str(steps)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"training_cost failed: {proc.stderr.strip().splitlines()[-1:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return Outcome(metrics={"step ms": got["step_ms"], "peak MB": got["peak_rss_mb"]})


# ---------------------------------------------------------------------- language models
@register_evaluation("loss_curve", "run", "training and validation loss by step")
def loss_curve(ctx: RunContext, variants: list[str] | None = None) -> Outcome:
    """Curves "train loss" and "<split> loss" (step -> loss) from the run's metrics.jsonl, and the
    column "last train loss" (the mean training loss of the last logged steps)."""
    if _skip(ctx, variants):
        return Outcome()
    curves: dict[str, dict[float, float]] = {}
    for line in (ctx.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == "train":
            curves.setdefault("train loss", {})[record["step"]] = record["loss"]
        elif record.get("event") == "eval":
            curves.setdefault(f"{record['split']} loss", {})[record["step"]] = record["loss"]
    train = curves.get("train loss", {})
    metrics = {"last train loss": train[max(train)]} if train else {}
    return Outcome(metrics=metrics, curves=curves)



@register_evaluation("samples", "run", "greedy and sampled continuations of prompts")
def samples(ctx: RunContext, prompts: list[str] | None = None, max_new_tokens: int = 200, top_p: float = 0.9,
            temperature: float = 1.0, seed: int = 0, variants: list[str] | None = None) -> Outcome:
    """Markdown with, for each prompt, the greedy continuation and a top-p sample (seeded)."""
    import torch

    from ..generate import generate

    if _skip(ctx, variants):
        return Outcome()
    if ctx.quick:  # the quick version checks the plumbing
        max_new_tokens = min(max_new_tokens, 20)
    run = ctx.run()
    tok = run.tokenizer or ctx.task().tokenizer
    model = run.model
    room = model.config.max_len
    parts = [f"**Samples of {ctx.variant} (seed {ctx.seed})**"]
    for prompt in prompts or ["ROMEO:"]:
        ids = torch.tensor([tok.encode(prompt)])
        for name, options in (("greedy", {}), (f"top-p {top_p}", {"do_sample": True, "top_p": top_p,
                                                                   "temperature": temperature})):
            if options:
                options["generator"] = torch.Generator().manual_seed(seed)
            text = _continue(model, tok, ids, max_new_tokens, room, generate, options)
            parts.append(f"{name}, prompt {prompt!r}:\n\n```\n{prompt}{text}\n```")
    return Outcome(text="\n\n".join(parts))


def _continue(model, tok, ids, max_new_tokens, room, generate, options) -> str:
    """Generate ``max_new_tokens``, sliding the context window when the model's max_len is reached."""
    import torch

    out = ids
    while out.size(1) - ids.size(1) < max_new_tokens:
        window = out[:, -(room - 1):] if out.size(1) >= room else out
        n = min(max_new_tokens - (out.size(1) - ids.size(1)), room - window.size(1))
        new = generate(model, window, max_new_tokens=n, eos_token_id=tok.eos_token_id, **options)
        added = new[:, window.size(1):]
        out = torch.cat([out, added], dim=1)
        if tok.eos_token_id is not None and bool((added == tok.eos_token_id).any()):
            break
    return tok.decode(out[0, ids.size(1):].tolist(), skip_special_tokens=True)


@register_evaluation("initial_loss", "run", "validation loss at initialisation against ln V")
def initial_loss(ctx: RunContext, split: str = "val", max_examples: int = 256,
                 variants: list[str] | None = None) -> Outcome:
    """The freshly initialised model's loss on ``split`` (the run's seed and config): columns
    "initial loss" and "ln V". A small initialisation predicts nearly uniformly, so they agree."""
    import torch

    from ..evaluate import evaluate_split
    from ..train.run import build_model

    if _skip(ctx, variants):
        return Outcome()
    task = ctx.task()
    cfg = ctx.config
    torch.manual_seed(cfg.seed)
    model, _ = build_model({"arch": cfg.arch, **cfg.given_model_options()}, task)
    loss = evaluate_split(model, task, split, max_examples=max_examples)["loss"]
    return Outcome(metrics={"initial loss": loss, "ln V": math.log(task.tokenizer.vocab_size)})


# ---------------------------------------------------------------------- nanoGPT side by side
NANOGPT_ENV = "SCRATCHFORMER_NANOGPT"
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py")


def nanogpt_command(iters: int, threads: int) -> list[str]:
    """nanoGPT's own train.py with its shakespeare_char config, shrunk as its README does for a CPU."""
    return ["train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
            "--log_interval=50", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
            f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0", "--out_dir=out"]


def check_nanogpt_checkout(checkout: str | os.PathLike) -> Path:
    """ConfigError unless ``checkout`` holds the nanoGPT files the comparison runs."""
    checkout = Path(checkout)
    missing = [f for f in NANOGPT_FILES if not (checkout / f).is_file()]
    if missing:
        raise ConfigError(f"--nanogpt {str(checkout)!r} is not a nanoGPT checkout: it lacks {', '.join(missing)}")
    return checkout


def run_nanogpt(checkout: str | os.PathLike, iters: int = 2000) -> dict[str, Any]:
    """Run a nanoGPT checkout's train.py on the bundled tiny Shakespeare in a scratch copy of its
    needed files (the checkout is not written to, nothing is downloaded).

    Returns ``{"wall_s", "val_loss", "train_loss", "iters"}``: wall time of train.py, the last
    evaluation it printed.

    Raises:
        ConfigError: ``checkout`` lacks one of nanoGPT's files, or its train.py fails.
    """
    from ..tasks.text import resolve_data_path

    checkout = check_nanogpt_checkout(checkout)
    with tempfile.TemporaryDirectory(prefix="nanogpt-") as tmp:
        work = Path(tmp)
        for f in NANOGPT_FILES:
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(checkout / f, work / f)
        data = work / "data" / "shakespeare_char"
        shutil.copy(resolve_data_path("bundled:tinyshakespeare"), data / "input.txt")  # present: no download
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        prep = subprocess.run([sys.executable, "prepare.py"], cwd=data, capture_output=True, text=True, env=env)
        if prep.returncode:
            raise ConfigError(f"nanoGPT's prepare.py failed: {prep.stderr.strip().splitlines()[-1:]}")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *nanogpt_command(iters, 0)], cwd=work, capture_output=True, text=True,
                              env=env)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise ConfigError(f"nanoGPT's train.py failed: {proc.stderr.strip().splitlines()[-1:]}")
    evals = [line for line in proc.stdout.splitlines() if line.startswith("step ") and "val loss" in line]
    last = evals[-1]  # "step 2000: train loss 1.7, val loss 1.88"
    train_loss = float(last.split("train loss")[1].split(",")[0])
    val_loss = float(last.split("val loss")[1].strip())
    return {"wall_s": wall, "val_loss": val_loss, "train_loss": train_loss, "iters": iters}


@register_evaluation("nanogpt_reference", "experiment", "nanoGPT's wall time for the same loss, side by side")
def nanogpt_reference(ctx: ExperimentContext, variant: str, stored: dict[str, float] | None = None,
                      target_loss: float = 1.886, iters: int = 2000) -> Section:
    """Compare ``variant``'s training time with nanoGPT's.

    With ``--nanogpt DIR`` (or $SCRATCHFORMER_NANOGPT) nanoGPT's own train.py runs here, now, on the
    same machine; otherwise the stored figures (seconds by CPU vendor) stand in, named as such.
    Metrics: "ours s" (median training time), "nanoGPT s", "time ratio", "ours val loss".
    """
    from .report import fmt

    results = []
    for key, run_dir in ctx.run_dirs.items():
        if key.split("/")[0] != variant:
            continue
        data = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        results.append((data["elapsed_s"], data["splits"]["val"]["loss"]))
    if not results:
        raise ConfigError(f"nanogpt_reference: no runs of variant {variant!r}")
    results.sort()
    ours_s, ours_loss = results[len(results) // 2]
    checkout = os.environ.get(NANOGPT_ENV)
    from .runner import machine_info

    cpu = machine_info()["cpu"]
    if checkout and not ctx.quick:
        ref = run_nanogpt(checkout, iters)
        ref_s, how = ref["wall_s"], (f"measured now on this machine ({cpu}): nanoGPT's train.py, {iters} iterations, "
                                     f"val loss {fmt(ref['val_loss'])}")
    else:
        stored = stored or {}
        vendor = "AMD" if "AMD" in cpu.upper() else "Intel"
        match = [(k, v) for k, v in stored.items() if vendor.lower() in k.lower()]
        name, ref_s = match[0] if match else next(iter(stored.items()), ("none", math.nan))
        ref = {"val_loss": target_loss}
        how = (f"the stored figure for {name} (this machine: {cpu}); pass `--nanogpt DIR` with a nanoGPT checkout "
               "to measure both here, in one sitting")
    ratio = ours_s / ref_s if ref_s else math.nan
    met = ours_loss <= target_loss and ratio <= 0.5
    markdown = "\n".join([
        f"nanoGPT reference: {how}.",
        "",
        "| | wall time s | val loss |",
        "|---|---:|---:|",
        f"| nanoGPT (4 layers, 4 heads, width 128, context 64, batch 12, {iters} iterations) | {fmt(ref_s)} "
        f"| {fmt(ref['val_loss'])} |",
        f"| scratchformer `{variant}` (median seed) | {fmt(ours_s)} | {fmt(ours_loss)} |",
        "",
        f"Time ratio {fmt(ratio)} (target <= 0.5 with val loss <= {target_loss}): **{'met' if met else 'not met'}**.",
    ])
    return Section(title="Against nanoGPT", markdown=markdown,
                   metrics={"ours s": ours_s, "nanoGPT s": ref_s, "time ratio": ratio, "ours val loss": ours_loss})
