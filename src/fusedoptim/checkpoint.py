"""Checkpoints: save and resume an optimizer, its parameters and schedulers, bit for bit.

``save(path, optimizer, params=None, extra=None, schedulers=())`` writes one ``.npz``
file; ``load(path, optimizer=None, params=None, schedulers=())`` validates it against
the objects you pass, then restores them in place and returns what else it holds::

    fusedoptim.checkpoint.save("ckpt.npz", opt, params={"W": W, "b": b},
                               extra={"epoch": 3}, schedulers=[sched])
    ...
    out = fusedoptim.checkpoint.load("ckpt.npz", opt, params={"W": W, "b": b},
                                     schedulers=[sched])
    out["extra"]["epoch"]  # 3

Safety
------
* No pickle, ever: the file holds plain numeric arrays plus one JSON document, and is
  read with ``np.load(path, allow_pickle=False)``.  A file with a pickled object in it
  is refused before anything is unpickled.
* Atomic: the archive is written to a temporary file in the target's directory,
  flushed and ``fsync``-ed, moved over the target with ``os.replace``, and the
  directory is ``fsync``-ed.  A crash or error mid-save leaves the previous file intact
  and removes the temporary file.
* ``load`` checks everything (format, version, optimizer kind, group structure, shapes,
  dtypes, scheduler states) before it changes anything; on error, your optimizer,
  arrays and schedulers are untouched.

Format (version 1)
------------------
An ``np.savez`` archive (zip of ``.npy`` files) with these entries:

``__meta__``
    uint8 array: a UTF-8 JSON document (below).
``optimizer/state/<i>/<name>``
    state buffer ``<name>`` of the optimizer's parameter ``<i>`` (flat index in group
    order, as in ``optimizer.state_dict()``).
``params/<k>``
    the ``k``-th saved parameter.
``extra/<k>``
    arrays found in ``extra``.

The JSON document::

    {"format": "fusedoptim.checkpoint", "version": 1, "library_version": "0.1.0",
     "optimizer": null | {
         "kind": "Adam", "iterations": 50,
         "param_groups": [{<hyperparameters>, "params": [0, 1]}, ...],
         "params": [{"shape": [3, 4], "dtype": "<f4"}, ...],
         "state": {"0": {"step": 50, "exp_avg": {"__array__": "optimizer/state/0/exp_avg"}, ...}}},
     "params": null | {"kind": "dict" | "list", "names": [...], "arrays": [{"__array__": "params/0"}, ...]},
     "schedulers": [{"kind": "StepLR", "state": {...}}, ...],
     "extra": {...}}

Values that JSON can't hold are tagged objects with one key: ``{"__array__": entry}``
(an array entry of the archive), ``{"__float__": "inf" | "-inf" | "nan"}``,
``{"__tuple__": [...]}``, ``{"__schedule__": config}`` (a Keras-style schedule given
as a group's ``lr``, rebuilt with ``fusedoptim.schedules.from_config``) and
``{"__dict__": {...}}`` (a user dict whose only key looks like a tag).  Floats are
written with Python's shortest round-trip repr, so they come back bit for bit.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import secrets
import zipfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import schedules as _schedules

__all__ = ["save", "load", "FORMAT", "VERSION", "CheckpointError"]

FORMAT = "fusedoptim.checkpoint"
VERSION = 1
_META = "__meta__"
_TAGS = ("__array__", "__float__", "__tuple__", "__schedule__", "__dict__")
# keys torch-style schedulers write into param groups (torch.optim.lr_scheduler)
_SCHEDULER_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
_ARRAY_KINDS = "biufc"  # bool, int, uint, float, complex: never object, never pickled


class CheckpointError(ValueError):
    """The file is not a valid fusedoptim checkpoint, or doesn't fit the given objects."""


def _library_version() -> str:
    try:
        from . import __version__
        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


