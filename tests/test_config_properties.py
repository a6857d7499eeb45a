"""Property: any override of any config field with a hostile value gives exit 0 or 2, never a traceback,
and nothing written on exit 2.

Keys are drawn from the config dataclasses themselves (the default model and task, TrainConfig, and the
top-level seed and name), so a new field is covered without editing this file. A run stopped by a
non-finite loss (a huge learning rate is a legal value) exits 1 by design and counts as handled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchformer.cli import main
from scratchformer.models import MODELS
from scratchformer.tasks import TASKS
from scratchformer.train.config import DEFAULT_RUN, TrainConfig

BASE = [
    "model.d_model=8", "model.n_head=2", "model.n_layer=1",
    "task.max_digits=2", "task.min_digits=1", "task.num_examples=200",
    "train.steps=1", "train.batch_size=4", "train.eval_every=0", "train.checkpoint_every=0",
    "train.eval_max_examples=16", "train.eval_batch_size=16", "train.progress=false", "train.threads=1",
    "train.warmup_steps=0", "train.out_dir=runs",
]

KEYS = sorted(
    ["seed", "name", "model.arch", "task.name"]
    + [f"model.{f.name}" for f in dataclasses.fields(MODELS[DEFAULT_RUN["model"]["arch"]][1])]
    + [f"task.{f.name}" for f in dataclasses.fields(TASKS[DEFAULT_RUN["task"]["name"]].config_class)]
    + [f"train.{f.name}" for f in dataclasses.fields(TrainConfig)]
)

HOSTILE = [
    # wrong types and empty
    "", " ", "abc", "null", "[]", "{}", "[1, 2]", '{"a": 1}', "1.5", "true", "False", "yes",
    # non-finite, negative, zero, huge
    "nan", "NaN", "inf", "-inf", "Infinity", "-1", "0", "-0.0", "1e308", "1e400",
    "100000000000000000000000", "-100000000000000000000000", "9223372036854775808",
    # non-ASCII and path-like
    "ünïcødé", "名前", "💥", "a\tb", "..", ".", "../escape", "a/b", "/dev/null/run", "~/x", "C:\\x",
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "/" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(tmp_path_factory, monkeypatch):
    """A working directory inside a fresh sandbox (relative path-like values land inside it);
    torch.compile is the identity (a legal choice, but slow to exercise here)."""
    root = tmp_path_factory.mktemp("sandbox")
    (root / "work").mkdir()
    monkeypatch.chdir(root / "work")
    monkeypatch.setattr(torch, "compile", lambda model, *args, **kwargs: model)
    return root


@settings(max_examples=int(os.environ.get("SCRATCHFORMER_PROPERTY_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(HOSTILE)), min_size=1, max_size=3))
def test_hostile_overrides_exit_0_or_2_without_traceback(capsys, sandbox, overrides):
    before = snapshot(sandbox)
    code = main(["train", *BASE, *(f"{k}={v}" for k, v in overrides)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    if code == 1:
        assert "training stopped" in err and err.count("\n") == 1, err
        return
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.count("\n") == 1, err
        assert snapshot(sandbox) == before, f"files written before the error: {err}"
    else:
        import shutil

        shutil.rmtree(sandbox, ignore_errors=True)  # the next example starts from an empty sandbox
        (sandbox / "work").mkdir(parents=True)
        os.chdir(sandbox / "work")


def test_the_base_run_trains(capsys, sandbox):
    """Without a hostile value the run succeeds, so the property above is not vacuous."""
    assert main(["train", *BASE]) == 0, capsys.readouterr().err
    assert (sandbox / "work" / "runs").is_dir()


def test_the_keys_come_from_the_dataclasses():
    assert "model.norm_first" in KEYS and "task.reverse_answer" in KEYS and "train.lr" in KEYS
    assert len(KEYS) == len(set(KEYS)) > 60
