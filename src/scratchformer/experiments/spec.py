"""An experiment as data: a base run config, named variants, seeds, a quick version, evaluations.

An experiment file is TOML::

    description = "one line for `scratchformer experiment --list`"
    time = "6 min"              # rough wall time of the full version on a 2-core CPU
    seeds = [0, 1, 2]

    [base]                      # a run config, exactly as in configs/*.toml
    model = { arch = "encoder_classifier", d_model = 64 }
    task = { name = "difference_sign", train_lengths = "3..10", test_lengths = "11..15" }
    train = { steps = 1500, lr = 1e-3 }

    [variants.attention-only]   # each variant: partial model/task/train sections over the base
    about = "no MLP, no positions, no norm, no residual"
    model = { use_mlp = false, positional = "none", norm = "none", use_residual = false }

    [variants.plus-mlp]
    extends = "attention-only"  # start from another variant's settings (a ladder)
    seeds = [0]                 # optional: this variant's own seeds in the full version
    model = { use_mlp = true }

    [quick]                     # the reduced version (`--quick`): its own seeds, variants, settings
    seeds = [0]
    train = { steps = 30 }

    [[evaluations]]             # named evaluations from scratchformer.experiments.evaluations
    name = "by_length"
    split = "test"
    quick = { max_per_length = 50 }   # options --quick changes

    [target]                    # optional: the figure the experiment aims for
    metric = "test 11..15"      # a column of the results table
    at_least = 0.95
    about = "best rung >= 95% test accuracy on lengths 11..15 (median of 3 seeds)"

Everything is checked when the file is loaded: unknown keys (with a
did-you-mean), variants that extend nothing, evaluations that do not exist or
get options they do not take, and every variant's run config.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean, unknown_name
from ..train.config import RunConfig, apply_overrides, merge

TOP_KEYS = ("name", "description", "time", "quick_time", "seeds", "base", "variants", "quick", "evaluations",
            "target", "notes")
SECTION_KEYS = ("model", "task", "train")
VARIANT_KEYS = ("about", "extends", "seeds", *SECTION_KEYS)
QUICK_KEYS = ("seeds", "variants", *SECTION_KEYS)
TARGET_KEYS = ("metric", "at_least", "at_most", "variant", "about", "also")


@dataclass
class Variant:
    """One named set of settings: ``config`` is the partial run config laid over the base."""

    name: str
    about: str
    config: dict[str, Any]
    seeds: list[int] | None = None  # the full version's seeds for this variant (None: the experiment's)


@dataclass
class EvaluationSpec:
    """One evaluation to run: a name in the registry, its options, and the options ``--quick`` changes."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    quick_options: dict[str, Any] = field(default_factory=dict)

    def for_run(self, quick: bool) -> EvaluationSpec:
        """This evaluation with the ``quick`` options applied when ``quick``."""
        if not quick or not self.quick_options:
            return self
        return EvaluationSpec(self.name, {**self.options, **self.quick_options})


