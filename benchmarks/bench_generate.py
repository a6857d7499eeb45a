"""Decoding speed: scratchformer's ``generate`` against Hugging Face's on identical weights.

Batch-1 greedy generation of 128 new tokens after a 16-token prompt, on the
CPU, for a small GPT (4 layers, width 128, vocabulary 65) and for the GPT-2
124M shape (random weights), each with and without the key/value cache. The
weights are made once as a ``GPT2LMHeadModel`` and imported with
``gpt2_from_hf``, so both libraries run the same function; the benchmark
also checks that both produce the same tokens.

The headline rows compare float32 with float32. With ``--bf16`` (on by
default; ``--no-bf16`` to skip) each shape gets two extra, labelled rows
with the cache: scratchformer with bfloat16 weights and activations
(``model.to(torch.bfloat16)``) against Hugging Face in float32, and against
Hugging Face also in bfloat16; "same" there compares with that row's HF
tokens, and ``same_as_fp32`` in the JSON says whether our bfloat16 tokens
equal our float32 ones. A bfloat16-vs-float32 ratio measures a
different computation and is not the headline.

The cached float32 rows are then measured again in ``--processes`` fresh
processes (default 3), each a new run of this script, and reported as a
median and range: at the 124M shape, where a step streams half a gigabyte of
weights, the speed differs from process to process on some machines.

Batch-1 decoding with the cache is bound by reading the weights from memory:
each new token reads every matmul weight once (the LM head included). The
benchmark measures the machine's read bandwidth (summing a 0.5 GB float32
tensor, far larger than the caches, all threads, best of several passes, at
the start and at the end) and prints the
float32 bound, bandwidth / bytes of weights read per token, and each row's
tokens/s as a fraction of it.

Run:  PYTHONPATH=src .venv/bin/python benchmarks/bench_generate.py [--repeats 5] [--only small] [--processes 3]
      PYTHONPATH=src .venv/bin/python benchmarks/bench_generate.py --quick   # a couple of minutes
Writes benchmarks/out/bench_generate.json and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "small": dict(vocab_size=65, n_embd=128, n_layer=4, n_head=4, n_positions=256),
    "gpt2-124M": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
}
PROMPT, NEW = 16, 128


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` calls (after one warm-up call), and the last output."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _hf_generate(hf, prompt: torch.Tensor, use_cache: bool) -> torch.Tensor:
    with torch.inference_mode():
        return hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            use_cache=use_cache,
            eos_token_id=None,
            pad_token_id=0,
        )


def read_bandwidth_gbs(gigabytes: float = 0.5, passes: int = 5) -> float:
    """Measured memory read bandwidth (GB/s): summing a float32 tensor of ``gigabytes``, all threads;
    the best of ``passes`` (the figure the hardware can reach, as a decode step at its best would)."""
    x = torch.ones(int(gigabytes * 1e9 / 4))
    x.sum()  # fault the pages in
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one cached batch-1 step reads in float32: every Linear's weight and bias
    (the LM head's whole matrix, tied or not); embeddings contribute one row, ignored."""
    return 4 * sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())


def _row(name: str, dtypes: str, use_cache: bool, t_ours: float, t_hf: float, same: bool, r: int) -> dict:
    return {
        "model": name,
        "dtype": dtypes,
        "use_cache": use_cache,
        "scratchformer_tokens_per_s": NEW / t_ours,
        "hf_tokens_per_s": NEW / t_hf,
        "ratio": t_hf / t_ours,
        "same_tokens": same,
        "repeats": r,
    }


