"""The PyTorch warm-up of tutorial 000 (Part I), measured: the evaluations of ``mlp-warmup``.

The model is the tutorial's two-layer MLP on linear data, y = X w + 0.2 noise
(X: 10,000 x 100): ``relu(X W1 + b1) W2 + b2`` with W1 (100, 100), W2 (100,),
scalar biases, mean squared error. Written three ways:

- NumPy (float64 or float32), with its gradient derived by hand;
- PyTorch, eager;
- PyTorch through ``torch.compile``.

Three experiment evaluations use it: a timing table of the three (several
repeats, median and min), the autograd gradient checked against the analytic
NumPy one, and the tutorial's hand-written SGD loop (500 steps, lr 1e-3) with
its log-scale loss curve, from the identity initialisation of W1 or a random one.

N examples, D features.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .evaluations import ExperimentContext, Section, register_evaluation
from .report import _figure, fmt, save_figure

Params = list[tuple[Any, Any]]


# ---------------------------------------------------------------------- the model, three ways
def make_data(num_examples: int = 10_000, dim: int = 100, noise: float = 0.2, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's data: X (N, D) and y (N,) = X w + noise, float32 (the regression task's generator)."""
    from ..tasks import build_task

    task = build_task("regression", num_examples=num_examples, dim=dim, noise=noise, seed=seed,
                      split_fractions=(1.0, 0.0, 0.0))
    ds = task.dataset("train")
    return ds.columns["inputs"], ds.columns["targets"]


def init_params(dim: int, identity: bool = True, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W1 (D, D), b1 ()), (W2 (D,), b2 ())] in float64: W1 the identity (the tutorial) or N(0, 1/D)."""
    rng = np.random.default_rng(seed)
    w1 = np.eye(dim) if identity else rng.standard_normal((dim, dim)) / math.sqrt(dim)
    return [(w1, np.zeros(())), (rng.standard_normal(dim), np.zeros(()))]


def numpy_loss(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of the MLP, in NumPy."""
    (w1, b1), (w2, b2) = params
    h = np.maximum(x @ w1 + b1, 0.0)  # (N, D)
    pred = h @ w2 + b2  # (N,)
    return float(np.mean((pred - y) ** 2))


