"""Shared test set-up: tiny run configs, a trained tiny run, the command line, registry-driven data.

Fixtures (use them by naming them as test arguments):

- ``tiny_config(*overrides)``: a tiny GPT-addition ``RunConfig`` that trains in
  a second and writes under the test's ``tmp_path`` (``out_dir=`` to choose);
- ``tiny_overrides``: the same as key=value overrides (for a ``scratchformer train`` subprocess);
- ``tiny_run``: the run directory of one such run, trained once per session
  (``generate``/``eval`` tests read it, never write it);
- ``cli(*argv)``: ``scratchformer`` run in-process: (exit code, stdout, stderr);
- ``read_metrics(run_dir)``: a run's ``metrics.jsonl`` records;
- ``tiny_task_options(name)``, ``tiny_tokenizer(name)``: a small instance of every
  entry in ``TASKS`` and ``TOKENIZERS``, for the tests parametrised from those
  registries (they fail with a clear message when a new entry has none here).
"""

from __future__ import annotations

# --- CPU policy (issue 11): OpenMP threads spin briefly, then sleep -------------------------------
# Runs before any test module imports torch (keep it above every import that could load torch): the
# OpenMP runtime reads it once, when torch loads it, and the suite then does not slow down several
# times when the CPU is shared (CI runners, other jobs). The same policy the `scratchformer` command
# applies; a policy the user set in the environment wins.
from scratchformer import cpu_policy  # noqa: E402

cpu_policy.apply()

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TINY_RUN = (
    "model.d_model=32", "model.n_head=2", "model.n_layer=1", "model.max_len=32",
    "task.max_digits=2", "task.min_digits=1", "task.num_examples=3000",
    "train.batch_size=16", "train.eval_every=0", "train.checkpoint_every=0", "train.eval_max_examples=200",
    "train.progress=false", "train.log_every=1", "train.threads=1", "train.warmup_steps=2",
)  # fmt: skip
"""Overrides of the default run (GPT on addition) that make it tiny: one layer, 2-digit problems."""

FEWER_EXAMPLES = ("task.num_examples=1000", "train.eval_max_examples=100")
"""Appended to :data:`TINY_RUN` where a test needs even less data."""


def make_tiny_config(out_dir: Path, *overrides: str):
    from scratchformer.train import resolve_config

    return resolve_config(None, [*TINY_RUN, f"train.out_dir={out_dir}", *overrides])


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The key=value overrides of :data:`TINY_RUN`, for tests that run the command in a subprocess."""
    return list(TINY_RUN)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Any]:
    """``tiny_config(*overrides, out_dir=tmp_path)`` -> a RunConfig of a tiny GPT-addition run."""

    def make(*overrides: str, out_dir: Path | None = None):
        return make_tiny_config(out_dir or tmp_path, *overrides)

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny reversed-answer GPT-addition run trained for 3 steps (shared: do not write into it)."""
    from scratchformer.train import train

    out = tmp_path_factory.mktemp("runs")
    return train(make_tiny_config(out, *FEWER_EXAMPLES, "train.steps=3", "name=g")).run_dir


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """``cli(*argv)`` -> (exit code, stdout, stderr) of ``scratchformer *argv``, in this process."""
    from scratchformer.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's --help and usage errors
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def read_metrics() -> Callable[[Path], list[dict]]:
    """``read_metrics(run_dir)`` -> the records of ``run_dir/metrics.jsonl``."""

    def read(run_dir: Path) -> list[dict]:
        return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]

    return read


# ---------------------------------------------------------------------- registries
def _tiny_task_options(tmp_path: Path) -> dict[str, dict[str, Any]]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60)))
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"text": f"text {i} {'good' if i % 2 else 'bad'}",
                                           "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(40)))
    return {
        "difference_sign": dict(train_lengths="3..4", test_lengths="5", train_examples_per_length=20,
                                test_examples_per_length=10),
        "addition_seq2seq": dict(train_lengths="3..4", test_lengths="5", train_examples_per_length=20,
                                 test_examples_per_length=10),
        "addition_gpt": dict(max_digits=2, min_digits=1, num_examples=200),
        "text_lm": dict(path=str(corpus), block_size=16, cache_dir=str(tmp_path / "cache")),
        "text_lines_lm": dict(path=str(corpus), max_length=24, cache_dir=str(tmp_path / "cache")),
        "text_classification": dict(path=str(records), max_length=24, cache_dir=str(tmp_path / "cache")),
        "regression": dict(num_examples=100, dim=3),
        "addition_lengthgen": dict(train_digits="1..3", train_examples=100, val_digits=4, val_examples_per_length=10,
                                   test_digits=[5], test_examples_per_length=10, in_dist_examples=10, max_digits=6),
    }  # fmt: skip


@pytest.fixture
def tiny_task_options(tmp_path: Path) -> Callable[[str], dict[str, Any]]:
    """``tiny_task_options(name)`` -> options that build task ``name`` small and fast (files under tmp_path)."""
    table = _tiny_task_options(tmp_path)

    def options(name: str) -> dict[str, Any]:
        if name not in table:
            pytest.fail(f"task {name!r} has no tiny options: add them to _tiny_task_options in tests/conftest.py")
        return dict(table[name])

    return options


TOKENIZER_TEXT = "First Citizen: before we proceed any further, hear me speak. 12+34=46\n" * 20


def _tiny_tokenizers() -> dict[str, tuple[Callable[[], Any], str]]:
    from scratchformer.tokenizers import ArithmeticTokenizer, BPETokenizer, CharTokenizer

    return {  # name -> (make it, a text it can encode)
        "char": (lambda: CharTokenizer.fit(TOKENIZER_TEXT), TOKENIZER_TEXT[:60]),
        "arithmetic": (ArithmeticTokenizer, "12+34=46"),
        "bpe": (lambda: BPETokenizer.train([TOKENIZER_TEXT], vocab_size=300), TOKENIZER_TEXT[:60]),
    }


@pytest.fixture
def tiny_tokenizer() -> Callable[[str], tuple[Any, str]]:
    """``tiny_tokenizer(name)`` -> (a tokenizer of type ``TOKENIZERS[name]``, fitted on a small text if it
    learns; a text it encodes without unknown tokens)."""
    table = _tiny_tokenizers()

    def make(name: str) -> tuple[Any, str]:
        if name not in table:
            pytest.fail(f"tokenizer {name!r} has no tiny instance: add one to _tiny_tokenizers in tests/conftest.py")
        build, text = table[name]
        return build(), text

    return make
