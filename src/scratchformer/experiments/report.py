"""An experiment's results.json, report.md and plots, from its finished runs.

Every figure in report.md is formatted from results.json's numbers; the
tables give the median over seeds with the min–max range beside it.
"""

from __future__ import annotations

import io
import json
import math
import re
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_text, save_json
from .evaluations import Section
from .spec import Plan


# ---------------------------------------------------------------------- numbers
def spread(values: list[float]) -> dict[str, float | None]:
    """Median, min and max of the finite values (None when there are none) and how many there were."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite), "n": len(finite)}


def fmt(value: float | None) -> str:
    """A figure for a table: integers as integers, else 4 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def fmt_spread(s: dict[str, Any]) -> str:
    if s.get("median") is None:
        return "–"
    if s["n"] <= 1 or s["min"] == s["max"]:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


# ---------------------------------------------------------------------- results.json
def summarise(plan: Plan, states: list[Any], sections: list[Section], *, machine: dict[str, Any],
              command: list[str], wall_s: float, runs_s: float) -> dict[str, Any]:
    """The results.json data: per variant its runs and the spread of each metric and curve point."""
    exp = plan.experiment
    variants: dict[str, Any] = {}
    for name in plan.variants:
        mine = [s for s in states if s.planned.variant == name]
        runs = {str(s.planned.seed): {"run_dir": str(s.run_dir), "wall_s": s.record.get("wall_s"),
                                      **s.record["outcome"]} for s in mine}
        metric_names: list[str] = []
        curve_names: list[str] = []
        for r in runs.values():
            metric_names += [m for m in r["metrics"] if m not in metric_names]
            curve_names += [c for c in r["curves"] if c not in curve_names]
        summary = {m: spread([r["metrics"].get(m) for r in runs.values()]) for m in metric_names}
        curves = {}
        for c in curve_names:
            xs = sorted({x for r in runs.values() for x in r["curves"].get(c, {})}, key=float)
            curves[c] = {x: spread([r["curves"].get(c, {}).get(x) for r in runs.values()]) for x in xs}
        walls = [r["wall_s"] for r in runs.values() if r["wall_s"] is not None]
        variants[name] = {"about": exp.variant(name).about, "seeds": [s.planned.seed for s in mine], "runs": runs, "summary": summary, "curves": curves,
                          "wall_s": {"total": sum(walls), **spread(walls)}}
    results: dict[str, Any] = {
        "experiment": exp.name,
        "out_dir": str(states[0].run_dir.parents[2]) if states else "",
        "description": exp.description,
        "quick": plan.quick,
        "seeds": plan.seeds,
        "overrides": plan.overrides,
        "command": " ".join(shlex.quote(a) for a in command),
        "machine": machine,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": wall_s,
        "runs_wall_s": runs_s,
        "runs_total_s": sum(v["wall_s"]["total"] for v in variants.values()),
        "run_count": sum(len(v["runs"]) for v in variants.values()),
        "variants": variants,
        "sections": [{"title": s.title, "metrics": s.metrics, "plots": s.plots, "markdown": s.markdown}
                     for s in sections],
    }
    # a run of some variants (--variants) without the target's own variant cannot judge the target
    judged = exp.target is not None and (exp.target.variant is None or exp.target.variant in variants)
    results["target"] = judge_target(exp.target, variants, results["sections"]) if judged else None
    return results


def natural_order(name: str) -> list[str | int]:
    """A sort key that compares the numbers in a name as numbers: "3..10" < "11..20", "5 digits" < "10 digits"."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def judge_target(target: Any, variants: dict[str, Any], sections: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """The target's variant (given, or the best by the target metric's median), its median and whether it is met.

    Each ``also`` column (a bound it must also keep) is read from that variant's summary, else from
    the experiment-level sections' metrics (e.g. the time ratio against nanoGPT)."""
    candidates = [target.variant] if target.variant else list(variants)
    best, best_value = None, None
    for name in candidates:
        value = variants[name]["summary"].get(target.metric, {}).get("median")
        if value is None:
            continue
        if best_value is None or target.better(value, best_value):
            best, best_value = name, value
    met = best_value is not None and target.met(best_value)
    also = {}
    for column, limit in target.also.items():
        value = variants[best]["summary"].get(column, {}).get("median") if best is not None else None
        if value is None:
            value = next((sec["metrics"][column] for sec in sections if column in sec.get("metrics", {})), None)
        also[column] = {"at_most": limit, "value": value}
        met = met and value is not None and value <= limit
    return {"metric": target.metric, "at_least": target.at_least, "at_most": target.at_most, "about": target.about,
            "variant": best, "value": best_value, "also": also, "met": met}


