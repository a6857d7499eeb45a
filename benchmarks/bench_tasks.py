"""Time task generation (not a test): prints a table and writes benchmarks/out/bench_tasks.json.

Run: PYTHONPATH=src python benchmarks/bench_tasks.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from scratchformer.nn.linear import cpu_model
from scratchformer.tasks import build_task

SHAKESPEARE = "bundled:tinyshakespeare"

CASES: list[tuple[str, str, dict]] = [
    ("addition_gpt 100k x 3 digits", "addition_gpt", dict(max_digits=3, num_examples=100_000)),
    ("addition_gpt 100k x 1..6 digits", "addition_gpt", dict(min_digits=1, max_digits=6, num_examples=100_000)),
    ("addition_gpt 100k x 4 digits, *", "addition_gpt", dict(max_digits=4, operator="*", num_examples=100_000)),
    ("addition_seq2seq defaults", "addition_seq2seq", {}),
    ("difference_sign defaults", "difference_sign", {}),
    ("regression defaults", "regression", {}),
]


def time_build(name: str, options: dict, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        task = build_task(name, **options)
        times.append(time.perf_counter() - start)
    sizes = {s: len(task.dataset(s)) for s in task.split_names}
    return {"task": name, "options": options, "seconds_best": min(times), "seconds_all": times, "split_sizes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "bench_tasks.json"))
    args = parser.parse_args()

    results = []
    for label, name, options in CASES:
        results.append({"case": label, **time_build(name, options, args.repeats)})
    if os.path.exists(SHAKESPEARE):
        with tempfile.TemporaryDirectory() as cache:
            opts = dict(path=SHAKESPEARE, cache_dir=cache)
            cold = time_build("text_lm", opts, 1)
            warm = time_build("text_lm", opts, args.repeats)
        results.append({"case": "text_lm tinyshakespeare (cold cache)", **cold})
        results.append({"case": "text_lm tinyshakespeare (warm cache)", **warm})

    width = max(len(r["case"]) for r in results)
    for r in results:
        total = sum(r["split_sizes"].values())
        print(f"{r['case']:<{width}}  {r['seconds_best'] * 1000:9.1f} ms  {total:>9,d} examples")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "cpu": cpu_model(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"Measured with `python benchmarks/bench_tasks.py` on {cpu_model()} ({os.cpu_count()} CPUs; "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end; best of {args.repeats}).",
        "",
        "| case | examples | time (ms) |",
        "|---|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['case']} | {sum(r['split_sizes'].values()):,} | {r['seconds_best'] * 1000:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