def numpy_grad(params: Params, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The gradient of :func:`numpy_loss`, derived by hand (the chain rule, written out)."""
    (w1, b1), (w2, b2) = params
    n = x.shape[0]
    z = x @ w1 + b1  # (N, D)
    h = np.maximum(z, 0.0)
    pred = h @ w2 + b2  # (N,)
    d_pred = 2.0 * (pred - y) / n  # (N,)
    d_w2 = h.T @ d_pred  # (D,)
    d_b2 = d_pred.sum()
    d_z = np.outer(d_pred, w2) * (z > 0)  # (N, D)
    d_w1 = x.T @ d_z  # (D, D)
    d_b1 = d_z.sum()
    return [(d_w1, np.asarray(d_b1)), (d_w2, np.asarray(d_b2))]


def torch_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same loss in PyTorch (any number of (W, b) layers; ReLU between them)."""
    out = x
    for i, (w, b) in enumerate(params):
        out = out @ w + b
        if i < len(params) - 1:
            out = torch.relu(out)
    return torch.mean((out - y) ** 2)


def to_torch(params: Params, dtype: torch.dtype = torch.float32, grad: bool = False) -> Params:
    return [(torch.tensor(w, dtype=dtype, requires_grad=grad), torch.tensor(b, dtype=dtype, requires_grad=grad))
            for w, b in params]


# ---------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], repeats: int, number: int) -> list[float]:
    """Seconds per call of ``fn``, measured ``repeats`` times over ``number`` calls each (after one warm-up)."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - start) / number)
    return out


@register_evaluation("warmup_timing", "experiment", "NumPy vs PyTorch vs torch.compile: the MLP's loss, timed")
def warmup_timing(ctx: ExperimentContext, num_examples: int = 10_000, dim: int = 100, repeats: int = 7,
                  number: int = 10, compile: bool = True, seed: int = 0, threads: int = 0) -> Section:
    """Time the loss (forward) and the loss with its gradient, three ways, ``repeats`` x ``number`` calls,
    with ``threads`` torch threads (0: one per core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        return _timing(num_examples, dim, repeats, number, compile, seed)
    finally:
        torch.set_num_threads(before)


def _timing(num_examples: int, dim: int, repeats: int, number: int, compile: bool, seed: int) -> Section:
    x, y = make_data(num_examples, dim, seed=seed)
    params64 = init_params(dim, identity=True, seed=seed)
    params32 = [(w.astype(np.float32), b.astype(np.float32)) for w, b in params64]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    tparams = to_torch(params64)
    gparams = to_torch(params64, grad=True)

    def torch_grad(loss_fn: Callable) -> Callable[[], Any]:
        def step() -> Any:
            loss = loss_fn(gparams, xt, yt)
            return torch.autograd.grad(loss, [t for layer in gparams for t in layer])
        return step

    rows: list[tuple[str, str, Callable[[], Any]]] = [
        ("NumPy float64", "loss", lambda: numpy_loss(params64, x, y)),
        ("NumPy float32", "loss", lambda: numpy_loss(params32, x, y)),
        ("PyTorch eager", "loss", lambda: torch_loss(tparams, xt, yt)),
        ("NumPy float32, hand-derived gradient", "loss + gradient", lambda: numpy_grad(params32, x, y)),
        ("PyTorch eager, autograd", "loss + gradient", torch_grad(torch_loss)),
    ]
    compile_s = None
    if compile:
        compiled = torch.compile(torch_loss)
        start = time.perf_counter()
        compiled(tparams, xt, yt)  # the first call compiles
        compiled(gparams, xt, yt).backward()
        compile_s = time.perf_counter() - start
        rows.insert(3, ("torch.compile", "loss", lambda: compiled(tparams, xt, yt)))
        rows.append(("torch.compile, autograd", "loss + gradient", torch_grad(compiled)))
    metrics: dict[str, float] = {}
    results = []
    for name, what, fn in rows:
        times = time_calls(fn, repeats, number)
        results.append((name, what, statistics.median(times), min(times)))
        metrics[f"{name} {what} ms"] = 1e3 * statistics.median(times)
    base = {what: med for name, what, med, _ in results if name.startswith("NumPy float32")}
    lines = [f"The loss of the MLP on X ({num_examples} x {dim}), and the loss with its gradient; median and "
             f"min of {repeats} repeats of {number} calls each, after a warm-up call; "
             f"{torch.get_num_threads()} torch threads.", "",
             "| implementation | computes | median (ms) | min (ms) | NumPy float32 / this |",
             "|---|---|---:|---:|---:|"]
    for name, what, med, low in results:
        lines.append(f"| {name} | {what} | {fmt(1e3 * med)} | {fmt(1e3 * low)} | {base[what] / med:.2f}x |")
    if compile_s is not None:
        lines += ["", f"torch.compile's first calls (compiling forward and backward) took {compile_s:.1f} s."]
        metrics["torch.compile first calls s"] = compile_s
    else:
        lines += ["", "torch.compile was not timed in this run (`compile = false`)."]
    return Section(title="NumPy, PyTorch and torch.compile", markdown="\n".join(lines), metrics=metrics)


# ---------------------------------------------------------------------- gradient check
@register_evaluation("warmup_gradcheck", "experiment", "autograd gradients against the analytic NumPy gradient")
def warmup_gradcheck(ctx: ExperimentContext, num_examples: int = 10_000, dim: int = 100, seed: int = 0) -> Section:
    """The autograd gradient (float64 and float32) against the hand-derived NumPy one (float64), from a
    random W1 (the identity puts every pre-activation of a negative input exactly at the ReLU's kink)."""
    x, y = make_data(num_examples, dim, seed=seed)
    params = init_params(dim, identity=False, seed=seed)
    analytic = numpy_grad(params, x.astype(np.float64), y.astype(np.float64))
    names = ["W1", "b1", "W2", "b2"]
    flat_a = [g for layer in analytic for g in layer]
    lines = ["| parameter | shape | max abs difference, float64 | max relative difference, float64 "
             "| max relative difference, float32 |", "|---|---|---:|---:|---:|"]
    metrics = {}
    diffs = {}
    for dtype in (torch.float64, torch.float32):
        tp = to_torch(params, dtype=dtype, grad=True)
        loss = torch_loss(tp, torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype))
        grads = torch.autograd.grad(loss, [t for layer in tp for t in layer])
        diffs[dtype] = [np.abs(g.detach().double().numpy() - a) for g, a in zip(grads, flat_a)]
    for i, name in enumerate(names):
        scale = max(float(np.abs(flat_a[i]).max()), 1e-30)
        abs64 = float(diffs[torch.float64][i].max())
        rel64, rel32 = abs64 / scale, float(diffs[torch.float32][i].max()) / scale
        metrics[f"{name} relative difference float64"] = rel64
        metrics[f"{name} relative difference float32"] = rel32
        lines.append(f"| {name} | {tuple(flat_a[i].shape)} | {abs64:.2e} | {rel64:.2e} | {rel32:.2e} |")
    worst64 = max(v for k, v in metrics.items() if k.endswith("float64"))
    lines += ["", f"Relative to the largest entry of each gradient. Autograd and the hand-derived gradient "
              f"agree to {worst64:.1e} in float64 (rounding), and to float32's precision in float32."]
    metrics["worst relative difference float64"] = worst64
    return Section(title="Autograd against the analytic gradient", markdown="\n".join(lines), metrics=metrics)


# ---------------------------------------------------------------------- the hand-written training loop
def sgd_train(x: np.ndarray, y: np.ndarray, params: Params, steps: int, lr: float, weight_decay: float = 0.0,
              compiled: bool = False) -> tuple[list[float], Params]:
    """The tutorial's loop: full-batch loss, its autograd gradient, ``p -= lr * grad``.
    ``weight_decay`` adds ``weight_decay * sum ||W||^2`` (matrices and vectors, not biases) to the loss.
    Returns the loss before each step and the final parameters."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    tp = to_torch(params)
    loss_fn = torch.compile(torch_loss) if compiled else torch_loss
    history = []
    for _ in range(steps):
        for w, b in tp:
            w.requires_grad_(True)
            b.requires_grad_(True)
        loss = loss_fn(tp, xt, yt)
        history.append(float(loss.detach()))
        if weight_decay:
            loss = loss + weight_decay * sum((w**2).sum() for w, _ in tp)
        grads = torch.autograd.grad(loss, [t for layer in tp for t in layer])
        with torch.no_grad():
            tp = [(w - lr * gw, b - lr * gb) for (w, b), gw, gb in zip(tp, grads[0::2], grads[1::2])]
    return history, [(w.detach(), b.detach()) for w, b in tp]


@register_evaluation("warmup_sgd", "experiment", "the hand-written SGD loop and the tutorial's things to try")
def warmup_sgd(ctx: ExperimentContext, steps: int = 500, lr: float = 1e-3, num_examples: int = 10_000,
               dim: int = 100, seed: int = 0, weight_decay: float = 1e-3, things_to_try: bool = True) -> Section:
    """The loop from the identity initialisation of W1 (the tutorial) and from a random one, its
    log-scale loss plot, and the "things to try": weight decay, a third layer, the learning rate x10 and /10.
    Train on the first 80% of the data; the test loss is on the rest."""
    x, y = make_data(num_examples, dim, seed=seed)
    n_train = int(0.8 * num_examples)
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    runs: dict[str, dict[str, Any]] = {
        "identity W1 (the tutorial)": dict(params=init_params(dim, True, seed)),
        "random W1": dict(params=init_params(dim, False, seed)),
    }
    if things_to_try:
        rng = np.random.default_rng(seed + 1)
        three = init_params(dim, True, seed)
        three.insert(1, (np.eye(dim) + 0.01 * rng.standard_normal((dim, dim)), np.zeros(())))
        runs.update({
            f"+ weight decay {weight_decay:g}": dict(params=init_params(dim, True, seed), weight_decay=weight_decay),
            "3 layers (W1, W2 near the identity)": dict(params=three),
            f"lr x10 ({10 * lr:g})": dict(params=init_params(dim, True, seed), lr=10 * lr),
            f"lr /10 ({lr / 10:g})": dict(params=init_params(dim, True, seed), lr=lr / 10),
        })
    rows = []
    metrics: dict[str, float] = {}
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, r in runs.items():
        start = time.perf_counter()
        history, final = sgd_train(xtr, ytr, r["params"], steps, r.get("lr", lr), r.get("weight_decay", 0.0))
        elapsed = time.perf_counter() - start
        test = float(torch_loss(final, torch.from_numpy(xte), torch.from_numpy(yte)))
        train_final = float(torch_loss(final, torch.from_numpy(xtr), torch.from_numpy(ytr)))
        rows.append((name, history[0], train_final, test, elapsed))
        metrics[f"{name} train loss"] = train_final if math.isfinite(train_final) else float("nan")
        metrics[f"{name} test loss"] = test
        finite = [h for h in history if math.isfinite(h) and h > 0]
        ax.plot(range(len(finite)), finite, label=name, linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(f"hand-written SGD, lr {lr:g}, full batch of {n_train}")
    ax.grid(True, which="both", linestyle="--", alpha=0.5)
    ax.legend(fontsize="small")
    plot = "plots/sgd_loss.png"
    save_figure(fig, ctx.out_dir / plot)
    lines = [f"{steps} steps of `p -= lr * grad` on the full training batch ({n_train} examples), lr {lr:g} "
             "unless the row says otherwise; mean squared error.", "",
             "| run | loss at step 0 | train loss after | test loss after | seconds |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {fmt(first)} | {fmt(tr)} | {fmt(te)} | {el:.1f} |" for name, first, tr, te, el in rows]
    lines += ["", "A loss that is not finite means the run diverged."]
    # the "things to try" metrics may be NaN when a learning rate diverges; keep only finite figures
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    return Section(title="The hand-written training loop", markdown="\n".join(lines), metrics=metrics, plots=[plot])
