"""The evaluations an experiment file may name: a small registry.

Two scopes:

- ``run`` evaluations look at one finished run (one variant, one seed) and
  return an :class:`Outcome`: scalar ``metrics`` (columns of the results table,
  summarised as median and min–max over seeds), ``curves`` (x -> y, plotted one
  line per variant, e.g. accuracy by length) and optional markdown ``text``.
- ``experiment`` evaluations run once per experiment, after every run, and
  return a :class:`Section` of the report (for measurements that are not a
  training run, such as mlp-warmup's NumPy/PyTorch timing).

Adding one is a function plus one line in :data:`EVALUATIONS`; its keyword
arguments are the options an experiment file may give it (checked when the
file is loaded, with a did-you-mean).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean, unknown_name
from ..train.config import RunConfig


@dataclass
class RunContext:
    """What a run evaluation may look at. ``run()`` and ``task()`` load lazily and cache."""

    run_dir: Path
    variant: str
    seed: int
    config: RunConfig
    quick: bool
    first_seed: bool = True  # the experiment's first seed: where per-run text (examples) is kept
    _run: Any = None
    _task: Any = None

    def run(self, weights: str = "model") -> Any:
        """The run loaded back (``scratchformer.train.run.Run``: model in eval mode, tokenizer, config)."""
        from ..train.run import load_run

        if weights != "model":
            return load_run(self.run_dir, weights=weights)
        if self._run is None:
            self._run = load_run(self.run_dir)
        return self._run

    def task(self) -> Any:
        if self._task is None:
            self._task = self.run().build_task()
        return self._task

    def trainer_results(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "results.json").read_text(encoding="utf-8"))


@dataclass
class Outcome:
    """A run evaluation's result (see the module docstring)."""

    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, dict[float, float]] = field(default_factory=dict)
    text: str = ""


@dataclass
class ExperimentContext:
    """What an experiment evaluation may look at: the output directory, the plan, every run's directory."""

    out_dir: Path
    plan: Any
    run_dirs: dict[str, Path]
    quick: bool

    @property
    def plots_dir(self) -> Path:
        return self.out_dir / "plots"


@dataclass
class Section:
    """A report section written by an experiment evaluation: markdown, figures for results.json, plot files
    (relative to the experiment directory)."""

    title: str
    markdown: str
    metrics: dict[str, float] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """A registered evaluation; ``check(**options)`` (optional) raises ConfigError for bad option values
    when the experiment file is loaded."""

    fn: Callable[..., Any]
    scope: str  # "run" or "experiment"
    about: str
    check: Callable[..., None] | None = None


# ---------------------------------------------------------------------- run evaluations
def final_metrics(ctx: RunContext, splits: list[str] | None = None, metrics: list[str] | None = None) -> Outcome:
    """The trainer's final metrics per evaluation split (columns "<split> <metric>"), and the training time."""
    results = ctx.trainer_results()
    out: dict[str, float] = {}
    for split, values in results.get("splits", {}).items():
        if splits is not None and split not in splits:
            continue
        for name, value in values.items():
            if name == "examples" or (metrics is not None and name not in metrics):
                continue
            out[f"{split} {name}"] = float(value)
    out["training s"] = float(results.get("elapsed_s", math.nan))
    return Outcome(metrics=out)


def parameters(ctx: RunContext) -> Outcome:
    """The model's parameter count (column "parameters")."""
    model = ctx.run().model
    return Outcome(metrics={"parameters": float(sum(p.numel() for p in model.parameters()))})


def _length_range(text: str) -> list[int]:
    from ..tasks import parse_lengths

    return list(parse_lengths("by_length groups", text))


def _check_by_length(groups: list[str] | None = None, metric: str = "exact_match", **_: Any) -> None:
    for group in groups or []:
        _length_range(group)
    if metric not in ("exact_match", "token_accuracy"):
        raise ConfigError(f"by_length metric={metric!r} must be 'exact_match' or 'token_accuracy'")


