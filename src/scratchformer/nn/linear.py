"""Linear layers, with the CPU matmul sent to oneDNN.

``Linear`` is ``torch.nn.Linear`` (same parameters, names, initialisation
and state dict) whose float32 matmul on the CPU goes through oneDNN, the
kernel library PyTorch ships for CPU inference, instead of the BLAS that
``F.linear`` calls. Why: PyTorch's x86 builds call Intel MKL for float32
matmuls, and on AMD processors MKL takes its AVX2 code path, while oneDNN
uses AVX-512 wherever the CPU has it. On the AMD EPYC this project is
measured on, oneDNN runs a Linear's forward and backward at the training
shapes up to about twice as fast, and reads the weights about twice as
fast in batch-1 decoding (``benchmarks/bench_linear.py``; its table is in
docs/results.md). On a CPU where MKL is at its best the gain is smaller.

The result is the same function: the same float32 inputs, float32
accumulation, no reduced-precision mode. Only the order of the additions
inside the dot products differs, so outputs agree with ``F.linear`` to float
rounding (tested to 1e-5 relative, forward and backward, in
``tests/test_linear.py``); a model trains and resumes bit-identically as long
as the backend stays the same.

Backends, chosen process-wide with ``set_linear_backend`` (or the
``SCRATCHFORMER_LINEAR`` environment variable):

- ``"auto"`` (default): on x86-64, oneDNN for float32 matmuls on the CPU
  of at least ``ONEDNN_MIN_MACS`` multiply-adds or with a weight of at least
  ``ONEDNN_MIN_WEIGHT`` numbers, when this PyTorch has it, eager or
  under ``torch.compile``; ``F.linear`` for everything else (small
  products, where oneDNN's fixed cost per call dominates; CUDA; float64;
  bfloat16; autocast; forward-mode AD and ``torch.func`` transforms). A
  backward with ``create_graph=True`` runs torch's ops, so double backward
  works. Not covered: ``torch.compile`` wrapped *around* a ``torch.func``
  transform of a model on the oneDNN path (the transform cannot be seen
  while tracing, and ``torch.func.grad`` then gets no gradient through the
  op); use the "torch" backend there. The other order,
  ``torch.func.grad(torch.compile(f))``, works.
- ``"torch"``: always ``F.linear``.
- ``"onednn"``: oneDNN for every float32 CPU matmul whatever its size (an
  error if this PyTorch has no oneDNN).

One more kernel serves batch-1 decoding, where a step multiplies one row by
every weight and the time is that of reading the weights from memory:
``row_linear`` computes ``x @ W.T`` for a single row as the weighted sum of the
rows of W.T, an (in, out) copy, which ``F.embedding_bag`` (FBGEMM's kernel)
reads in one pass, split between the threads. It reads weights about 1.3x as
fast as oneDNN's one-row product here (``benchmarks/bench_linear.py``).
``uses_row_linear`` says when "auto" takes it; ``DecodeStep`` (decoding)
is its user, since it needs the copy.

Legend: N rows (every leading dimension of x flattened), K in features,
M out features.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, unknown_name

LinearBackend = Literal["auto", "torch", "onednn"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onednn")
ENV_VAR = "SCRATCHFORMER_LINEAR"
# oneDNN costs about 13 us more per call than F.linear (here); it pays that back from about
# 2M multiply-adds (a (32, 128) x (128, 512) product is a tie), or on a weight of 1M numbers
# or more even for one row, which it reads from memory faster (decoding)
ONEDNN_MIN_MACS = 1 << 21
ONEDNN_MIN_WEIGHT = 1 << 20
# a one-row product by row_linear costs about 3 us more per call than torch's addmm; from weights of
# about 128K numbers on it reads them faster (a (128, 384) weight: 7 vs 4 us; (256, 768): 10 vs 11 us)
ROW_LINEAR_MIN_WEIGHT = 1 << 17


# oneDNN ships inside PyTorch's CPU builds (torch.compile's CPU backend uses it too). "auto" uses it
# on x86-64 only, where it was measured against MKL; elsewhere (e.g. ARM, with other BLAS) ask for it
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_AUTO_ONEDNN = _ONEDNN and platform.machine().lower() in ("x86_64", "amd64")


def onednn_available() -> bool:
    """True if this PyTorch has oneDNN (``torch.backends.mkldnn``) and its linear kernel."""
    return _ONEDNN


def _checked(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise unknown_name(source, name, BACKENDS)
    if name == "onednn" and not _ONEDNN:
        raise ConfigError(f"{source}='onednn', but this PyTorch build has no oneDNN linear kernel; use 'auto' or 'torch'")
    return name


_backend: str | None = None  # None: not chosen yet; read the environment on first use


def get_linear_backend() -> str:
    """The process-wide backend: ``set_linear_backend``'s choice, else ``$SCRATCHFORMER_LINEAR``, else "auto"."""
    global _backend
    if _backend is None:
        _backend = _checked(os.environ.get(ENV_VAR, "auto"), f"linear backend ${ENV_VAR}")
    return _backend


