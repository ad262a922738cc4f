"""The parameter registry: param groups, per-parameter state, the flat parameter list and
the names used in error messages.

An :class:`~fusedoptim.Optimizer` owns one :class:`ParamRegistry`.  Other modules read
``registry.params`` and ``registry.labels`` (also exposed as ``optimizer.params`` /
``optimizer.labels``); nothing reaches into its private attributes.  Every change goes
through a method that validates first and commits second, so a rejected call leaves the
groups, the state and the caches exactly as they were.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from ._backends import backend_for, is_array
from ._spec import state_shape

__all__ = ["Group", "ParamState", "StateView", "ParamRegistry", "check_no_overlap", "required"]


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


#: Default value of a hyperparameter every param group must give (torch's ``required``).
required = _Required()


class Group(dict):
    """A param group: a plain dict whose every mutation bumps ``version``, so the
    optimizer re-validates a group's hyperparameters only after they change."""

    __slots__ = ("version",)

    def __init__(self, *a, **kw):
        dict.__init__(self, *a, **kw)
        self.version = 0

    def __setitem__(self, k, v):
        dict.__setitem__(self, k, v)
        self.version += 1

    def __delitem__(self, k):
        dict.__delitem__(self, k)
        self.version += 1

    def __ior__(self, other):
        self.update(other)
        return self

    def update(self, *a, **kw):
        dict.update(self, *a, **kw)
        self.version += 1

    def setdefault(self, k, default=None):
        self.version += 1
        return dict.setdefault(self, k, default)

    def pop(self, *a):
        self.version += 1
        return dict.pop(self, *a)

    def popitem(self):
        self.version += 1
        return dict.popitem(self)

    def clear(self):
        dict.clear(self)
        self.version += 1

    def copy(self):
        return dict(self)

    def __reduce__(self):
        return (dict, (dict(self),))


class ParamState(dict):
    """One parameter's state.  Assigning or deleting a key (``opt.state[p]["step"] = 0``,
    a replaced buffer) is checked against the parameter and calls ``on_change`` (the
    optimizer drops its cached plans, so the next step uses the new values)."""

    __slots__ = ("_param", "_on_change")

    def __init__(self, param, on_change: Callable[[], None], init=()):
        dict.__init__(self, init)
        self._param = param
        self._on_change = on_change

    def __setitem__(self, key, value):
        p = self._param
        if is_array(value):
            if value.shape != state_shape(key, p.shape) or value.dtype != p.dtype:
                raise ValueError(f"state[{key!r}]: expected an array of shape {state_shape(key, p.shape)} and "
                                 f"dtype {p.dtype}, got "
                                 f"shape {value.shape} and dtype {value.dtype}")
            if not value.flags.c_contiguous or not value.flags.writeable or not value.flags.aligned:
                raise ValueError(f"state[{key!r}]: the array must be C-contiguous, aligned and writeable")
            if type(value) is not type(p):
                raise TypeError(f"state[{key!r}]: expected a {type(p).__name__}, got {type(value).__name__}")
        dict.__setitem__(self, key, value)
        self._on_change()

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self._on_change()

    def __reduce__(self):
        return (dict, (dict(self),))


class StateView:
    """``opt.state[param]`` -> that parameter's state dict (keyed by identity)."""

    def __init__(self, store: Dict[int, ParamState]):
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


def _group_params(group) -> list:
    ps = group.get("params") if isinstance(group, dict) else None
    if is_array(ps):
        return [ps]
    return list(ps) if ps is not None else []


def check_no_overlap(existing: List, new: List, labels: List[str]) -> None:
    """No parameter may appear twice or share memory with another parameter: one sort of
    the memory spans, O(n log n) in the number of parameters."""
    seen = {id(p) for p in existing}
    for j, p in enumerate(new):
        if id(p) in seen:
            raise ValueError(f"{labels[j]}: the same array appears more than once among the parameters")
        seen.add(id(p))
    every = list(existing) + list(new)
    rows = backend_for(every).param_spans(every)     # (start, end, index) sorted by start
    bad = np.flatnonzero(rows[1:, 0] < rows[:-1, 1])
    if bad.size:
        k = int(bad[0])
        j = max(int(rows[k, 2]), int(rows[k + 1, 2])) - len(existing)   # the later one is new
        raise ValueError(f"{labels[j]}: shares memory with another parameter")


