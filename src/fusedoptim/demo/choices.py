"""The optimizers the demos compare: every optimizer in fusedoptim's registry, found at import.

The list is not written here: it comes from ``fusedoptim.optim.registry`` (every optimizer
class exported from ``fusedoptim.optim``, with what each can be driven with), so an
optimizer added to the package appears in ``fusedoptim demo`` without a change to the demo.
Each is driven as its registry entry says:

- ``step(grads)`` optimizers take the MLP's gradients;
- a matrix-only optimizer (Muon) takes the weight matrices, and an AdamW (its fallback,
  ``FALLBACK``) the bias vectors: :class:`MatrixSplit`;
- a closure optimizer (LBFGS) takes ``step(closure)``, the closure recomputing the loss and
  the gradients on the current mini-batch, as torch users write it;
- the wrapper (Lookahead) runs around another optimizer: key ``lookahead-<name>`` (any other
  optimizer's key), ``lookahead`` alone wraps Adam; ``--lookahead K,ALPHA`` wraps every run.

What the demo adds is a learning rate that suits its MLP (``DEMO_LR``; an optimizer missing
from the table runs with its own default ``lr``) and a few variants (``VARIANTS``: SGD with
momentum).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

import numpy as np

import fusedoptim as fo
from fusedoptim.optim import registry as _registry

__all__ = ["OptSpec", "DEMO_LR", "VARIANTS", "ALIASES", "FALLBACK", "MatrixSplit", "optimizer_classes",
           "demo_optimizers", "lookahead", "with_state_dtype", "probe"]


@dataclass(frozen=True)
class OptSpec:
    """One optimizer of the comparison: CLI key, display label, fusedoptim class name, the
    demo's learning rate and any other keyword arguments; how its step is driven
    (``step_kind`` and ``matrix_only``, from the registry) and, for a wrapper, the spec of
    the optimizer it wraps (``inner``; ``lr`` goes to that one)."""

    key: str
    label: str
    cls: str
    lr: float
    kwargs: Dict[str, object] = field(default_factory=dict)
    step_kind: str = "grads"
    matrix_only: bool = False
    inner: Optional["OptSpec"] = None

    @property
    def state_dtype(self) -> str:
        """The ``state_dtype`` this spec builds with (a wrapper: its inner optimizer's)."""
        return (self.inner or self).kwargs.get("state_dtype", "float32")

    @property
    def closure(self) -> bool:
        """True when the optimizer takes ``step(closure)`` (LBFGS)."""
        return self.step_kind == "closure"

    def build(self, params, lr):
        cls = getattr(fo, self.cls)
        if self.inner is not None:
            return cls(self.inner.build(params, lr), **self.kwargs)
        if self.matrix_only:
            return MatrixSplit(cls, params, lr, self.kwargs)
        return cls(params, lr=lr, **self.kwargs)


#: The optimizer a matrix-only optimizer's demo run gives the other parameters (biases):
#: class name, lr, keyword arguments (Keller Jordan's and pytorch-optimizer's Muon recipes).
FALLBACK: Tuple[str, float, Dict[str, object]] = ("AdamW", 2e-3, {"weight_decay": 0.0})


class MatrixSplit:
    """A matrix-only optimizer (Muon) on the 2-D parameters and ``FALLBACK`` (AdamW) on the
    others, stepped together: ``step(grads)`` takes one gradient per parameter, in order.
    ``param_groups`` and ``iterations`` are the matrix optimizer's."""

    def __init__(self, cls, params, lr, kwargs):
        params = list(params)
        self.matrix = [i for i, p in enumerate(params) if getattr(p, "ndim", 0) == 2]
        self.rest = [i for i in range(len(params)) if i not in set(self.matrix)]
        if not self.matrix:
            raise ValueError(f"{cls.__name__} takes 2-D parameters and the model has none")
        self.main = cls([params[i] for i in self.matrix], lr=lr, **kwargs)
        name, fb_lr, fb_kwargs = FALLBACK
        self.fallback = getattr(fo, name)([params[i] for i in self.rest], lr=fb_lr, **fb_kwargs) if self.rest else None

    @property
    def param_groups(self):
        return self.main.param_groups

    @property
    def iterations(self) -> int:
        return self.main.iterations

    def step(self, grads) -> None:
        grads = list(grads)
        self.main.step([grads[i] for i in self.matrix])
        if self.fallback is not None:
            self.fallback.step([grads[i] for i in self.rest])


# Learning rates for the digits MLP (64-128-10, batch 32, 20 epochs), chosen for few
# epochs to 95 % test accuracy without instability (Lion, Rprop, ASGD: from sweeps over
# factors of about 3).  An optimizer not listed here runs with its class's default lr.
DEMO_LR: Dict[str, float] = {
    "SGD": 0.1, "Adagrad": 0.03, "RMSprop": 1e-3, "Adam": 2e-3, "AdamW": 2e-3, "Adamax": 5e-3,
    "NAdam": 2e-3, "RAdam": 3e-3, "Adadelta": 1.0, "Rprop": 1e-4, "Lion": 1e-3, "ASGD": 0.1,
    "LARS": 1.0,   # trust_coefficient 1e-3 scales the step by 1e-3 ‖θ‖/‖g‖
    "Ftrl": 0.1,   # the Keras default 1e-3 barely moves this MLP
    "Muon": 0.02,  # Keller Jordan's lr for hidden matrices
}
# Keyword arguments other than lr for some classes' demo runs.  Rprop is a full-batch
# method: on mini-batches its step sizes grow out of control (loss 10+ with torch's
# step_sizes=(1e-6, 50)); capped at 1e-2 it trains stably (about 92 % after 20 epochs).
# LBFGS on mini-batches: a few iterations per batch with the strong Wolfe line search.
DEMO_KWARGS: Dict[str, Dict[str, object]] = {
    "AdamW": {"weight_decay": 1e-2}, "Rprop": {"step_sizes": (1e-6, 1e-2)},
    "LBFGS": {"max_iter": 4, "history_size": 10, "line_search_fn": "strong_wolfe"},
}
#: the optimizer that key ``lookahead`` (without ``-<name>``) wraps
LOOKAHEAD_INNER = "adam"
# Extra rows: (key, label, class, lr, kwargs), listed right after their class.
VARIANTS: Tuple[OptSpec, ...] = (OptSpec("sgdm", "SGD+momentum", "SGD", 0.02, {"momentum": 0.9}),)
ALIASES = {"momentum": "sgdm", "sgd+momentum": "sgdm"}


def optimizer_classes() -> Dict[str, type]:
    """Name -> class of every optimizer in the registry (``fusedoptim.optim.registry``),
    in the order of ``fusedoptim.optim.__all__``."""
    return {name: e.cls for name, e in _registry.entries().items()}


def _default_lr(cls: type) -> float:
    """The ``lr`` default of the class's constructor (1e-3 when it has none)."""
    try:
        default = inspect.signature(cls).parameters["lr"].default
    except (KeyError, TypeError, ValueError):
        return 1e-3
    return float(default) if isinstance(default, (int, float)) and math.isfinite(default) else 1e-3


def demo_optimizers() -> Dict[str, OptSpec]:
    """key -> OptSpec for every registered optimizer (key: the class name in lower case)
    plus the variants, each right after its class.  A wrapper (Lookahead) is listed
    around ``LOOKAHEAD_INNER``; :func:`lookahead` wraps any other."""
    out: Dict[str, OptSpec] = {}
    for name, e in _registry.entries().items():
        key = name.lower()
        if e.step_kind == "wrapper":
            inner = out.get(LOOKAHEAD_INNER)
            if inner is not None:
                out[key] = replace(lookahead(inner, cls=name), key=key)
            continue
        out[key] = OptSpec(key, name, name, DEMO_LR.get(name, _default_lr(e.cls)), dict(DEMO_KWARGS.get(name, {})),
                           e.step_kind, e.matrix_only)
        for v in VARIANTS:
            if v.cls == name:
                out[v.key] = v
    return out


def lookahead(inner: OptSpec, k: Optional[int] = None, alpha: Optional[float] = None,
              cls: str = "Lookahead") -> OptSpec:
    """The spec of wrapper ``cls`` (Lookahead) around ``inner``: key
    ``lookahead-<inner key>``, label ``Lookahead(<inner label>)``, ``inner``'s lr;
    ``k`` / ``alpha`` None: the wrapper's defaults."""
    kwargs = {n: v for n, v in (("k", k), ("alpha", alpha)) if v is not None}
    return OptSpec(f"{cls.lower()}-{inner.key}", f"{cls}({inner.label})", cls, inner.lr, kwargs, "wrapper",
                   False, inner)


def with_state_dtype(spec: OptSpec, state_dtype: str, min_8bit_size: Optional[int] = None) -> OptSpec:
    """``spec`` building with ``state_dtype`` (and, for ``"int8"``, ``min_8bit_size`` when
    given): key ``<key>@<state_dtype>``, label ``<label> [<state_dtype>]``; a wrapper
    passes them to its inner optimizer.  ``"float32"`` adds no keyword (every optimizer's
    default, so those without the option, LBFGS, still run)."""
    if spec.inner is not None:
        inner = with_state_dtype(spec.inner, state_dtype, min_8bit_size)
        return replace(spec, key=f"{spec.key}@{state_dtype}", label=f"{spec.label} [{state_dtype}]", inner=inner)
    kwargs = dict(spec.kwargs)
    if state_dtype != "float32":
        kwargs["state_dtype"] = state_dtype
    if state_dtype == "int8" and min_8bit_size is not None:
        kwargs["min_8bit_size"] = min_8bit_size
    return replace(spec, key=f"{spec.key}@{state_dtype}", label=f"{spec.label} [{state_dtype}]", kwargs=kwargs)


def probe(spec: OptSpec) -> Optional[str]:
    """None when ``spec`` builds on a weight matrix and a bias vector (float32, like the
    demo's layers) and takes a step the way the demo drives it; else the error, as one
    line.  Guards the demo against an optimizer that needs something the comparison cannot
    give it."""
    w = np.full((3, 2), 0.5, np.float32)
    b = np.zeros(2, np.float32)
    gw, gb = np.full_like(w, 0.1), np.full_like(b, 0.1)
    try:
        opt = spec.build([w, b], spec.lr)
        if spec.closure:
            opt.step(lambda: (float(np.sum(gw * w) + np.sum(gb * b)), [gw, gb]))
        else:
            opt.step([gw, gb])
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here", reported
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
