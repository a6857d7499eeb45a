"""Training-step speed of scratchformer's GPT against a plain PyTorch GPT of the same shape,
and against nanoGPT's own model.py (``--nanogpt DIR``).

One training step = forward + loss + backward + gradient clipping (when the
trainer clips by default) + optimizer step + zero_grad, timed with
``time.perf_counter`` around the whole step (CPU: every op is synchronous).
The scratchformer side is what a user of the trainer gets by default: the
model as built, its Linear kernels measured (``nn.linear.linear_kernels`` with
``TrainConfig``'s default backend), the default optimizer built by the
trainer's factory with ``TrainConfig``'s defaults (``--optim`` changes only the
``optim`` section's rows). Both sides see the same batches of tiny Shakespeare
characters, the same number of threads and float32. Variants are interleaved round by
round (in rotating order) so that machine noise hits them alike; each figure
is the median over all timed steps, and each ratio also comes with the spread
of the per-round ratios.

Sections (all run by default):

- ``speed``: scratchformer eager / compiled vs baseline eager / compiled;
- ``nanogpt`` (with ``--nanogpt DIR``, a checkout of karpathy/nanoGPT the user
  provides; nothing of it is copied here): scratchformer's default step vs
  nanoGPT's ``model.py`` ``GPT`` (its ``GPTConfig`` defaults besides the shape)
  with the optimizer its ``configure_optimizers`` builds (train.py's default
  weight decay and betas), both clipping gradients at 1.0 as both trainers do;
- ``changes``: the foundation's GPT, then each speed change in turn, vs the baseline;
- ``dtype``: scratchformer eager, float32 vs bfloat16 autocast;
- ``optim``: scratchformer eager with AdamW's for-loop / foreach / fused step;
- ``scaling``: context 64 ... 2048, ``attn_impl`` reference vs fused: step
  time (interleaved in this process) and peak memory (a fresh subprocess per
  configuration).

Peak memory is how far the process's peak resident set size (VmHWM, reset
just before the first step through /proc/self/clear_refs) rises above its
resident size before the first of two training steps, in a fresh process per
configuration (Linux only). It therefore includes gradients and AdamW's two state tensors
per parameter (about 3 x 3.3 MB here) besides activations, and it is an upper
bound on what the step needed (freed memory that malloc kept still counts).

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --threads 1   # full, about 4 minutes
    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --quick        # a couple of minutes
    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --quick --sections speed --nanogpt ../nanoGPT

Writes ``benchmarks/out/bench_train.json`` and ``benchmarks/out/bench_train.md``
(the markdown is what docs/results.md "Training speed" pastes verbatim).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from baseline_gpt import BaselineGPT, baseline_optimizer  # noqa: E402

import scratchformer.models.gpt as gpt_module  # noqa: E402
from scratchformer.models import GPT, GPTConfig  # noqa: E402
from scratchformer.nn.linear import TunedLinear, cpu_model, keep_if_faster, linear_kernels  # noqa: E402
from scratchformer.nn.norm import LayerNorm, layer_norm_formula  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "src/scratchformer/data/tinyshakespeare.txt"
SECTIONS = ("speed", "nanogpt", "changes", "optim", "dtype", "scaling")
SHAPE = dict(n_layer=4, n_head=4, d_model=128)
LR, WEIGHT_DECAY = 1e-3, 0.1


# --------------------------------------------------------------------------- data
def load_corpus(path: Path) -> tuple[torch.Tensor, int]:
    """The corpus as one long tensor of character ids (a plain sorted char map; 65 symbols)."""
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = torch.zeros(max(map(ord, chars)) + 1, dtype=torch.long)
    lookup[[ord(c) for c in chars]] = torch.arange(len(chars))
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()  # one code point each
    return lookup[codes], len(chars)


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) inputs
    y: torch.Tensor  # (B, T) next tokens, for the baseline (nanoGPT convention)
    mask: torch.Tensor  # (B, T) all ones, as the lm task's collate gives it


def make_batches(data: torch.Tensor, n: int, batch: int, context: int, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=g)
        x = torch.stack([data[s : s + context] for s in starts.tolist()])
        y = torch.stack([data[s + 1 : s + context + 1] for s in starts.tolist()])
        out.append(Batch(x, y, torch.ones_like(x)))
    return out


# --------------------------------------------------------------------------- models
def scratchformer_model(vocab: int, context: int, attn_impl: str = "fused", seed: int = 0, kernels: bool = True) -> GPT:
    """The GPT as the trainer prepares it: built, then its Linear kernels applied with the
    trainer's default backend (``kernels=False``: plain ``nn.Linear``)."""
    from scratchformer.train.config import TrainConfig

    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, max_len=context, attn_impl=attn_impl, dropout=0.0, **SHAPE)
    model = GPT(cfg)
    if kernels:
        linear_kernels(model, TrainConfig().linear_backend or "auto")
    return model


