"""The gradient pipeline: accumulate -> statistics -> clip / non-finite guard -> StepControl.

This module is the only clipping code in fusedoptim.  Two formulas exist, under
different names, because the two ecosystems differ:

==========================================  ==============================================
``c / max(norm, c)`` (Keras, optax)          the optimizers' ``global_clipnorm`` and
                                             ``clipnorm`` options, :func:`clip_by_global_norm`,
                                             ``fusedoptim.distributed``; a non-finite norm
                                             gives NaN (the step is poisoned, or skipped
                                             with ``skip_nonfinite``)
``min(1, c / (norm + 1e-6))`` (torch)        :func:`clip_grad_norm` =
                                             ``torch.nn.utils.clip_grad_norm_``
==========================================  ==============================================

Norms are computed natively in fixed blocks (the same bits for any thread count); on the
GPU they stay on the device and the update kernel reads the factors from a control block.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

from ._arrays import as_arrays, is_single_array
from ._backends import CPU
from .lowp import is_bfloat16
from .validate import check_bool, check_real

__all__ = ["StepControl", "GradientPipeline", "keras_clip_coef", "torch_clip_coef", "global_norm",
           "sum_of_squares", "clip_grad_norm", "clip_grad_value", "clip_by_global_norm", "scale_", "clip_decision",
           "check_options", "SKIP", "PENDING"]


# ------------------------------------------------------------------ the formulas
def keras_clip_coef(norm: float, clipnorm: float) -> float:
    """Keras' / optax's clip_by_norm factor ``c / max(norm, c)``; NaN for a non-finite norm."""
    return clipnorm / max(norm, clipnorm) if math.isfinite(norm) else math.nan


def torch_clip_coef(norm: float, max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor ``min(1, c / (norm + 1e-6))`` (NaN stays NaN)."""
    coef = max_norm / (norm + 1e-6)
    return min(coef, 1.0) if not math.isnan(coef) else coef


def clip_decision(norm: float, scale: float, global_clipnorm: Optional[float], guard: bool) -> Optional[float]:
    """The gradient multiplier of a step whose (scaled) global norm is ``norm``: ``scale``
    times the Keras clip factor when ``global_clipnorm`` is set; None when ``guard`` is on
    and the norm is not finite (skip the step)."""
    if guard and not math.isfinite(norm):
        return None
    if global_clipnorm is not None:
        scale *= keras_clip_coef(norm, global_clipnorm)
    return scale


# ----------------------------------------------------------- standalone functions
def _grads_list(grads, what: str = "grads") -> list:
    if is_single_array(grads):
        grads = [grads]
    grads = as_arrays([g for g in grads if g is not None], lambda i: f"{what}[{i}]")   # tensors -> views
    for i, g in enumerate(grads):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{what}[{i}]: expected a numpy.ndarray, got {type(g).__name__}")
        if g.dtype.type not in (np.float32, np.float64):
            raise TypeError(f"{what}[{i}]: dtype {g.dtype} is not supported; use float32 or float64")
        if not g.dtype.isnative:
            raise ValueError(f"{what}[{i}]: dtype {g.dtype.str} is not in this machine's byte order "
                             f"(a.astype(a.dtype.newbyteorder('=')) converts it)")
        if not g.flags.aligned:
            raise ValueError(f"{what}[{i}]: array is not aligned to its itemsize; "
                             "np.require(a, requirements='A') makes an aligned copy")
        if not g.flags.c_contiguous:
            raise ValueError(f"{what}[{i}]: array is not C-contiguous")
    return grads


def sum_of_squares(arrays: Sequence[Optional[np.ndarray]]) -> float:
    """Sum of squares of every element in float64 (non-finite if any element is), in fixed
    native blocks: the bits depend on the data and sizes only."""
    arrays = [a for a in arrays if a is not None and a.size]
    return float(CPU.grad_stats(arrays)[0]) if arrays else 0.0


def global_norm(grads: Sequence[Optional[np.ndarray]], norm_type: float = 2.0) -> float:
    """The norm of all gradients taken together (L2 by default; ``inf`` for max-abs;
    other p via NumPy in float64)."""
    gs = _grads_list(grads)
    norm_type = float(norm_type)
    if not gs:
        return 0.0
    if norm_type == 2.0:
        return math.sqrt(CPU.grad_stats(gs)[0])
    if math.isinf(norm_type) and norm_type > 0:
        return float(CPU.grad_stats(gs, want_max=True)[1])
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0, got {norm_type!r}")
    total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in gs)
    return total ** (1.0 / norm_type)


def scale_(arrays: Sequence[Optional[np.ndarray]], coef: float) -> None:
    """Multiply every array in place by ``coef`` (a no-op for 1.0)."""
    if coef == 1.0:
        return
    for a in arrays:
        if a is not None and a.size:
            np.multiply(a, a.dtype.type(coef), out=a)


