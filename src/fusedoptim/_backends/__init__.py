"""Backends: the native code behind one protocol, chosen by the arrays' type.

A backend object (:class:`~fusedoptim._backends.cpu.CpuBackend` for NumPy arrays,
:class:`~fusedoptim._backends.cuda.CudaBackend` for CuPy arrays) offers:

``check_params(params, labels)``, ``check_grads(params, grads, labels, spans) -> #None``,
``param_spans(params)``
    input checks (dtype, byte order, alignment, layout, aliasing), before anything runs;
``fused_step(algo, common, scalars, flags, params, grads, states, emas, tscale, control)``
    one native call: the algorithm (a native id) over every tensor, scalars by name;
``grad_stats(grads, per_tensor)`` (host) or ``grad_control(...)`` (device)
    the deterministic reductions of the gradient pipeline (``device_control`` says which);
``accumulate(accs, grads, scale)`` (``accs[i] += scale * grads[i]``), ``zeros_like``,
``full_like``, ``to_host``, ``from_host``, ``address``, ``take``;
``storage_dtype(dtype)``, ``to_storage(a, dtype)``
    how a state dtype is held (CUDA: bfloat16 as uint16 bits) and a fresh buffer in it;
``fused_step_q8(..., states, absmax, ..., rounding, block)``, ``quantize(x, signed, block)``
    8-bit block-wise state (q8.h): the step, and the codes and absmax of a fresh buffer.

The optimizer never branches on the backend's identity: it asks :func:`backend_for`.
"""
from __future__ import annotations

import sys

from .cpu import CPU

__all__ = ["backend_for", "is_array", "CPU"]


def _is_cupy(x) -> bool:
    cp = sys.modules.get("cupy")        # never imports CuPy: no CuPy loaded, no CuPy array
    return cp is not None and isinstance(x, cp.ndarray)


def is_array(x) -> bool:
    """A NumPy or CuPy array."""
    return CPU.is_array(x) or _is_cupy(x)


def backend_for(arrays):
    """The backend of these arrays (by the first one; CPU for an empty list)."""
    if arrays and not CPU.is_array(arrays[0]) and _is_cupy(arrays[0]):
        from .cuda import CUDA
        return CUDA
    return CPU
