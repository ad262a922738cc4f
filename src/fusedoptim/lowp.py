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
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .validate import check_int

__all__ = ["STATE_DTYPES", "ROUNDINGS", "bfloat16", "is_bfloat16", "check_lowp_options", "state_dtype_of"]

#: the accepted values of ``state_dtype``
STATE_DTYPES = ("float32", "bfloat16")
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


def check_lowp_options(*, state_dtype, rounding, seed) -> dict:
    """Validate the storage options of an optimizer; return them normalised (``state_dtype``
    as its name).  Raises before anything is built."""
    name = state_dtype if isinstance(state_dtype, str) else (   # a dtype or a scalar type: its name
        getattr(state_dtype, "name", None) if isinstance(state_dtype, np.dtype) else getattr(state_dtype, "__name__", None))
    if name not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {STATE_DTYPES}, got state_dtype={state_dtype!r}")
    if name == "bfloat16":
        bfloat16()                          # ml_dtypes present, or a clear ImportError now
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got rounding={rounding!r}")
    check_int(seed, "seed", lo=0, name="seed")
    if int(seed) >= 1 << 64:
        raise ValueError(f"seed must be < 2**64, got seed={seed!r}")
    return dict(state_dtype=name, rounding=rounding, seed=int(seed))


def state_dtype_of(state_dtype: str, param_dtype) -> Optional[np.dtype]:
    """The dtype of a parameter's state buffers under ``state_dtype``, or None when it is
    the parameter's own (float32 and float64 parameters with ``"float32"`` state)."""
    if state_dtype == "bfloat16":
        return None if is_bfloat16(param_dtype) else bfloat16()
    if is_bfloat16(param_dtype):             # bfloat16 parameters keep float32 state
        return np.dtype(np.float32)
    return None
