r"""Keras-style decay functions: pure ``step -> lr`` schedules with Keras 3's argument
names and formulas (``keras.optimizers.schedules``), evaluated in double precision.

Each validates its arguments when built and round-trips through ``get_config()`` /
``from_config`` (see :mod:`fusedoptim.schedules.base`).
"""
from __future__ import annotations

import math

from ..validate import check_bool, check_real, check_step
from .base import LearningRateSchedule

__all__ = ["Constant", "ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay", "InverseTimeDecay",
           "CosineDecay", "CosineDecayRestarts", "LinearWarmup"]


class Constant(LearningRateSchedule):
    r"""The constant schedule: :math:`\gamma_t = \gamma` (``value``).

    >>> Constant(0.1)(123)
    0.1
    """

    _fields = ("value",)

    def __init__(self, value, *, name=None):
        self.value = check_real(value, "Constant: value", lo=0.0, name="value")
        self.name = name

    def __call__(self, step) -> float:
        check_step(step)
        return float(self.value)


class _StepDecay(LearningRateSchedule):
    """Arguments and progress ``p = t / decay_steps`` (floored if ``staircase``) shared by
    ExponentialDecay and InverseTimeDecay."""

    _fields = ("initial_learning_rate", "decay_steps", "decay_rate", "staircase")

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, *, name=None):
        w = type(self).__name__
        self.initial_learning_rate = check_real(initial_learning_rate, f"{w}: initial_learning_rate", lo=0.0,
                                                name="initial_learning_rate")
        self.decay_steps = check_real(decay_steps, f"{w}: decay_steps", lo=0.0, lo_open=True, name="decay_steps")
        self.decay_rate = check_real(decay_rate, f"{w}: decay_rate", lo=0.0, name="decay_rate")
        self.staircase = check_bool(staircase, f"{w}: staircase", name="staircase")
        self.name = name

    def _progress(self, step) -> float:
        p = check_step(step) / float(self.decay_steps)
        return math.floor(p) if self.staircase else p


class ExponentialDecay(_StepDecay):
    r"""Exponential decay (Keras ``ExponentialDecay``).

    Symbols: :math:`\gamma_0` = ``initial_learning_rate``, :math:`r` = ``decay_rate``,
    :math:`T` = ``decay_steps``; :math:`\lfloor\cdot\rfloor` applies when ``staircase``.

    .. math::

        p &\leftarrow t / T \quad (\lfloor t / T \rfloor \text{ if staircase}) \\
        \gamma_t &\leftarrow \gamma_0 \, r^{p}

    >>> ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)(20)
    0.025
    """

    def __call__(self, step) -> float:
        p = self._progress(step)
        return float(self.initial_learning_rate) * float(self.decay_rate) ** p


class PiecewiseConstantDecay(LearningRateSchedule):
    r"""Piecewise constant (Keras ``PiecewiseConstantDecay``): ``values[0]`` while
    ``step <= boundaries[0]``, ``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``,
    ``values[-1]`` once ``step > boundaries[-1]``.

    >>> s = PiecewiseConstantDecay([100, 200], [1e-2, 1e-3, 1e-4])
    >>> s(100), s(101), s(201)
    (0.01, 0.001, 0.0001)
    """

    _fields = ("boundaries", "values")

    def __init__(self, boundaries, values, *, name=None):
        w = "PiecewiseConstantDecay"
        if not isinstance(boundaries, (list, tuple)) or not isinstance(values, (list, tuple)):
            raise TypeError(f"{w}: boundaries and values must be lists, got {boundaries=}, {values=}")
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"{w}: values needs one more entry than boundaries, got "
                             f"{len(boundaries)} boundaries and {len(values)} values ({boundaries=}, {values=})")
        b = [check_real(x, f"{w}: boundaries[{i}]", name=f"boundaries[{i}]") for i, x in enumerate(boundaries)]
        for i in range(1, len(b)):
            if not b[i] > b[i - 1]:
                raise ValueError(f"{w}: boundaries must be strictly increasing, got {boundaries=}")
        self.boundaries = b
        self.values = [check_real(x, f"{w}: values[{i}]", lo=0.0, name=f"values[{i}]") for i, x in enumerate(values)]
        self.name = name

    def __call__(self, step) -> float:
        s = check_step(step)
        for b, v in zip(self.boundaries, self.values):
            if s <= b:
                return float(v)
        return float(self.values[-1])