def set_linear_backend(name: LinearBackend) -> None:
    """Choose how every scratchformer ``Linear`` multiplies: "auto", "torch" or "onednn"."""
    global _backend
    _backend = _checked(name, "linear backend")


@contextmanager
def linear_backend(name: LinearBackend) -> Iterator[None]:
    """``with linear_backend("torch"): ...`` runs the block with another backend, then restores it."""
    global _backend
    saved = _backend  # as it was, unread environment included
    set_linear_backend(name)
    try:
        yield
    finally:
        _backend = saved


def _in_transform() -> bool:
    """Forward-mode AD or a ``torch.func`` transform is active: they need ``F.linear``'s
    derivative rules, which the oneDNN path does not provide."""
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    return level is not None and level() is not None


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear(x, weight)`` takes the oneDNN path: a float32 matmul on the CPU
    outside autocast, forward-mode AD and ``torch.func`` transforms, under backend "onednn",
    or under "auto" when it has at least ``ONEDNN_MIN_MACS`` multiply-adds or its weight at
    least ``ONEDNN_MIN_WEIGHT`` numbers."""
    backend = get_linear_backend()
    eligible = (
        _ONEDNN
        and backend != "torch"
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        and weight.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and (torch.compiler.is_compiling() or not _in_transform())
    )
    if not eligible:
        return False
    if backend == "onednn":
        return True
    n = weight.numel()
    return _AUTO_ONEDNN and (n >= ONEDNN_MIN_WEIGHT or x.numel() // x.size(-1) * n >= ONEDNN_MIN_MACS)


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


def matmul_for(x: Tensor, weight: Tensor) -> Callable[..., Tensor]:
    """The kernel ``linear`` would use for these operands, without autograd:
    ``onednn_linear`` or ``F.linear`` (both called as ``fn(x, weight, bias)``)."""
    return onednn_linear if uses_onednn(x, weight) else F.linear


def uses_row_linear(x: Tensor, weight: Tensor) -> bool:
    """Whether a one-row product x (1, K) by ``weight`` (M, K), without gradients, reads
    the weight faster through ``row_linear`` (on its (K, M) copy): under backend "auto" on
    x86-64, a float32 CPU product outside autocast with at least ``ROW_LINEAR_MIN_WEIGHT``
    numbers in the weight."""
    return (
        _AUTO_ONEDNN
        and get_linear_backend() == "auto"
        and x.dim() == 2
        and x.size(0) == 1
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.numel() >= ROW_LINEAR_MIN_WEIGHT
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


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
    per bag, (P, M), which are then added, all in x's dtype (float32 where
    ``uses_row_linear`` chooses this kernel)."""
    partial = F.embedding_bag(ids, weight_t, offsets, mode="sum", per_sample_weights=x[0])  # (parts, M)
    y = partial if partial.size(0) == 1 else partial.sum(0, keepdim=True)  # (1, M)
    return y if bias is None else y.add_(bias)


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


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN when ``uses_onednn`` says so.

    x: (..., K); weight: (M, K); bias: (M,) or None. Returns (..., M).
    """
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _OneDNNLinear.apply(x, weight, bias)
    return onednn_linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward is ``scratchformer.nn.linear.linear`` (same parameters and state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
