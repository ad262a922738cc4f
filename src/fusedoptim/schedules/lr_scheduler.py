"""The torch-style scheduler base: :class:`LRScheduler` (``torch.optim.lr_scheduler``'s
stepping, attributes and ``state_dict``) and the checks its subclasses share.

A scheduler owns its optimizer's numeric ``param_groups[i]["lr"]`` and rewrites it on
every ``step()``.  Its ``state_dict()`` is plain data (numbers, strings, lists, dicts), so
``fusedoptim.checkpoint`` stores it without pickle; ``load_state_dict`` validates all of
it before changing anything.

For subclasses: :func:`check_optimizer` (the optimizer's param groups, each with a number
as ``lr``) and :func:`per_group` (one value, or a list with one per group).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

from ..validate import check_int, is_real

__all__ = ["LRScheduler", "check_optimizer", "per_group"]


def check_optimizer(optimizer, who: str) -> list:
    """``optimizer.param_groups``; raise unless it is a list of dicts whose ``lr`` is a
    number (not a schedule).  ``who`` (the scheduler's name) starts every message."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(f"{who}: {type(optimizer).__name__} is not an optimizer (needs a param_groups list of dicts)")
    for i, g in enumerate(groups):
        lr = g.get("lr")
        if callable(lr):
            raise TypeError(f"{who}: param group {i} has a schedule as lr ({lr!r}); a torch-style scheduler "
                            "writes a number into group['lr'] at every step, so build the optimizer with a "
                            "number lr, or use the schedule alone")
        if not is_real(lr):
            raise TypeError(f"{who}: param group {i}: lr must be a real number, got {lr!r}")
    return groups


def per_group(who: str, name: str, value, n: int) -> list:
    """``value`` for each of ``n`` param groups: a list or tuple of exactly ``n`` values,
    or one value repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{who}: {name} must have the same length as optimizer.param_groups. "
                             f"{name} has {len(value)} values, param_groups has {n}.")
        return list(value)
    return [value] * n


def _plain(v, where: str):
    """Check that a state_dict value is plain data (numbers, strings, None, lists, dicts)."""
    if v is None or isinstance(v, (str, bool)) or is_real(v):
        return
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _plain(x, f"{where}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _plain(x, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} must be plain data (numbers, strings, lists, dicts), got {type(v).__name__}")


def _like(v, cur, where: str) -> None:
    """A loaded state value must have the kind of the current one."""
    if isinstance(cur, bool):
        ok = isinstance(v, bool)
    elif cur is None or is_real(cur):
        ok = v is None or is_real(v)
    elif isinstance(cur, str):
        ok = isinstance(v, str)
    elif isinstance(cur, (list, tuple)):
        ok = isinstance(v, (list, tuple))
    elif isinstance(cur, dict):
        ok = isinstance(v, dict)
    else:  # pragma: no cover - every state value is one of the above
        ok = True
    if not ok:
        raise TypeError(f"{where} must be like {cur!r} ({type(cur).__name__}), got {v!r}")
    _plain(v, where)


class LRScheduler:
    """Base class of the torch-style schedulers (``torch.optim.lr_scheduler.LRScheduler``).

    Construction sets ``initial_lr`` in every param group (``setdefault``, as torch),
    records ``base_lrs`` and performs the initial step, which sets each group's ``lr``
    to the schedule's value at epoch 0.  Call ``step()`` after ``optimizer.step``.

    Subclass API: ``get_lr()`` (recursive form, reads ``group["lr"]``), optionally
    ``_get_closed_form_lr()`` (used by ``SequentialLR`` at its milestones),
    ``_hparams`` (attribute names saved in ``state_dict`` besides the common ones) and
    ``_check_hparams(h)`` (validation shared by ``__init__`` and ``load_state_dict``).
    """

    _hparams: Tuple[str, ...] = ()
    _group_lists: Tuple[str, ...] = ("base_lrs", "_last_lr")
    _is_initial = False

    def __init__(self, optimizer, last_epoch: int = -1):
        who = type(self).__name__
        groups = check_optimizer(optimizer, who)
        last_epoch = check_int(last_epoch, f"{who}: last_epoch", lo=-1, name="last_epoch")
        if last_epoch == -1:
            for g in groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] when resuming a "
                                   f"scheduler with {last_epoch=}; load the optimizer's state first")
        self.optimizer = optimizer
        self.base_lrs: List[float] = [g["initial_lr"] for g in groups]
        self.last_epoch = last_epoch
        self._initial_step()

    # --------------------------------------------------------------- stepping
    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> List[float]:
        raise NotImplementedError

    def get_last_lr(self) -> List[float]:
        """The learning rates set by the last ``step`` (one per param group)."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one epoch (or batch) and write the new lr into every param group."""
        self._step_count += 1
        self._update_lr()

    def _current_lrs(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _update_lr(self, epoch: Optional[int] = None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            closed = getattr(self, "_get_closed_form_lr", None)
            values = closed() if closed is not None else self.get_lr()
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise ValueError(f"{type(self).__name__}: the optimizer has {len(groups)} param groups, the scheduler "
                             f"was built for {len(values)}; build a new scheduler after add_param_group")
        for g, lr in zip(groups, values):
            g["lr"] = lr
        self._last_lr = self._current_lrs()

    # ------------------------------------------------------------- state dict
    def _state_keys(self) -> Tuple[str, ...]:
        return ("base_lrs", "last_epoch", "_step_count", "_last_lr") + tuple(self._hparams)

    def state_dict(self) -> Dict[str, Any]:
        """The scheduler's state as plain data (JSON-able apart from infinite floats)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in self._state_keys()}

    _IGNORED = frozenset({"_is_initial", "_get_lr_called_within_step", "verbose"})  # torch-only keys

    def _check_state_dict(self, state_dict: dict) -> None:
        """Raise if ``state_dict`` can't be loaded into this scheduler; changes nothing."""
        self._check_common(state_dict, LRScheduler.state_dict(self))

    def _check_common(self, state_dict, current: dict) -> None:
        who = type(self).__name__
        if not isinstance(state_dict, dict):
            raise TypeError(f"{who}.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        missing = sorted(set(current) - set(state_dict))
        unknown = sorted(set(state_dict) - set(current) - self._IGNORED)
        if missing or unknown:
            raise ValueError(f"{who}.load_state_dict: state_dict does not match this scheduler "
                             f"(missing keys {missing}, unexpected keys {unknown}); is it from another scheduler?")
        n = len(self.optimizer.param_groups)
        for k, cur in current.items():
            v = state_dict[k]
            _like(v, cur, f"{who}.load_state_dict: state_dict[{k!r}]")
            if k in self._group_lists:
                if len(v) != n:
                    raise ValueError(f"{who}.load_state_dict: state_dict[{k!r}] has {len(v)} entries, the "
                                     f"optimizer has {n} param groups")
                for i, x in enumerate(v):
                    if not is_real(x):
                        raise TypeError(f"{who}.load_state_dict: state_dict[{k!r}][{i}] must be a real number, "
                                        f"got {x!r}")
        for k, lo in (("last_epoch", None), ("_step_count", 0)):  # (nested SequentialLRs undo twice: -2)
            if k in current:
                check_int(state_dict[k], f"{who}.load_state_dict: state_dict[{k!r}]", lo=lo, name=f"state_dict[{k!r}]")
        self._check_hparams({k: state_dict[k] for k in self._hparams})

    def _check_hparams(self, h: dict) -> None:
        """Validate this scheduler's settings (constructor arguments and saved state)."""

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict from ``state_dict``; validates everything before changing anything."""
        self._check_state_dict(state_dict)
        for k in self._state_keys():
            setattr(self, k, copy.deepcopy(state_dict[k]))

    def __repr__(self):
        h = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hparams if not k.startswith("_"))
        return f"{type(self).__name__}({h}{', ' if h else ''}last_epoch={self.last_epoch})"
