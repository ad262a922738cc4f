"""The numeric validators of fusedoptim, in one place.

Every hyperparameter, schedule argument, checkpoint scalar and option is checked by these
functions before any array is touched, so errors read alike everywhere:

- ``check_real(x, "param group 0: lr", lo=0.0)`` ->
  ``ValueError: Invalid param group 0: lr: -0.1 (must be >= 0.0)`` (a label, torch style);
- ``check_real(x, "ExponentialDecay: decay_steps", lo=0, lo_open=True, name="decay_steps")``
  -> ``ValueError: ExponentialDecay: decay_steps must be > 0, got decay_steps=0`` (a
  keyword argument, optax style: ``name`` is shown with the value).

Custom optimizers use them in :meth:`fusedoptim.Optimizer.check_group`::

    from fusedoptim.validate import check_betas, check_real

    def check_group(self, group, where):
        super().check_group(group, where)
        check_betas(group["betas"], where)
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

__all__ = ["check_hyperparameters", "is_real", "py_scalar", "check_real", "check_int", "check_bool",
           "check_step", "check_betas", "check_pair", "scalar_from", "positive_or_none"]


def is_real(x) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def py_scalar(x):
    """A NumPy scalar as the equal Python number (keeps configs and state JSON-able); any
    other value unchanged."""
    if is_real(x) and not isinstance(x, (int, float)) and hasattr(x, "item"):
        return x.item()
    return x


def check_real(x, what: str, *, lo: Optional[float] = None, lo_open: bool = False, hi: Optional[float] = None,
               hi_open: bool = False, name: Optional[str] = None):
    """Raise unless ``x`` is a finite real number in the range; return it as a Python number.

    ``what`` labels the value in the message; with ``name`` (a keyword argument's name) the
    message shows ``name=x``."""
    shown = repr(x) if name is None else f"{name}={x!r}"
    if not is_real(x):
        raise TypeError(f"{what} must be a real number, got {shown}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {shown}")
    for bound, is_open, below in ((lo, lo_open, True), (hi, hi_open, False)):
        if bound is None:
            continue
        bad = (v <= bound if is_open else v < bound) if below else (v >= bound if is_open else v > bound)
        if bad:
            op = (">" if is_open else ">=") if below else ("<" if is_open else "<=")
            if name is None:
                raise ValueError(f"Invalid {what}: {x!r} (must be {op} {bound})")
            raise ValueError(f"{what} must be {op} {bound:g}, got {shown}")
    return py_scalar(x)


def check_int(x, what: str, *, lo: Optional[int] = None, name: Optional[str] = None) -> int:
    """Raise unless ``x`` is an integer (Python or NumPy, not a bool) >= ``lo``."""
    shown = repr(x) if name is None else f"{name}={x!r}"
    if not isinstance(x, numbers.Integral) or isinstance(x, bool):
        raise TypeError(f"{what} must be an integer, got {shown}")
    v = int(x)
    if lo is not None and v < lo:
        raise ValueError(f"{what} must be >= {lo}, got {repr(v) if name is None else f'{name}={v!r}'}")
    return v


def check_bool(x, what: str, *, name: Optional[str] = None) -> bool:
    """Raise unless ``x`` is a bool (Python or NumPy)."""
    if not isinstance(x, bool) and type(x).__name__ != "bool_":
        shown = repr(x) if name is None else f"{name}={x!r}"
        raise TypeError(f"{what} must be a bool, got {shown}")
    return bool(x)


def check_cpu_float_param(p, j: int, where: str, who: str, kernel: str, precision: str = "") -> None:
    """``params[j]`` of an optimizer whose stage runs on the CPU outside the element-wise
    kernels (Muon's Newton-Schulz, Adafactor's factored statistics): a NumPy float32 or
    float64 array.  ``kernel`` says what runs there, ``precision`` (optional) why the dtype."""
    import numpy as np
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{where}: {who} runs on NumPy arrays ({kernel}), params[{j}] is a {type(p).__name__}")
    if p.dtype not in (np.float32, np.float64):
        raise TypeError(f"{where}: {who} runs on float32 or float64 parameters{precision}, params[{j}] is {p.dtype}")


def check_step(step, what: str = "schedule step") -> float:
    """Raise unless ``step`` is a finite real number >= 0 (a Python or NumPy number, or a
    0-d array); return it as a float.  The argument of every schedule."""
    if not is_real(step):
        if getattr(step, "shape", None) == () and hasattr(step, "item"):
            step = step.item()
        if not is_real(step):
            raise TypeError(f"{what} must be a real number, got {step!r}")
    s = float(step)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {step!r}")
    return s


def check_pair(x, what: str, meaning: str, where: str) -> tuple:
    """Raise unless ``x`` is a pair (tuple or list of two), e.g. ``etas`` = ``(etaminus,
    etaplus)``; its entries are checked by the caller."""
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise ValueError(f"{where}: {what} must be a pair {meaning}, got {x!r}")
    for i, v in enumerate(x):
        if not is_real(v):
            raise TypeError(f"{where}: {what} value at index {i} must be a real number, got {v!r}")
    return tuple(x)


def check_betas(betas, where: str, n: int = 2) -> None:
    """torch's beta checks: ``n`` numbers in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != n:
        raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, v in enumerate(betas):
        if not is_real(v):
            raise TypeError(f"{where}: beta parameter at index {i} must be a real number, got {v!r}")
        if not 0.0 <= float(v) < 1.0:
            raise ValueError(f"{where}: Invalid beta parameter at index {i}: {v!r} (must be in [0, 1))")


def scalar_from(v, what: str, integer: bool = False):
    """A finite scalar read back from a state_dict or a checkpoint (a number, a NumPy
    scalar, a one-element array); ``integer`` also requires a non-negative integer value."""
    try:
        if hasattr(v, "size") and hasattr(v, "reshape") and not is_real(v):
            if v.size != 1:
                raise ValueError(f"{what} must be a scalar, got an array of shape {v.shape}")
            v = v.reshape(()).item()
        elif hasattr(v, "item") and not isinstance(v, (int, float)):
            v = v.item()
        if not is_real(v) or not math.isfinite(float(v)):
            raise ValueError(f"{what} must be a finite number, got {v!r}")
        if integer:
            if float(v) != int(v) or v < 0:
                raise ValueError(f"{what} must be a non-negative integer, got {v!r}")
            return int(v)
        return float(v)
    except OverflowError:
        text = str(v)
        raise ValueError(f"{what} is out of range: {text[:24] + '...' if len(text) > 24 else text}") from None


def positive_or_none(v, what: str) -> Optional[float]:
    """None, or a positive finite number (clip norms)."""
    if v is None:
        return None
    check_real(v, what, lo=0.0, lo_open=True, name=what)
    return float(v)


# hyperparameters that must be finite and >= 0 wherever they appear, with their label
_NONNEG_HYPER = {"eps": "epsilon value", "weight_decay": "weight_decay value", "momentum": "momentum value",
                 "lr_decay": "lr_decay value", "initial_accumulator_value": "initial_accumulator_value value",
                 "momentum_decay": "momentum_decay value", "alpha": "alpha value", "l1": "l1 value",
                 "eps_root": "eps_root value", "initial_scale": "initial_scale value"}
_FLAGS = ("maximize", "amsgrad", "nesterov", "centered", "decoupled_weight_decay",
          "eps_in_sqrt", "bias_correction", "amsgrad_bias_corrected", "eps_before_bias_correction",
          "lr_in_momentum", "eps_after_max", "eps_after_bias_correction", "optax_diff_weight", "plain_trust_ratio")
# hyperparameters for which None means "off" (NAdam's momentum_decay=None: optax's constant mu)
_NONE_OK = ("momentum_decay",)


def check_hyperparameters(g: dict, where: str) -> None:
    """The checks every optimizer shares (``Optimizer.check_group``): ``lr`` (a number
    >= 0 or a schedule), the non-negative ones (eps, weight_decay, momentum, ...),
    ``betas`` and the boolean flags, for whichever of them the group has."""
    if "lr" in g and not callable(g["lr"]):       # lr=None is refused here, not by the kernel's scalars
        check_real(g["lr"], f"{where}: lr", lo=0.0)
    for k, label in _NONNEG_HYPER.items():
        if k in g and not (g[k] is None and k in _NONE_OK):
            check_real(g[k], f"{where}: {label}", lo=0.0)
    if "betas" in g:
        check_betas(g["betas"], where)
    for flag in _FLAGS:
        if flag in g:
            check_bool(g[flag], f"{where}: {flag}")
