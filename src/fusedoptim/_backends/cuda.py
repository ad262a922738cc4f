"""The CUDA backend: CuPy arrays, the kernels of ``csrc/fusedoptim/kernels.cu`` launched by
``fusedoptim._cuda``.  Gradient statistics stay on the device (``device_control``): the
pipeline gets a control block the update kernel reads, so a step never waits for the GPU
unless the non-finite guard must decide whether the step counts."""
from __future__ import annotations

from .. import _cuda

__all__ = ["CudaBackend", "CUDA"]


class CudaBackend:
    name = "cuda"
    device_control = True

    is_array = staticmethod(_cuda.is_device_array)
    check_params = staticmethod(_cuda.check_params)
    grad_stats = staticmethod(_cuda.grad_stats)
    grad_control = staticmethod(_cuda.grad_control)
    accumulate = staticmethod(_cuda.accumulate)
    fused_step = staticmethod(_cuda.fused_step)
    zeros_like = staticmethod(_cuda.zeros_like)
    full_like = staticmethod(_cuda.full_like)
    to_host = staticmethod(_cuda.to_host)
    from_host = staticmethod(_cuda.from_host)
    address = staticmethod(_cuda.address)
    take = staticmethod(_cuda.take)

    @staticmethod
    def param_spans(params):
        return None       # device arrays: only the gradient-vs-own-parameter check

    @staticmethod
    def check_grads(params, grads, labels=None, spans=None) -> int:
        return _cuda.check_grads(params, grads, labels)

    @staticmethod
    def skip_requested(control) -> bool:
        """Read back the skip flag of a control block (one device sync)."""
        return bool(float(control[_cuda.CTRL_SKIP]))


CUDA = CudaBackend()
