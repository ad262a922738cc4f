"""fusedoptim's optimizers as ``torch.optim.Optimizer`` subclasses, for torch CPU training
loops: switch with one import line.

.. code-block:: python

    from fusedoptim.torch import AdamW            # instead of: from torch.optim import AdamW

    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    loss.backward(); opt.step(); opt.zero_grad(); sched.step()

Every fusedoptim optimizer has a class here of the same name and constructor (torch's
hyperparameters plus fusedoptim's options: ``l1``, ``global_clipnorm``, ``clipnorm``,
``clipvalue``, ``ema_decay``, ``skip_nonfinite``, ``gradient_accumulation_steps``).  The
classes are generated from :mod:`fusedoptim.optim.registry`, so a new optimizer appears here
too.  Two follow torch's other conventions: :class:`LBFGS` takes torch's ``step(closure)``
(the closure calls ``backward`` and returns the loss) and :class:`Lookahead` wraps one of
this module's optimizers.  ``Muon`` is torch.optim.Muon's (2-D parameters only).

How it works: the optimizer holds a fusedoptim optimizer (:attr:`FusedOptimizer.fused`)
over zero-copy NumPy views of the parameters' memory.  ``step()`` reads ``p.grad`` (None:
the parameter is skipped, as in torch), views each gradient, copies the param groups'
hyperparameters that changed (an LR scheduler's ``lr``) and runs one fused multi-threaded
native pass per group, in place.  Afterwards the parameters' autograd version counters are
bumped, as an in-place update under ``torch.no_grad()`` would do.

What is torch's: ``param_groups`` (dicts of tensors and hyperparameters, edited by
schedulers), ``add_param_group``, ``zero_grad``, step and state_dict hooks.  What differs:

- CPU tensors of dtype float32 or float64, C-contiguous (a ``channels_last`` weight is
  refused, naming it); the device and dtype checks run at construction;
- a parameter's memory must stay where it was (``p.data = other`` after construction is
  refused at the next step, naming the parameter); build the optimizer after
  ``model.to(...)``, as torch's documentation advises;
- ``state[p]`` gives the state with buffers as tensors sharing the optimizer's memory and
  ``step`` as a Python int; ``state_dict()`` is fusedoptim's (torch's layout, buffers as
  tensors); ``load_state_dict`` also takes a ``torch.optim`` state_dict of the same
  optimizer (torch-only group options such as ``foreach``, ``fused``, ``capturable`` are
  dropped);
- ``differentiable=True`` and sparse gradients are not supported.

Importing this module imports torch; ``import fusedoptim`` alone never does.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from . import optim as _optim
from .lookahead import Lookahead as _FoLookahead
from .optim import registry as _registry
from ._arrays import as_array
from ._state_dict import SCHEDULER_KEYS
from .optimizer import Optimizer as _FoOptimizer

__all__ = ["FusedOptimizer", "OPTIMIZERS"]

_bump = torch.autograd.graph.increment_version


def _param_groups(params) -> list:
    """The ``params`` argument of a torch optimizer as a non-empty list (of tensors or
    group dicts), with torch.optim's messages for a lone tensor and an empty list."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                        "but got " + torch.typename(params))
    groups = list(params)
    if not groups:
        raise ValueError("optimizer got an empty parameter list")
    return groups


def _param_list(group: dict) -> list:
    ps = group["params"]
    if isinstance(ps, torch.Tensor):
        return [ps]
    if isinstance(ps, set):
        raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering "
                        "of tensors in sets will change between runs. Please use a list instead.")
    return list(ps)


def _tensor(p) -> torch.Tensor:
    return p[1] if isinstance(p, tuple) and len(p) == 2 else p      # torch's (name, tensor) pairs


def _grad_view(g: torch.Tensor, what: str) -> np.ndarray:
    """A gradient ``g.numpy()`` refused (one that requires grad, CUDA, sparse...): its
    view, or the error that says why not."""
    return as_array(g.detach(), what)


class _TorchState(Mapping):
    """``opt.state[p]``: parameter ``p``'s state, buffers as tensors sharing the
    optimizer's memory (an edit of one is an edit of the optimizer's state)."""

    def __init__(self, opt: "FusedOptimizer"):
        self._opt = opt

    def __getitem__(self, p):
        view = self._opt._views[p]
        st = self._opt.fused.state.get(view)
        if st is None:
            return {}
        return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in st.items()}

    def __iter__(self):
        fstate = self._opt.fused.state
        return iter([p for p, v in self._opt._views.items() if v in fstate])

    def __len__(self) -> int:
        return len(self._opt.fused.state)

    def __contains__(self, p) -> bool:
        try:
            return self._opt._views[p] in self._opt.fused.state
        except (KeyError, TypeError):
            return False


class FusedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` running the fusedoptim optimizer :attr:`fused_class`
    (set by each generated subclass) over the parameters' memory.  See the module
    docstring for what is torch's and what differs."""

    #: the fusedoptim optimizer class this torch optimizer runs
    fused_class: type = _FoOptimizer

    def __init__(self, params, *args, **kwargs):
        groups = _param_groups(params)
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        groups = [dict(g, params=_param_list(g)) if isinstance(g, dict) else g for g in groups]
        self._views: Dict[torch.Tensor, np.ndarray] = {}
        self._ptrs: List[int] = []
        views, base = [], 0
        for gi, g in enumerate(groups):
            views.append(self._fused_group(g, gi, base))
            base += len(views[-1]["params"])
        #: the fusedoptim optimizer doing the work (its ``options``, ``iterations``,
        #: ``swap_ema()``, ``get_last_lr()``, ``nonfinite_count``...)
        self.fused = self.fused_class(views, *args, **kwargs)
        self._adding = True          # torch's __init__ adds the groups fusedoptim already holds
        try:
            super().__init__(groups, dict(self.fused.defaults))
        finally:
            self._adding = False
        self._commit_views(0)
        self.state = _TorchState(self)

    def __getstate__(self):
        raise TypeError(f"a fusedoptim.torch.{type(self).__name__} can't be pickled or deep-copied: it updates its "
                        "parameters' memory in place, and a copy would update other tensors; save and load "
                        "state_dict() instead")

    # ------------------------------------------------------------ parameters
    def _fused_group(self, g, gi: int, base: int) -> dict:
        """The fusedoptim group of torch group ``g`` (its first parameter is flat index
        ``base``): its hyperparameters and NumPy views of its tensors (checked: tensors,
        leaves, on the CPU; fusedoptim checks dtype, layout and memory next)."""
        if not isinstance(g, dict):
            raise TypeError(f"param group {gi} must be a dict, got {type(g).__name__}")
        fg = {k: v for k, v in g.items() if k not in ("params", "param_names")}
        fg["params"] = [self._param_view(_tensor(p), f"params[{base + j}] (group {gi}, index {j})")
                        for j, p in enumerate(g["params"])]
        return fg

    @staticmethod
    def _param_view(p, what: str) -> np.ndarray:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{what}: optimizer can only optimize Tensors, but one of the params is "
                            + torch.typename(p))
        if not (p.is_leaf or p.retains_grad):
            raise ValueError(f"{what}: can't optimize a non-leaf Tensor")
        return as_array(p.detach(), what)

    def _commit_views(self, first: int) -> None:
        """Remember the views and data pointers of groups ``first`` onwards."""
        for fg, g in zip(self.fused.param_groups[first:], self.param_groups[first:]):
            for v, p in zip(fg["params"], g["params"]):
                p = _tensor(p)
                self._views[p] = v
                self._ptrs.append(p.data_ptr())

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``: the group is checked by torch and by fusedoptim
        (device, dtype, layout, shared memory, hyperparameters) before either keeps it."""
        if self._adding:
            return super().add_param_group(param_group)
        if isinstance(param_group, dict) and "params" in param_group:
            param_group["params"] = _param_list(param_group)
        n = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            with self.fused.lock:
                self.fused.add_param_group(self._fused_group(self.param_groups[-1], n, len(self._ptrs)))
        except Exception:
            del self.param_groups[n:]
            raise
        self._commit_views(n)

    # ------------------------------------------------------------------ step
    def _sync_groups(self) -> None:
        """Copy hyperparameters edited in ``param_groups`` (a scheduler's lr) to the fused
        optimizer's groups; it re-validates a group only when something changed."""
        keys = self.fused.defaults
        for tg, fg in zip(self.param_groups, self.fused.param_groups):
            for k in keys:
                v = tg[k]
                if fg[k] is not v:
                    fg[k] = v

    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One fused update of every parameter with a ``.grad`` (torch semantics: a
        parameter whose grad is None is skipped).  Returns ``closure()`` if given (run with
        grad enabled, before the update)."""
        return self._step_through(self.fused, closure)

    def _step_through(self, stepper, closure):
        """step(), the gradients going to ``stepper.step(grads)`` (the fused optimizer, or
        a fusedoptim Lookahead around it)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fused = self.fused
        if len(self.param_groups) != len(fused.param_groups):
            raise RuntimeError("param_groups was changed by hand; use add_param_group")
        params = [p for tg in self.param_groups for p in tg["params"]]
        if [p.data_ptr() for p in params] != self._ptrs:
            self._moved(params)
        gs = [p.grad for p in params]
        try:
            grads = [None if g is None else g.numpy() for g in gs]   # dense CPU grads: zero-copy views
        except (RuntimeError, TypeError):
            grads = [None if g is None else _grad_view(g, f"{self.fused.labels[i]}: grad") for i, g in enumerate(gs)]
        stepped = [p for p, g in zip(params, gs) if g is not None]
        self._sync_groups()
        stepper.step(grads)
        if stepped and fused.last_step_applied:
            _bump(stepped)
        return loss

    def _moved(self, params) -> None:
        """Raise naming the first parameter whose memory is not where it was."""
        labels = self.fused.labels
        for i, p in enumerate(params):
            if i >= len(self._ptrs) or p.data_ptr() != self._ptrs[i]:
                break
        else:
            i = len(params)
        what = labels[i] if i < len(labels) else f"params[{i}]"
        raise RuntimeError(f"{what}: the parameter's memory changed since it was given to the optimizer "
                           "(p.data = ..., model.to(...) or a param_groups list edited by hand); "
                           "fusedoptim.torch updates parameters in place, so build the optimizer after moving "
                           "or replacing them (add_param_group adds new ones)")

    # ----------------------------------------------------------- state dicts
    def state_dict(self) -> Dict[str, Any]:
        """fusedoptim's state_dict (torch's layout: ``{"state": {index: {...}},
        "param_groups": [...]}`` plus ``kind`` and counters), buffers as CPU tensors
        (copies); the param groups are this optimizer's, scheduler keys included.
        Runs torch's state_dict hooks."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        self._sync_groups()
        sd = self.fused.state_dict()
        sd["state"] = {i: {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                       for i, st in sd["state"].items()}
        sd["param_groups"] = [dict({k: v for k, v in tg.items() if k != "params"}, params=fg["params"])
                              for tg, fg in zip(self.param_groups, sd["param_groups"])]
        for hook in self._optimizer_state_dict_post_hooks.values():
            out = hook(self, sd)
            if out is not None:
                sd = out
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict`, or a ``torch.optim`` state_dict of the same
        optimizer (its step counts become ints, torch-only group options are dropped).
        Everything is checked before anything changes.  Runs torch's load hooks."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = hook(self, state_dict)
            if out is not None:
                state_dict = out
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        fused = self.fused
        scalars = set(fused.scalar_state)
        keep = set(fused.defaults) | set(SCHEDULER_KEYS) | {"params"}

        def host(k, v):
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu()
                return v.item() if k in scalars and v.dim() == 0 else v.numpy()
            return v

        sd = dict(state_dict)
        state = state_dict["state"]
        if isinstance(state, dict):
            sd["state"] = {i: ({k: host(k, v) for k, v in st.items()} if isinstance(st, dict) else st)
                           for i, st in state.items()}
        sd["param_groups"] = [({k: v for k, v in g.items() if k in keep} if isinstance(g, dict) else g)
                              for g in state_dict["param_groups"]]
        fused.load_state_dict(sd)
        for tg, fg, sg in zip(self.param_groups, fused.param_groups, state_dict["param_groups"]):
            for k, v in fg.items():
                if k != "params":
                    tg[k] = v
            if "param_names" in sg and "param_names" in tg:
                tg["param_names"] = sg["param_names"]
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


