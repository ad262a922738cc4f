"""The parameter registry: param groups, per-parameter state, the flat parameter list and
the names used in error messages.

An :class:`~fusedoptim.Optimizer` owns one :class:`ParamRegistry`.  Other modules read
``registry.params`` and ``registry.labels`` (also exposed as ``optimizer.params`` /
``optimizer.labels``); nothing reaches into its private attributes.  Every change goes
through a method that validates first and commits second, so a rejected call leaves the
groups, the state and the caches exactly as they were.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from ._arrays import as_arrays, is_single_array
from ._backends import backend_for, is_array
from ._spec import state_shape
from .lowp import ABSMAX_SUFFIX, is_bfloat16, state_dtype_of

__all__ = ["Group", "ParamState", "StateView", "ParamRegistry", "check_no_overlap", "required", "group_params",
           "name_label"]


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


#: Default value of a hyperparameter every param group must give (torch's ``required``).
required = _Required()


class Group(dict):
    """A param group: a plain dict whose every mutation bumps ``version``, so the
    optimizer re-validates a group's hyperparameters only after they change."""

    __slots__ = ("version", "names")

    def __init__(self, *a, **kw):
        dict.__init__(self, *a, **kw)
        self.version = 0
        self.names: Optional[List[str]] = None    # the parameters' names, aligned with "params"

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

    __slots__ = ("_param", "_on_change", "_sdtype", "_block")

    def __init__(self, param, on_change: Callable[[], None], init=(), state_dtype=None, block=None):
        dict.__init__(self, init)
        self._param = param
        self._on_change = on_change
        self._sdtype = state_dtype       # the state buffers' dtype when not the parameter's
        self._block = block              # 8-bit state: the block size (absmax arrays: one per block)

    def __setitem__(self, key, value):
        p = self._param
        if is_array(value):
            ok = value.dtype == p.dtype or (self._sdtype is not None and value.dtype == self._sdtype)
            shape = state_shape(key, p.shape)
            if self._block is not None and key.endswith(ABSMAX_SUFFIX):
                shape, ok = ((p.size + self._block - 1) // self._block,), value.dtype == np.float32
            if value.shape != shape or not ok:
                want = p.dtype if self._sdtype is None else f"{self._sdtype} (state) or {p.dtype}"
                if self._block is not None and key.endswith(ABSMAX_SUFFIX):
                    want = "float32"
                raise ValueError(f"state[{key!r}]: expected an array of shape {shape} and "
                                 f"dtype {want}, got "
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


def name_label(name: str) -> str:
    """How a named parameter is called in messages: ``'W'`` (``gradient of 'W': ...``)."""
    return repr(name)


def _is_pair(x) -> bool:
    return type(x) is tuple and len(x) == 2 and isinstance(x[0], str)


def _array_like(a) -> bool:
    """An array, or something fusedoptim._arrays can view as one (the buffer protocol)."""
    if is_single_array(a):
        return True
    try:
        memoryview(a)
    except TypeError:
        return False
    return True


def group_params(ps, where: str) -> Tuple[list, Optional[List[str]]]:
    """The arrays of a ``"params"`` entry and their names (None when unnamed).

    Accepted: an array; a list of arrays; a mapping ``{name: array}``; a list of
    ``(name, array)`` pairs (``model.named_params()``, torch's ``named_parameters()``)."""
    if ps is None:
        return [], None
    if is_single_array(ps):
        return [ps], None
    if isinstance(ps, Mapping):
        names, arrays = list(ps.keys()), list(ps.values())
    else:
        items = list(ps)
        if not items or not any(_is_pair(x) for x in items):
            return items, None
        for k, x in enumerate(items):
            if not _is_pair(x):
                raise TypeError(f"{where}[{k}]: expected a (name, array) pair like the entries before it, got "
                                f"{type(x).__name__}; name every parameter or none")
        names, arrays = [x[0] for x in items], [x[1] for x in items]
    for n, a in zip(names, arrays):
        if not isinstance(n, str):
            raise TypeError(f"{where}: parameter names must be strings, got {n!r}")
        if not _array_like(a):
            hint = ("; a dict is read as {name: array}: pass param groups as a list of dicts, [{...}]"
                    if isinstance(a, (list, tuple, dict)) else "")
            raise TypeError(f"{where}[{n!r}]: expected an array, got {type(a).__name__}{hint}")
    return arrays, names


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

    def __init__(self, defaults: dict, check_group: Callable[[dict, str], None], on_change: Callable[[], None],
                 state_dtype: str = "float32", native: bool = True, block_size: int = 256,
                 min_8bit_size: int = 4096):
        self.defaults = defaults
        #: 8-bit state (``state_dtype="int8"``): elements per absmax block, and the smallest
        #: parameter (in elements) whose state is 8-bit (smaller ones keep float32 state)
        self.block_size = block_size
        self.min_8bit_size = min_8bit_size
        self._native = native            # a built-in optimizer (bfloat16 parameters need its kernels)
        #: the optimizer's ``state_dtype`` option (``"float32"``, ``"bfloat16"`` or ``"int8"``)
        self.state_dtype = state_dtype
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
        #: each parameter's name, aligned with ``params``, or None when they have none; read-only
        self.names: Optional[List[str]] = None
        self._by_name: Dict[str, int] = {}
        self._index: Dict[int, int] = {}
        self._spans = None
        self.auto_group = False          # group 0 was created by apply_gradients

    # ----------------------------------------------------------------- reading
    def index(self, param) -> Optional[int]:
        """The flat index of ``param`` (by identity), or None."""
        return self._index.get(id(param))

    def index_of_name(self, name) -> Optional[int]:
        """The flat index of the parameter called ``name``, or None."""
        return self._by_name.get(name) if isinstance(name, str) else None

    def grads_by_name(self, grads: Mapping) -> list:
        """``{name: gradient}`` as the gradient list in parameter order: a name left out (or
        given None) gets no gradient this step; a name the optimizer doesn't hold raises."""
        if self.names is None:
            raise TypeError("grads is a dict, but this optimizer's parameters have no names: build it with a "
                            "dict, fo.Adam({'W': W, 'b': b}), or pass a list with one gradient per parameter")
        by_name = self._by_name
        for k in grads:
            if k not in by_name or not isinstance(k, str):
                known = ", ".join(map(repr, self.names[:8])) + (", ..." if len(self.names) > 8 else "")
                raise ValueError(f"grads has a gradient for {k!r}, which is not a parameter of this optimizer "
                                 f"(its parameters: {known})")
        return [grads.get(n) for n in self.names]

    def spans(self):
        """The memory spans of the parameters (cached; for the gradient aliasing check)."""
        if self._spans is None:
            self._spans = self.backend.param_spans(self.params)
        return self._spans

    def new_state(self, param, init) -> ParamState:
        return ParamState(param, self._on_change, init, self.backend.storage_dtype(self.buffer_dtype(param)),
                          self.block_size if self.quantized(param) else None)

    def place(self, a, like):
        """A staged state array (host, already in its state dtype) where ``like`` lives:
        itself on the CPU, a device copy on CUDA (bfloat16 as uint16 bits)."""
        if self.backend.name == "cpu" or not isinstance(a, np.ndarray):
            return a
        return self.backend.from_host(a, like)

    def quantized(self, param) -> bool:
        """Whether ``param``'s state buffers are 8-bit (``state_dtype="int8"`` and at least
        ``min_8bit_size`` elements)."""
        return self.state_dtype == "int8" and param.size >= self.min_8bit_size

    def buffer_dtype(self, param):
        """The dtype of ``param``'s state buffers when it is not the parameter's own (None);
        uint8 (the codes) for 8-bit state."""
        return state_dtype_of(self.state_dtype, param.dtype, self.quantized(param))

    @property
    def lowp(self) -> bool:
        """Some array the kernel writes is low-precision (state or parameters): steps draw
        rounding bits."""
        return self.state_dtype != "float32" or bool(self.params and is_bfloat16(self.params[0].dtype))

    # --------------------------------------------------------------- groups
    def stage(self, groups: Iterable, first_index: int = 0) -> List[dict]:
        """Validate param groups (dicts with ``"params"``) against the registry and each
        other; return them completed with defaults, ready for :meth:`add`."""
        staged, extra, extra_names = [], [], []
        for i, group in enumerate(groups):
            g = self._stage_one(group, first_index + i, extra, extra_names)
            extra.extend(g["params"])
            extra_names.extend(g.names or ())
            staged.append(g)
        return staged

    def _stage_one(self, group, gi: int, extra: list, extra_names: list) -> dict:
        if not isinstance(group, dict):
            raise TypeError(f"param group {gi} must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"param group {gi} has no 'params' entry")
        params, names = group_params(group["params"], f"param group {gi}: params")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group {gi}: unknown hyperparameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.defaults)}")
        g = Group(params=params)
        g.names = names
        for k, v in self.defaults.items():
            if k in group:
                g[k] = group[k]
            elif v is required:
                raise ValueError(f"param group {gi} didn't specify a value of required optimization parameter {k}")
            else:
                g[k] = v
        earlier = self.params + extra          # params added before, or staged in the same call
        named_before = (self.names is not None) if self.params else (bool(extra_names) if extra else None)
        if params and named_before is not None and named_before != (names is not None):
            raise ValueError(f"param group {gi}: its parameters are {'un' if names is None else ''}named, the "
                             f"optimizer's other parameters are {'' if names is None else 'un'}named; name every "
                             "parameter (a dict {name: array}) or none")
        if names is not None:
            taken = set(self._by_name) | set(extra_names)
            seen = set()
            for n in names:
                if n in taken or n in seen:
                    raise ValueError(f"param group {gi}: the parameter name {n!r} is used twice")
                seen.add(n)
            labels = [name_label(n) for n in names]
        else:
            labels = [f"params[{len(earlier) + j}] (group {gi}, index {j})" for j in range(len(params))]
        params = g["params"] = as_arrays(params, labels.__getitem__)   # torch tensors -> NumPy views
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
        if new and is_bfloat16(new[0].dtype) and not self._native:
            raise TypeError(f"{labels[0]}: bfloat16 parameters need a built-in optimizer (its kernel computes in "
                            "float32 and rounds the write); this one updates parameters in NumPy")
        if new and self.state_dtype != "float32":
            if new[0].dtype != np.float32 and not is_bfloat16(new[0].dtype):
                raise TypeError(f"{labels[0]}: state_dtype={self.state_dtype!r} needs float32 (or bfloat16) "
                                f"parameters, got {new[0].dtype}; {new[0].dtype} parameters keep "
                                f"{new[0].dtype} state (state_dtype='float32')")
        check_no_overlap(earlier, new, labels)

    def add(self, g: dict) -> None:
        """Append a staged group."""
        self._on_change()
        self._spans = None
        gi, n0, ps = len(self.groups), len(self.params), g["params"]
        g = g if type(g) is Group else Group(g)
        self._index.update(zip(map(id, ps), range(n0, n0 + len(ps))))
        if g.names is not None:
            self.names = (self.names or []) + list(g.names)
            self._by_name.update(zip(g.names, range(n0, n0 + len(ps))))
            self.labels += [name_label(n) for n in g.names]
        else:
            self.labels += [f"params[{n0 + j}] (group {gi}, index {j})" for j in range(len(ps))]
        self.params += ps
        self.backend = backend_for(self.params)
        self.groups.append(g)

    # ----------------------------------------------------- Keras-style variables
    def learn(self, new: list) -> None:
        """Add variables seen by ``apply_gradients`` of an optimizer built without params:
        the first time into a new group 0, later appended to it."""
        if self.names is not None:
            raise ValueError("apply_gradients: this optimizer's parameters have names; it adopts no unnamed "
                             "variables (add them with add_param_group({'params': {name: array}}))")
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

    def overwrite_with(self, key: str) -> None:
        """Copy every parameter's state buffer ``key`` (the EMA) into the parameter, in
        place; parameters without that buffer are left alone."""
        for p in self.params:
            st = self.store.get(id(p))
            if st is not None and key in st:
                p[...] = st[key]

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
        self.names, self._by_name = None, {}
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
