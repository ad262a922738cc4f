"""The state codec: an optimizer's ``state_dict`` <-> (JSON-able metadata, flat arrays).

One encoding for every place optimizer state leaves the process: ``fusedoptim.save`` /
``fusedoptim.load`` (:mod:`fusedoptim.checkpoint`), ZeRO-1 shard files and the
data-parallel state broadcast (:mod:`fusedoptim.distributed`)::

    meta, arrays = codec.encode(optimizer)       # meta: JSON-able dict; arrays: name -> ndarray
    sd = codec.decode(meta, arrays, optimizer)   # validated; ready for optimizer.load_state_dict

No pickle: ``meta`` holds only what ``json.dumps(meta, allow_nan=False)`` accepts, and
``arrays`` only bool/int/uint/float/complex arrays.  Decoding validates the structure and
raises :class:`StateFormatError` (a ``ValueError``) saying where it is wrong.

Tagged values
-------------
Values JSON can't hold are objects with one key: ``{"__array__": name}`` (an entry of
``arrays``), ``{"__float__": "inf" | "-inf" | "nan"}``, ``{"__tuple__": [...]}``,
``{"__schedule__": config}`` (a ``fusedoptim.schedules`` object, rebuilt with
``schedules.from_config``) and ``{"__dict__": {...}}`` (a user dict whose only key
looks like a tag), ``{"__bfloat16__": name}`` (an ``ml_dtypes.bfloat16`` array, stored
losslessly as its uint16 bit patterns: low-precision optimizer state).  Floats keep Python's shortest round-trip repr, so they come back bit
for bit.  Nesting is limited to ``MAX_DEPTH`` levels both ways.

The optimizer entry
-------------------
``encode_optimizer`` gives ``{"kind", "iterations", "counters", "param_groups",
"params", "state"}``: ``params`` is the parameters' ``[{"shape", "dtype"}]`` (so a
reader can check them before it touches any data), ``state`` maps the flat parameter
index (a string) to its scalars and ``{"__array__": "<prefix><i>/<name>"}`` references.
When the parameters have names the entry also holds ``"names"``, each parameter's name
aligned with ``params``; indices stay the keys inside the entry (array entry names never
hold user text), and decoding gives the state_dict keyed by name again, matched to an
optimizer by name (``check_optimizer_entry``).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np

from . import schedules as _schedules
from ._spec import state_shape
from ._state_dict import is_named
from .lowp import ABSMAX_SUFFIX, bfloat16, is_bfloat16
from .validate import scalar_from

__all__ = ["StateFormatError", "Encoder", "decode_value", "array_refs", "describe_arrays", "read_array_table",
           "signature", "encode_optimizer", "check_optimizer_entry", "decode_optimizer", "encode", "decode",
           "MAX_DEPTH", "STATE_PREFIX", "article"]

TAGS = ("__array__", "__float__", "__tuple__", "__schedule__", "__dict__", "__bfloat16__")
ARRAY_KINDS = "biufc"  # bool, int, uint, float, complex: never object, never pickled
MAX_DEPTH = 100
STATE_PREFIX = "optimizer/state/"
_OPT_KEYS = ("kind", "iterations", "state", "param_groups")


class StateFormatError(ValueError):
    """Encoded state (metadata + arrays) that is malformed or doesn't fit the optimizer."""


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else f"{r[:60]}... ({len(r)} characters)"


def storable_dtype(dtype) -> bool:
    """Whether arrays of ``dtype`` can be stored without pickle."""
    dt = np.dtype(dtype)
    return dt.kind in ARRAY_KINDS and not dt.hasobject and dt.fields is None and dt.subdtype is None