class PolynomialDecay(LearningRateSchedule):
    r"""Polynomial decay to ``end_learning_rate`` (Keras ``PolynomialDecay``).

    Symbols: :math:`\gamma_0` = ``initial_learning_rate``, :math:`\gamma_e` =
    ``end_learning_rate``, :math:`T` = ``decay_steps``, :math:`k` = ``power``.

    .. math::

        T' &\leftarrow T \lceil t / T \rceil \text{ if cycle (} T \text{ at } t = 0\text{)},
            \quad t \leftarrow \min(t, T) \text{ otherwise} \\
        \gamma_t &\leftarrow (\gamma_0 - \gamma_e)(1 - t / T')^{k} + \gamma_e

    >>> PolynomialDecay(0.1, decay_steps=100, end_learning_rate=0.0)(50)
    0.05
    """

    _fields = ("initial_learning_rate", "decay_steps", "end_learning_rate", "power", "cycle")

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
                 cycle=False, *, name=None):
        w = "PolynomialDecay"
        self.initial_learning_rate = check_real(initial_learning_rate, f"{w}: initial_learning_rate", lo=0.0,
                                                name="initial_learning_rate")
        self.decay_steps = check_real(decay_steps, f"{w}: decay_steps", lo=0.0, lo_open=True, name="decay_steps")
        self.end_learning_rate = check_real(end_learning_rate, f"{w}: end_learning_rate", lo=0.0,
                                            name="end_learning_rate")
        self.power = check_real(power, f"{w}: power", lo=0.0, name="power")
        self.cycle = check_bool(cycle, f"{w}: cycle", name="cycle")
        self.name = name

    def __call__(self, step) -> float:
        s = check_step(step)
        d = float(self.decay_steps)
        if self.cycle:
            d = d * (1.0 if s == 0 else math.ceil(s / d))
        else:
            s = min(s, d)
        p = s / d
        lr0, end = float(self.initial_learning_rate), float(self.end_learning_rate)
        return (lr0 - end) * (1 - p) ** float(self.power) + end


class InverseTimeDecay(_StepDecay):
    r"""Inverse time decay (Keras ``InverseTimeDecay``).

    Symbols: :math:`\gamma_0` = ``initial_learning_rate``, :math:`r` = ``decay_rate``,
    :math:`T` = ``decay_steps``.

    .. math::

        p &\leftarrow t / T \quad (\lfloor t / T \rfloor \text{ if staircase}) \\
        \gamma_t &\leftarrow \gamma_0 / (1 + r p)

    >>> InverseTimeDecay(0.1, decay_steps=1, decay_rate=0.5)(2)
    0.05
    """

    def __call__(self, step) -> float:
        p = self._progress(step)
        return float(self.initial_learning_rate) / (1.0 + float(self.decay_rate) * p)


def _cosine_decayed(t: float, decay_steps: float, alpha: float, lr: float) -> float:
    completed_fraction = t / decay_steps
    cosine_decayed = 0.5 * (1.0 + math.cos(math.pi * completed_fraction))
    decayed = (1 - alpha) * cosine_decayed + alpha
    return lr * decayed