# ===================================================================== encoding
class _Encoder:
    """Turns plain Python data into JSON values, moving arrays into archive entries."""

    def __init__(self):
        self.arrays: Dict[str, np.ndarray] = {}

    def add_array(self, key: str, a: np.ndarray, where: str) -> dict:
        if a.dtype.kind not in _ARRAY_KINDS or a.dtype.hasobject:
            raise TypeError(f"{where}: cannot store an array of dtype {a.dtype} (only bool/int/float/complex "
                            "arrays, which need no pickle)")
        self.arrays[key] = a
        return {"__array__": key}

    def value(self, v, where: str, prefix: Optional[str] = None):
        """``prefix``: archive name prefix for arrays found in v (None: arrays refused)."""
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
            return self.add_array(f"{prefix}{len([k for k in self.arrays if k.startswith(prefix)])}", v, where)
        if isinstance(v, np.generic):
            return self.value(v.item(), where, prefix)
        if isinstance(v, tuple):
            return {"__tuple__": [self.value(x, f"{where}[{i}]", prefix) for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]", prefix) for i, x in enumerate(v)]
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise TypeError(f"{where}: dict keys must be strings to be stored, got {k!r}")
                out[k] = self.value(x, f"{where}[{k!r}]", prefix)
            if len(out) == 1 and next(iter(out)) in _TAGS:
                out = {"__dict__": out}
            return out
        if callable(v):
            raise TypeError(f"{where}: cannot store the callable {v!r}; only fusedoptim.schedules objects "
                            "(which have get_config) can be stored as a learning rate")
        raise TypeError(f"{where}: cannot store a {type(v).__name__} ({v!r}); use numbers, strings, bools, None, "
                        "lists, tuples, dicts with string keys, or numeric numpy arrays")


def _decode(v, arrays: Dict[str, np.ndarray], where: str, used: set):
    if isinstance(v, list):
        return [_decode(x, arrays, f"{where}[{i}]", used) for i, x in enumerate(v)]
    if not isinstance(v, dict):
        if isinstance(v, float) and not math.isfinite(v):  # pragma: no cover - json parse_constant refuses these
            raise CheckpointError(f"{where}: non-finite float literal")
        return v
    if len(v) == 1:
        (tag, x), = v.items()
        if tag == "__array__":
            if not isinstance(x, str) or x not in arrays:
                raise CheckpointError(f"{where}: refers to array entry {x!r}, which the archive doesn't have")
            used.add(x)
            return arrays[x]
        if tag == "__float__":
            if x not in ("inf", "-inf", "nan"):
                raise CheckpointError(f"{where}: bad __float__ value {x!r}")
            return float(x)
        if tag == "__tuple__":
            if not isinstance(x, list):
                raise CheckpointError(f"{where}: __tuple__ must hold a list")
            return tuple(_decode(y, arrays, f"{where}[{i}]", used) for i, y in enumerate(x))
        if tag == "__schedule__":
            try:
                return _schedules.from_config(x)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{where}: can't rebuild the schedule {x!r}: {e}") from None
        if tag == "__dict__":
            if not isinstance(x, dict):
                raise CheckpointError(f"{where}: __dict__ must hold an object")
            return {k: _decode(y, arrays, f"{where}[{k!r}]", used) for k, y in x.items()}
    return {k: _decode(y, arrays, f"{where}[{k!r}]", used) for k, y in v.items()}


# ========================================================================= save
def _flat_params(optimizer) -> List[np.ndarray]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _encode_optimizer(optimizer, enc: _Encoder) -> dict:
    if not hasattr(optimizer, "state_dict") or not hasattr(optimizer, "param_groups"):
        raise TypeError(f"optimizer must be a fusedoptim Optimizer, got {type(optimizer).__name__}")
    sd = optimizer.state_dict()
    groups = []
    for gi, g in enumerate(sd["param_groups"]):
        out = {}
        for k, v in g.items():
            if k == "params":
                out[k] = [int(i) for i in v]
            else:
                out[k] = enc.value(v, f"optimizer param group {gi}: {k}")
        groups.append(out)
    state = {}
    for i, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            where = f"optimizer state of param {i}: {k}"
            if isinstance(v, np.ndarray):
                entry[k] = enc.add_array(f"optimizer/state/{int(i)}/{k}", v, where)
            else:
                entry[k] = enc.value(v, where)
        state[str(int(i))] = entry
    # other top-level counters of the state_dict (nonfinite_count, accum_count, ...)
    counters = {k: int(v) for k, v in sd.items()
                if k not in ("kind", "iterations", "state", "param_groups")
                and isinstance(v, numbers.Integral) and not isinstance(v, bool)}
    return {"kind": sd.get("kind", type(optimizer).__name__),
            "iterations": int(sd.get("iterations", getattr(optimizer, "iterations", 0))),
            "counters": counters,
            "param_groups": groups,
            "params": [{"shape": list(p.shape), "dtype": p.dtype.str} for p in _flat_params(optimizer)],
            "state": state}


def _encode_params(params, enc: _Encoder) -> dict:
    if isinstance(params, dict):
        kind, names, arrays = "dict", list(params.keys()), list(params.values())
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"params: names must be strings, got {n!r}")
    elif isinstance(params, (list, tuple)):
        kind, names, arrays = "list", [str(i) for i in range(len(params))], list(params)
    else:
        raise TypeError(f"params must be a dict of name -> array or a list of arrays, got {type(params).__name__}")
    refs = []
    for k, (n, a) in enumerate(zip(names, arrays)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"params[{n!r}] must be a numpy.ndarray, got {type(a).__name__}")
        refs.append(enc.add_array(f"params/{k}", a, f"params[{n!r}]"))
    return {"kind": kind, "names": names, "arrays": refs}


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows can't open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def save(path, optimizer=None, params=None, extra: Optional[dict] = None, schedulers: Sequence = ()) -> None:
    """Atomically write a checkpoint to ``path`` (used as given; ``.npz`` is not appended).

    ``optimizer``: a fusedoptim optimizer (its ``state_dict()``: hyperparameters, a
    schedule given as ``lr`` as its config, ``iterations``, every state buffer).
    ``params``: dict of name -> array or list of arrays (your model's parameters).
    ``extra``: a dict of JSON-able data (numbers, strings, bools, None, lists, tuples,
    dicts with string keys) and numeric numpy arrays, e.g. the epoch or an RNG state.
    ``schedulers``: torch-style schedulers; their ``state_dict()`` s are stored in order.

    Everything is encoded before the file is opened, so an unstorable value raises
    without touching the disk.
    """
    path = os.fspath(path)
    enc = _Encoder()
    meta: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "library_version": _library_version()}
    meta["optimizer"] = None if optimizer is None else _encode_optimizer(optimizer, enc)
    meta["params"] = None if params is None else _encode_params(params, enc)
    scheds = []
    for i, s in enumerate(schedulers):
        if not hasattr(s, "state_dict") or not hasattr(s, "load_state_dict"):
            raise TypeError(f"schedulers[{i}] must have state_dict/load_state_dict, got {type(s).__name__}")
        scheds.append({"kind": type(s).__name__, "state": enc.value(s.state_dict(), f"schedulers[{i}] state")})
    meta["schedulers"] = scheds
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    meta["extra"] = enc.value(extra if extra is not None else {}, "extra", prefix="extra/")
    doc = json.dumps(meta, allow_nan=False, separators=(",", ":")).encode("utf-8")
    entries = {_META: np.frombuffer(doc, dtype=np.uint8)}
    entries.update(enc.arrays)

    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