def nanogpt_module(directory: Path):
    """nanoGPT's model.py, imported from the user's checkout ``directory``."""
    path = Path(directory) / "model.py"
    if not path.is_file():
        raise SystemExit(f"--nanogpt {directory}: no model.py there; pass a checkout of karpathy/nanoGPT")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_model_and_optimizer(module, vocab: int, context: int, seed: int = 0):
    """nanoGPT's GPT at the benchmark's shape (its GPTConfig defaults otherwise) and the AdamW its
    ``configure_optimizers`` builds with train.py's defaults (weight decay 0.1, betas (0.9, 0.95))."""
    torch.manual_seed(seed)
    cfg = module.GPTConfig(block_size=context, vocab_size=vocab, n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"],
                           n_embd=SHAPE["d_model"], dropout=0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints parameter counts
        model = module.GPT(cfg)
        opt = model.configure_optimizers(0.1, LR, (0.9, 0.95), "cpu")
    return model, opt


def baseline_model(vocab: int, context: int, seed: int = 0) -> BaselineGPT:
    torch.manual_seed(seed)
    return BaselineGPT(vocab, SHAPE["d_model"], SHAPE["n_head"], SHAPE["n_layer"], context)


def scratchformer_optimizer(model: torch.nn.Module, impl: str = "default") -> torch.optim.Optimizer:
    """What the trainer builds: ``build_optimizer(TrainConfig().optimizer, ...)`` (AdamW, decayed
    Linear weights + undecayed rest). ``impl`` picks AdamW's step: "default" (what the trainer
    passes: nothing), "for_loop", "foreach" or "fused"."""
    from scratchformer.train.config import TrainConfig
    from scratchformer.train.optim import build_optimizer

    flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "for_loop": {"foreach": False}}[impl]
    return build_optimizer(TrainConfig().optimizer, model, lr=LR, weight_decay=WEIGHT_DECAY, **flags)


def default_clip() -> float:
    """The trainer's default gradient clipping (``TrainConfig().grad_clip``; 0: none)."""
    from scratchformer.train.config import TrainConfig

    return TrainConfig().grad_clip


