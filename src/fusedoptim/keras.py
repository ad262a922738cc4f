"""Keras 3 optimizers on the fused kernels: ``fusedoptim.keras``.

The classes here take Keras 3.15's arguments, defaults and formulas
(``keras.optimizers.<Name>``) and run the same native rules as the torch-style classes,
with the Keras conventions selected by options of those classes (no separate loops):

==============  ==========================================================================
``Adam``        ``fo.Adam(eps_before_bias_correction=True)``: ``eps`` is added to the
                uncorrected :math:`\\sqrt v`
``AdamW``       the same, ``weight_decay=0.004``
``SGD``         ``fo.SGD(lr_in_momentum=True)``: ``m = momentum * m - lr * g``; ``nesterov``
                with ``momentum=0`` is plain SGD (valid, as in Keras)
``RMSprop``     ``fo.RMSprop(eps_in_sqrt=True, lr_in_momentum=True)``, ``rho=0.9``,
                ``epsilon=1e-7``
``Adagrad``     ``fo.Adagrad(eps_in_sqrt=True)``, ``initial_accumulator_value=0.1``
``Adamax``      ``fo.Adamax(eps_after_max=True)``
``Nadam``       ``fo.NAdam(momentum_decay=1.0)`` (Keras's :math:`\\mu_t = \\beta_1(1 - \\tfrac12 0.96^t)`)
``Adadelta``    ``fo.Adadelta``, ``learning_rate=0.001``, ``rho=0.95``, ``epsilon=1e-7``
``Lion``        ``fo.Lion``, ``learning_rate=0.001``
``Ftrl``        ``fo.Ftrl`` (Keras's formulas already), ``learning_rate=0.001``
``Lamb``        ``fo.Lamb(bias_correction=True, plain_trust_ratio=True)``: Adam's bias-corrected
                direction, trust ratio :math:`\lVert\theta\rVert / \lVert u\rVert` (no clamp, no
                ``epsilon`` in it), ``epsilon=1e-7``
==============  ==========================================================================

Every class takes Keras's base-optimizer arguments: ``weight_decay`` (decoupled,
``θ ← θ - θ · wd · lr`` before every optimizer's update; ``None`` for none),
``clipnorm`` / ``clipvalue`` / ``global_clipnorm`` (at most one), ``use_ema``,
``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
``gradient_accumulation_steps``, ``name``; and ``learning_rate`` as a float, a schedule
(``fusedoptim.schedules`` or Keras's; called with the number of ``apply_gradients``
calls so far, like Keras) or a callable without arguments.

Differences from Keras, by design: variables are NumPy (or CuPy) arrays, updated in place;
gradients are cast to their variable's dtype like Keras does (a copy when they differ).
:func:`Variable` makes an array with a ``name`` for ``exclude_from_weight_decay(var_names=)``.
With ``gradient_accumulation_steps`` and ``use_ema`` together the average is blended on
every call, the accumulating ones included, as Keras does.

Example::

    >>> import numpy as np
    >>> from fusedoptim import keras as fk
    >>> w = fk.Variable([1.0, 2.0, 3.0, 4.0])
    >>> opt = fk.SGD(learning_rate=0.5)
    >>> _ = opt.apply_gradients(zip([np.array([1.0, 6.0, 7.0, 2.0])], [w]))
    >>> print(w)
    [ 0.5 -1.  -0.5  3. ]
"""
from __future__ import annotations

import inspect
import math
import re
import warnings
from typing import Iterable, Optional

import numpy as np

from . import optim as _optim
from . import schedules as _schedules
from ._backends import is_array
from .validate import check_real

__all__ = ["Variable", "Optimizer", "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adamax", "Nadam", "Adadelta",
           "Lion", "Ftrl", "Lamb", "Adafactor", "get"]


class KerasVariable(np.ndarray):
    """A NumPy array with a ``name`` (and Keras's ``numpy()``), made by :func:`Variable`."""

    def __array_finalize__(self, obj):
        self.name = getattr(obj, "name", None)

    def numpy(self) -> np.ndarray:
        """A plain ndarray view of the values (Keras's ``Variable.numpy()``)."""
        return self.view(np.ndarray)

    def assign(self, value) -> None:
        self[...] = value