# ========================================================================= load
_PICKLE_MSG = ("refusing to load {what}: it contains a pickled Python object; fusedoptim checkpoints never "
               "contain pickles (the file is not a fusedoptim checkpoint, or it was tampered with). "
               "Nothing was unpickled.")


def _read(path: str) -> Dict[str, np.ndarray]:
    """Every entry of the archive, read with allow_pickle=False."""
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CheckpointError(_PICKLE_MSG.format(what=repr(path))) from None
        raise CheckpointError(f"{path!r} is not a fusedoptim checkpoint: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"{path!r} is not a fusedoptim checkpoint (not an .npz archive, or truncated): "
                              f"{e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path!r} is not a fusedoptim checkpoint: it holds a single array, not an .npz archive")
    out = {}
    with z:
        for name in z.files:
            try:
                out[name] = z[name]
            except ValueError as e:
                if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
                    raise CheckpointError(_PICKLE_MSG.format(what=f"entry {name!r} of {path!r}")) from None
                raise CheckpointError(f"{path!r}: entry {name!r} is unreadable: {e}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise CheckpointError(f"{path!r}: entry {name!r} is unreadable (truncated file?): {e}") from None
    return out


def _reject_constant(c):
    raise CheckpointError(f"metadata contains the non-standard JSON constant {c}")


def _parse_meta(arrays: Dict[str, np.ndarray], path: str) -> dict:
    raw = arrays.get(_META)
    if raw is None:
        raise CheckpointError(f"{path!r} is not a fusedoptim checkpoint: it has no {_META!r} entry")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path!r}: {_META!r} must be a 1-d uint8 array, got {raw.dtype} with shape {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path!r}: the metadata is not valid UTF-8 JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path!r} is not a fusedoptim checkpoint (format {fmt!r}, expected {FORMAT!r})")
    v = meta.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise CheckpointError(f"{path!r}: bad format version {v!r}")
    if v > VERSION:
        raise CheckpointError(f"{path!r} was written by a newer fusedoptim (format version {v}, library "
                              f"{meta.get('library_version')!r}); this version reads format versions <= {VERSION}")
    for k in ("optimizer", "params", "schedulers", "extra"):
        if k not in meta:
            raise CheckpointError(f"{path!r}: the metadata has no {k!r} entry")
    return meta


