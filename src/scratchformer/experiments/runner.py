"""Run an experiment: every (variant, seed), its evaluations, then the report.

The output directory holds::

    runs/<variant>/seed<k>/   each run's directory (the trainer's files, plus
                              experiment_run.json: the requested config and, once
                              done, its evaluation outcome and wall time)
    report.md                 tables (median and min–max over seeds), command, machine, wall times
    results.json              every figure of the report, per run and summarised
    plots/*.png

Resuming is the default: a run whose ``experiment_run.json`` records its
outcome is kept; a run with a config.json but no outcome continues from its
newest checkpoint (the trainer's resume); the rest start fresh. A run
directory written with other settings is an error, before any work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import save_json
from ..errors import ConfigError
from .evaluations import (
    ExperimentContext,
    Outcome,
    RunContext,
    Section,
    evaluations_in_scope,
    run_evaluation,
)
from .spec import Plan, PlannedRun, config_digest, same_settings

logger = logging.getLogger(__name__)

RUN_RECORD = "experiment_run.json"


def machine_info() -> dict[str, Any]:
    """CPU model, core count, load average, platform and library versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def default_out_dir(plan: Plan) -> Path:
    suffix = "-quick" if plan.quick else ""
    return Path("runs") / "experiments" / f"{plan.experiment.name}{suffix}"


@dataclass
class RunState:
    planned: PlannedRun
    run_dir: Path
    status: str  # "done", "resume" or "new"
    record: dict[str, Any]


def inspect_runs(plan: Plan, out_dir: Path) -> list[RunState]:
    """Each planned run's directory and whether it is done, half done or new.

    Raises:
        ConfigError: a run directory that holds a run of other settings.
    """
    states = []
    for planned in plan.runs:
        run_dir = out_dir / "runs" / planned.variant / f"seed{planned.seed}"
        record_path = run_dir / RUN_RECORD
        record: dict[str, Any] = {}
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                record = {}
            if not same_settings(record.get("config"), config_digest(planned.config)):
                raise ConfigError(
                    f"{str(run_dir)!r} holds a run of other settings than this experiment's {planned.key}; "
                    f"write elsewhere with --out DIR, or delete {str(out_dir)!r} to start over"
                )
        elif run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"{str(run_dir)!r} exists but was not written by this experiment runner; "
                              f"write elsewhere with --out DIR")
        if record.get("outcome") is not None:
            status = "done"
        elif (run_dir / "config.json").is_file():
            status = "resume"
        else:
            status = "new"
        states.append(RunState(planned, run_dir, status, record))
    return states


def _train_one(state: RunState, quick: bool) -> None:
    from ..train.trainer import train

    if state.status == "new":
        state.run_dir.mkdir(parents=True, exist_ok=True)
        state.record = {"config": config_digest(state.planned.config), "wall_s": 0.0, "outcome": None}
        save_json(state.run_dir / RUN_RECORD, state.record)
    if not (state.run_dir / "results.json").is_file():
        from ..train.checkpoint import latest_checkpoint

        # a run killed before its first checkpoint starts over (the trainer allows that; it refuses to resume it)
        train(state.planned.config, run_dir=state.run_dir, resume=latest_checkpoint(state.run_dir) is not None)


def _evaluate_one(state: RunState, plan: Plan) -> dict[str, Any]:
    ctx = RunContext(run_dir=state.run_dir, variant=state.planned.variant, seed=state.planned.seed,
                     config=state.planned.config, quick=plan.quick, first_seed=state.planned.seed == plan.seeds[0])
    merged = Outcome()
    for spec in evaluations_in_scope(plan.experiment.evaluations, "run"):
        outcome: Outcome = run_evaluation(spec, ctx)
        merged.metrics.update(outcome.metrics)
        merged.curves.update(outcome.curves)
        if outcome.text:
            merged.text = f"{merged.text}\n\n{outcome.text}".strip()
    return {"metrics": merged.metrics, "curves": {k: {str(x): y for x, y in c.items()} for k, c in merged.curves.items()},
            "text": merged.text}


def run_experiment(
    plan: Plan,
    out_dir: str | os.PathLike | None = None,
    *,
    command: Sequence[str] | None = None,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every planned run (resuming what is there), then write the report.

    Args:
        plan: from ``Experiment.plan``.
        out_dir: the experiment directory (default ``runs/experiments/<name>[-quick]``).
        command: the command line to print in the report (default: this process's argv).
        progress: show a tqdm bar over the whole experiment (None: when stderr is a terminal).
        announce: called with a line when each run starts (the CLI prints it).

    Returns:
        the results.json data.
    """
    from tqdm.auto import tqdm

    from ..train.logs import show_progress
    from .report import summarise, write_report

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(plan)
    states = inspect_runs(plan, out_dir)  # refuses foreign directories before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started = time.perf_counter()
    todo = [s for s in states if s.status != "done"]
    total_steps = sum(s.planned.config.train.steps for s in todo)
    bar = tqdm(total=total_steps, desc=plan.experiment.name, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not show_progress(progress), position=0,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]")
    try:
        for i, state in enumerate(todo, 1):
            what = f"{state.planned.variant} seed {state.planned.seed}"
            bar.set_description(f"{plan.experiment.name} [{i}/{len(todo)}] {what}")
            if announce is not None:
                verb = "resuming" if state.status == "resume" else "running"
                announce(f"[{i}/{len(todo)}] {verb} {what} -> {state.run_dir}")
            t0 = time.perf_counter()
            _train_one(state, plan.quick)
            state.record["outcome"] = _evaluate_one(state, plan)
            state.record["wall_s"] = state.record.get("wall_s", 0.0) + time.perf_counter() - t0
            save_json(state.run_dir / RUN_RECORD, state.record)
            state.status = "done"
            bar.update(state.planned.config.train.steps)
    finally:
        bar.close()
    runs_s = time.perf_counter() - started
    sections: list[Section] = []
    ctx = ExperimentContext(out_dir=out_dir, plan=plan, run_dirs={s.planned.key: s.run_dir for s in states},
                            quick=plan.quick)
    for spec in evaluations_in_scope(plan.experiment.evaluations, "experiment"):
        if announce is not None:
            announce(f"evaluating {spec.name}")
        sections.append(run_evaluation(spec, ctx))
    results = summarise(plan, states, sections, machine=machine,
                        command=list(command) if command is not None else list(sys.argv),
                        wall_s=time.perf_counter() - started, runs_s=runs_s)
    write_report(results, out_dir, plan, states)
    return results


def command_line(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def isfinite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