# ===================================================================== values
class Encoder:
    """Turns plain Python data into JSON values, moving arrays into ``self.arrays``."""

    def __init__(self):
        self.arrays: Dict[str, np.ndarray] = {}

    def add_array(self, key: str, a: np.ndarray, where: str) -> dict:
        """Store ``a`` as entry ``key``; return its reference (a bfloat16 array is stored
        as its uint16 bits and referenced as ``{"__bfloat16__": key}``: .npy has no
        bfloat16 type)."""
        if is_bfloat16(a.dtype):
            return {"__bfloat16__": self.add_array(key, a.view(np.uint16), where)["__array__"]}
        if not storable_dtype(a.dtype):
            raise TypeError(f"{where}: cannot store an array of dtype {a.dtype} (only bool/int/float/complex "
                            "arrays, which need no pickle)")
        if key in self.arrays:
            raise ValueError(f"{where}: array name {key!r} used twice")
        self.arrays[key] = a
        return {"__array__": key}

    def value(self, v, where: str, prefix: Optional[str] = None, depth: int = 0):
        """``prefix``: name prefix for arrays found in v (None: arrays refused)."""
        if depth > MAX_DEPTH:
            raise TypeError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            f = float(v)
            if math.isfinite(f):
                return f
            return {"__float__": "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")}
        if isinstance(v, _schedules.LearningRateSchedule):
            try:
                return {"__schedule__": v.get_config()}
            except NotImplementedError as e:
                raise TypeError(f"{where}: the schedule {v!r} has no get_config(), so it can't be stored: "
                                f"{e}") from None
        if isinstance(v, np.ndarray):
            if prefix is None:
                raise TypeError(f"{where}: arrays are not allowed here")
            n = sum(1 for k in self.arrays if k.startswith(prefix))
            return self.add_array(f"{prefix}{n}", v, where)
        if isinstance(v, np.generic):
            return self.value(v.item(), where, prefix, depth)
        if isinstance(v, (tuple, list)):
            out = [self.value(x, f"{where}[{i}]", prefix, depth + 1) for i, x in enumerate(v)]
            return {"__tuple__": out} if isinstance(v, tuple) else out
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise TypeError(f"{where}: dict keys must be strings to be stored, got {k!r}")
                out[k] = self.value(x, f"{where}[{k!r}]", prefix, depth + 1)
            if len(out) == 1 and next(iter(out)) in TAGS:
                out = {"__dict__": out}
            return out
        if callable(v):
            hint = ("; only fusedoptim.schedules objects (which have get_config) can be stored as a learning rate"
                    if where.endswith(": lr") else "; store plain data (numbers, strings, lists, dicts, arrays)")
            raise TypeError(f"{where}: cannot store the callable {v!r}{hint}")
        raise TypeError(f"{where}: cannot store a {type(v).__name__} ({v!r}); use numbers, strings, bools, None, "
                        "lists, tuples, dicts with string keys, or numeric numpy arrays")


def _tag(v) -> Optional[Tuple[str, Any]]:
    if isinstance(v, dict) and len(v) == 1:
        (tag, x), = v.items()
        if tag in TAGS:
            return tag, x
    return None


