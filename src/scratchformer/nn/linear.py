"""Matmul kernels for Linear layers, chosen by measuring on the machine at hand.

Model code uses plain ``torch.nn.Linear``. Speed is applied from outside:
``fast_linears(model)`` swaps each ``nn.Linear`` of a built model for a
``TunedLinear`` (the same ``Parameter`` objects, so the same state dict, tied
weights stay tied), whose forward asks a ``KernelTuner`` which kernel
computes ``x @ W.T + b`` fastest for that shape. The tuner decides the way
``torch.backends.cudnn.benchmark`` does: the first product of a shape class
(rows, in, out, bias, dtype, device, with or without gradients, threads) times
every candidate, interleaved, on copies of the operands, keeps the fastest,
and reuses that choice for every later product of the class.

Why measure: PyTorch's x86 builds send float32 matmuls to Intel MKL, which
takes its AVX2 code on AMD processors, where oneDNN (shipped inside PyTorch)
runs the same product up to twice as fast; on an Intel Xeon MKL is at its
best and oneDNN's extra cost per call makes it slower. The CPU model decides,
so nothing here assumes one.

The candidates (``KERNELS``): ``"torch"`` is ``F.linear`` itself, the
baseline; ``"onednn"`` is oneDNN's matmul forward and backward
(``_OneDNNLinear``). Another kernel wins only when its median time is below
``KernelTuner.margin`` (0.95) times F.linear's, so the default is never slower
than plain ``F.linear`` beyond measuring noise. Products below
``MEASURE_MIN_MACS`` multiply-adds stay on ``F.linear`` unmeasured (no other
kernel's fixed cost per call pays back there). Float64, bfloat16, autocast,
non-CPU devices, forward-mode AD and ``torch.func`` transforms take
``F.linear``; under ``torch.compile`` a choice already made is kept (the
oneDNN kernel as an opaque custom op) and an unmeasured class takes ``F.linear``.

The result is the same function: same float32 inputs and accumulation; only
the order of additions inside a dot product differs between kernels, so a run
is bit-exact only with the same choices. ``KernelTuner.choices`` is a plain
dict that the trainer saves in every checkpoint and restores on resume.

Choices are cached per tuner; ``default_tuner()`` is the process's cache
(the cudnn.benchmark analogue: measurements, never a behaviour switch).
With ``$SCRATCHFORMER_KERNEL_CACHE`` naming a JSON file, or
``KernelTuner(path=...)``, they are also kept on disk, keyed by CPU model,
core count and torch version (``machine_key``), and written atomically.

``row_linear`` is the one-row kernel batch-1 decoding may use (through
``models/fast_decode.DecodeStep``, which also measures): ``x @ W.T`` as the
weighted sum of the rows of an (in, out) copy of W, read in one pass by
``F.embedding_bag``, split between the threads.

Legend: N rows (every leading dimension of x flattened), K in features,
M out features.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, unknown_name
from ..io import atomic_write_text

LinearFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onednn")  # train.linear_backend: measure, or force one kernel
CACHE_ENV = "SCRATCHFORMER_KERNEL_CACHE"
# below this many multiply-adds a product stays on F.linear without measuring: oneDNN's fixed cost
# per call (about 13 us more than F.linear) cannot pay back, and the timing would cost more than it saves
MEASURE_MIN_MACS = 1 << 16

# oneDNN ships inside PyTorch's CPU builds (torch.compile's CPU backend uses it too)
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_available() -> bool:
    """True if this PyTorch has oneDNN (``torch.backends.mkldnn``) and its linear kernel."""
    return _ONEDNN


def cpu_model() -> str:
    """The CPU's marketing name ("Intel(R) Xeon(R) Platinum 8480+"), or the best the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key() -> str:
    """What a kernel choice depends on besides the shape: CPU model, core count, torch version."""
    return f"{cpu_model()} | {os.cpu_count()} cores | torch {torch.__version__}"