def by_length(ctx: RunContext, split: str = "test", groups: list[str] | None = None, metric: str = "exact_match",
              max_per_length: int | None = None, batch_size: int = 256, label: str = "",
              decoding: dict[str, Any] | None = None) -> Outcome:
    """Accuracy per problem length on ``split`` (greedy decoding for generative tasks, the class for
    classifiers; ``decoding``: options for ``generate``). ``groups`` are length ranges such as "11..15":
    each becomes a column "<label or split> <range>", the example-weighted mean over those lengths;
    the whole table is a curve "<label or split metric> by length", plotted one line per variant."""
    from ..evaluate import evaluate_by_length

    run = ctx.run()
    task = ctx.task()
    table = evaluate_by_length(run.model, task, split, tokenizer=run.tokenizer or task.tokenizer,
                               batch_size=batch_size, max_per_length=max_per_length, **(decoding or {}))
    name = label or split
    values = {r.length: getattr(r, metric) for r in table.rows}
    counts = {r.length: r.n for r in table.rows}
    metrics = {}
    for group in groups or []:
        lengths = [n for n in _length_range(group) if n in values]
        total = sum(counts[n] for n in lengths)
        metrics[f"{name} {group}"] = sum(values[n] * counts[n] for n in lengths) / total if total else math.nan
    curve = label or f"{split} {metric.replace('_', ' ')}"
    return Outcome(metrics=metrics, curves={f"{curve} by length": values})


def decoding_strategies(ctx: RunContext, strategies: dict[str, dict[str, Any]], split: str = "test",
                        max_per_length: int | None = None, batch_size: int = 256, seed: int = 0) -> Outcome:
    """Exact match of each named decoding strategy (options for ``generate``: ``{}`` is greedy,
    ``{num_beams = 4}``, ``{do_sample = true, top_p = 0.9}``...) on ``split``: column "<strategy> exact match"."""
    import torch

    from ..evaluate import evaluate_by_length

    run = ctx.run()
    task = ctx.task()
    metrics: dict[str, float] = {}
    curves: dict[str, dict[float, float]] = {}
    for name, options in strategies.items():
        options = dict(options)
        if options.get("do_sample"):
            options["generator"] = torch.Generator().manual_seed(seed)
        table = evaluate_by_length(run.model, task, split, tokenizer=run.tokenizer or task.tokenizer,
                                   batch_size=batch_size, max_per_length=max_per_length, **options)
        metrics[f"{name} exact match"] = table.summary()["exact_match"]
        curves[f"{name} exact match by length"] = {r.length: r.exact_match for r in table.rows}
    return Outcome(metrics=metrics, curves=curves)


def lengthgen(ctx: RunContext, headline: str = "best+temp", temperatures: list[float] | None = None) -> Outcome:
    """Addition length generalisation (``addition_lengthgen`` runs): exact match per operand length under
    the ``headline`` knob (columns "<n> digits", "in-dist"), the attention temperature chosen on the
    validation length, steps and training CPU seconds. Every knob's figures (last weights, best on
    validation, best + temperature) go to the run's lengthgen.json for ``lengthgen_report``.
    See ``scratchformer.lengthgen``."""
    from ..lengthgen import TEMPERATURES, run_outcome

    return Outcome(metrics=run_outcome(ctx.run_dir, ctx.trainer_results(), headline, temperatures or TEMPERATURES))


def _check_lengthgen(headline: str = "best+temp", **_: Any) -> None:
    from ..lengthgen import KNOBS

    if headline not in KNOBS:
        raise unknown_name("lengthgen headline knob", headline, KNOBS)


def lengthgen_report(ctx: ExperimentContext, knobs: list[str] | None = None, train_max: int = 10) -> Section:
    """Per knob: a table of exact match per operand length (median [min–max] over seeds) for every
    variant, and a plot (one line per variant, min–max band, the training lengths shaded)."""
    from ..lengthgen import KNOBS, length_tables, plot_lengths

    parts, plots = [], []
    for knob in knobs or list(KNOBS):
        table, series = length_tables(ctx.run_dirs, knob)
        if not series:
            continue
        name = f"plots/lengthgen_{knob.replace('+', '_')}.png"
        plot_lengths(series, train_max, ctx.out_dir / name, f"exact match by operand length ({knob})")
        parts += [f"**{knob}** (exact match %, median [min–max] over seeds):", "", table, "", f"![{knob}]({name})", ""]
        plots.append(name)
    about = ("Knobs: `last` = final weights; `best` = the checkpoint best on the validation length "
             "(just past training); `best+temp` = that checkpoint with the attention-logit temperature chosen "
             "on the same validation length.")
    return Section(title="Exact match by operand length", markdown="\n".join([about, "", *parts]), plots=[])


