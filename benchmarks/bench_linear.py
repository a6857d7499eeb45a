"""The matmul under every Linear: torch's ``F.linear`` against oneDNN, side by side.

Two measurements, float32, the CPU's default thread count (or ``--threads``):

- **Training shapes** (GPT 4 layers x width 128, 768 rows = batch 12 x
  context 64): forward + backward of one Linear, ``F.linear`` vs oneDNN
  (``scratchformer.nn.linear.onednn_autograd_linear``); GFLOP/s counting the
  three products (6 N K M flops), and the kernel ``KernelTuner`` (the
  default) chooses for that shape on this machine.
- **Decoding at the GPT-2 124M shape** (one row): the 48 block matmuls and
  the LM head in sequence, so each weight comes from memory as in a decoding
  step; GB/s of weights read, ``F.linear`` vs oneDNN vs ``row_linear`` (the
  one-row kernel batch-1 decoding uses: ``F.embedding_bag`` over an (in, out)
  copy of each weight, one bag per thread).

Variants alternate round by round; each figure is the median. Ratios are
speed over ``F.linear``'s.

Run:  PYTHONPATH=src .venv/bin/python benchmarks/bench_linear.py
Writes benchmarks/out/bench_linear.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from scratchformer.nn.linear import (  # noqa: E402
    KernelTuner,
    cpu_model,
    onednn_autograd_linear,
    onednn_available,
    onednn_linear,
    row_linear,
    row_linear_parts,
)

TRAIN_SHAPES = [(768, 128, 384), (768, 128, 128), (768, 128, 512), (768, 512, 128)]  # (N rows, K in, M out)
GPT2 = dict(C=768, F=3072, layers=12, V=50257)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleave(variants: dict, rounds: int, repeats: int) -> dict[str, float]:
    for fn in variants.values():  # warm-up (oneDNN builds its kernel on the first call)
        fn()
    per = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            per[name].append(median_time(fn, repeats))
    return {name: statistics.median(ts) for name, ts in per.items()}


def training_rows(rounds: int) -> list[dict]:
    rows = []
    for N, K, M in TRAIN_SHAPES:
        x = torch.randn(N, K, requires_grad=True)
        w = torch.randn(M, K, requires_grad=True)
        b = torch.randn(M, requires_grad=True)
        dy = torch.randn(N, M)

        def torch_step():
            F.linear(x, w, b).backward(dy)

        def onednn_step():
            onednn_autograd_linear(x, w, b).backward(dy)

        t = interleave({"torch": torch_step, "onednn": onednn_step}, rounds, 20)
        flops = 6 * N * K * M
        rows.append({"shape": f"({N}, {K}) x ({K}, {M})", "torch_gflops": flops / t["torch"] / 1e9,
                     "onednn_gflops": flops / t["onednn"] / 1e9, "ratio": t["torch"] / t["onednn"],
                     "chosen": KernelTuner().kernel_for(x, w, b)})
    return rows


def decoding_row(rounds: int) -> dict:
    C, Fw = GPT2["C"], GPT2["F"]
    shapes = [(3 * C, C), (C, C), (Fw, C), (C, Fw)] * GPT2["layers"] + [(GPT2["V"], C)]
    weights = [torch.randn(s) for s in shapes]
    copies = [w.t().contiguous() for w in weights]  # (in, out), as decoding keeps them for row_linear
    xs = {C: torch.randn(1, C), Fw: torch.randn(1, Fw)}
    parts = {k: row_linear_parts(k, torch.get_num_threads(), torch.device("cpu")) for k in xs}
    gigabytes = sum(w.numel() for w in weights) * 4 / 1e9

    def torch_pass():
        for w in weights:
            F.linear(xs[w.size(1)], w)

    def onednn_pass():
        for w in weights:
            onednn_linear(xs[w.size(1)], w)

    def row_pass():
        for wt in copies:
            row_linear(xs[wt.size(0)], wt, None, *parts[wt.size(0)])

    with torch.inference_mode():
        t = interleave({"torch": torch_pass, "onednn": onednn_pass, "row": row_pass}, rounds, 5)
    row = {"weights_gb": gigabytes}
    for name in t:
        row |= {f"{name}_ms": 1e3 * t[name], f"{name}_gbs": gigabytes / t[name], f"{name}_ratio": t["torch"] / t[name]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(HERE / "out" / "bench_linear.json"))
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 7)
    if not onednn_available():
        sys.exit("this PyTorch build has no oneDNN linear kernel: nothing to compare")
    if args.threads:
        torch.set_num_threads(args.threads)
    train = training_rows(args.rounds)
    decode = decoding_row(args.rounds)
    command = "PYTHONPATH=src .venv/bin/python benchmarks/bench_linear.py " + " ".join(sys.argv[1:])
    lines = [
        f"Measured with `{command.strip()}` on {cpu_model()}: torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f} at the end. float32; medians of interleaved rounds.",
        "",
        "| Linear forward + backward (training shapes) | F.linear GFLOP/s | oneDNN GFLOP/s | oneDNN / F.linear "
        "| measured choice |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {r['shape']} | {r['torch_gflops']:.0f} | {r['onednn_gflops']:.0f} | **{r['ratio']:.2f}x** "
              f"| {r['chosen']} |" for r in train]
    lines += [
        "",
        "| batch-1 decoding matmuls, GPT-2 124M shape | kernel | time | weights read | speed / F.linear |",
        "|---|---|---:|---:|---:|",
    ]
    for name, label in (("torch", "F.linear"), ("onednn", "oneDNN"), ("row", "row_linear (decoding's)")):
        lines.append(
            f"| 48 block matmuls + LM head ({decode['weights_gb']:.2f} GB of weights) | {label} "
            f"| {decode[name + '_ms']:.1f} ms | {decode[name + '_gbs']:.0f} GB/s | **{decode[name + '_ratio']:.2f}x** |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": command.strip(), "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "python": platform.python_version(), "training": train, "decoding": decode}
    for path, text in ((out, json.dumps(result, indent=2) + "\n"), (out.with_suffix(".md"), md)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
