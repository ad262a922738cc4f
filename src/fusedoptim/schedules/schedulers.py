r"""torch-style schedulers with a closed form: ``lr`` as a function of the epoch and the
base lr (torch's ``LambdaLR``, ``StepLR``, ``MultiStepLR``, ``ConstantLR``, ``LinearLR``,
``ExponentialLR``, ``PolynomialLR``, ``CosineAnnealingLR``,
``CosineAnnealingWarmRestarts``).

Each updates the lr with torch's recursive formula in ``get_lr()`` (so the floating-point
values match torch's) and, where torch has one, gives the closed form in
``_get_closed_form_lr()`` (used by ``SequentialLR`` at its milestones).
"""
from __future__ import annotations

import copy
import math
import types
from bisect import bisect_right
from typing import Callable, List

from ..validate import check_int, check_real, py_scalar
from .base import LearningRateSchedule
from .lr_scheduler import LRScheduler, check_optimizer

__all__ = ["LambdaLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
           "CosineAnnealingLR", "CosineAnnealingWarmRestarts"]


class LambdaLR(LRScheduler):
    r"""``lr = base_lr * lr_lambda(epoch)`` (torch ``LambdaLR``); ``lr_lambda`` is a
    function of the epoch, or a list with one per param group.

    ``state_dict`` holds, per lambda, ``None`` for functions and pure schedules and a
    copy of ``__dict__`` for other callable objects, as torch does.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        who = "LambdaLR"
        n = len(check_optimizer(optimizer, who))
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"{who}: Expected {n} lr_lambdas, but got {len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, f in enumerate(lambdas):
            if not callable(f):
                raise TypeError(f"{who}: lr_lambda[{i}] must be callable, got {f!r}")
        self.lr_lambdas: List[Callable[[int], float]] = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * lmbda(self.last_epoch) for lmbda, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        sd = super().state_dict()
        sd["lr_lambdas"] = [None if isinstance(f, (types.FunctionType, types.MethodType, LearningRateSchedule))
                            else dict(f.__dict__) for f in self.lr_lambdas]
        return sd

    def _check_state_dict(self, state_dict):
        if isinstance(state_dict, dict):
            lam = state_dict.get("lr_lambdas")
            if not isinstance(lam, (list, tuple)) or len(lam) != len(self.lr_lambdas):
                raise ValueError(f"LambdaLR.load_state_dict: state_dict['lr_lambdas'] must be a list with one entry "
                                 f"per param group ({len(self.lr_lambdas)}), got {lam!r}")
            for i, d in enumerate(lam):
                if d is not None and not isinstance(d, dict):
                    raise TypeError(f"LambdaLR.load_state_dict: state_dict['lr_lambdas'][{i}] must be None or a "
                                    f"dict, got {d!r}")
            state_dict = {k: v for k, v in state_dict.items() if k != "lr_lambdas"}
        self._check_common(state_dict, LRScheduler.state_dict(self))

    def load_state_dict(self, state_dict):
        self._check_state_dict(state_dict)
        for k in self._state_keys():
            setattr(self, k, copy.deepcopy(state_dict[k]))
        for f, d in zip(self.lr_lambdas, state_dict["lr_lambdas"]):
            if d is not None:
                f.__dict__.update(copy.deepcopy(d))


class StepLR(LRScheduler):
    r"""Multiply the lr by ``gamma`` every ``step_size`` epochs (torch ``StepLR``):
    :math:`\gamma_e = \gamma_0 \cdot \text{gamma}^{\lfloor e / \text{step\_size} \rfloor}`."""

    _hparams = ("step_size", "gamma")

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self._check_hparams(dict(step_size=step_size, gamma=gamma))
        self.step_size = int(step_size)
        self.gamma = py_scalar(gamma)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        check_int(h["step_size"], "StepLR: step_size", lo=1, name="step_size")
        check_real(h["gamma"], "StepLR: gamma", lo=0.0, name="gamma")

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [g["lr"] * self.gamma for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    r"""Multiply the lr by ``gamma`` at each milestone epoch (torch ``MultiStepLR``); a
    milestone listed k times multiplies by ``gamma**k``."""

    _hparams = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        milestones = list(milestones)
        self._check_hparams(dict(milestones=milestones, gamma=gamma))
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = py_scalar(gamma)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        for i, m in enumerate(h["milestones"]):
            check_int(m, f"MultiStepLR: milestones[{i}]", lo=0, name=f"milestones[{i}]")
        check_real(h["gamma"], "MultiStepLR: gamma", lo=0.0, name="gamma")

    def get_lr(self):
        k = self.milestones.count(self.last_epoch)
        if k == 0:
            return self._current_lrs()
        return [g["lr"] * self.gamma ** k for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base_lr in self.base_lrs]


class ConstantLR(LRScheduler):
    r"""Multiply the lr by ``factor`` until epoch ``total_iters`` (torch ``ConstantLR``)."""

    _hparams = ("factor", "total_iters")

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1):
        self._check_hparams(dict(factor=factor, total_iters=total_iters))
        self.factor = py_scalar(factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        check_real(h["factor"], "ConstantLR: factor", lo=0.0, lo_open=True, hi=1.0, name="factor")
        check_int(h["total_iters"], "ConstantLR: total_iters", lo=0, name="total_iters")

    def get_lr(self):
        if self.last_epoch == 0:
            return [g["lr"] * self.factor for g in self.optimizer.param_groups]
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return [g["lr"] * (1.0 / self.factor) for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
                for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    r"""Scale the lr by a factor going linearly from ``start_factor`` to ``end_factor``
    over ``total_iters`` epochs (torch ``LinearLR``; the usual warmup)."""

    _hparams = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1):
        self._check_hparams(dict(start_factor=start_factor, end_factor=end_factor, total_iters=total_iters))
        self.start_factor = py_scalar(start_factor)
        self.end_factor = py_scalar(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        check_real(h["start_factor"], "LinearLR: start_factor", lo=0.0, lo_open=True, hi=1.0, name="start_factor")
        check_real(h["end_factor"], "LinearLR: end_factor", lo=0.0, hi=1.0, name="end_factor")
        check_int(h["total_iters"], "LinearLR: total_iters", lo=1, name="total_iters")

    def get_lr(self):
        if self.last_epoch == 0:
            return [g["lr"] * self.start_factor for g in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        return [g["lr"] * (1.0 + (self.end_factor - self.start_factor)
                           / (self.total_iters * self.start_factor
                              + (self.last_epoch - 1) * (self.end_factor - self.start_factor)))
                for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    r"""Multiply the lr by ``gamma`` every epoch (torch ``ExponentialLR``)."""

    _hparams = ("gamma",)

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self._check_hparams(dict(gamma=gamma))
        self.gamma = py_scalar(gamma)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        check_real(h["gamma"], "ExponentialLR: gamma", lo=0.0, name="gamma")

    def get_lr(self):
        if self._is_initial:
            return self._current_lrs()
        return [g["lr"] * self.gamma for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class PolynomialLR(LRScheduler):
    r"""Polynomial decay to zero over ``total_iters`` epochs (torch ``PolynomialLR``):
    :math:`\gamma_e = \gamma_0 (1 - \min(e, N) / N)^{\text{power}}`."""

    _hparams = ("total_iters", "power")

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1):
        self._check_hparams(dict(total_iters=total_iters, power=power))
        self.total_iters = int(total_iters)
        self.power = py_scalar(power)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        check_int(h["total_iters"], "PolynomialLR: total_iters", lo=1, name="total_iters")
        check_real(h["power"], "PolynomialLR: power", lo=0.0, name="power")

    def get_lr(self):
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        decay_factor = ((1.0 - self.last_epoch / self.total_iters)
                        / (1.0 - (self.last_epoch - 1) / self.total_iters)) ** self.power
        return [g["lr"] * decay_factor for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters) ** self.power
                for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the initial lr to ``eta_min`` over ``T_max`` epochs (torch
    ``CosineAnnealingLR``, same recursive update, so the same floating-point values):
    :math:`\eta_e = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})(1 + \cos(\pi e / T_{max}))`."""

    _hparams = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self._check_hparams(dict(T_max=T_max, eta_min=eta_min))
        self.T_max = int(T_max)
        self.eta_min = py_scalar(eta_min)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        check_int(h["T_max"], "CosineAnnealingLR: T_max", lo=1, name="T_max")
        check_real(h["eta_min"], "CosineAnnealingLR: eta_min", lo=0.0, name="eta_min")

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base_lr in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [g["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, g in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (g["lr"] - self.eta_min) + self.eta_min
                for g in groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""SGDR: cosine annealing restarted every :math:`T_i` epochs, :math:`T_0 = ` ``T_0``,
    :math:`T_{i+1} = T_i \cdot` ``T_mult`` (torch ``CosineAnnealingWarmRestarts``).
    ``step(epoch)`` accepts a fractional epoch (``epoch + i / iters_per_epoch``)."""

    _hparams = ("T_0", "T_i", "T_mult", "eta_min", "T_cur")

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1):
        self._check_hparams(dict(T_0=T_0, T_i=T_0, T_mult=T_mult, eta_min=eta_min, T_cur=last_epoch))
        self.T_0 = int(T_0)
        self.T_i = int(T_0)
        self.T_mult = int(T_mult)
        self.eta_min = py_scalar(eta_min)
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        w = "CosineAnnealingWarmRestarts"
        check_int(h["T_0"], f"{w}: T_0", lo=1, name="T_0")
        check_int(h["T_mult"], f"{w}: T_mult", lo=1, name="T_mult")
        check_real(h["eta_min"], f"{w}: eta_min", lo=0.0, name="eta_min")
        check_real(h["T_i"], f"{w}: T_i", lo=0.0, lo_open=True, name="T_i")
        check_real(h["T_cur"], f"{w}: T_cur", lo=-1.0, name="T_cur")

    def get_lr(self):
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base_lr in self.base_lrs]

    def step(self, epoch=None) -> None:
        """Advance one epoch, or jump to ``epoch`` (may be fractional)."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            epoch = check_real(epoch, "CosineAnnealingWarmRestarts.step: epoch", lo=0.0, name="epoch")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** n
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        values = self.get_lr()
        for g, lr in zip(self.optimizer.param_groups, values):
            g["lr"] = lr
        self._last_lr = self._current_lrs()
