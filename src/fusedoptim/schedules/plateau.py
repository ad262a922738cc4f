"""torch-style ``ReduceLROnPlateau``: lower the lr when a metric stops improving."""
from __future__ import annotations

import math

from ..validate import check_int, check_real, is_real, py_scalar
from .lr_scheduler import LRScheduler, check_optimizer, per_group

__all__ = ["ReduceLROnPlateau"]


class ReduceLROnPlateau(LRScheduler):
    r"""Multiply the lr by ``factor`` when a metric stops improving for ``patience``
    epochs (torch ``ReduceLROnPlateau``); feed the metric with ``step(metric)``.

    Improvement is ``a < best * (1 - threshold)`` (mode ``'min'``, threshold_mode
    ``'rel'``), ``a < best - threshold`` (``'abs'``), and the mirror images for
    ``'max'``.  After a reduction, ``cooldown`` epochs pass before bad epochs count
    again; the lr never goes below ``min_lr`` (a number or one per group), and a
    reduction smaller than ``eps`` is skipped.  Unlike the other schedulers it does not
    set ``initial_lr`` (as torch); ``base_lrs`` records the lrs at construction.
    """

    _hparams = ("factor", "min_lrs", "default_min_lr", "patience", "cooldown", "eps", "mode", "threshold",
                "threshold_mode", "mode_worse", "best", "cooldown_counter", "num_bad_epochs")
    _group_lists = ("base_lrs", "_last_lr", "min_lrs")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        w = "ReduceLROnPlateau"
        groups = check_optimizer(optimizer, w)
        if isinstance(min_lr, (list, tuple)):
            min_lrs = per_group(w, "min_lr", min_lr, len(groups))
            default_min_lr = None
        else:
            min_lrs = [min_lr] * len(groups)
            default_min_lr = min_lr
        mode_worse = math.inf if mode == "min" else -math.inf
        self._check_hparams(dict(factor=factor, min_lrs=min_lrs, default_min_lr=default_min_lr, patience=patience,
                                 cooldown=cooldown, eps=eps, mode=mode, threshold=threshold,
                                 threshold_mode=threshold_mode, mode_worse=mode_worse, best=mode_worse,
                                 cooldown_counter=0, num_bad_epochs=0))
        self.optimizer = optimizer
        self.factor = py_scalar(factor)
        self.min_lrs = [py_scalar(m) for m in min_lrs]
        self.default_min_lr = py_scalar(default_min_lr)
        self.patience = int(patience)
        self.cooldown = int(cooldown)
        self.eps = py_scalar(eps)
        self.last_epoch = 0
        self.base_lrs = self._current_lrs()
        self._last_lr = self._current_lrs()
        self.mode, self.threshold, self.threshold_mode = mode, py_scalar(threshold), threshold_mode
        self.mode_worse = mode_worse
        self._reset()

    def _state_keys(self):
        return ("base_lrs", "last_epoch", "_last_lr") + self._hparams

    def _check_hparams(self, h):
        w = "ReduceLROnPlateau"
        if h["mode"] not in ("min", "max"):
            raise ValueError(f"{w}: mode must be 'min' or 'max', got mode={h['mode']!r}")
        if h["threshold_mode"] not in ("rel", "abs"):
            raise ValueError(f"{w}: threshold_mode must be 'rel' or 'abs', got threshold_mode={h['threshold_mode']!r}")
        check_real(h["factor"], f"{w}: factor", lo=0.0, hi=1.0, hi_open=True, name="factor")
        for i, m in enumerate(h["min_lrs"]):
            label = f"min_lr[{i}]" if h["default_min_lr"] is None else "min_lr"
            check_real(m, f"{w}: {label}", lo=0.0, name=label)
        if h["default_min_lr"] is not None:
            check_real(h["default_min_lr"], f"{w}: min_lr", lo=0.0, name="min_lr")
        check_int(h["patience"], f"{w}: patience", lo=0, name="patience")
        check_int(h["cooldown"], f"{w}: cooldown", lo=0, name="cooldown")
        check_real(h["eps"], f"{w}: eps", lo=0.0, name="eps")
        check_real(h["threshold"], f"{w}: threshold", lo=0.0, name="threshold")
        check_int(h["cooldown_counter"], f"{w}: cooldown_counter", lo=0, name="cooldown_counter")
        check_int(h["num_bad_epochs"], f"{w}: num_bad_epochs", lo=0, name="num_bad_epochs")
        for k in ("best", "mode_worse"):
            if not is_real(h[k]):
                raise TypeError(f"{w}: {k} must be a real number, got {h[k]!r}")

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a, best) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics) -> None:  # type: ignore[override]
        """Record this epoch's ``metrics`` (a number) and reduce the lr if it plateaued."""
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau: the optimizer has {len(groups)} param groups, min_lr was "
                                   f"given for {len(self.min_lrs)}; set the `min_lrs` attribute to match")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, g in enumerate(groups):
            old_lr = float(g["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                g["lr"] = new_lr