# ---------------------------------------------------------------------- plots
def _figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def plot_metric_bars(results: dict[str, Any], metric: str, path: Path) -> None:
    """One bar per variant: the metric's median over seeds, min–max as error bars."""
    names, med, lo, hi = [], [], [], []
    for name, v in results["variants"].items():
        s = v["summary"].get(metric)
        if not s or s["median"] is None:
            continue
        names.append(name)
        med.append(s["median"])
        lo.append(s["median"] - s["min"])
        hi.append(s["max"] - s["median"])
    fig = _figure(max(6.0, 0.9 * len(names) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(metric)
    target = results.get("target")
    if target and target["metric"] == metric:
        for bound in (target["at_least"], target["at_most"]):
            if bound is not None:
                ax.axhline(bound, color="tab:red", linestyle="--", label=f"target {fmt(bound)}")
        ax.legend(loc="best", fontsize="small")
    ax.set_title(f"{results['experiment']}: {metric} (median, min–max over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    save_figure(fig, path)


def plot_curve(results: dict[str, Any], curve: str, path: Path) -> None:
    """One line per variant: the curve's median over seeds, min–max shaded."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, v in results["variants"].items():
        points = v["curves"].get(curve)
        if not points:
            continue
        xs = sorted(points, key=float)
        x = [float(p) for p in xs]
        ax.plot(x, [points[p]["median"] if points[p]["median"] is not None else math.nan for p in xs],
                marker="o", markersize=3, label=name)
        if any(points[p]["n"] > 1 for p in xs):
            ax.fill_between(x, [points[p]["min"] if points[p]["min"] is not None else math.nan for p in xs],
                            [points[p]["max"] if points[p]["max"] is not None else math.nan for p in xs], alpha=0.15)
    ax.set_xlabel(curve.rsplit(" by ", 1)[-1] if " by " in curve else "x")
    ax.set_ylabel(curve.rsplit(" by ", 1)[0])
    ax.set_title(f"{results['experiment']}: {curve}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    save_figure(fig, path)


def read_losses(run_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, training loss) from a run's metrics.jsonl."""
    steps, losses = [], []
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return steps, losses
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "train" and isinstance(record.get("loss"), (int, float)):
            steps.append(int(record["step"]))
            losses.append(float(record["loss"]))
    return steps, losses


def plot_losses(results: dict[str, Any], path: Path) -> bool:
    """Training loss against step (log scale), the first seed of each variant. False if nothing to draw."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for name, v in results["variants"].items():
        first = next(iter(v["runs"].values()))
        steps, losses = read_losses(Path(first["run_dir"]))
        if steps and all(loss > 0 for loss in losses):
            ax.plot(steps, losses, label=name, linewidth=1)
            drawn = True
    if not drawn:
        return False
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{results['experiment']}: training loss (seed {results['seeds'][0]})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    save_figure(fig, path)
    return True


# ---------------------------------------------------------------------- report.md
def machine_line(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    load_text = f"; load average {', '.join(f'{x:.2f}' for x in load)} at the start" if load else ""
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (f"{machine['cpu']}, {machine['cores']} cores{gpu}; torch {machine['torch']} "
            f"({machine['torch_threads']} threads), Python {machine['python']}{load_text}")


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: Path, plan: Plan, states: list[Any]) -> None:
    """Draw the plots, then write report.md and results.json into ``out_dir``."""
    exp = plan.experiment
    plots_dir = out_dir / "plots"
    plots: dict[str, str] = {}
    metric_names: list[str] = []
    curve_names: list[str] = []
    for v in results["variants"].values():
        metric_names += [m for m in v["summary"] if m not in metric_names]
        curve_names += [c for c in v["curves"] if c not in curve_names]
    metric_names.sort(key=natural_order)  # "5 digits" before "10 digits"
    main_metric = results["target"]["metric"] if results.get("target") else None
    if main_metric is None:
        main_metric = next((m for m in metric_names if m not in ("training s", "parameters")), None)
    if main_metric is not None and len(results["variants"]) > 1:
        plots["main"] = f"plots/{slug(main_metric)}.png"
        plot_metric_bars(results, main_metric, out_dir / plots["main"])
    for c in curve_names:
        plots[c] = f"plots/{slug(c)}.png"
        plot_curve(results, c, out_dir / plots[c])
    if plot_losses(results, plots_dir / "training_loss.png"):
        plots["loss"] = "plots/training_loss.png"
    results["plots"] = plots

    seeds = ", ".join(str(s) for s in sorted({x for v in results["variants"].values() for x in v["seeds"]}))
    lines = [f"# {exp.name}{' (quick)' if plan.quick else ''}", "", exp.description, ""]
    lines += [f"- Command: `{results['command']}`",
              f"- Machine: {machine_line(results['machine'])}",
              f"- Date: {results['date']}",
              f"- Wall time: {fmt(results['runs_total_s'])} s summed over the {results['run_count']} runs (training and "
              f"evaluating each, whenever it ran; per variant below); this command took {fmt(results['wall_s'])} s; "
              f"seeds {seeds}", ""]
    target = results.get("target")
    if target:
        bound = (f">= {fmt(target['at_least'])}" if target["at_least"] is not None else "") + \
                (f" <= {fmt(target['at_most'])}" if target["at_most"] is not None else "")
        verdict = "met" if target["met"] else "NOT met"
        lines += ["## Target", "", f"{target['about'] or target['metric']}: **{verdict}**. "
                  f"`{target['metric']}` {bound.strip()}; best variant `{target['variant']}` reached "
                  f"**{fmt(target['value'])}** (median over seeds "
                  f"{', '.join(str(x) for x in results['variants'][target['variant']]['seeds']) if target['variant'] else '–'})"
                  + "".join(f"; `{c}` {fmt(a['value'])} (at most {fmt(a['at_most'])})" for c, a in target["also"].items())
                  + ".", ""]
    header = ["variant", "seeds", *metric_names, "wall time per run (s)"]
    rows = []
    for name, v in results["variants"].items():
        rows.append([f"`{name}`", ", ".join(str(x) for x in v["seeds"]),
                     *(fmt_spread(v["summary"].get(m, {})) for m in metric_names), fmt_spread(v["wall_s"])])
    lines += ["## Results", "",
              "Median over each variant's seeds; in brackets the min–max when the seeds differ.", "",
              _table(header, rows), ""]
    about = [[f"`{name}`", v["about"] or "–", fmt(v["wall_s"]["total"])] for name, v in results["variants"].items()]
    lines += ["Variants:", "", _table(["variant", "what it is", "wall time, all seeds (s)"], about,
                                      ["---", "---", "---:"]), ""]
    if "main" in plots:
        lines += [f"![{main_metric}]({plots['main']})", ""]
    for c in curve_names:
        xs = sorted({x for v in results["variants"].values() for x in v["curves"].get(c, {})}, key=float)
        crow = [[f"`{name}`", *(fmt(v["curves"].get(c, {}).get(x, {}).get("median")) for x in xs)]
                for name, v in results["variants"].items()]
        lines += [f"## {c[0].upper()}{c[1:]}", "", "Median over seeds.", "",
                  _table(["variant", *xs], crow), "", f"![{c}]({plots[c]})", ""]
    if "loss" in plots:
        lines += ["## Training loss", "", f"![training loss]({plots['loss']})", ""]
    for section in results["sections"]:
        lines += [f"## {section['title']}", "", section["markdown"].strip(), ""]
        lines += [f"![{section['title']}]({p})" for p in section["plots"]] + ([""] if section["plots"] else [])
    texts = [(name, seed, r["text"]) for name, v in results["variants"].items() for seed, r in v["runs"].items()
             if r.get("text")]
    if texts:
        lines += ["## Per run", ""]
        for name, seed, text in texts:
            lines += [f"### `{name}` seed {seed}", "", text.strip(), ""]
    if exp.notes:
        lines += ["## Notes", "", exp.notes, ""]
    save_json(out_dir / "results.json", _json_safe(results))
    atomic_write_text(out_dir / "report.md", "\n".join(lines).rstrip() + "\n")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
