"""Run the README's main job (`scratchformer train`, no arguments) for several
seeds and tabulate what it reaches and how long it takes.

    python benchmarks/default_run.py [--seeds 0 1 2]

Prints a markdown table and writes benchmarks/out/default_run.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratchformer.nn.linear import cpu_model

OUT = Path(__file__).resolve().parent / "out"


def run(seed: int, workdir: Path) -> dict:
    run_dir = workdir / f"seed{seed}"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "scratchformer", "train", f"seed={seed}", "--run-dir", str(run_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "CI": "true"},
    )
    wall = time.perf_counter() - start
    results = json.loads((run_dir / "results.json").read_text())
    return {"seed": seed, "wall_s": wall, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(seed, Path(tmp)) for seed in args.seeds]
    lines = [
        f"`scratchformer train seed=S` on {cpu_model()} with {os.cpu_count()} CPUs "
        f"(1-minute load average {load_before:.1f} before), via `python benchmarks/default_run.py`.",
        "",
        "| seed | test exact match | test token accuracy | test loss | val exact match | training (s) | wall time (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["results"]["splits"]
        test, val = m.get("test", {}), m.get("val", {})
        lines.append(
            f"| {r['seed']} | {100 * test.get('exact_match', float('nan')):.2f}% "
            f"| {100 * test.get('token_accuracy', float('nan')):.2f}% | {test.get('loss', float('nan')):.5f} "
            f"| {100 * val.get('exact_match', float('nan')):.2f}% "
            f"| {r['results']['elapsed_s']:.1f} | {r['wall_s']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    OUT.mkdir(exist_ok=True)
    payload = {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_before": load_before, "runs": rows}
    (OUT / "default_run.json").write_text(json.dumps(payload, indent=2) + "\n")
    (OUT / "default_run.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
