"""How the command's OpenMP threads wait, chosen before torch is imported, so a busy CPU does not stall training.

PyTorch's CPU kernels run on OpenMP threads. Between parallel regions an
idle thread first spins (busy-waits), then sleeps. GNU OpenMP's default spin
is long (``GOMP_SPINCOUNT`` 300000 pauses, several milliseconds): on an idle
machine it saves the wake-up latency, but when another CPU-bound process
shares the cores, every spinning thread burns the time slice the thread it
waits for needs, and training runs about 3x slower beside one competing
process on 2 cores. ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) fixes the
busy case but pays the wake-up latency everywhere (about 15% on a small
matmul). A short spin keeps both: long enough to bridge the gap between two
kernels of one training step (microseconds), short enough to give the core
away when a thread waits for a descheduled sibling.

:func:`apply` sets that policy in the environment of the current process
(and the processes it starts) when the user has not chosen one; it must run
before ``import torch``, because the OpenMP runtime reads its settings once,
when torch loads it. The ``scratchformer`` command calls it first thing; so
does the test suite's ``conftest.py``. ``benchmarks/bench_busy_cpu.py``
measures it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping

SPIN_COUNT = "10000"
"""Pauses a waiting OpenMP thread spins before it sleeps (GNU OpenMP ``GOMP_SPINCOUNT``; the runtime's
default is 300000). Chosen with ``benchmarks/bench_busy_cpu.py``."""

BLOCK_TIME_MS = "1"
"""The same for Intel's OpenMP runtime (``KMP_BLOCKTIME``, milliseconds; its default is 200)."""

USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""If any of these is set, the user has chosen and :func:`apply` changes nothing."""


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup (container) CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" (no limit) or "<quota> <period>"
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


IDLE_SAMPLE_S = 0.1
"""How long :func:`idle_cpus` watches the machine before choosing the thread count."""


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_cpus(seconds: float = IDLE_SAMPLE_S) -> float | None:
    """How many CPUs other processes left idle over the next ``seconds`` (None if it cannot be read)."""
    import time

    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def thread_count(cpus: int, idle: float | None) -> int:
    """Threads for torch: the CPUs available to the process, fewer when other processes keep some busy.

    A thread whose core is taken by another process holds up every parallel
    region its siblings finish, so on a shared machine fewer threads finish
    sooner (on 2 cores beside one CPU-bound process, 1 thread is about 2x faster than 2).
    """
    if idle is None:
        return cpus
    return max(1, min(cpus, math.floor(idle + 0.25)))


def apply(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set the short-spin wait policy and the thread count (the CPUs available and idle) unless the user chose them.

    Returns True if it changed the environment. Does nothing once torch is
    imported (the runtime has read its settings by then).
    """
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or any(name in environ for name in USER_SETTINGS):
        return False
    environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    environ["KMP_BLOCKTIME"] = BLOCK_TIME_MS
    if "OMP_NUM_THREADS" not in environ:
        cpus = available_cpus()
        threads = thread_count(cpus, idle_cpus() if cpus > 1 else None)
        if threads < (os.cpu_count() or threads):
            environ["OMP_NUM_THREADS"] = str(threads)
    return True