def _subclass(fo_cls: type) -> type:
    name = fo_cls.__name__
    doc = (f"``torch.optim.Optimizer`` running :class:`fusedoptim.{name}` (same constructor) fused over "
           f"the parameters' memory; see :mod:`fusedoptim.torch`.\n\n" + (fo_cls.__doc__ or ""))
    cls = type(name, (FusedOptimizer,), {"fused_class": fo_cls, "__doc__": doc, "__module__": __name__,
                                         "__qualname__": name})
    try:
        cls.__signature__ = inspect.signature(fo_cls)
    except (TypeError, ValueError):
        pass
    return cls


class LBFGS(torch.optim.Optimizer):
    """``torch.optim.LBFGS`` (same constructor and defaults) running
    :class:`fusedoptim.LBFGS` over the parameters' memory, with torch's closure
    convention: ``closure()`` zeroes the gradients, computes the loss, calls
    ``loss.backward()`` and returns the loss; the gradients are read from ``p.grad``
    (None counts as zeros, as torch).  ``step(closure)`` returns the first closure's loss,
    as torch.  The trajectory is torch's (``tests/test_torch_interop.py`` compares them).

    One param group (as torch); float32 or float64 CPU tensors of one dtype, C-contiguous.
    ``state_dict()`` / ``load_state_dict`` are :class:`fusedoptim.LBFGS`'s (flat NumPy
    vectors; the state lives in :attr:`fused`)."""

    fused_class = _optim.LBFGS
    step_kind = "closure"

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None):
        groups = _param_groups(params)
        if isinstance(groups[0], dict):
            if len(groups) != 1:
                raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
            opts = {k: v for k, v in groups[0].items() if k != "params"}
            tensors = _param_list(groups[0])
        else:
            opts, tensors = {}, groups
        views = [FusedOptimizer._param_view(_tensor(p), f"params[{j}]") for j, p in enumerate(tensors)]
        kw = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                  tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn)
        #: the fusedoptim.LBFGS doing the work (its ``state``, ``state_dict()``)
        self.fused = _optim.LBFGS([dict(opts, params=views)], **kw)
        fg = self.fused.param_groups[0]
        super().__init__([{"params": tensors}], {k: v for k, v in fg.items() if k != "params"})
        self._tensors = [_tensor(p) for p in tensors]

    def __getstate__(self):
        raise TypeError("a fusedoptim.torch.LBFGS can't be pickled or deep-copied: it updates its parameters' "
                        "memory in place; save state_dict() instead")

    def step(self, closure=None):
        """One L-BFGS step (up to ``max_iter`` iterations); returns the first closure's
        loss.  ``closure`` is required (it is called several times)."""
        if closure is None or not callable(closure):
            raise TypeError("LBFGS.step needs a closure: step(closure), where closure() zeroes the gradients, "
                            "computes the loss, calls loss.backward() and returns the loss")
        tensors = self._tensors
        first = []

        def numpy_closure():
            with torch.enable_grad():
                loss = closure()
            if not first:
                first.append(loss)
            grads = [None if t.grad is None else _grad_view(t.grad, f"params[{j}]: grad")
                     for j, t in enumerate(tensors)]
            return (float(loss), grads)

        fg, tg = self.fused.param_groups[0], self.param_groups[0]
        for k in fg:
            if k != "params":
                fg[k] = tg[k]          # a scheduler's lr, or an edit by hand
        with torch.no_grad():
            self.fused.step(numpy_closure)
        _bump(tensors)
        return first[0] if first else None

    def state_dict(self):
        return self.fused.state_dict()

    def load_state_dict(self, state_dict):
        self.fused.load_state_dict(state_dict)
        for k, v in self.fused.param_groups[0].items():
            if k != "params":
                self.param_groups[0][k] = v


