"""``Optimizer.state_dict`` and ``load_state_dict``: torch's layout, validated loading.

A state_dict is plain data: ``{"kind", "iterations", "nonfinite_count", "accum_count",
"seed", "state": {key: {name: number or array}}, "param_groups": [{hyperparameters...,
"params": [keys]}]}`` (``seed``: the optimizer's rounding seed, :mod:`fusedoptim.lowp`;
loading a state_dict without one keeps the optimizer's own).  A parameter's key is its flat index (torch's layout) or, when the
parameters have names, its name: ``{"state": {"W": {...}}, "param_groups": [{...,
"params": ["W", "b"]}]}``.  Arrays are host copies.

Loading checks everything (kind, groups, hyperparameters through the optimizer's
``check_group``, state keys, shapes, dtypes, counters) and only then commits, so a
rejected dict changes nothing.  A named state_dict is mapped by name (``strict=False``
tolerates missing and unexpected names and reports them as :class:`IncompatibleKeys`);
hyperparameters go to the group at the same position.  A positional one loads by
position, into named parameters too (older state_dicts).  Serialising it (checkpoints,
ZeRO shards, broadcasts) is :mod:`fusedoptim.codec`'s job.
"""
from __future__ import annotations

import types
from typing import Any, Dict, List, NamedTuple

import numpy as np

from ._backends import is_array
from ._spec import state_shape
from .lowp import absmax_key, dequantize, is_bfloat16, quantize, signed_buffers
from .validate import check_int, check_real, scalar_from

__all__ = ["build", "load", "SCHEDULER_KEYS", "IncompatibleKeys", "is_named"]

