"""torch-style ``SequentialLR``: run one scheduler after another, switching at milestone
epochs."""
from __future__ import annotations

import copy
import numbers
from bisect import bisect_right

from ..validate import check_int
from .lr_scheduler import LRScheduler, check_optimizer
from .plateau import ReduceLROnPlateau

__all__ = ["SequentialLR"]


class SequentialLR(LRScheduler):
    r"""Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]`` (restarted
    at its epoch 0), and so on (torch ``SequentialLR``), e.g. a ``LinearLR`` warmup then
    ``CosineAnnealingLR``.  Build the sub-schedulers on the same optimizer first."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        w = "SequentialLR"
        check_optimizer(optimizer, w)
        schedulers = list(schedulers)
        if len(schedulers) < 1:
            raise ValueError(f"{w} expects at least one scheduler, but got no scheduler.")
        for i, s in enumerate(schedulers):
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError(f"{w} does not support `ReduceLROnPlateau` scheduler as it requires additional "
                                 f"kwargs to be specified when calling `step`, but got one at index {i} in the "
                                 "given schedulers sequence.")
            if not isinstance(s, LRScheduler):
                raise TypeError(f"{w}: schedulers[{i}] must be a fusedoptim LRScheduler, got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"{w} expects all schedulers to belong to the same optimizer, but got scheduler "
                                 f"{type(s).__name__} at index {i} with a different optimizer")
        milestones = [check_int(m, f"{w}: milestones[{i}]", lo=0, name=f"milestones[{i}]")
                      for i, m in enumerate(milestones)]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("Sequential Schedulers expects number of schedulers provided to be one more than the "
                             f"number of milestone points, but got number of schedulers {len(schedulers)} and the "
                             f"number of milestones to be equal to {len(milestones)}")
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"{w}: milestones must be strictly increasing, got {milestones=}")
        last_epoch = check_int(last_epoch, f"{w}: last_epoch", lo=-1, name="last_epoch")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"]
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self._recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def _recursive_undo(self, sched=None) -> None:
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self._recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self) -> None:
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def _state_keys(self):
        return ("base_lrs", "last_epoch", "_last_lr", "_milestones")

    def state_dict(self):
        sd = super().state_dict()
        sd["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return sd

    def _check_state_dict(self, state_dict):
        if not isinstance(state_dict, dict):
            raise TypeError(f"SequentialLR.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        subs = state_dict.get("_schedulers")
        if not isinstance(subs, (list, tuple)) or len(subs) != len(self._schedulers):
            raise ValueError(f"SequentialLR.load_state_dict: state_dict['_schedulers'] must list the states of "
                             f"{len(self._schedulers)} schedulers, got {subs!r}")
        base = {k: v for k, v in state_dict.items() if k != "_schedulers"}
        self._check_common(base, LRScheduler.state_dict(self))
        ms = base["_milestones"]
        if len(ms) != len(self._schedulers) - 1 or any(not isinstance(m, numbers.Integral) for m in ms):
            raise ValueError(f"SequentialLR.load_state_dict: _milestones must be {len(self._schedulers) - 1} "
                             f"integers, got {ms!r}")
        for s, sub in zip(self._schedulers, subs):
            s._check_state_dict(sub)

    def load_state_dict(self, state_dict):
        self._check_state_dict(state_dict)
        for k in self._state_keys():
            setattr(self, k, copy.deepcopy(state_dict[k]))
        for s, sub in zip(self._schedulers, state_dict["_schedulers"]):
            s.load_state_dict(sub)
