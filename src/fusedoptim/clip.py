"""Standalone gradient clipping with torch.nn.utils semantics.

The optimizers' ``global_clipnorm`` / ``clipnorm`` / ``clipvalue`` options fuse clipping
into the update kernel; these functions are for users who want the norm themselves or
clip outside an optimizer.  Norms are computed natively in fixed blocks: the same bits
for any thread count.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from . import _kernels

__all__ = ["clip_grad_norm", "clip_grad_value", "global_norm"]


def _grads_list(grads, what: str) -> list:
    if isinstance(grads, np.ndarray):
        grads = [grads]
    grads = [g for g in grads if g is not None]
    for i, g in enumerate(grads):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{what}[{i}]: expected a numpy.ndarray, got {type(g).__name__}")
        if g.dtype not in (np.float32, np.float64):
            raise TypeError(f"{what}[{i}]: dtype {g.dtype} is not supported; use float32 or float64")
        if not g.flags.c_contiguous:
            raise ValueError(f"{what}[{i}]: array is not C-contiguous")
    return grads


def global_norm(grads: Sequence[Optional[np.ndarray]], norm_type: float = 2.0) -> float:
    """The norm of all gradients taken together (L2 by default; ``inf`` for max-abs;
    other p via NumPy in float64)."""
    gs = _grads_list(grads, "grads")
    norm_type = float(norm_type)
    if not gs:
        return 0.0
    if norm_type == 2.0:
        return math.sqrt(_kernels.grad_stats(gs)[0])
    if math.isinf(norm_type) and norm_type > 0:
        return float(_kernels.grad_stats(gs, want_max=True)[1])
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0, got {norm_type!r}")
    total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in gs)
    return total ** (1.0 / norm_type)


def clip_grad_norm(grads: Sequence[Optional[np.ndarray]], max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> float:
    """Scale ``grads`` in place so their global norm is at most ``max_norm``; return the
    norm before clipping.  Same rule as ``torch.nn.utils.clip_grad_norm_``:
    ``g *= min(1, max_norm / (norm + 1e-6))`` (a NaN/Inf norm makes every gradient NaN
    unless ``error_if_nonfinite``)."""
    gs = _grads_list(grads, "grads")
    max_norm = float(max_norm)
    if math.isnan(max_norm) or max_norm < 0:
        raise ValueError(f"max_norm must be a number >= 0, got {max_norm!r}")
    for i, g in enumerate(gs):
        if not g.flags.writeable:
            raise ValueError(f"grads[{i}]: array is read-only; clip_grad_norm scales gradients in place")
    norm = global_norm(gs, norm_type)
    if error_if_nonfinite and not math.isfinite(norm):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite ({norm}), "
                           "so it cannot be clipped")
    coef = max_norm / (norm + 1e-6)
    coef = min(coef, 1.0) if not math.isnan(coef) else coef
    for g in gs:
        np.multiply(g, g.dtype.type(coef), out=g)
    return norm


def clip_grad_value(grads: Sequence[Optional[np.ndarray]], clip_value: float) -> None:
    """Clamp ``grads`` in place to ``[-clip_value, clip_value]`` (NaN stays NaN), like
    ``torch.nn.utils.clip_grad_value_``."""
    gs = _grads_list(grads, "grads")
    clip_value = float(clip_value)
    if math.isnan(clip_value) or clip_value < 0:
        raise ValueError(f"clip_value must be a number >= 0, got {clip_value!r}")
    for g in gs:
        np.clip(g, -clip_value, clip_value, out=g)