def _writeable(gs: list, who: str) -> None:
    for i, g in enumerate(gs):
        if not g.flags.writeable:
            raise ValueError(f"grads[{i}]: array is read-only; {who} scales gradients in place")


def clip_grad_norm(grads: Sequence[Optional[np.ndarray]], max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> float:
    """Scale ``grads`` in place so their global norm is at most ``max_norm``; return the
    norm before clipping.  torch.nn.utils.clip_grad_norm_'s rule:
    ``g *= min(1, max_norm / (norm + 1e-6))`` (a NaN/Inf norm makes every gradient NaN
    unless ``error_if_nonfinite``).  The optimizers' ``global_clipnorm`` option and
    :func:`clip_by_global_norm` use Keras' ``c / max(norm, c)`` instead."""
    gs = _grads_list(grads)
    max_norm = float(max_norm)
    if math.isnan(max_norm) or max_norm < 0:
        raise ValueError(f"max_norm must be a number >= 0, got {max_norm!r}")
    _writeable(gs, "clip_grad_norm")
    norm = global_norm(gs, norm_type)
    if error_if_nonfinite and not math.isfinite(norm):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite ({norm}), "
                           "so it cannot be clipped")
    coef = torch_clip_coef(norm, max_norm)
    for g in gs:
        np.multiply(g, g.dtype.type(coef), out=g)
    return norm


def clip_by_global_norm(grads: Sequence[Optional[np.ndarray]], clipnorm: Optional[float]) -> float:
    """Return the global L2 norm of ``grads`` and, if ``clipnorm`` is given and the norm
    is finite, scale them in place by Keras' / optax's ``c / max(norm, c)`` (the factor
    of the ``global_clipnorm`` option)."""
    gs = _grads_list(grads)
    _writeable(gs, "clip_by_global_norm")
    norm = global_norm(gs)
    if clipnorm is not None and math.isfinite(norm):
        scale_(gs, keras_clip_coef(norm, clipnorm))
    return norm


def clip_grad_value(grads: Sequence[Optional[np.ndarray]], clip_value: float) -> None:
    """Clamp ``grads`` in place to ``[-clip_value, clip_value]`` (NaN stays NaN), like
    ``torch.nn.utils.clip_grad_value_``."""
    gs = _grads_list(grads)
    clip_value = float(clip_value)
    if math.isnan(clip_value) or clip_value < 0:
        raise ValueError(f"clip_value must be a number >= 0, got {clip_value!r}")
    for g in gs:
        np.clip(g, -clip_value, clip_value, out=g)


# ------------------------------------------------------------- the pipeline
class StepControl:
    """What the update kernels need from the pipeline for one step.

    ``grads`` the gradients to apply when they are not the caller's (accumulation), else None;
    ``gscale`` multiplies every group's gradient scale (``grad_scale`` / accumulation
    mean, times the global clip factor on the CPU); ``clip_value`` the kernel's clamp
    (inf: none); ``tscale`` per-parameter factors (``clipnorm``) or None; ``control`` a
    device control block (CUDA) or None; ``norm`` the global norm when it was computed
    on the host."""

    __slots__ = ("grads", "gscale", "clip_value", "tscale", "control", "norm", "plain")

    def __init__(self, grads=None, gscale=1.0, clip_value=math.inf, tscale=None, control=None, norm=None):
        self.grads, self.gscale, self.clip_value = grads, gscale, clip_value
        self.tscale, self.control, self.norm = tscale, control, norm
        # True when the common block is used as it is (no scale, no clip value, no control)
        self.plain = gscale == 1.0 and clip_value == math.inf and control is None


SKIP = "skip"          # process(): a non-finite gradient under skip_nonfinite
PENDING = "pending"    # process(): gradients accumulated, no step this call


