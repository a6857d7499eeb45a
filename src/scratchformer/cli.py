"""The ``scratchformer`` command: train, eval, generate, experiment, viz.

Every subcommand has ``--help`` with examples. A bad input (a missing run
directory, an unknown config key, an impossible value) prints one line
``scratchformer: error: ...`` and exits with status 2; a run stopped by a
non-finite loss exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ScratchformerError

if TYPE_CHECKING:
    from .tasks import ShownAnswer

EXIT_USAGE = 2
EXIT_FAILED = 1

TRAIN_EPILOG = """\
examples:
  scratchformer train
      the default: a small GPT learns 3-digit addition (answer reversed) in under a minute on a laptop CPU
  scratchformer train configs/addition_gpt.toml train.steps=3000 name=longer
  scratchformer train model.n_layer=4 task.max_digits=4 train.lr=1e-3 seed=1
  scratchformer train model.arch=encoder_classifier task.name=difference_sign train.steps=500
  scratchformer train --resume runs/longer            continue a killed or finished run
  scratchformer train init_from=path/to/bert task.name=text_classification task.path=reviews.csv
      fine-tune a Hugging Face BERT directory (or GPT-2, or a run directory) on a labelled CSV/JSONL
  torchrun --nproc_per_node=2 -m scratchformer train train.batch_size=256      data parallel

overrides are key=value with dotted keys in the sections model.*, task.*, train.*, and seed, name, init_from;
values are JSON literals (4, 1e-3, true, [3, 4], null) or else strings. An unknown key is an error
with a did-you-mean. `--print-config` shows the resulting config (model and task fields left out
take their class defaults or are filled in from the task; config.json in the run directory has them all).
"""

EVAL_EPILOG = """\
examples:
  scratchformer eval runs/20250101-120000
  scratchformer eval runs/addition --split test --best
  scratchformer eval path/to/gpt2 --data some.txt                 a Hugging Face GPT-2 directory: perplexity
  scratchformer eval path/to/bert-sentiment --data reviews.csv    a Hugging Face BERT directory: accuracy
"""

GENERATE_EPILOG = """\
examples:
  scratchformer generate runs/addition "123+456="
  scratchformer generate runs/shakespeare "ROMEO:" --max-new-tokens 200 --do-sample --temperature 0.8 --top-p 0.9
  scratchformer generate runs/shakespeare "ROMEO:" --num-beams 4
  scratchformer generate path/to/gpt2 "I enjoy walking with my cute dog" --do-sample --top-k 50 --top-p 0.95 \
      --temperature 0.7 --no-repeat-ngram-size 2 --max-new-tokens 40
      a Hugging Face-format GPT-2 directory (config.json, model.safetensors, tokenizer files)

For a reversed-answer arithmetic run the answer is shown un-reversed (and said so).
"""

EXPERIMENT_EPILOG = """\
examples:
  scratchformer experiment --list                      the built-in experiments, with rough times
  scratchformer experiment classify-ladder --quick     the reduced version (about 30 s)
  scratchformer experiment classify-ladder --seeds 5 train.steps=3000
  scratchformer experiment my_experiment.toml          your own experiment file (format: docs/experiments.md)

