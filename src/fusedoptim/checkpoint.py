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
* No pickle, ever: the file holds plain numeric arrays plus one JSON document.  A file
  with a pickled object in it is refused before anything is unpickled.
* Checked before read: the zip directory, every entry's ``.npy`` header and the JSON
  document are checked (names, dtypes, shapes, sizes) before any array data is read,
  and no more than the document declares is read (:mod:`fusedoptim.archive`).  Every
  failure to load is a ``CheckpointError`` (a ``ValueError``).
* Portable: an entry stored in the other byte order (written on a big-endian machine)
  is byte-swapped to this machine's order as it is read; dtypes must otherwise match.
* Atomic: the archive is written to a temporary file in the target's directory,
  flushed and ``fsync``-ed, moved over the target with ``os.replace``, and the
  directory is ``fsync``-ed.  An error mid-save leaves the previous file intact and
  removes the temporary file; the temporary file of a save killed outright (SIGKILL,
  power loss) is deleted by the next save to the same path.
* ``load`` checks everything (format, version, optimizer kind, group structure, shapes,
  dtypes, scheduler states) before it changes anything; on error, your optimizer,
  arrays and schedulers are untouched.

Format (version 3; versions 1 and 2 are read too)
-------------------------------------------------
An ``np.savez`` archive (zip of uncompressed ``.npy`` files) with these entries:

``__meta__``
    uint8 array: a UTF-8 JSON document (below).
``optimizer/state/<i>/<name>``
    state buffer ``<name>`` of the optimizer's parameter ``<i>`` (flat index in group
    order; for named parameters, the position of its name in ``"names"``).
``params/<k>``
    the ``k``-th saved parameter.
``extra/<k>``
    arrays found in ``extra``.

The JSON document::

    {"format": "fusedoptim.checkpoint", "version": 3, "library_version": "0.1.0",
     "optimizer": null | {
         "kind": "Adam", "iterations": 50, "counters": {"nonfinite_count": 0, ...},
         "param_groups": [{<hyperparameters>, "params": [0, 1]}, ...],
         "params": [{"shape": [3, 4], "dtype": "<f4"}, ...],
         "names": ["W", "b"],    # only when the parameters have names (version 3)
         "state": {"0": {"step": 50, "exp_avg": {"__array__": "optimizer/state/0/exp_avg"}, ...}}},
     "params": null | {"kind": "dict" | "list", "names": [...], "arrays": [{"__array__": "params/0"}, ...]},
     "schedulers": [{"kind": "StepLR", "state": {...}}, ...],
     "extra": {...},
     "arrays": {"optimizer/state/0/exp_avg": {"dtype": "<f4", "shape": [3, 4]}, ...}}

``arrays`` (new in version 2) declares every array entry, so a reader checks each entry
before reading it.  ``names`` (version 3) holds the optimizer's parameter names; ``load``
then matches the saved state to the optimizer's parameters by name, whatever their order.
A file whose optimizer has no names is still written as version 2, readable by older
releases; a version 3 file is refused by them rather than loaded by position.

Values JSON can't hold are tagged objects (``{"__array__": entry}``,
``{"__float__": "inf"}``, ``{"__tuple__": [...]}``, ``{"__schedule__": config}``,
``{"__dict__": {...}}``): the state codec, :mod:`fusedoptim.codec`, which ZeRO-1 shard
files and the data-parallel broadcast use too.  Floats are written with Python's
shortest round-trip repr, so they come back bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import codec as _codec
from .archive import CheckpointError, read_archive, remove_stale_temporaries, write_archive
from .codec import StateFormatError

__all__ = ["save", "load", "FORMAT", "VERSION", "CheckpointError", "remove_stale_temporaries"]

FORMAT = "fusedoptim.checkpoint"
VERSION = 3      # written when the optimizer's parameters have names; else 2 (see the module docstring)
_READS = (1, 2, 3)  # format versions load() reads


def _library_version() -> str:
    try:
        from . import __version__
        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


# ========================================================================= save
def _encode_params(params, enc: _codec.Encoder, copy: bool = False) -> dict:
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
        refs.append(enc.add_array(f"params/{k}", a.copy() if copy else a, f"params[{n!r}]"))
    return {"kind": kind, "names": names, "arrays": refs}


