r"""The 1cycle policy (Smith & Topin, "Super-Convergence", 2017) in both styles: the
Keras-style pure function :class:`OneCycle` and the torch-style :class:`OneCycleLR`
(which also cycles the momentum).  Both use the phases of torch's ``OneCycleLR``.
"""
from __future__ import annotations

import math

from ..validate import check_bool, check_int, check_real, check_step, is_real
from .base import LearningRateSchedule
from .lr_scheduler import LRScheduler, check_optimizer, per_group

__all__ = ["OneCycle", "OneCycleLR"]


def _one_cycle_phases(who, max_lr, total_steps, pct_start, div_factor, final_div_factor, three_phase):
    """torch.optim.lr_scheduler.OneCycleLR's phases: [(end_step, start_lr, end_lr)]."""
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    if three_phase:
        phases = [(float(pct_start * total_steps) - 1, initial_lr, max_lr),
                  (float(2 * pct_start * total_steps) - 2, max_lr, initial_lr),
                  (total_steps - 1, initial_lr, min_lr)]
    else:
        phases = [(float(pct_start * total_steps) - 1, initial_lr, max_lr),
                  (total_steps - 1, max_lr, min_lr)]
    start = 0.0
    for k, (end, _, _) in enumerate(phases):
        if end == start and (k == 0 or k == len(phases) - 1):
            raise ValueError(f"{who}: {pct_start=} with {total_steps=} gives phase {k} of the cycle zero length "
                             "(torch's OneCycleLR would divide by zero); change pct_start or total_steps")
        start = end
    return phases


def _anneal(strategy: str, start: float, end: float, pct: float) -> float:
    if strategy == "cos":
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out
    return (end - start) * pct + start