def Variable(initializer, dtype=None, name: Optional[str] = None) -> KerasVariable:
    """A writeable, C-contiguous array holding ``initializer`` (float32 unless ``dtype`` or a
    float64 array says otherwise), with a ``name``: Keras's ``keras.Variable(value, name=)``."""
    a = np.asarray(initializer)
    if dtype is None:
        dtype = a.dtype if a.dtype in (np.float32, np.float64) and isinstance(initializer, np.ndarray) \
            else np.float32
    v = np.array(a, dtype=dtype, order="C").view(KerasVariable)
    v.name = name
    return v


def _zero_arg(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


class _NoArgLR:
    """A Keras callable learning rate (``lambda: 0.1``) as a schedule of the step."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, step):
        return self.fn()


def _as_lr(learning_rate):
    if isinstance(learning_rate, dict):
        return _schedules.from_config(learning_rate)
    if callable(learning_rate):
        if not isinstance(learning_rate, _schedules.LearningRateSchedule) and _zero_arg(learning_rate):
            return _NoArgLR(learning_rate)
        return learning_rate
    if isinstance(learning_rate, bool):
        raise ValueError(f"Argument `learning_rate` should be float, or an instance of LearningRateSchedule, "
                         f"or a callable. Received instead: learning_rate={learning_rate!r}")
    check_real(learning_rate, "learning_rate", lo=0.0, name="learning_rate")
    return float(learning_rate)


class Optimizer:
    """The Keras base-optimizer behaviour, mixed into each class in front of its
    fusedoptim core class (which does the work: groups, state, kernels, state_dict)."""

    _core = None       # the torch-style class whose rule runs
    _names = ()        # this class's own Keras arguments, in get_config order
    _counter = 0
    _decoupled_kw = True   # the core class takes decoupled_weight_decay (Lion is always decoupled)

    def _setup(self, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
               ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs, own, core):
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored.")
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        if gradient_accumulation_steps and not gradient_accumulation_steps >= 2:
            raise ValueError("`gradient_accumulation_steps` must be an integer >= 2. Received: "
                             f"gradient_accumulation_steps={gradient_accumulation_steps}")
        if use_ema:
            if ema_momentum > 1 or ema_momentum < 0:
                raise ValueError(f"`ema_momentum` must be in the range [0, 1]. Received: ema_momentum={ema_momentum}")
            if ema_overwrite_frequency and (not isinstance(ema_overwrite_frequency, int)
                                            or ema_overwrite_frequency < 1):
                raise ValueError("`ema_overwrite_frequency` must be an integer >= 1 or None. Received: "
                                 f"ema_overwrite_frequency={ema_overwrite_frequency}")
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
                             f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}")
        if loss_scale_factor is not None:
            check_real(loss_scale_factor, "loss_scale_factor", lo=0.0, lo_open=True, name="loss_scale_factor")
        if name is None:
            type(self)._counter += 1
            n = type(self)._counter
            base = type(self).__name__.lower()
            name = base if n == 1 else f"{base}_{n - 1}"
        self.name = name
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.use_ema, self.ema_momentum = bool(use_ema), ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        for k, v in own.items():
            setattr(self, k, v)
        self._calls = 0            # Keras's optimizer._iterations: every apply_gradients call
        self.built = False
        self._exclude_ids, self._exclude_pattern = set(), None
        pos = lambda v: v if v else None  # noqa: E731   Keras: 0 or None means off
        opts = dict(clipnorm=pos(clipnorm), clipvalue=pos(clipvalue), global_clipnorm=pos(global_clipnorm),
                    gradient_accumulation_steps=gradient_accumulation_steps or 1)
        if use_ema:
            opts.update(ema_decay=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency or None)
        if self._decoupled_kw:
            core["decoupled_weight_decay"] = True     # Keras decays every optimizer's weights decoupled
        type(self)._core.__init__(self, None, lr=_as_lr(learning_rate), weight_decay=weight_decay or 0.0,
                                  **core, **opts)

    # ------------------------------------------------------------ Keras API
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step (a schedule evaluated at the current call
        count, like Keras's ``optimizer.learning_rate``)."""
        lr = self.defaults["lr"] if not self.param_groups else self.param_groups[0]["lr"]
        return float(lr(self._calls)) if callable(lr) else float(lr)

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        lr = _as_lr(value)
        cur = self.defaults["lr"]
        if callable(cur) and not callable(lr) and not isinstance(cur, _NoArgLR):
            raise TypeError("This optimizer was created with a `LearningRateSchedule` object as its "
                            "`learning_rate` constructor argument, hence its learning rate is not settable.")
        self.defaults["lr"] = lr
        for g in self.param_groups:
            g["lr"] = lr

    def scheduled_lr(self, g: dict, gi: int) -> float:
        """Keras calls a schedule with the number of ``apply_gradients`` calls so far
        (micro-steps of gradient accumulation included)."""
        lr = g["lr"](self._calls)
        check_real(lr, f"param group {gi}: lr (from schedule at iteration {self._calls})", lo=0.0)
        return float(lr)

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Exclude variables from weight decay (before the optimizer is built): those in
        ``var_list``, and those whose ``name`` contains one of ``var_names`` (re.search)."""
        if self.built:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before the optimizer is built.")
        self._exclude_ids = {id(v) for v in var_list} if var_list else set()
        self._exclude_pattern = re.compile("|".join(set(var_names))) if var_names else None

    def _use_weight_decay(self, v) -> bool:
        if id(v) in self._exclude_ids:
            return False
        name = getattr(v, "name", None)
        return not (self._exclude_pattern is not None and isinstance(name, str)
                    and self._exclude_pattern.search(name) is not None)

    def build(self, variables) -> None:
        """Create the optimizer's groups for ``variables`` (done by the first
        ``apply_gradients``): the variables excluded from weight decay get a group of their
        own with ``weight_decay=0``."""
        if self.built:
            return
        variables = list(variables)
        for k, v in enumerate(variables):
            if not is_array(v):
                raise TypeError(f"variables[{k}] must be a numpy.ndarray, got {type(v).__name__}")
        keep = [v for v in variables if self._use_weight_decay(v)]
        excluded = [v for v in variables if not self._use_weight_decay(v)]
        groups = [{"params": keep}] if keep else []
        if excluded:
            groups.append({"params": excluded, "weight_decay": 0.0})
        staged = self.registry.stage(groups)
        for g in staged:
            self.registry.add(g)
        self._adopts = False
        self.built = True

    def apply_gradients(self, grads_and_vars: Iterable):
        """Keras's ``apply_gradients(zip(grads, vars))``: builds the optimizer on the first
        call; a ``None`` gradient skips its variable (all None raises); gradients are cast to
        their variable's dtype.  Returns ``iterations``."""
        pairs = [tuple(p) for p in grads_and_vars]
        if not pairs:
            return self.iterations
        for k, p in enumerate(pairs):
            if len(p) != 2:
                raise TypeError(f"grads_and_vars[{k}] must be a (gradient, variable) pair")
        if all(g is None for g, _ in pairs):
            raise ValueError("No gradients provided for any variable.")
        with self.lock:
            fixed = []              # cast first: a bad gradient raises before the optimizer is built
            for k, (g, v) in enumerate(pairs):
                if g is not None and is_array(v) and not (is_array(g) and g.dtype == v.dtype
                                                           and g.shape == v.shape and g.flags.c_contiguous):
                    if type(v).__module__.startswith("cupy"):
                        raise TypeError(f"grads_and_vars[{k}]: a CuPy variable needs a CuPy gradient of its "
                                        "dtype and shape")
                    try:
                        g = np.array(np.broadcast_to(np.asarray(g, dtype=v.dtype), v.shape), order="C")
                    except (TypeError, ValueError) as e:
                        raise ValueError(f"grads_and_vars[{k}]: the gradient does not fit the variable "
                                         f"(shape {v.shape}, dtype {v.dtype}): {e}") from None
                fixed.append((g, v))
            if not self.built:
                self.build([v for _, v in pairs])
            grads, _ = self.registry.gradients_of_pairs(fixed, adopt=False)
            self.step(grads)
        return self.iterations

    def step(self, grads, closure=None, *, grad_scale: float = 1.0, skip_nonfinite=None):
        """As :meth:`fusedoptim.Optimizer.step`, with ``loss_scale_factor`` unscaling the
        gradients and Keras's call counter advancing."""
        if self.loss_scale_factor is not None:
            grad_scale = grad_scale / self.loss_scale_factor
        before = self.iterations
        out = type(self)._core.step(self, grads, closure, grad_scale=grad_scale, skip_nonfinite=skip_nonfinite)
        self._calls += 1
        if self.use_ema and self.iterations == before and self.pipeline.acc_count:
            self._ema_on_accumulating_call()
        return out

    def _ema_on_accumulating_call(self) -> None:
        """Keras updates the average on every ``apply_gradients`` call, also those that only
        accumulate (the weights do not move there): ``ema = m ema + (1 - m) w`` once the
        first update is behind (before it the average is re-seeded by that update anyway),
        and with ``ema_overwrite_frequency`` k the weights become the average on every call
        of the accumulation cycle whose ``iterations + 1`` is a multiple of k.  The applied
        calls do the same inside the fused step."""
        if self.iterations == 0:
            return
        m = float(self.ema_momentum)
        for p in self.params:
            st = self.state[p] if p in self.state else None
            if st is not None and "ema" in st:
                ema = st["ema"]
                ema[...] = ema * m + p * (1.0 - m)
        freq = self.ema_overwrite_frequency
        if freq and (self.iterations + 1) % freq == 0:
            self.registry.overwrite_with("ema")

    def load_state_dict(self, state_dict: dict, strict: bool = True):
        """As :meth:`fusedoptim.Optimizer.load_state_dict` (build the optimizer first, e.g.
        with :meth:`build`); Keras's call counter, which schedules see, is restored as
        ``iterations * gradient_accumulation_steps + accumulated calls``."""
        with self.lock:
            out = type(self)._core.load_state_dict(self, state_dict, strict)
            self._calls = self.iterations * (self.gradient_accumulation_steps or 1) + self.pipeline.acc_count
            return out

    def scale_loss(self, loss):
        """``loss * loss_scale_factor`` (Keras), or ``loss``."""
        return loss * self.loss_scale_factor if self.loss_scale_factor is not None else loss

    @property
    def model_variables_moving_average(self) -> list:
        """The EMA of every variable, in build order (Keras's
        ``_model_variables_moving_average``); None for a variable that never stepped."""
        return [self.state[p].get("ema") if p in self.state else None for p in self.params]

    @property
    def accumulated_gradients(self) -> list:
        """The gradient sums of the accumulation cycle in progress, one per variable in build
        order (zeros between cycles), like Keras's ``_accumulated_gradients``."""
        acc = self.pipeline.acc if self.pipeline.acc_count else {}
        return [acc[i].copy() if i in acc else np.zeros_like(p) for i, p in enumerate(self.params)]

    def finalize_variable_values(self, var_list=None) -> None:
        """With ``use_ema``, overwrite every variable with its moving average (Keras)."""
        if self.use_ema:
            with self.lock:
                self.registry.overwrite_with("ema")

    def get_config(self) -> dict:
        lr = self.defaults["lr"]
        if isinstance(lr, _NoArgLR):
            lr = lr.fn
        if isinstance(lr, _schedules.LearningRateSchedule):
            lr = lr.get_config()
        elif hasattr(lr, "get_config") and callable(lr):   # a Keras schedule
            lr = {"class_name": type(lr).__name__, "config": lr.get_config()}
        elif callable(lr):
            raise ValueError("a callable learning_rate has no config; use a fusedoptim.schedules schedule")
        cfg = {"name": self.name, "learning_rate": lr, "weight_decay": self.weight_decay,
               "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue,
               "use_ema": self.use_ema, "ema_momentum": self.ema_momentum,
               "ema_overwrite_frequency": self.ema_overwrite_frequency, "loss_scale_factor": self.loss_scale_factor,
               "gradient_accumulation_steps": self.gradient_accumulation_steps}
        cfg.update({k: getattr(self, k) for k in self._names})
        return cfg

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = _schedules.from_config(config["learning_rate"])
        return cls(**config)


