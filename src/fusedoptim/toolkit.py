"""Helpers around the update: dynamic loss scaling and weight-decay groups."""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from .optimizer import Optimizer
from .validate import check_real, scalar_from

__all__ = ["DynamicLossScale", "split_decay_groups"]


class DynamicLossScale:
    """Dynamic loss scaling for reduced-precision training (torch's GradScaler, Keras'
    LossScaleOptimizer).

    Multiply the loss by :attr:`scale` before backprop, then call
    ``scaler.step(opt, grads)``: the gradients are unscaled inside the update kernel
    (``grad_scale = 1 / scale``, no extra pass) and the step is skipped, with params and
    state untouched, if any gradient is NaN or Inf.  The scale is multiplied by
    ``backoff_factor`` after a skipped step and by ``growth_factor`` after
    ``growth_interval`` consecutive good steps.

    With ``gradient_accumulation_steps = k``, call ``scaler.step`` for every micro-batch:
    each micro-batch's gradients are unscaled by the scale they were computed with as
    they are accumulated, the scale changes only when a step is applied or skipped (at
    the end of a cycle), and a NaN/Inf anywhere in the cycle skips the whole cycle.

    >>> scaler = DynamicLossScale()
    >>> # loss = scaler.scale * loss; grads = backprop(...)
    >>> # applied = scaler.step(opt, grads)
    """

    def __init__(self, initial_scale: float = 2.0 ** 15, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, min_scale: float = 1.0):
        check_real(initial_scale, "initial_scale", lo=0.0)
        if initial_scale <= 0:
            raise ValueError(f"initial_scale must be > 0, got {initial_scale=}")
        check_real(growth_factor, "growth_factor", lo=1.0)
        check_real(backoff_factor, "backoff_factor", lo=0.0, hi=1.0, hi_open=True)
        if backoff_factor <= 0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor=}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be an integer >= 1, got {growth_interval=}")
        check_real(min_scale, "min_scale", lo=0.0)
        self.scale = float(initial_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.min_scale = float(min_scale)
        self.good_steps = 0

    def scale_loss(self, loss):
        """``loss * scale``: backprop from this value."""
        return loss * self.scale

    def step(self, optimizer: Optimizer, grads, closure: Optional[Callable] = None) -> bool:
        """Unscale, check, and apply ``grads`` with ``optimizer``; update the scale.
        Returns True if the parameters were updated (``optimizer.last_step_applied``);
        False if the step was skipped (the scale backs off) or the gradients were only
        accumulated (the scale is unchanged)."""
        optimizer.step(grads, closure, grad_scale=1.0 / self.scale, skip_nonfinite=True)
        if optimizer.last_step_skipped:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.good_steps = 0
            return False
        if not optimizer.last_step_applied:
            return False
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            grown = self.scale * self.growth_factor
            if math.isfinite(grown):
                self.scale = grown
            self.good_steps = 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, sd: dict) -> None:
        scale = scalar_from(sd["scale"], "state_dict['scale']")
        if scale <= 0:
            raise ValueError(f"state_dict['scale'] must be > 0, got {scale}")
        good = scalar_from(sd["good_steps"], "state_dict['good_steps']", integer=True)
        self.scale, self.good_steps = scale, good


def split_decay_groups(named_params: Union[Dict[str, np.ndarray], Iterable[Tuple[str, np.ndarray]]],
                       weight_decay: float, no_decay: Optional[Callable[[str, np.ndarray], bool]] = None,
                       **group_options) -> List[dict]:
    """Two param groups: parameters that get ``weight_decay`` (and any ``l1`` in
    ``group_options``) and those excluded from it -- by default biases and other 1-D
    parameters (norm scales), the usual transformer/ResNet practice.

    The groups keep the names: each group's ``"params"`` is a dict ``{name: array}``, so
    the optimizer's parameters are named (``opt.step({name: grad})``, a state_dict keyed
    by name).  The flat order (what a list of gradients follows) is the decayed
    parameters first, then the others.

    >>> groups = split_decay_groups({"W": W, "b": b}, weight_decay=1e-2)
    >>> opt = AdamW(groups, lr=1e-3)
    >>> opt.step({"W": gW, "b": gb})
    """
    items = list(named_params.items()) if isinstance(named_params, dict) else list(named_params)
    if no_decay is None:
        def no_decay(name, p):
            return p.ndim <= 1
    decay = {n: p for n, p in items if not no_decay(n, p)}
    rest = {n: p for n, p in items if no_decay(n, p)}
    groups = []
    if decay:
        groups.append(dict(group_options, params=decay, weight_decay=weight_decay))
    if rest:
        g = dict(group_options, params=rest, weight_decay=0.0)
        if "l1" in g:
            g["l1"] = 0.0
        groups.append(g)
    return groups