# ---------------------------------------------------------------------------- the kernels
def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias by oneDNN, no autograd. x: (..., K); weight: (M, K), any strides; bias: (M,)."""
    if torch.compiler.is_compiling():
        return _compiled_onednn_linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# torch.compile's own lowering of the oneDNN linear wants frozen weights; wrapped as an opaque
# custom op, the compiled graph calls the same kernel on trainable ones (eager calls it directly:
# the wrapper costs about 5 us per call)
@torch.library.custom_op("scratchformer::onednn_linear", mutates_args=())
def _compiled_onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@_compiled_onednn_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.size(0)))


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN matmuls forward and backward (the same three products autograd makes)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)  # (..., M)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: torch's ops, so that the gradient has a gradient
            return _differentiable_backward(ctx, x, weight, grad_out)
        dy = grad_out.reshape(-1, grad_out.size(-1))  # (N, M)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(dy, weight.t()).view(x.shape)  # dy @ W: (N, K)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.size(-1))  # (N, K)
            # oneDNN copies its first operand to rows first: hand it the narrower of dy.T and x.T
            if dy.size(1) <= x2.size(1):
                grad_w = onednn_linear(dy.t(), x2.t())  # dy.T @ x: (M, K)
            else:
                grad_w = onednn_linear(x2.t(), dy.t()).t().contiguous()  # (x.T @ dy).T: (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.sum(0)  # (M,)
        return grad_x, grad_w, grad_b


def _differentiable_backward(ctx, x: Tensor, weight: Tensor, grad_out: Tensor):
    """The same three products as ``_OneDNNLinear.backward``, recorded by autograd (double backward)."""
    dy = grad_out.reshape(-1, grad_out.size(-1))  # (N, M)
    grad_x = (dy @ weight).view(x.shape) if ctx.needs_input_grad[0] else None  # (..., K)
    grad_w = dy.t() @ x.reshape(-1, x.size(-1)) if ctx.needs_input_grad[1] else None  # (M, K)
    grad_b = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (M,)
    return grad_x, grad_w, grad_b


def onednn_autograd_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` through oneDNN, differentiable when any operand requires a gradient."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _OneDNNLinear.apply(x, weight, bias)
    return onednn_linear(x, weight, bias)


# name -> fn(x, weight, bias); "torch" first: the baseline every other kernel must beat
KERNELS: dict[str, LinearFn] = {"torch": F.linear}
if _ONEDNN:
    KERNELS["onednn"] = onednn_autograd_linear


def row_linear_parts(k: int, parts: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The ids 0..K-1 of a weight's rows and the offsets that cut them into ``parts`` bags
    (one per thread) of nearly equal size, for ``row_linear``: (K,) and (P,) int64, where
    P = min(parts, K), at least 1."""
    parts = max(1, min(parts, k))
    ids = torch.arange(k, device=device)
    offsets = torch.div(torch.arange(parts, device=device) * k, parts, rounding_mode="floor")
    return ids, offsets


def row_linear(x: Tensor, weight_t: Tensor, bias: Tensor | None, ids: Tensor, offsets: Tensor) -> Tensor:
    """x @ weight_t + bias for a single row, no autograd. x: (1, K); weight_t: (K, M),
    contiguous (the transpose of a Linear's weight); ``ids``, ``offsets`` from
    ``row_linear_parts(K, ...)``. Returns (1, M).

    x @ weight_t is the sum over k of x[k] * weight_t[k], a weighted sum of rows: what
    ``F.embedding_bag`` computes (mode "sum" with per-sample weights), streaming each
    row once. Cut into bags that the threads take in parallel, it gives one partial sum
    per bag, (P, M), which are then added."""
    partial = F.embedding_bag(ids, weight_t, offsets, mode="sum", per_sample_weights=x[0])  # (parts, M)
    y = partial if partial.size(0) == 1 else partial.sum(0, keepdim=True)  # (1, M)
    return y if bias is None else y.add_(bias)


# ---------------------------------------------------------------------------- choosing by measurement
def _in_transform() -> bool:
    """Forward-mode AD or a ``torch.func`` transform is active: they need ``F.linear``'s
    derivative rules, which the oneDNN path does not provide."""
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    return level is not None and level() is not None


