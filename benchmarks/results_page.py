"""Assemble docs/results.md from the markdown tables the benchmarks wrote.

    python benchmarks/results_page.py

Every figure on the page is pasted from benchmarks/out/*.md, which the
scripts named in each section write; nothing on the page is typed by hand.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"

SECTIONS = [
    ("The default run", "default_run.md",
     "`scratchformer train` with no arguments (the README's main job), once per seed.",
     "python benchmarks/default_run.py"),
    ("Training speed", "bench_train.md",
     "A training step of scratchformer's GPT against a plain nanoGPT-style PyTorch GPT of the same shape; "
     "the context-length table compares the written-out and the fused attention paths. Method: benchmarks/README.md.",
     "python benchmarks/bench_train.py"),
    ("Generation speed", "bench_generate.md",
     "Batch-1 greedy decoding, side by side with Hugging Face `generate` on identical weights.",
     "python benchmarks/bench_generate.py"),
    ("Task generation", "bench_tasks.md",
     "Building each task's examples from scratch.",
     "python benchmarks/bench_tasks.py"),
]


def main() -> None:
    parts = [
        "# Results",
        "",
        "Measured figures. Each section is pasted verbatim from the markdown file its",
        "benchmark wrote (`benchmarks/out/`), by `python benchmarks/results_page.py`;",
        "rerun the command under a section to regenerate its figures.",
    ]
    for title, name, about, command in SECTIONS:
        path = OUT / name
        parts += ["", f"## {title}", "", about, "", f"Command: `{command}`", ""]
        parts.append(path.read_text(encoding="utf-8").rstrip() if path.exists() else "_not measured yet_")
    (ROOT / "docs" / "results.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {ROOT / 'docs' / 'results.md'}")


if __name__ == "__main__":
    main()