_BASE_DOC = """
    Base arguments (all optimizers): ``weight_decay`` (decoupled: ``θ -= θ · wd · lr``
    before the update), ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``use_ema``,
    ``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
    ``gradient_accumulation_steps``, ``name`` -- as in ``keras.optimizers``."""


def _base(kw):
    return dict(weight_decay=kw.pop("weight_decay"), clipnorm=kw.pop("clipnorm"), clipvalue=kw.pop("clipvalue"),
                global_clipnorm=kw.pop("global_clipnorm"), use_ema=kw.pop("use_ema"),
                ema_momentum=kw.pop("ema_momentum"), ema_overwrite_frequency=kw.pop("ema_overwrite_frequency"),
                loss_scale_factor=kw.pop("loss_scale_factor"),
                gradient_accumulation_steps=kw.pop("gradient_accumulation_steps"), name=kw.pop("name"))


class Adam(Optimizer, _optim.Adam):
    r"""keras.optimizers.Adam: with :math:`\alpha_t = \gamma\sqrt{1-\beta_2^t}/(1-\beta_1^t)`,
    :math:`m \leftarrow m + (g - m)(1-\beta_1)`, :math:`v \leftarrow v + (g^2 - v)(1-\beta_2)`,
    :math:`\hat v \leftarrow \max(\hat v, v)` (amsgrad), :math:`\theta \leftarrow \theta -
    \alpha_t m / (\sqrt{\hat v} + \epsilon)`.""" + _BASE_DOC
    _core = _optim.Adam
    _names = ("beta_1", "beta_2", "epsilon", "amsgrad")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad),
                    dict(betas=(beta_1, beta_2), eps=epsilon, amsgrad=amsgrad, eps_before_bias_correction=True))


