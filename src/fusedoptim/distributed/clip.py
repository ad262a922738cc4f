"""Global gradient norm, clipping and the non-finite guard, computed so every rank takes
the same decision: they run on the reduced gradient, which has the same bits on every
rank, with a summation order fixed by the data layout (never by threads or ranks).

The clip factor is the one of the optimizers' ``global_clipnorm`` option (Keras):
``g * c / max(norm, c)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from .. import _kernels

__all__ = ["clip_grad_norm", "global_norm", "sum_of_squares", "clip_coefficient", "scale_"]

# NumPy fallback: squares summed in fixed blocks of this many elements (pairwise sum in
# a block, math.fsum across blocks), so the order depends only on the array sizes.
_BLOCK = 1 << 16


def sum_of_squares(arrays: Sequence[Optional[np.ndarray]]) -> float:
    """Sum of squares of all elements in float64 (non-finite if any element is), with a
    summation order that depends only on the sizes: the native fixed-block reduction
    when the build has it, else NumPy in fixed blocks."""
    arrays = [a for a in arrays if a is not None and a.size]
    if not arrays:
        return 0.0
    native = getattr(_kernels, "grad_stats", None)
    if native is not None:
        return float(native(arrays)[0])
    parts: List[float] = []
    for a in arrays:
        x = a.reshape(-1)
        for s in range(0, x.size, _BLOCK):
            blk = x[s:s + _BLOCK].astype(np.float64)
            parts.append(float(np.add.reduce(blk * blk)))
    return math.fsum(parts)


def global_norm(arrays: Sequence[Optional[np.ndarray]]) -> float:
    """The L2 norm of all arrays together (inf or nan when any element is non-finite)."""
    return math.sqrt(sum_of_squares(arrays))


def clip_coefficient(total_norm: float, clipnorm: float) -> float:
    """The global_clipnorm factor ``c / max(norm, c)`` (1 when the norm is within ``c``)."""
    return clipnorm / max(total_norm, clipnorm)


def scale_(arrays: Sequence[Optional[np.ndarray]], coef: float) -> None:
    """Multiply every array in place by ``coef`` (a no-op for 1.0)."""
    if coef == 1.0:
        return
    for a in arrays:
        if a is not None and a.size:
            np.multiply(a, a.dtype.type(coef), out=a)


def clip_grad_norm(grads: Sequence[Optional[np.ndarray]], clipnorm: Optional[float]) -> float:
    """Return the global norm of ``grads`` and, if ``clipnorm`` is given and the norm is
    finite, scale them in place so it is at most ``clipnorm``."""
    norm = global_norm(grads)
    if clipnorm is not None and math.isfinite(norm):
        scale_(grads, clip_coefficient(norm, clipnorm))
    return norm
