"""Assemble docs/results.md from the markdown tables the benchmarks and experiments wrote.

    python benchmarks/results_page.py
    python benchmarks/results_page.py --import-experiment runs/experiments/classify-ladder

Every figure on the page is pasted from benchmarks/out/*.md, which the
scripts named in each section write, or from an experiment's report.md
(``scratchformer experiment NAME`` writes it); nothing on the page is typed
by hand. ``--import-experiment DIR`` first copies a finished full
experiment's report.md, results.json and plots into docs/experiments/NAME/,
where the page takes them from.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
EXPERIMENTS = ROOT / "docs" / "experiments"
EXPERIMENT_ORDER = ["mlp-warmup", "classify-ladder", "addition-seq2seq", "addition-gpt", "shakespeare-char",
                    "text-bpe", "addition-lengthgen"]
"""The tutorials' order; experiments not named here follow alphabetically."""

SECTIONS = [
    ("The default run", "default_run.md",
     "`scratchformer train` with no arguments (the README's main job), once per seed.",
     "python benchmarks/default_run.py"),
    ("The main job on a busy CPU", "bench_busy_cpu.md",
     "`scratchformer train` (shortened) alone and beside one CPU-bound process, under the command's OpenMP "
     "wait policy (`default`: a short spin, `scratchformer.cpu_policy`), GNU OpenMP's own long spin (`today`), "
     "`OMP_WAIT_POLICY=PASSIVE` and `train.threads=1`. Goal: with the hog at most 1.6x idle, idle within 5% of `today`.",
     "python benchmarks/bench_busy_cpu.py"),
    ("Training speed", "bench_train.md",
     "The trainer's default training step of scratchformer's GPT against a plain nanoGPT-style PyTorch GPT of the "
     "same shape and, with `--nanogpt DIR`, against nanoGPT's own model.py and configure_optimizers; the "
     "context-length table compares the written-out and the fused attention paths. Method: benchmarks/README.md.",
     "python benchmarks/bench_train.py --nanogpt DIR"),
    ("The matmul under every Linear", "bench_linear.md",
     "torch's `F.linear` against oneDNN, and, for batch-1 decoding, against `row_linear` (`F.embedding_bag` over "
     "an (in, out) copy of each weight), with the kernel `scratchformer.nn.linear`'s tuner chooses for each shape "
     "by measuring on this machine.",
     "python benchmarks/bench_linear.py"),
    ("Generation speed", "bench_generate.md",
     "Batch-1 greedy decoding, side by side with Hugging Face `generate` on identical weights.",
     "python benchmarks/bench_generate.py"),
    ("Task generation", "bench_tasks.md",
     "Building each task's examples from scratch.",
     "python benchmarks/bench_tasks.py"),
]


def import_experiment(source: Path) -> str:
    """Copy a full experiment's report.md, results.json and plots/*.png into docs/experiments/NAME/."""
    results_path = source / "results.json"
    if not results_path.is_file() or not (source / "report.md").is_file():
        raise SystemExit(f"{source} has no results.json and report.md; run `scratchformer experiment NAME` first")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    if results.get("quick"):
        raise SystemExit(f"{source} holds a --quick run; the results page quotes full experiments only")
    name = results["experiment"]
    dest = EXPERIMENTS / name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "plots").mkdir(parents=True)
    shutil.copy2(source / "report.md", dest / "report.md")
    shutil.copy2(results_path, dest / "results.json")
    for png in sorted((source / "plots").glob("*.png")):
        shutil.copy2(png, dest / "plots" / png.name)
    print(f"imported {source} into {dest}")
    return name


def experiment_reports() -> list[str]:
    """Each imported experiment's report.md, headings one level down and figure links pointing at
    docs/experiments/NAME/, in the tutorials' order."""
    if not EXPERIMENTS.is_dir():
        return []
    names = [d.name for d in EXPERIMENTS.iterdir() if (d / "report.md").is_file()]
    names.sort(key=lambda n: (EXPERIMENT_ORDER.index(n) if n in EXPERIMENT_ORDER else len(EXPERIMENT_ORDER), n))
    parts = []
    for name in names:
        text = (EXPERIMENTS / name / "report.md").read_text(encoding="utf-8").rstrip()
        text = re.sub(r"^(#+) ", r"##\1 ", text, flags=re.MULTILINE)
        text = text.replace("](plots/", f"](experiments/{name}/plots/")
        parts += ["", text]
    return parts


