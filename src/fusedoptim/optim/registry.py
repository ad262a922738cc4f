"""The optimizer registry: every public optimizer class and what it can be driven with.

Built from ``fusedoptim.optim.__all__`` (every class exported there, the built-ins, Muon,
LBFGS and Lookahead) and from what each class declares about itself (class attributes, the
defaults on :class:`~fusedoptim.extension.ExtensionAPI`):

- ``step_kind``: ``"grads"`` (``opt.step(grads)``), ``"closure"`` (``opt.step(closure)``,
  the closure returning ``(loss, grads)``: LBFGS) or ``"wrapper"`` (built around another
  optimizer: Lookahead);
- ``matrix_only``: the optimizer takes 2-D parameters only (Muon); a user gives the others
  to a second optimizer (the demo and ``.ci/smoke.py`` use AdamW);
- ``weights_from_state``: the weights are computed from the optimizer's state rather than
  moved by a step (FTRL-proximal, schedule-free): a descent on the first step only from
  zero weights (FTRL), and the weights carry the precision of low-precision state.

The demo, :mod:`fusedoptim.torch`, the benchmark and ``.ci/smoke.py`` read this registry, so
an optimizer exported from ``fusedoptim.optim`` (the recipe in docs/ARCHITECTURE.md) joins
them all without a list to edit.

    >>> from fusedoptim.optim import registry
    >>> registry.entries()["Muon"].matrix_only
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["Entry", "STEP_KINDS", "entries", "entry", "info"]

#: what ``step`` takes, per kind
STEP_KINDS = ("grads", "closure", "wrapper")


@dataclass(frozen=True)
class Entry:
    """One registered optimizer: its public name, class and capabilities."""

    name: str
    cls: type
    step_kind: str = "grads"
    matrix_only: bool = False
    weights_from_state: bool = False

    @property
    def steps_any_shape(self) -> bool:
        """``opt.step(grads)`` on any list of parameters (a weight matrix and a bias vector)."""
        return self.step_kind == "grads" and not self.matrix_only


def info(cls: type, name: Optional[str] = None) -> Entry:
    """The registry entry of optimizer class ``cls`` (read from its class attributes)."""
    kind = getattr(cls, "step_kind", "grads")
    if kind not in STEP_KINDS:
        raise ValueError(f"{cls.__name__}.step_kind must be one of {STEP_KINDS}, got {kind!r}")
    return Entry(name or cls.__name__, cls, kind, bool(getattr(cls, "matrix_only", False)),
                 bool(getattr(cls, "weights_from_state", False)))


def _is_optimizer(obj) -> bool:
    from ..optimizer import Optimizer
    if not isinstance(obj, type) or obj is Optimizer:
        return False
    return issubclass(obj, Optimizer) or getattr(obj, "step_kind", None) in STEP_KINDS


def entries() -> Dict[str, Entry]:
    """name -> :class:`Entry` of every optimizer class in ``fusedoptim.optim.__all__``, in
    that order (read at call time: an optimizer added to the package is in it)."""
    from .. import optim
    out: Dict[str, Entry] = {}
    for name in getattr(optim, "__all__", ()):
        obj = getattr(optim, name, None)
        if _is_optimizer(obj):
            out[name] = info(obj, name)
    return out


def entry(name: str) -> Entry:
    """The entry of one optimizer by its class name (KeyError naming the choices)."""
    e = entries()
    if name not in e:
        raise KeyError(f"no optimizer {name!r} in the registry; choose from {', '.join(e)}")
    return e[name]