Writes runs/experiments/NAME (NAME-quick with --quick; --out DIR to choose): every variant's run
directory under runs/, report.md (median and min-max over seeds), plots/*.png and results.json.
Run the same command again to resume an interrupted experiment: finished runs are kept and a
half-finished one continues from its last checkpoint. key=value overrides apply to every variant.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subparser per command, each added by its ``_add_<command>_parser``."""
    parser = _Parser(
        prog="scratchformer",
        description="scratchformer: a from-scratch Transformer workbench. Train, evaluate and sample from models.",
        epilog="run `scratchformer <command> --help` for a command's options and examples",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details (INFO level)")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    _add_train_parser(sub, common)
    _add_eval_parser(sub, common)
    _add_generate_parser(sub, common)
    _add_experiment_parser(sub, common)
    from .viz.command import add_viz_parser

    add_viz_parser(sub, [common])
    return parser


def _add_train_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``scratchformer train``: a config file and key=value overrides, --resume, --run-dir, --print-config."""
    p = sub.add_parser(
        "train",
        help="train a model (default: GPT on reversed-answer addition)",
        description="Train a model on a task. With no arguments: the embedded default experiment, a small GPT "
        "learning 3-digit addition (operands zero-padded to 3 digits) with the answer written least-significant digit first.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    p.add_argument("items", nargs="*", metavar="CONFIG_OR_KEY=VALUE",
                   help="an optional config file (.toml or .json) followed by key=value overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest complete checkpoint "
                   "(overrides may change train.* options, e.g. train.steps)")
    p.add_argument("--run-dir", metavar="DIR", help="write the run here (default: train.out_dir/<name or timestamp>)")
    p.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")


def _add_eval_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``scratchformer eval RUN_DIR``: splits, weights, caps, --json, --compare."""
    p = sub.add_parser(
        "eval",
        help="evaluate a run directory on its task's evaluation splits",
        description="Evaluate a trained run on its task's evaluation splits and print a table of metrics "
        "(loss, token accuracy, exact match, accuracy, perplexity, as the task defines).",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `scratchformer train`, or a Hugging "
                   "Face-format GPT-2 or BERT directory (config.json, model.safetensors, tokenizer files) with --data")
    p.add_argument("--split", action="append", help="evaluate this split (repeatable; default: the test split)")
    p.add_argument("--best", action="store_true", help="use best.safetensors instead of model.safetensors")
    p.add_argument("--max-examples", type=int, default=0,
                   help="cap on evaluated examples (per problem length when tabulated by length; 0: all)")
    p.add_argument("--batch-size", type=int, default=512, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("--compare", metavar="OTHER_RUN", nargs="+", default=[],
                   help="also draw these runs' accuracy-by-length lines (from their eval.json) on the plot")
    p.add_argument("--data", metavar="FILE", help="for a Hugging Face directory: a text file (GPT-2: loss, "
                   "perplexity) or a labelled .csv/.jsonl (BERT: accuracy)")
    p.add_argument("--block-size", type=int, default=None,
                   help="for a Hugging Face GPT-2 directory: tokens per evaluated window (default: its context)")
    p.add_argument("--text-column", default="text", help="for a labelled --data file: the text column (default text)")
    p.add_argument("--label-column", default="label", help="for a labelled --data file: the label column (default label)")


def _add_generate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``scratchformer generate RUN_DIR PROMPT``: every decoding option."""
    p = sub.add_parser(
        "generate",
        help="generate text from a trained run",
        description="Tokenize PROMPT, decode new tokens with the run's model, and print the text.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `scratchformer train`, or a Hugging "
                   "Face-format GPT-2 directory (config.json, model.safetensors, tokenizer files)")
    p.add_argument("prompt", metavar="PROMPT", help='the prompt text, e.g. "123+456="')
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens to add (default: up to the model's max_len, at most 64)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set with probability >= p")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    p.add_argument("--num-return-sequences", type=int, default=1, help="how many continuations to print")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeating tokens")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, help="never repeat an n-gram of this size")
    p.add_argument("--length-penalty", type=float, default=None,
                   help="beam search: score = log-prob / length**penalty (> 0 favours longer outputs)")
    p.add_argument("--early-stopping", choices=["true", "false", "never"], default=None,
                   help="beam search: stop when num_beams hypotheses are done (true), heuristically (false), or never")
    p.add_argument("--no-cache", action="store_true", help="recompute every position each step (no key/value cache)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are produced (greedy or sampling)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--best", action="store_true", help="use best.safetensors instead of model.safetensors")
    p.add_argument("--raw", action="store_true", help="print the model's output as is (no un-reversing)")


def _add_experiment_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``scratchformer experiment NAME_OR_FILE``: --list, --quick, --seeds, --out, --nanogpt."""
    p = sub.add_parser(
        "experiment",
        help="run an experiment: every variant over seeds, evaluated, with a report",
        description="Run a built-in experiment (by NAME) or your own (a .toml file): train every variant "
        "for every seed, evaluate, and write report.md, plots and results.json.",
        epilog=EXPERIMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    p.add_argument("items", nargs="*", metavar="NAME_OR_FILE [KEY=VALUE ...]",
                   help="an experiment name (see --list) or .toml file, then key=value overrides for every run")
    p.add_argument("--list", action="store_true", help="list the built-in experiments and exit")
    p.add_argument("--quick", action="store_true", help="the reduced version (about 30 s), as CI runs it")
    p.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 instead of the experiment's own")
    p.add_argument("--out", metavar="DIR", help="the experiment directory (default runs/experiments/NAME[-quick])")
    p.add_argument("--variants", metavar="A,B", help="run only these variants (comma-separated); the report "
                   "covers them. Processes given different variants may share one --out directory")
    p.add_argument("--nanogpt", metavar="DIR",
                   help="a nanoGPT checkout: shakespeare-char runs its train.py here too and compares wall times "
                        "side by side (otherwise against a stored figure, with its machine named)")


# ---------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import RunConfig, apply_overrides, load_config_file, merge, DEFAULT_RUN
    from .train.run import read_run_config
    from .train.trainer import train

    items = list(args.items)
    config_file = None
    if items and "=" not in items[0]:
        config_file = items.pop(0)
    for item in items:
        if "=" not in item:
            raise _usage(f"{item!r} is neither a key=value override nor (in first position) a config file")
    if args.resume:
        if config_file is not None:
            raise _usage("--resume takes the config from the run directory; pass only key=value overrides")
        data = read_run_config(args.resume).to_dict()
    else:
        data = json.loads(json.dumps(DEFAULT_RUN))
        if config_file is not None:
            data = merge(data, load_config_file(config_file))
    cfg = RunConfig.from_dict(apply_overrides(data, items))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    run_dir = args.resume or args.run_dir
    result = train(cfg, run_dir=run_dir, resume=bool(args.resume))
    if result.metrics is not None and _is_main():
        print(format_results(result.metrics, title=f"results after {result.step} steps ({result.elapsed_s:.0f} s of training)"))
        if result.best:
            print(f"best {result.best['metric']} on {result.best['split']}: {result.best['value']:.4f} at step {result.best['step']}")
        print(f"run directory: {result.run_dir}")
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


METRIC_ORDER = ("loss", "exact_match", "accuracy", "token_accuracy", "perplexity", "examples")


def format_results(metrics: dict[str, dict[str, float]], title: str = "") -> str:
    """A plain-text table: one row per split, one column per metric."""
    columns = [m for m in METRIC_ORDER if any(m in row for row in metrics.values())]
    columns += sorted({k for row in metrics.values() for k in row} - set(columns))
    header = ["split", *columns]
    rows = []
    for split, row in metrics.items():
        cells = [split]
        for c in columns:
            v = row.get(c)
            if v is None:
                cells.append("-")
            elif c == "examples":
                cells.append(f"{int(v)}")
            elif c in ("exact_match", "accuracy", "token_accuracy"):
                cells.append(f"{100 * v:.2f}%")
            else:
                cells.append(f"{v:.4f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_report import evaluate_run
    from .train.run import read_run_config
    from .interop.hf_dir import is_hf_dir

    args.run_dir = _local_or_hub(args.run_dir)
    if is_hf_dir(args.run_dir):
        return _eval_hf(args)
    if args.data is not None:
        raise _usage("--data is for a Hugging Face directory; a run directory is evaluated on its own task's splits")

    for run_dir in [args.run_dir, *args.compare]:
        read_run_config(run_dir)  # a clear error for a missing/foreign directory first
    if args.max_examples < 0 or args.batch_size <= 0:
        raise _usage("--max-examples must be >= 0 and --batch-size > 0")
    weights = "best" if args.best else "model"
    # teacher-forced metrics, then generation accuracy by length and its plot
    for split in args.split or [None]:
        report = evaluate_run(args.run_dir, split=split, weights=weights, batch_size=args.batch_size,
                              max_per_length=args.max_examples or None, compare=tuple(args.compare))
        _print_eval_report(report, Path(args.run_dir), args.json)
    return 0


def _print_eval_report(report: dict[str, Any], run_dir: Path, as_json: bool) -> None:
    """Print what ``scratchformer.eval_report.evaluate_run`` returned."""
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    split = report.get("split", "?")
    if report.get("metrics"):
        print(format_results({split: report["metrics"]}, title=f"{report.get('task', '')} {split} (teacher-forced)"))
    table = report.get("by_length")
    if table:
        from .evaluate import LengthTable

        print(f"\naccuracy by length, {split} (generated answers):")
        print(LengthTable.from_dict(table).to_markdown())
    if report.get("plot"):
        print(f"plot: {run_dir / report['plot']}")


# ---------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .errors import ConfigError
    from .train.run import load_run, read_run_config
    from .interop.hf_dir import is_hf_dir

    args.run_dir = _local_or_hub(args.run_dir)
    if is_hf_dir(args.run_dir):
        return _generate_hf(args)

    read_run_config(args.run_dir)
    run = load_run(args.run_dir, weights="best" if args.best else "model")
    if run.arch not in ("gpt", "encoder_decoder"):
        raise ConfigError(f"generate needs a 'gpt' or 'encoder_decoder' run; {args.run_dir} is {run.arch!r}")
    tok = run.tokenizer
    if tok is None:
        raise ConfigError(f"{args.run_dir} has no tokenizer.json, so text prompts cannot be encoded")
    if args.seed is not None:
        if not 0 <= args.seed < 2**63:
            raise _usage(f"--seed {args.seed} must be an integer in [0, 2**63)")
        torch.manual_seed(args.seed)
    task = run.task_for_prompts()
    if run.arch == "gpt" and hasattr(task, "answer_user_problem"):  # it decodes with its own position ids
        try:
            result = task.answer_user_problem(run.model, args.prompt)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        print(f"{args.prompt.strip().removesuffix('=')}={result['answer']}")
        if not result["answer"] == result["raw"]:
            print(f"(the model read {result['prompt']!r} and wrote {result['raw']!r}; shown as an ordinary number)")
        return 0
    prompt = task.format_prompt(args.prompt)
    ids = tok.encode(prompt)
    unk = getattr(tok, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise ConfigError(
            f"the prompt {args.prompt!r} has characters outside the run's vocabulary (they would become "
            f"{tok.id_to_token(unk)!r}); use only symbols the model was trained on"
        )
    if run.arch == "gpt" and run.bos_first and tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
        ids = [tok.bos_token_id, *ids]
    if not ids:
        raise ConfigError("the prompt encodes to no tokens; give some text")
    x = torch.tensor([ids], dtype=torch.long)
    options = _decoding_options(args, tok)
    model = run.model
    if run.arch == "gpt":
        room = model.config.max_len - len(ids)
        if room <= 0:
            raise ConfigError(f"the prompt has {len(ids)} tokens; the model's max_len is {model.config.max_len}")
        options["max_new_tokens"] = args.max_new_tokens if args.max_new_tokens is not None else min(64, room)
        if args.stream:
            return _print_stream(model, x, tok, options, None if args.raw else lambda a: task.present_answer(prompt, a))
        out = model.generate(x, **options)
        new = [row[len(ids):] for row in out.tolist()]
    else:
        options["max_new_tokens"] = args.max_new_tokens if args.max_new_tokens is not None else min(64, model.config.max_len - 1)
        out = model.generate(encoder_input_ids=x, **options)
        new = [row[1:] for row in out.tolist()]  # drop the start token
    shown_prompt = tok.decode(ids, skip_special_tokens=True)
    for row in new:
        if tok.eos_token_id is not None and tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        if not row:  # nothing generated (--max-new-tokens 0, or an end token first): the prompt alone
            print(shown_prompt if run.arch == "gpt" else "")
            continue
        text = tok.decode(row, skip_special_tokens=True)
        answer = task.present_answer(prompt, text) if not args.raw else None
        if answer is not None and answer.changed:
            print(f"{shown_prompt}{answer.text}")
            print(f"(the model writes the answer {answer.how_written}: {answer.written!r}; shown {answer.shown_as})")
        elif run.arch == "gpt":
            print(f"{shown_prompt}{text}")
        else:
            print(text)
    return 0


def _local_or_hub(name: str) -> str:
    """``name`` itself when it exists or is plainly a path; else a Hugging Face Hub name, fetched
    into the local cache when huggingface_hub is installed and online (a clear error otherwise)."""
    from .interop.hf_dir import looks_like_hub_name, resolve_model_dir

    if Path(name).exists() or not looks_like_hub_name(name) or name.count("/") != 1 and "/" in name:
        return name
    return str(resolve_model_dir(name))


def _generate_hf(args: argparse.Namespace) -> int:
    """``generate`` for a Hugging Face GPT-2 directory: our GPT with its weights, its own tokenizer."""
    import torch

    from .errors import ConfigError
    from .interop.hf_dir import load_hf_dir

    hf = load_hf_dir(args.run_dir)
    if hf.arch != "gpt":
        raise ConfigError(f"generate needs a GPT-2 directory; {args.run_dir} holds a {hf.hf_config.get('model_type')!r} model")
    if args.best:
        raise _usage("--best is for run directories; a Hugging Face directory has one set of weights")
    tok, model = hf.tokenizer, hf.model
    ids = tok.encode(args.prompt)
    if not ids:
        raise ConfigError("the prompt encodes to no tokens; give some text")
    room = model.config.max_len - len(ids)
    if room <= 0:
        raise ConfigError(f"the prompt has {len(ids)} tokens; the model's context is {model.config.max_len}")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    options = _decoding_options(args, tok)
    options["max_new_tokens"] = min(args.max_new_tokens if args.max_new_tokens is not None else 64, room)
    x = torch.tensor([ids], dtype=torch.long)
    if args.stream:
        return _print_stream(model, x, tok, options)
    out = model.generate(x, **options)
    for row in out.tolist():
        new = row[len(ids):]
        if tok.eos_token_id is not None and tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        print(args.prompt + tok.decode(new, skip_special_tokens=True))
    return 0


def _eval_hf(args: argparse.Namespace) -> int:
    """``eval`` for a Hugging Face directory on a local file (--data)."""
    from .interop.hf_dir import evaluate_hf_dir, load_hf_dir

    if args.data is None:
        raise _usage(f"{args.run_dir} is a Hugging Face directory, which has no task of its own: pass --data FILE "
                     "(a text file for GPT-2, a labelled .csv/.jsonl for BERT)")
    if args.max_examples < 0 or args.batch_size <= 0 or (args.block_size is not None and args.block_size < 2):
        raise _usage("--max-examples must be >= 0, --batch-size > 0 and --block-size >= 2")
    hf = load_hf_dir(args.run_dir)
    metrics = evaluate_hf_dir(hf, args.data, batch_size=min(args.batch_size, 64), max_examples=args.max_examples,
                              block_size=args.block_size, text_column=args.text_column, label_column=args.label_column)
    if args.json:
        print(json.dumps({"model": str(args.run_dir), "data": str(args.data), "metrics": metrics}, indent=2))
    else:
        print(format_results({Path(args.data).name: metrics}, title=f"{args.run_dir} on {args.data}"))
    return 0


def _decoding_options(args: argparse.Namespace, tok: Any) -> dict[str, Any]:
    """generate()'s keyword arguments from the command line's decoding flags (unset ones left out)."""
    import torch

    options: dict[str, Any] = {
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "num_beams": args.num_beams,
        "num_return_sequences": args.num_return_sequences,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "length_penalty": args.length_penalty,
    }
    if args.early_stopping is not None:
        options["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    if args.no_cache:
        options["use_cache"] = False
    if args.seed is not None:
        options["generator"] = torch.Generator().manual_seed(args.seed)
    return {k: v for k, v in options.items() if v is not None}


def _print_stream(model, x, tok, options: dict[str, Any], present: Callable[[str], ShownAnswer] | None = None) -> int:
    """Print the prompt, then each new token as soon as it is chosen; when ``present`` shows the
    answer rewritten for a person (e.g. un-reversed), add that reading on its own line."""
    from .generate import stream

    if options.get("num_return_sequences", 1) != 1:
        raise _usage("--stream prints one continuation; drop --num-return-sequences")
    tokens = stream(model, x, **options)  # options are checked here, before any output
    print(tok.decode(x[0].tolist(), skip_special_tokens=True), end="", flush=True)
    new: list[int] = []
    for step in tokens:
        token = int(step[0])
        if token == tok.eos_token_id:
            break
        new.append(token)
        print(tok.decode([token], skip_special_tokens=True), end="", flush=True)
    print()
    answer = present(tok.decode(new, skip_special_tokens=True)) if present is not None and new else None
    if answer is not None and answer.changed:
        print(f"(the answer was written {answer.how_written}; {answer.shown_as}: {answer.text})")
    return 0


# ---------------------------------------------------------------------- experiment
def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments import builtin_files, load_experiment, run_experiment
    from .experiments.report import fmt

    if args.list:
        if args.items:
            raise _usage("--list takes no experiment name")
        rows = []
        for name in builtin_files():
            exp = load_experiment(name)
            rows.append((name, exp.description, exp.time, exp.quick_time))
        width = max(len(r[0]) for r in rows)
        print(f"{'name'.ljust(width)}  {'full':>7}  {'quick':>6}  what it is")
        for name, about, full, quick in rows:
            print(f"{name.ljust(width)}  {full:>7}  {quick:>6}  {about}")
        return 0
    if not args.items:
        raise _usage("name an experiment (see `scratchformer experiment --list`) or give a .toml file")
    target, overrides = args.items[0], args.items[1:]
    if "=" in target:
        raise _usage(f"the first argument must be an experiment name or .toml file, got the override {target!r}")
    for item in overrides:
        if "=" not in item:
            raise _usage(f"{item!r} is not a key=value override (the experiment is named once, first)")
    if args.seeds is not None and args.seeds < 1:
        raise _usage(f"--seeds {args.seeds} must be >= 1")
    if args.nanogpt is not None:
        from .experiments.tutorial_evaluations import NANOGPT_ENV, check_nanogpt_checkout

        check_nanogpt_checkout(args.nanogpt)
        os.environ[NANOGPT_ENV] = args.nanogpt  # read by the nanogpt_reference evaluation
    experiment = load_experiment(target)
    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants is not None else None
    if only is not None and not only:
        raise _usage("--variants needs at least one variant name")
    plan = experiment.plan(quick=args.quick, seeds=range(args.seeds) if args.seeds else None, overrides=overrides,
                           only=only)
    command = ["scratchformer", "experiment", *sys.argv[2:]] if sys.argv[1:2] == ["experiment"] else \
        ["scratchformer", "experiment", target, *(["--quick"] if args.quick else []),
         *(["--seeds", str(args.seeds)] if args.seeds else []),
         *(["--variants", args.variants] if args.variants else []), *overrides]
    results = run_experiment(plan, args.out, command=command,
                             announce=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{experiment.name}: {len(plan.runs)} runs in {fmt(results['wall_s'])} s")
    target_result = results.get("target")
    if target_result:
        verdict = "met" if target_result["met"] else "NOT met"
        print(f"target {verdict}: {target_result['metric']} of {target_result['variant']} = {fmt(target_result['value'])}")
    print(f"report: {Path(results['out_dir']) / 'report.md'}")
    return 0


# ---------------------------------------------------------------------- entry point
class _UsageError(ScratchformerError):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def cmd_viz(args: argparse.Namespace) -> int:
    from .viz.command import cmd_viz as run_viz

    return run_viz(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "experiment": cmd_experiment,
            "viz": cmd_viz}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 training failed, 2 bad input)."""
    from . import cpu_policy

    cpu_policy.apply()  # before torch is imported: OpenMP threads spin briefly, then sleep (a busy CPU stays usable)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "experiment" and not any(x.startswith("-") for x in extra):
        args.items += extra  # overrides after an option: `experiment NAME --quick key=value`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from .io import WriteError
    from .train.trainer import NonFiniteLossError

    try:
        return COMMANDS[args.command](args)
    except NonFiniteLossError as e:
        print(f"scratchformer {args.command}: training stopped: {e}", file=sys.stderr)
        return EXIT_FAILED
    except WriteError as e:  # a full disk mid-run is a failure of the run (1); an unwritable path is bad input (2)
        print(f"scratchformer {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED if e.disk_full else EXIT_USAGE
    except ScratchformerError as e:
        print(f"scratchformer {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"scratchformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
