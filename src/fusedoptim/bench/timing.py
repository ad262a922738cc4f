"""Timing: how many calls make one sample, interleaved samples, medians.

``time.perf_counter``; each sample times enough consecutive calls to last ``min_time``
seconds; the contenders take turns sample by sample, in a rotating order, so drift on a
busy machine hits all of them alike; the figure is the median sample.  The garbage
collector is off while timing.  Asynchronous calls (GPU steps, which only queue work)
are timed from an idle device to a ``sync()`` after the batch.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from typing import Callable, Dict, List, Optional

import numpy as np

__all__ = ["calibrate", "calibrate_synced", "sync_every", "measure"]


def calibrate(fn: Callable[[], None], min_time: float, warmup: int = 1, cap: int = 100_000) -> int:
    """Run ``fn`` ``warmup`` times, then return how many consecutive calls last about
    ``min_time`` seconds (at least 1), from the fastest of up to 5 timed calls (one
    descheduled call on a busy machine must not shrink every sample to one step)."""
    for _ in range(max(warmup, 0)):
        fn()
    best = math.inf
    spent = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent >= min_time:
            break
    if best <= 0:
        return cap
    return int(max(1, min(cap, math.ceil(min_time / best))))


def calibrate_synced(fn: Callable[[], None], sync: Callable[[], None], min_time: float,
                     warmup: int = 1, cap: int = 100_000) -> int:
    """:func:`calibrate` for asynchronous calls (GPU steps, which only queue work):
    ``warmup`` calls, then batches timed from an idle device to ``sync()`` returning.
    The fastest of 3 one-call batches (an overestimate of the step time: it includes one
    synchronisation) gives a first count, refined by timing one batch of that many calls."""
    for _ in range(max(warmup, 0)):
        fn()

    def batch(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return time.perf_counter() - t0

    best = min(batch(1) for _ in range(3))
    if best <= 0:
        return cap
    n = int(max(1, min(cap, math.ceil(min_time / best))))
    if n > 1:
        t = batch(n)
        if t > 0:
            n = int(max(1, min(cap, math.ceil(min_time * n / t))))
    return n


def sync_every(fn: Callable[[], None], sync: Callable[[], None], n: int) -> Callable[[], None]:
    """``fn`` wrapped so that every ``n``-th call also waits for the device
    (``sync()``): for a timer that times ``n`` consecutive calls from an idle device
    (pytest-benchmark's ``pedantic(iterations=n)``), each timed batch then ends when its
    work is done, not when it is queued."""
    if n < 1:
        raise ValueError("n must be >= 1")
    count = [0]

    def call():
        fn()
        count[0] += 1
        if count[0] % n == 0:
            sync()
    return call


def measure(fns: Dict[str, Callable[[], None]], repeat: int, min_time: float,
            warmup: int = 1, sync: Optional[Callable[[], None]] = None) -> Dict[str, dict]:
    """Median seconds per call of each function.  Every round takes one sample of each
    contender (``inner`` consecutive calls), in an order rotated every round.

    With ``sync`` (asynchronous calls, e.g. ``Gpu.sync`` for GPU contenders) each sample
    starts on an idle device (``sync()`` before, untimed) and ends when ``sync()`` after
    the last call returns: wall time of the batch including the device's work, and
    :func:`calibrate_synced` fixes ``inner``."""
    names = list(fns)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        # a constant gradient drives e.g. centered RMSprop to sqrt(< 0): no NumPy warnings
        with np.errstate(all="ignore"):
            if sync is None:
                inner = {n: calibrate(fns[n], min_time, warmup) for n in names}
            else:
                inner = {n: calibrate_synced(fns[n], sync, min_time, warmup) for n in names}
            for r in range(repeat):
                shift = r % len(names) if names else 0
                for n in names[shift:] + names[:shift]:
                    fn, k = fns[n], inner[n]
                    if sync is not None:
                        sync()
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    if sync is not None:
                        sync()
                    samples[n].append((time.perf_counter() - t0) / k)
    finally:
        if gc_was:
            gc.enable()
    return {n: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                "inner": inner[n], "samples_s": s}
            for n, s in samples.items()}
