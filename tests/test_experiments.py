"""`scratchformer experiment`: every built-in experiment's quick version runs and reports finite figures;
bad input is one line and exit 2 before any work; an interrupted experiment resumes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchformer.experiments import builtin_files, load_experiment

BUILTIN = sorted(builtin_files())


def _numbers(obj):
    """Every number in a results.json summary."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.mark.parametrize("name", BUILTIN)
def test_quick_version_writes_a_report_with_finite_figures(capsys, tmp_path, name, cli):
    out = tmp_path / name
    plan = load_experiment(name).plan(quick=True)
    assert sum(r.config.train.steps for r in plan.runs) <= 200, "keep --quick near 30 s: few runs, few steps"
    code, stdout, err = cli("experiment", name, "--quick", "--out", str(out))
    assert code == 0, err
    assert (out / "report.md").is_file() and "report.md" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["variants"]
    for variant, v in results["variants"].items():
        assert v["summary"], f"{variant} has no figures"
        for metric, s in v["summary"].items():
            assert s["median"] is not None and math.isfinite(s["median"]), f"{variant} {metric} is not finite: {s}"
        assert all(math.isfinite(x) for x in _numbers(v["summary"]))
    for section in results["sections"]:
        assert all(math.isfinite(x) for x in _numbers(section["metrics"])), section["title"]
    for plot in results["plots"].values():
        assert (out / plot).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "Command: `scratchformer experiment" in report and "cores" in report
    if name == "classify-ladder":  # order-blind (no positions, no causal mask): b-a always gets a-b's class
        assert results["variants"]["attention-only"]["summary"]["same class for a-b and b-a"]["median"] == 1.0
    if name == "addition-gpt":  # the tutorial's model, exactly; and its what_is from the command line
        assert results["variants"]["tutorial"]["summary"]["parameters"]["median"] == 270_226
        code, printed, err = cli("generate", str(out / "runs" / "fast" / "seed0"), "7+5=")
        answer = printed.splitlines()[0]
        assert code == 0 and answer.startswith("07+05=") and answer[6:].isdigit(), printed + err
        assert "$ scratchformer generate" in report


def test_list_names_every_builtin_with_a_time(capsys, cli):
    code, out, _ = cli("experiment", "--list")
    assert code == 0
    for name in BUILTIN:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert load_experiment(name).time in line


TINY = """
description = "a tiny test experiment"
time = "5 s"
seeds = [0, 1]

[base]
model = { arch = "encoder_classifier", d_model = 16, n_head = 2, n_layer = 1 }
task = { name = "difference_sign", train_lengths = "3..5", test_lengths = "6..7", train_examples_per_length = 50, test_examples_per_length = 20 }
train = { steps = 20, batch_size = 16, checkpoint_every = 10, keep_checkpoints = 5, eval_every = 0, threads = 1 }

[variants.small]
about = "the base"

[variants.wider]
extends = "small"
about = "twice as wide"
model = { d_model = 32 }

[quick]
seeds = [0]
train = { steps = 5 }

[[evaluations]]
name = "final_metrics"

[[evaluations]]
name = "by_length"
split = "test"
groups = ["6..7"]

[target]
metric = "test 6..7"
at_least = 0.0
"""


def _write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_file_runs_every_variant_and_seed_with_median_and_range(capsys, tmp_path, cli):
    path = _write(tmp_path, TINY)
    out = tmp_path / "out"
    code, stdout, err = cli("experiment", str(path), "--out", str(out), "train.lr=2e-3")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert list(results["variants"]) == ["small", "wider"] and results["seeds"] == [0, 1]
    for variant in ("small", "wider"):
        for seed in (0, 1):
            cfg = json.loads((out / "runs" / variant / f"seed{seed}" / "config.json").read_text())
            assert cfg["seed"] == seed and cfg["train"]["lr"] == 2e-3
            assert cfg["model"]["d_model"] == (32 if variant == "wider" else 16)
    runs = results["variants"]["small"]["runs"]
    values = [runs[s]["metrics"]["test 6..7"] for s in ("0", "1")]
    s = results["variants"]["small"]["summary"]["test 6..7"]
    assert s["min"] == min(values) and s["max"] == max(values) and s["median"] == pytest.approx(sum(values) / 2)
    assert results["target"]["met"] is True and results["target"]["variant"] in ("small", "wider")
    assert "[4/4]" in err  # which run is going, of how many


def test_interrupted_experiment_resumes_keeping_finished_runs(capsys, tmp_path, cli):
    path = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert cli("experiment", str(path), "--out", str(out))[0] == 0
    done = out / "runs" / "small" / "seed0"
    half = out / "runs" / "wider" / "seed1"
    done_mtime = (done / "model.safetensors").stat().st_mtime_ns
    reference = load_file(half / "model.safetensors")
    # make "wider seed 1" half-finished, as a kill after its step-10 checkpoint leaves it
    record = json.loads((half / "experiment_run.json").read_text())
    record["outcome"] = None
    (half / "experiment_run.json").write_text(json.dumps(record))
    (half / "results.json").unlink()
    shutil.rmtree(half / "checkpoints" / "step_00000020")
    (half / "model.safetensors").unlink()
    code, _, err = cli("experiment", str(path), "--out", str(out))
    assert code == 0, err
    assert "[1/1] resuming wider seed 1" in err
    assert (done / "model.safetensors").stat().st_mtime_ns == done_mtime  # kept, not retrained
    resumed = load_file(half / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)  # resume equals no interruption
    assert json.loads((out / "results.json").read_text())["variants"]["wider"]["runs"]["1"]["metrics"]