def _shape_dtype(a: np.ndarray):
    return tuple(a.shape), a.dtype


def _check_optimizer(om: dict, optimizer, arrays, used) -> tuple:
    """Validate the saved optimizer against ``optimizer``; return (state_dict, group extras)."""
    if om is None:
        raise CheckpointError("the checkpoint holds no optimizer state (it was saved with optimizer=None)")
    if not isinstance(om, dict) or not {"kind", "iterations", "param_groups", "params", "state"} <= set(om):
        raise CheckpointError("the checkpoint's optimizer entry is malformed")
    me = type(optimizer).__name__
    if om["kind"] != me:
        raise CheckpointError(f"the checkpoint holds a {om['kind']} optimizer, not {me}")
    it = om["iterations"]
    if not isinstance(it, int) or isinstance(it, bool) or it < 0:
        raise CheckpointError(f"the checkpoint's iterations must be a non-negative integer, got {it!r}")
    groups = optimizer.param_groups
    sgroups = om["param_groups"]
    if not isinstance(sgroups, list) or len(sgroups) != len(groups):
        n = len(sgroups) if isinstance(sgroups, list) else sgroups
        raise CheckpointError(f"the checkpoint has {n} param groups, this optimizer has {len(groups)}")
    flat = _flat_params(optimizer)
    sparams = om["params"]
    if not isinstance(sparams, list) or len(sparams) != len(flat):
        raise CheckpointError(f"the checkpoint's optimizer has {len(sparams) if isinstance(sparams, list) else '?'} "
                              f"parameters, this optimizer has {len(flat)}")
    for i, (sp, p) in enumerate(zip(sparams, flat)):
        try:
            shape, dtype = tuple(sp["shape"]), np.dtype(sp["dtype"])
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"the checkpoint's description of optimizer parameter {i} is malformed: "
                                  f"{sp!r}") from None
        if shape != p.shape:
            raise CheckpointError(f"optimizer parameter {i}: shape {shape} in the checkpoint, {p.shape} in this "
                                  "optimizer")
        if dtype != p.dtype:
            raise CheckpointError(f"optimizer parameter {i}: dtype {dtype} in the checkpoint, {p.dtype} in this "
                                  "optimizer")
    new_groups, extras = [], []
    base = 0
    for gi, (sg, g) in enumerate(zip(sgroups, groups)):
        if not isinstance(sg, dict) or not isinstance(sg.get("params"), list):
            raise CheckpointError(f"the checkpoint's param group {gi} is malformed")
        if len(sg["params"]) != len(g["params"]):
            raise CheckpointError(f"param group {gi}: {len(sg['params'])} parameters in the checkpoint, "
                                  f"{len(g['params'])} in this optimizer")
        if sg["params"] != list(range(base, base + len(g["params"]))):
            raise CheckpointError(f"param group {gi}: parameter indices {sg['params']} are not in group order")
        base += len(g["params"])
        dg = {k: _decode(v, arrays, f"param group {gi}: {k}", used) for k, v in sg.items()}
        ex = {k: dg.pop(k) for k in _SCHEDULER_GROUP_KEYS if k in dg and k not in optimizer.defaults}
        for k, v in ex.items():
            if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))):
                raise CheckpointError(f"param group {gi}: {k} must be a finite number, got {v!r}")
        new_groups.append(dg)
        extras.append(ex)
    sstate = om["state"]
    if not isinstance(sstate, dict):
        raise CheckpointError("the checkpoint's optimizer state is malformed")
    state = {}
    for key, st in sstate.items():
        try:
            i = int(key)
        except ValueError:
            raise CheckpointError(f"optimizer state key {key!r} is not a parameter index") from None
        if not 0 <= i < len(flat) or str(i) != key:
            raise CheckpointError(f"optimizer state has an entry for parameter {key!r}; the optimizer has "
                                  f"{len(flat)} parameters")
        if not isinstance(st, dict):
            raise CheckpointError(f"optimizer state of parameter {i} is malformed")
        ds = {k: _decode(v, arrays, f"optimizer state of parameter {i}: {k}", used) for k, v in st.items()}
        for k, v in ds.items():
            if isinstance(v, np.ndarray):
                p = flat[i]
                if v.shape != p.shape:
                    raise CheckpointError(f"optimizer state of parameter {i}: {k!r} has shape {v.shape}, the "
                                          f"parameter has shape {p.shape}")
                if v.dtype != p.dtype:
                    raise CheckpointError(f"optimizer state of parameter {i}: {k!r} has dtype {v.dtype}, the "
                                          f"parameter has dtype {p.dtype}")
            elif not (isinstance(v, numbers.Real) and not isinstance(v, bool)):
                raise CheckpointError(f"optimizer state of parameter {i}: {k!r} must be an array or a number, "
                                      f"got {v!r}")
        state[i] = ds
    counters = om.get("counters", {})
    if not isinstance(counters, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in counters.items()):
        raise CheckpointError(f"the checkpoint's optimizer counters are malformed: {counters!r}")
    return dict(counters, kind=om["kind"], iterations=it, state=state, param_groups=new_groups), extras