class AdamW(Adam):
    r"""keras.optimizers.AdamW: :class:`Adam` with ``weight_decay=0.004`` (never None).""" + _BASE_DOC

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, clipnorm, clipvalue,
                         global_clipnorm, use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)


class SGD(Optimizer, _optim.SGD):
    r"""keras.optimizers.SGD: :math:`m \leftarrow \mu m - \gamma g`; :math:`\theta \leftarrow
    \theta + m` (nesterov: :math:`\theta + \mu m - \gamma g`); without momentum
    :math:`\theta \leftarrow \theta - \gamma g` (``nesterov`` is then ignored, as in Keras).""" + _BASE_DOC
    _core = _optim.SGD
    _names = ("momentum", "nesterov")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        if not isinstance(momentum, float) or momentum < 0 or momentum > 1:
            raise ValueError("`momentum` must be a float between [0, 1].")
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(momentum=momentum, nesterov=nesterov),
                    dict(momentum=momentum, nesterov=bool(nesterov) and momentum != 0, lr_in_momentum=True))


class RMSprop(Optimizer, _optim.RMSprop):
    r"""keras.optimizers.RMSprop: :math:`v \leftarrow \rho v + (1-\rho) g^2`; centered:
    :math:`\bar g \leftarrow \rho \bar g + (1-\rho) g`, :math:`d = v - \bar g^2 + \epsilon`, else
    :math:`d = v + \epsilon`; :math:`\Delta = \gamma g / \sqrt d`; momentum:
    :math:`b \leftarrow \mu b + \Delta`, :math:`\theta \leftarrow \theta - b`, else
    :math:`\theta \leftarrow \theta - \Delta`.""" + _BASE_DOC
    _core = _optim.RMSprop
    _names = ("rho", "momentum", "epsilon", "centered")

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(rho=rho, momentum=momentum, epsilon=epsilon, centered=centered),
                    dict(alpha=rho, eps=epsilon, momentum=momentum, centered=centered, eps_in_sqrt=True,
                         lr_in_momentum=True))


