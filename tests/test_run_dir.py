"""The run directory against careless input: nothing of anyone's is lost, every refusal happens before any write.

Each data-loss case is checked byte for byte: the directory's files (names and
contents) are the same after the refused command as before it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchformer.cli import main

TINY = [
    "model.d_model=16", "model.n_head=2", "model.n_layer=1",
    "task.max_digits=2", "task.min_digits=1", "task.num_examples=400",
    "train.batch_size=8", "train.eval_every=0", "train.eval_max_examples=40", "train.eval_batch_size=64",
    "train.progress=false", "train.log_every=1", "train.threads=1", "train.warmup_steps=1",
]
REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (and every directory, as ``/``) with the SHA-256 of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "/" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line_error(code: int, err: str, *needles: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (3 steps, a checkpoint at the end); tests copy it before touching it."""
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", *TINY, "train.steps=3", "train.checkpoint_every=0", "--run-dir", str(root / "run")]) == 0
    return root / "run"


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------- data loss
def test_a_foreign_directory_is_left_byte_identical(capsys, tmp_path, cli):
    foreign = tmp_path / "mine"
    (foreign / "checkpoints" / "step_00000010").mkdir(parents=True)
    (foreign / "checkpoints" / "step_00000010" / "notes.txt").write_text("keep me")
    (foreign / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = snapshot(tmp_path)
    code, _, err = cli("train", *TINY, "train.steps=2", "--run-dir", str(foreign))
    one_line_error(code, err, str(foreign), "not empty and is not a scratchformer run")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["..", ".", "...", "a/b", "../x", "a\\b", "", " ", "x\0y", "tab\there"])
def test_run_names_that_are_not_one_directory_are_refused_before_any_write(capsys, tmp_path, name, cli):
    out_dir = tmp_path / "runs"
    out_dir.mkdir()
    (tmp_path / "precious.txt").write_text("keep")
    before = snapshot(tmp_path)
    code, _, err = cli("train", *TINY, "train.steps=2", f"train.out_dir={out_dir}", f"name={name}")
    one_line_error(code, err, "cannot name a run directory")
    assert snapshot(tmp_path) == before


def test_resume_without_a_usable_checkpoint_leaves_the_finished_run_byte_identical(capsys, tmp_path, finished_run, cli):
    import shutil

    run_dir = copy_run(finished_run, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints")  # weights and metrics stay, the checkpoints are gone
    before = snapshot(run_dir)
    code, _, err = cli("train", "--resume", str(run_dir))
    one_line_error(code, err, "cannot resume", "has no checkpoint", "start a new run")
    assert snapshot(run_dir) == before
    # a damaged checkpoint is no better
    run_dir2 = copy_run(finished_run, tmp_path / "run2")
    (step,) = (run_dir2 / "checkpoints").iterdir()
    (step / "model.safetensors").write_bytes(b"garbage")
    before = snapshot(run_dir2)
    code, _, err = cli("train", "--resume", str(run_dir2), "train.steps=5")
    one_line_error(code, err, "cannot resume", "incomplete or damaged")
    assert snapshot(run_dir2) == before


def test_a_new_run_into_a_run_with_weights_is_refused_byte_identical(capsys, tmp_path, finished_run, cli):
    run_dir = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run_dir)
    code, _, err = cli("train", *TINY, "train.steps=2", "--run-dir", str(run_dir))
    one_line_error(code, err, "already holds a run", "--resume")
    assert snapshot(run_dir) == before


def test_a_failed_resume_keeps_the_config_and_records_every_attempt(capsys, tmp_path, finished_run, cli):
    run_dir = copy_run(finished_run, tmp_path / "run")
    config_before = (run_dir / "config.json").read_bytes()
    code, _, err = cli("train", "--resume", str(run_dir), "train.lr=1e10", "train.steps=8",
                       "train.schedule=constant", "train.grad_clip=0")
    assert code == 1 and "training stopped" in err, err
    assert (run_dir / "config.json").read_bytes() == config_before  # the settings that trained are kept
    attempts = sorted((run_dir / "history").glob("attempt_*.json"))
    assert [p.name for p in attempts] == ["attempt_001.json", "attempt_002.json"]
    second = json.loads(attempts[1].read_text())
    assert second["config"]["train"]["lr"] == 1e10 and second["resumed_at_step"] == 3
    assert json.loads(attempts[0].read_text())["config"] == json.loads(config_before)
    # a resume that trains makes its config the run's
    code, _, err = cli("train", "--resume", str(run_dir), "train.steps=5")
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 5
    assert len(list((run_dir / "history").glob("attempt_*.json"))) == 3


