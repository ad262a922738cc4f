"""The optimizer facade: the public :class:`Optimizer` over the registry (groups, state,
names), the gradient pipeline (accumulate, statistics, clip, guard), the engine (plans and
native calls) and the state_dict module.

A built-in optimizer is a small subclass: an :class:`~fusedoptim._spec.AlgoSpec` naming its
native rule, its hyperparameter checks and its per-step scalars returned by name.  A custom
optimizer sets no spec and writes :meth:`Optimizer.update` in NumPy.
"""
from __future__ import annotations

import contextlib
import threading
import types
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _state_dict
from ._arrays import as_arrays, is_single_array
from .engine import Engine
from .pipeline import PENDING, SKIP, GradientPipeline, StepControl, check_options
from .extension import ExtensionAPI
from .lowp import check_lowp_options
from .registry import ParamRegistry, StateView, group_params, required
from ._state_dict import IncompatibleKeys
from .validate import check_bool, check_real

__all__ = ["Optimizer", "required", "IncompatibleKeys"]

_PLAIN = StepControl()


class Optimizer(ExtensionAPI):
    """Base class of every fusedoptim optimizer.

    ``params`` is an iterable of arrays, or of dicts (param groups) with a ``"params"``
    entry and per-group hyperparameters, exactly as in ``torch.optim``.  It may be
    omitted for the Keras style, where ``apply_gradients`` discovers the variables.

    Parameters may have names: ``params`` (or a group's ``"params"``) is then a dict
    ``{name: array}`` or a list of ``(name, array)`` pairs (``model.named_params()``).
    ``step`` then also takes ``{name: gradient}``, ``state_dict`` is keyed by name and
    ``load_state_dict`` maps by name; messages use the names.  Name every parameter or
    none.

    Options every optimizer accepts (fused into the same native pass): ``l1`` (a group
    hyperparameter, ``g += l1 * sign(p)``), ``global_clipnorm`` (clip all gradients to
    this global L2 norm, Keras' ``g * c / max(norm, c)``), ``clipnorm`` (the same per
    parameter), ``clipvalue`` (clamp to ``[-clipvalue, clipvalue]``), ``ema_decay`` (an
    exponential moving average of every parameter: :meth:`swap_ema`,
    :meth:`ema_weights`; the first average is the weights after a parameter's first update,
    as in torch's AveragedModel and Keras), ``ema_overwrite_frequency`` (Keras: every k-th
    applied step, the weights are overwritten with their average), ``skip_nonfinite`` (skip a step with a NaN/Inf gradient, counted
    in ``nonfinite_count``), ``gradient_accumulation_steps`` (apply the mean of k calls'
    gradients every k-th call).

    Storage options (:mod:`fusedoptim.lowp`): ``state_dtype`` (``"float32"``, the default;
    ``"bfloat16"``: every state buffer an ``ml_dtypes.bfloat16`` array; ``"int8"``: block-wise
    8-bit state, uint8 codes plus one float32 absmax per ``block_size`` elements, for
    parameters of at least ``min_8bit_size`` elements; float32 arithmetic in every case),
    ``rounding`` of the low-precision writes (``"stochastic"`` or ``"nearest"``; default
    stochastic for bfloat16, nearest for int8) and the ``seed`` of the stochastic rounding.

    Subclasses implement the hooks of :class:`~fusedoptim.extension.ExtensionAPI` (a
    built-in names its native rule with a ``spec``; a custom optimizer writes ``update``).
    """

    def __init__(self, params, defaults: Dict[str, Any], *, l1=0.0, global_clipnorm=None, clipnorm=None,
                 clipvalue=None, ema_decay=None, skip_nonfinite=False, gradient_accumulation_steps=1,
                 ema_overwrite_frequency=None, state_dtype="float32", rounding=None, seed=0, block_size=256,
                 min_8bit_size=4096):
        defaults = dict(defaults)
        defaults.setdefault("l1", l1)
        storage = check_lowp_options(state_dtype=state_dtype, rounding=rounding, seed=seed, block_size=block_size,
                                     min_8bit_size=min_8bit_size)
        if storage["state_dtype"] != "float32" and self.spec is None and self.update_group is not None \
                and not getattr(self, "lowp_state", False):
            raise ValueError(f"state_dtype={storage['state_dtype']!r} is not supported by {type(self).__name__}: "
                             + getattr(self, "lowp_refusal", "its state is kept in float32") + "; use "
                             "state_dtype='float32'")
        if storage["state_dtype"] != "float32" and self.spec is None and not getattr(self, "lowp_state", False):
            raise ValueError(f"state_dtype={storage['state_dtype']!r} needs a built-in optimizer (a spec); "
                             f"{type(self).__name__} updates its state in NumPy")
        self.options = types.MappingProxyType(dict(check_options(
            global_clipnorm=global_clipnorm, clipnorm=clipnorm, clipvalue=clipvalue, ema_decay=ema_decay,
            skip_nonfinite=skip_nonfinite, gradient_accumulation_steps=gradient_accumulation_steps,
            ema_overwrite_frequency=ema_overwrite_frequency), **storage))
        self.defaults = defaults
        self.lock = threading.RLock()        # step, state_dict, load_state_dict, fo.save hold it
        self.nonfinite_count = 0             # steps skipped because a gradient was NaN/Inf
        self.last_step_skipped = False       # the last step() call skipped a non-finite gradient
        self.last_step_applied = False       # the last step() call updated the parameters
        self.last_grad_norm: Optional[float] = None   # global norm seen by the last step, if computed
        self.iterations = 0                  # steps taken (Keras' optimizer.iterations)
        self.engine = Engine(self)
        self.registry = ParamRegistry(defaults, self.check_group, self.engine.invalidate, storage["state_dtype"],
                                      native=self.spec is not None, block_size=storage["block_size"],
                                      min_8bit_size=storage["min_8bit_size"])
        self.state = StateView(self.registry.store)
        self.pipeline = GradientPipeline(self.options)
        self._adopts = params is None        # Keras style: apply_gradients learns the variables
        self._last_applied: Optional[list] = None  # the group resolutions of the last applied step
        if params is None:
            return
        if is_single_array(params):
            raise TypeError(f"params should be an iterable of arrays or dicts, got a single {type(params).__name__}; "
                            "wrap it in a list: [param]")
        if isinstance(params, Mapping):
            if len(params) == 0:
                raise ValueError("optimizer got an empty parameter dict")
            group_params(params, "params")         # {name: array}: every value an array
            groups = [{"params": params}]
        else:
            groups = list(params)
            if len(groups) == 0:
                raise ValueError("optimizer got an empty parameter list")
            if not isinstance(groups[0], dict):
                groups = [{"params": groups}]
        for g in self.registry.stage(groups):     # every group validated before any is added
            self.registry.add(g)

    @property
    def param_groups(self) -> List[dict]:
        return self.registry.groups

    @property
    def params(self) -> List:
        """Every parameter, flat, in param-group order (the order ``step`` takes gradients)."""
        return list(self.registry.params)

    @property
    def param_names(self) -> Optional[List[str]]:
        """Each parameter's name, aligned with :attr:`params`; None when they have none."""
        names = self.registry.names
        return None if names is None else list(names)

    @property
    def labels(self) -> List[str]:
        """The name of each parameter in error messages, aligned with :attr:`params`."""
        return list(self.registry.labels)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (torch semantics)."""
        with self.lock:
            self.registry.add(self.registry.stage([param_group], len(self.param_groups))[0])

    def scheduled_lr(self, g: dict, gi: int) -> float:
        """The lr of group gi for this step: its schedule called with ``iterations``."""
        lr = g["lr"](self.iterations)
        check_real(lr, f"param group {gi}: lr (from schedule at iteration {self.iterations})", lo=0.0)
        return float(lr)

    # -------------------------------------------------------------------- step
    def step(self, grads: Union[Sequence[Optional[np.ndarray]], Mapping[str, Optional[np.ndarray]]],
             closure: Optional[Callable] = None, *, grad_scale: float = 1.0, skip_nonfinite: Optional[bool] = None):
        """Update every parameter in place from ``grads`` (one per parameter, in the
        order of ``param_groups``; ``None`` skips a parameter for this step).  When the
        parameters have names, ``grads`` may be ``{name: gradient}`` instead: a name left
        out gets no gradient this step (like ``p.grad is None`` in torch), a name the
        optimizer doesn't hold raises, naming it.

        ``grad_scale`` multiplies every gradient inside the kernel (e.g. ``1 / loss_scale``);
        ``skip_nonfinite`` overrides the option of the same name for this call.  Everything
        is checked before any array is written: on error, parameters and state are exactly
        as before.  Thread-safe (one step at a time).  Returns ``closure()`` if given.

        Afterwards ``last_step_applied`` says whether the parameters were updated: False
        when the call only accumulated gradients (``gradient_accumulation_steps``), was
        skipped (``last_step_skipped``: a NaN/Inf gradient) or raised.
        """
        with self.lock:
            self.last_step_applied = False
            loss = closure() if closure is not None else None
            if type(grads) is not list:
                if isinstance(grads, Mapping):
                    grads = self.registry.grads_by_name(grads)
                elif is_single_array(grads):
                    raise TypeError("grads must be a sequence with one gradient per parameter, got a single "
                                    f"{type(grads).__name__}; wrap it in a list: [grad]")
                else:
                    grads = list(grads)
            reg = self.registry
            params, labels, be = reg.params, reg.labels, reg.backend
            grads = as_arrays(grads, lambda i: f"gradient of {labels[i]}" if i < len(labels) else f"grads[{i}]")
            be.check_params(params, labels)
            skipped = be.check_grads(params, grads, labels, reg.spans())
            if grad_scale != 1.0:
                check_real(grad_scale, "grad_scale", lo=0.0)
            groups = reg.groups
            engine = self.engine
            resolved = [engine.resolve(gi, g) for gi, g in enumerate(groups)]
            # nothing below can fail on user input
            ctl = _PLAIN
            if not (self.pipeline.idle and skip_nonfinite is None and grad_scale == 1.0):
                self.last_step_skipped = False
                ctl = self.pipeline.process(grads, grad_scale, skip_nonfinite, be)
                if ctl is PENDING:
                    return loss
                if ctl is SKIP:
                    self.nonfinite_count += 1
                    self.last_step_skipped = True
                    return loss
                if ctl.norm is not None:
                    self.last_grad_norm = ctl.norm
                if ctl.grads is not None:
                    grads = ctl.grads
                    skipped = sum(g is None for g in grads)
            if len(groups) == 1:
                engine.step_group(0, resolved[0], params, grads, skipped == 0, ctl, ctl.tscale, be)
            else:
                base = 0
                for gi, g in enumerate(groups):
                    n = len(g["params"])
                    ts = None if ctl.tscale is None else ctl.tscale[base:base + n]
                    engine.step_group(gi, resolved[gi], g["params"], grads[base:base + n], skipped == 0, ctl, ts, be)
                    base += n
            self.iterations += 1
            freq = self.options["ema_overwrite_frequency"]
            if freq is not None and self.iterations % freq == 0:
                self.registry.overwrite_with("ema")      # Keras: the weights become their average
            self.last_step_applied = True
            self._last_applied = resolved
            return loss

    def get_last_lr(self) -> List[float]:
        """The learning rate each param group used in the last applied step (torch's
        spelling; a schedule's value, not the schedule).  Before the first step: the value
        the first step will use."""
        if self._last_applied is not None:
            return [float(r[0]["lr"]) for r in self._last_applied]
        return [float(g["lr"](self.iterations) if callable(g["lr"]) else g["lr"]) for g in self.param_groups]

    # --------------------------------------------------------------------- EMA
    def swap_ema(self) -> None:
        """Exchange every parameter's values with its moving average, in place (call
        again to swap back).  Requires ``ema_decay``; parameters that never stepped are
        left alone."""
        if self.options["ema_decay"] is None:
            raise RuntimeError("swap_ema() needs an optimizer built with ema_decay=...")
        with self.lock:
            self.registry.swap("ema")

    @contextlib.contextmanager
    def ema_weights(self):
        """``with opt.ema_weights(): evaluate()`` runs the block with the averaged
        weights in the parameters and restores the trained weights afterwards."""
        self.swap_ema()
        try:
            yield self
        finally:
            self.swap_ema()

    # ------------------------------------------------------------- Keras style
    def apply_gradients(self, grads_and_vars: Iterable) -> None:
        """Keras spelling: ``opt.apply_gradients(zip(grads, vars))``.

        An optimizer built without params learns its variables here, as Keras optimizers
        do (they join the first param group); one built with params refuses a variable it
        does not hold, naming it.  Variables left out of this call are not updated.
        """
        with self.lock:
            grads, new = self.registry.gradients_of_pairs(list(grads_and_vars), adopt=self._adopts)
            try:
                self.step(grads)
            except Exception:
                if new:
                    self.registry.forget(new)
                raise

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict:
        """A plain dict of numbers and numpy arrays (copies), in torch's layout:
        ``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``,
        plus ``"kind"`` (the class name), ``"iterations"`` and the toolkit counters.
        When the parameters have names, the names replace the indices: ``state`` is
        ``{name: {...}}`` and each group's ``"params"`` lists its names."""
        with self.lock:
            return _state_dict.build(self)

    def load_state_dict(self, state_dict: dict, strict: bool = True, *,
                        convert_state_dtype: bool = False) -> IncompatibleKeys:
        """Load a dict produced by ``state_dict`` (or torch's, converted to numpy).
        Validates the kind, group structure, hyperparameter names and values, state keys,
        shapes and dtypes before changing anything; arrays are copied and cast to each
        parameter's dtype (state buffers: to the ``state_dtype``).

        A state_dict keyed by name is mapped by name (the dict order and the group a
        parameter sits in may differ; group hyperparameters go by group position).
        ``strict=True`` raises unless both hold the same names; with ``strict=False`` a
        parameter the state_dict lacks keeps its state and a saved name this optimizer
        lacks is ignored.  Returns ``IncompatibleKeys(missing_keys, unexpected_keys)``
        (torch's ``Module.load_state_dict`` result; empty lists for a positional one).

        State saved with another storage (bfloat16, int8 or float32 into another of them, or
        8-bit state with another block size) is refused unless ``convert_state_dtype=True``,
        which converts it (to bfloat16: nearest-even; to int8: the nearest code)."""
        check_bool(convert_state_dtype, "convert_state_dtype")
        with self.lock:
            return _state_dict.load(self, state_dict, strict=strict, convert_state_dtype=convert_state_dtype)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {g[k]}" for k in sorted(g) if k != "params"]
        lines.append(")")
        return "\n".join(lines)