def decode_value(v, arrays: Dict[str, np.ndarray], where: str, used: Optional[Set[str]] = None, depth: int = 0):
    """The Python value of the JSON value ``v``; ``used`` collects the array names read."""
    if depth > MAX_DEPTH:
        raise StateFormatError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(v, list):
        return [decode_value(x, arrays, f"{where}[{i}]", used, depth + 1) for i, x in enumerate(v)]
    if isinstance(v, float) and not math.isfinite(v):  # e.g. 1e400 in the JSON text
        raise StateFormatError(f"{where}: non-finite float literal {v!r}")
    if not isinstance(v, dict):
        return v
    tagged = _tag(v)
    if tagged is None:
        return {k: decode_value(y, arrays, f"{where}[{k!r}]", used, depth + 1) for k, y in v.items()}
    tag, x = tagged
    if tag in ("__array__", "__bfloat16__"):
        if not isinstance(x, str) or x not in arrays:
            raise StateFormatError(f"{where}: refers to array entry {_short(x)}, which the archive doesn't have")
        if used is not None:
            used.add(x)
        if tag == "__array__":
            return arrays[x]
        bits = arrays[x]
        if bits.dtype != np.uint16:
            raise StateFormatError(f"{where}: a bfloat16 array is stored as uint16 bits, entry {x!r} is {bits.dtype}")
        try:
            return bits.view(bfloat16())
        except ImportError as e:
            raise StateFormatError(f"{where}: {e}") from None
    if tag == "__float__":
        if x not in ("inf", "-inf", "nan"):
            raise StateFormatError(f"{where}: bad __float__ value {_short(x)}")
        return float(x)
    if tag == "__tuple__":
        if not isinstance(x, list):
            raise StateFormatError(f"{where}: __tuple__ must hold a list")
        return tuple(decode_value(y, arrays, f"{where}[{i}]", used, depth + 1) for i, y in enumerate(x))
    if tag == "__schedule__":
        try:
            return _schedules.from_config(x)
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, RecursionError) as e:
            raise StateFormatError(f"{where}: can't rebuild the schedule {_short(x)}: {e}") from None
    if not isinstance(x, dict):  # __dict__
        raise StateFormatError(f"{where}: __dict__ must hold an object")
    return {k: decode_value(y, arrays, f"{where}[{k!r}]", used, depth + 1) for k, y in x.items()}


def array_refs(v, depth: int = 0) -> Set[str]:
    """Every array name the JSON value ``v`` refers to, found without decoding it."""
    out: Set[str] = set()
    stack = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if d > MAX_DEPTH:
            raise StateFormatError(f"the metadata is nested deeper than {MAX_DEPTH} levels")
        tagged = _tag(x)
        if tagged is not None:
            tag, x = tagged
            if tag in ("__array__", "__bfloat16__"):
                if not isinstance(x, str):
                    raise StateFormatError(f"__array__ must name an entry, got {_short(x)}")
                out.add(x)
                continue
            if tag in ("__float__", "__schedule__"):
                continue
        if isinstance(x, list):
            stack.extend((y, d + 1) for y in x)
        elif isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
    return out


# ===================================================================== arrays
def describe_arrays(arrays: Dict[str, np.ndarray]) -> Dict[str, dict]:
    """``{name: {"dtype": str, "shape": [...]}}``: what a reader should expect before reading."""
    return {k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()}


def read_array_table(table) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """Validate a table made by ``describe_arrays``: ``{name: (dtype, shape)}``."""
    if not isinstance(table, dict):
        raise StateFormatError(f"the array table must be an object, got {type(table).__name__}")
    out = {}
    for name, d in table.items():
        if not (isinstance(d, dict) and set(d) == {"dtype", "shape"} and isinstance(d["dtype"], str)
                and isinstance(d["shape"], list)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in d["shape"])
                and len(d["shape"]) <= 64):
            raise StateFormatError(f"array {name!r}: malformed description {_short(d)}")
        try:
            dt = np.dtype(d["dtype"])
        except (TypeError, ValueError, SyntaxError) as e:
            raise StateFormatError(f"array {name!r}: bad dtype {_short(d['dtype'])}: {e}") from None
        if not storable_dtype(dt):
            raise StateFormatError(f"array {name!r}: dtype {dt} is not a plain numeric dtype")
        out[name] = (dt, tuple(d["shape"]))
    return out


def signature(arrays: Iterable[np.ndarray]) -> List[dict]:
    """``[{"shape": [...], "dtype": str}]`` of each parameter."""
    return [{"shape": list(p.shape), "dtype": "bfloat16" if is_bfloat16(p.dtype) else np.dtype(p.dtype).str}
            for p in arrays]


