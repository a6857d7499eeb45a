"""Mixed precision: whether a run computes in bf16 (autocast), and a measurement of whether that
pays on this CPU before a whole run is spent finding out."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def cpu_bf16_matmul_speedup(n: int = 256, repeats: int = 20) -> float:
    """How many times faster a bf16 (n x n) matmul is than float32 on this CPU.

    Some CPUs have native bf16 units (AVX512-BF16, AMX) and run bf16 several
    times faster; others emulate it and run it hundreds of times slower. A
    few milliseconds of measuring tells which before a whole run is spent.
    Both sides run ``F.linear``: float32 as the baseline every Linear kernel
    must beat (``scratchformer.nn.linear``), bf16 as autocast calls it.
    """

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        F.linear(a, a)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            F.linear(a, a)
        return time.perf_counter() - start

    return seconds(torch.float32) / seconds(torch.bfloat16)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``train.precision`` means bf16 autocast on ``device`` ("auto": on GPUs only).

    bf16 on a CPU is measured first (:func:`cpu_bf16_matmul_speedup`), with a
    warning when it will make training slower.
    """
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cpu":
        speedup = cpu_bf16_matmul_speedup()
        if speedup < 1.0:
            logger.warning(
                "train.precision=bf16 on this CPU: a bf16 matmul runs %.2fx as fast as the float32 one "
                "training would use, so training will be slower; use train.precision=fp32", speedup
            )
        else:
            logger.info("bf16 autocast on CPU: bf16 matmuls measured %.1fx as fast as float32 here", speedup)
    return use_bf16


def autocast_factory(use_bf16: bool, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A function returning a fresh context in which forward passes run: bf16 autocast, or nothing."""
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