def test_changed_settings_do_not_mix_with_old_runs(capsys, tmp_path, cli):
    path = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert cli("experiment", str(path), "--out", str(out), "--quick")[0] == 0
    code, _, err = cli("experiment", str(path), "--out", str(out), "--quick", "train.lr=0.01")
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["classify-ladder", "train.stepz=3"], "did you mean 'train.steps'"),
        (["classify-ladder", "model.d_model=abc"], "d_model"),
        (["clasify-ladder"], "did you mean 'classify-ladder'"),
        (["missing.toml"], "does not exist"),
        (["classify-ladder", "seed=3"], "--seeds"),
        (["classify-ladder", "--seeds", "0"], "--seeds 0"),
        (["classify-ladder", "oops"], "not a key=value override"),
        ([], "name an experiment"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_work(capsys, tmp_path, argv, expected, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("experiment", *argv)
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace('time = "5 s"', 'time = "5 s"\nsedes = [1]'), "did you mean 'seeds'"),
        (lambda t: t.replace("[variants.small]", "[variants.small]\nmodle = {}"), "did you mean 'model'"),
        (lambda t: t.replace('extends = "small"', 'extends = "smal"'), "did you mean 'small'"),
        (lambda t: t.replace('name = "by_length"', 'name = "by_lenght"'), "did you mean 'by_length'"),
        (lambda t: t.replace('groups = ["6..7"]', 'groups = ["6..x"]'), "6..x"),
        (lambda t: t.replace('split = "test"', 'spilt = "test"'), "did you mean 'split'"),
        (lambda t: t.replace("d_model = 32", "d_model = 33"), "variant 'wider'"),
        (lambda t: t + "\n[oops\n", "not valid TOML"),
    ],
)
def test_bad_experiment_file_is_one_line_exit_2(capsys, tmp_path, edit, expected, cli):
    path = _write(tmp_path, edit(TINY))
    code, _, err = cli("experiment", str(path), "--out", str(tmp_path / "out"))
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_help_has_examples(capsys, cli):
    code, out, _ = cli("experiment", "--help")
    assert code == 0 and "examples:" in out and "--quick" in out and "resume" in out


def test_a_run_recorded_before_a_new_config_field_still_counts_as_the_same_run():
    from scratchformer.experiments.spec import config_digest, load_experiment, same_settings

    planned = load_experiment("addition-gpt").plan().runs[0]
    digest = config_digest(planned.config)
    older = json.loads(json.dumps(digest))
    del older["train"]["label_smoothing"]  # written before the field existed; its default is 0.0, not null
    assert same_settings(older, digest)
    older["train"]["lr"] = digest["train"]["lr"] * 2
    assert not same_settings(older, digest)


def test_ask_names_the_variant_it_could_not_ask_when_variants_left_it_out(tmp_path):
    from scratchformer.experiments.evaluations import ExperimentContext, ask

    plan = load_experiment("addition-gpt").plan(quick=True, only=["tutorial"])
    ctx = ExperimentContext(out_dir=tmp_path, plan=plan, run_dirs={"tutorial/seed0": tmp_path}, quick=True)
    section = ask(ctx, prompts=["7+5="], variant="fast")
    assert "`fast`" in section.markdown and "Not asked" in section.markdown


def test_a_target_is_met_only_if_its_bounds_from_the_sections_hold_too():
    from scratchformer.experiments.report import judge_target

    target = load_experiment("shakespeare-char").target
    variants = {"fast": {"summary": {"val loss": {"median": 1.7}}}}
    sections = [{"title": "Against nanoGPT", "metrics": {"time ratio": 0.9}}]
    judged = judge_target(target, variants, sections)
    assert judged["value"] == 1.7 and judged["also"]["time ratio"]["value"] == 0.9 and not judged["met"]
    sections[0]["metrics"]["time ratio"] = 0.4
    assert judge_target(target, variants, sections)["met"]
    assert not judge_target(target, variants, [])["met"]  # a bound with no figure is not met


def test_report_columns_order_numbers_as_numbers():
    from scratchformer.experiments.report import natural_order

    names = ["50 digits", "in-dist", "10 digits", "5 digits", "autoregressive 11..20", "autoregressive 3..10"]
    assert sorted(names, key=natural_order) == [
        "5 digits", "10 digits", "50 digits", "autoregressive 3..10", "autoregressive 11..20", "in-dist"]


def test_a_run_of_some_variants_without_the_target_variant_reports_no_target(capsys, tmp_path, cli):
    """--variants may leave the target's own variant out (its runs come in another call): the report
    then judges no target instead of failing after training (it raised a KeyError)."""
    path = _write(tmp_path, TINY.replace('at_least = 0.0', 'at_least = 0.0\nvariant = "wider"'))
    out = tmp_path / "out"
    code, stdout, err = cli("experiment", str(path), "--out", str(out), "--quick", "--variants", "small")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["target"] is None
    assert "## Target" not in (out / "report.md").read_text() and "target" not in stdout
    code, stdout, err = cli("experiment", str(path), "--out", str(out), "--quick")
    assert code == 0 and "target met: test 6..7 of wider" in stdout
