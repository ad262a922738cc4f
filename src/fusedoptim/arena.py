"""Flat parameter arenas: every parameter of a model in one aligned, contiguous buffer.

``ParamArena`` copies named parameters into one 64-byte aligned buffer and hands back
views into it, so an optimizer can update the whole model as one array::

    arena = ParamArena({"W": W, "b": b})     # W, b are copied in; use arena["W"] from now on
    grads = arena.grad_arena()                # same layout; backprop writes into grads["W"]
    opt = fusedoptim.Adam([arena.flat])       # one tensor: one streaming loop, no per-tensor work
    ...
    np.matmul(x.T, delta, out=grads["W"])     # write gradients in place, don't rebind
    opt.step([grads.flat])

Each tensor starts on an ``align``-byte boundary; the elements in between (and after the
last tensor) are padding.  Padding starts at zero, gets zero gradients, and so stays zero
under every built-in optimizer (whose update of a zero parameter with a zero gradient and
zero state is zero; the one exception is ``eps=0`` in Adam-like rules, where 0/0 makes the
padding NaN -- it is never read through the named views, but ``flat`` then holds NaNs).

The flat optimizer and a per-tensor one over ``arena.params()`` follow the same trajectory
bit for bit (the update rules are element-wise); ``split_state_dict`` / ``merge_state_dict``
convert checkpoints between the two, ``unflatten`` / ``named_state`` map flat state buffers
back to named views.
"""
from __future__ import annotations

