r"""Learning-rate schedules, in the two styles users already know.

**Keras style** (``LearningRateSchedule``): a schedule is a pure function ``step -> lr``
passed as the optimizer's ``lr``; the optimizer calls it with ``opt.iterations`` (0 on the
first step) and uses the value for that step::

    opt = fusedoptim.Adam(params, lr=schedules.CosineDecay(1e-3, decay_steps=1000))

Every schedule validates its arguments when built (``ValueError(f"... {decay_steps=}")``),
is a pure function of the step (call it in any order, any number of times), and
round-trips through a plain JSON-able dict: ``from_config(s.get_config()) == s``.
Argument names and formulas are Keras 3's (``keras.optimizers.schedules``), evaluated in
double precision.

**torch style** (``LRScheduler``): a scheduler object owns the optimizer's numeric
``param_groups[i]["lr"]`` and rewrites it on every ``scheduler.step()``, with the values,
attributes (``base_lrs``, ``last_epoch``, ``get_last_lr()``) and ``state_dict`` of
``torch.optim.lr_scheduler``::

    opt = fusedoptim.SGD(params, lr=0.1, momentum=0.9)
    sched = schedules.StepLR(opt, step_size=30, gamma=0.1)
    for epoch in range(100):
        ...; opt.step(grads)
        sched.step()

Use one style or the other on a param group: a torch-style scheduler refuses a group
whose ``lr`` is a schedule.  Scheduler ``state_dict()``\ s are plain data (numbers,
strings, lists, dicts) so ``fusedoptim.checkpoint`` stores them without pickle.

Modules: ``base`` (``LearningRateSchedule``, its registry and configs), ``decay``
(Keras decay functions), ``one_cycle`` (the 1cycle policy in both styles),
``lr_scheduler`` (the ``LRScheduler`` base), ``schedulers`` (closed-form torch
schedulers), ``sequential`` (``SequentialLR``), ``plateau`` (``ReduceLROnPlateau``).
Import the names from ``fusedoptim.schedules``.
"""
from __future__ import annotations

from .base import LearningRateSchedule, from_config
from .decay import (Constant, CosineDecay, CosineDecayRestarts, ExponentialDecay, InverseTimeDecay, LinearWarmup,
                    PiecewiseConstantDecay, PolynomialDecay)
from .lr_scheduler import LRScheduler
from .one_cycle import OneCycle, OneCycleLR
from .plateau import ReduceLROnPlateau
from .schedulers import (ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, ExponentialLR, LambdaLR,
                         LinearLR, MultiStepLR, PolynomialLR, StepLR)
from .sequential import SequentialLR

__all__ = [
    # Keras style
    "LearningRateSchedule", "Constant", "ExponentialDecay", "PiecewiseConstantDecay",
    "PolynomialDecay", "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts",
    "LinearWarmup", "OneCycle", "from_config",
    # torch style
    "LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR",
    "ExponentialLR", "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
    "OneCycleLR", "SequentialLR", "ReduceLROnPlateau",
]