def _check_params(pm: dict, params, arrays, used) -> tuple:
    """Validate saved params against the user's arrays; return (saved container, [(target, saved)])."""
    if pm is None:
        if params is not None:
            raise CheckpointError("the checkpoint holds no params (it was saved with params=None)")
        return None, []
    if (not isinstance(pm, dict) or pm.get("kind") not in ("dict", "list") or not isinstance(pm.get("names"), list)
            or not isinstance(pm.get("arrays"), list) or len(pm["names"]) != len(pm["arrays"])):
        raise CheckpointError("the checkpoint's params entry is malformed")
    names = pm["names"]
    saved = [_decode(r, arrays, f"params[{n!r}]", used) for n, r in zip(names, pm["arrays"])]
    for n, a in zip(names, saved):
        if not isinstance(a, np.ndarray):
            raise CheckpointError(f"params[{n!r}] in the checkpoint is not an array")
    container = dict(zip(names, saved)) if pm["kind"] == "dict" else list(saved)
    if params is None:
        return container, []
    pairs = []
    if pm["kind"] == "dict":
        if not isinstance(params, dict):
            raise CheckpointError("the checkpoint's params are a dict of name -> array; pass a dict to load into")
        missing = [n for n in names if n not in params]
        unexpected = [n for n in params if n not in container]
        if missing or unexpected:
            raise CheckpointError(f"params don't match the checkpoint: missing {missing}, not in the checkpoint "
                                  f"{unexpected}")
        pairs = [(n, params[n], container[n]) for n in names]
    else:
        if not isinstance(params, (list, tuple)):
            raise CheckpointError("the checkpoint's params are a list; pass a list of arrays to load into")
        if len(params) != len(saved):
            raise CheckpointError(f"the checkpoint has {len(saved)} params, {len(params)} were given")
        pairs = [(str(i), t, s) for i, (t, s) in enumerate(zip(params, saved))]
    for n, t, s in pairs:
        if not isinstance(t, np.ndarray):
            raise CheckpointError(f"params[{n!r}]: can only load into a numpy.ndarray, got {type(t).__name__}")
        if t.shape != s.shape:
            raise CheckpointError(f"params[{n!r}]: shape {s.shape} in the checkpoint, {t.shape} given")
        if t.dtype != s.dtype:
            raise CheckpointError(f"params[{n!r}]: dtype {s.dtype} in the checkpoint, {t.dtype} given")
        if not t.flags.writeable:
            raise CheckpointError(f"params[{n!r}]: the given array is read-only")
    return container, [(t, s) for _, t, s in pairs]


def _load_optimizer(optimizer, sd: dict, extras: List[dict]) -> None:
    optimizer.load_state_dict(sd)
    for g, ex in zip(optimizer.param_groups, extras):
        g.update(ex)


def _snapshot(optimizer) -> tuple:
    sd = optimizer.state_dict()
    extras = []
    for g in sd["param_groups"]:
        extras.append({k: g.pop(k) for k in _SCHEDULER_GROUP_KEYS if k in g and k not in optimizer.defaults})
    return sd, extras