class GradientPipeline:
    """Accumulation, statistics, clipping and the non-finite guard of one optimizer,
    configured by its read-only ``options``."""

    def __init__(self, options):
        self.options = options
        o = options
        self.accum_steps = o["gradient_accumulation_steps"]
        self.acc: Dict[int, object] = {}       # param index -> accumulator of this cycle
        self._pool: Dict[int, object] = {}     # reused accumulator arrays
        self.acc_count = 0
        self.idle = (o["global_clipnorm"] is None and o["clipnorm"] is None and o["clipvalue"] is None
                     and not o["skip_nonfinite"] and self.accum_steps == 1)

    def process(self, grads: list, grad_scale: float, skip_nonfinite: Optional[bool], backend):
        """A :class:`StepControl`, or :data:`PENDING` (accumulating) or :data:`SKIP`."""
        acc = None
        if self.accum_steps > 1:
            # each call's gradients enter the sum scaled by that call's grad_scale (a loss
            # scale may change between micro-batches); the mean over k is the step's scale
            grads = acc = self._accumulate(grads, grad_scale, backend)
            if grads is None:
                return PENDING
            grad_scale = 1.0 / self.accum_steps
        o = self.options
        guard = o["skip_nonfinite"] if skip_nonfinite is None else bool(skip_nonfinite)
        gc, pc, cv = o["global_clipnorm"], o["clipnorm"], o["clipvalue"]
        clip = math.inf if cv is None else (cv / grad_scale if grad_scale > 0 else math.inf)
        if gc is None and pc is None and not guard:
            return StepControl(acc, grad_scale, clip)
        if backend.device_control:
            ctrl, tscale, _ = backend.grad_control(grads, grad_scale=grad_scale, global_clipnorm=gc,
                                                   clipnorm=pc, skip_nonfinite=guard)
            if guard and backend.skip_requested(ctrl):
                return SKIP
            return StepControl(acc, grad_scale, clip, tscale, ctrl)
        sumsq, _, per = backend.grad_stats(grads, per_tensor=pc is not None)
        finite = math.isfinite(sumsq) or all(g is None or bool(np.isfinite(g).all()) for g in grads)
        norm = math.sqrt(sumsq) * grad_scale if finite else math.nan
        scale = clip_decision(norm, grad_scale, gc, guard)
        if scale is None:
            return SKIP
        tscale = None
        if pc is not None:
            tscale = [1.0 if g is None else keras_clip_coef(math.sqrt(ss) * grad_scale, pc)
                      for g, ss in zip(grads, per)]
        return StepControl(acc, scale, clip, tscale, norm=norm)

    def _accumulate(self, grads: list, grad_scale: float, backend) -> Optional[list]:
        """Add this call's gradients times ``grad_scale`` into the accumulators (one native
        pass); return the accumulated sums on every k-th call, else None.  A parameter's
        first gradient of the cycle is copied in (with a scale: added to zeros), later ones
        added; a parameter that got no gradient in the whole cycle gets None (is skipped)."""
        if self.acc_count == 0:
            self.acc = {}
        acc, pool = self.acc, self._pool
        fresh, adds, into = [], [], []
        for i, gr in enumerate(grads):
            if gr is None:
                continue
            a = acc.get(i)
            if a is None:
                a = pool.get(i)
                want = np.float32 if is_bfloat16(gr.dtype) else gr.dtype   # bfloat16 adds up in float32
                if a is None or a.shape != gr.shape or a.dtype != want:
                    a = pool[i] = backend.zeros_like(gr) if want is gr.dtype else np.zeros(gr.shape, want)
                acc[i] = a
                fresh.append((a, gr))
            else:
                into.append(a)
                adds.append(gr)
        for a, gr in fresh:
            if grad_scale == 1.0:
                a[...] = gr
            else:                      # 0 + s * g in the same pass as the others
                a[...] = 0
                into.append(a)
                adds.append(gr)
        if into:
            backend.accumulate(into, adds, grad_scale)
        self.acc_count += 1
        if self.acc_count < self.accum_steps:
            return None
        self.acc_count = 0
        return [acc.get(i) for i in range(len(grads))]

    # ------------------------------------------------------ state_dict support
    def snapshot(self, to_host) -> Dict[int, np.ndarray]:
        """The accumulators of the cycle in progress (host copies), by param index."""
        return {i: to_host(a) for i, a in self.acc.items()} if self.acc_count else {}

    def check_count(self, accum_count: int) -> None:
        if accum_count >= self.accum_steps and accum_count:
            raise ValueError(f"state_dict['accum_count'] = {accum_count} is not below this optimizer's "
                             f"gradient_accumulation_steps = {self.accum_steps}")

    def restore(self, accum_count: int, accs: Dict[int, object]) -> None:
        self.acc_count = accum_count
        self.acc = accs if accum_count else {}
        self._pool.update(self.acc)


def check_options(*, global_clipnorm, clipnorm, clipvalue, ema_decay,
                  skip_nonfinite, gradient_accumulation_steps) -> dict:
    """Validate the pipeline and EMA options of an optimizer; return them normalised."""
    for name, v in (("global_clipnorm", global_clipnorm), ("clipnorm", clipnorm), ("clipvalue", clipvalue)):
        if v is not None:
            check_real(v, name, lo=0.0, lo_open=True, name=name)
    if global_clipnorm is not None and clipnorm is not None:
        raise ValueError("pass either clipnorm (per parameter) or global_clipnorm, not both")
    if ema_decay is not None:
        check_real(ema_decay, "ema_decay", lo=0.0, hi=1.0, hi_open=True, name="ema_decay")
    check_bool(skip_nonfinite, "skip_nonfinite")
    k = gradient_accumulation_steps
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"gradient_accumulation_steps must be an integer >= 1, got {k!r}")
    f = lambda v: None if v is None else float(v)  # noqa: E731
    return dict(global_clipnorm=f(global_clipnorm), clipnorm=f(clipnorm), clipvalue=f(clipvalue),
                ema_decay=f(ema_decay), skip_nonfinite=bool(skip_nonfinite), gradient_accumulation_steps=int(k))