def save(path, optimizer=None, params=None, extra: Optional[dict] = None, schedulers: Sequence = ()) -> None:
    """Atomically write a checkpoint to ``path`` (used as given; ``.npz`` is not appended).

    ``optimizer``: a fusedoptim optimizer (its ``state_dict()``: hyperparameters, a
    schedule given as ``lr`` as its config, ``iterations``, every state buffer).
    ``params``: dict of name -> array or list of arrays (your model's parameters).
    ``extra``: a dict of JSON-able data (numbers, strings, bools, None, lists, tuples,
    dicts with string keys) and numeric numpy arrays, e.g. the epoch or an RNG state.
    ``schedulers``: torch-style schedulers; their ``state_dict()`` s are stored in order.

    Everything is encoded before the file is opened, so an unstorable value raises
    without touching the disk.  Temporary files of earlier saves to ``path`` killed
    mid-write (their process is gone) are deleted.

    Thread-safe: the optimizer's state and ``params`` are snapshot under
    ``optimizer.lock`` (the lock ``step`` holds), so a save from a background thread
    while another thread steps writes one consistent point of training.  The params are
    copied for that (peak memory: one more copy of them, besides the state copies of
    ``state_dict()``); the file is written after the lock is released.
    """
    enc = _codec.Encoder()
    meta: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "library_version": _library_version()}
    lock = getattr(optimizer, "lock", None) if optimizer is not None else None
    with lock if lock is not None else contextlib.nullcontext():
        # one snapshot: no step of this optimizer (from another thread) between its state
        # and the params; the params are copied so the file is written after the lock is
        # released (state_dict() copies the state)
        meta["optimizer"] = None if optimizer is None else _codec.encode_optimizer(optimizer, enc)
        if meta["optimizer"] is None or "names" not in meta["optimizer"]:
            meta["version"] = 2          # nothing a version 2 reader would misread
        meta["params"] = None if params is None else _encode_params(params, enc, copy=lock is not None)
    scheds = []
    for i, s in enumerate(schedulers):
        if not hasattr(s, "state_dict") or not hasattr(s, "load_state_dict"):
            raise TypeError(f"schedulers[{i}] must have state_dict/load_state_dict, got {type(s).__name__}")
        scheds.append({"kind": type(s).__name__, "state": enc.value(s.state_dict(), f"schedulers[{i}] state")})
    meta["schedulers"] = scheds
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    meta["extra"] = enc.value(extra if extra is not None else {}, "extra", prefix="extra/")
    write_archive(path, meta, enc.arrays)


# ========================================================================= load
def _check_meta(meta: dict) -> bool:
    """Format and version checks of the metadata; True: the file must declare its arrays."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"not a fusedoptim checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    v = meta.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise CheckpointError(f"bad format version {v!r}")
    if v > VERSION:
        raise CheckpointError(f"written by a newer fusedoptim (format version {v}, library "
                              f"{meta.get('library_version')!r}); this version reads format versions {_READS}")
    for k in ("optimizer", "params", "schedulers", "extra"):
        if k not in meta:
            raise CheckpointError(f"the metadata has no {k!r} entry")
    return v >= 2


def _check_params(pm: dict, params, arrays, used) -> tuple:
    """Validate saved params against the user's arrays; return (saved container, [(target, saved)])."""
    if pm is None:
        if params is not None:
            raise CheckpointError("the checkpoint holds no params (it was saved with params=None)")
        return None, []
    if (not isinstance(pm, dict) or pm.get("kind") not in ("dict", "list") or not isinstance(pm.get("names"), list)
            or not isinstance(pm.get("arrays"), list) or len(pm["names"]) != len(pm["arrays"])
            or not all(isinstance(n, str) for n in pm["names"])):
        raise CheckpointError("the checkpoint's params entry is malformed")
    names = pm["names"]
    saved = [_codec.decode_value(r, arrays, f"params[{n!r}]", used) for n, r in zip(names, pm["arrays"])]
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


def _check_schedulers(ms, schedulers: list, optimizer, arrays, used) -> list:
    """The saved scheduler states, checked against ``schedulers`` (if any are given)."""
    if not isinstance(ms, list) or not all(isinstance(m, dict) and {"kind", "state"} <= set(m) for m in ms):
        raise CheckpointError("the checkpoint's schedulers entry is malformed")
    states = [_codec.decode_value(m["state"], arrays, f"schedulers[{i}] state", used) for i, m in enumerate(ms)]
    if not schedulers:
        return states
    if len(schedulers) != len(ms):
        raise CheckpointError(f"the checkpoint has {len(ms)} scheduler states, {len(schedulers)} schedulers were "
                              "given")
    for i, (s, m, st) in enumerate(zip(schedulers, ms, states)):
        if type(s).__name__ != m["kind"]:
            have, got = m["kind"], type(s).__name__
            raise CheckpointError(f"schedulers[{i}]: the checkpoint holds {_codec.article(have)} {have}, got "
                                  f"{_codec.article(got)} {got}")
        check = getattr(s, "_check_state_dict", None)
        if check is not None:
            try:
                check(st)
            except (TypeError, ValueError, KeyError, ArithmeticError, AttributeError) as e:
                raise CheckpointError(f"schedulers[{i}] ({m['kind']}): {e}") from None
        if optimizer is not None and getattr(s, "optimizer", optimizer) is not optimizer:
            raise CheckpointError(f"schedulers[{i}] drives another optimizer than the one given")
    return states