class CosineDecay(LearningRateSchedule):
    r"""Cosine decay with optional linear warmup (Keras 3 ``CosineDecay``).

    Symbols: :math:`\gamma_0` = ``initial_learning_rate``, :math:`\hat\gamma` =
    ``warmup_target``, :math:`W` = ``warmup_steps``, :math:`T` = ``decay_steps``,
    :math:`\alpha` = ``alpha`` (final lr as a fraction of the peak).  Without
    ``warmup_target`` the peak is :math:`\gamma_0` and :math:`W = 0`.

    .. math::

        t &\leftarrow \min(t, T + W) \\
        \gamma_t &\leftarrow (\hat\gamma - \gamma_0)\, t / W + \gamma_0
            \quad \text{if } t < W \\
        \gamma_t &\leftarrow \hat\gamma \left((1 - \alpha)\tfrac12
            \left(1 + \cos\tfrac{\pi (t - W)}{T}\right) + \alpha\right) \quad \text{otherwise}

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", 2017; Goyal et al., "Accurate, Large Minibatch SGD", 2017.

    >>> s = CosineDecay(0.0, decay_steps=100, warmup_target=0.1, warmup_steps=10)
    >>> s(5), s(10), s(110)
    (0.05, 0.1, 0.0)
    """

    _fields = ("initial_learning_rate", "decay_steps", "alpha", "warmup_target", "warmup_steps")

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0,
                 *, name=None):
        w = "CosineDecay"
        self.initial_learning_rate = check_real(initial_learning_rate, f"{w}: initial_learning_rate", lo=0.0,
                                                name="initial_learning_rate")
        self.decay_steps = check_real(decay_steps, f"{w}: decay_steps", lo=0.0, lo_open=True, name="decay_steps")
        self.alpha = check_real(alpha, f"{w}: alpha", lo=0.0, hi=1.0, name="alpha")
        self.warmup_target = (None if warmup_target is None else
                              check_real(warmup_target, f"{w}: warmup_target", lo=0.0, name="warmup_target"))
        self.warmup_steps = check_real(warmup_steps, f"{w}: warmup_steps", lo=0.0, name="warmup_steps")
        if self.warmup_target is None and self.warmup_steps > 0:
            raise ValueError(f"{w}: warmup_steps has no effect without warmup_target (the lr reached at the end "
                             f"of the warmup), got {warmup_steps=} and {warmup_target=}")
        self.name = name

    def __call__(self, step) -> float:
        s = check_step(step)
        d = float(self.decay_steps)
        lr0, alpha = float(self.initial_learning_rate), float(self.alpha)
        if self.warmup_target is None:
            return _cosine_decayed(min(s, d), d, alpha, lr0)
        target, ws = float(self.warmup_target), float(self.warmup_steps)
        s = min(s, d + ws)
        if s < ws:
            return (target - lr0) * (s / ws) + lr0
        return _cosine_decayed(s - ws, d, alpha, target)