class OneCycle(LearningRateSchedule):
    r"""The 1cycle policy as a pure function of the step: the lr values of
    ``torch.optim.lr_scheduler.OneCycleLR`` (without momentum cycling).

    Symbols: :math:`\gamma_{max}` = ``max_lr``, :math:`N` = ``total_steps``, :math:`p` =
    ``pct_start``; :math:`\gamma_{init} = \gamma_{max} / \text{div\_factor}`,
    :math:`\gamma_{min} = \gamma_{init} / \text{final\_div\_factor}`.  The lr anneals
    (``'cos'`` or ``'linear'``) from :math:`\gamma_{init}` to :math:`\gamma_{max}` over
    steps :math:`[0, pN - 1]`, then to :math:`\gamma_{min}` at step :math:`N - 1` (with
    ``three_phase``: back to :math:`\gamma_{init}` at :math:`2pN - 2`, then to
    :math:`\gamma_{min}`).  After the cycle (step >= N - 1) the lr stays at the last value.

    .. math::

        \text{cos}(a, b, x) = b + \tfrac{a - b}{2}(1 + \cos \pi x), \quad
        \text{linear}(a, b, x) = (b - a) x + a

    References: Smith & Topin, "Super-Convergence", 2017.

    >>> s = OneCycle(0.1, total_steps=100)
    >>> round(s(0), 12), s(29), s(99)
    (0.004, 0.1, 4e-07)
    """

    _fields = ("max_lr", "total_steps", "pct_start", "anneal_strategy", "div_factor", "final_div_factor",
               "three_phase")

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos", div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, *, name=None):
        w = "OneCycle"
        self.max_lr = check_real(max_lr, f"{w}: max_lr", lo=0.0, name="max_lr")
        self.total_steps = check_int(total_steps, f"{w}: total_steps", lo=1, name="total_steps")
        self.pct_start = check_real(pct_start, f"{w}: pct_start", lo=0.0, hi=1.0, name="pct_start")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{w}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy=}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = check_real(div_factor, f"{w}: div_factor", lo=0.0, lo_open=True, name="div_factor")
        self.final_div_factor = check_real(final_div_factor, f"{w}: final_div_factor", lo=0.0, lo_open=True,
                                           name="final_div_factor")
        self.three_phase = check_bool(three_phase, f"{w}: three_phase", name="three_phase")
        self.name = name
        self._phases = _one_cycle_phases(w, self.max_lr, self.total_steps, self.pct_start, self.div_factor,
                                         self.final_div_factor, self.three_phase)

    def __call__(self, step) -> float:
        s = min(check_step(step), float(self.total_steps - 1))
        start_step = 0.0
        for i, (end_step, a, b) in enumerate(self._phases):
            if s <= end_step or i == len(self._phases) - 1:
                return _anneal(self.anneal_strategy, a, b, (s - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (torch ``OneCycleLR``): lr from ``max_lr / div_factor`` up to
    ``max_lr`` and down to ``max_lr / div_factor / final_div_factor`` over
    ``total_steps`` steps (or ``epochs * steps_per_epoch``); with ``cycle_momentum``
    the momentum (or beta1) moves inversely between ``max_momentum`` and
    ``base_momentum``.  Writes ``initial_lr``, ``max_lr``, ``min_lr`` (and
    ``max_momentum``, ``base_momentum``) into each param group, as torch does.  For the
    lr alone as a pure function of the step, see ``OneCycle``."""

    _hparams = ("total_steps", "_schedule_phases", "_anneal_func_type", "cycle_momentum", "use_beta1")

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, last_epoch=-1):
        w = "OneCycleLR"
        groups = check_optimizer(optimizer, w)
        if total_steps is not None:
            total_steps = check_int(total_steps, f"{w}: total_steps", lo=1, name="total_steps")
        elif epochs is not None and steps_per_epoch is not None:
            total_steps = (check_int(epochs, f"{w}: epochs", lo=1, name="epochs")
                           * check_int(steps_per_epoch, f"{w}: steps_per_epoch", lo=1, name="steps_per_epoch"))
        else:
            raise ValueError(f"{w}: You must define either total_steps OR (epochs AND steps_per_epoch)")
        pct_start = check_real(pct_start, f"{w}: pct_start", lo=0.0, hi=1.0, name="pct_start")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{w}: anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy!r}")
        div_factor = check_real(div_factor, f"{w}: div_factor", lo=0.0, lo_open=True, name="div_factor")
        final_div_factor = check_real(final_div_factor, f"{w}: final_div_factor", lo=0.0, lo_open=True,
                                      name="final_div_factor")
        three_phase = check_bool(three_phase, f"{w}: three_phase", name="three_phase")
        cycle_momentum = check_bool(cycle_momentum, f"{w}: cycle_momentum", name="cycle_momentum")
        n = len(groups)
        max_lrs = [check_real(v, f"{w}: max_lr", lo=0.0, name="max_lr") for v in per_group(w, "max_lr", max_lr, n)]
        for m in max_lrs:  # same phase check as OneCycle (a zero-length phase divides by zero)
            _one_cycle_phases(w, m, total_steps, pct_start, div_factor, final_div_factor, three_phase)
        defaults = getattr(optimizer, "defaults", {})
        if cycle_momentum:
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError(f"{w}: optimizer must support momentum or beta1 with `cycle_momentum` option "
                                 "enabled; pass cycle_momentum=False")
            max_moms = [check_real(v, f"{w}: max_momentum", lo=0.0, name="max_momentum")
                        for v in per_group(w, "max_momentum", max_momentum, n)]
            base_moms = [check_real(v, f"{w}: base_momentum", lo=0.0, name="base_momentum")
                         for v in per_group(w, "base_momentum", base_momentum, n)]
        self.total_steps = total_steps
        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct_start * total_steps) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * total_steps) - 2, "start_lr": "max_lr", "end_lr": "initial_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": total_steps - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self._schedule_phases = [
                {"end_step": float(pct_start * total_steps) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": total_steps - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]
        self._anneal_func_type = anneal_strategy
        if last_epoch == -1:
            for m, g in zip(max_lrs, groups):
                g["initial_lr"] = m / div_factor
                g["max_lr"] = m
                g["min_lr"] = g["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        self.use_beta1 = "betas" in defaults
        if cycle_momentum and last_epoch == -1:
            for mm, bm, g in zip(max_moms, base_moms, groups):
                if self.use_beta1:
                    g["betas"] = (mm, *g["betas"][1:])
                else:
                    g["momentum"] = mm
                g["max_momentum"] = mm
                g["base_momentum"] = bm
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        w = "OneCycleLR"
        check_int(h["total_steps"], f"{w}: total_steps", lo=1, name="total_steps")
        if h["_anneal_func_type"] not in ("cos", "linear"):
            raise ValueError(f"{w}: unknown anneal strategy {h['_anneal_func_type']!r}")
        ph = h["_schedule_phases"]
        if not isinstance(ph, (list, tuple)) or not ph:
            raise ValueError(f"{w}: _schedule_phases must be a non-empty list, got {ph!r}")
        keys = {"end_step", "start_lr", "end_lr", "start_momentum", "end_momentum"}
        for i, p in enumerate(ph):
            if not isinstance(p, dict) or set(p) != keys or not is_real(p["end_step"]):
                raise ValueError(f"{w}: _schedule_phases[{i}] must be a dict with keys {sorted(keys)}, got {p!r}")
        check_bool(h["cycle_momentum"], f"{w}: cycle_momentum", name="cycle_momentum")
        check_bool(h["use_beta1"], f"{w}: use_beta1", name="use_beta1")

    def get_lr(self):
        lrs = []
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(f"OneCycleLR: Tried to step {step_num} times. The specified number of total steps is "
                             f"{self.total_steps}")
        for g in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step_num <= end_step or i == len(self._schedule_phases) - 1:
                    pct = (step_num - start_step) / (end_step - start_step)
                    computed_lr = _anneal(self._anneal_func_type, g[phase["start_lr"]], g[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        computed_momentum = _anneal(self._anneal_func_type, g[phase["start_momentum"]],
                                                    g[phase["end_momentum"]], pct)
                    break
                start_step = phase["end_step"]
            lrs.append(computed_lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    g["betas"] = (computed_momentum, *g["betas"][1:])
                else:
                    g["momentum"] = computed_momentum
        return lrs