def make_step(kind: str, model, opt, compiled: bool = False, autocast: bool = False,
              clip: float = 0.0) -> Callable[[Batch], float]:
    """A closure running one full training step on a batch; returns the loss. ``kind``:
    "scratchformer", "baseline" or "nanogpt"; ``clip`` > 0 clips the gradient norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "scratchformer":
        fn = model.loss
        if compiled:
            fn = torch.compile(fn)

        def loss_of(b: Batch) -> torch.Tensor:
            return fn(b.x, b.x, b.mask)  # labels = input_ids (HF convention; the model shifts)

    elif kind == "nanogpt":
        fn = torch.compile(model) if compiled else model

        def loss_of(b: Batch) -> torch.Tensor:
            return fn(b.x, b.y)[1]  # (logits, loss)

    else:
        fn = torch.compile(model) if compiled else model

        def loss_of(b: Batch) -> torch.Tensor:
            return fn(b.x, b.y)

    # as the trainer does after a run's first step: the Linear kernels measured one product at a time
    # are kept only if the whole forward and backward pass is faster with them (nn.linear.keep_if_faster)
    tuners = {id(m.tuner): m.tuner for m in model.modules() if isinstance(m, TunedLinear)}
    unchecked = [] if compiled else list(tuners.values())  # a compiled step keeps the kernels it traced

    def forward_backward(b: Batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss_of(b).backward()

    def step(b: Batch) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(b)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        while unchecked:
            keep_if_faster(unchecked.pop(), functools.partial(forward_backward, b))
            opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


# --------------------------------------------------------------------------- timing
def interleaved(steps: dict[str, Callable[[Batch], float]], batches: list[Batch], warmup: int, rounds: int, per_round: int):
    """Warm each variant up, then time ``rounds`` x ``per_round`` steps of each, interleaved
    round by round with a rotating order. Returns {name: [seconds per step]} and
    {name: [median seconds per round]}."""
    names = list(steps)
    i = 0
    for name in names:
        for _ in range(warmup):
            steps[name](batches[i % len(batches)])
            i += 1
    times: dict[str, list[float]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            ts = []
            for k in range(per_round):
                b = batches[(r * per_round + k) % len(batches)]
                t0 = time.perf_counter()
                steps[name](b)
                ts.append(time.perf_counter() - t0)
            times[name] += ts
            round_medians[name].append(statistics.median(ts))
    return times, round_medians


def summarize(times, round_medians, tokens_per_step: int, pairs: dict[str, tuple[str, str]]):
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_ms": 1e3 * med, "tokens_per_s": tokens_per_step / med, "steps": len(ts)}
    ratios = {}
    for label, (fast, slow) in pairs.items():
        per_round = [s / f for f, s in zip(round_medians[fast], round_medians[slow])]
        q = statistics.quantiles(per_round, n=4) if len(per_round) >= 2 else [per_round[0]] * 3
        ratios[label] = {
            "ratio": statistics.median(times[slow]) / statistics.median(times[fast]),
            "round_min": min(per_round),
            "round_q1": q[0],
            "round_q3": q[2],
            "round_max": max(per_round),
        }
    return rows, ratios


# --------------------------------------------------------------------------- sections
def section_speed(args, data, vocab) -> dict:
    B, T = args.batch, args.context
    batches = make_batches(data, 32, B, T)
    steps = {}
    sf = scratchformer_model(vocab, T)
    steps["scratchformer eager"] = make_step("scratchformer", sf, scratchformer_optimizer(sf))
    bl = baseline_model(vocab, T)
    steps["baseline eager"] = make_step("baseline", bl, baseline_optimizer(bl, LR, WEIGHT_DECAY))
    n_sf = sum(p.numel() for p in sf.parameters())
    n_bl = sum(p.numel() for p in bl.parameters())
    if n_sf != n_bl:
        raise RuntimeError(f"models differ in size: scratchformer {n_sf} vs baseline {n_bl} parameters")
    pairs = {"scratchformer eager / baseline eager": ("scratchformer eager", "baseline eager")}
    if not args.no_compile:
        sfc = scratchformer_model(vocab, T)
        steps["scratchformer compiled"] = make_step("scratchformer", sfc, scratchformer_optimizer(sfc), compiled=True)
        blc = baseline_model(vocab, T)
        steps["baseline compiled"] = make_step("baseline", blc, baseline_optimizer(blc, LR, WEIGHT_DECAY), compiled=True)
        pairs["scratchformer compiled / baseline compiled"] = ("scratchformer compiled", "baseline compiled")
        pairs["scratchformer compiled / scratchformer eager"] = ("scratchformer compiled", "scratchformer eager")
        pairs["baseline compiled / baseline eager"] = ("baseline compiled", "baseline eager")
    t0 = time.perf_counter()
    times, rm = interleaved(steps, batches, args.warmup, args.rounds, args.per_round)
    rows, ratios = summarize(times, rm, B * T, pairs)
    return {"batch": B, "context": T, "parameters": n_sf, "rows": rows, "ratios": ratios, "seconds": time.perf_counter() - t0}


def section_nanogpt(args, data, vocab) -> dict:
    """scratchformer's default training step vs nanoGPT's model.py + configure_optimizers, interleaved."""
    B, T = args.batch, args.context
    batches = make_batches(data, 32, B, T, seed=5)
    module = nanogpt_module(args.nanogpt)
    clip = default_clip()
    sf = scratchformer_model(vocab, T)
    ng, ng_opt = nanogpt_model_and_optimizer(module, vocab, T)
    steps = {
        "scratchformer (trainer defaults)": make_step("scratchformer", sf, scratchformer_optimizer(sf), clip=clip),
        "nanoGPT model.py": make_step("nanogpt", ng, ng_opt, clip=1.0),  # train.py's grad_clip default
    }
    times, rm = interleaved(steps, batches, args.warmup, args.rounds, args.per_round)
    pairs = {"scratchformer / nanoGPT": ("scratchformer (trainer defaults)", "nanoGPT model.py")}
    rows, ratios = summarize(times, rm, B * T, pairs)
    return {"batch": B, "context": T, "rows": rows, "ratios": ratios, "clip": clip,
            "parameters": {"scratchformer": sum(p.numel() for p in sf.parameters()),
                           "nanoGPT": sum(p.numel() for p in ng.parameters())}}


def section_dtype(args, data, vocab) -> dict:
    B, T = args.batch, args.context
    batches = make_batches(data, 32, B, T, seed=1)
    steps = {}
    for name, ac in (("float32", False), ("bfloat16 autocast", True)):
        m = scratchformer_model(vocab, T)
        steps[name] = make_step("scratchformer", m, scratchformer_optimizer(m), autocast=ac)
    times, rm = interleaved(steps, batches, args.warmup, args.rounds, args.per_round)
    rows, ratios = summarize(times, rm, B * T, {"bfloat16 autocast / float32 (speed-up)": ("bfloat16 autocast", "float32")})
    return {"rows": rows, "ratios": ratios}


def section_optim(args, data, vocab) -> dict:
    B, T = args.batch, args.context
    batches = make_batches(data, 32, B, T, seed=2)
    steps = {}
    for impl in ("for_loop", "foreach", "fused"):
        m = scratchformer_model(vocab, T)
        steps[f"AdamW {impl}"] = make_step("scratchformer", m, scratchformer_optimizer(m, impl))
    times, rm = interleaved(steps, batches, args.warmup, args.rounds, args.per_round)
    pairs = {
        "fused / for_loop (speed-up)": ("AdamW fused", "AdamW for_loop"),
        "foreach / for_loop (speed-up)": ("AdamW foreach", "AdamW for_loop"),
        "fused / foreach (speed-up)": ("AdamW fused", "AdamW foreach"),
    }
    rows, ratios = summarize(times, rm, B * T, pairs)
    return {"rows": rows, "ratios": ratios}


class FoundationLayerNorm(torch.nn.Module):
    """Stands in for the first LayerNorm (the formula as ten elementwise ops), for ``section_changes``."""

    def __init__(self, ln: torch.nn.Module) -> None:
        super().__init__()
        self.ln = ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_formula(x, self.ln.weight, self.ln.bias, self.ln.eps)


def as_foundation_layernorm(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every LayerNorm of ``model`` for the written-out formula (same parameters)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LayerNorm):
                setattr(parent, name, FoundationLayerNorm(child))
    return model


def keep_full_mask(step: Callable[[Batch], float]) -> Callable[[Batch], float]:
    """Run ``step`` with GPT's all-ones-mask shortcut disabled (the foundation's behaviour)."""

    def wrapped(b: Batch) -> float:
        saved = gpt_module.drop_full_mask
        gpt_module.drop_full_mask = lambda mask: mask
        try:
            return step(b)
        finally:
            gpt_module.drop_full_mask = saved

    return wrapped


def section_changes(args, data, vocab) -> dict:
    """What each speed change is worth: the foundation's GPT, then one change at a time."""
    B, T = args.batch, args.context
    batches = make_batches(data, 32, B, T, seed=4)
    steps = {}
    m = as_foundation_layernorm(scratchformer_model(vocab, T, kernels=False))
    steps["foundation"] = keep_full_mask(make_step("scratchformer", m, scratchformer_optimizer(m)))
    m = scratchformer_model(vocab, T, kernels=False)
    steps["+ fused LayerNorm"] = keep_full_mask(make_step("scratchformer", m, scratchformer_optimizer(m)))
    m = scratchformer_model(vocab, T, kernels=False)
    steps["+ all-ones mask dropped"] = make_step("scratchformer", m, scratchformer_optimizer(m))
    m = scratchformer_model(vocab, T)
    steps["+ measured Linear kernels (default)"] = make_step("scratchformer", m, scratchformer_optimizer(m))
    bl = baseline_model(vocab, T)
    steps["baseline"] = make_step("baseline", bl, baseline_optimizer(bl, LR, WEIGHT_DECAY))
    times, rm = interleaved(steps, batches, args.warmup, args.rounds, args.per_round)
    pairs = {f"{n} / baseline": (n, "baseline") for n in steps if n != "baseline"}
    rows, ratios = summarize(times, rm, B * T, pairs)
    return {"rows": rows, "ratios": ratios}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(args) -> None:
    """Run in a fresh process: two training steps of one (context, attn_impl)
    configuration; print the peak memory they added as JSON.

    Linux: the peak RSS (VmHWM) is reset to the current RSS just before the
    first step (``echo 5 > /proc/self/clear_refs``), so earlier peaks (imports,
    building the model) do not hide the step's; the figure is VmHWM after the
    steps minus VmRSS before them.
    """
    torch.set_num_threads(args.threads)
    data, vocab = load_corpus(DATA)
    batches = make_batches(data, 2, args.batch, args.context, seed=3)
    model = scratchformer_model(vocab, args.context, attn_impl=args.attn_impl)
    step = make_step("scratchformer", model, scratchformer_optimizer(model))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    for b in batches:
        step(b)
    print(json.dumps({"peak_rss_growth_mb": (_status_kib("VmHWM") - before) / 1024}))