class ParamRegistry:
    """Param groups (torch's list of dicts), per-parameter state keyed by identity, the
    flat parameter list in group order and each parameter's label."""

    def __init__(self, defaults: dict, check_group: Callable[[dict, str], None], on_change: Callable[[], None]):
        self.defaults = defaults
        self.groups: List[dict] = []
        self.store: Dict[int, ParamState] = {}
        self._check_group = check_group
        self._on_change = on_change
        #: every parameter, flat, in group order (the order gradients are given in); read-only
        self.params: List = []
        #: ``params[i] (group g, index j)`` for each parameter, aligned with ``params``; read-only
        self.labels: List[str] = []
        #: the backend of the parameters (CPU for NumPy arrays, CUDA for CuPy ones)
        self.backend = backend_for([])
        self._index: Dict[int, int] = {}
        self._spans = None
        self.auto_group = False          # group 0 was created by apply_gradients

    # ----------------------------------------------------------------- reading
    def index(self, param) -> Optional[int]:
        """The flat index of ``param`` (by identity), or None."""
        return self._index.get(id(param))

    def spans(self):
        """The memory spans of the parameters (cached; for the gradient aliasing check)."""
        if self._spans is None:
            self._spans = self.backend.param_spans(self.params)
        return self._spans

    def new_state(self, param, init) -> ParamState:
        return ParamState(param, self._on_change, init)

    # --------------------------------------------------------------- groups
    def stage(self, groups: Iterable, first_index: int = 0) -> List[dict]:
        """Validate param groups (dicts with ``"params"``) against the registry and each
        other; return them completed with defaults, ready for :meth:`add`."""
        staged, extra = [], []
        for i, group in enumerate(groups):
            g = self._stage_one(group, first_index + i, extra)
            extra.extend(g["params"])
            staged.append(g)
        return staged

    def _stage_one(self, group, gi: int, extra: list) -> dict:
        if not isinstance(group, dict):
            raise TypeError(f"param group {gi} must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"param group {gi} has no 'params' entry")
        params = _group_params(group)
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group {gi}: unknown hyperparameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.defaults)}")
        g = {"params": params}
        for k, v in self.defaults.items():
            if k in group:
                g[k] = group[k]
            elif v is required:
                raise ValueError(f"param group {gi} didn't specify a value of required optimization parameter {k}")
            else:
                g[k] = v
        earlier = self.params + extra          # params added before, or staged in the same call
        labels = [f"params[{len(earlier) + j}] (group {gi}, index {j})" for j in range(len(params))]
        self.check_new(params, labels, earlier)
        self._check_group(g, f"param group {gi}")
        return g

    def check_new(self, new: list, labels: List[str], earlier: Optional[list] = None) -> None:
        """Raise unless ``new`` arrays may join ``earlier`` ones (default: the registry's):
        supported arrays of one dtype and device, no duplicates, no shared memory."""
        earlier = self.params if earlier is None else earlier
        backend_for(earlier or new).check_params(new, labels)
        if new and earlier and new[0].dtype != earlier[0].dtype:
            raise TypeError(f"{labels[0]}: dtype {new[0].dtype} differs from {earlier[0].dtype} of the "
                            "optimizer's other parameters; float32 and float64 can't be mixed")
        check_no_overlap(earlier, new, labels)

    def add(self, g: dict) -> None:
        """Append a staged group."""
        self._on_change()
        self._spans = None
        gi, n0, ps = len(self.groups), len(self.params), g["params"]
        self._index.update(zip(map(id, ps), range(n0, n0 + len(ps))))
        self.labels += [f"params[{n0 + j}] (group {gi}, index {j})" for j in range(len(ps))]
        self.params += ps
        self.backend = backend_for(self.params)
        self.groups.append(g if type(g) is Group else Group(g))

    # ----------------------------------------------------- Keras-style variables
    def learn(self, new: list) -> None:
        """Add variables seen by ``apply_gradients`` of an optimizer built without params:
        the first time into a new group 0, later appended to it."""
        if not self.groups:
            g = dict(self.defaults)
            g["params"] = new
            self.add(self.stage([g])[0])
            self.auto_group = True
            return
        self.check_new(new, [f"variable {k}" for k in range(len(new))])
        g0 = self.groups[0]
        g0["params"] = g0["params"] + new       # keeps the flat order = group order
        self._reindex()

    def gradients_of_pairs(self, pairs: list, adopt: bool):
        """Keras' ``grads_and_vars`` as a gradient list in parameter order (None where a
        variable is absent), learning unknown variables first when ``adopt`` (an optimizer
        built without parameters), else refusing them: returns ``(grads, new)``; call
        :meth:`forget` with ``new`` if the step that follows fails."""
        new, seen, index = [], set(), self._index
        for k, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"grads_and_vars[{k}] must be a (gradient, variable) pair")
            var = pair[1]
            if type(var) is not np.ndarray and not is_array(var):
                raise TypeError(f"grads_and_vars[{k}]: variable must be a numpy.ndarray, got {type(var).__name__}")
            key = id(var)
            if key not in index and key not in seen:
                if not adopt:
                    raise ValueError(f"grads_and_vars[{k}]: the variable (shape {var.shape}, dtype {var.dtype}) is "
                                     "not one of the optimizer's parameters; an optimizer built with parameters "
                                     "adopts no new ones: pass them at construction or with add_param_group")
                seen.add(key)
                new.append(var)
        if new:
            self.learn(new)
        grads = [None] * len(self.params)
        try:
            for k, (gr, var) in enumerate(pairs):
                i = self._index[id(var)]
                if grads[i] is not None:
                    raise ValueError(f"grads_and_vars[{k}]: variable appears twice")
                grads[i] = gr
        except Exception:
            if new:
                self.forget(new)
            raise
        return grads, new

    def swap(self, key: str) -> None:
        """Exchange every parameter's values with its state buffer ``key`` (the EMA), in
        place; parameters without that buffer are left alone."""
        for p in self.params:
            st = self.store.get(id(p))
            if st is not None and key in st:
                tmp = p.copy()
                p[...] = st[key]
                st[key][...] = tmp

    def forget(self, new: list) -> None:
        """Undo :meth:`learn` (the step that followed it failed)."""
        ids = {id(v) for v in new}
        for g in self.groups:
            g["params"] = [p for p in g["params"] if id(p) not in ids]
        for i in ids:
            self.store.pop(i, None)
        if self.auto_group and not self.groups[0]["params"]:
            self.groups.pop(0)
        self._reindex()

    def _reindex(self) -> None:
        self.params, self.labels, self._index = [], [], {}
        self.backend = backend_for([])
        groups, self.groups = self.groups, []
        for g in groups:
            self.add(g)

    def replace_groups(self, new_groups: List[dict]) -> None:
        """Give every group the hyperparameters of ``new_groups`` (same params)."""
        for g, ng in zip(self.groups, new_groups):
            g.clear()
            g.update(ng)

    # ------------------------------------------------------------- snapshots
    def group_indices(self) -> List[List[int]]:
        return [[self._index[id(p)] for p in g["params"]] for g in self.groups]

    def to_host(self, v):
        """A host copy of a state value (arrays are copied, numbers returned)."""
        if is_array(v):
            return backend_for([v]).to_host(v)
        return v

    def from_host(self, a: np.ndarray, like):
        """A C-contiguous copy of ``a`` with ``like``'s dtype, where ``like`` lives."""
        return backend_for([like]).from_host(a, like)
