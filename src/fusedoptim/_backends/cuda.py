"""The CUDA backend: CuPy arrays, the kernels of ``csrc/fusedoptim/kernels.cu`` launched by
``fusedoptim._cuda``.  Gradient statistics stay on the device (``device_control``): the
pipeline gets a control block the update kernel reads, so a step never waits for the GPU
unless the non-finite guard must decide whether the step counts."""
from __future__ import annotations

import numpy as np

from .. import _cuda

__all__ = ["CudaBackend", "CUDA"]


class CudaBackend:
    name = "cuda"
    device_control = True

    is_array = staticmethod(_cuda.is_device_array)
    @staticmethod
    def param_spans(params):
        """Device memory spans, rows (start, end, index) sorted by start, as the CPU
        backend's (for the parameters' overlap check; gradients are only checked against
        their own parameter, so check_grads ignores them)."""
        rows = sorted((_cuda.address(p), _cuda.address(p) + p.nbytes, j) for j, p in enumerate(params) if p.nbytes)
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    @staticmethod
    def check_grads(params, grads, labels=None, spans=None) -> int:
        return _cuda.check_grads(params, grads, labels)

    @staticmethod
    def skip_requested(control) -> bool:
        """Read back the skip flag of a control block (one device sync)."""
        return bool(float(control[_cuda.CTRL_SKIP]))


# the rest of the protocol is _cuda's functions of the same names
for _name in ("check_params", "grad_stats", "grad_control", "accumulate", "fused_step", "fused_step_q8", "quantize",
              "zeros_like", "full_like", "to_host", "from_host", "address", "take", "storage_dtype", "to_storage"):
    setattr(CudaBackend, _name, staticmethod(getattr(_cuda, _name)))
del _name

CUDA = CudaBackend()