WHOLE_PASS = "whole pass"
"""``KernelTuner.choices`` key of ``keep_if_faster``'s outcome: "measured" (each product's own
choice) or "torch" (``F.linear`` for every product)."""


def time_candidates(candidates: Mapping[str, Callable[[], object]], min_seconds: float = 0.01,
                    min_repeats: int = 5, max_repeats: int = 50) -> dict[str, float]:
    """Median seconds of each zero-argument callable, timed in interleaved rounds (so a burst
    of load on a shared machine hits every candidate alike) after one warm-up call each."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    start = time.perf_counter()
    for r in range(max_repeats):
        if r >= min_repeats and time.perf_counter() - start >= min_seconds:
            break
        for name, run in candidates.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fastest(seconds: Mapping[str, float], baseline: str, margin: float) -> str:
    """The fastest candidate, but the baseline unless another beats it by more than ``1 - margin``."""
    best = min(seconds, key=seconds.__getitem__)
    return best if seconds[best] < margin * seconds[baseline] else baseline


class KernelTuner:
    """Which kernel each shape class of product takes, measured on first use.

    Args:
        choices: decisions to start from (a resumed run's, from its checkpoint).
        force: a ``KERNELS`` name every eligible product takes, unmeasured; None: measure.
        path: a JSON file keeping choices across processes (keyed by ``machine_key()``).
        margin: another kernel must take less than ``margin`` times F.linear's time.
        min_macs: products smaller than this stay on F.linear unmeasured
            (default ``MEASURE_MIN_MACS``).

    ``choices`` maps a shape key (``shape_key``) to a kernel name; it is plain data,
    saved with a run so that a resumed run multiplies exactly as the original.
    """

    def __init__(self, choices: Mapping[str, str] | None = None, force: str | None = None,
                 path: str | os.PathLike | None = None, margin: float = 0.95,
                 min_macs: int | None = None) -> None:
        if force is not None and force not in KERNELS:
            if force == "onednn":
                raise ConfigError("linear backend 'onednn', but this PyTorch build has no oneDNN linear kernel; "
                                  "use 'auto' or 'torch'")
            raise unknown_name("linear kernel", force, list(KERNELS))
        self.force, self.margin = force, margin
        self.min_macs = MEASURE_MIN_MACS if min_macs is None else min_macs
        self.path = Path(path) if path is not None else None
        self.choices: dict[str, str] = dict(self._read_disk()) if self.path is not None else {}
        self._by_shape: dict[tuple, str] = {}  # the same choices by a tuple key: a cheaper look-up per call
        self._traced: dict[tuple, str] = {}  # by shape alone, for torch.compile (which cannot read the thread count)
        self.seen: set[str] | None = None  # while keep_if_faster watches: the kernels products take
        self.load(choices or {})

    def load(self, choices: Mapping[str, str]) -> None:
        """Take over recorded choices (a resumed run's); an unknown kernel name for a product
        ``linear`` runs is an error (other keys, e.g. ``DecodeStep``'s, are its users' to check)."""
        for key, name in choices.items():
            if _linear_key(key) and name not in KERNELS:
                raise ConfigError(f"recorded kernel choice {key!r}: {name!r} is not one of {list(KERNELS)} "
                                  "in this PyTorch build; resume on a build that has it")
        self.choices.update(choices)
        self._by_shape.clear()
        self._traced.clear()

    @staticmethod
    def shape_key(kind: str, x: Tensor, weight: Tensor, bias: Tensor | None, grad: bool) -> str:
        """``"linear 768x128x512+b float32 cpu grad t2"``: what a choice is keyed by."""
        n = x.numel() // max(1, x.size(-1))
        M, K = weight.shape
        dtype = str(x.dtype).removeprefix("torch.")
        return (f"{kind} {n}x{K}x{M}{'+b' if bias is not None else ''} {dtype} {x.device.type} "
                f"{'grad' if grad else 'nograd'} t{torch.get_num_threads()}")

    def choose(self, key: str, candidates: Callable[[], Mapping[str, Callable[[], object]]],
               baseline: str = "torch", repeats: int = 5) -> str:
        """The kernel for ``key``: recorded, or measured now on ``candidates()`` (built only when needed),
        each timed at least ``repeats`` times."""
        name = self.choices.get(key)
        if name is None:
            name = fastest(time_candidates(candidates(), min_repeats=repeats), baseline, self.margin)
            self.choices[key] = name
            if self.path is not None:
                self._write_disk(key, name)
        return name

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``F.linear(x, weight, bias)`` through the kernel chosen for its shape class."""
        return KERNELS[self.kernel_for(x, weight, bias)](x, weight, bias)

    def kernel_for(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> str:
        """The ``KERNELS`` name ``linear`` uses for these operands (measuring if not yet chosen)."""
        if x.dim() < 2 or x.numel() == 0 or weight.numel() == 0 or len(KERNELS) == 1:
            return "torch"
        n = x.numel() // x.size(-1)
        if self.force is None and n * weight.numel() < self.min_macs:
            return "torch"  # decided first: the cheapest test, and small products are where a call's cost shows
        eligible = (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and (torch.compiler.is_compiling() or not _in_transform())
        )
        if not eligible:
            return "torch"
        if self.force is not None:
            return self.force
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                            or (bias is not None and bias.requires_grad))
        shape = (n, weight.size(0), weight.size(1), bias is not None, grad)  # float32 CPU, as checked
        if torch.compiler.is_compiling():  # no timing (nor thread count) while tracing: the eager choice, else F.linear
            return self._traced.get(shape, "torch")
        fast_key = (*shape, torch.get_num_threads())
        name = self._by_shape.get(fast_key)
        if self.seen is not None:
            self.seen.add(name if name is not None else "new")
        if name is None:
            if self.choices.get(WHOLE_PASS) == "torch":  # see keep_if_faster: F.linear everywhere
                name = "torch"
            else:
                key = self.shape_key("linear", x, weight, bias, grad)
                name = self.choose(key, lambda: _linear_candidates(x, weight, bias, grad))
            self._by_shape[fast_key] = self._traced[shape] = name
        return name

    def _read_disk(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"kernel cache {str(self.path)!r} is not valid JSON ({e}); delete it") from None
        mine = data.get(machine_key(), {}) if isinstance(data, dict) else {}
        return {k: v for k, v in mine.items() if isinstance(v, str) and (v in KERNELS or not _linear_key(k))}

    def _write_disk(self, key: str, name: str) -> None:
        data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        data.setdefault(machine_key(), {})[key] = name
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def keep_if_faster(tuner: KernelTuner, trial: Callable[[], object], repeats: int = 3) -> bool:
    """Keep ``tuner``'s measured kernels only if ``trial`` (say, a whole model's forward and backward,
    whose products go through ``tuner``) runs faster with them than with ``F.linear`` everywhere, by
    the tuner's margin; else every product takes ``F.linear`` from now on, shapes not met yet
    included. The outcome is recorded in ``tuner.choices`` (key ``WHOLE_PASS``: "measured" or
    "torch"), so a run resumed from them multiplies as before; a recorded outcome is returned as it
    is. Returns whether the measured kernels were kept. A product timed alone has its operands in
    the CPU's caches; in a model it shares them with every other, and a kernel that wins alone can
    lose there."""
    recorded = tuner.choices.get(WHOLE_PASS)
    if recorded is not None:
        return recorded == "measured"
    others = {key: name for key, name in tuner.choices.items() if _linear_key(key) and name != "torch"}
    if not others or tuner.force is not None:
        return True  # nothing measured but F.linear (or a forced backend)
    tuner.seen = set()  # the kernels the trial's products take (kernel_for notes them)
    try:
        trial()
    finally:
        seen, tuner.seen = tuner.seen, None
    if seen <= {"torch"}:
        return True  # every product the trial runs takes F.linear already: nothing to compare

    def plain() -> None:
        tuner.force = "torch"
        try:
            trial()
        finally:
            tuner.force = None

    outcome = fastest(time_candidates({"measured": trial, "torch": plain}, min_repeats=repeats), "torch",
                      tuner.margin)
    tuner.load({WHOLE_PASS: outcome, **(dict.fromkeys(others, "torch") if outcome == "torch" else {})})
    return outcome == "measured"


def _linear_key(key: str) -> bool:
    """Whether a choice's key is one of ``KernelTuner.linear``'s (its name must then be in ``KERNELS``)."""
    return key.startswith("linear ")


def _linear_candidates(x: Tensor, weight: Tensor, bias: Tensor | None, grad: bool) -> dict[str, Callable[[], object]]:
    """Each kernel's product (and backward, when gradients are wanted) on detached copies of the operands."""
    xs, ws = x.detach().clone(), weight.detach()
    bs = None if bias is None else bias.detach()
    if not grad:
        return {name: functools.partial(fn, xs, ws, bs) for name, fn in KERNELS.items()}
    xs.requires_grad_(x.requires_grad)
    ws, bs = ws.clone().requires_grad_(weight.requires_grad), None if bs is None else bs.clone().requires_grad_()
    # from a generator of its own: measuring must not move the global RNG (dropout, sampling, resume)
    dy = torch.randn(*x.shape[:-1], weight.size(0), generator=torch.Generator().manual_seed(0))

    def forward_backward(fn: LinearFn) -> None:
        fn(xs, ws, bs).backward(dy)
        xs.grad = ws.grad = None
        if bs is not None:
            bs.grad = None

    return {name: functools.partial(forward_backward, fn) for name, fn in KERNELS.items()}


@functools.cache
def default_tuner() -> KernelTuner:
    """The process's tuner: each shape class is measured once per process (and, with
    ``$SCRATCHFORMER_KERNEL_CACHE`` set to a JSON path, once per machine)."""
    return KernelTuner(path=os.environ.get(CACHE_ENV) or None)


class TunedLinear(nn.Linear):
    """``nn.Linear`` whose product goes through ``tuner`` (same parameters and state dict).
    Made by ``fast_linears`` from an existing ``nn.Linear``."""

    tuner: KernelTuner

    def forward(self, x: Tensor) -> Tensor:
        return self.tuner.linear(x, self.weight, self.bias)


def fast_linears(model: nn.Module, tuner: KernelTuner | None = None) -> KernelTuner:
    """Swap every ``nn.Linear`` in ``model`` (exactly that class) for a ``TunedLinear`` on the same
    ``Parameter`` objects, in place; returns the tuner they share (``default_tuner()`` if None).
    The state dict, tied weights, hooks and ``requires_grad`` flags are unchanged. Apply it to
    the built model before wrapping it (DDP, FSDP, ``torch.compile``)."""
    tuner = tuner if tuner is not None else default_tuner()
    swapped: dict[int, TunedLinear] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if id(child) not in swapped:
                    fast = TunedLinear.__new__(TunedLinear)
                    fast.__dict__.update(child.__dict__)  # the same parameters, buffers and hooks
                    fast.tuner = tuner
                    swapped[id(child)] = fast
                setattr(parent, name, swapped[id(child)])
    return tuner


def linear_kernels(model: nn.Module, backend: str = "auto") -> KernelTuner | None:
    """Apply ``train.linear_backend`` to a built model: "auto" measures (``fast_linears`` with a
    tuner of its own, whose choices the run records; it starts from ``$SCRATCHFORMER_KERNEL_CACHE``
    when that names a file), "onednn" forces oneDNN, "torch" leaves the model's ``nn.Linear`` as
    it is (returns None)."""
    if backend not in BACKENDS:
        raise unknown_name("linear backend", backend, BACKENDS)
    if backend == "torch":
        return None
    tuner = KernelTuner(force=None if backend == "auto" else backend, path=os.environ.get(CACHE_ENV) or None)
    return fast_linears(model, tuner)


__all__ = [
    "BACKENDS", "KERNELS", "WHOLE_PASS", "KernelTuner", "TunedLinear", "cpu_model", "default_tuner",
    "fast_linears", "keep_if_faster", "linear_kernels", "machine_key", "onednn_available", "onednn_linear",
    "row_linear", "row_linear_parts",
]