def load(path, optimizer=None, params=None, schedulers: Sequence = ()) -> dict:
    """Read a checkpoint written by ``save``; restore the given objects in place.

    ``optimizer``: gets the saved ``state_dict`` (``load_state_dict``), including a
    schedule stored as ``lr`` and the keys torch-style schedulers keep in param groups.
    ``params``: a dict (or list) of your arrays, filled in place (``arr[...] = saved``);
    names, shapes and dtypes must match.  ``schedulers``: as many torch-style schedulers
    as were saved, of the same kinds, in the same order, each built on ``optimizer``;
    each gets its state back (pass none to leave schedulers alone).  Build the optimizer
    with its parameters first (a Keras-style optimizer that hasn't seen
    ``apply_gradients`` has no param groups to load into).

    Everything is validated before anything changes; on error a ``CheckpointError``
    (a ``ValueError``) says what doesn't fit, and the given objects are untouched.

    Returns a dict: ``extra`` (as saved, arrays included), ``params`` (the saved
    arrays, a dict or list, or None), ``optimizer`` (the saved state_dict, or None),
    ``iterations``, ``optimizer_kind``, ``schedulers`` (their saved state_dicts),
    ``version`` and ``library_version``.
    """
    path = os.fspath(path)
    arrays = _read(path)
    meta = _parse_meta(arrays, path)
    used = {_META}

    om = meta["optimizer"]
    opt_sd, extras = (None, None)
    if optimizer is not None:
        opt_sd, extras = _check_optimizer(om, optimizer, arrays, used)
    elif om is not None:
        if not isinstance(om, dict):
            raise CheckpointError("the checkpoint's optimizer entry is malformed")
        opt_sd = _decode({k: v for k, v in om.items() if k != "state"}, arrays, "optimizer", used)
        opt_sd["state"] = {int(k): _decode(v, arrays, f"optimizer state of parameter {k}", used)
                           for k, v in om.get("state", {}).items()}

    saved_params, writes = _check_params(meta["params"], params, arrays, used)

    ms = meta["schedulers"]
    if not isinstance(ms, list) or not all(isinstance(m, dict) and {"kind", "state"} <= set(m) for m in ms):
        raise CheckpointError("the checkpoint's schedulers entry is malformed")
    sched_states = [_decode(m["state"], arrays, f"schedulers[{i}] state", used) for i, m in enumerate(ms)]
    schedulers = list(schedulers)
    if schedulers:
        if len(schedulers) != len(ms):
            raise CheckpointError(f"the checkpoint has {len(ms)} scheduler states, {len(schedulers)} schedulers "
                                  "were given")
        for i, (s, m, st) in enumerate(zip(schedulers, ms, sched_states)):
            if type(s).__name__ != m["kind"]:
                raise CheckpointError(f"schedulers[{i}]: the checkpoint holds a {m['kind']}, got a {type(s).__name__}")
            check = getattr(s, "_check_state_dict", None)
            if check is not None:
                try:
                    check(st)
                except (TypeError, ValueError, KeyError) as e:
                    raise CheckpointError(f"schedulers[{i}] ({m['kind']}): {e}") from None
            if optimizer is not None and getattr(s, "optimizer", optimizer) is not optimizer:
                raise CheckpointError(f"schedulers[{i}] drives another optimizer than the one given")

    extra = _decode(meta["extra"], arrays, "extra", used)
    unused = sorted(set(arrays) - used)
    if unused:
        raise CheckpointError(f"{path!r}: the archive has entries the metadata doesn't mention: {unused[:5]}")

    # ---- commit: nothing below should fail on the file's content
    if optimizer is not None:
        before = _snapshot(optimizer)
        try:
            _load_optimizer(optimizer, opt_sd, extras)
        except (TypeError, ValueError) as e:  # the optimizer's own checks (hyperparameter values)
            raise CheckpointError(f"the optimizer refused the checkpoint's state: {e}") from None
        try:
            for s, st in zip(schedulers, sched_states):
                s.load_state_dict(st)
        except BaseException:
            _load_optimizer(optimizer, *before)
            raise
    else:
        for s, st in zip(schedulers, sched_states):
            s.load_state_dict(st)
    for t, s in writes:
        t[...] = s

    return {"extra": extra, "params": saved_params, "optimizer": opt_sd,
            "iterations": None if om is None else om.get("iterations"),
            "optimizer_kind": None if om is None else om.get("kind"),
            "schedulers": sched_states, "version": meta["version"],
            "library_version": meta.get("library_version")}
