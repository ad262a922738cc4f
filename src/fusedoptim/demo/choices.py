"""The optimizers the demos compare: every optimizer class fusedoptim exports, found at import.

The list is not written here: it comes from ``fusedoptim.optim.__all__`` (the package's
optimizer registry: every built-in optimizer is exported there and from ``fusedoptim``),
so an optimizer added to the package appears in ``fusedoptim demo`` without a change to
the demo.  What the demo adds is a learning rate that suits its MLP (``DEMO_LR``; an
optimizer missing from the table runs with its own default ``lr``) and a few variants
(``VARIANTS``: SGD with momentum).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

import fusedoptim as fo
from fusedoptim import optim as _optim

__all__ = ["OptSpec", "DEMO_LR", "VARIANTS", "ALIASES", "optimizer_classes", "demo_optimizers", "probe"]


@dataclass(frozen=True)
class OptSpec:
    """One optimizer of the comparison: CLI key, display label, fusedoptim class name, the
    demo's learning rate and any other keyword arguments."""

    key: str
    label: str
    cls: str
    lr: float
    kwargs: Dict[str, object] = field(default_factory=dict)

    def build(self, params, lr):
        return getattr(fo, self.cls)(params, lr=lr, **self.kwargs)


# Learning rates for the digits MLP (64-128-10, batch 32, 20 epochs), chosen for few
# epochs to 95 % test accuracy without instability (Lion, Rprop, ASGD: from sweeps over
# factors of about 3).  An optimizer not listed here runs with its class's default lr.
DEMO_LR: Dict[str, float] = {
    "SGD": 0.1, "Adagrad": 0.03, "RMSprop": 1e-3, "Adam": 2e-3, "AdamW": 2e-3, "Adamax": 5e-3,
    "NAdam": 2e-3, "RAdam": 3e-3, "Adadelta": 1.0, "Rprop": 1e-4, "Lion": 1e-3, "ASGD": 0.1,
    "LARS": 1.0,   # trust_coefficient 1e-3 scales the step by 1e-3 ‖θ‖/‖g‖
    "Ftrl": 0.1,   # the Keras default 1e-3 barely moves this MLP
}
# Keyword arguments other than lr for some classes' demo runs.  Rprop is a full-batch
# method: on mini-batches its step sizes grow out of control (loss 10+ with torch's
# step_sizes=(1e-6, 50)); capped at 1e-2 it trains stably (about 92 % after 20 epochs).
DEMO_KWARGS: Dict[str, Dict[str, object]] = {"AdamW": {"weight_decay": 1e-2}, "Rprop": {"step_sizes": (1e-6, 1e-2)}}
# Extra rows: (key, label, class, lr, kwargs), listed right after their class.
VARIANTS: Tuple[OptSpec, ...] = (OptSpec("sgdm", "SGD+momentum", "SGD", 0.02, {"momentum": 0.9}),)
ALIASES = {"momentum": "sgdm", "sgd+momentum": "sgdm"}


def optimizer_classes() -> Dict[str, type]:
    """Name -> class of every optimizer in ``fusedoptim.optim.__all__``, in that order."""
    out = {}
    for name in getattr(_optim, "__all__", ()):
        obj = getattr(_optim, name, None)
        if isinstance(obj, type) and issubclass(obj, fo.Optimizer) and obj is not fo.Optimizer:
            out[name] = obj
    return out


def _default_lr(cls: type) -> float:
    """The ``lr`` default of the class's constructor (1e-3 when it has none)."""
    try:
        default = inspect.signature(cls).parameters["lr"].default
    except (KeyError, TypeError, ValueError):
        return 1e-3
    return float(default) if isinstance(default, (int, float)) and math.isfinite(default) else 1e-3


def demo_optimizers() -> Dict[str, OptSpec]:
    """key -> OptSpec for every exported optimizer (key: the class name in lower case) plus
    the variants, each right after its class."""
    out: Dict[str, OptSpec] = {}
    for name, cls in optimizer_classes().items():
        key = name.lower()
        out[key] = OptSpec(key, name, name, DEMO_LR.get(name, _default_lr(cls)), dict(DEMO_KWARGS.get(name, {})))
        for v in VARIANTS:
            if v.cls == name:
                out[v.key] = v
    return out


def probe(spec: OptSpec) -> Optional[str]:
    """None when ``spec`` builds on a weight matrix and a bias vector (float32, like the
    demo's layers) and takes a step from gradients; else the error, as one line.  Guards
    the demo against an optimizer that needs something the comparison cannot give it
    (another optimizer to wrap, a closure instead of gradients, ...)."""
    w = np.full((3, 2), 0.5, np.float32)
    b = np.zeros(2, np.float32)
    try:
        opt = spec.build([w, b], spec.lr)
        opt.step([np.full_like(w, 0.1), np.full_like(b, 0.1)])
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here", reported
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
