"""The `scratchformer` command: help texts, config overrides, clear one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchformer.errors import DataError
from scratchformer.models import GPT
from scratchformer.train.config import DEFAULT_RUN, apply_overrides, parse_value

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["train", "eval", "generate"])
def test_each_subcommand_has_help_with_examples(capsys, command, cli):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert f"scratchformer {command}" in out and "examples:" in out


def test_top_level_help_lists_the_subcommands(capsys, cli):
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("train", "eval", "generate"):
        assert command in out


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "scratchformer", "train", "--help"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "key=value" in proc.stdout


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("trian.steps=3", "train.steps"),
        ("model.n_layr=3", "model.n_layer"),
        ("task.max_digit=3", "task.max_digits"),
        ("train.learning_rat=0.1", None),
        ("sed=3", "seed"),
    ],
)
def test_unknown_key_is_one_line_with_did_you_mean(capsys, override, suggestion, cli):
    code, out, err = cli("train", override)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown config key" in err
    if suggestion:
        assert f"did you mean '{suggestion}'" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "/definitely/not/a/run"],
        ["generate", "/definitely/not/a/run", "1+2="],
        ["train", "train.steps=-5"],
        ["train", "model.n_head=5"],  # d_model=64 is not divisible by 5
        ["train", "model.arch=transformerz"],
        ["train", "no_equals_sign_here.toml", "train.steps"],
        ["train", "missing_file.toml"],
        ["train", "--resume", "/definitely/not/a/run"],
        ["train", "--no-such-flag"],
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, cli):
    code, _, err = cli(*argv)
    assert code == 2
    assert err.strip() and err.count("\n") == 1 and "Traceback" not in err, err


def test_eval_on_a_directory_that_is_not_a_cli(tmp_path, cli):
    code, _, err = cli("eval", str(tmp_path))
    assert code == 2 and "not a scratchformer run directory" in err


def test_overrides_parse_json_literals_else_strings():
    assert parse_value("4") == 4 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("[3, 4]") == [3, 4] and parse_value("null") is None
    assert parse_value("3..10") == "3..10" and parse_value("adamw") == "adamw"
    data = apply_overrides(DEFAULT_RUN, ["model.n_layer=4", "task.max_digits=2", "train.steps=10",
                                         "train.optimizer_options.momentum=0.9", "seed=7"])
    assert data["model"]["n_layer"] == 4 and data["task"]["max_digits"] == 2
    assert data["train"]["steps"] == 10 and data["train"]["optimizer_options"] == {"momentum": 0.9}
    assert data["seed"] == 7
    assert DEFAULT_RUN["model"]["n_layer"] == 2  # the default is not mutated
    switched = apply_overrides(DEFAULT_RUN, ["task.name=difference_sign", "model.arch=encoder_classifier",
                                             "task.train_lengths=3..5"])
    assert switched["task"] == {"name": "difference_sign", "train_lengths": "3..5"}  # old task's options dropped


def test_config_file_then_overrides(capsys, tmp_path, cli):
    toml = tmp_path / "exp.toml"
    toml.write_text('seed = 3\n[model]\nn_layer = 3\n[train]\nsteps = 77\nlr = 0.01\n')
    code, out, _ = cli("train", str(toml), "train.steps=88", "--print-config")
    assert code == 0
    cfg = json.loads(out)
    assert cfg["seed"] == 3 and cfg["model"]["n_layer"] == 3 and cfg["model"]["arch"] == "gpt"
    assert cfg["train"]["steps"] == 88 and cfg["train"]["lr"] == 0.01
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"stepz": 3}}')
    code, _, err = cli("train", str(bad))
    assert code == 2 and "stepz" in err and "did you mean 'steps'" in err


def test_shipped_configs_are_valid(capsys, cli):
    configs = sorted((REPO / "configs").glob("*.toml")) + sorted((REPO / "configs").glob("*.json"))
    assert configs
    for path in configs:
        code, out, err = cli("train", str(path), "--print-config")
        assert code == 0, (path, err)


def test_arithmetic_prompt_formatting_and_answer_presentation_are_task_methods():
    from scratchformer.tasks import AdditionGPTConfig, AdditionGPTTask, task_for_prompts, unreverse_answer

    assert unreverse_answer("9750", "+") == "579"
    assert unreverse_answer("0000", "+") == "0"
    assert unreverse_answer("-12", "-") == "-21" and unreverse_answer("021", "-") == "12"
    fixed = {"name": "addition_gpt", "min_digits": 3, "max_digits": 3}
    assert task_for_prompts(fixed, None).format_prompt("12+5=") == "012+005="
    assert task_for_prompts({**fixed, "min_digits": 1}, None).format_prompt("12+5=") == "12+05="
    assert task_for_prompts(fixed, None).format_prompt("hello") == "hello"
    assert task_for_prompts({**fixed, "reverse_operands": True}, None).format_prompt("<BOS>12+5=") == "<BOS>210+500="
    # the data-less task answers the same as the built one, and builds no splits
    built = AdditionGPTTask(AdditionGPTConfig(max_digits=2, min_digits=1, reverse_answer=True, num_examples=50))
    light = task_for_prompts({"name": "addition_gpt", **built.config.to_dict()}, built.tokenizer)
    for typed in ("3+4=", "12+5=", "<BOS>1+99="):
        assert light.format_prompt(typed) == built.format_prompt(typed)
    assert light.split_names == built.split_names
    with pytest.raises(DataError, match="without its splits"):
        light.dataset("train")
    shown = built.present_answer("12+05=", "710")
    assert (shown.text, shown.written, shown.changed, shown.shown_as) == ("17", "710", True, "un-reversed")
    assert not built.present_answer("hello", "710").changed  # not an arithmetic prompt: shown as written
    plain = AdditionGPTTask(AdditionGPTConfig(max_digits=2, num_examples=50))
    assert plain.present_answer("12+05=", "017").text == "017" and not plain.present_answer("12+05=", "017").changed
    minus = task_for_prompts({"name": "addition_gpt", "max_digits": 2, "operator": "-", "reverse_answer": True}, None)
    assert minus.present_answer("03-12=", "-90").text == "-9"


def test_train_eval_generate_on_a_tiny_cli(tmp_path, cli):
    code, out, err = cli("train", "model.d_model=32", "model.n_head=2", "model.n_layer=1",
                         "task.num_examples=2000", "train.steps=8", "train.batch_size=16", "train.eval_every=0",
                         "train.checkpoint_every=0", "train.progress=false", "train.threads=1", f"train.out_dir={tmp_path}",
                         "name=tiny")
    assert code == 0, err
    run_dir = tmp_path / "tiny"
    assert "exact_match" in out and f"run directory: {run_dir}" in out
    code, out, err = cli("eval", str(run_dir), "--max-examples", "50")
    assert code == 0, err
    assert "test" in out and "exact" in out
    pytest.importorskip("scratchformer.generate")
    code, out, err = cli("generate", str(run_dir), "123+456=")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("123+456=") and "reversed" in lines[1]
    code, out, err = cli("generate", str(run_dir), "123+456=", "--raw")
    assert code == 0 and len(out.strip().splitlines()) == 1


def test_tensorboard_flag_without_the_package_is_a_clear_error(capsys, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: importing it raises ImportError
    code, _, err = cli("train", "train.log_tensorboard=true", f"train.out_dir={tmp_path}")
    assert code == 2 and "tensorboard" in err and "pip install" in err and err.count("\n") == 1


def test_non_finite_loss_exits_1_naming_the_step(capsys, tmp_path, cli):
    code, _, err = cli("train", "model.d_model=32", "model.n_head=2", "model.n_layer=1",
                       "task.num_examples=1000", "train.steps=20", "train.batch_size=8", "train.optimizer=sgd",
                       "train.lr=1e30", "train.grad_clip=0", "train.schedule=constant", "train.progress=false",
                       "train.threads=1", f"train.out_dir={tmp_path}")
    assert code == 1
    assert "at step" in err and "Traceback" not in err and err.count("\n") == 1


def test_generate_help_lists_every_decoding_option(capsys):
    import pytest as _pytest

    from scratchformer.cli import main as _main

    with _pytest.raises(SystemExit):
        _main(["generate", "--help"])
    out = capsys.readouterr().out
    for flag in ["--max-new-tokens", "--do-sample", "--temperature", "--top-k", "--top-p", "--num-beams",
                 "--num-return-sequences", "--repetition-penalty", "--no-repeat-ngram-size", "--length-penalty",
                 "--early-stopping", "--no-cache", "--stream", "--seed"]:
        assert flag in out, flag


def test_run_config_holds_typed_model_and_task_configs():
    from scratchformer.models import GPTConfig
    from scratchformer.tasks import TASKS
    from scratchformer.train.config import resolve_config

    cfg = resolve_config(None, ["model.norm_first=False", "model.bias=TRUE", "task.reverse_answer=0", "name=2024"])
    assert isinstance(cfg.model, GPTConfig) and cfg.arch == "gpt"
    assert isinstance(cfg.task, TASKS["addition_gpt"].config_class) and cfg.task_name == "addition_gpt"
    assert cfg.model.norm_first is False and cfg.model.bias is True and cfg.task.reverse_answer is False
    assert cfg.name == "2024"  # a string field takes the text as written
    # the JSON form round-trips, and the model section holds only what was given (the task fills the rest)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    assert set(cfg.to_dict()["model"]) == {"arch", "d_model", "n_head", "n_layer", "norm_first", "bias"}


@pytest.mark.parametrize("override, message", [
    ("model.norm_first=False", None), ("model.bias=nope", "model.bias='nope' is not a bool"),
    ("model.norm_eps=abc", "model.norm_eps='abc' is not a float or None"),
    ("model.init_std=-1", "init_std=-1.0 must be > 0"), ("model.init_std=abc", "model.init_std='abc' is not a float"),
    ("train.lr=NaN", "train.lr=nan is not a float (it must be finite)"),
    ("seed=100000000000000000000000", "seed=100000000000000000000000 is not an int"),
    ("seed=-1", "seed=-1 must be an integer in [0, 2**63)"),
    ("name=..", "name='..' cannot name a run directory"), ("name=a/b", "name='a/b' cannot name a run directory"),
])
def test_print_config_parses_each_value_by_its_type(capsys, override, message, cli):
    code, out, err = cli("train", override, "--print-config")
    if message is None:
        assert code == 0 and json.loads(out)["model"]["norm_first"] is False
    else:
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err


# ---------------------------------------------------------------------- generate: every flag reaches generate(), foreign symbols, streaming
def _captured_generate_kwargs(monkeypatch, capsys, run_dir, *flags):
    from scratchformer.cli import main

    calls = []
    real = GPT.generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "generate", spy)
    code = main(["generate", str(run_dir), "12+34=", *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(calls) == 1
    return calls[0], out


def test_generate_command_passes_beam_flags(monkeypatch, capsys, tiny_run):
    kw, out = _captured_generate_kwargs(
        monkeypatch, capsys, tiny_run, "--num-beams", "3", "--num-return-sequences", "2", "--length-penalty", "0.5",
        "--early-stopping", "never", "--no-cache", "--max-new-tokens", "3", "--raw",
    )  # fmt: skip
    assert kw["num_beams"] == 3 and kw["num_return_sequences"] == 2 and kw["length_penalty"] == 0.5
    assert kw["early_stopping"] == "never" and kw["use_cache"] is False and kw["max_new_tokens"] == 3
    assert kw["do_sample"] is False
    assert len(out.strip().splitlines()) == 2  # one line per returned sequence


def test_generate_command_passes_sampling_flags(monkeypatch, capsys, tiny_run):
    kw, _ = _captured_generate_kwargs(
        monkeypatch, capsys, tiny_run, "--do-sample", "--temperature", "0.7", "--top-k", "3", "--top-p", "0.9",
        "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2", "--seed", "4", "--max-new-tokens", "2",
    )  # fmt: skip
    assert kw["do_sample"] is True and kw["temperature"] == 0.7 and kw["top_k"] == 3 and kw["top_p"] == 0.9
    assert kw["repetition_penalty"] == 1.3 and kw["no_repeat_ngram_size"] == 2 and kw["max_new_tokens"] == 2
    assert isinstance(kw["generator"], torch.Generator) and kw["generator"].initial_seed() == 4
    assert kw["eos_token_id"] is not None and kw["pad_token_id"] is not None


def test_generate_refuses_a_prompt_outside_the_vocabulary(capsys, tiny_run):
    from scratchformer.cli import main

    assert main(["generate", str(tiny_run), "ab+c="]) == 2
    err = capsys.readouterr().err
    assert "outside the run's vocabulary" in err and "'ab+c='" in err


def test_stream_of_a_reversed_answer_run_also_prints_it_unreversed(capsys, tiny_run):
    from scratchformer.cli import main

    assert main(["generate", str(tiny_run), "12+34=", "--stream"]) == 0
    out = capsys.readouterr().out.splitlines()
    streamed = out[0].split("=", 1)[1]  # the digits as the model wrote them, least significant first
    if streamed:
        assert out[1].endswith(f"un-reversed: {streamed[::-1].lstrip('0') or '0'})")
    else:  # the model ended at once: no answer was generated, so none is shown (not a made-up "0")
        assert out == ["12+34="]


def test_the_command_sets_the_cpu_wait_policy_before_torch_loads():
    """scratchformer.cpu_policy runs first in main(), before torch is imported, unless the user chose a policy."""
    code = (
        "import os, sys\n"
        "from scratchformer import cpu_policy\n"
        "seen = []\n"
        "real = cpu_policy.apply\n"
        "cpu_policy.apply = lambda: (seen.append('torch' in sys.modules), real())[1]\n"
        "from scratchformer.cli import main\n"
        "main(['train', 'train.steps=3', '--print-config'])\n"
        "import torch\n"
        "print(seen, os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    from scratchformer.cpu_policy import SPIN_COUNT

    assert out.splitlines()[-1] == f"[False] {SPIN_COUNT} None"
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # the user's choice wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.splitlines()[-1] == "[False] None PASSIVE"


def test_thread_count_follows_the_idle_cpus():
    """The command's torch threads: every available CPU when the machine is idle, fewer beside busy processes."""
    from scratchformer.cpu_policy import thread_count

    assert thread_count(2, 1.95) == 2   # idle 2-core machine
    assert thread_count(2, 1.0) == 1    # one CPU-bound process beside us
    assert thread_count(2, 0.1) == 1    # never zero
    assert thread_count(4, 8.0) == 4    # never more than available
    assert thread_count(2, None) == 2   # unreadable /proc/stat: all available CPUs