class Adagrad(Optimizer, _optim.Adagrad):
    r"""keras.optimizers.Adagrad: :math:`s \leftarrow s + g^2` (:math:`s_0` =
    ``initial_accumulator_value``), :math:`\theta \leftarrow \theta - \gamma g / \sqrt{s + \epsilon}`.""" \
        + _BASE_DOC
    _core = _optim.Adagrad
    _names = ("initial_accumulator_value", "epsilon")

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(initial_accumulator_value=initial_accumulator_value, epsilon=epsilon),
                    dict(initial_accumulator_value=initial_accumulator_value, eps=epsilon, eps_in_sqrt=True))


class Adamax(Optimizer, _optim.Adamax):
    r"""keras.optimizers.Adamax: :math:`m \leftarrow m + (g - m)(1-\beta_1)`, :math:`u \leftarrow
    \max(\beta_2 u, |g|)`, :math:`\theta \leftarrow \theta - \gamma m / ((1-\beta_1^t)(u + \epsilon))`.""" \
        + _BASE_DOC
    _core = _optim.Adamax
    _names = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon),
                    dict(betas=(beta_1, beta_2), eps=epsilon, eps_after_max=True))


class Nadam(Optimizer, _optim.NAdam):
    r"""keras.optimizers.Nadam: :math:`\mu_t = \beta_1(1 - \tfrac12 0.96^t)`,
    :math:`\hat m = \mu_{t+1} m / (1 - \prod_{i \le t+1}\mu_i) + (1-\mu_t) g / (1 - \prod_{i\le t}\mu_i)`,
    :math:`\hat v = v / (1-\beta_2^t)`, :math:`\theta \leftarrow \theta - \gamma\hat m / (\sqrt{\hat v} + \epsilon)`
    (torch's NAdam with ``momentum_decay=1``).""" + _BASE_DOC
    _core = _optim.NAdam
    _names = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon),
                    dict(betas=(beta_1, beta_2), eps=epsilon, momentum_decay=1.0))


