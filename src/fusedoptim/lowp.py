"""Low-precision storage: the ``state_dtype``, ``rounding`` and ``seed`` options.

Storage is not arithmetic.  With ``state_dtype="bfloat16"`` every state buffer of a
built-in optimizer (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...) is a real
``ml_dtypes.bfloat16`` NumPy array, half the bytes of float32; the native loop widens each
element to float32, runs the same rule as for float32 state, and rounds the result back
on the write (``csrc/fusedoptim/lowp.h``).  Rounding is stochastic by default
(``rounding="stochastic"``: up with probability equal to the distance from the lower
neighbour, so the rounding is unbiased and small updates are not lost), or to nearest
even (``rounding="nearest"``).  The random bits are a counter-based hash of (``seed``,
the step, the parameter's index in the optimizer, the element's index in the parameter,
the buffer): results are identical for any thread count, and a run resumed from a
checkpoint continues bit for bit.

``bfloat16`` needs the ``ml_dtypes`` package (``pip install fusedoptim[lowp]``) and
float32 parameters; float64 parameters keep float64 state.

``state_dtype="int8"`` is block-wise dynamic 8-bit state (Dettmers et al. 2022, as
bitsandbytes): each state buffer ``name`` of a parameter with at least ``min_8bit_size``
elements (4096) becomes ``state[name]``, uint8 codes of the parameter's shape, and
``state[name + "_absmax"]``, one float32 absmax per block of ``block_size`` elements (256;
a power of two from 64 to 4096), blocks counted from element 0.  The value of element i
is ``code_map(signed)[codes[i]] * absmax[i // block_size]``: buffers that can be negative
(``exp_avg``, momenta) use the signed map, non-negative ones (``exp_avg_sq``, sums of
squares) the unsigned one (:func:`signed_buffers`).  Smaller parameters keep float32
state.  The kernel dequantizes a block, runs the float32 rule, and requantizes it in the
same pass; rounding is to the nearest code by default (``rounding="nearest"``), or
stochastic between the two neighbouring codes.  No ``ml_dtypes`` needed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .validate import check_int

__all__ = ["STATE_DTYPES", "ROUNDINGS", "bfloat16", "is_bfloat16", "check_lowp_options", "state_dtype_of",
           "code_map", "quantize", "dequantize", "signed_buffers", "absmax_key", "ABSMAX_SUFFIX"]

#: the accepted values of ``state_dtype``
STATE_DTYPES = ("float32", "bfloat16", "int8")
#: ``state[name + ABSMAX_SUFFIX]`` holds the block absmax of the 8-bit buffer ``state[name]``
ABSMAX_SUFFIX = "_absmax"
#: the accepted values of ``rounding``
ROUNDINGS = ("stochastic", "nearest")


def bfloat16() -> np.dtype:
    """``ml_dtypes.bfloat16`` as a NumPy dtype (ImportError with the fix when missing)."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("bfloat16 storage needs the ml_dtypes package, which provides NumPy's bfloat16 "
                          "dtype: pip install ml_dtypes (or pip install 'fusedoptim[lowp]')") from None
    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype) -> bool:
    """True for ml_dtypes' bfloat16 (without importing ml_dtypes)."""
    return getattr(dtype, "name", None) == "bfloat16"


def absmax_key(name: str) -> str:
    """The state key of the block absmax of the 8-bit buffer ``name``."""
    return name + ABSMAX_SUFFIX


def code_map(signed: bool) -> np.ndarray:
    """The 256 float32 values an 8-bit code stands for (times its block's absmax): the
    signed map (code 127 is 0, no -1) or the unsigned one (code 0 is 0)."""
    from . import _kernels
    return _kernels.q8_code_map(bool(signed))


def quantize(x, signed: bool, block_size: int = 256):
    """``(codes, absmax)`` of float32 values ``x`` in blocks of ``block_size`` (nearest code)."""
    from . import _kernels
    return _kernels.q8_quantize(x, bool(signed), block_size)


def dequantize(codes, absmax, signed: bool, block_size: int = 256) -> np.ndarray:
    """The float32 values of 8-bit ``(codes, absmax)``."""
    from . import _kernels
    return _kernels.q8_dequantize(codes, absmax, bool(signed), block_size)


def signed_buffers(optimizer) -> tuple:
    """The state buffers of a built-in optimizer that use the signed code map (declared
    ``FO_SIGNED`` next to the buffer names in ``csrc/fusedoptim/rules.h``)."""
    from . import _kernels
    spec = getattr(optimizer, "spec", None)
    if spec is None:        # a built-in stage without a spec (Muon) declares them itself
        return tuple(getattr(optimizer, "q8_signed", ()))
    return _kernels.q8_signed_buffers(spec.id)


def check_lowp_options(*, state_dtype, rounding, seed, block_size=256, min_8bit_size=4096) -> dict:
    """Validate the storage options of an optimizer; return them normalised (``state_dtype``
    as its name; ``rounding=None``: ``"nearest"`` for int8, else ``"stochastic"``).  Raises
    before anything is built."""
    name = state_dtype if isinstance(state_dtype, str) else (   # a dtype or a scalar type: its name
        getattr(state_dtype, "name", None) if isinstance(state_dtype, np.dtype) else getattr(state_dtype, "__name__", None))
    if name not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {STATE_DTYPES}, got state_dtype={state_dtype!r}")
    if name == "bfloat16":
        bfloat16()                          # ml_dtypes present, or a clear ImportError now
    if rounding is None:
        rounding = "nearest" if name == "int8" else "stochastic"
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got rounding={rounding!r}")
    check_int(seed, "seed", lo=0, name="seed")
    if int(seed) >= 1 << 64:
        raise ValueError(f"seed must be < 2**64, got seed={seed!r}")
    from . import _kernels
    block_size = _kernels.q8_check_block(block_size)
    min_8bit_size = check_int(min_8bit_size, "min_8bit_size", lo=0, name="min_8bit_size")
    return dict(state_dtype=name, rounding=rounding, seed=int(seed), block_size=block_size,
                min_8bit_size=min_8bit_size)


def state_dtype_of(state_dtype: str, param_dtype, quantized: bool = False) -> Optional[np.dtype]:
    """The dtype of a parameter's state buffers under ``state_dtype``, or None when it is
    the parameter's own (float32 and float64 parameters with ``"float32"`` state).
    ``quantized``: the parameter's 8-bit buffers (uint8 codes) under ``"int8"``."""
    if state_dtype == "int8":
        if quantized:
            return np.dtype(np.uint8)
        return np.dtype(np.float32) if is_bfloat16(param_dtype) else None
    if state_dtype == "bfloat16":
        return None if is_bfloat16(param_dtype) else bfloat16()
    if is_bfloat16(param_dtype):             # bfloat16 parameters keep float32 state
        return np.dtype(np.float32)
    return None