def contamination(ctx: RunContext, split: str = "test", train_split: str | None = None, show: int = 3) -> Outcome:
    """The fraction of ``split``'s problems that also occur in training (column
    "<split> problems seen in training"), with a few of them listed."""
    from ..tasks import task_contamination

    report = task_contamination(ctx.task(), train_split, split)
    text = ""
    if ctx.first_seed:
        listed = ", ".join(f"`{x}`" for x in report["examples"][:show])
        text = (f"{report['count']} of {report['total']} {split} problems ({100 * report['fraction']:.1f}%) also occur in "
                f"training{': ' + listed if listed else ''}.")
    return Outcome(metrics={f"{split} problems seen in training": report["fraction"]}, text=text)


def during_training(ctx: RunContext, split: str = "test", max_examples: int = 300, show: int = 3,
                    batch_size: int = 256) -> Outcome:
    """Greedy exact match of every saved checkpoint on the first ``max_examples`` problems of ``split``
    (curve "<split> exact match by step"), and, for the first seed, up to ``show`` wrong answers at
    each checkpoint, as the GPT tutorial prints them while it trains. The run must keep its
    checkpoints (``train.checkpoint_every``, ``train.keep_checkpoints``)."""
    from ..evaluate import generate_answers
    from ..train.checkpoint import list_checkpoints, load_model_weights

    run = ctx.run()
    task = ctx.task()
    tok = run.tokenizer or task.tokenizer
    prompts = task.prompts(split)[:max_examples]
    from ..train.run import load_run

    model = load_run(ctx.run_dir).model  # a private copy: the checkpoints' weights go into it
    curve: dict[float, float] = {}
    lines = []
    for path in list_checkpoints(ctx.run_dir):
        step = int(path.name.rsplit("_", 1)[-1])
        load_model_weights(model, path / "model.safetensors", run.arch)
        model.eval()
        answers = generate_answers(model, task, prompts, tokenizer=tok, batch_size=batch_size)
        wrong = []
        for p, new_ids in zip(prompts, answers):
            if not task.check_answer(p.ids, tok.decode(new_ids)):
                shown = tok.decode(list(p.ids), skip_special_tokens=True)
                end = new_ids.index(tok.eos_token_id) if tok.eos_token_id in new_ids else len(new_ids)
                got = task.present_answer(shown, tok.decode(new_ids[:end], skip_special_tokens=True)).text
                wrong.append(f"`{shown}{got}` (correct: {task.present_answer(shown, p.answer).text})")
        curve[step] = 1 - len(wrong) / len(prompts)
        if ctx.first_seed:
            shown = "; ".join(wrong[:show]) if wrong else "none wrong"
            lines.append(f"| {step} | {100 * curve[step]:.1f}% | {shown} |")
    text = ""
    if lines:
        text = "\n".join([f"Wrong answers during training ({split}, first {len(prompts)} problems, greedy):", "",
                          "| step | exact match | some wrong answers |", "|---:|---:|---|", *lines])
    return Outcome(curves={f"{split} exact match by step": curve}, text=text)


