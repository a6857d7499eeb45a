"""Experiments as data: ``scratchformer experiment NAME`` trains every variant over seeds,
evaluates, plots and writes a report.

The built-in experiments are the TOML files in this package (one per
tutorial experiment); a user's own file runs the same way. See
:mod:`scratchformer.experiments.spec` for the file format,
:mod:`scratchformer.experiments.evaluations` for the evaluations a file may
name, and docs/experiments.md.
"""

from . import warmup  # noqa: F401  (registers mlp-warmup's evaluations)
from .evaluations import EVALUATIONS, ExperimentContext, Outcome, RunContext, Section, register_evaluation
from .runner import default_out_dir, machine_info, run_experiment
from .spec import Experiment, Plan, builtin_files, load_experiment, read_experiment_file

__all__ = [
    "EVALUATIONS",
    "Experiment",
    "ExperimentContext",
    "Outcome",
    "Plan",
    "RunContext",
    "Section",
    "builtin_files",
    "default_out_dir",
    "load_experiment",
    "machine_info",
    "read_experiment_file",
    "register_evaluation",
    "run_experiment",
]
from . import tutorial_evaluations  # noqa: F401,E402  (registers the sequence experiments' evaluations)
