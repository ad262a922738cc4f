"""From a validated step to the native calls: per-group resolution, state creation,
bucketing, the fused call (or the NumPy fallback of a custom optimizer).

For each param group the :class:`Engine` keeps

- the *resolution*: the group's hyperparameters checked by the optimizer's
  ``check_group`` (again only after the group changed: :class:`~fusedoptim.registry.Group`
  counts its mutations), the common scalars, the algorithm's flag bits and the state
  buffers they keep;
- the *plan*: when every parameter of the group stepped together last time, its state
  dicts and buffer lists, so the next step is one native call with no Python loop over
  parameters.

Parameters whose scalar state differs (a parameter added later has its own ``step``)
are bucketed: one native call per bucket.
"""
from __future__ import annotations

import contextlib
import gc
import math
from typing import Dict

import numpy as np

from ._kernels import update_dicts
from .lowp import absmax_key, signed_buffers

__all__ = ["Engine"]

_NO_FRESH = frozenset()
_EMA_FRESH = frozenset(("ema",))
_MANY = 4096     # creating state for more parameters than this pauses the cyclic GC


@contextlib.contextmanager
def _gc_paused(pause: bool):
    """Pause the cyclic garbage collector while many small state dicts are created (the
    first step of a model with 100k tensors): its repeated passes over the growing heap
    cost more than the creation itself.  Restored on exit; never paused if disabled."""
    if not (pause and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Engine:
    """The step path of one optimizer (``opt``: its hooks, registry and options)."""

    def __init__(self, opt):
        self.opt = opt
        self._plans: Dict[int, tuple] = {}      # group index -> (names, scal, states, bufs, emas, ids)
        self._resolved: Dict[int, tuple] = {}   # group index -> validated hyperparameters

    def invalidate(self) -> None:
        """Forget cached plans and validated hyperparameters (state or groups changed)."""
        self._plans.clear()
        self._resolved.clear()

    # ------------------------------------------------------------ resolution
    def resolve(self, gi: int, g: dict):
        """This step's view of group gi: ``(hyperparameters with the lr resolved from a
        schedule, common scalars, flag bits, state buffer names)``."""
        ver = getattr(g, "version", None)    # a plain dict put in param_groups is checked every step
        cached = self._resolved.get(gi)
        if ver is None or cached is None or cached[0] is not g or cached[1] != ver:
            opt = self.opt
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
                ver = getattr(g, "version", None)
            opt.check_group(g, f"param group {gi}")
            geff = dict(g)
            flags = opt.spec.flag_bits(opt.kernel_flags(geff)) if opt.spec is not None else 0
            names = opt.spec.state_names(flags) if opt.spec is not None else tuple(opt.state_names(geff))
            cached = (g, ver, geff, opt.common_scalars(geff), flags, names, callable(g["lr"]))
            self._resolved[gi] = cached
        _, _, geff, common, flags, names, scheduled = cached
        if scheduled:
            geff = dict(geff)
            geff["lr"] = self.opt.scheduled_lr(g, gi)
        return geff, common, flags, names

    # ----------------------------------------------------------------- steps
    def step_group(self, gi: int, resolved, params: list, grads: list, complete: bool, ctl, tscale, be) -> None:
        """Update the parameters of group gi (``grads[j]`` None: skipped this step) under
        the pipeline's StepControl ``ctl``; ``tscale``: this group's per-parameter scales."""
        g, common, flags, names = resolved
        if not ctl.plain:
            common = dict(common, gscale=common["gscale"] * ctl.gscale, clip_value=ctl.clip_value)
        plan = self._plans.get(gi)
        if complete and plan is not None and plan[0] == names:
            _, scal, states, bufs, emas, ids = plan  # every parameter steps and has its state
            spec = self.opt.spec
            if spec is not None and ids is None:     # the lean path: straight to the native call
                be.fused_step(spec.id, common, self.opt.kernel_scalars(g, scal, _NO_FRESH), flags, params, grads,
                              bufs, emas, tscale, ctl.control)
                update_dicts(states, scal)
                return
            self._call(g, common, flags, scal, _NO_FRESH, params, grads, states, bufs, emas, tscale,
                       ctl.control, be, ids)
            return
        self._plans.pop(gi, None)
        with _gc_paused(len(params) > _MANY):
            buckets = self._buckets(g, names, params, grads)
        lowp = self.opt.registry.lowp
        q8 = self.opt.registry.state_dtype == "int8"
        for key, items in buckets.items():
            opt = self.opt
            scal = {k: key[i] for i, k in enumerate(opt.scalar_state)}
            states = [it[2] for it in items]
            bufs = [[st[name] for st in states] for name in names]
            if q8:      # the codes (or float32 buffers), then the absmax arrays (None: float32 state)
                bufs += [[st.get(absmax_key(name)) for st in states] for name in names]
            emas = [st["ema"] for st in states] if opt.options["ema_decay"] is not None else None
            ts = None if tscale is None else be.take(tscale, [it[3] for it in items])
            ps = [it[0] for it in items]
            ids = self._tensor_ids(ps) if lowp else None
            self._call(g, common, flags, scal, key[-1], ps, [it[1] for it in items], states,
                       bufs, emas, ts, ctl.control, be, ids)
            if complete and len(buckets) == 1:
                self._plans[gi] = (names, scal, states, bufs, emas, ids)

    def _tensor_ids(self, params: list):
        """The parameters' indices in the optimizer: the tensor part of the key of the
        stochastic rounding bits (fusedoptim.lowp), the same after a resume."""
        index = self.opt.registry.index
        return np.array([index(p) for p in params], dtype=np.uint64)

    def _buckets(self, g: dict, names, params: list, grads: list) -> Dict[tuple, list]:
        """Create missing state; group the parameters by their scalar state and the
        buffers created for this step."""
        opt = self.opt
        store, new_state = opt.registry.store, opt.registry.new_state
        ema = opt.options["ema_decay"] is not None
        scalar_state = tuple(opt.scalar_state)
        init = None
        reg = opt.registry
        buffer_dtype, to_storage, quantize_new = reg.buffer_dtype, reg.backend.to_storage, reg.backend.quantize
        q8_on = reg.state_dtype == "int8"
        signed = set(signed_buffers(opt)) if q8_on else set()
        per_tensor = set(getattr(opt.spec, "tensor_state", ())) if q8_on else set()   # never 8-bit
        buckets: Dict[tuple, list] = {}
        for j, (p, gr) in enumerate(zip(params, grads)):
            if gr is None:
                continue
            st = store.get(id(p))
            if st is None:
                init = opt.init_scalars(g) if init is None else init   # the same for every parameter
                st = store[id(p)] = new_state(p, init)
            fresh = _NO_FRESH
            if names:
                made = [name for name in names if name not in st]
                sdt = buffer_dtype(p) if made else None
                q8 = made and q8_on and reg.quantized(p)
                for name in made:
                    b = opt.init_buffer(name, p, g)
                    if q8 and name in per_tensor:       # float32 (bfloat16 parameters too)
                        dict.__setitem__(st, name, b.astype(np.float32))
                    elif q8:        # 8-bit: the nearest codes of the initial values
                        codes, amax = quantize_new(b.astype(np.float32), name in signed, reg.block_size)
                        dict.__setitem__(st, name, codes)
                        dict.__setitem__(st, absmax_key(name), amax)
                    else:
                        dict.__setitem__(st, name, b if sdt is None else to_storage(b, sdt))   # nearest-even
                fresh = frozenset(made) if made else _NO_FRESH
            if ema and "ema" not in st:
                # the first average is the weights after the first update (torch's
                # AveragedModel, Keras): the kernel's EMA weight is 1 for this bucket
                dict.__setitem__(st, "ema", p.copy())
                fresh = fresh | _EMA_FRESH
            key = (*[st[k] for k in scalar_state], fresh)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = []
            bucket.append((p, gr, st, j))
        return buckets

    def _call(self, g, common, flags, scal, fresh, params, grads, states, bufs, emas, tscale, control, be,
              ids=None) -> None:
        opt = self.opt
        if "ema" in fresh:
            common = dict(common, ema_weight=1.0)        # ema = lerp(ema, p, 1) = p after the update
        scalars = opt.kernel_scalars(g, scal, fresh)     # advances the scalar state
        if opt.spec is None and opt.update_group is not None:
            opt.update_group(g, common, scal, params, grads, states, tscale, emas)
        elif opt.spec is None:
            _numpy_update(opt, g, common, scal, params, grads, states, tscale, emas)
        elif ids is not None:                            # low-precision writes: key the rounding bits
            o = opt.options
            rounding = (o["seed"], scal["step"], ids, o["rounding"] == "stochastic")
            if opt.registry.state_dtype == "int8":       # bufs: codes lists, then absmax lists
                k = len(bufs) // 2
                be.fused_step_q8(opt.spec.id, common, scalars, flags, params, grads, bufs[:k], bufs[k:], emas,
                                 tscale, control, rounding, o["block_size"])
            else:
                be.fused_step(opt.spec.id, common, scalars, flags, params, grads, bufs, emas, tscale, control,
                              rounding)
        else:
            be.fused_step(opt.spec.id, common, scalars, flags, params, grads, bufs, emas, tscale, control)
        update_dicts(states, scal)


def _numpy_update(opt, g, common, scal, params, grads, states, tscale, emas) -> None:
    """The custom-optimizer path: the same gradient transform as the kernels' ``fo_grad``
    (clip value, scale/maximize, coupled weight decay, L1), then the optimizer's
    ``update``, then the EMA epilogue."""
    gscale, wd, l1 = common["gscale"], common["weight_decay"], common["l1"]
    clip, ema_w = common["clip_value"], common["ema_weight"]
    for j, (p, gr, st) in enumerate(zip(params, grads, states)):
        st.update(scal)
        s = gscale * (1.0 if tscale is None else tscale[j])
        if math.isfinite(clip) or s != 1.0 or wd != 0.0 or l1 != 0.0:
            gr = np.clip(gr, -clip, clip) if math.isfinite(clip) else gr
            gr = gr * p.dtype.type(s)
            if wd != 0.0:
                gr = gr + p.dtype.type(wd) * p
            if l1 != 0.0:
                gr = gr + p.dtype.type(l1) * np.sign(p)
        opt.update(p, gr, st, g)
        if emas is not None:
            e = emas[j]
            e += p.dtype.type(ema_w) * (p - e)