# ================================================================== optimizer
def encode_optimizer(optimizer, enc: Encoder, prefix: str = STATE_PREFIX, *, skip_callables: bool = False) -> dict:
    """The optimizer entry of ``optimizer.state_dict()``; arrays go to ``enc`` as
    ``<prefix><i>/<name>``.  ``skip_callables``: leave out callable hyperparameters (an
    ``lr`` function or schedule) instead of storing a schedule's config / refusing."""
    if not hasattr(optimizer, "state_dict") or not hasattr(optimizer, "params"):
        raise TypeError(f"optimizer must be a fusedoptim Optimizer, got {type(optimizer).__name__}")
    sd = optimizer.state_dict()
    names = [n for g in sd["param_groups"] for n in g["params"]] if is_named(sd) else None
    index = int if names is None else {n: i for i, n in enumerate(names)}.__getitem__
    groups = []
    for gi, g in enumerate(sd["param_groups"]):
        out = {}
        for k, v in g.items():
            if k == "params":
                out[k] = [index(i) for i in v]
            elif not (skip_callables and callable(v)):
                out[k] = enc.value(v, f"optimizer param group {gi}: {k}")
        groups.append(out)
    state = {}
    for key, st in sd["state"].items():
        i, entry = index(key), {}
        for k, v in st.items():
            where = f"optimizer state of param {key!r}: {k}"
            if isinstance(v, np.ndarray):
                entry[k] = enc.add_array(f"{prefix}{i}/{k}", v, where)
            else:
                entry[k] = enc.value(v, where)
        state[str(i)] = entry
    # other top-level counters of the state_dict (nonfinite_count, accum_count, ...)
    counters = {k: int(v) for k, v in sd.items()
                if k not in _OPT_KEYS and isinstance(v, numbers.Integral) and not isinstance(v, bool)}
    out = {"kind": sd.get("kind", type(optimizer).__name__), "iterations": int(sd.get("iterations", 0)),
           "counters": counters, "param_groups": groups, "params": signature(optimizer.params), "state": state}
    if "storage" in sd:              # the 8-bit state tag: state_dtype, block_size, min_8bit_size
        out["storage"] = enc.value(sd["storage"], "optimizer storage")
    if names is not None:
        out["names"] = names
    return out


def _count(v, what: str) -> int:
    """A non-negative integer, or StateFormatError (never OverflowError)."""
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise StateFormatError(f"{what} must be a non-negative integer, got {_short(v)}")
    if v < 1 << 64:       # exact (a 64-bit rounding seed is not a float: 2**64 - 1 != float(2**64 - 1))
        return v
    return _number(v, what, integer=True)


def _number(v, what: str, integer: bool = False):
    try:
        scalar_from(v, what, integer=integer)      # an overflow reads "out of range" there
    except (TypeError, ValueError) as e:
        raise StateFormatError(str(e)) from None
    return v


def _no_overflow(v, what: str) -> None:
    """Python ints in hyperparameters must convert to float (10**400 doesn't)."""
    for x in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(x, int) and not isinstance(x, bool):
            try:
                float(x)
            except OverflowError:
                raise StateFormatError(f"{what} is out of range: {_short(x)}") from None


def _signature_of(om: dict, src: str) -> List[Tuple[Tuple[int, ...], np.dtype]]:
    sp = om.get("params")
    if not isinstance(sp, list):
        raise StateFormatError(f"{src}'s description of the optimizer's parameters is malformed")
    out = []
    for i, d in enumerate(sp):
        try:
            # byte order aside: archive.read_archive converts entries to native order
            shape = tuple(d["shape"])
            dtype = bfloat16() if d["dtype"] == "bfloat16" else np.dtype(d["dtype"]).newbyteorder("=")
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                raise ValueError
        except ImportError as e:
            raise StateFormatError(f"{src}: optimizer parameter {i} is bfloat16: {e}") from None
        except (TypeError, KeyError, ValueError, SyntaxError):
            raise StateFormatError(f"{src}'s description of optimizer parameter {i} is malformed: "
                                   f"{_short(d)}") from None
        out.append((shape, dtype))
    return out


