"""Array intake: any CPU array that exposes DLPack or the buffer protocol (torch CPU
tensors above all) becomes a NumPy view of the same memory, so the optimizer updates it
in place.  Nothing is copied, and torch is never imported: a tensor is recognised by the
protocols it exposes.

:func:`as_array` is called where parameters and gradients enter (the registry's param
groups, ``Optimizer.step``'s gradients) before the usual checks (dtype, byte order,
alignment, C-contiguity, writeable parameters, shapes) run on the view.

What is refused, with a message naming the argument:

- a tensor on a device other than the CPU (a CUDA tensor): the CPU loops can't read it;
- a tensor that requires grad (a leaf parameter of a torch model, or a non-leaf result):
  torch refuses to export those, because an in-place write behind autograd's back is not
  recorded.  ``torch.optim`` updates parameters under ``torch.no_grad()``; here pass
  ``p.detach()`` (same memory) or use :mod:`fusedoptim.torch`, whose optimizers read
  ``p.grad`` themselves;
- anything else that is not an array (a list of numbers is not copied behind your back).
"""
from __future__ import annotations

import sys

import numpy as np

__all__ = ["as_array", "as_arrays", "is_single_array"]

_CPU = 1           # DLPack device types: kDLCPU
_DEVICES = {2: "CUDA", 3: "CUDA host (pinned)", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm",
            13: "CUDA managed", 14: "oneAPI"}
_PASS = frozenset((np.ndarray, type(None)))


def _is_cupy(x) -> bool:
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def is_single_array(x) -> bool:
    """``x`` is one array (NumPy, CuPy, or a DLPack producer such as a torch tensor), not
    a list of them: iterating it would give its rows."""
    return isinstance(x, np.ndarray) or _is_cupy(x) or hasattr(x, "__dlpack__")


def as_array(x, what: str):
    """``x`` as an array the backends accept: a NumPy or CuPy array is returned as is;
    a CPU DLPack producer (a torch tensor) or a buffer-protocol object becomes a
    zero-copy NumPy view.  ``what`` names ``x`` in errors (``params[0] (group 0, index 0)``).
    Raises TypeError when ``x`` can't be viewed without a copy."""
    if isinstance(x, np.ndarray) or _is_cupy(x):
        return x
    name = type(x).__name__
    if hasattr(x, "__dlpack__"):
        if getattr(x, "requires_grad", False):
            raise TypeError(f"{what}: the {name} requires grad; autograd would not see an in-place update "
                            "behind its back (torch.optim updates under torch.no_grad()). Pass t.detach() (it "
                            "shares memory) or use fusedoptim.torch, whose optimizers read p.grad themselves")
        device = getattr(x, "__dlpack_device__", None)
        if device is not None:
            try:
                kind = device()[0]
            except Exception as e:      # torch's meta device, ...
                raise TypeError(f"{what}: the {name} has no DLPack device fusedoptim can read ({e})") from None
            if kind != _CPU:
                where = _DEVICES.get(int(kind), f"DLPack device type {int(kind)}")
                raise TypeError(f"{what}: the {name} lives on a {where} device; fusedoptim's CPU loops need host "
                                "memory (fusedoptim's GPU path takes CuPy arrays)")
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{what}: the {name} can't be viewed as a NumPy array without a copy ({e})") from None
    try:
        view = memoryview(x)
    except TypeError:
        raise TypeError(f"{what}: expected an array (numpy.ndarray, a CPU torch tensor, or any CPU array with "
                        f"DLPack or the buffer protocol), got {name}") from None
    try:
        return np.asarray(view)
    except (TypeError, ValueError) as e:      # a buffer format NumPy does not know
        raise TypeError(f"{what}: the {name}'s buffer can't be viewed as a NumPy array ({e})") from None


def as_arrays(xs: list, label) -> list:
    """``xs`` with every entry through :func:`as_array` (None kept); ``label(i)`` names
    entry i.  Returns ``xs`` itself when it holds only NumPy (or only CuPy) arrays and
    None, so the usual call costs one pass in C over the types."""
    types = set(map(type, xs))
    if _PASS.issuperset(types):
        return xs
    cp = sys.modules.get("cupy")        # CuPy arrays pass as they are too (one set test)
    if cp is not None and types <= (_PASS | {cp.ndarray}):
        return xs
    return [x if x is None else as_array(x, label(i)) for i, x in enumerate(xs)]