# keys torch-style LR schedulers keep in param groups (as torch does); state_dicts carry them
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
_TOP = {"kind", "iterations", "nonfinite_count", "accum_count", "seed", "state", "param_groups", "storage"}


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(sd, strict=False)`` could not map by name (torch's
    ``_IncompatibleKeys``): ``missing_keys``, this optimizer's parameter names the
    state_dict lacks (their state is left as it was); ``unexpected_keys``, names in the
    state_dict this optimizer has no parameter for (ignored)."""
    missing_keys: List[str]
    unexpected_keys: List[str]


def is_named(state_dict) -> bool:
    """Whether a state_dict keys its parameters by name (every group's ``params`` holds
    strings) rather than by flat index."""
    groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    keys = [k for g in groups if isinstance(g, dict) for k in (g.get("params") or ())] \
        if isinstance(groups, (list, tuple)) else []
    return bool(keys) and all(isinstance(k, str) for k in keys)


def build(opt) -> dict:
    reg = opt.registry
    names = reg.names
    key = (lambda i: i) if names is None else names.__getitem__
    state, groups = {}, []
    for g, idx in zip(reg.groups, reg.group_indices()):
        for i, p in zip(idx, g["params"]):
            st = reg.store.get(id(p))
            if st is not None:
                state[key(i)] = {k: reg.to_host(v) for k, v in st.items()}
        gd = {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"}
        gd["params"] = [key(i) for i in idx]
        groups.append(gd)
    for i, a in opt.pipeline.snapshot(reg.to_host).items():
        state.setdefault(key(i), {})["grad_accum"] = a
    out = {"kind": type(opt).__name__, "iterations": opt.iterations, "nonfinite_count": opt.nonfinite_count,
           "accum_count": opt.pipeline.acc_count, "seed": opt.options["seed"], "state": state, "param_groups": groups}
    if reg.state_dtype == "int8":    # the tag of 8-bit state: how its codes and absmax arrays are laid out
        out["storage"] = storage_tag(reg)
    return out


def storage_tag(reg) -> dict:
    """``{"state_dtype": "int8", "block_size", "min_8bit_size"}``: the layout of 8-bit state."""
    return {"state_dtype": reg.state_dtype, "block_size": reg.block_size, "min_8bit_size": reg.min_8bit_size}


def _saved_block(storage) -> "int | None":
    """The block size a state_dict's ``storage`` tag names (None: no tag)."""
    if storage is None:
        return None
    if not isinstance(storage, dict) or storage.get("state_dtype") != "int8":
        raise ValueError(f"state_dict['storage'] must be {{'state_dtype': 'int8', 'block_size': ..., ...}}, got "
                         f"{storage!r}")
    from ._kernels import q8_check_block
    try:
        return q8_check_block(storage.get("block_size"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"state_dict['storage']: {e}") from None


def _infer_block(size: int, nblocks: int):
    """The block size (power of two, 64..4096) that splits ``size`` elements into
    ``nblocks`` blocks (the smallest if several: then any gives the same codes), or None."""
    b = 64
    while b <= 4096:
        if -(-size // b) == nblocks:
            return b
        b *= 2
    return None


def _describe(kind: str, block) -> str:
    return f"int8 (blocks of {block})" if kind == "int8" else kind


def _stage_buffer(opt, p, k, a, st, where, me, convert, signed, saved_block) -> dict:
    """The staged entries of state buffer ``k`` (``a``: its saved array, host): its
    array, plus its absmax for 8-bit state; converted only with ``convert``."""
    reg = opt.registry
    ak = absmax_key(k)
    awhere = where.rsplit("[", 1)[0] + f"[{ak!r}]"
    if ak in st:                                        # saved 8-bit: codes + absmax
        am = reg.to_host(st[ak]) if is_array(st[ak]) else np.asarray(st[ak])
        if a.dtype != np.uint8:
            raise TypeError(f"{where}: 8-bit state codes must be uint8, got {a.dtype}")
        if a.shape != p.shape:
            raise ValueError(f"{where}: shape {a.shape} does not match the parameter's shape {p.shape}")
        if am.dtype != np.float32 or am.ndim != 1:
            raise TypeError(f"{awhere}: the absmax of 8-bit state must be a 1-D float32 "
                            f"array, got {am.dtype} of shape {am.shape}")
        block = saved_block if saved_block is not None else _infer_block(p.size, am.shape[0])
        if block is None or -(-p.size // block) != am.shape[0]:
            raise ValueError(f"{awhere}: {am.shape[0]} absmax blocks do not fit "
                             f"{p.size} elements" + (f" in blocks of {block}" if block else ""))
        saved = "int8"
    else:
        if a.dtype == np.uint8:
            raise ValueError(f"{where}: uint8 (8-bit) codes without their absmax {ak!r}")
        if a.shape != p.shape:
            raise ValueError(f"{where}: shape {a.shape} does not match the parameter's shape {p.shape}")
        if a.dtype.kind not in "fiu" and not is_bfloat16(a.dtype):
            raise TypeError(f"{where}: dtype {a.dtype} is not a real number type")
        saved, block = ("bfloat16" if is_bfloat16(a.dtype) else "float"), None
    if reg.quantized(p):
        target, want = "int8", None
    else:
        sdt = reg.buffer_dtype(p)
        want = p.dtype if sdt is None else sdt
        target = "bfloat16" if is_bfloat16(want) else "float"
    if saved == target and (saved != "int8" or block == reg.block_size):
        if saved == "int8":
            return {k: np.array(a, dtype=np.uint8, order="C", copy=True), ak: np.array(am, copy=True)}
        return {k: np.array(a, dtype=want, order="C", copy=True) if want != p.dtype else reg.from_host(a, p)}
    if not convert:
        held = _describe(saved, block) if saved != "float" else str(a.dtype)
        keeps = _describe(target, reg.block_size) if target != "float" else str(want)
        raise ValueError(f"{where}: the state_dict holds {held} state, this {me} keeps {keeps} state "
                         f"(state_dtype={reg.state_dtype!r}); pass convert_state_dtype=True (to load_state_dict or "
                         f"fusedoptim.load) to convert it (nearest-even / the nearest 8-bit code), or build the "
                         f"optimizer with the state_dtype (and block_size) it was saved with")
    values = dequantize(a, am, k in signed, block) if saved == "int8" else np.asarray(a, dtype=np.float32)
    if target == "int8":
        codes, amax = quantize(values, k in signed, reg.block_size)
        return {k: codes.reshape(p.shape), ak: amax}
    return {k: np.array(values, dtype=want, order="C", copy=True)}


def _stage_groups(opt, saved_groups, me: str, named: bool):
    """The new hyperparameters of every group, checked; saved param key -> (param, its
    new group); and the saved names (named state_dicts: every name, in order)."""
    reg = opt.registry
    if len(saved_groups) != len(reg.groups):
        raise ValueError(f"state_dict has {len(saved_groups)} param groups, this optimizer has {len(reg.groups)}")
    new_groups, old_to_param, saved_names = [], {}, []
    for gi, (sg, g) in enumerate(zip(saved_groups, reg.groups)):
        if not isinstance(sg, dict) or "params" not in sg:
            raise ValueError(f"state_dict param group {gi} must be a dict with 'params'")
        sp = list(sg["params"])
        if named:
            saved_names += sp
        elif len(sp) != len(g["params"]):
            raise ValueError(f"state_dict param group {gi} has {len(sp)} params, this optimizer's has "
                             f"{len(g['params'])}")
        unknown = set(sg) - set(opt.defaults) - {"params"} - set(SCHEDULER_KEYS)
        if unknown:
            raise ValueError(f"state_dict param group {gi}: unknown hyperparameter(s) {sorted(unknown)} for {me}; "
                             "is it from another optimizer?")
        ng = {k: (sg[k] if k in sg else g[k]) for k in opt.defaults}
        for k in SCHEDULER_KEYS:     # written into groups by torch-style schedulers
            if k in sg:
                check_real(sg[k], f"state_dict param group {gi}: {k}")
                ng[k] = sg[k]
        if isinstance(ng.get("betas"), list):
            ng["betas"] = tuple(ng["betas"])
        opt.check_group(ng, f"state_dict param group {gi}")
        ng["params"] = g["params"]
        new_groups.append(ng)
        if not named:
            for key, p in zip(sp, g["params"]):
                old_to_param[key] = (p, ng)
    if named:
        seen = set()
        for n in saved_names:
            if n in seen:
                raise ValueError(f"state_dict param groups list the parameter {n!r} twice")
            seen.add(n)
        for ng, g in zip(new_groups, reg.groups):
            for p in g["params"]:
                n = reg.names[reg.index(p)]
                if n in seen:
                    old_to_param[n] = (p, ng)
        for n in saved_names:                  # unexpected names: state validated, then dropped
            old_to_param.setdefault(n, (None, None))
    return new_groups, old_to_param, saved_names


def _stage_state(opt, saved_state, old_to_param, me: str, convert: bool = False,
                 storage=None) -> Dict[int, Any]:
    reg = opt.registry
    if not isinstance(saved_state, dict):
        raise ValueError("state_dict['state'] must be a dict")
    native = opt.spec is not None or getattr(opt, "lowp_state", False)    # built-in state buffers
    absmax_keys = {absmax_key(b): b for b in opt.buffers} if native else {}
    allowed = set(opt.scalar_state) | set(opt.buffers) | set(absmax_keys) | {"ema", "grad_accum"}
    saved_block = _saved_block(storage)
    signed = set(signed_buffers(opt))
    new_state = {}
    for key, st in saved_state.items():
        if key not in old_to_param:
            raise ValueError(f"state_dict state has an entry for param {key!r}, which no param group lists")
        p, group = old_to_param[key]
        if not isinstance(st, dict):
            raise ValueError(f"state_dict state[{key!r}] must be a dict")
        if p is None:                          # a name this optimizer doesn't hold (strict=False)
            continue
        # a custom optimizer that does not declare its buffers may keep any keys
        bad = set(st) - allowed if (opt.spec is not None or opt.buffers) else set()
        if bad:
            raise ValueError(f"state_dict state[{key!r}]: unknown state key(s) {sorted(bad)} for {me}; "
                             f"known: {sorted(allowed)}")
        ns = opt.init_scalars(group)
        for k, v in st.items():
            where = f"state_dict state[{key!r}][{k!r}]"
            if k in opt.scalar_state:
                ns[k] = scalar_from(v, where, integer=(k == "step"))
                continue
            if k in absmax_keys:
                if absmax_keys[k] not in st:
                    raise ValueError(f"{where}: an 8-bit absmax without its codes {absmax_keys[k]!r}")
                continue                        # staged with its codes
            a = reg.to_host(v) if is_array(v) else np.asarray(v)
            if k in opt.buffers and native and state_shape(k, p.shape) == tuple(p.shape):
                ns.update((kk, reg.place(v, p))
                          for kk, v in _stage_buffer(opt, p, k, a, st, where, me, convert, signed, saved_block).items())
                continue
            if a.shape != state_shape(k, p.shape):
                raise ValueError(f"{where}: shape {a.shape} does not match the parameter's shape {p.shape}"
                                 + (" (a per-tensor state is of shape ())" if k != "step" and
                                    state_shape(k, p.shape) == () else ""))
            if a.dtype.kind not in "fiu" and not is_bfloat16(a.dtype):
                raise TypeError(f"{where}: dtype {a.dtype} is not a real number type")
            if k in opt.buffers and reg.quantized(p):     # a per-tensor state of 8-bit state: float32
                sdt = np.dtype(np.float32)
            elif k in opt.buffers:
                sdt = reg.buffer_dtype(p)
            elif k == "grad_accum" and is_bfloat16(p.dtype):   # bfloat16 gradients add up in float32
                sdt = np.dtype(np.float32)
            else:
                sdt = None
            want = p.dtype if sdt is None else sdt
            if (is_bfloat16(a.dtype) != is_bfloat16(want)) and not convert and k != "grad_accum":
                raise ValueError(f"{where}: the state_dict holds {a.dtype} state, this {me} keeps {want} state "
                                 f"(state_dtype={reg.state_dtype!r}); pass convert_state_dtype=True (to "
                                 f"load_state_dict or fusedoptim.load) to convert it (nearest-even), or build the "
                                 f"optimizer with the state_dtype it was saved with")
            ns[k] = reg.place(np.array(a, dtype=want, order="C", copy=True), p) if sdt is not None \
                else reg.from_host(a, p)
        new_state[id(p)] = reg.new_state(p, ns)
    return new_state


def load(opt, state_dict: dict, strict: bool = True, convert_state_dtype: bool = False) -> IncompatibleKeys:
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    unknown_top = set(state_dict) - _TOP
    if unknown_top:
        raise ValueError(f"state_dict has unknown key(s) {sorted(unknown_top)}")
    me = type(opt).__name__
    kind = state_dict.get("kind")
    if kind is not None and kind != me:
        raise ValueError(f"state_dict is from a {kind} optimizer, not {me}")
    reg = opt.registry
    named = is_named(state_dict)
    if named and reg.names is None:
        raise ValueError("state_dict keys its parameters by name, but this optimizer's parameters have no names: "
                         "build it with a dict, fo.Adam({'W': W, 'b': b})")
    new_groups, old_to_param, saved_names = _stage_groups(opt, list(state_dict["param_groups"]), me, named)
    missing, unexpected = [], []
    if named:
        saved = set(saved_names)
        missing = [n for n in reg.names if n not in saved]
        unexpected = [n for n in saved_names if reg.index_of_name(n) is None]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict doesn't match this optimizer's parameters: missing {missing}, unexpected "
                             f"{unexpected} (load_state_dict(sd, strict=False) loads the names both have)")
    new_state = _stage_state(opt, state_dict["state"], old_to_param, me, convert_state_dtype,
                             state_dict.get("storage"))
    its = scalar_from(state_dict.get("iterations", opt.iterations), "state_dict['iterations']", integer=True)
    nonfinite = scalar_from(state_dict.get("nonfinite_count", opt.nonfinite_count),
                            "state_dict['nonfinite_count']", integer=True)
    accum_count = scalar_from(state_dict.get("accum_count", 0), "state_dict['accum_count']", integer=True)
    opt.pipeline.check_count(accum_count)
    # the seed of the stochastic rounding is resumable state (fusedoptim.lowp): a resumed
    # run draws the same bits without being given the seed again; a state_dict saved
    # before it was stored keeps this optimizer's own seed
    seed = opt.options["seed"]
    if "seed" in state_dict:
        seed = check_int(state_dict["seed"], "state_dict['seed']", lo=0)
        if seed >= 1 << 64:
            raise ValueError(f"state_dict['seed'] must be < 2**64, got {seed}")
    kept = [reg.params[reg.index_of_name(n)] for n in missing]   # strict=False: their state stays
    accs = {i: a for i, a in ((i, new_state.get(id(p), {}).pop("grad_accum", None))
                              for i, p in enumerate(reg.params)) if a is not None}
    for p in kept:
        if id(p) in reg.store:
            new_state[id(p)] = reg.store[id(p)]
    # commit
    reg.replace_groups(new_groups)
    reg.store.clear()
    reg.store.update(new_state)
    opt.iterations = its
    opt.nonfinite_count = nonfinite
    if seed != opt.options["seed"]:
        opt.options = types.MappingProxyType(dict(opt.options, seed=seed))
    opt.pipeline.restore(accum_count, accs)
    opt.engine.invalidate()
    return IncompatibleKeys(missing, unexpected)