@dataclass
class Target:
    """The figure an experiment aims for: ``metric`` (a results column) of ``variant``
    (default: the best variant) at least / at most a value, as a median over seeds."""

    metric: str
    at_least: float | None = None
    at_most: float | None = None
    variant: str | None = None
    about: str = ""
    also: dict[str, float] = field(default_factory=dict)  # other columns' medians must be at most these

    def met(self, value: float) -> bool:
        ok = True
        if self.at_least is not None:
            ok = ok and value >= self.at_least
        if self.at_most is not None:
            ok = ok and value <= self.at_most
        return ok

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is closer to the target than ``b``."""
        return a < b if self.at_most is not None and self.at_least is None else a > b


@dataclass
class Experiment:
    """A parsed, checked experiment file.

    Attributes:
        name: the experiment's name (the file's stem unless it says otherwise).
        description: one line.
        time: rough wall time of the full version.
        seeds: seeds of the full version.
        base: the base run config (a dict in the shape of configs/*.toml).
        variants: in file order.
        quick: the ``[quick]`` table (seeds, variants, model/task/train).
        evaluations: in file order.
        target: the aim, or None.
        notes: markdown pasted into the report under the tables.
        source: the file it was read from.
    """

    name: str
    description: str
    time: str
    seeds: list[int]
    base: dict[str, Any]
    variants: list[Variant]
    quick: dict[str, Any]
    evaluations: list[EvaluationSpec]
    target: Target | None
    notes: str
    source: Path
    quick_time: str = "30 s"

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise unknown_name(f"variant of experiment {self.name!r}", name, [v.name for v in self.variants])

    def plan(self, *, quick: bool = False, seeds: Iterable[int] | None = None,
             overrides: Iterable[str] = (), only: Iterable[str] | None = None) -> Plan:
        """The runs to do: every (variant, seed) with its checked RunConfig.

        The order of settings, later winning: the base, the variant (and what it
        extends), the ``[quick]`` settings when ``quick``, then ``overrides``
        (``key=value`` strings as on the ``scratchformer train`` command line). ``only`` keeps
        just those variants (in the file's order).

        Raises:
            ConfigError: a bad override or a variant whose config does not check,
                naming the variant.
        """
        overrides = list(overrides)
        variants = self.variants
        chosen_seeds = list(self.seeds)
        if quick:
            if "variants" in self.quick:
                variants = [self.variant(n) for n in self.quick["variants"]]
            chosen_seeds = list(self.quick.get("seeds", chosen_seeds))
        if seeds is not None:
            chosen_seeds = list(seeds)
        if only is not None:
            wanted = list(only)
            for name in wanted:
                self.variant(name)  # an unknown name: a did-you-mean error
            variants = [v for v in self.variants if v.name in wanted]
        if not chosen_seeds:
            raise ConfigError(f"experiment {self.name!r} has no seeds to run")
        quick_config = {k: self.quick[k] for k in SECTION_KEYS if k in self.quick} if quick else {}
        runs: list[PlannedRun] = []
        for v in variants:
            data = overlay(overlay(self.base, v.config), quick_config)
            own = v.seeds is not None and not quick and seeds is None  # --quick and --seeds win
            for seed in (v.seeds if own else chosen_seeds):
                try:
                    cfg_data = apply_overrides({**data, "seed": seed, "name": None}, overrides)
                    if cfg_data.get("seed") != seed:
                        raise ConfigError("seed is chosen by the experiment; use --seeds N instead of seed=...")
                    cfg = RunConfig.from_dict(cfg_data)  # builds the typed model and task configs: bad values fail now
                    check_positional(cfg)
                except ConfigError as e:
                    raise ConfigError(f"experiment {self.name!r}, variant {v.name!r}: {e}") from None
                runs.append(PlannedRun(variant=v.name, seed=seed, config=cfg))
        return Plan(experiment=self, quick=quick, seeds=chosen_seeds, variants=[v.name for v in variants],
                    runs=runs, overrides=overrides)


@dataclass
class PlannedRun:
    variant: str
    seed: int
    config: RunConfig

    @property
    def key(self) -> str:
        return f"{self.variant}/seed{self.seed}"


@dataclass
class Plan:
    experiment: Experiment
    quick: bool
    seeds: list[int]
    variants: list[str]
    runs: list[PlannedRun]
    overrides: list[str]


def overlay(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``merge`` (tables merge key by key, later values win), except that an empty table replaces:
    ``positional_options = {}`` clears the options a variant would otherwise inherit."""
    out = merge(dict(base), {k: v for k, v in update.items() if not (isinstance(v, Mapping) and not v)})
    for key, value in update.items():
        if isinstance(value, Mapping):
            if not value:
                out[key] = {}
            elif isinstance(base.get(key), Mapping):
                out[key] = overlay(base[key], value)
    return out


def check_positional(cfg: RunConfig) -> None:
    """Build the model's positional encoding (small), so options it does not take fail now, not when
    the run starts (the typed model config does not see inside ``positional_options``)."""
    model = cfg.model
    if hasattr(model, "positional") and hasattr(model, "positional_options"):
        from ..nn.positional import build_positional

        build_positional(model.positional, d_model=model.d_model, n_head=model.n_head,
                         max_len=min(model.max_len, 64), **model.positional_options)


# ---------------------------------------------------------------------- reading and checking
def _check_keys(where: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed keys are {allowed}")


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return dict(value)


def _seeds(where: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value or any(isinstance(s, bool) or not isinstance(s, int) for s in value):
        raise ConfigError(f"{where} must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}={value!r} repeats a seed")
    return list(value)


def _sections(where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in SECTION_KEYS:
        if key in table:
            out[key] = _table(f"{where}.{key}", table[key])
    return out


def parse_experiment(data: Mapping[str, Any], source: Path, name: str | None = None) -> Experiment:
    """Check a parsed experiment file and build the :class:`Experiment` (see the module docstring)."""
    where = str(source)
    _check_keys(where, data, TOP_KEYS)
    name = str(data.get("name") or name or source.stem)
    for key in ("description", "time"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{where}: {key} = \"...\" is required (a string)")
    seeds = _seeds(f"{where}: seeds", data.get("seeds", [0]))
    base = _table(f"{where}: [base]", data.get("base"))
    for key in base:
        if key not in (*SECTION_KEYS, "seed"):
            raise ConfigError(f"{where}: [base] has unknown key {key!r}{did_you_mean(key, SECTION_KEYS)}; "
                              f"it holds model, task and train tables")
    base.pop("seed", None)
    variants_table = _table(f"{where}: [variants]", data.get("variants", {"default": {"about": "the base config"}}))
    if not variants_table:
        raise ConfigError(f"{where}: [variants] is empty; give at least one variant")
    resolved: dict[str, dict[str, Any]] = {}
    variants = []
    for vname, raw in variants_table.items():
        vwhere = f"{where}: [variants.{vname}]"
        raw = _table(vwhere, raw)
        _check_keys(vwhere, raw, VARIANT_KEYS)
        config = _sections(vwhere, raw)
        parent = raw.get("extends")
        if parent is not None:
            if parent not in resolved:
                hint = " (a variant may only extend one defined above it)" if parent in variants_table else ""
                raise ConfigError(f"{vwhere}: extends = {parent!r}, which is not a variant{hint}"
                                  f"{did_you_mean(str(parent), resolved)}")
            config = overlay(resolved[parent], config)
        resolved[vname] = config
        vseeds = _seeds(f"{vwhere} seeds", raw["seeds"]) if "seeds" in raw else None
        variants.append(Variant(name=vname, about=str(raw.get("about", "")), config=config, seeds=vseeds))
    quick = _table(f"{where}: [quick]", data.get("quick", {}))
    _check_keys(f"{where}: [quick]", quick, QUICK_KEYS)
    if "seeds" in quick:
        quick["seeds"] = _seeds(f"{where}: quick.seeds", quick["seeds"])
    for vname in quick.get("variants", []):
        if vname not in resolved:
            raise ConfigError(f"{where}: quick.variants names {vname!r}, which is not a variant"
                              f"{did_you_mean(str(vname), resolved)}")
    quick.update(_sections(f"{where}: [quick]", quick))
    from .evaluations import check_evaluation  # the registry

    evaluations = []
    for i, raw in enumerate(data.get("evaluations", [])):
        raw = _table(f"{where}: evaluations[{i}]", raw)
        if "name" not in raw:
            raise ConfigError(f"{where}: evaluations[{i}] needs name = \"...\"")
        quick_options = _table(f"{where}: evaluations[{i}].quick", raw.pop("quick", {}))
        spec = EvaluationSpec(name=str(raw.pop("name")), options=raw, quick_options=quick_options)
        check_evaluation(spec, f"{where}: evaluations[{i}]")
        check_evaluation(spec.for_run(True), f"{where}: evaluations[{i}].quick")
        if spec.options.get("variant") is not None and spec.options["variant"] not in resolved:
            raise ConfigError(f"{where}: evaluations[{i}] names variant {spec.options['variant']!r}, which is not a "
                              f"variant{did_you_mean(str(spec.options['variant']), resolved)}")
        evaluations.append(spec)
    target = None
    if "target" in data:
        t = _table(f"{where}: [target]", data["target"])
        _check_keys(f"{where}: [target]", t, TARGET_KEYS)
        if "metric" not in t or ("at_least" not in t and "at_most" not in t):
            raise ConfigError(f"{where}: [target] needs metric and at_least or at_most")
        if t.get("variant") is not None and t["variant"] not in resolved:
            raise ConfigError(f"{where}: target.variant={t['variant']!r} is not a variant"
                              f"{did_you_mean(str(t['variant']), resolved)}")
        also = _table(f"{where}: target.also", t.get("also", {}))
        for key, value in also.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: target.also.{key} must be a number (the column's median must be at most it)")
        target = Target(**t)
    exp = Experiment(name=name, description=data["description"].strip(), time=data["time"].strip(),
                     seeds=seeds, base=base, variants=variants, quick=quick, evaluations=evaluations,
                     target=target, notes=str(data.get("notes", "")).strip(), source=source,
                     quick_time=str(data.get("quick_time", "30 s")))
    exp.plan()  # every variant's full config checks
    exp.plan(quick=True)
    return exp


def read_experiment_file(path: str | Path, name: str | None = None) -> Experiment:
    """Read and check an experiment TOML file.

    Raises:
        ConfigError: a missing file, invalid TOML, or any check of :func:`parse_experiment`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"experiment file {str(path)!r} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"experiment file {str(path)!r} is not UTF-8 text") from None
    return parse_experiment(data, path, name)


# ---------------------------------------------------------------------- the built-in experiments
def builtin_files() -> dict[str, Path]:
    """The experiments shipped with the package: name -> TOML file (``experiments/*.toml``)."""
    root = resources.files("scratchformer.experiments")
    out = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            out[entry.name[: -len(".toml")]] = Path(str(entry))
    return out


def load_experiment(name_or_path: str) -> Experiment:
    """A built-in experiment by name, or a user's experiment file (a path ending in .toml).

    Raises:
        ConfigError: an unknown name (with a did-you-mean and the list) or a bad file.
    """
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return read_experiment_file(name_or_path)
    files = builtin_files()
    if name_or_path not in files:
        raise unknown_name("experiment", name_or_path, files)
    return read_experiment_file(files[name_or_path], name_or_path)


def config_digest(cfg: RunConfig) -> dict[str, Any]:
    """What identifies a planned run for resuming: its requested config as JSON data."""
    return json.loads(json.dumps(copy.deepcopy(cfg.to_dict())))


def same_settings(a: Any, b: Any) -> bool:
    """Two digests describe the same run: equal once each is read back through ``RunConfig`` (so a
    config field added to scratchformer later, left at its default, does not orphan finished runs),
    and where a key one lacks counts as null."""
    return _same(_normalised(a), _normalised(b))


def _normalised(digest: Any) -> Any:
    if not isinstance(digest, dict):
        return digest
    try:
        return config_digest(RunConfig.from_dict(digest))
    except (ConfigError, TypeError, ValueError, KeyError):  # a digest the current RunConfig cannot read is compared as it stands
        return digest


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_same(a.get(k), b.get(k)) for k in set(a) | set(b))
    return a == b


__all__ = [
    "EvaluationSpec",
    "Experiment",
    "Plan",
    "PlannedRun",
    "Target",
    "Variant",
    "builtin_files",
    "load_experiment",
    "parse_experiment",
    "read_experiment_file",
]