def _names_of(om: dict, n: int, src: str) -> Optional[List[str]]:
    """The entry's parameter names (None: positional), checked: unique strings, one per
    parameter."""
    names = om.get("names")
    if names is None:
        return None
    if not (isinstance(names, list) and len(names) == n and all(isinstance(x, str) for x in names)
            and len(set(names)) == n):
        raise StateFormatError(f"{src}'s parameter names are malformed: {_short(names)}")
    return names


def _check_named_entry(om, optimizer, sig, names: List[str], src: str, strict: bool) -> None:
    """``check_optimizer_entry`` for an entry with names: parameters matched by name."""
    mine = optimizer.param_names
    if mine is None:
        raise StateFormatError(f"{src}'s optimizer parameters have names ({_short(names)}), this optimizer's have "
                               "none: build it with a dict, fo.Adam({'W': W, 'b': b})")
    pos = {n: i for i, n in enumerate(names)}
    missing = [n for n in mine if n not in pos]
    unexpected = [n for n in names if n not in set(mine)]
    if strict and (missing or unexpected):
        raise StateFormatError(f"{src}'s optimizer parameters don't match this optimizer's: missing {missing}, "
                               f"unexpected {unexpected}")
    flat = optimizer.params
    for n, p in zip(mine, flat):
        if n in pos:
            shape, dtype = sig[pos[n]]
            if shape != p.shape:
                raise StateFormatError(f"optimizer parameter {n!r}: shape {shape} in {src}, {p.shape} in this "
                                       "optimizer")
            if dtype != p.dtype:
                raise StateFormatError(f"optimizer parameter {n!r}: dtype {dtype} in {src}, {p.dtype} in this "
                                       "optimizer")
    seen: Set[int] = set()
    for gi, sg in enumerate(om["param_groups"]):
        if not isinstance(sg, dict) or not isinstance(sg.get("params"), list):
            raise StateFormatError(f"{src}'s param group {gi} is malformed")
        for i in sg["params"]:
            if not (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(names)) or i in seen:
                raise StateFormatError(f"param group {gi}: bad parameter indices {_short(sg['params'])}")
            seen.add(i)
    if len(seen) != len(names):
        raise StateFormatError(f"{src}'s param groups don't list every parameter")


def check_optimizer_entry(om, optimizer, src: str = "the checkpoint", strict: bool = True) -> None:
    """Check an encoded optimizer entry against ``optimizer`` (kind, iterations, groups,
    parameter shapes and dtypes) without its arrays; ``src`` names it in messages.  An
    entry with names is matched by name (``strict=False``: only the names both have)."""
    if om is None:
        raise StateFormatError(f"{src} holds no optimizer state (it was saved with optimizer=None)")
    if not isinstance(om, dict) or not set(_OPT_KEYS) <= set(om):
        raise StateFormatError(f"{src}'s optimizer entry is malformed")
    me = type(optimizer).__name__
    if om["kind"] != me:
        kind = om["kind"] if isinstance(om["kind"], str) and len(om["kind"]) <= 80 else _short(om["kind"])
        raise StateFormatError(f"{src} holds {article(kind)} {kind} optimizer, not {me}")
    _count(om["iterations"], f"{src}'s iterations")
    groups = optimizer.param_groups
    sgroups = om["param_groups"]
    if not isinstance(sgroups, list) or len(sgroups) != len(groups):
        n = len(sgroups) if isinstance(sgroups, list) else _short(sgroups)
        raise StateFormatError(f"{src} has {n} param groups, this optimizer has {len(groups)}")
    sig = _signature_of(om, src)
    names = _names_of(om, len(sig), src)
    if names is not None:
        return _check_named_entry(om, optimizer, sig, names, src, strict)
    flat = optimizer.params
    if len(sig) != len(flat):
        raise StateFormatError(f"{src}'s optimizer has {len(sig)} parameters, this optimizer has {len(flat)}")
    for i, ((shape, dtype), p) in enumerate(zip(sig, flat)):
        if shape != p.shape:
            raise StateFormatError(f"optimizer parameter {i}: shape {shape} in {src}, {p.shape} in this optimizer")
        if dtype != p.dtype:
            raise StateFormatError(f"optimizer parameter {i}: dtype {dtype} in {src}, {p.dtype} in this optimizer")
    base = 0
    for gi, (sg, g) in enumerate(zip(sgroups, groups)):
        if not isinstance(sg, dict) or not isinstance(sg.get("params"), list):
            raise StateFormatError(f"{src}'s param group {gi} is malformed")
        n = len(g["params"])
        if len(sg["params"]) != n:
            raise StateFormatError(f"param group {gi}: {len(sg['params'])} parameters in {src}, {n} in this "
                                   "optimizer")
        if sg["params"] != list(range(base, base + n)):
            raise StateFormatError(f"param group {gi}: parameter indices {_short(sg['params'])} are not in group "
                                   "order")
        base += n