def _validate(path: str, meta: dict, arrays, optimizer, params, schedulers: list, strict: bool = True) -> tuple:
    """Decode and check everything the file holds against the given objects; change nothing."""
    used = {"__meta__"}
    om = meta["optimizer"]
    opt_sd = None
    if optimizer is not None:
        opt_sd = _codec.decode_optimizer(om, arrays, optimizer, used, strict=strict)
    elif om is not None:
        opt_sd = _codec.decode_optimizer(om, arrays, None, used)
    saved_params, writes = _check_params(meta["params"], params, arrays, used)
    sched_states = _check_schedulers(meta["schedulers"], schedulers, optimizer, arrays, used)
    extra = _codec.decode_value(meta["extra"], arrays, "extra", used)
    unused = sorted(set(arrays) - used)
    if unused:
        raise CheckpointError(f"{path!r}: the archive has entries the metadata doesn't mention: {unused[:5]}")
    return opt_sd, saved_params, writes, sched_states, extra


def _commit(optimizer, opt_sd, schedulers, sched_states, writes, strict: bool = True, convert_state_dtype=False):
    """Restore the objects; nothing here should fail on content ``_validate`` accepted,
    and if a scheduler still refuses its state the optimizer is put back.  Returns the
    optimizer's ``IncompatibleKeys`` (None without an optimizer)."""
    incompatible = None
    if optimizer is not None:
        before = optimizer.state_dict()
        try:
            incompatible = optimizer.load_state_dict(opt_sd, strict=strict, convert_state_dtype=convert_state_dtype)
        except (TypeError, ValueError, ArithmeticError) as e:  # the optimizer's own checks (hyperparameter values)
            raise CheckpointError(f"the optimizer refused the checkpoint's state: {e}") from None
        try:
            for s, st in zip(schedulers, sched_states):
                s.load_state_dict(st)
        except BaseException as e:
            optimizer.load_state_dict(before, convert_state_dtype=True)
            if isinstance(e, (TypeError, ValueError, KeyError, ArithmeticError, AttributeError)):
                raise CheckpointError(f"a scheduler refused the checkpoint's state: {e}") from None
            raise
    else:
        for s, st in zip(schedulers, sched_states):
            s.load_state_dict(st)
    for t, s in writes:
        t[...] = s
    return incompatible


def load(path, optimizer=None, params=None, schedulers: Sequence = (), strict: bool = True, *,
         convert_state_dtype: bool = False) -> dict:
    """Read a checkpoint written by ``save``; restore the given objects in place.

    ``optimizer``: gets the saved ``state_dict`` (``load_state_dict``), including a
    schedule stored as ``lr`` and the keys torch-style schedulers keep in param groups.
    ``params``: a dict (or list) of your arrays, filled in place (``arr[...] = saved``);
    names, shapes and dtypes must match.  ``schedulers``: as many torch-style schedulers
    as were saved, of the same kinds, in the same order, each built on ``optimizer``;
    each gets its state back (pass none to leave schedulers alone).  Build the optimizer
    with its parameters first (a Keras-style optimizer that hasn't seen
    ``apply_gradients`` has no param groups to load into).  An optimizer saved with
    named parameters is matched by name (their order may differ); ``strict=False``
    loads the names both have (``optimizer.load_state_dict(sd, strict=False)``).

    The file is checked before its data is read (see :mod:`fusedoptim.archive`), then
    everything is validated before anything changes; on any error a ``CheckpointError``
    (a ``ValueError``) says what doesn't fit, and the given objects are untouched.  A
    missing file raises ``FileNotFoundError``.  State saved with another ``state_dtype``
    (bfloat16 vs float32) is refused unless ``convert_state_dtype=True`` (see
    ``Optimizer.load_state_dict``).

    Returns a dict: ``extra`` (as saved, arrays included), ``params`` (the saved
    arrays, a dict or list, or None), ``optimizer`` (the saved state_dict, or None),
    ``iterations``, ``optimizer_kind``, ``schedulers`` (their saved state_dicts),
    ``incompatible_keys`` (what ``optimizer.load_state_dict`` returned, or None),
    ``version`` and ``library_version``.
    """
    path = os.fspath(path)

    def check_meta(meta):
        try:
            return _check_meta(meta)
        except CheckpointError as e:
            raise CheckpointError(f"{path!r}: {e}") from None

    meta, arrays = read_archive(path, check_meta)
    schedulers = list(schedulers)
    try:
        opt_sd, saved_params, writes, sched_states, extra = _validate(path, meta, arrays, optimizer, params,
                                                                      schedulers, strict)
    except CheckpointError:
        raise
    except StateFormatError as e:
        raise CheckpointError(str(e)) from None
    except RecursionError:
        raise CheckpointError(f"{path!r}: the metadata is nested too deeply") from None
    incompatible = _commit(optimizer, opt_sd, schedulers, sched_states, writes, strict, convert_state_dtype)
    om = meta["optimizer"]
    return {"extra": extra, "params": saved_params, "optimizer": opt_sd,
            "iterations": None if opt_sd is None else opt_sd["iterations"],
            "optimizer_kind": None if om is None else om.get("kind"),
            "schedulers": sched_states, "incompatible_keys": incompatible, "version": meta["version"],
            "library_version": meta.get("library_version")}