class Adadelta(Optimizer, _optim.Adadelta):
    r"""keras.optimizers.Adadelta: :math:`v \leftarrow \rho v + (1-\rho) g^2`,
    :math:`\Delta = \sqrt{u + \epsilon}\, g / \sqrt{v + \epsilon}`, :math:`u \leftarrow \rho u + (1-\rho)\Delta^2`,
    :math:`\theta \leftarrow \theta - \gamma\Delta`.""" + _BASE_DOC
    _core = _optim.Adadelta
    _names = ("rho", "epsilon")

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(rho=rho, epsilon=epsilon), dict(rho=rho, eps=epsilon))


class Lion(Optimizer, _optim.Lion):
    r"""keras.optimizers.Lion: :math:`\theta \leftarrow \theta - \gamma\,\mathrm{sign}(\beta_1 m +
    (1-\beta_1) g)`, :math:`m \leftarrow \beta_2 m + (1-\beta_2) g`.""" + _BASE_DOC
    _core = _optim.Lion
    _decoupled_kw = False
    _names = ("beta_1", "beta_2")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        if beta_1 <= 0 or beta_1 > 1:
            raise ValueError("Argument `beta_1` must be in the [0, 1] range. Otherwise, the optimizer degenerates "
                             f"to SignSGD. Received: beta_1={beta_1}.")
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(beta_1=beta_1, beta_2=beta_2), dict(betas=(beta_1, beta_2)))


class Adafactor(Optimizer, _optim.Adafactor):
    r"""keras.optimizers.Adafactor (Keras 3's formulas: ``fusedoptim.Adafactor`` with
    ``keras_form=True``): with :math:`t` the step, :math:`\hat\beta_2 = 1 - t^{\tau}`
    (:math:`\tau` = ``beta_2_decay``), :math:`\rho_t = \min(\gamma, 1/\sqrt t)`,
    :math:`\alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta))\rho_t` and
    :math:`G^2 = g^2 + \epsilon_1`: for a variable of 2 or more dims
    :math:`r \leftarrow \hat\beta_2 r + (1-\hat\beta_2)\,\mathrm{mean}_{-1}(G^2)`,
    :math:`c \leftarrow \hat\beta_2 c + (1-\hat\beta_2)\,\mathrm{mean}_{-2}(G^2)`,
    :math:`v = (r / \mathrm{mean}(r))\, c` (never stored); otherwise
    :math:`v \leftarrow \hat\beta_2 v + (1-\hat\beta_2) G^2`; then :math:`u = g/\sqrt v`,
    :math:`\theta \leftarrow \theta - \alpha_t\, u / \max(1, \mathrm{RMS}(u)/\text{clip\_threshold})`.
    ``relative_step`` is kept for the config: Keras's :math:`\rho_t` is
    :math:`\min(\gamma, 1/\sqrt t)` whether it is set or not.  State keys are the core
    class's (``row_var``, ``col_var`` or ``variance``).""" + _BASE_DOC
    _core = _optim.Adafactor
    _decoupled_kw = False      # the core's weight decay is already Keras's: theta -= theta * wd * lr
    _names = ("beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold", "relative_step")

    def __init__(self, learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3, clip_threshold=1.0,
                 relative_step=True, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(beta_2_decay=beta_2_decay, epsilon_1=epsilon_1, epsilon_2=epsilon_2,
                         clip_threshold=clip_threshold, relative_step=relative_step),
                    dict(beta2_decay=beta_2_decay, eps=(epsilon_1, epsilon_2), d=clip_threshold, keras_form=True))


