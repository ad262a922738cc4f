"""Memory check: does a step allocate memory that outlives it?  Figures, not assertions."""
from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
from typing import Optional

from ..optim import Adam
from .workloads import make_data, parse_workload

__all__ = ["memory_check"]


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _maxrss_bytes() -> Optional[int]:
    try:
        import resource
    except ImportError:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def memory_check(steps: int = 10_000, n_tensors: int = 200, size: int = 327,
                 seed: int = 0) -> dict:
    """Adam on ``n_tensors`` tensors of ``size`` float32 elements: after one step (state
    allocated), ``steps`` steps under tracemalloc, with RSS read before and after.
    A leak of one small object per step shows as a tracemalloc current delta of about
    ``steps`` times its size; the peak delta is the largest transient allocation.  RSS
    includes tracemalloc's own bookkeeping (``tracemalloc_overhead``).  Figures, not
    assertions; the step time under tracemalloc is not a benchmark figure."""
    params, grads = make_data(parse_workload(f"{n_tensors}x{size}"), seed)
    opt = Adam(params, lr=1e-3)
    opt.step(grads)
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    rss0, maxrss0 = _rss_bytes(), _maxrss_bytes()
    tracemalloc.reset_peak()
    cur0, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step(grads)
    elapsed = time.perf_counter() - t0
    cur1, peak = tracemalloc.get_traced_memory()
    rss1, maxrss1 = _rss_bytes(), _maxrss_bytes()
    overhead = tracemalloc.get_tracemalloc_memory()
    if not was_tracing:
        tracemalloc.stop()
    sub = lambda a, b: None if a is None or b is None else a - b  # noqa: E731
    return {"optimizer": "adam", "n_tensors": n_tensors, "size": size, "steps": steps,
            "state_bytes": 2 * n_tensors * size * 4,
            "rss_before": rss0, "rss_after": rss1, "rss_delta": sub(rss1, rss0),
            "maxrss_before": maxrss0, "maxrss_after": maxrss1,
            "tracemalloc_current_delta": cur1 - cur0, "tracemalloc_peak_delta": peak - cur0,
            "tracemalloc_overhead": overhead,
            "traced_s": elapsed, "us_per_step_traced": elapsed / steps * 1e6,
            "iterations_after": opt.iterations}