def swap_agreement(ctx: RunContext, split: str = "test", max_examples: int = 2000, batch_size: int = 512) -> Outcome:
    """Difference-sign classifiers: how often the model gives ``b-a`` the same class as ``a-b``
    (column "same class for a-b and b-a"). The two always have opposite labels (unless a = b), so a
    model that answers both alike is at chance; a model that cannot tell the order of its input
    tokens (no positions, no causal mask) answers them alike every time."""
    import numpy as np
    import torch

    run = ctx.run()
    task = ctx.task()
    tok = run.tokenizer or task.tokenizer
    texts = task.texts(split)[:max_examples]
    T = task.config.max_length

    def batch(rows: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = np.full((len(rows), T), tok.pad_token_id, dtype=np.int64)  # (N, T); the last column is the class token
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for i, text in enumerate(rows):
            enc = tok.encode(text)
            ids[i, : len(enc)] = enc
            mask[i, : len(enc)] = 1
        mask[:, -1] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    swapped = ["-".join(reversed(t.split("-", 1))) for t in texts]
    same = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            preds = []
            for rows in (texts[start:start + batch_size], swapped[start:start + batch_size]):
                ids, mask = batch(rows)
                preds.append(run.model(ids, attention_mask=mask).argmax(-1))
            same += int((preds[0] == preds[1]).sum())
    return Outcome(metrics={"same class for a-b and b-a": same / len(texts)})


# ---------------------------------------------------------------------- experiment evaluations
def ask(ctx: ExperimentContext, prompts: list[str], variant: str | None = None) -> Section:
    """Questions put to a trained run on the command line, ``scratchformer generate RUN "PROMPT"`` in a
    child process (the tutorial's ``what_is``), with what it printed."""
    import shlex
    import subprocess
    import sys

    plan = ctx.plan
    variant = variant or plan.variants[-1]
    key = f"{variant}/seed{plan.seeds[0]}"
    if key not in ctx.run_dirs:  # --variants left it out
        return Section(title="Asking the model",
                       markdown=f"Not asked: the variant `{variant}` was not among this invocation's variants.")
    run_dir = ctx.run_dirs[key]
    lines = []
    for prompt in prompts:
        argv = ["generate", str(run_dir), prompt]
        proc = subprocess.run([sys.executable, "-m", "scratchformer", *argv], capture_output=True, text=True,
                              timeout=300)
        printed = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise RuntimeError(f"`scratchformer {shlex.join(argv)}` failed: {printed}")
        lines += [f"$ scratchformer {shlex.join(argv)}", printed]
    markdown = "\n".join([f"The run `{variant}` seed {plan.seeds[0]}, asked from the command line:", "", "```",
                          *lines, "```"])
    return Section(title="Asking the model", markdown=markdown)


def split_overlap(ctx: ExperimentContext, task: dict[str, Any], split: str = "test", about: str = "") -> Section:
    """How much of ``split`` another way of splitting (``task``: a task's options, with ``name``) shares
    with its training split, without training anything (e.g. the GPT tutorial's independent draws)."""
    from ..tasks import build_task, task_contamination

    options = dict(task)
    built = build_task(options.pop("name"), **options)
    report = task_contamination(built, None, split)
    shown = ", ".join(f"`{x}`" for x in report["examples"][:3])
    markdown = (f"{about + ': ' if about else ''}{report['count']} of its {report['total']} {split} problems "
                f"({100 * report['fraction']:.1f}%) also occur in its training split (e.g. {shown}). Task options: "
                f"`{json.dumps(task, sort_keys=True)}`.")
    return Section(title=f"Another split: {split} problems seen in training", markdown=markdown,
                   metrics={f"{split} problems seen in training": report["fraction"]})


def tokenizer_counts(ctx: ExperimentContext) -> Section:
    """The first run's tokenizer: each id, its token and, for a tokenizer fitted on a corpus
    (``task.corpus()``), how often the token occurs there (the tutorial prints these counts)."""
    from collections import Counter

    from ..train.run import load_run

    run_dir = next(iter(ctx.run_dirs.values()))
    run = load_run(run_dir)
    task = run.build_task()
    tok = run.tokenizer
    corpus = task.corpus() if hasattr(task, "corpus") else []
    counts = Counter("".join(corpus))
    specials = [i for i in range(tok.vocab_size) if len(tok.id_to_token(i)) > 1]
    lines = [f"`{type(tok).__name__}`, vocabulary size {tok.vocab_size}"
             + (f", fitted on the first {len(corpus)} training expressions: {len(counts)} characters, and the padding "
                f"id (the tutorial's Keras tokenizer counts these {len(counts) + 1}); the other "
                f"{len(specials) - 1} special ids are reserved by this tokenizer and never occur here."
                if corpus else "."), "",
             "| id | token | count in the corpus |", "|---:|---|---:|"]
    for i in range(tok.vocab_size):
        token = tok.id_to_token(i)
        lines.append(f"| {i} | `{token}` | {counts.get(token, 0) if len(token) == 1 else '–'} |")
    metrics = {"vocabulary size": float(tok.vocab_size)}
    if corpus:
        metrics["characters"] = float(len(counts))
    return Section(title="The tokenizer", markdown="\n".join(lines), metrics=metrics)


# ---------------------------------------------------------------------- the registry
EVALUATIONS: dict[str, Evaluation] = {
    "final_metrics": Evaluation(final_metrics, "run", "the trainer's final metrics per split, and training time"),
    "parameters": Evaluation(parameters, "run", "the model's parameter count"),
    "by_length": Evaluation(by_length, "run", "accuracy per problem length, with range columns", _check_by_length),
    "decoding_strategies": Evaluation(decoding_strategies, "run", "exact match of several decoding strategies"),
    "lengthgen": Evaluation(lengthgen, "run", "addition exact match per operand length under each inference knob",
                            _check_lengthgen),
    "lengthgen_report": Evaluation(lengthgen_report, "experiment",
                                   "per-length tables and plots over seeds with the training range shaded"),
    "contamination": Evaluation(contamination, "run", "the fraction of an evaluation split seen in training"),
    "during_training": Evaluation(during_training, "run", "exact match and wrong answers at every checkpoint"),
    "ask": Evaluation(ask, "experiment", "questions put to a run through `scratchformer generate`"),
    "swap_agreement": Evaluation(swap_agreement, "run", "difference sign: the same class for a-b and b-a?"),
    "split_overlap": Evaluation(split_overlap, "experiment", "how much of a split another splitting shares with training"),
    "tokenizer_counts": Evaluation(tokenizer_counts, "experiment", "the tokenizer's ids and corpus frequencies"),
}


def register_evaluation(name: str, scope: str, about: str, check: Callable[..., None] | None = None
                        ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding a function to :data:`EVALUATIONS` (``scope`` "run" or "experiment")."""
    if scope not in ("run", "experiment"):
        raise ValueError(f"scope must be 'run' or 'experiment', got {scope!r}")

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        EVALUATIONS[name] = Evaluation(fn, scope, about, check)
        return fn

    return add


def get_evaluation(name: str) -> Evaluation:
    """The registered evaluation ``name`` (experiment-specific ones register when the package
    ``scratchformer.experiments`` is imported, which importing any of its modules does)."""
    if name not in EVALUATIONS:
        raise unknown_name("evaluation", name, EVALUATIONS)
    return EVALUATIONS[name]


def check_evaluation(spec: Any, where: str) -> None:
    """ConfigError unless ``spec.name`` is registered and takes ``spec.options``."""
    try:
        evaluation = get_evaluation(spec.name)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    params = list(inspect.signature(evaluation.fn).parameters.values())[1:]  # after the context
    names = [p.name for p in params]
    for key in spec.options:
        if key not in names:
            raise ConfigError(f"{where}: evaluation {spec.name!r} has no option {key!r}{did_you_mean(key, names)}; "
                              f"its options are {names}")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in spec.options:
            raise ConfigError(f"{where}: evaluation {spec.name!r} needs the option {p.name!r}")
    if evaluation.check is not None:
        try:
            evaluation.check(**spec.options)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def run_evaluation(spec: Any, ctx: Any) -> Any:
    """Run ``spec`` (its ``--quick`` options when ``ctx.quick``) on ``ctx``."""
    spec = spec.for_run(ctx.quick)
    return get_evaluation(spec.name).fn(ctx, **spec.options)


def evaluations_in_scope(specs: list[Any], scope: str) -> list[Any]:
    return [s for s in specs if get_evaluation(s.name).scope == scope]