def section_scaling(args, data, vocab) -> list[dict]:
    """Per context: reference vs fused step time (interleaved, this process) and
    peak memory (two steps in a fresh process per configuration)."""
    out = []
    B = args.scaling_batch
    for T in args.contexts:
        batches = make_batches(data, 8, B, T, seed=3)
        steps = {}
        for impl in ("reference", "fused"):
            m = scratchformer_model(vocab, T, attn_impl=impl)
            steps[impl] = make_step("scratchformer", m, scratchformer_optimizer(m))
        times, rm = interleaved(steps, batches, args.scaling_warmup, args.scaling_rounds, 1)
        del steps
        for impl in ("reference", "fused"):
            cmd = [sys.executable, __file__, "--_memory-worker", "--context", str(T), "--batch", str(B),
                   "--attn-impl", impl, "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"memory worker failed for context={T} impl={impl}:\n{res.stderr}")
            mem = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_growth_mb"]
            med = statistics.median(times[impl])
            row = {"context": T, "batch": B, "attn_impl": impl, "median_ms": 1e3 * med, "tokens_per_s": B * T / med,
                   "ms_per_1k_tokens": 1e6 * med / (B * T), "peak_rss_growth_mb": mem, "steps": len(times[impl])}
            print(f"  context {T:5d} {impl:9s} {row['median_ms']:9.1f} ms  {mem:8.1f} MB", flush=True)
            out.append(row)
    return out


# --------------------------------------------------------------------------- report
def variant_tables(section: dict, bold: bool) -> list[str]:
    """A section's step-time table and its ratio table, as markdown lines (a blank line after each)."""
    lines = ["| variant | step (ms) | tokens/s |", "|---|---:|---:|"]
    for name, r in section["rows"].items():
        lines.append(f"| {name} | {r['median_ms']:.2f} | {r['tokens_per_s']:,.0f} |")
    lines += ["", "| ratio | speed-up | per-round IQR |", "|---|---:|---:|"]
    mark = "**" if bold else ""
    for name, r in section["ratios"].items():
        lines.append(f"| {name} | {mark}{r['ratio']:.2f}x{mark} | {r['round_q1']:.2f}-{r['round_q3']:.2f} |")
    return lines + [""]


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Measured with `{report['command']}` on {env['cpu']} (torch threads: {env['threads']}), torch {env['torch']}, "
        f"Python {env['python']}, 1-minute load average {env['load_average_before'][0]:.1f} before and "
        f"{env['load_average_after'][0]:.1f} after (other jobs shared the machine when above 0). "
        "float32 unless stated. Each figure is the median training-step time "
        "(forward + loss + backward + AdamW step + zero_grad; gradient clipping where stated); variants are "
        "interleaved round by round. "
        "Ratios are speed-ups (tokens/s of the first over the second); the range is the interquartile "
        "range of per-round ratios.",
        "",
    ]
    if "speed" in report:
        s = report["speed"]
        lines += [
            f"**GPT {SHAPE['n_layer']} layers, {SHAPE['n_head']} heads, width {SHAPE['d_model']}, context {s['context']}, "
            f"batch {s['batch']}, {s['parameters']:,} parameters, tiny Shakespeare characters (vocab 65).** "
            "scratchformer: the trainer's defaults (its optimizer factory's AdamW, fused (one kernel per step) as the trainer builds it by default; Linear kernels "
            "measured on this machine, see `scratchformer.nn.linear`); baseline: `torch.optim.AdamW` defaults and "
            "`nn.Linear` (`F.linear`). Neither clips gradients here. Both float32.",
            "",
        ]
        lines += variant_tables(s, bold=True)
        fresh = report.get("fresh_process_ratios")
        if fresh:
            lines += [
                f"The eager ratio again in {len(fresh)} fresh processes, one after another (quick settings; on this "
                f"virtual machine it drifts with the host's state): {', '.join(f'{r:.2f}x' for r in fresh)}; "
                f"median **{statistics.median(fresh):.2f}x**, range {min(fresh):.2f}-{max(fresh):.2f}x.",
                "",
            ]
    if "nanogpt" in report:
        s = report["nanogpt"]
        lines += [
            f"**Against nanoGPT's own `model.py`** (the user's checkout, imported; same shape, context {s['context']}, "
            f"batch {s['batch']}; nanoGPT {s['parameters']['nanoGPT']:,} parameters, scratchformer "
            f"{s['parameters']['scratchformer']:,}): each side's defaults, scratchformer's trainer step vs nanoGPT's "
            "`GPT` with the AdamW its `configure_optimizers` builds; both clip gradients at "
            f"{s['clip']:g} as both trainers do by default.",
            "",
            *variant_tables(s, bold=True),
        ]
    for key, title in (("changes", "Where the speed-up comes from (eager; each row adds one change to the one above)"),
                       ("optim", "AdamW implementation (scratchformer eager)"), ("dtype", "bfloat16 autocast vs float32 (scratchformer eager)")):
        if key in report:
            s = report[key]
            lines += [f"**{title}**", "", *variant_tables(s, bold=False)]
    if "scaling" in report:
        rows = report["scaling"]
        lines += [
            f"**Context-length scaling** (scratchformer GPT, batch {rows[0]['batch']}, eager; `reference` writes "
            "attention out and materialises the (B, H, T, T) scores, `fused` calls SDPA with is_causal). Step time: "
            f"median of {rows[0]['steps']} steps, the two paths interleaved. Peak memory: growth of the peak RSS over "
            "two training steps in a fresh process per row (includes gradients and AdamW state, about 10 MB).",
            "",
            "| context | impl | step (ms) | ms / 1k tokens | peak memory growth (MB) |",
            "|---:|---|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(f"| {r['context']} | {r['attn_impl']} | {r['median_ms']:.1f} | {r['ms_per_1k_tokens']:.1f} | {r['peak_rss_growth_mb']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def fresh_process_ratios(args) -> list[float]:
    """The eager speed ratio (scratchformer / baseline), once per fresh process (the quick settings)."""
    ratios = []
    for i in range(args.processes):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--sections", "speed", "--no-compile", "--quick", "--processes", "0",
                   "--threads", str(args.threads), "--batch", str(args.batch), "--context", str(args.context),
                   "--out-dir", tmp]
            subprocess.run(cmd, check=True, capture_output=True)
            report = json.loads((Path(tmp) / "bench_train.json").read_text())
            ratios.append(report["speed"]["ratios"]["scratchformer eager / baseline eager"]["ratio"])
        print(f"  fresh process {i + 1}/{args.processes}: {ratios[-1]:.3f}x", flush=True)
    return ratios


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a couple of minutes: fewer steps and rounds, no compiled rows, contexts 64 and 256, "
                   "one fresh process")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--nanogpt", type=Path, default=None, metavar="DIR",
                   help="a checkout of karpathy/nanoGPT: adds the 'nanogpt' section (its model.py and "
                   "configure_optimizers against scratchformer's default training step)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--per-round", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--contexts", type=int, nargs="+", default=None,
                   help="scaling section contexts (default 64 ... 2048; --quick: 64 256)")
    p.add_argument("--scaling-batch", type=int, default=2)
    p.add_argument("--scaling-warmup", type=int, default=None)
    p.add_argument("--scaling-rounds", type=int, default=None)
    p.add_argument("--processes", type=int, default=None,
                   help="repeat the eager speed ratio in this many fresh processes (0: skip); on a virtual machine "
                   "the ratio drifts with the host's state, so one process is one sample; default 3, --quick 1)")
    p.add_argument("--out-dir", type=Path, default=HERE / "out")
    # internal: the peak memory of one scaling configuration, in a fresh process
    p.add_argument("--_memory-worker", dest="memory_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--attn-impl", default="fused", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nanogpt is None:
        if "nanogpt" in args.sections and "--sections" in (sys.argv if argv is None else argv):
            p.error("--sections nanogpt needs --nanogpt DIR (a checkout of karpathy/nanoGPT)")
        args.sections = [s for s in args.sections if s != "nanogpt"]
    quick = args.quick
    defaults = dict(warmup=(3 if quick else 5), rounds=(6 if quick else 15), per_round=(5 if quick else 10),
                    scaling_warmup=1, scaling_rounds=2 if quick else 4, processes=1 if quick else 3,
                    contexts=[64, 256] if quick else [64, 128, 256, 512, 1024, 2048])
    if quick:
        args.no_compile = True
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        memory_worker(args)
        return
    torch.set_num_threads(args.threads)
    data, vocab = load_corpus(DATA)
    command = "PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version()},
    }
    report["environment"]["load_average_before"] = os.getloadavg()
    t_start = time.perf_counter()
    for section in ("speed", "nanogpt", "changes", "optim", "dtype"):
        if section in args.sections:
            print(f"[{section}]", flush=True)
            fn = {"speed": section_speed, "nanogpt": section_nanogpt, "changes": section_changes,
                  "optim": section_optim, "dtype": section_dtype}[section]
            report[section] = fn(args, data, vocab)
            for name, r in report[section]["rows"].items():
                print(f"  {name:28s} {r['median_ms']:8.2f} ms  {r['tokens_per_s']:10,.0f} tokens/s", flush=True)
            for name, r in report[section]["ratios"].items():
                print(f"  {name:45s} {r['ratio']:.3f}x  (per-round IQR {r['round_q1']:.2f}-{r['round_q3']:.2f})", flush=True)
    if "scaling" in args.sections:
        print("[scaling]", flush=True)
        report["scaling"] = section_scaling(args, data, vocab)
    if "speed" in args.sections and args.processes:
        print("[fresh processes]", flush=True)
        report["fresh_process_ratios"] = fresh_process_ratios(args)
    report["total_seconds"] = time.perf_counter() - t_start
    report["environment"]["load_average_after"] = os.getloadavg()
    md = markdown(report)
    atomic_write(args.out_dir / "bench_train.json", json.dumps(report, indent=2) + "\n")
    atomic_write(args.out_dir / "bench_train.md", md)
    print()
    print(md)
    print(f"total {report['total_seconds']:.0f} s; wrote {args.out_dir / 'bench_train.json'} and {args.out_dir / 'bench_train.md'}")


if __name__ == "__main__":
    main()
