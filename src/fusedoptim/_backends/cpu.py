"""The CPU backend: NumPy arrays, the OpenMP loops of the ``_kernels`` extension."""
from __future__ import annotations

import numpy as np

from .. import _kernels

__all__ = ["CpuBackend", "CPU"]


class CpuBackend:
    """NumPy arrays on the host.  Statistics come back to the host (``device_control``
    is False): the gradient pipeline turns them into clip factors."""

    name = "cpu"
    device_control = False

    @staticmethod
    def is_array(x) -> bool:
        return isinstance(x, np.ndarray)


    @staticmethod
    def zeros_like(p):
        return np.zeros_like(p)

    @staticmethod
    def full_like(p, v):
        return np.full_like(p, v)

    @staticmethod
    def to_host(a) -> np.ndarray:
        return np.array(a, copy=True)

    @staticmethod
    def from_host(a, like) -> np.ndarray:
        return np.array(a, dtype=like.dtype, order="C", copy=True)

    @staticmethod
    def address(a) -> int:
        return a.__array_interface__["data"][0]

    @staticmethod
    def take(values, idx):
        return [values[i] for i in idx]

    @staticmethod
    def storage_dtype(dtype):
        """NumPy stores every state dtype as itself (bfloat16: ``ml_dtypes.bfloat16``)."""
        return dtype

    @staticmethod
    def quantize(x, signed: bool, block: int = 256):
        """``(codes, absmax)`` of float32 values: a fresh 8-bit state buffer (nearest code)."""
        return _kernels.q8_quantize(x, bool(signed), block)

    @staticmethod
    def to_storage(a, dtype):
        """A fresh state buffer in ``dtype`` (bfloat16: nearest-even, ml_dtypes' cast)."""
        return a.astype(dtype)



# the checks, statistics and steps are the extension's functions themselves: no Python
# frame between a step and the loops
for _name in ("check_params", "check_grads", "param_spans", "grad_stats", "accumulate", "fused_step",
              "fused_step_q8"):
    setattr(CpuBackend, _name, staticmethod(getattr(_kernels, _name)))
del _name

CPU = CpuBackend()
