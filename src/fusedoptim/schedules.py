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
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import numbers
import types
from bisect import bisect_right
from typing import Any, Callable, Dict, List, Optional, Tuple

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


# ============================================================== validation helpers
def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _py(x):
    """numpy scalar -> the equal Python number (keeps configs JSON-able)."""
    if _is_real(x) and not isinstance(x, (int, float)) and hasattr(x, "item"):
        return x.item()
    return x


def _real(who: str, name: str, value, *, lo=None, lo_open=False, hi=None, hi_open=False):
    """Check that ``value`` is a finite real number in range; return it as a Python number."""
    if not _is_real(value):
        raise TypeError(f"{who}: {name} must be a real number, got {name}={value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{who}: {name} must be finite, got {name}={value!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{who}: {name} must be {'>' if lo_open else '>='} {lo:g}, got {name}={value!r}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{who}: {name} must be {'<' if hi_open else '<='} {hi:g}, got {name}={value!r}")
    return _py(value)


def _int(who: str, name: str, value, *, lo=None):
    """Check that ``value`` is an integer (int or numpy integer, not bool) >= lo."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{who}: {name} must be an integer, got {name}={value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise ValueError(f"{who}: {name} must be >= {lo}, got {name}={value!r}")
    return value


def _bool(who: str, name: str, value) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{who}: {name} must be a bool, got {name}={value!r}")
    return bool(value)


def _step(step) -> float:
    """The step argument of a schedule: a real number >= 0 (int, float, numpy scalar)."""
    if not _is_real(step):
        if getattr(step, "shape", None) == () and hasattr(step, "item"):
            step = step.item()
        if not _is_real(step):
            raise TypeError(f"schedule step must be a real number, got {step!r}")
    s = float(step)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"schedule step must be a finite number >= 0, got {step!r}")
    return s


# ==================================================================== Keras style
_REGISTRY: Dict[str, type] = {}


class LearningRateSchedule:
    """Base class of the Keras-style schedules: a pure function ``step -> lr``.

    Subclasses implement ``__call__(step) -> float`` and list their constructor
    arguments in ``_fields``; ``get_config`` / ``from_config`` / ``==`` / ``repr`` follow
    from those.  Subclasses are registered by class name, so the module-level
    ``from_config`` rebuilds them too.  A subclass that keeps other state overrides
    ``get_config`` (and ``from_config`` if its constructor differs from the config).
    """

    _fields: Tuple[str, ...] = ()
    name: Optional[str] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        old = _REGISTRY.get(cls.__name__)
        # a user's class never shadows a built-in of the same name
        if old is None or old.__module__ != __name__:
            _REGISTRY[cls.__name__] = cls

    def __call__(self, step) -> float:
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  "`__call__(self, step)`.")

    def get_config(self) -> dict:
        """A plain JSON-able dict: ``{"class_name": ..., <constructor arguments>}``;
        nested schedules are nested configs."""
        if not self._fields:
            raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must set `_fields` "
                                      "or override `get_config()` in order to be serializable.")
        cfg: Dict[str, Any] = {"class_name": type(self).__name__}
        for f in self._fields:
            cfg[f] = _config_value(getattr(self, f))
        if self.name is not None:
            cfg["name"] = self.name
        return cfg

    @classmethod
    def from_config(cls, config: dict) -> "LearningRateSchedule":
        """Rebuild a schedule from ``get_config()``'s dict.  Also accepts a Keras config
        (the ``get_config()`` of a Keras schedule, or ``{"class_name", "config"}`` from
        ``keras.optimizers.schedules.serialize``)."""
        if not isinstance(config, dict):
            raise TypeError(f"schedule config must be a dict, got {type(config).__name__}")
        cfg = dict(config)
        if isinstance(cfg.get("config"), dict) and "class_name" in cfg:  # Keras serialize() form
            cfg = dict(cfg["config"], class_name=cfg["class_name"])
        name = cfg.pop("class_name", None)
        if cls is LearningRateSchedule:
            if name is None:
                raise ValueError("schedule config has no 'class_name'; call <Class>.from_config(config)")
            if name not in _REGISTRY:
                raise ValueError(f"unknown schedule class {name!r} in config; known: {sorted(_REGISTRY)}")
            target = _REGISTRY[name]
        else:
            if name is not None and name != cls.__name__:
                raise ValueError(f"config is for a {name}, not a {cls.__name__}")
            target = cls
        sig = inspect.signature(target.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
            unknown = sorted(set(cfg) - set(sig) - {"self"})
            if unknown:
                raise ValueError(f"{target.__name__}.from_config: unknown config key(s) {unknown}")
        return target(**{k: _from_config_value(v) for k, v in cfg.items()})

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        try:
            return self.get_config() == other.get_config()
        except NotImplementedError:
            return self is other

    def __hash__(self):
        try:
            return hash(json.dumps(self.get_config(), sort_keys=True))
        except NotImplementedError:
            return id(self)

    def __repr__(self):
        try:
            cfg = self.get_config()
        except NotImplementedError:
            return object.__repr__(self)
        cfg.pop("class_name")
        args = ", ".join(f"{k}={getattr(self, k, cfg[k])!r}" for k in cfg)
        return f"{type(self).__name__}({args})"


def _config_value(v):
    if isinstance(v, LearningRateSchedule):
        return v.get_config()
    if callable(v):
        raise TypeError(f"cannot serialize the callable {v!r}: only LearningRateSchedule objects have a config")
    if isinstance(v, (list, tuple)):
        return [_config_value(x) for x in v]
    return _py(v)


def _from_config_value(v):
    if isinstance(v, dict) and "class_name" in v:
        return LearningRateSchedule.from_config(v)
    return v


def from_config(config: dict) -> LearningRateSchedule:
    """Rebuild any schedule (built-in or a registered subclass) from its ``get_config()``."""
    return LearningRateSchedule.from_config(config)


def _lr_value(who: str, name: str, v):
    """A schedule argument that is a learning rate: a number >= 0, or a schedule."""
    if callable(v):
        return v
    return _real(who, name, v, lo=0.0)


def _eval(v, step: float) -> float:
    return float(v(step)) if callable(v) else float(v)


class Constant(LearningRateSchedule):
    r"""The constant schedule: :math:`\gamma_t = \gamma` (``value``).

    >>> Constant(0.1)(123)
    0.1
    """

    _fields = ("value",)

    def __init__(self, value, *, name=None):
        self.value = _real("Constant", "value", value, lo=0.0)
        self.name = name

    def __call__(self, step) -> float:
        _step(step)
        return float(self.value)


class _StepDecay(LearningRateSchedule):
    """Arguments and progress ``p = t / decay_steps`` (floored if ``staircase``) shared by
    ExponentialDecay and InverseTimeDecay."""

    _fields = ("initial_learning_rate", "decay_steps", "decay_rate", "staircase")

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, *, name=None):
        w = type(self).__name__
        self.initial_learning_rate = _real(w, "initial_learning_rate", initial_learning_rate, lo=0.0)
        self.decay_steps = _real(w, "decay_steps", decay_steps, lo=0.0, lo_open=True)
        self.decay_rate = _real(w, "decay_rate", decay_rate, lo=0.0)
        self.staircase = _bool(w, "staircase", staircase)
        self.name = name

    def _progress(self, step) -> float:
        p = _step(step) / float(self.decay_steps)
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
        b = [_real(w, f"boundaries[{i}]", x) for i, x in enumerate(boundaries)]
        for i in range(1, len(b)):
            if not b[i] > b[i - 1]:
                raise ValueError(f"{w}: boundaries must be strictly increasing, got {boundaries=}")
        self.boundaries = b
        self.values = [_real(w, f"values[{i}]", x, lo=0.0) for i, x in enumerate(values)]
        self.name = name

    def __call__(self, step) -> float:
        s = _step(step)
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
        self.initial_learning_rate = _real(w, "initial_learning_rate", initial_learning_rate, lo=0.0)
        self.decay_steps = _real(w, "decay_steps", decay_steps, lo=0.0, lo_open=True)
        self.end_learning_rate = _real(w, "end_learning_rate", end_learning_rate, lo=0.0)
        self.power = _real(w, "power", power, lo=0.0)
        self.cycle = _bool(w, "cycle", cycle)
        self.name = name

    def __call__(self, step) -> float:
        s = _step(step)
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
        self.initial_learning_rate = _real(w, "initial_learning_rate", initial_learning_rate, lo=0.0)
        self.decay_steps = _real(w, "decay_steps", decay_steps, lo=0.0, lo_open=True)
        self.alpha = _real(w, "alpha", alpha, lo=0.0, hi=1.0)
        self.warmup_target = None if warmup_target is None else _real(w, "warmup_target", warmup_target, lo=0.0)
        self.warmup_steps = _real(w, "warmup_steps", warmup_steps, lo=0.0)
        if self.warmup_target is None and self.warmup_steps > 0:
            raise ValueError(f"{w}: warmup_steps has no effect without warmup_target (the lr reached at the end "
                             f"of the warmup), got {warmup_steps=} and {warmup_target=}")
        self.name = name

    def __call__(self, step) -> float:
        s = _step(step)
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
        self.initial_learning_rate = _real(w, "initial_learning_rate", initial_learning_rate, lo=0.0)
        self.first_decay_steps = _real(w, "first_decay_steps", first_decay_steps, lo=0.0, lo_open=True)
        self.t_mul = _real(w, "t_mul", t_mul, lo=1.0)
        self.m_mul = _real(w, "m_mul", m_mul, lo=0.0)
        self.alpha = _real(w, "alpha", alpha, lo=0.0, hi=1.0)
        self.name = name

    def __call__(self, step) -> float:
        f = _step(step) / float(self.first_decay_steps)
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
        self.warmup_steps = _real(w, "warmup_steps", warmup_steps, lo=0.0)
        self.schedule_or_value = _lr_value(w, "schedule_or_value", schedule_or_value)
        self.start_value = _real(w, "start_value", start_value, lo=0.0)
        self.name = name

    def __call__(self, step) -> float:
        s = _step(step)
        ws = float(self.warmup_steps)
        if s < ws:
            start = float(self.start_value)
            return (_eval(self.schedule_or_value, 0) - start) * (s / ws) + start
        return _eval(self.schedule_or_value, s - ws)


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
        self.max_lr = _real(w, "max_lr", max_lr, lo=0.0)
        self.total_steps = _int(w, "total_steps", total_steps, lo=1)
        self.pct_start = _real(w, "pct_start", pct_start, lo=0.0, hi=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{w}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy=}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _real(w, "div_factor", div_factor, lo=0.0, lo_open=True)
        self.final_div_factor = _real(w, "final_div_factor", final_div_factor, lo=0.0, lo_open=True)
        self.three_phase = _bool(w, "three_phase", three_phase)
        self.name = name
        self._phases = _one_cycle_phases(w, self.max_lr, self.total_steps, self.pct_start, self.div_factor,
                                         self.final_div_factor, self.three_phase)

    def __call__(self, step) -> float:
        s = min(_step(step), float(self.total_steps - 1))
        start_step = 0.0
        for i, (end_step, a, b) in enumerate(self._phases):
            if s <= end_step or i == len(self._phases) - 1:
                return _anneal(self.anneal_strategy, a, b, (s - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover


# ==================================================================== torch style
def _check_optimizer(optimizer, who: str) -> list:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(f"{who}: {type(optimizer).__name__} is not an optimizer (needs a param_groups list of dicts)")
    for i, g in enumerate(groups):
        lr = g.get("lr")
        if callable(lr):
            raise TypeError(f"{who}: param group {i} has a schedule as lr ({lr!r}); a torch-style scheduler "
                            "writes a number into group['lr'] at every step, so build the optimizer with a "
                            "number lr, or use the schedule alone")
        if not _is_real(lr):
            raise TypeError(f"{who}: param group {i}: lr must be a real number, got {lr!r}")
    return groups


def _per_group(who: str, name: str, value, n: int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{who}: {name} must have the same length as optimizer.param_groups. "
                             f"{name} has {len(value)} values, param_groups has {n}.")
        return list(value)
    return [value] * n


def _plain(v, where: str):
    """Check that a state_dict value is plain data (numbers, strings, None, lists, dicts)."""
    if v is None or isinstance(v, (str, bool)) or _is_real(v):
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
    elif cur is None or _is_real(cur):
        ok = v is None or _is_real(v)
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
        groups = _check_optimizer(optimizer, who)
        last_epoch = _int(who, "last_epoch", last_epoch, lo=-1)
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
                    if not _is_real(x):
                        raise TypeError(f"{who}.load_state_dict: state_dict[{k!r}][{i}] must be a real number, "
                                        f"got {x!r}")
        for k, lo in (("last_epoch", None), ("_step_count", 0)):  # (nested SequentialLRs undo twice: -2)
            if k in current:
                _int(f"{who}.load_state_dict", f"state_dict[{k!r}]", state_dict[k], lo=lo)
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


class LambdaLR(LRScheduler):
    r"""``lr = base_lr * lr_lambda(epoch)`` (torch ``LambdaLR``); ``lr_lambda`` is a
    function of the epoch, or a list with one per param group.

    ``state_dict`` holds, per lambda, ``None`` for functions and pure schedules and a
    copy of ``__dict__`` for other callable objects, as torch does.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        who = "LambdaLR"
        n = len(_check_optimizer(optimizer, who))
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
        self.gamma = _py(gamma)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        _int("StepLR", "step_size", h["step_size"], lo=1)
        _real("StepLR", "gamma", h["gamma"], lo=0.0)

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
        self.gamma = _py(gamma)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        for i, m in enumerate(h["milestones"]):
            _int("MultiStepLR", f"milestones[{i}]", m, lo=0)
        _real("MultiStepLR", "gamma", h["gamma"], lo=0.0)

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
        self.factor = _py(factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        _real("ConstantLR", "factor", h["factor"], lo=0.0, lo_open=True, hi=1.0)
        _int("ConstantLR", "total_iters", h["total_iters"], lo=0)

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
        self.start_factor = _py(start_factor)
        self.end_factor = _py(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        _real("LinearLR", "start_factor", h["start_factor"], lo=0.0, lo_open=True, hi=1.0)
        _real("LinearLR", "end_factor", h["end_factor"], lo=0.0, hi=1.0)
        _int("LinearLR", "total_iters", h["total_iters"], lo=1)

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
        self.gamma = _py(gamma)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        _real("ExponentialLR", "gamma", h["gamma"], lo=0.0)

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
        self.power = _py(power)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        _int("PolynomialLR", "total_iters", h["total_iters"], lo=1)
        _real("PolynomialLR", "power", h["power"], lo=0.0)

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
        self.eta_min = _py(eta_min)
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        _int("CosineAnnealingLR", "T_max", h["T_max"], lo=1)
        _real("CosineAnnealingLR", "eta_min", h["eta_min"], lo=0.0)

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
        self.eta_min = _py(eta_min)
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def _check_hparams(self, h):
        w = "CosineAnnealingWarmRestarts"
        _int(w, "T_0", h["T_0"], lo=1)
        _int(w, "T_mult", h["T_mult"], lo=1)
        _real(w, "eta_min", h["eta_min"], lo=0.0)
        _real(w, "T_i", h["T_i"], lo=0.0, lo_open=True)
        _real(w, "T_cur", h["T_cur"], lo=-1.0)

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
            epoch = _real("CosineAnnealingWarmRestarts.step", "epoch", epoch, lo=0.0)
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
        groups = _check_optimizer(optimizer, w)
        if total_steps is not None:
            total_steps = _int(w, "total_steps", total_steps, lo=1)
        elif epochs is not None and steps_per_epoch is not None:
            total_steps = _int(w, "epochs", epochs, lo=1) * _int(w, "steps_per_epoch", steps_per_epoch, lo=1)
        else:
            raise ValueError(f"{w}: You must define either total_steps OR (epochs AND steps_per_epoch)")
        pct_start = _real(w, "pct_start", pct_start, lo=0.0, hi=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{w}: anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy!r}")
        div_factor = _real(w, "div_factor", div_factor, lo=0.0, lo_open=True)
        final_div_factor = _real(w, "final_div_factor", final_div_factor, lo=0.0, lo_open=True)
        three_phase = _bool(w, "three_phase", three_phase)
        cycle_momentum = _bool(w, "cycle_momentum", cycle_momentum)
        n = len(groups)
        max_lrs = [_real(w, "max_lr", v, lo=0.0) for v in _per_group(w, "max_lr", max_lr, n)]
        for m in max_lrs:  # same phase check as OneCycle (a zero-length phase divides by zero)
            _one_cycle_phases(w, m, total_steps, pct_start, div_factor, final_div_factor, three_phase)
        defaults = getattr(optimizer, "defaults", {})
        if cycle_momentum:
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError(f"{w}: optimizer must support momentum or beta1 with `cycle_momentum` option "
                                 "enabled; pass cycle_momentum=False")
            max_moms = [_real(w, "max_momentum", v, lo=0.0) for v in _per_group(w, "max_momentum", max_momentum, n)]
            base_moms = [_real(w, "base_momentum", v, lo=0.0) for v in _per_group(w, "base_momentum", base_momentum, n)]
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
        _int(w, "total_steps", h["total_steps"], lo=1)
        if h["_anneal_func_type"] not in ("cos", "linear"):
            raise ValueError(f"{w}: unknown anneal strategy {h['_anneal_func_type']!r}")
        ph = h["_schedule_phases"]
        if not isinstance(ph, (list, tuple)) or not ph:
            raise ValueError(f"{w}: _schedule_phases must be a non-empty list, got {ph!r}")
        keys = {"end_step", "start_lr", "end_lr", "start_momentum", "end_momentum"}
        for i, p in enumerate(ph):
            if not isinstance(p, dict) or set(p) != keys or not _is_real(p["end_step"]):
                raise ValueError(f"{w}: _schedule_phases[{i}] must be a dict with keys {sorted(keys)}, got {p!r}")
        _bool(w, "cycle_momentum", h["cycle_momentum"])
        _bool(w, "use_beta1", h["use_beta1"])

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


class SequentialLR(LRScheduler):
    r"""Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]`` (restarted
    at its epoch 0), and so on (torch ``SequentialLR``), e.g. a ``LinearLR`` warmup then
    ``CosineAnnealingLR``.  Build the sub-schedulers on the same optimizer first."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        w = "SequentialLR"
        _check_optimizer(optimizer, w)
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
        milestones = [_int(w, f"milestones[{i}]", m, lo=0) for i, m in enumerate(milestones)]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("Sequential Schedulers expects number of schedulers provided to be one more than the "
                             f"number of milestone points, but got number of schedulers {len(schedulers)} and the "
                             f"number of milestones to be equal to {len(milestones)}")
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"{w}: milestones must be strictly increasing, got {milestones=}")
        last_epoch = _int(w, "last_epoch", last_epoch, lo=-1)
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
        groups = _check_optimizer(optimizer, w)
        if isinstance(min_lr, (list, tuple)):
            min_lrs = _per_group(w, "min_lr", min_lr, len(groups))
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
        self.factor = _py(factor)
        self.min_lrs = [_py(m) for m in min_lrs]
        self.default_min_lr = _py(default_min_lr)
        self.patience = int(patience)
        self.cooldown = int(cooldown)
        self.eps = _py(eps)
        self.last_epoch = 0
        self.base_lrs = self._current_lrs()
        self._last_lr = self._current_lrs()
        self.mode, self.threshold, self.threshold_mode = mode, _py(threshold), threshold_mode
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
        _real(w, "factor", h["factor"], lo=0.0, hi=1.0, hi_open=True)
        for i, m in enumerate(h["min_lrs"]):
            _real(w, f"min_lr[{i}]" if h["default_min_lr"] is None else "min_lr", m, lo=0.0)
        if h["default_min_lr"] is not None:
            _real(w, "min_lr", h["default_min_lr"], lo=0.0)
        _int(w, "patience", h["patience"], lo=0)
        _int(w, "cooldown", h["cooldown"], lo=0)
        _real(w, "eps", h["eps"], lo=0.0)
        _real(w, "threshold", h["threshold"], lo=0.0)
        _int(w, "cooldown_counter", h["cooldown_counter"], lo=0)
        _int(w, "num_bad_epochs", h["num_bad_epochs"], lo=0)
        for k in ("best", "mode_worse"):
            if not _is_real(h[k]):
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