def test_resume_removes_partial_weight_files(capsys, tmp_path, finished_run, cli):
    run_dir = copy_run(finished_run, tmp_path / "run")
    partial = run_dir / ".model.safetensors.ab12cd_x.tmp"
    partial.write_bytes(b"half a file")
    own = run_dir / "notes.tmp"  # not ours: a name the atomic writer never makes
    own.write_text("keep")
    code, _, err = cli("train", "--resume", str(run_dir), "train.steps=4")
    assert code == 0, err
    assert not partial.exists() and own.read_text() == "keep"


def test_a_run_that_never_saved_weights_may_start_over(capsys, tmp_path, cli):
    # max_len and steps fine, but the loss diverges at step 1: config.json exists, no weights
    run_dir = tmp_path / "run"
    code, _, err = cli("train", *TINY, "train.steps=3", "train.lr=1e30", "train.optimizer=sgd",
                       "train.grad_clip=0", "train.schedule=constant", "--run-dir", str(run_dir))
    if code == 0:
        pytest.skip("the tiny run did not diverge")
    assert code == 1 and (run_dir / "config.json").exists()
    code, _, err = cli("train", "--resume", str(run_dir))
    one_line_error(code, err, "has no checkpoint", f"--run-dir {run_dir}")
    code, _, err = cli("train", *TINY, "train.steps=2", "--run-dir", str(run_dir))
    assert code == 0, err
    assert len(list((run_dir / "history").glob("attempt_*.json"))) == 2


# ---------------------------------------------------------------------- named errors, before any write
@pytest.mark.parametrize("override, needle", [
    ("model.max_len=4", "model.max_len=4 is shorter than the task's longest sequence"),
    ("model.max_len=100000000000", "for its weights alone"),
    ("model.init_std=-1", "init_std=-1.0 must be > 0"),
])
def test_impossible_models_are_refused_before_the_run_directory_exists(capsys, tmp_path, override, needle, cli):
    code, _, err = cli("train", *TINY, "train.steps=2", override, f"train.out_dir={tmp_path}", "name=x")
    one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []
    # and the name is not blocked: the same name trains once the value is fixed
    code, _, err = cli("train", *TINY, "train.steps=1", f"train.out_dir={tmp_path}", "name=x")
    assert code == 0, err


def test_output_path_under_a_file_or_unwritable(capsys, tmp_path, monkeypatch, cli):
    (tmp_path / "file").write_text("x")
    code, _, err = cli("train", *TINY, "train.steps=1", "--run-dir", str(tmp_path / "file" / "run"))
    one_line_error(code, err, "is a file, not a directory")
    code, _, err = cli("train", *TINY, "train.steps=1", "--run-dir", str(tmp_path / "file"))
    one_line_error(code, err, "is a file, not a directory")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    code, _, err = cli("train", *TINY, "train.steps=1", "--run-dir", str(tmp_path / "ro" / "run"))
    one_line_error(code, err, "is not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"] and not any((tmp_path / "ro").iterdir())


def test_a_full_disk_exits_1_naming_the_last_intact_checkpoint(capsys, tmp_path, monkeypatch, cli):
    import scratchformer.io as io

    real = io.os.fsync
    calls = {"n": 0}

    def fsync(fd):  # the disk fills up once the run has written its first checkpoint
        if (tmp_path / "run" / "checkpoints" / "step_00000002" / "manifest.json").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += 1
        return real(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    code, _, err = cli("train", *TINY, "train.steps=6", "train.checkpoint_every=2",
                       "--run-dir", str(tmp_path / "run"))
    one_line_error(code, err, "the disk is full", "the last intact checkpoint is", "step_00000002", exit_code=1)


def test_unreadable_and_non_utf8_config_files(capsys, tmp_path, finished_run, cli):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"seed = 1\n# \xff\xfe\n")
    code, _, err = cli("train", str(bad), "--print-config")
    one_line_error(code, err, "is not UTF-8")
    run_dir = copy_run(finished_run, tmp_path / "run")
    (run_dir / "config.json").write_bytes(b'{"seed": "\xff"}')
    for argv in (["train", "--resume", str(run_dir)], ["eval", str(run_dir)], ["generate", str(run_dir), "1+2="]):
        code, _, err = cli(*argv)
        one_line_error(code, err, "config.json", "not UTF-8")


