"""``Optimizer.state_dict`` and ``load_state_dict``: torch's layout, validated loading.

A state_dict is plain data: ``{"kind", "iterations", "nonfinite_count", "accum_count",
"state": {flat index: {name: number or array}}, "param_groups": [{hyperparameters...,
"params": [flat indices]}]}``.  Arrays are host copies.  Loading checks everything
(kind, groups, hyperparameters through the optimizer's ``check_group``, state keys,
shapes, dtypes, counters) and only then commits, so a rejected dict changes nothing.
Serialising it (checkpoints, ZeRO shards, broadcasts) is :mod:`fusedoptim.codec`'s job.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ._backends import is_array
from ._spec import state_shape
from .validate import check_real, scalar_from

__all__ = ["build", "load", "SCHEDULER_KEYS"]

# keys torch-style LR schedulers keep in param groups (as torch does); state_dicts carry them
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
_TOP = {"kind", "iterations", "nonfinite_count", "accum_count", "state", "param_groups"}


def build(opt) -> dict:
    reg = opt.registry
    state, groups = {}, []
    for g, idx in zip(reg.groups, reg.group_indices()):
        for i, p in zip(idx, g["params"]):
            st = reg.store.get(id(p))
            if st is not None:
                state[i] = {k: reg.to_host(v) for k, v in st.items()}
        gd = {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"}
        gd["params"] = idx
        groups.append(gd)
    for i, a in opt.pipeline.snapshot(reg.to_host).items():
        state.setdefault(i, {})["grad_accum"] = a
    return {"kind": type(opt).__name__, "iterations": opt.iterations, "nonfinite_count": opt.nonfinite_count,
            "accum_count": opt.pipeline.acc_count, "state": state, "param_groups": groups}


def _stage_groups(opt, saved_groups, me: str):
    """The new hyperparameters of every group, checked; and saved param key -> (param,
    its new group)."""
    reg = opt.registry
    if len(saved_groups) != len(reg.groups):
        raise ValueError(f"state_dict has {len(saved_groups)} param groups, this optimizer has {len(reg.groups)}")
    new_groups, old_to_param = [], {}
    for gi, (sg, g) in enumerate(zip(saved_groups, reg.groups)):
        if not isinstance(sg, dict) or "params" not in sg:
            raise ValueError(f"state_dict param group {gi} must be a dict with 'params'")
        sp = list(sg["params"])
        if len(sp) != len(g["params"]):
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
        for key, p in zip(sp, g["params"]):
            old_to_param[key] = (p, ng)
    return new_groups, old_to_param


def _stage_state(opt, saved_state, old_to_param, me: str) -> Dict[int, Any]:
    reg = opt.registry
    if not isinstance(saved_state, dict):
        raise ValueError("state_dict['state'] must be a dict")
    allowed = set(opt.scalar_state) | set(opt.buffers) | {"ema", "grad_accum"}
    new_state = {}
    for key, st in saved_state.items():
        if key not in old_to_param:
            raise ValueError(f"state_dict state has an entry for param {key!r}, which no param group lists")
        p, group = old_to_param[key]
        if not isinstance(st, dict):
            raise ValueError(f"state_dict state[{key!r}] must be a dict")
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
            a = reg.to_host(v) if is_array(v) else np.asarray(v)
            if a.shape != state_shape(k, p.shape):
                raise ValueError(f"{where}: shape {a.shape} does not match the parameter's shape {p.shape}"
                                 + (" (a per-tensor state is of shape ())" if k != "step" and
                                    state_shape(k, p.shape) == () else ""))
            if a.dtype.kind not in "fiu":
                raise TypeError(f"{where}: dtype {a.dtype} is not a real number type")
            ns[k] = reg.from_host(a, p)
        new_state[id(p)] = reg.new_state(p, ns)
    return new_state


def load(opt, state_dict: dict) -> None:
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
    unknown_top = set(state_dict) - _TOP
    if unknown_top:
        raise ValueError(f"state_dict has unknown key(s) {sorted(unknown_top)}")
    me = type(opt).__name__
    kind = state_dict.get("kind")
    if kind is not None and kind != me:
        raise ValueError(f"state_dict is from a {kind} optimizer, not {me}")
    new_groups, old_to_param = _stage_groups(opt, list(state_dict["param_groups"]), me)
    new_state = _stage_state(opt, state_dict["state"], old_to_param, me)
    its = scalar_from(state_dict.get("iterations", opt.iterations), "state_dict['iterations']", integer=True)
    nonfinite = scalar_from(state_dict.get("nonfinite_count", opt.nonfinite_count),
                            "state_dict['nonfinite_count']", integer=True)
    accum_count = scalar_from(state_dict.get("accum_count", 0), "state_dict['accum_count']", integer=True)
    opt.pipeline.check_count(accum_count)
    reg = opt.registry
    accs = {i: a for i, a in ((i, new_state.get(id(p), {}).pop("grad_accum", None))
                              for i, p in enumerate(reg.params)) if a is not None}
    # commit
    reg.replace_groups(new_groups)
    reg.store.clear()
    reg.store.update(new_state)
    opt.iterations = its
    opt.nonfinite_count = nonfinite
    opt.pipeline.restore(accum_count, accs)
    opt.engine.invalidate()
