"""The optimizer base class: param groups, per-parameter state, validation, state_dict.

The built-in optimizers set ``_kernel`` and compute their per-step scalars in
``_hyper``; the arithmetic runs in one native call per bucket of parameters that share
hyperparameters and step count.  A custom optimizer sets ``_kernel = None`` and writes a
NumPy ``update`` method instead (see ``Optimizer.update``).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import types
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from . import _cuda, _kernels

__all__ = ["Optimizer", "required"]


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


class _Group(dict):
    """A param group: a plain dict whose every mutation bumps ``_version``, so the
    optimizer re-validates a group's hyperparameters only after they change."""

    __slots__ = ("_version",)

    def __init__(self, *a, **kw):
        dict.__init__(self, *a, **kw)
        self._version = 0

    def _bump(self):
        self._version += 1

    def __setitem__(self, k, v):
        dict.__setitem__(self, k, v)
        self._version += 1

    def __delitem__(self, k):
        dict.__delitem__(self, k)
        self._version += 1

    def __ior__(self, other):
        self.update(other)
        return self

    def update(self, *a, **kw):
        dict.update(self, *a, **kw)
        self._version += 1

    def setdefault(self, k, default=None):
        self._version += 1
        return dict.setdefault(self, k, default)

    def pop(self, *a):
        self._version += 1
        return dict.pop(self, *a)

    def popitem(self):
        self._version += 1
        return dict.popitem(self)

    def clear(self):
        dict.clear(self)
        self._version += 1

    def copy(self):
        return dict(self)

    def __reduce__(self):
        return (dict, (dict(self),))


class _ParamState(dict):
    """One parameter's state.  Assigning or deleting a key (``opt.state[p]["step"] = 0``,
    a replaced buffer) is checked against the parameter and makes the optimizer drop its
    cached plans, so the next step uses the new values."""

    __slots__ = ("_owner", "_param")

    def __init__(self, owner, param, init=()):
        dict.__init__(self, init)
        self._owner = owner
        self._param = param

    def __setitem__(self, key, value):
        p = self._param
        if isinstance(value, np.ndarray) or _is_array(value):
            if value.shape != p.shape or value.dtype != p.dtype:
                raise ValueError(f"state[{key!r}]: expected an array of shape {p.shape} and dtype {p.dtype}, got "
                                 f"shape {value.shape} and dtype {value.dtype}")
            if not value.flags.c_contiguous or not value.flags.writeable:
                raise ValueError(f"state[{key!r}]: the array must be C-contiguous and writeable")
            if type(value) is not type(p):
                raise TypeError(f"state[{key!r}]: expected a {type(p).__name__}, got {type(value).__name__}")
        dict.__setitem__(self, key, value)
        self._owner._invalidate()

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self._owner._invalidate()

    def __reduce__(self):
        return (dict, (dict(self),))


class _StateView:
    """``opt.state[param]`` -> that parameter's state dict (keyed by identity)."""

    def __init__(self, store: Dict[int, dict]):
        self._store = store

    def __getitem__(self, param):
        return self._store[id(param)]

    def __contains__(self, param) -> bool:
        return id(param) in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self):
        return iter(self._store.values())

    def get(self, param, default=None):
        return self._store.get(id(param), default)


_NO_FRESH = frozenset()
# hyperparameters that must be finite and >= 0 wherever they appear, with their error label
_NONNEG_HYPER = {"eps": "epsilon value", "weight_decay": "weight_decay value", "momentum": "momentum value",
                 "lr_decay": "lr_decay value", "initial_accumulator_value": "initial_accumulator_value value",
                 "momentum_decay": "momentum_decay value", "alpha": "alpha value", "l1": "l1 value"}
# keys torch-style LR schedulers keep in param groups (as torch does); state_dicts carry them
_SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
_NO_FIX = (1.0, math.inf)


def _clip_coef(norm: float, max_norm: float) -> float:
    """Keras' clip_by_norm factor c / max(norm, c); NaN for a non-finite norm."""
    return max_norm / max(norm, max_norm) if math.isfinite(norm) else math.nan


def _backend(arrays):
    """The native backend of these arrays: the CuPy one (``_cuda``) for cupy arrays."""
    if not arrays or type(arrays[0]) is np.ndarray:
        return _kernels
    return _cuda if _cuda.is_device_array(arrays[0]) else _kernels


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or _cuda.is_device_array(x)


def _address(a) -> int:
    return _cuda.address(a) if _cuda.is_device_array(a) else a.__array_interface__["data"][0]


def _all_finite(grads) -> bool:
    """Exact check, used only when the float64 sum of squares overflowed."""
    return all(gr is None or bool(np.isfinite(gr).all()) for gr in grads)