def bench_shape(name: str, repeats: int, caches: tuple[bool, ...], bf16: bool) -> list[dict]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from scratchformer.generate import generate
    from scratchformer.interop.gpt2 import gpt2_from_hf

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**SHAPES[name])).eval()
    ours = gpt2_from_hf(hf).eval()
    prompt = torch.randint(0, SHAPES[name]["vocab_size"], (1, PROMPT))
    bytes_per_token = weight_bytes_per_token(ours)
    rows = []
    fp32_tokens = {}
    for use_cache in caches:
        # without the cache every step re-reads the whole sequence: slow, so fewer repeats. Every row gets one
        # warm-up call: oneDNN builds a kernel the first time it meets a matrix shape (about 0.5 ms each),
        # and without the cache every step brings new shapes
        r = repeats if use_cache else max(1, repeats // 3)
        t_ours, out_ours = timed(lambda: generate(ours, prompt, max_new_tokens=NEW, use_cache=use_cache), r)
        t_hf, out_hf = timed(lambda: _hf_generate(hf, prompt, use_cache), r)
        fp32_tokens[use_cache] = (out_ours, out_hf, t_hf)
        rows.append(_row(name, "fp32/fp32", use_cache, t_ours, t_hf, bool(torch.equal(out_ours, out_hf)), r))
    for row in rows:
        row["weight_bytes_per_token"] = bytes_per_token
    if bf16 and True in fp32_tokens:
        out32, hf_out32, t_hf32 = fp32_tokens[True]
        ours16, hf16 = gpt2_from_hf(hf).eval().to(torch.bfloat16), copy.deepcopy(hf).to(torch.bfloat16)
        t_ours16, out16 = timed(lambda: generate(ours16, prompt, max_new_tokens=NEW), repeats)
        t_hf16, hf_out16 = timed(lambda: _hf_generate(hf16, prompt, True), repeats)
        same32 = bool(torch.equal(out16, out32))
        rows.append(_row(name, "bf16/fp32", True, t_ours16, t_hf32, bool(torch.equal(out16, hf_out32)), repeats))
        rows.append(_row(name, "bf16/bf16", True, t_ours16, t_hf16, bool(torch.equal(out16, hf_out16)), repeats))
        for row in rows[-2:]:
            row["same_as_fp32"] = same32
            row["weight_bytes_per_token"] = bytes_per_token
    return rows


def fresh_process_ratios(name: str, args) -> list[float]:
    """scratchformer / HF for the cached float32 row of ``name``, each in a fresh process."""
    ratios = []
    for i in range(args.processes):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            cmd = [sys.executable, __file__, "--only", name, "--cache", "on", "--no-bf16", "--processes", "0",
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--out", str(out),
                   "--bandwidth", str(args.bandwidth)]
            subprocess.run(cmd, check=True, capture_output=True)
            ratios.append(json.loads(out.read_text())["rows"][0]["ratio"])
        print(f"  {name}: fresh process {i + 1}/{args.processes}: {ratios[-1]:.2f}x", flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true",
                        help="a couple of minutes: cache on only, no bf16 rows, no fresh processes, 2 repeats")
    parser.add_argument("--bandwidth", type=float, default=None, help=argparse.SUPPRESS)  # fresh processes reuse it
    parser.add_argument("--only", choices=sorted(SHAPES), default=None)
    parser.add_argument("--cache", choices=["both", "on", "off"], default="both", help="with/without the KV cache")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=True, help="add the labelled bfloat16 rows (cache on)"
    )
    parser.add_argument(
        "--processes", type=int, default=None,
        help="also measure the cached float32 rows in this many fresh processes (0: skip); the speed of a "
        "memory-bound decode varies from process to process on some machines (default 3; --quick 0)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "bench_generate.json"))
    args = parser.parse_args()
    if args.quick:
        args.cache, args.bf16 = "on", False
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.processes = (0 if args.quick else 3) if args.processes is None else args.processes
    import transformers

    from scratchformer.nn.linear import cpu_model

    if args.threads:
        torch.set_num_threads(args.threads)
    args.bandwidth_given = args.bandwidth is not None
    if args.bandwidth is None:
        args.bandwidth = read_bandwidth_gbs()
    caches = {"both": (True, False), "on": (True,), "off": (False,)}[args.cache]
    rows = []
    names = [args.only] if args.only else list(SHAPES)
    for name in names:
        rows.extend(bench_shape(name, args.repeats, caches, args.bf16))
    spread = {name: fresh_process_ratios(name, args) for name in names} if args.processes else {}
    if not args.bandwidth_given:  # again at the end, keeping the best: a busy moment must not lower the bound
        args.bandwidth = max(args.bandwidth, read_bandwidth_gbs())
    for row in rows:
        bound = args.bandwidth * 1e9 / row["weight_bytes_per_token"]  # tokens/s if only weights were read
        row |= {"fp32_bound_tokens_per_s": bound, "scratchformer_of_bound": row["scratchformer_tokens_per_s"] / bound,
                "hf_of_bound": row["hf_tokens_per_s"] / bound}
    print(f"batch 1, greedy, prompt {PROMPT} + {NEW} new tokens, CPU threads={torch.get_num_threads()}, {cpu_model()}")
    print(f"measured read bandwidth {args.bandwidth:.1f} GB/s")
    print("dtype = ours/HF weights; bf16 rows are extra (a different computation), never the headline")
    print("same = our tokens equal HF's in that row; ours=fp32 = our bf16 tokens equal our fp32 tokens")
    header = f"{'model':<10} {'dtype':<10} {'cache':<6} {'ours tok/s':>11} {'HF tok/s':>10} {'ours/HF':>8} {'same':>5}"
    print(header + f" {'ours=fp32':>9} {'bound':>8} {'ours/bd':>7} {'HF/bd':>6}")
    for row in rows:
        print(
            f"{row['model']:<10} {row['dtype']:<10} {str(row['use_cache']):<6} "
            f"{row['scratchformer_tokens_per_s']:>11.1f} {row['hf_tokens_per_s']:>10.1f} {row['ratio']:>7.2f}x "
            f"{str(row['same_tokens']):>5} {str(row.get('same_as_fp32', '-')):>9} "
            f"{row['fp32_bound_tokens_per_s']:>8.1f} {row['scratchformer_of_bound']:>7.0%} {row['hf_of_bound']:>6.0%}"
        )
    result = {
        "benchmark": "batch-1 greedy generation",
        "prompt_tokens": PROMPT,
        "new_tokens": NEW,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "read_bandwidth_gbs": args.bandwidth,
        "python": platform.python_version(),
        "rows": rows,
        "fresh_process_ratios": spread,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)  # atomic
    lines = [
        f"Measured on {cpu_model()}: batch 1, greedy, {PROMPT}-token prompt + {NEW} new tokens, CPU "
        f"threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the end. dtype is ours/HF "
        "weights: the bf16 rows are a different computation, shown for reference, never the headline. `same`: our "
        "tokens equal HF's; `ours=fp32`: our bf16 tokens equal our fp32 tokens. Each figure is the median of timed "
        "calls after one warm-up call; scratchformer's decoding kernels are measured on this machine "
        "(`DecodeStep`). Measured read bandwidth: "
        f"**{args.bandwidth:.1f} GB/s**; the float32 bound is that divided by the bytes of weights a cached step "
        "reads (every Linear's, the LM head's whole matrix), and `of bound` is a row's tokens/s over it "
        "(meaningful for the cached float32 rows; without the cache a step is compute-bound).",
        "",
        "| model | dtype | cache | scratchformer tok/s | HF tok/s | scratchformer / HF | same | ours=fp32 "
        "| fp32 bound tok/s | scratchformer of bound | HF of bound |",
        "|---|---|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['use_cache']} | {row['scratchformer_tokens_per_s']:.1f} "
            f"| {row['hf_tokens_per_s']:.1f} | **{row['ratio']:.2f}x** | {row['same_tokens']} "
            f"| {row.get('same_as_fp32', '-')} | {row['fp32_bound_tokens_per_s']:.1f} "
            f"| {row['scratchformer_of_bound']:.0%} | {row['hf_of_bound']:.0%} |"
        )
    if spread:
        lines += [
            "",
            f"The cached float32 rows again, each in {args.processes} fresh processes (a memory-bound decode's speed "
            "varies from process to process on this machine; Hugging Face's, which is further from the memory "
            "limit, much less):",
            "",
            "| model | scratchformer / HF per process | median | min | max |",
            "|---|---|---:|---:|---:|",
        ]
        for name, ratios in spread.items():
            each = ", ".join(f"{r:.2f}x" for r in ratios)
            lines.append(f"| {name} | {each} | **{statistics.median(ratios):.2f}x** | {min(ratios):.2f}x | {max(ratios):.2f}x |")
        for name, ratios in spread.items():
            print(f"{name}: fresh processes {', '.join(f'{r:.2f}x' for r in ratios)} (median {statistics.median(ratios):.2f}x)")
    md_tmp = out.with_suffix(".md.tmp")
    md_tmp.write_text("\n".join(lines) + "\n")
    md_tmp.replace(out.with_suffix(".md"))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