@pytest.mark.parametrize("part", ["task.json", "tokenizer.json"])
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_missing_or_unreadable_part_of_a_run_is_a_named_error(capsys, tmp_path, finished_run, part, damage, cli):
    run_dir = copy_run(finished_run, tmp_path / "run")
    if damage == "missing":
        (run_dir / part).unlink()
    else:
        (run_dir / part).write_bytes(b"\x00not json")
    code, _, err = cli("generate", str(run_dir), "12+34=")
    one_line_error(code, err, part)


# ---------------------------------------------------------------------- decoding options
@pytest.mark.parametrize("flag", ["--temperature", "--repetition-penalty", "--length-penalty", "--top-p"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_decoding_options_are_refused(capsys, finished_run, flag, value, cli):
    code, out, err = cli("generate", str(finished_run), "12+34=", f"{flag}={value}")
    one_line_error(code, err, "finite" if value == "nan" or flag != "--top-p" else "top_p")
    assert out == ""


def test_zero_new_tokens_prints_the_prompt_alone(capsys, finished_run, cli):
    code, out, err = cli("generate", str(finished_run), "12+34=", "--max-new-tokens", "0")
    assert code == 0, err
    assert out == "12+34=\n"
    code, out, err = cli("generate", str(finished_run), "12+34=", "--max-new-tokens", "0", "--stream")
    assert code == 0, err
    assert out == "12+34=\n"


def test_generate_seed_out_of_range(capsys, finished_run, cli):
    code, _, err = cli("generate", str(finished_run), "12+34=", "--seed", "100000000000000000000000")
    one_line_error(code, err, "--seed 100000000000000000000000")


def test_weights_with_nan_or_inf_are_named_on_load(capsys, tmp_path, finished_run, cli):
    from safetensors.torch import load_file

    from scratchformer.train.checkpoint import save_state_dict

    run_dir = copy_run(finished_run, tmp_path / "run")
    state = load_file(str(run_dir / "model.safetensors"))
    name = sorted(state)[1]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    save_state_dict(run_dir / "model.safetensors", state, "gpt")
    code, _, err = cli("generate", str(run_dir), "12+34=")
    one_line_error(code, err, repr(name), "NaN")
    state[name].view(-1)[0] = float("inf")
    save_state_dict(run_dir / "best.safetensors", state, "gpt")
    code, _, err = cli("eval", str(run_dir), "--best")
    one_line_error(code, err, repr(name), "inf")


# ---------------------------------------------------------------------- reproducible bytes
def test_two_identical_runs_write_byte_identical_weights(tmp_path):
    """Separate processes (each with its own hash seed) train the same run: the weights files are equal bytes."""
    digests = []
    for i in range(2):
        run_dir = tmp_path / f"run{i}"
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": str(i + 1), "OMP_WAIT_POLICY": "PASSIVE"}
        subprocess.run([sys.executable, "-m", "scratchformer", "train", *TINY, "train.steps=2",
                        "train.checkpoint_every=0", "--run-dir", str(run_dir)], check=True, env=env,
                       capture_output=True, timeout=300)
        files = ["model.safetensors", "best.safetensors",
                 *(str(p.relative_to(run_dir)) for p in sorted(run_dir.glob("checkpoints/*/*.safetensors")))]
        digests.append({name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest() for name in files})
    assert len(digests[0]) == 5 and digests[0] == digests[1]


def test_safetensors_header_is_sorted():
    from scratchformer.train.checkpoint import tensors_to_bytes

    data = tensors_to_bytes({"b": torch.ones(2), "a": torch.zeros(1)}, {"zeta": "1", "arch": "gpt", "format": "x"})
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].decode().rstrip()
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"))
    from safetensors.torch import load

    assert torch.equal(load(data)["b"], torch.ones(2))