def _check_options(*, global_clipnorm, clipnorm, clipvalue, ema_decay, skip_nonfinite,
                   gradient_accumulation_steps) -> dict:
    for name, v in (("global_clipnorm", global_clipnorm), ("clipnorm", clipnorm), ("clipvalue", clipvalue)):
        if v is not None:
            _check_real(v, name, lo=0.0)
            if v == 0:
                raise ValueError(f"{name} must be > 0, got {v!r}")
    if global_clipnorm is not None and clipnorm is not None:
        raise ValueError("pass either clipnorm (per parameter) or global_clipnorm, not both")
    if ema_decay is not None:
        _check_real(ema_decay, "ema_decay", lo=0.0, hi=1.0, hi_open=True)
    if not isinstance(skip_nonfinite, (bool, np.bool_)):
        raise TypeError(f"skip_nonfinite must be a bool, got {skip_nonfinite!r}")
    k = gradient_accumulation_steps
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"gradient_accumulation_steps must be an integer >= 1, got {k!r}")
    return types.MappingProxyType(dict(global_clipnorm=None if global_clipnorm is None else float(global_clipnorm),
                clipnorm=None if clipnorm is None else float(clipnorm),
                clipvalue=None if clipvalue is None else float(clipvalue),
                ema_decay=None if ema_decay is None else float(ema_decay),
                skip_nonfinite=bool(skip_nonfinite), gradient_accumulation_steps=int(k)))


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Optimizer:
    """Base class of every fusedoptim optimizer.

    ``params`` is an iterable of arrays, or of dicts (param groups) with a ``"params"``
    entry and per-group hyperparameters, exactly as in ``torch.optim``.  It may be
    omitted for the Keras style, where ``apply_gradients`` discovers the variables.

    Subclass API
    ------------
    defaults            hyperparameter names and default values (set via __init__)
    _kernel             native kernel id from ``fusedoptim._kernels``; None for NumPy
    _scalar_state       names of per-parameter scalar state (always includes "step")
    _check_group(g, where)      raise ValueError for invalid hyperparameters
    _buffers            every array buffer the algorithm can keep, in kernel order
    _state_names(g)     the buffers the group's flags need (default: all of ``_buffers``)
    _new_buffer(name, p, g)     initial value of a buffer (default: zeros)
    _hyper(g, scal, fresh)      advance ``scal`` (dict of scalar state) by one step and
                        return the tuple of per-step scalars the kernel expects; ``fresh``
                        is the set of buffers created for this step
    update(p, grad, state, g)   NumPy fallback used when ``_kernel`` is None

    Options every optimizer accepts (fused into the same native pass)
    ------------------------------------------------------------------
    l1                  per-group L1 penalty: ``g += l1 * sign(p)`` (default 0)
    global_clipnorm     clip all gradients together so their global L2 norm is at most
                        this (Keras' ``global_clipnorm``: ``g * c / max(norm, c)``); the
                        norm is one deterministic native pass, the scale is applied
                        inside the update kernel
    clipnorm            clip each parameter's gradient to this L2 norm (Keras' ``clipnorm``)
    clipvalue           clamp gradients to ``[-clipvalue, clipvalue]`` (Keras' ``clipvalue``)
    ema_decay           keep an exponential moving average of every parameter, updated in
                        the same pass (``ema = decay * ema + (1 - decay) * p``); see
                        :meth:`swap_ema` and :meth:`ema_weights`
    skip_nonfinite      skip the whole step (params and state untouched) when any gradient
                        holds NaN or Inf; counted in ``nonfinite_count``
    gradient_accumulation_steps
                        accumulate this many calls' gradients and apply their mean every
                        k-th call (Keras' option of the same name, optax ``MultiSteps``)
    """

    _kernel: Optional[int] = None
    _scalar_state: Sequence[str] = ("step",)

    def __init__(self, params, defaults: Dict[str, Any], *, l1=0.0, global_clipnorm=None, clipnorm=None,
                 clipvalue=None, ema_decay=None, skip_nonfinite=False, gradient_accumulation_steps=1):
        defaults = dict(defaults)
        defaults.setdefault("l1", l1)
        # read-only: the options fix the step's code path
        self.options = _check_options(global_clipnorm=global_clipnorm, clipnorm=clipnorm, clipvalue=clipvalue,
                                      ema_decay=ema_decay, skip_nonfinite=skip_nonfinite,
                                      gradient_accumulation_steps=gradient_accumulation_steps)
        o = self.options
        self._plain = (o["global_clipnorm"] is None and o["clipnorm"] is None and o["clipvalue"] is None
                       and not o["skip_nonfinite"] and o["gradient_accumulation_steps"] == 1)
        self.nonfinite_count = 0      # steps skipped because a gradient was NaN/Inf
        self.last_step_skipped = False
        self.last_grad_norm: Optional[float] = None   # global norm seen by the last step, if computed
        self._spans = None                          # memory spans of the params (grad aliasing check)
        self._acc: Dict[int, np.ndarray] = {}       # param index -> accumulator of this cycle
        self._acc_pool: Dict[int, np.ndarray] = {}  # reused accumulator arrays
        self._acc_count = 0
        self.defaults = defaults
        self.param_groups: List[dict] = []
        self._state: Dict[int, dict] = {}
        self.state = _StateView(self._state)
        self.iterations = 0  # steps taken (Keras' optimizer.iterations)
        self._params: List[np.ndarray] = []
        self._labels: List[str] = []
        self._index: Dict[int, int] = {}
        self._plans: Dict[int, tuple] = {}      # group index -> (names, scalars, states, buffers)
        self._resolved: Dict[int, tuple] = {}   # group index -> validated hyperparameters
        if params is None:
            return
        if _is_array(params):
            raise TypeError("params should be an iterable of arrays or dicts, got a single ndarray; "
                            "wrap it in a list: [param]")
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        # validate every group before adding any, so a bad group leaves nothing behind
        staged = [self._prepare_group(g, len(self.param_groups) + i, extra=[p for s in groups[:i] for p in self._group_params(s)])
                  for i, g in enumerate(groups)]
        for g in staged:
            self._add_group(g)

    @property
    def params(self) -> List[np.ndarray]:
        """Every parameter, flat, in param-group order (the order ``step`` takes gradients)."""
        return list(self._params)

    @property
    def labels(self) -> List[str]:
        """The name of each parameter in error messages, aligned with :attr:`params`."""
        return list(self._labels)

    # ------------------------------------------------------------------ groups
    @staticmethod
    def _group_params(group) -> list:
        ps = group.get("params") if isinstance(group, dict) else None
        if _is_array(ps):
            return [ps]
        return list(ps) if ps is not None else []

    def _prepare_group(self, group, gi: int, extra=()) -> dict:
        if not isinstance(group, dict):
            raise TypeError(f"param group {gi} must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"param group {gi} has no 'params' entry")
        params = self._group_params(group)
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group {gi}: unknown hyperparameter(s) {sorted(unknown)} for "
                             f"{type(self).__name__}; known: {sorted(self.defaults)}")
        g = {"params": params}
        for k, v in self.defaults.items():
            if k in group:
                g[k] = group[k]
            elif v is required:
                raise ValueError(f"param group {gi} didn't specify a value of required optimization parameter {k}")
            else:
                g[k] = v
        earlier = self._params + list(extra)      # params added before, or staged in the same call
        labels = [f"params[{len(earlier) + j}] (group {gi}, index {j})" for j in range(len(params))]
        _backend(earlier or params).check_params(params, labels)
        if params and earlier:
            if params[0].dtype != earlier[0].dtype:
                raise TypeError(f"{labels[0]}: dtype {params[0].dtype} differs from {earlier[0].dtype} of the "
                                "optimizer's other parameters; float32 and float64 can't be mixed")
        _check_no_overlap(earlier, params, labels)
        self._check_group(g, f"param group {gi}")
        return g

    def _add_group(self, g: dict) -> None:
        self._invalidate()
        self._spans = None
        gi = len(self.param_groups)
        for j, p in enumerate(g["params"]):
            self._index[id(p)] = len(self._params)
            self._labels.append(f"params[{len(self._params)}] (group {gi}, index {j})")
            self._params.append(p)
        self.param_groups.append(g if type(g) is _Group else _Group(g))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (torch semantics)."""
        self._add_group(self._prepare_group(param_group, len(self.param_groups)))

    # ------------------------------------------------------------ validation
    def _check_group(self, g: dict, where: str) -> None:
        """Validate hyperparameters; subclasses extend. Called at construction, on
        add_param_group / load_state_dict, and before every step."""
        lr = g.get("lr")
        if lr is not None and not callable(lr):
            _check_real(lr, f"{where}: lr", lo=0.0)
        for k, label in _NONNEG_HYPER.items():     # shared by every optimizer that has them
            if k in g:
                _check_real(g[k], f"{where}: {label}", lo=0.0)
        if "betas" in g:
            _check_betas(g, where)
        for flag in ("maximize", "amsgrad", "nesterov", "centered", "decoupled_weight_decay"):
            if flag in g and not isinstance(g[flag], (bool, np.bool_)):
                raise TypeError(f"{where}: {flag} must be a bool, got {g[flag]!r}")

    def _group_lr(self, g: dict, where: str) -> float:
        """The lr for this step: a number, or a schedule called with the step count."""
        lr = g["lr"]
        if callable(lr):
            lr = lr(self.iterations)
            _check_real(lr, f"{where}: lr (from schedule at iteration {self.iterations})", lo=0.0)
        return float(lr)

    # ---------------------------------------------------------- subclass API
    _buffers: Sequence[str] = ()   # every state buffer the algorithm can keep, in kernel order

    def _state_names(self, g: dict) -> Sequence[str]:
        """The buffers this group's flags need (default: all of ``_buffers``)."""
        return self._buffers

    def _new_buffer(self, name: str, p: np.ndarray, g: dict) -> np.ndarray:
        return np.zeros_like(p)

    def _init_scalars(self, g: dict) -> dict:
        return {k: 0 for k in self._scalar_state}

    def _hyper(self, g: dict, scal: dict, fresh: frozenset) -> tuple:
        """Advance the scalar state by one step; return the kernel's algorithm block."""
        scal["step"] += 1
        return ()

    def _common(self, g: dict) -> tuple:
        """The common block of every kernel's scalars (rules.h, fo_common): gradient
        scale (sign of maximize), coupled weight decay, L1 coefficient, EMA weight."""
        wd = 0.0 if g.get("decoupled_weight_decay") else g.get("weight_decay", 0.0)
        ema = self.options["ema_decay"]
        return (-1.0 if g.get("maximize") else 1.0, float(wd), float(g.get("l1", 0.0)),
                0.0 if ema is None else 1.0 - ema, math.inf)

    def update(self, param: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        """NumPy update of one parameter, for custom optimizers (``_kernel = None``).

        Mutate ``param`` and the arrays in ``state`` in place; ``state["step"]`` has
        already been incremented and ``group["lr"]`` holds this step's learning rate.
        ``grad`` arrives transformed exactly as the built-in kernels see it: clipped
        (``clipvalue``/``clipnorm``/``global_clipnorm``), scaled (``grad_scale``), negated
        if the group has ``maximize=True``, plus ``weight_decay * param`` if the group has
        a ``weight_decay`` and ``l1 * sign(param)``.  Do not modify ``grad`` in place.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement update() or set _kernel")

    # ------------------------------------------------------------------ step
    def step(self, grads: Sequence[Optional[np.ndarray]], closure: Optional[Callable] = None, *,
             grad_scale: float = 1.0, skip_nonfinite: Optional[bool] = None):
        """Update every parameter in place from ``grads`` (one per parameter, in the
        order of ``param_groups``; ``None`` skips a parameter for this step).

        ``grad_scale`` multiplies every gradient inside the kernel (e.g. ``1 / loss_scale``
        to unscale mixed-precision gradients without a separate pass); ``skip_nonfinite``
        overrides the option of the same name for this call.  Everything is
        checked before any array is written: on error, parameters and state are exactly
        as before.  Returns ``closure()`` if given, like torch.
        """
        loss = closure() if closure is not None else None
        if type(grads) is not list:
            if _is_array(grads):
                raise TypeError("grads must be a sequence with one gradient per parameter, got a single ndarray; "
                                "wrap it in a list: [grad]")
            grads = list(grads)
        params = self._params
        be = _backend(params)
        be.check_params(params, self._labels)
        if be is _kernels:
            if self._spans is None:
                self._spans = _kernels.param_spans(params)
            skipped = _kernels.check_grads(params, grads, self._labels, self._spans)
        else:
            skipped = be.check_grads(params, grads, self._labels)
        if grad_scale != 1.0:
            _check_real(grad_scale, "grad_scale", lo=0.0)
        groups = self.param_groups
        resolved = [self._resolve(gi, g) for gi, g in enumerate(groups)]
        # nothing below can fail on user input
        opts = self.options
        tscale = control = None
        if self._plain and skip_nonfinite is None and grad_scale == 1.0:
            common_fix = _NO_FIX                       # no toolkit option: the lean path
        else:
            if opts["gradient_accumulation_steps"] > 1:
                grads = self._accumulate(grads)
                if grads is None:
                    return loss
                grad_scale = grad_scale / opts["gradient_accumulation_steps"]
                skipped = sum(gr is None for gr in grads)
            guard = opts["skip_nonfinite"] if skip_nonfinite is None else bool(skip_nonfinite)
            if be is _cuda:
                common_fix, tscale, control = self._clip_and_guard_device(grads, grad_scale, guard)
            else:
                common_fix, tscale = self._clip_and_guard(grads, grad_scale, guard)
            if common_fix is None:          # non-finite gradient with skip_nonfinite
                return loss
        if len(groups) == 1:
            geff, common, names = resolved[0]
            if common_fix is not _NO_FIX:
                common = (common[0] * common_fix[0],) + common[1:4] + (common_fix[1],)
            self._step_group(0, geff, common, names, params, grads, skipped == 0, tscale, control, be)
        else:
            base = 0
            for gi, g in enumerate(groups):
                n = len(g["params"])
                geff, common, names = resolved[gi]
                if common_fix is not _NO_FIX:
                    common = (common[0] * common_fix[0],) + common[1:4] + (common_fix[1],)
                self._step_group(gi, geff, common, names, g["params"], grads[base:base + n], skipped == 0,
                                 None if tscale is None else tscale[base:base + n], control, be)
                base += n
        self.iterations += 1
        return loss

    def _clip_and_guard(self, grads: list, grad_scale: float, guard: bool):
        """Global statistics of this step's gradients, when an option needs them.

        Returns ``(fix, tscale)``: ``fix`` = (gradient scale multiplier, clip value for the
        kernel) or ``_NO_FIX``, or None when the step must be skipped; ``tscale`` = per
        parameter scale for ``clipnorm`` or None.
        """
        opts = self.options
        gc, pc, cv = opts["global_clipnorm"], opts["clipnorm"], opts["clipvalue"]
        self.last_step_skipped = False
        if gc is None and pc is None and cv is None and not guard and grad_scale == 1.0:
            return _NO_FIX, None
        scale = grad_scale
        tscale = None
        if gc is not None or pc is not None or guard:
            sumsq, _, per = _kernels.grad_stats(grads, per_tensor=pc is not None)
            finite = math.isfinite(sumsq) or _all_finite(grads)
            if guard and not finite:
                self.nonfinite_count += 1
                self.last_step_skipped = True
                return None, None
            norm = math.sqrt(sumsq) * grad_scale if finite else math.nan
            self.last_grad_norm = norm
            if gc is not None:
                scale *= gc / max(norm, gc) if finite else math.nan
            if pc is not None:
                tscale = [1.0 if gr is None else _clip_coef(math.sqrt(ss) * grad_scale, pc)
                          for gr, ss in zip(grads, per)]
        clip = math.inf if cv is None else (cv / grad_scale if grad_scale > 0 else math.inf)
        return (scale, clip), tscale

    def _clip_and_guard_device(self, grads: list, grad_scale: float, guard: bool):
        """``_clip_and_guard`` for CuPy arrays: the norms stay on the device, where the
        update kernels read the clip coefficients (control block, per-tensor scales).
        Only the skip decision is read back (one sync, and only with the guard on), so
        that step counters never count a skipped step -- torch's GradScaler syncs the same
        way.  Returns ``(fix, tscale, control)``."""
        opts = self.options
        gc, pc, cv = opts["global_clipnorm"], opts["clipnorm"], opts["clipvalue"]
        self.last_step_skipped = False
        if gc is None and pc is None and cv is None and not guard and grad_scale == 1.0:
            return _NO_FIX, None, None
        clip = math.inf if cv is None else (cv / grad_scale if grad_scale > 0 else math.inf)
        if gc is None and pc is None and not guard:
            return (grad_scale, clip), None, None
        ctrl, tscale, _ = _cuda.grad_control(grads, grad_scale=grad_scale, global_clipnorm=gc, clipnorm=pc,
                                             skip_nonfinite=guard)
        if guard and float(ctrl[_cuda.CTRL_SKIP]):
            self.nonfinite_count += 1
            self.last_step_skipped = True
            return None, None, None
        return (grad_scale, clip), tscale, ctrl

    def _accumulate(self, grads: list) -> Optional[list]:
        """Add this call's gradients into the accumulators (one native pass); return the
        accumulated gradients on every k-th call, else None.

        ``self._acc`` maps a parameter index to its accumulator for the current cycle: a
        parameter's first gradient of the cycle is copied in, later ones added, and a
        parameter that got no gradient in the whole cycle gets ``None`` (is skipped)."""
        k = self.options["gradient_accumulation_steps"]
        if self._acc_count == 0:
            self._acc = {}
        acc = self._acc
        pool = self._acc_pool
        fresh, adds, into = [], [], []
        for i, gr in enumerate(grads):
            if gr is None:
                continue
            a = acc.get(i)
            if a is None:
                a = pool.get(i)
                if a is None or a.shape != gr.shape or a.dtype != gr.dtype:
                    a = pool[i] = np.empty_like(gr)
                acc[i] = a
                fresh.append((a, gr))
            else:
                into.append(a)
                adds.append(gr)
        for a, gr in fresh:
            np.copyto(a, gr)
        if into:
            _backend(into).accumulate(into, adds)
        self._acc_count += 1
        if self._acc_count < k:
            return None
        self._acc_count = 0
        return [acc.get(i) for i in range(len(grads))]

    def _resolve(self, gi: int, g: dict):
        """This step's view of group gi: hyperparameters (lr resolved from a schedule),
        the kernel's common block and the state buffer names.  Validation runs again
        only when a hyperparameter changed since the last step."""
        # a _Group counts its mutations; a plain dict put in param_groups by hand is
        # validated on every step
        ver = g._version if type(g) is _Group else None
        cached = self._resolved.get(gi)
        if ver is None or cached is None or cached[0] is not g or cached[1] != ver:
            where = f"param group {gi}"
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
                ver = g._version if type(g) is _Group else None
            self._check_group(g, where)
            geff = dict(g)
            lr = g["lr"]
            cached = (g, ver, geff, self._common(geff), tuple(self._state_names(geff)), callable(lr))
            self._resolved[gi] = cached
        _, _, geff, common, names, scheduled = cached
        if scheduled:
            geff = dict(geff)
            geff["lr"] = self._group_lr(g, f"param group {gi}")
        return geff, common, names

    def _step_group(self, gi: int, g: dict, common: tuple, names: tuple, params: list, grads: list,
                    complete: bool, tscale: Optional[list] = None, control=None, be=None) -> None:
        plan = self._plans.get(gi)
        if be is None:
            be = _backend(params)
        if complete and plan is not None and plan[0] == names:
            # fast path: every parameter of the group steps together and has its state
            _, scal, states, bufs, emas = plan
            hp = common + self._hyper(g, scal, _NO_FRESH)
            if self._kernel is None:
                self._numpy_update(g, params, grads, states, scal, common, tscale, emas)
            elif control is None:
                be.fused_step(self._kernel, hp, params, grads, bufs, emas, tscale)
            else:
                be.fused_step(self._kernel, hp, params, grads, bufs, emas, tscale, control=control)
            _kernels.update_dicts(states, scal)
            return
        self._plans.pop(gi, None)
        dev = {} if control is None else {"control": control}
        store = self._state
        ema = self.options["ema_decay"] is not None
        buckets: Dict[tuple, list] = {}
        for j, (p, gr) in enumerate(zip(params, grads)):
            if gr is None:
                continue
            st = store.get(id(p))
            if st is None:
                st = _ParamState(self, p, self._init_scalars(g))
                store[id(p)] = st
            fresh = []
            for name in names:
                if name not in st:
                    dict.__setitem__(st, name, self._new_buffer(name, p, g))
                    fresh.append(name)
            if ema and "ema" not in st:
                dict.__setitem__(st, "ema", p.copy())
            key = tuple([st[k] for k in self._scalar_state]) + (frozenset(fresh),)
            buckets.setdefault(key, []).append((p, gr, st, j))
        for key, items in buckets.items():
            scal = {k: key[i] for i, k in enumerate(self._scalar_state)}
            ps = [it[0] for it in items]
            gs = [it[1] for it in items]
            states = [it[2] for it in items]
            bufs = [[st[name] for st in states] for name in names]
            emas = [st["ema"] for st in states] if ema else None
            hp = common + self._hyper(g, scal, key[-1])
            if self._kernel is None:
                self._numpy_update(g, ps, gs, states, scal, common,
                                   None if tscale is None else [tscale[it[3]] for it in items], emas)
            else:
                idx = [it[3] for it in items]
                ts = None if tscale is None else (_cuda.take(tscale, idx) if be is _cuda else [tscale[i] for i in idx])
                be.fused_step(self._kernel, hp, ps, gs, bufs, emas, ts, **dev)
            _kernels.update_dicts(states, scal)
            if complete and len(buckets) == 1:
                self._plans[gi] = (names, scal, states, bufs, emas)

    def _numpy_update(self, g, params, grads, states, scal, common, tscale, emas) -> None:
        """The custom-optimizer path: the same gradient transform as the kernels'
        ``fo_grad`` (clip value, scale/maximize, coupled weight decay, L1), then the
        user's ``update``, then the EMA epilogue."""
        gscale, wd, l1, ema_w, clip = common[:5]
        for j, (p, gr, st) in enumerate(zip(params, grads, states)):
            st.update(scal)
            s = gscale * (1.0 if tscale is None else tscale[j])
            if math.isfinite(clip) or s != 1.0 or wd != 0.0 or l1 != 0.0:
                gr = np.clip(gr, -clip, clip) if math.isfinite(clip) else gr
                gr = gr * p.dtype.type(s)
                if wd != 0.0:
                    gr = gr + p.dtype.type(wd) * p
                if l1 != 0.0:
                    gr = gr + p.dtype.type(l1) * np.sign(p)
            self.update(p, gr, st, g)
            if emas is not None:
                e = emas[j]
                e += p.dtype.type(ema_w) * (p - e)

    def _invalidate(self) -> None:
        """Forget cached plans and validated hyperparameters (state or groups changed)."""
        self._plans.clear()
        self._resolved.clear()

    # -------------------------------------------------------------------- EMA
    def swap_ema(self) -> None:
        """Exchange every parameter's values with its moving average, in place (call
        again to swap back).  Requires ``ema_decay``; parameters that never stepped are
        left alone."""
        if self.options["ema_decay"] is None:
            raise RuntimeError("swap_ema() needs an optimizer built with ema_decay=...")
        for p in self._params:
            st = self._state.get(id(p))
            if st is not None and "ema" in st:
                tmp = p.copy()
                np.copyto(p, st["ema"])
                np.copyto(st["ema"], tmp)

    @contextlib.contextmanager
    def ema_weights(self):
        """``with opt.ema_weights(): evaluate()`` runs the block with the averaged
        weights in the parameters and restores the trained weights afterwards."""
        self.swap_ema()
        try:
            yield self
        finally:
            self.swap_ema()

    # ------------------------------------------------------------ Keras style
    def apply_gradients(self, grads_and_vars: Iterable) -> None:
        """Keras spelling: ``opt.apply_gradients(zip(grads, vars))``.

        Variables not yet known are added to the first param group (an optimizer built
        without params learns its variables here, as Keras optimizers do); variables
        left out of this call are not updated.
        """
        pairs = list(grads_and_vars)
        new = []
        for k, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"grads_and_vars[{k}] must be a (gradient, variable) pair")
            var = pair[1]
            if not _is_array(var):
                raise TypeError(f"grads_and_vars[{k}]: variable must be a numpy.ndarray, got {type(var).__name__}")
            if id(var) not in self._index and all(v is not var for v in new):
                new.append(var)
        if new:
            self._learn_vars(new)
        grads: List[Optional[np.ndarray]] = [None] * len(self._params)
        try:
            for k, (gr, var) in enumerate(pairs):
                i = self._index[id(var)]
                if grads[i] is not None:
                    raise ValueError(f"grads_and_vars[{k}]: variable appears twice")
                grads[i] = gr
            self.step(grads)
        except Exception:
            if new:
                self._forget_vars(new)
            raise

    def _learn_vars(self, new: list) -> None:
        if not self.param_groups:
            g = dict(self.defaults)
            g["params"] = new
            self.add_param_group(g)
            self._auto_group = True
            return
        g0 = self.param_groups[0]
        labels = [f"variable {k}" for k in range(len(new))]
        _backend(self._params or new).check_params(new, labels)
        if self._params and new[0].dtype != self._params[0].dtype:
            raise TypeError(f"variable dtype {new[0].dtype} differs from the optimizer's {self._params[0].dtype}")
        _check_no_overlap(self._params, new, labels)
        # insert after group 0's params, keeping the flat order = group order
        g0["params"] = g0["params"] + new
        self._reindex()

    def _forget_vars(self, new: list) -> None:
        ids = {id(v) for v in new}
        for g in self.param_groups:
            g["params"] = [p for p in g["params"] if id(p) not in ids]
        for i in ids:
            self._state.pop(i, None)
        if getattr(self, "_auto_group", False) and not self.param_groups[0]["params"]:
            self.param_groups.pop(0)
        self._reindex()

    def _reindex(self) -> None:
        self._params, self._labels, self._index = [], [], {}
        groups, self.param_groups = self.param_groups, []
        for g in groups:
            self._add_group(g)

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict:
        """A plain dict of numbers and numpy arrays (copies), in torch's layout:
        ``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``,
        plus ``"kind"`` (the class name) and ``"iterations"``."""
        state = {}
        groups = []
        for g in self.param_groups:
            idx = [self._index[id(p)] for p in g["params"]]
            for i, p in zip(idx, g["params"]):
                st = self._state.get(id(p))
                if st is not None:
                    state[i] = {k: (_cuda.to_host(v) if _cuda.is_device_array(v) else v.copy() if isinstance(v, np.ndarray) else v)
                                for k, v in st.items()}
            gd = {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"}
            gd["params"] = idx
            groups.append(gd)
        if self._acc_count:
            for i, a in self._acc.items():
                state.setdefault(i, {})["grad_accum"] = _cuda.to_host(a) if _cuda.is_device_array(a) else a.copy()
        return {"kind": type(self).__name__, "iterations": self.iterations,
                "nonfinite_count": self.nonfinite_count, "accum_count": self._acc_count,
                "state": state, "param_groups": groups}

    def _all_state_names(self) -> Sequence[str]:
        """Every buffer name this optimizer can hold, whatever its flags."""
        return self._buffers

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict produced by ``state_dict`` (or torch's, converted to numpy).

        Validates the kind, group structure, hyperparameter names and values, state
        keys, shapes and dtypes before changing anything; arrays are copied and cast to
        each parameter's dtype.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        unknown_top = set(state_dict) - {"kind", "iterations", "nonfinite_count", "accum_count", "state",
                                         "param_groups"}
        if unknown_top:
            raise ValueError(f"state_dict has unknown key(s) {sorted(unknown_top)}")
        kind = state_dict.get("kind")
        me = type(self).__name__
        if kind is not None and kind != me:
            raise ValueError(f"state_dict is from a {kind} optimizer, not {me}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, this optimizer has {len(self.param_groups)}")
        new_groups = []
        old_to_param: Dict[Any, np.ndarray] = {}
        for gi, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(sg, dict) or "params" not in sg:
                raise ValueError(f"state_dict param group {gi} must be a dict with 'params'")
            sp = list(sg["params"])
            if len(sp) != len(g["params"]):
                raise ValueError(f"state_dict param group {gi} has {len(sp)} params, this optimizer's has {len(g['params'])}")
            unknown = set(sg) - set(self.defaults) - {"params"} - set(_SCHEDULER_KEYS)
            if unknown:
                raise ValueError(f"state_dict param group {gi}: unknown hyperparameter(s) {sorted(unknown)} for {me}; "
                                 "is it from another optimizer?")
            ng = {k: (sg[k] if k in sg else g[k]) for k in self.defaults}
            for k in _SCHEDULER_KEYS:     # written into groups by torch-style schedulers
                if k in sg:
                    _check_real(sg[k], f"state_dict param group {gi}: {k}")
                    ng[k] = sg[k]
            if isinstance(ng.get("betas"), list):
                ng["betas"] = tuple(ng["betas"])
            self._check_group(ng, f"state_dict param group {gi}")
            ng["params"] = g["params"]
            new_groups.append(ng)
            for key, p in zip(sp, g["params"]):
                old_to_param[key] = p
        saved_state = state_dict["state"]
        if not isinstance(saved_state, dict):
            raise ValueError("state_dict['state'] must be a dict")
        allowed = set(self._scalar_state) | set(self._all_state_names()) | {"ema", "grad_accum"}
        new_state: Dict[int, dict] = {}
        for key, st in saved_state.items():
            if key not in old_to_param:
                raise ValueError(f"state_dict state has an entry for param {key!r}, which no param group lists")
            p = old_to_param[key]
            if not isinstance(st, dict):
                raise ValueError(f"state_dict state[{key!r}] must be a dict")
            # a custom optimizer that does not declare _all_state_names may keep any keys
            bad = set(st) - allowed if (self._kernel is not None or self._all_state_names()) else set()
            if bad:
                raise ValueError(f"state_dict state[{key!r}]: unknown state key(s) {sorted(bad)} for {me}; "
                                 f"known: {sorted(allowed)}")
            ns = self._init_scalars({})
            for k, v in st.items():
                if k in self._scalar_state:
                    ns[k] = _scalar_from(v, f"state_dict state[{key!r}][{k!r}]", integer=(k == "step"))
                else:
                    a = _cuda.to_host(v) if _cuda.is_device_array(v) else np.asarray(v)
                    if a.shape != p.shape:
                        raise ValueError(f"state_dict state[{key!r}][{k!r}]: shape {a.shape} does not match the "
                                         f"parameter's shape {p.shape}")
                    if a.dtype.kind not in "fiu":
                        raise TypeError(f"state_dict state[{key!r}][{k!r}]: dtype {a.dtype} is not a real number type")
                    ns[k] = (_cuda.from_host(a, p) if _cuda.is_device_array(p)
                             else np.array(a, dtype=p.dtype, order="C", copy=True))
            new_state[id(p)] = _ParamState(self, p, ns)
        its = state_dict.get("iterations", self.iterations)
        its = _scalar_from(its, "state_dict['iterations']", integer=True)
        nonfinite = _scalar_from(state_dict.get("nonfinite_count", self.nonfinite_count),
                                 "state_dict['nonfinite_count']", integer=True)
        accum_count = _scalar_from(state_dict.get("accum_count", 0), "state_dict['accum_count']", integer=True)
        if accum_count >= self.options["gradient_accumulation_steps"] and accum_count:
            raise ValueError(f"state_dict['accum_count'] = {accum_count} is not below this optimizer's "
                             f"gradient_accumulation_steps = {self.options['gradient_accumulation_steps']}")
        accs = {i: a for i, a in ((i, new_state.get(id(p), {}).pop("grad_accum", None))
                                  for i, p in enumerate(self._params)) if a is not None}
        # commit
        for g, ng in zip(self.param_groups, new_groups):
            g.clear()
            g.update(ng)
        self._state.clear()
        self._state.update(new_state)
        self.iterations = its
        self.nonfinite_count = nonfinite
        self._acc_count = accum_count
        self._acc = accs if accum_count else {}
        self._acc_pool.update(self._acc)
        self._invalidate()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


# ---------------------------------------------------------------------- helpers
def _check_real(x, what: str, lo: Optional[float] = None, hi: Optional[float] = None,
                hi_open: bool = False) -> None:
    if not _is_number(x):
        raise TypeError(f"{what} must be a real number, got {x!r}")
    xf = float(x)
    if math.isnan(xf) or math.isinf(xf):
        raise ValueError(f"{what} must be finite, got {x!r}")
    if lo is not None and xf < lo:
        raise ValueError(f"Invalid {what}: {x!r} (must be >= {lo})")
    if hi is not None and (xf >= hi if hi_open else xf > hi):
        raise ValueError(f"Invalid {what}: {x!r} (must be {'<' if hi_open else '<='} {hi})")


def _check_betas(g: dict, where: str, n: int = 2) -> None:
    b = g["betas"]
    if not isinstance(b, (tuple, list)) or len(b) != n:
        raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {b!r}")
    for i, v in enumerate(b):
        if not _is_number(v):
            raise TypeError(f"{where}: beta parameter at index {i} must be a real number, got {v!r}")
        if not 0.0 <= float(v) < 1.0:
            raise ValueError(f"{where}: Invalid beta parameter at index {i}: {v!r} (must be in [0, 1))")


def _scalar_from(v, what: str, integer: bool = False):
    if isinstance(v, np.ndarray):
        if v.size != 1:
            raise ValueError(f"{what} must be a scalar, got an array of shape {v.shape}")
        v = v.reshape(()).item()
    elif hasattr(v, "item") and not isinstance(v, (int, float)):
        v = v.item()
    if not _is_number(v) or not math.isfinite(float(v)):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    if integer:
        if float(v) != int(v) or v < 0:
            raise ValueError(f"{what} must be a non-negative integer, got {v!r}")
        return int(v)
    return float(v)


def _check_no_overlap(existing: list, new: list, labels: list) -> None:
    """No parameter may appear twice or share memory with another parameter."""
    spans = []
    for p in existing:
        if p.nbytes:
            a = _address(p)
            spans.append((a, a + p.nbytes, -1))
    for j, p in enumerate(new):
        if any(p is q for q in existing) or any(p is q for q in new[:j]):
            raise ValueError(f"{labels[j]}: the same array appears more than once among the parameters")
        if p.nbytes:
            a = _address(p)
            spans.append((a, a + p.nbytes, j))
    spans.sort()
    for (a0, a1, j0), (b0, b1, j1) in zip(spans, spans[1:]):
        if b0 < a1:
            j = j1 if j1 >= 0 else j0
            raise ValueError(f"{labels[j]}: shares memory with another parameter")
