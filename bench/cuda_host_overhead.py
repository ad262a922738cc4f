"""Host-side cost of one CUDA step, without a GPU: the Python path of ``Optimizer.step``
on CuPy-like arrays (checks, engine, pointer table, upload cache, launch arguments) with
the kernel launches stubbed out.

A tiny stand-in for the CuPy surface ``fusedoptim._cuda`` uses (plain attributes, as
CuPy's ndarray exposes C fields; host memory behind the "device" pointers) is installed
as ``sys.modules["cupy"]``; launches record their name and return.  The figure is the
time per step of Adam over N tensors: what the GPU column of ``python -m
fusedoptim.bench`` adds on top of the kernel when the step is host-bound (ResNet-18: 62
tensors; 100x10K).  It measures our Python, not CuPy's (CuPy's attribute reads and
argument packing cost more), so compare figures of this script with each other only.

    python bench/cuda_host_overhead.py [--tensors 100] [--steps 2000] [--clip]
"""
import argparse
import sys
import time

import numpy as np


class _Ptr:
    __slots__ = ("ptr", "device_id")

    def __init__(self, ptr):
        self.ptr, self.device_id = ptr, 0


class _Flags:
    c_contiguous = True


class _Device:
    id = 0
    attributes = {"MultiProcessorCount": 132}

    def __init__(self, i=0):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class ndarray:
    __slots__ = ("_a", "dtype", "shape", "size", "nbytes", "data", "_c_contiguous", "__weakref__")
    flags = _Flags()
    device = _Device()

    def __init__(self, a):
        self._a = a
        self.dtype, self.shape, self.size, self.nbytes = a.dtype, a.shape, a.size, a.nbytes
        self.data = _Ptr(a.__array_interface__["data"][0])
        self._c_contiguous = True


class _Fn:
    calls = 0

    def __call__(self, grid, block, args):
        _Fn.calls += 1


class _RawModule:
    def __init__(self, code, options=()):
        pass

    def get_function(self, name):
        return _Fn()


class _Cuda:
    Device = _Device


class _StubCuPy:
    ndarray = ndarray
    RawModule = _RawModule
    cuda = _Cuda

    @staticmethod
    def asarray(a):
        return ndarray(np.array(a, copy=True))

    @staticmethod
    def zeros(shape, dtype):
        return ndarray(np.zeros(shape, dtype))

    @staticmethod
    def empty(shape, dtype):
        return ndarray(np.empty(shape, dtype))

    @staticmethod
    def full(shape, v, dtype):
        return ndarray(np.full(shape, v, dtype))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--clip", action="store_true", help="global_clipnorm=1.0 (device statistics launches)")
    ap.add_argument("--new-grads", action="store_true", help="fresh gradient arrays every step (no reuse)")
    a = ap.parse_args(argv)
    sys.modules["cupy"] = _StubCuPy
    import fusedoptim as fo
    from fusedoptim import _cuda
    _cuda._cupy = _StubCuPy
    params = [_StubCuPy.zeros((a.size,), np.float32) for _ in range(a.tensors)]
    grads = [_StubCuPy.zeros((a.size,), np.float32) for _ in range(a.tensors)]
    opt = fo.Adam(params, lr=1e-3, **({"global_clipnorm": 1.0} if a.clip else {}))
    opt.step(grads)
    best = []
    for _ in range(5):
        gs = [[_StubCuPy.zeros((a.size,), np.float32) for _ in range(a.tensors)] for _ in range(8)] \
            if a.new_grads else [grads]
        t = time.perf_counter()
        for i in range(a.steps):
            opt.step(gs[i % len(gs)])
        best.append((time.perf_counter() - t) / a.steps)
    us = sorted(best)[len(best) // 2] * 1e6
    print(f"{a.tensors} tensors{' + clip' if a.clip else ''}{' (new grads)' if a.new_grads else ''}: "
          f"{us:.1f} us per step host time (median of 5 x {a.steps}), {us / a.tensors:.2f} us per tensor; "
          f"{_Fn.calls} launches")


if __name__ == "__main__":
    main()