def decode_optimizer(om, arrays: Dict[str, np.ndarray], optimizer=None, used: Optional[Set[str]] = None,
                     src: str = "the checkpoint", strict: bool = True) -> dict:
    """The ``state_dict`` an encoded optimizer entry describes, validated (against
    ``optimizer`` too when given: ``check_optimizer_entry``, then each state buffer's
    shape and dtype against its parameter).  An entry with names gives a state_dict
    keyed by name."""
    if optimizer is not None:
        check_optimizer_entry(om, optimizer, src, strict)
    elif not isinstance(om, dict) or not set(_OPT_KEYS) <= set(om) or not isinstance(om["param_groups"], list):
        raise StateFormatError(f"{src}'s optimizer entry is malformed")
    it = _count(om["iterations"], f"{src}'s iterations")
    sig = _signature_of(om, src) if "params" in om else None
    names = None if sig is None else _names_of(om, len(sig), src)
    if names is not None or optimizer is None:
        shapes = sig           # named: the entry's own signature (checked against the optimizer by name)
    else:
        shapes = [(p.shape, p.dtype) for p in optimizer.params]
    groups = []
    for gi, sg in enumerate(om["param_groups"]):
        if not isinstance(sg, dict) or not isinstance(sg.get("params"), list):
            raise StateFormatError(f"{src}'s param group {gi} is malformed")
        dg = {}
        for k, v in sg.items():
            dg[k] = decode_value(v, arrays, f"param group {gi}: {k}", used)
            if k == "params":
                dg[k] = [_count(i, f"param group {gi}: params") for i in v]
                if names is not None:
                    if any(i >= len(names) for i in dg[k]):
                        raise StateFormatError(f"param group {gi}: parameter indices {_short(v)} out of range")
                    dg[k] = [names[i] for i in dg[k]]
            else:
                _no_overflow(dg[k], f"param group {gi}: {k}")
        groups.append(dg)
    sstate = om["state"]
    if not isinstance(sstate, dict):
        raise StateFormatError(f"{src}'s optimizer state is malformed")
    state = {}
    for key, st in sstate.items():
        if not (isinstance(key, str) and key.isdigit() and str(int(key)) == key) \
                or (shapes is not None and int(key) >= len(shapes)):
            n = "" if shapes is None else f"; the optimizer has {len(shapes)} parameters"
            raise StateFormatError(f"optimizer state has an entry for parameter {_short(key)}{n}")
        i = int(key)
        if not isinstance(st, dict):
            raise StateFormatError(f"optimizer state of parameter {i} is malformed")
        ds = {k: decode_value(v, arrays, f"optimizer state of parameter {i}: {k}", used) for k, v in st.items()}
        for k, v in ds.items():
            what = f"optimizer state of parameter {i}: {k!r}"
            if isinstance(v, np.ndarray) and k.endswith(ABSMAX_SUFFIX) and k[:-len(ABSMAX_SUFFIX)] in ds:
                # the block absmax of 8-bit state: load_state_dict checks its length and dtype
                if v.ndim != 1:
                    raise StateFormatError(f"{what} must be a 1-D array (one absmax per block), got shape {v.shape}")
                continue
            if isinstance(v, np.ndarray):
                if shapes is not None and v.shape != state_shape(k, shapes[i][0]):
                    raise StateFormatError(f"{what} has shape {v.shape}, the parameter has shape {shapes[i][0]}")
                # state buffers may be stored in another dtype than the parameter (bfloat16
                # state, float32 state of bfloat16 parameters); load_state_dict checks them
                # against the optimizer's state_dtype
                lowp = is_bfloat16(v.dtype) or (shapes is not None and is_bfloat16(shapes[i][1])
                                                and v.dtype == np.float32) or v.dtype == np.uint8   # 8-bit codes
                if shapes is not None and v.dtype != shapes[i][1] and not lowp:
                    raise StateFormatError(f"{what} has dtype {v.dtype}, the parameter has dtype {shapes[i][1]}")
            elif not (isinstance(v, numbers.Real) and not isinstance(v, bool)):
                raise StateFormatError(f"{what} must be an array or a number, got {_short(v)}")
            else:
                _number(v, what, integer=(k == "step"))
        state[i if names is None else names[i]] = ds
    counters = om.get("counters", {})
    if not isinstance(counters, dict):
        raise StateFormatError(f"{src}'s optimizer counters are malformed: {_short(counters)}")
    for k, v in counters.items():
        _count(v, f"{src}'s optimizer counter {k!r}")
        if k in _OPT_KEYS:
            raise StateFormatError(f"{src}'s optimizer counters are malformed: {_short(counters)}")
    out = dict(counters, kind=om["kind"], iterations=it, state=state, param_groups=groups)
    if "storage" in om:
        storage = decode_value(om["storage"], arrays, "optimizer storage", used)
        if not isinstance(storage, dict) or not all(isinstance(x, (str, int)) for x in storage.values()):
            raise StateFormatError(f"{src}'s optimizer storage tag is malformed: {_short(om['storage'])}")
        out["storage"] = storage
    return out