def recorded_cpu(name: str) -> str | None:
    """The CPU model the benchmark's JSON beside ``name`` records (``cpu``, or ``environment.cpu``), if any."""
    path = OUT / Path(name).with_suffix(".json").name
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return None
    env = data.get("environment")
    return data.get("cpu") or (env.get("cpu") if isinstance(env, dict) else None)


def this_cpu() -> str:
    from scratchformer.nn.linear import cpu_model  # the one reader of /proc/cpuinfo

    return cpu_model()


def cpu_line(name: str, command: str) -> str:
    """Which CPU a section's table came from, labelled when it is not this machine's."""
    cpu = recorded_cpu(name)
    if cpu is None:
        return f"CPU: not recorded with this table (rerun `{command}` to record it)."
    if cpu != this_cpu():
        return f"CPU: **{cpu}** (another machine than the one this page was assembled on, {this_cpu()})."
    return f"CPU: {cpu}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import-experiment", metavar="DIR", action="append", default=[],
                        help="copy this finished full experiment's report into docs/experiments/ first")
    args = parser.parse_args()
    for source in args.import_experiment:
        import_experiment(Path(source))
    parts = [
        "# Results",
        "",
        "Measured figures. Each section is pasted verbatim from the markdown file its",
        "benchmark wrote (`benchmarks/out/`), by `python benchmarks/results_page.py`;",
        "rerun the command under a section to regenerate its figures.",
    ]
    for title, name, about, command in SECTIONS:
        path = OUT / name
        parts += ["", f"## {title}", "", about, "", f"Command: `{command}`", "", cpu_line(name, command), ""]
        parts.append(path.read_text(encoding="utf-8").rstrip() if path.exists() else "_not measured yet_")
    reports = experiment_reports()
    if reports:
        parts += ["", "## Experiments", "",
                  "The tutorials' experiments, each one command (`scratchformer experiment NAME`; "
                  "`scratchformer experiment --list`). Each report below is the experiment's own report.md, "
                  "pasted by `python benchmarks/results_page.py --import-experiment runs/experiments/NAME`; "
                  "its command, machine and wall time are at its top.", *reports]
    (ROOT / "docs" / "results.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {ROOT / 'docs' / 'results.md'}")
    update_readme()


def headline(name: str, stop: str | None = None) -> str:
    """The table file ``name``, cut before the first line starting with ``stop``."""
    path = OUT / name
    if not path.exists():
        return "_not measured yet_"
    text = path.read_text(encoding="utf-8").rstrip()
    return text.split("\n" + stop)[0].rstrip() if stop else text


def update_readme() -> None:
    """Replace the README's block between the results markers with the headline tables."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    block = "\n".join([
        start,
        "",
        "**The main job** (`python benchmarks/default_run.py`):",
        "",
        headline("default_run.md"),
        "",
        "**Training step vs a plain nanoGPT-style PyTorch GPT and nanoGPT's own model.py** "
        "(`python benchmarks/bench_train.py --nanogpt DIR`):",
        "",
        cpu_line("bench_train.md", "python benchmarks/bench_train.py --nanogpt DIR"),
        "",
        headline("bench_train.md", "**Where the speed-up"),
        "",
        "**Batch-1 greedy generation vs Hugging Face `generate`** (`python benchmarks/bench_generate.py`):",
        "",
        cpu_line("bench_generate.md", "python benchmarks/bench_generate.py"),
        "",
        headline("bench_generate.md"),
        "",
        "More (context-length scaling of the written-out vs fused attention, optimizer and dtype variants, "
        "task generation): [docs/results.md](docs/results.md).",
        "",
        end,
    ])
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    readme.write_text(before + block + after, encoding="utf-8")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
