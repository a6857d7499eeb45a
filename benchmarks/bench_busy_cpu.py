"""The main job on a busy CPU: `scratchformer train` alone and beside one CPU-bound process.

    python benchmarks/bench_busy_cpu.py [--steps 300] [--repeats 2] [--settings default today passive]

Each setting runs the default job (`scratchformer train`, the README's main
job, cut to ``--steps``) in a fresh process, first on an otherwise idle
machine, then while one other process spins on a core (a Python busy loop,
the "CPU hog"). Settings:

- ``default``: what the command does by itself (``scratchformer.cpu_policy``:
  a short OpenMP spin before a waiting thread sleeps);
- ``today``: GNU OpenMP's own default (``GOMP_SPINCOUNT=300000``), what the
  command did before the policy;
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once);
- ``one-thread``: ``train.threads=1``.

Prints a markdown table (training time idle and with the hog, the ratio, and
the idle time relative to ``today``) and writes
benchmarks/out/bench_busy_cpu.{json,md}. The goal (issue 11): with the hog at
most 1.6x the idle time, and idle within 5% of ``today``. Run it on an
otherwise idle machine: other load changes both columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratchformer.io import atomic_write_text

OUT = Path(__file__).resolve().parent / "out"
SETTINGS = {
    "default": ({}, []),
    "today": ({"GOMP_SPINCOUNT": "300000"}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "one-thread": ({}, ["train.threads=1"]),
}
POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")


def cpu_name() -> str:
    from scratchformer.nn.linear import cpu_model  # the one reader of /proc/cpuinfo

    return cpu_model()


def train_once(setting: str, steps: int, workdir: Path, index: int) -> dict:
    """One fresh `scratchformer train` process; returns its training and wall seconds."""
    extra_env, extra_args = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}  # the setting alone decides
    env.update(extra_env, CI="true")
    run_dir = workdir / f"{setting}-{index}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scratchformer", "train", f"train.steps={steps}",
                    "train.eval_every=0", "train.checkpoint_every=0", *extra_args, "--run-dir", str(run_dir)],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    results = json.loads((run_dir / "results.json").read_text())
    return {"train_s": results["elapsed_s"], "wall_s": wall}


def start_hog() -> subprocess.Popen:
    """One CPU-bound process (a Python busy loop) that runs until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the default job (default 300)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting and condition (the median is shown)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for setting in args.settings:
            idle = [train_once(setting, args.steps, work, i) for i in range(args.repeats)]
            hog = start_hog()
            try:
                time.sleep(0.5)
                busy = [train_once(setting, args.steps, work, args.repeats + i) for i in range(args.repeats)]
            finally:
                hog.kill()
                hog.wait()
            rows[setting] = {
                "idle_train_s": statistics.median(r["train_s"] for r in idle),
                "busy_train_s": statistics.median(r["train_s"] for r in busy),
                "idle_wall_s": statistics.median(r["wall_s"] for r in idle),
                "busy_wall_s": statistics.median(r["wall_s"] for r in busy),
                "runs": {"idle": idle, "busy": busy},
            }
            r = rows[setting]
            r["ratio"] = r["busy_train_s"] / r["idle_train_s"]
            print(f"{setting}: idle {r['idle_train_s']:.1f} s, with a CPU hog {r['busy_train_s']:.1f} s "
                  f"({r['ratio']:.2f}x)", file=sys.stderr, flush=True)
    today = rows.get("today", {}).get("idle_train_s")
    lines = [
        f"`scratchformer train train.steps={args.steps}` alone and beside one CPU-bound process, on {cpu_name()} "
        f"with {os.cpu_count()} CPUs (1-minute load average {load_before:.1f} before), median of {args.repeats} "
        "fresh processes each, via `python benchmarks/bench_busy_cpu.py`. Goal: with the hog at most 1.6x idle; "
        "idle within 5% of `today`.",
        "",
        "| setting | training idle (s) | training with a CPU hog (s) | ratio | idle vs today | wall idle / with hog (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setting, r in rows.items():
        vs_today = f"{r['idle_train_s'] / today:.2f}x" if today else "-"
        lines.append(f"| {setting} | {r['idle_train_s']:.1f} | {r['busy_train_s']:.1f} | {r['ratio']:.2f}x "
                     f"| {vs_today} | {r['idle_wall_s']:.1f} / {r['busy_wall_s']:.1f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    report = {"cpu": cpu_name(), "cpus": os.cpu_count(), "load_before": load_before, "steps": args.steps,
              "repeats": args.repeats, "settings": rows}
    atomic_write_text(args.out_dir / "bench_busy_cpu.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out_dir / "bench_busy_cpu.md", md)


if __name__ == "__main__":
    main()