# ================================================================ convenience
def encode(optimizer, *, prefix: str = STATE_PREFIX, skip_callables: bool = False) -> Tuple[dict, Dict[str, np.ndarray]]:
    """``(meta, arrays)`` of ``optimizer``'s state: ``meta`` is the optimizer entry plus
    ``"arrays"`` (``describe_arrays``), so a reader can allocate or check before reading."""
    enc = Encoder()
    meta = encode_optimizer(optimizer, enc, prefix, skip_callables=skip_callables)
    meta["arrays"] = describe_arrays(enc.arrays)
    return meta, enc.arrays


def decode(meta, arrays: Dict[str, np.ndarray], optimizer=None, src: str = "the encoded state",
           strict: bool = True) -> dict:
    """The validated ``state_dict`` of ``encode``'s output (every array must be used)."""
    used: Set[str] = set()
    table = read_array_table(meta.get("arrays", {}) if isinstance(meta, dict) else None)
    for name, (dtype, shape) in table.items():
        a = arrays.get(name)
        if a is None or a.dtype != dtype or a.shape != shape:
            got = "missing" if a is None else f"{a.dtype} {a.shape}"
            raise StateFormatError(f"{src}: array {name!r} is {got}, the metadata declares {dtype} {shape}")
    sd = decode_optimizer({k: v for k, v in meta.items() if k != "arrays"}, arrays, optimizer, used, src, strict)
    extra = sorted(set(arrays) - used)
    if extra or set(table) != used:
        raise StateFormatError(f"{src}: arrays {sorted(set(arrays) ^ used)[:5]} are not referenced or not declared")
    return sd



def article(word) -> str:
    """The indefinite article for a class name in messages: "an Adam", "an SGD", "an
    RMSprop" (initialisms by their first letter's name), "a StepLR", "a Lion"."""
    w = str(word)
    if w[:2].isupper():                          # an initialism: SGD, RMSprop, NAdam, ASGD
        return "an" if w[0] in "AEFHILMNORSX" else "a"
    return "an" if w[:1].lower() in "aeiou" else "a"