from typing import Any, Dict, Hashable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["ParamArena", "GradArena"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class _Layout:
    """Names, shapes and element offsets of the tensors of an arena (immutable)."""

    __slots__ = ("names", "shapes", "offsets", "sizes", "dtype", "align", "total", "_pos")

    def __init__(self, names, shapes, dtype: np.dtype, align: int):
        self.names: Tuple[Hashable, ...] = tuple(names)
        self.shapes: Tuple[Tuple[int, ...], ...] = tuple(tuple(s) for s in shapes)
        self.dtype = np.dtype(dtype)
        self.align = align
        step = align // self.dtype.itemsize  # alignment in elements
        offsets, sizes, pos = [], [], 0
        for shp in self.shapes:
            pos = -(-pos // step) * step
            n = int(np.prod(shp, dtype=np.int64))
            offsets.append(pos)
            sizes.append(n)
            pos += n
        self.offsets: Tuple[int, ...] = tuple(offsets)
        self.sizes: Tuple[int, ...] = tuple(sizes)
        self.total = -(-pos // step) * step  # the tail is padded too
        self._pos = {name: i for i, name in enumerate(self.names)}

    def __eq__(self, other) -> bool:
        return (isinstance(other, _Layout) and self.names == other.names and self.shapes == other.shapes
                and self.dtype == other.dtype and self.offsets == other.offsets and self.total == other.total)

    def __hash__(self) -> int:
        return hash((self.names, self.shapes, self.dtype.str, self.offsets))

    def index(self, key) -> int:
        try:
            return self._pos[key]
        except (KeyError, TypeError):
            raise KeyError(f"no tensor named {key!r} in the arena; names: {list(self.names)}") from None

    def views(self, flat: np.ndarray) -> Dict[Hashable, np.ndarray]:
        return {name: flat[o:o + n].reshape(shp)
                for name, shp, o, n in zip(self.names, self.shapes, self.offsets, self.sizes)}

    def padding_mask(self) -> np.ndarray:
        """Boolean mask over the flat buffer, True on padding elements."""
        mask = np.ones(self.total, dtype=bool)
        for o, n in zip(self.offsets, self.sizes):
            mask[o:o + n] = False
        return mask


def _aligned_empty(n: int, dtype: np.dtype, align: int) -> np.ndarray:
    """A 1-D array of n elements whose data pointer is a multiple of ``align`` bytes."""
    nbytes = n * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + nbytes].view(dtype)


def _resolve_dtype(arrays: List[np.ndarray], dtype) -> np.dtype:
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in _FLOATS:
            raise TypeError(f"arena dtype must be float32 or float64, got {dt}")
        return dt
    dt = np.result_type(*arrays) if arrays else np.dtype(np.float64)
    if dt.kind in "biu":
        return np.dtype(np.float64)
    if dt.kind == "f" and dt.itemsize < 4:
        return np.dtype(np.float32)
    if dt not in _FLOATS:
        raise TypeError(f"parameters have dtype {dt}; an arena holds float32 or float64 "
                        "(pass dtype= to convert)")
    return dt


def _scalar_keys(state_dict: dict) -> frozenset:
    """Names of the per-parameter scalar state (``step``, ...) of the optimizer class
    named by ``state_dict["kind"]``; every other state entry is an array buffer."""
    from . import optim
    cls = getattr(optim, str(state_dict.get("kind")), None)
    return frozenset(getattr(cls, "scalar_state", ("step",))) | {"step"}


class _ArenaBase:
    """Shared by ParamArena and GradArena: a layout, a buffer and named views into it."""

    _layout: _Layout
    flat: np.ndarray
    views: Dict[Hashable, np.ndarray]

    def _bind(self, layout: _Layout, flat: np.ndarray) -> None:
        self._layout = layout
        self.flat = flat
        self.views = layout.views(flat)

    # ---------------------------------------------------------------- mapping
    def __getitem__(self, key) -> np.ndarray:
        try:
            return self.views[key]
        except (KeyError, TypeError):
            raise KeyError(f"no tensor named {key!r} in the arena; names: {list(self._layout.names)}") from None

    def __contains__(self, key) -> bool:
        try:
            return key in self.views
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._layout.names)

    def __len__(self) -> int:
        return len(self._layout.names)

    def keys(self):
        return self.views.keys()

    def items(self):
        return self.views.items()

    # ---------------------------------------------------------------- layout
    @property
    def names(self) -> Tuple[Hashable, ...]:
        """Tensor names in layout order (0, 1, ... when built from a list)."""
        return self._layout.names

    @property
    def dtype(self) -> np.dtype:
        return self._layout.dtype

    @property
    def layout(self) -> List[Tuple[Hashable, Tuple[int, ...], int]]:
        """``[(name, shape, offset), ...]``: where each tensor lives in ``flat``."""
        return list(zip(self._layout.names, self._layout.shapes, self._layout.offsets))

    @property
    def numel(self) -> int:
        """Number of parameter elements, padding excluded (``flat.size`` includes it)."""
        return sum(self._layout.sizes)

    def same_layout(self, other) -> bool:
        """True if ``other`` (an arena) has exactly this layout, so flat buffers are interchangeable."""
        return isinstance(other, _ArenaBase) and other._layout == self._layout

    def padding_mask(self) -> np.ndarray:
        """Boolean array over ``flat``: True where the element is alignment padding."""
        return self._layout.padding_mask()

    # --------------------------------------------------------- flat <-> named
    def unflatten(self, flat_array: np.ndarray) -> Dict[Hashable, np.ndarray]:
        """Named views of any array laid out like ``flat`` (a flat optimizer's state
        buffer, a flat gradient, a checkpointed flat vector): ``{name: view}``.

        The views share memory with ``flat_array`` when it is contiguous."""
        a = np.asarray(flat_array)
        if a.ndim != 1 or a.shape[0] != self._layout.total:
            raise ValueError(f"expected a 1-D array of {self._layout.total} elements (the arena's flat "
                             f"size, padding included), got shape {a.shape}")
        return self._layout.views(a)

    def flatten(self, values, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The flat array (padding zero) holding ``values``: a dict ``{name: array}`` or a
        list in layout order, each matching its tensor's shape.  Writes into ``out`` if given."""
        lay = self._layout
        if out is None:
            out = np.zeros(lay.total, dtype=lay.dtype)
        elif out.shape != (lay.total,):
            raise ValueError(f"out must have shape ({lay.total},), got {out.shape}")
        else:
            out[lay.padding_mask()] = 0
        if isinstance(values, Mapping):
            missing = [n for n in lay.names if n not in values]
            extra = [k for k in values if k not in lay._pos]
            if missing or extra:
                raise ValueError(f"values don't match the arena's tensors: missing {missing}, unknown {extra}")
            seq = [values[n] for n in lay.names]
        else:
            seq = list(values)
            if len(seq) != len(lay.names):
                raise ValueError(f"expected {len(lay.names)} arrays in layout order, got {len(seq)}")
        for name, v, shp, o, n in zip(lay.names, seq, lay.shapes, lay.offsets, lay.sizes):
            v = np.asarray(v)
            if v.shape != shp:
                raise ValueError(f"{name!r}: shape {v.shape} does not match the arena's {shp}")
            out[o:o + n] = v.reshape(-1)
        return out

    # ------------------------------------------------- optimizer state mapping
    def named_state(self, opt) -> Dict[Hashable, Dict[str, Any]]:
        """``{name: {state key: value}}`` for an optimizer over ``[arena.flat]`` (array
        buffers become views of the flat state buffers) or over ``arena.params()``.
        Tensors without state yet map to empty dicts."""
        held = {id(q) for g in opt.param_groups for q in g["params"]}
        out: Dict[Hashable, Dict[str, Any]] = {n: {} for n in self._layout.names}
        if id(self.flat) in held:
            for k, v in (opt.state.get(self.flat) or {}).items():
                if isinstance(v, np.ndarray) and v.shape == self.flat.shape:
                    for n, view in self.unflatten(v).items():
                        out[n][k] = view
                else:
                    for n in out:
                        out[n][k] = v
            return out
        if not any(id(p) in held for p in self.views.values()):
            raise ValueError("the optimizer holds neither this arena's flat buffer nor its views")
        for n, p in self.views.items():
            out[n] = dict(opt.state.get(p) or {})
        return out

    def split_state_dict(self, state_dict: dict) -> dict:
        """Convert the ``state_dict`` of an optimizer built over ``[arena.flat]`` into one
        for the same optimizer class built over ``arena.params()`` (arrays copied)."""
        groups = list(state_dict["param_groups"])
        if len(groups) != 1 or len(groups[0]["params"]) != 1:
            raise ValueError("split_state_dict expects the state_dict of an optimizer over exactly one "
                             "parameter, [arena.flat]")
        key = groups[0]["params"][0]
        n = len(self._layout.names)
        g = dict(groups[0])
        g["params"] = list(range(n))
        state = {}
        st = state_dict["state"].get(key)
        if st is not None:
            named = [dict() for _ in range(n)]
            scalars = _scalar_keys(state_dict)
            for k, v in st.items():
                if k in scalars:
                    for d in named:
                        d[k] = v
                    continue
                a = np.asarray(v)
                if a.shape != (self._layout.total,):
                    raise ValueError(f"state[{key!r}][{k!r}] has shape {a.shape}, not the arena's flat "
                                     f"({self._layout.total},)")
                for i, view in enumerate(self.unflatten(a).values()):
                    named[i][k] = view.copy()
            state = {i: d for i, d in enumerate(named)}
        out = {k: v for k, v in state_dict.items() if k not in ("state", "param_groups")}
        out["state"] = state
        out["param_groups"] = [g]
        return out

    def merge_state_dict(self, state_dict: dict) -> dict:
        """Convert the ``state_dict`` of an optimizer built over ``arena.params()`` (one
        param group) into one for the same optimizer class over ``[arena.flat]``.

        Every tensor must have state with the same scalar values (step counts), or none
        may have any; padding of the merged buffers is zero."""
        groups = list(state_dict["param_groups"])
        lay = self._layout
        if len(groups) != 1 or len(groups[0]["params"]) != len(lay.names):
            raise ValueError(f"merge_state_dict expects the state_dict of an optimizer with one param "
                             f"group over the arena's {len(lay.names)} views, in layout order")
        keys = list(groups[0]["params"])
        sts = [state_dict["state"].get(k) for k in keys]
        g = dict(groups[0])
        g["params"] = [0]
        out = {k: v for k, v in state_dict.items() if k not in ("state", "param_groups")}
        out["param_groups"] = [g]
        have = [st is not None for st in sts]
        if not any(have):
            out["state"] = {}
            return out
        if not all(have):
            missing = [lay.names[i] for i, h in enumerate(have) if not h]
            raise ValueError(f"tensors {missing} have no optimizer state while others do; a flat "
                             "optimizer has one state for all tensors")
        merged: Dict[str, Any] = {}
        names0 = set(sts[0])
        for i, st in enumerate(sts):
            if set(st) != names0:
                raise ValueError(f"tensor {lay.names[i]!r} has state keys {sorted(st)}, tensor "
                                 f"{lay.names[0]!r} has {sorted(names0)}")
        scalars = _scalar_keys(state_dict)
        for k in sts[0]:
            v0 = sts[0][k]
            if k not in scalars:
                merged[k] = self.flatten([np.asarray(st[k]) for st in sts])
            else:
                for i, st in enumerate(sts):
                    if st[k] != v0:
                        raise ValueError(f"state {k!r} differs between tensors {lay.names[0]!r} ({v0!r}) and "
                                         f"{lay.names[i]!r} ({st[k]!r}); a flat optimizer has one value")
                merged[k] = v0
        out["state"] = {0: merged}
        return out

    def __repr__(self) -> str:
        lay = self._layout
        return (f"{type(self).__name__}({len(lay.names)} tensors, {self.numel} elements "
                f"+ {lay.total - self.numel} padding, {lay.dtype}, align={lay.align})")


class ParamArena(_ArenaBase):
    """Named parameters packed into one contiguous, ``align``-byte aligned buffer.

    ``named_params``: a dict ``{name: array}`` or a list of arrays (named 0, 1, ...).  The
    values are copied in; a dict or list you pass has its entries replaced by the views
    (NumPy can't move an existing array, so rebind any other reference to ``arena[name]``).

    ``dtype``: float32 or float64; by default the parameters' common type (integers become
    float64, float16 float32).  ``align``: byte alignment of each tensor's start, a power of
    two (default 64, a cache line and an AVX-512 vector).

    Attributes: ``flat`` (1-D view of everything, padding included), ``views`` (dict name ->
    view), ``arena[name]``, ``params()`` (views in layout order).
    """

    def __init__(self, named_params, dtype=None, align: int = 64):
        if isinstance(named_params, np.ndarray):
            raise TypeError("named_params should be a dict {name: array} or a list of arrays, got a single "
                            "ndarray; wrap it in a list")
        if isinstance(named_params, Mapping):
            names = list(named_params.keys())
            arrays = [np.asarray(named_params[n]) for n in names]
        elif isinstance(named_params, (list, tuple)):
            names = list(range(len(named_params)))
            arrays = [np.asarray(a) for a in named_params]
        else:
            raise TypeError(f"named_params should be a dict {{name: array}} or a list of arrays, "
                            f"got {type(named_params).__name__}")
        if not arrays:
            raise ValueError("an arena needs at least one parameter")
        for n, a in zip(names, arrays):
            if a.dtype.kind not in "biuf":
                raise TypeError(f"parameter {n!r}: dtype {a.dtype} is not a real number type")
        dt = _resolve_dtype(arrays, dtype)
        if not isinstance(align, (int, np.integer)) or isinstance(align, bool) or align < dt.itemsize \
                or align & (align - 1):
            raise ValueError(f"align must be a power of two >= the itemsize {dt.itemsize}, got {align!r}")
        layout = _Layout(names, [a.shape for a in arrays], dt, int(align))
        flat = _aligned_empty(layout.total, dt, layout.align)
        flat[...] = 0
        self._bind(layout, flat)
        for name, a in zip(names, arrays):
            self.views[name][...] = a
        if isinstance(named_params, dict) or isinstance(named_params, list):
            for name in names:
                named_params[name] = self.views[name]

    def params(self) -> List[np.ndarray]:
        """The parameter views in layout order (for a per-tensor optimizer)."""
        return [self.views[n] for n in self._layout.names]

    def grad_arena(self) -> "GradArena":
        """A zeroed gradient arena with this layout."""
        return GradArena(self)

    zeros_like_grads = grad_arena

    def like(self, fill: float = 0.0) -> np.ndarray:
        """A new aligned flat array with this layout, filled with ``fill`` (padding included)."""
        a = _aligned_empty(self._layout.total, self._layout.dtype, self._layout.align)
        a[...] = fill
        return a


class GradArena(_ArenaBase):
    """A buffer laid out like a ``ParamArena``: ``garena[name]`` are views for backprop to
    write gradients into (``out=`` or ``[...] =``), ``garena.flat`` goes to the optimizer.

    Padding is zero and must stay zero (``zero_()`` keeps it so)."""

    def __init__(self, arena: _ArenaBase):
        if not isinstance(arena, _ArenaBase):
            raise TypeError(f"GradArena needs a ParamArena to copy the layout of, got {type(arena).__name__}")
        lay = arena._layout
        flat = _aligned_empty(lay.total, lay.dtype, lay.align)
        flat[...] = 0
        self._bind(lay, flat)

    def grads(self) -> List[np.ndarray]:
        """The gradient views in layout order (for a per-tensor optimizer's ``step``)."""
        return [self.views[n] for n in self._layout.names]

    def zero_(self) -> "GradArena":
        """Set every gradient (and the padding) to zero; returns self."""
        self.flat[...] = 0
        return self
