"""The extension API: the hooks an optimizer class implements, with their defaults.

:class:`~fusedoptim.Optimizer` (the facade that users call) inherits them; the engine and
the state_dict code call them.  Two kinds of optimizer implement them:

- a **built-in** (native) optimizer sets ``spec`` (an :class:`~fusedoptim._spec.AlgoSpec`
  naming its element rule in ``csrc/fusedoptim/rules.h``), and implements
  :meth:`kernel_flags` and :meth:`kernel_scalars` (its per-step scalars by name), plus
  :meth:`check_group` for its own hyperparameters; docs/ARCHITECTURE.md has the recipe;
- a **custom** optimizer leaves ``spec`` None, lists its ``buffers`` and writes
  :meth:`update` in NumPy (examples/custom_optimizer.py).

Every name here is public and documented: nothing outside a module reaches for another
module's underscore names.
"""
from __future__ import annotations

from typing import Dict, Sequence

from ._backends import backend_for
from .validate import check_hyperparameters

__all__ = ["ExtensionAPI"]


class ExtensionAPI:
    """The hooks of an optimizer class (see the module docstring)."""

    #: the native algorithm, or None for a NumPy :meth:`update`
    spec = None
    #: every state buffer the optimizer can keep (what ``load_state_dict`` accepts)
    buffers: Sequence[str] = ()
    #: per-parameter scalar state (always includes ``"step"``)
    scalar_state: Sequence[str] = ("step",)
    #: a group-level update for optimizers without a ``spec`` whose step is not
    #: element-wise (Muon): ``update_group(g, common, scal, params, grads, states, tscale,
    #: emas)`` updates every parameter of a bucket at once (``common``: the common block
    #: by name, ``tscale``: per-parameter gradient scales or None, ``emas``: EMA buffers or
    #: None, both to be applied by the method).  None: the per-parameter :meth:`update`.
    update_group = None
    #: what ``step`` takes: ``"grads"`` (every :class:`~fusedoptim.Optimizer`); LBFGS says
    #: ``"closure"``, Lookahead ``"wrapper"`` (read by :mod:`fusedoptim.optim.registry`)
    step_kind = "grads"
    #: True when only 2-D parameters are accepted (Muon): others need a second optimizer
    matrix_only = False
    #: True when the weights are computed from the state rather than moved by a step
    #: (FTRL-proximal, schedule-free): a first-step descent only from zero weights (FTRL),
    #: and the weights carry the precision of bfloat16 state (tests/test_lowprec.py)
    weights_from_state = False

    def __init_subclass__(cls, **kw):  # noqa: D105
        super().__init_subclass__(**kw)
        if cls.spec is not None and "buffers" not in cls.__dict__:
            cls.buffers = cls.spec.buffers       # a built-in's buffers are its spec's

    def check_group(self, g: dict, where: str) -> None:
        """Validate a group's hyperparameters; subclasses extend.  Runs at construction, in
        add_param_group / load_state_dict, and before a step after the group changed."""
        check_hyperparameters(g, where)

    def state_names(self, g: dict) -> Sequence[str]:
        """The buffers a custom optimizer's group needs (default: all of ``buffers``);
        built-in optimizers get them from their spec and flags."""
        return self.buffers

    def init_buffer(self, name: str, p, g: dict):
        """Initial value of a state buffer (default: zeros like the parameter)."""
        return backend_for([p]).zeros_like(p)

    def init_scalars(self, g: dict) -> dict:
        return {k: 0 for k in self.scalar_state}

    def kernel_flags(self, g: dict) -> Dict[str, bool]:
        """The spec's flags for this group, by name."""
        return {}

    def kernel_scalars(self, g: dict, scal: dict, fresh: frozenset) -> Dict[str, float]:
        """Advance ``scal`` (this bucket's scalar state) by one step and return the
        spec's per-step scalars by name; ``fresh`` names the buffers created this step."""
        scal["step"] += 1
        return {}

    def common_scalars(self, g: dict) -> Dict[str, float]:
        """The common block of every rule (rules.h ``FO_COMMON_SCALARS``): gradient scale
        (sign of maximize), coupled weight decay, L1, EMA weight, clip value."""
        wd = 0.0 if g.get("decoupled_weight_decay") else g.get("weight_decay", 0.0)
        ema = self.options["ema_decay"]
        return {"gscale": -1.0 if g.get("maximize") else 1.0, "weight_decay": float(wd),
                "l1": float(g.get("l1", 0.0)), "ema_weight": 0.0 if ema is None else 1.0 - ema,
                "clip_value": float("inf")}

    def update(self, param, grad, state: dict, group: dict) -> None:
        """NumPy update of one parameter, for custom optimizers (``spec = None``).

        Mutate ``param`` and the arrays in ``state`` in place; ``state["step"]`` has
        already been incremented and ``group["lr"]`` holds this step's learning rate.
        ``grad`` arrives transformed exactly as the built-in kernels see it: clipped,
        scaled (``grad_scale``), negated if ``maximize``, plus ``weight_decay * param``
        if the group has a ``weight_decay`` and ``l1 * sign(param)``.  Do not modify
        ``grad`` in place.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement update() or set a spec")