class CosineDecayRestarts(LearningRateSchedule):
    r"""Cosine decay with warm restarts, SGDR (Keras ``CosineDecayRestarts``).

    Symbols: :math:`\gamma_0` = ``initial_learning_rate``, :math:`T_0` =
    ``first_decay_steps``, :math:`t_m` = ``t_mul`` (period growth), :math:`m` = ``m_mul``
    (peak decay per restart), :math:`\alpha` = ``alpha``.  Period :math:`i` lasts
    :math:`T_0 t_m^i` steps.

    .. math::

        f &\leftarrow t / T_0 \\
        i &\leftarrow \lfloor f \rfloor, \; f \leftarrow f - i \quad \text{if } t_m = 1 \\
        i &\leftarrow \lfloor \log_{t_m}(1 - f (1 - t_m)) \rfloor, \;
            f \leftarrow \left(f - \tfrac{1 - t_m^i}{1 - t_m}\right) / t_m^i \quad \text{otherwise} \\
        \gamma_t &\leftarrow \gamma_0 \left((1 - \alpha)\tfrac12 m^i (1 + \cos \pi f) + \alpha\right)

    The restart index :math:`i` is corrected for rounding (Keras' closed form puts, e.g.,
    step 1210 of ``first_decay_steps=10, t_mul=3`` at the end of period 4 instead of the
    start of period 5), so a restart happens exactly at its step.

    >>> s = CosineDecayRestarts(0.1, first_decay_steps=10)
    >>> s(0), s(10), s(30)
    (0.1, 0.1, 0.1)
    """

    _fields = ("initial_learning_rate", "first_decay_steps", "t_mul", "m_mul", "alpha")

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0, *, name=None):
        w = "CosineDecayRestarts"
        self.initial_learning_rate = check_real(initial_learning_rate, f"{w}: initial_learning_rate", lo=0.0,
                                                name="initial_learning_rate")
        self.first_decay_steps = check_real(first_decay_steps, f"{w}: first_decay_steps", lo=0.0, lo_open=True,
                                            name="first_decay_steps")
        self.t_mul = check_real(t_mul, f"{w}: t_mul", lo=1.0, name="t_mul")
        self.m_mul = check_real(m_mul, f"{w}: m_mul", lo=0.0, name="m_mul")
        self.alpha = check_real(alpha, f"{w}: alpha", lo=0.0, hi=1.0, name="alpha")
        self.name = name

    def __call__(self, step) -> float:
        f = check_step(step) / float(self.first_decay_steps)
        t_mul, m_mul, alpha = float(self.t_mul), float(self.m_mul), float(self.alpha)
        if t_mul == 1.0:
            i = math.floor(f)
            f -= i
        else:
            def start(k):  # start of period k, in units of first_decay_steps
                return (1.0 - t_mul ** k) / (1.0 - t_mul)
            i = math.floor(math.log(1.0 - f * (1.0 - t_mul)) / math.log(t_mul))
            # the log (and start(i) itself, for t_mul like 1.1) round: snap to the restart
            # a step lands on within 1e-12, so the restart happens exactly at its step
            tol = 1e-12 * max(1.0, f)
            while start(i + 1) <= f + tol:
                i += 1
            while i > 0 and start(i) > f + tol:
                i -= 1
            f = max(0.0, (f - start(i)) / t_mul ** i)
        m_fac = m_mul ** i
        cosine_decayed = 0.5 * m_fac * (1.0 + math.cos(math.pi * f))
        decayed = (1 - alpha) * cosine_decayed + alpha
        return float(self.initial_learning_rate) * decayed


def _eval(v, step: float) -> float:
    return float(v(step)) if callable(v) else float(v)


class LinearWarmup(LearningRateSchedule):
    r"""Linear warmup, then any schedule (or a constant).

    Symbols: :math:`W` = ``warmup_steps``, :math:`\gamma_s` = ``start_value``,
    :math:`S` = ``schedule_or_value`` (a schedule, or a number for a constant).  The
    wrapped schedule starts counting when the warmup ends.

    .. math::

        \gamma_t &\leftarrow (S(0) - \gamma_s)\, t / W + \gamma_s \quad \text{if } t < W \\
        \gamma_t &\leftarrow S(t - W) \quad \text{otherwise}

    ``LinearWarmup(W, CosineDecay(lr, T), start_value=lr0)`` equals
    ``CosineDecay(lr0, T, warmup_target=lr, warmup_steps=W)``.

    >>> s = LinearWarmup(10, ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5))
    >>> s(0), s(5), s(10), s(20)
    (0.0, 0.05, 0.1, 0.05)
    """

    _fields = ("warmup_steps", "schedule_or_value", "start_value")

    def __init__(self, warmup_steps, schedule_or_value, start_value=0.0, *, name=None):
        w = "LinearWarmup"
        self.warmup_steps = check_real(warmup_steps, f"{w}: warmup_steps", lo=0.0, name="warmup_steps")
        if not callable(schedule_or_value):  # a number: the constant lr after the warmup
            schedule_or_value = check_real(schedule_or_value, f"{w}: schedule_or_value", lo=0.0,
                                           name="schedule_or_value")
        self.schedule_or_value = schedule_or_value
        self.start_value = check_real(start_value, f"{w}: start_value", lo=0.0, name="start_value")
        self.name = name

    def __call__(self, step) -> float:
        s = check_step(step)
        ws = float(self.warmup_steps)
        if s < ws:
            start = float(self.start_value)
            return (_eval(self.schedule_or_value, 0) - start) * (s / ws) + start
        return _eval(self.schedule_or_value, s - ws)
