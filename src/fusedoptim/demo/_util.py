"""Shared helpers of the demos: optional imports, progress bars, lazily found library parts."""
from __future__ import annotations

import contextlib
import importlib
import math
import sys
from typing import Any, Callable, Optional

PIP_HINT = "pip install 'fusedoptim[demo]'"


class DemoError(Exception):
    """A user-facing problem (bad option, missing package or file): printed, exit code 2."""


def require(module: str, package: str, purpose: str):
    """Import ``module`` or raise a DemoError naming the package and the demo extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DemoError(f"{package} is needed {purpose} but is not installed ({e}); "
                        f"install the demo extras with: {PIP_HINT}") from None


def optional(module: str):
    """Import ``module`` or return None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend, or None if matplotlib is missing."""
    mpl = optional("matplotlib")
    if mpl is None:
        return None
    mpl.use("Agg", force=True)
    return importlib.import_module("matplotlib.pyplot")


def progress(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar on stderr when tqdm is installed and stderr is a terminal; else a no-op bar."""
    if enabled:
        tqdm = optional("tqdm")
        stream = sys.stderr
        if tqdm is not None and hasattr(stream, "isatty") and stream.isatty():
            return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream, dynamic_ncols=True)
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def blas_threads(n: int):
    """(context manager, description) limiting NumPy's BLAS to ``n`` threads via threadpoolctl.

    The demos' matrix products are small: on a few cores, BLAS threads cost more in
    wake-ups and spinning than they save, and they compete with ``opt.step`` for the
    cores.  ``n = 0`` leaves BLAS alone.
    """
    if n <= 0:
        return contextlib.nullcontext(), "BLAS threads: library default"
    tpc = optional("threadpoolctl")
    if tpc is None:
        return contextlib.nullcontext(), "BLAS threads: library default (threadpoolctl not installed)"
    return tpc.threadpool_limits(limits=n, user_api="blas"), f"BLAS threads: {n}"


def schedules_module():
    """``fusedoptim.schedules`` (Keras-named schedules), imported on first use."""
    try:
        return importlib.import_module("fusedoptim.schedules")
    except ImportError as e:
        raise DemoError(f"--schedule needs fusedoptim.schedules, which this fusedoptim build does not "
                        f"have ({e}); run without --schedule") from None


def make_schedule(kind: str, lr: float, total_steps: int) -> Any:
    """The learning rate for ``kind`` as an optimizer accepts it: a float for ``none``,
    else a ``fusedoptim.schedules`` object (called with the step count).

    cosine       CosineDecay(lr, decay_steps=total): lr -> 0 along a half cosine
    exponential  ExponentialDecay(lr, decay_steps=total, decay_rate=0.1): lr * 0.1 ** (t / total)
    step         PiecewiseConstantDecay([total/2, 3 total/4], [lr, lr/10, lr/100])
    """
    if kind == "none":
        return lr
    total = max(int(total_steps), 1)
    mod = schedules_module()

    def cls(name: str) -> Callable:
        c = getattr(mod, name, None)
        if c is None:
            raise DemoError(f"--schedule {kind} needs fusedoptim.schedules.{name}, which this build lacks")
        return c

    if kind == "cosine":
        return cls("CosineDecay")(initial_learning_rate=lr, decay_steps=total)
    if kind == "exponential":
        return cls("ExponentialDecay")(initial_learning_rate=lr, decay_steps=total, decay_rate=0.1)
    if kind == "step":
        b1, b2 = max(total // 2, 1), max((3 * total) // 4, 2)
        return cls("PiecewiseConstantDecay")(boundaries=[b1, max(b2, b1 + 1)], values=[lr, lr * 0.1, lr * 0.01])
    raise DemoError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")


SCHEDULES = ("none", "cosine", "exponential", "step")


def clip_function() -> Callable:
    """``fusedoptim.clip_grad_norm(grads, max_norm) -> total_norm`` (scales grads in place)."""
    import fusedoptim
    fn = getattr(fusedoptim, "clip_grad_norm", None)
    if fn is None:
        mod = optional("fusedoptim.clip")
        fn = getattr(mod, "clip_grad_norm", None) if mod is not None else None
    if fn is None:
        raise DemoError("--clip-norm needs fusedoptim.clip_grad_norm, which this fusedoptim build does not "
                        "have; run without --clip-norm")
    return fn


def finite(x: Optional[float]) -> Optional[float]:
    """x as a float, or None when missing or not finite (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