class Ftrl(Optimizer, _optim.Ftrl):
    r"""keras.optimizers.Ftrl: with :math:`p` = ``learning_rate_power``, :math:`n \leftarrow n + g^2`,
    :math:`z \leftarrow z + g + 2\lambda_s\theta - (n_t^{-p} - n_{t-1}^{-p})\theta / \gamma`,
    :math:`q = n_t^{-p} / \gamma + 2(\lambda_2 + \beta / (2\gamma))`, :math:`\theta \leftarrow
    (\mathrm{clip}(z, -\lambda_1, \lambda_1) - z) / q` (:class:`fusedoptim.Ftrl`'s rule: its
    docstring has the symbols).""" + _BASE_DOC
    _core = _optim.Ftrl
    _decoupled_kw = False      # fo.Ftrl's weight_decay is already Keras's (decoupled)
    _names = ("learning_rate_power", "initial_accumulator_value", "l1_regularization_strength",
              "l2_regularization_strength", "l2_shrinkage_regularization_strength", "beta")

    def __init__(self, learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        # Keras's own checks and messages, before anything else
        if initial_accumulator_value < 0.0:
            raise ValueError("`initial_accumulator_value` needs to be positive or zero. Received: "
                             f"initial_accumulator_value={initial_accumulator_value}.")
        if learning_rate_power > 0.0:
            raise ValueError("`learning_rate_power` needs to be negative or zero. Received: "
                             f"learning_rate_power={learning_rate_power}.")
        for k, v in (("l1_regularization_strength", l1_regularization_strength),
                     ("l2_regularization_strength", l2_regularization_strength),
                     ("l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength)):
            if v < 0.0:
                raise ValueError(f"`{k}` needs to be positive or zero. Received: {k}={v}.")
        own = dict(learning_rate_power=learning_rate_power, initial_accumulator_value=initial_accumulator_value,
                   l1_regularization_strength=l1_regularization_strength,
                   l2_regularization_strength=l2_regularization_strength,
                   l2_shrinkage_regularization_strength=l2_shrinkage_regularization_strength, beta=beta)
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs, own,
                    dict(own))

    def scheduled_lr(self, g, gi):
        lr = Optimizer.scheduled_lr(self, g, gi)
        if not lr > 0:
            raise ValueError(f"param group {gi}: lr (from schedule at iteration {self._calls}) must be > 0 for "
                             f"Ftrl (it divides by lr), got {lr!r}")
        return lr


class Lamb(Optimizer, _optim.Lamb):
    r"""keras.optimizers.Lamb: :math:`m \leftarrow m + (g - m)(1-\beta_1)`, :math:`v \leftarrow v +
    (g^2 - v)(1-\beta_2)`, :math:`u = \hat m / (\sqrt{\hat v} + \epsilon)` (bias-corrected),
    :math:`r = \lVert\theta\rVert / \lVert u\rVert` per variable (1 if either is 0),
    :math:`\theta \leftarrow \theta - r\gamma u` (:class:`fusedoptim.Lamb` with
    ``bias_correction=True, plain_trust_ratio=True``).""" + _BASE_DOC
    _core = _optim.Lamb
    _decoupled_kw = False      # fo.Lamb's weight_decouple=True is Keras's decay
    _names = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        self._setup(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name, kwargs,
                    dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon),
                    dict(betas=(beta_1, beta_2), eps=epsilon, weight_decouple=True, bias_correction=True,
                         plain_trust_ratio=True))


_ALL = {c.__name__.lower(): c for c in (Adam, AdamW, SGD, RMSprop, Adagrad, Adamax, Nadam, Adadelta, Lion, Ftrl,
                                        Lamb, Adafactor)}


def get(identifier):
    """Keras's ``keras.optimizers.get``: a name (``"adamw"``), a ``{"class_name", "config"}``
    dict, an optimizer (returned as is) or None."""
    if identifier is None or isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls, cfg = _ALL.get(identifier.lower()), {}
    elif isinstance(identifier, dict) and "class_name" in identifier:
        cls, cfg = _ALL.get(str(identifier["class_name"]).lower()), identifier.get("config", {})
    else:
        cls = None
    if cls is None:
        raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")
    return cls.from_config(cfg)