class Lookahead:
    """:class:`fusedoptim.Lookahead` around a :mod:`fusedoptim.torch` optimizer:
    ``Lookahead(fusedoptim.torch.SGD(model.parameters(), lr=0.1), k=5, alpha=0.5)``;
    ``step()`` reads ``p.grad`` as the inner optimizer does, steps it and pulls the
    parameters toward the slow weights every ``k`` steps (one native call).
    ``param_groups`` are the inner optimizer's (LR schedulers edit them through it);
    ``state_dict()`` / ``load_state_dict`` are :class:`fusedoptim.Lookahead`'s."""

    step_kind = "wrapper"

    def __init__(self, optimizer, k: int = 5, alpha: float = 0.5, pullback_momentum: str = "none"):
        if not isinstance(optimizer, FusedOptimizer):
            raise TypeError("fusedoptim.torch.Lookahead wraps a fusedoptim.torch optimizer (e.g. "
                            f"fusedoptim.torch.SGD(model.parameters())), got {type(optimizer).__name__}")
        self.optimizer = optimizer
        #: the fusedoptim.Lookahead around ``optimizer.fused``
        self.fused = _FoLookahead(optimizer.fused, k, alpha, pullback_momentum)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def step(self, closure=None):
        self.optimizer._sync_groups()
        return self.optimizer._step_through(self.fused, closure)

    def state_dict(self):
        self.optimizer._sync_groups()
        return self.fused.state_dict()

    def load_state_dict(self, state_dict):
        self.fused.load_state_dict(state_dict)
        for tg, fg in zip(self.optimizer.param_groups, self.optimizer.fused.param_groups):
            for k, v in fg.items():
                if k != "params":
                    tg[k] = v


#: name -> torch optimizer class, one per optimizer of :mod:`fusedoptim.optim`'s registry
OPTIMIZERS: Dict[str, type] = {}
for _name, _entry in _registry.entries().items():
    if _entry.step_kind == "grads":
        OPTIMIZERS[_name] = globals()[_name] = _subclass(_entry.cls)
    else:                                  # LBFGS (closure), Lookahead (wrapper): written above
        OPTIMIZERS[_name] = globals()[_name]
    __all__.append(_name)
del _name, _entry
