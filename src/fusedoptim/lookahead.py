r"""Lookahead: slow weights around any fusedoptim optimizer.

``Lookahead(inner_optimizer, k=5, alpha=0.5)`` lets the inner ("fast") optimizer take
``k`` steps, then pulls the parameters toward slow weights it keeps (one native call
for every tensor) -- the semantics of pytorch-optimizer 4.1's ``Lookahead``.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import numpy as np

from . import _kernels
from .optimizer import Optimizer
from .validate import check_int, check_real, scalar_from

__all__ = ["Lookahead"]

_PULLBACK = ("none", "reset", "pullback")
_GROUP_KEYS = ("lookahead_k", "lookahead_alpha", "lookahead_pullback_momentum", "lookahead_counter",
               "lookahead_inner")
_STATE_KEYS = ("slow_params", "slow_momentum")


class Lookahead:
    r"""Lookahead optimizer wrapper (Zhang, Lucas, Hinton & Ba, 2019), with the names,
    defaults and semantics of pytorch-optimizer 4.1's ``Lookahead``.

    Symbols: :math:`k` = ``k``, :math:`\alpha` = ``alpha``; :math:`\phi` are the slow
    weights (``slow_params``, a copy of each parameter taken at construction), :math:`\theta`
    the parameters the inner optimizer updates.  Every applied inner step advances a per-group
    counter; when it reaches :math:`k` it resets and, for each parameter of the group that had
    a gradient in this call,

    .. math::

        \theta &\leftarrow \mathrm{lerp}(\theta, \phi, 1 - \alpha)
            = \phi + \alpha(\theta - \phi) \\
        \phi &\leftarrow \theta

    (one native call for all tensors).  ``pullback_momentum`` handles the inner
    optimizer's ``momentum_buffer`` :math:`b` at that moment: ``"none"`` leaves it,
    ``"reset"`` zeroes it, ``"pullback"`` applies the same interpolation to it with its own
    slow copy (``slow_momentum``, starting at zero): :math:`b \leftarrow \mathrm{lerp}(b,
    \beta, 1 - \alpha),\ \beta \leftarrow b`.  The last two need an inner optimizer that keeps
    a ``momentum_buffer`` (SGD with momentum).

    A call that only accumulates gradients (``gradient_accumulation_steps``) or is skipped
    (``skip_nonfinite``) does not advance the counter.  ``state_dict()`` is the inner
    optimizer's plus ``slow_params`` (and ``slow_momentum``) in each parameter's state and the
    ``lookahead_*`` settings and counter in each param group, so ``fusedoptim.save`` /
    ``fusedoptim.load`` resume bit for bit.  :meth:`slow_weights` evaluates with the slow
    weights.

    References: M. R. Zhang, J. Lucas, G. Hinton, J. Ba, "Lookahead Optimizer: k steps
    forward, 1 step back", NeurIPS 2019, arXiv:1907.08610.
    """

    step_kind = "wrapper"          # fusedoptim.optim.registry: built around another optimizer

    def __init__(self, optimizer, k: int = 5, alpha: float = 0.5, pullback_momentum: str = "none"):
        if not isinstance(optimizer, Optimizer):
            raise TypeError("Lookahead wraps a fusedoptim optimizer (a fusedoptim.Optimizer instance, e.g. "
                            f"fusedoptim.SGD(params)), got {type(optimizer).__name__}")
        k = check_int(k, "Lookahead: k", lo=1, name="k")
        alpha = check_real(alpha, "Lookahead: alpha", lo=0.0, hi=1.0, hi_open=True, name="alpha")
        _check_pullback(pullback_momentum, optimizer)
        if not optimizer.params:
            raise ValueError("Lookahead needs an inner optimizer built with its params (a Keras-style optimizer "
                             "learns them in apply_gradients; give them to it first)")
        if any(not isinstance(p, np.ndarray) for p in optimizer.params):
            raise TypeError("Lookahead runs on NumPy arrays (its synchronisation is a CPU native call)")
        self.optimizer = optimizer
        self.k = k
        self.alpha = float(alpha)
        self.pullback_momentum = pullback_momentum
        self.counters: List[int] = []
        self.slow: dict = {}                  # id(param) -> {"slow_params": ..., "slow_momentum": ...}
        for g in optimizer.param_groups:
            self._init_group(g)

    # ------------------------------------------------------------- the facade
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def params(self):
        return self.optimizer.params

    @property
    def param_names(self):
        """The inner optimizer's parameter names (None when they have none)."""
        return self.optimizer.param_names

    @property
    def lock(self):
        return self.optimizer.lock

    @property
    def state(self):
        """The inner optimizer's per-parameter state (the slow weights are in :attr:`slow`)."""
        return self.optimizer.state

    @property
    def iterations(self) -> int:
        return self.optimizer.iterations

    @property
    def last_step_applied(self) -> bool:
        return self.optimizer.last_step_applied

    def _init_group(self, g) -> None:
        self.counters.append(0)
        for p in g["params"]:
            st = {"slow_params": p.copy()}
            if self.pullback_momentum == "pullback":
                st["slow_momentum"] = np.zeros_like(p)
            self.slow[id(p)] = st

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the inner optimizer; its slow weights start as copies."""
        with self.lock:
            self.optimizer.add_param_group(param_group)
            self._init_group(self.param_groups[-1])

    def step(self, grads: Sequence[Optional[np.ndarray]], closure=None, **kwargs):
        """The inner optimizer's ``step(grads, closure, **kwargs)``, then the slow-weight
        synchronisation of every group whose counter reaches ``k``.  Returns what the inner
        step returns."""
        with self.lock:
            grads = list(grads) if not isinstance(grads, list) else grads
            loss = self.optimizer.step(grads, closure, **kwargs)
            if self.optimizer.last_step_applied:
                self._advance(grads)
            return loss

    def apply_gradients(self, grads_and_vars) -> None:
        """Keras spelling: the inner ``apply_gradients``, then the synchronisation."""
        with self.lock:
            pairs = list(grads_and_vars)
            self.optimizer.apply_gradients(pairs)
            if self.optimizer.last_step_applied:
                given = {id(v): gr for gr, v in pairs}
                self._advance([given.get(id(p)) for p in self.params])

    def _advance(self, grads: list) -> None:
        base = 0
        fast, slow, reset = [], [], []
        for gi, g in enumerate(self.param_groups):
            n = len(g["params"])
            self.counters[gi] += 1
            if self.counters[gi] >= self.k:
                self.counters[gi] = 0
                for p, gr in zip(g["params"], grads[base:base + n]):
                    if gr is None:
                        continue              # pytorch-optimizer: parameters with a gradient
                    sl = self.slow[id(p)]
                    fast.append(p)
                    slow.append(sl["slow_params"])
                    st = self.optimizer.state.get(p) if self.pullback_momentum != "none" else None
                    buf = None if st is None else st.get("momentum_buffer")
                    if buf is None:
                        continue
                    if self.pullback_momentum == "pullback":
                        fast.append(buf)
                        slow.append(sl["slow_momentum"])
                    else:
                        reset.append(buf)
            base += n
        if fast:
            _kernels.lookahead_sync(1.0 - self.alpha, fast, slow)
        for buf in reset:
            buf.fill(0)

    def zero_grad(self, *args, **kwargs) -> None:
        """Nothing to do (NumPy gradients are passed to :meth:`step`); torch's spelling."""

    @contextlib.contextmanager
    def slow_weights(self):
        """``with la.slow_weights(): evaluate()`` runs the block with the slow weights in
        the parameters and restores the fast weights afterwards (pytorch-optimizer's
        ``backup_and_load_cache`` / ``clear_and_load_backup``)."""
        with self.lock:
            backup = [p.copy() for p in self.params]
            for p in self.params:
                p[...] = self.slow[id(p)]["slow_params"]
            try:
                yield self
            finally:
                for p, b in zip(self.params, backup):
                    p[...] = b

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict:
        """The inner optimizer's ``state_dict()`` with ``kind`` "Lookahead", each
        parameter's ``slow_params`` (and ``slow_momentum``) in its state, and in each param
        group ``lookahead_k``, ``lookahead_alpha``, ``lookahead_pullback_momentum``,
        ``lookahead_counter`` and ``lookahead_inner`` (the inner optimizer's class name)."""
        with self.lock:
            sd = self.optimizer.state_dict()
            sd["kind"] = type(self).__name__
            inner = type(self.optimizer).__name__
            for gi, gd in enumerate(sd["param_groups"]):
                gd.update(lookahead_k=self.k, lookahead_alpha=self.alpha,
                          lookahead_pullback_momentum=self.pullback_momentum, lookahead_counter=self.counters[gi],
                          lookahead_inner=inner)
            names = self.optimizer.registry.names      # a named optimizer keys its state by name
            for i, p in enumerate(self.params):
                st = sd["state"].setdefault(i if names is None else names[i], {})
                for key, a in self.slow[id(p)].items():
                    st[key] = a.copy()
            return sd

    def load_state_dict(self, state_dict: dict, strict: bool = True, *, convert_state_dtype: bool = False):
        """Load a dict from :meth:`state_dict`; everything (the inner optimizer's part
        included) is checked before anything changes.  ``strict`` and
        ``convert_state_dtype`` go to the inner ``load_state_dict`` (with ``strict=False`` a
        named parameter the dict lacks keeps its slow weights); returns its result."""
        with self.lock:
            if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
                raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
            kind = state_dict.get("kind")
            if kind is not None and kind != type(self).__name__:
                raise ValueError(f"state_dict is from a {kind} optimizer, not Lookahead (load it into the inner "
                                 "optimizer instead)")
            groups = list(state_dict["param_groups"])
            if len(groups) != len(self.param_groups):
                raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer has "
                                 f"{len(self.param_groups)}")
            inner_kind = type(self.optimizer).__name__
            settings, counters, inner_groups = None, [], []
            for gi, sg in enumerate(groups):
                if not isinstance(sg, dict) or any(key not in sg for key in _GROUP_KEYS):
                    raise ValueError(f"state_dict param group {gi} lacks the Lookahead settings {list(_GROUP_KEYS)}; "
                                     "is it an inner optimizer's state_dict?")
                where = f"state_dict param group {gi}"
                if sg["lookahead_inner"] != inner_kind:
                    raise ValueError(f"{where}: saved around {sg['lookahead_inner']!r}, this Lookahead wraps "
                                     f"{inner_kind}")
                k = check_int(sg["lookahead_k"], f"{where}: lookahead_k", lo=1)
                alpha = float(check_real(sg["lookahead_alpha"], f"{where}: lookahead_alpha", lo=0.0, hi=1.0,
                                         hi_open=True))
                pb = sg["lookahead_pullback_momentum"]
                _check_pullback(pb, self.optimizer, where)
                counter = check_int(sg["lookahead_counter"], f"{where}: lookahead_counter", lo=0)
                if counter >= k:
                    raise ValueError(f"{where}: lookahead_counter must be < lookahead_k = {k}, got {counter}")
                if settings is not None and settings != (k, alpha, pb):
                    raise ValueError(f"{where}: Lookahead settings differ between param groups")
                settings = (k, alpha, pb)
                counters.append(counter)
                inner_groups.append({key: v for key, v in sg.items() if key not in _GROUP_KEYS})
            saved = state_dict["state"]
            if not isinstance(saved, dict):
                raise ValueError("state_dict['state'] must be a dict")
            params = self.params
            names = self.optimizer.registry.names
            position = {n: i for i, n in enumerate(names)} if names is not None else {}
            by_index, inner_state = {}, {}
            for key, st in saved.items():
                if isinstance(key, str) and key in position:
                    i = position[key]
                elif isinstance(key, str) and names is not None and not strict:
                    continue                  # a name this optimizer lacks: ignored, as the inner does
                else:
                    i = _index(key)
                if i is None or not 0 <= i < len(params):
                    raise ValueError(f"state_dict state has an entry for param {key!r}; this optimizer has "
                                     f"{len(params)} parameters")
                if not isinstance(st, dict):
                    raise ValueError(f"state_dict state[{key!r}] must be a dict")
                by_index[i] = st
                rest = {n: v for n, v in st.items() if n not in _STATE_KEYS}
                if rest:
                    inner_state[key] = rest
            need = ("slow_params", "slow_momentum") if settings[2] == "pullback" else ("slow_params",)
            new_slow = {}
            for i, p in enumerate(params):
                if i not in by_index and names is not None and not strict:
                    new_slow[id(p)] = self.slow[id(p)]       # missing from the dict: kept
                    continue
                st = by_index.get(i, {})
                ns = {}
                for n in need:
                    if n not in st:
                        raise ValueError(f"state_dict state[{i}] has no {n!r} (Lookahead keeps one per parameter)")
                    a = np.asarray(st[n])
                    if a.shape != p.shape:
                        raise ValueError(f"state_dict state[{i}][{n!r}]: shape {a.shape}, the parameter's is "
                                         f"{p.shape}")
                    if a.dtype.kind not in "fiu":
                        raise TypeError(f"state_dict state[{i}][{n!r}]: dtype {a.dtype} is not a real number type")
                    ns[n] = np.array(a, dtype=p.dtype, order="C", copy=True)
                new_slow[id(p)] = ns
            inner_sd = {key: v for key, v in state_dict.items() if key not in ("state", "param_groups", "kind")}
            inner_sd.update(kind=inner_kind, param_groups=inner_groups, state=inner_state)
            result = self.optimizer.load_state_dict(inner_sd, strict, convert_state_dtype=convert_state_dtype)
            # commit (nothing below can fail)
            self.k, self.alpha, self.pullback_momentum = settings
            self.counters = counters
            self.slow = new_slow
            return result

    def __repr__(self) -> str:
        return (f"Lookahead(k={self.k}, alpha={self.alpha}, pullback_momentum={self.pullback_momentum!r}) around\n"
                + repr(self.optimizer))


def _index(key) -> Optional[int]:
    try:
        i = scalar_from(key, "state key", integer=True)
    except (TypeError, ValueError):
        return None
    return i


def _check_pullback(pb, optimizer, where: str = "Lookahead") -> None:
    if pb not in _PULLBACK:
        raise ValueError(f"{where}: pullback_momentum must be one of {_PULLBACK}, got {pb!r}")
    if pb != "none" and "momentum_buffer" not in optimizer.buffers:
        raise ValueError(f"{where}: pullback_momentum={pb!r} acts on the inner optimizer's momentum_buffer, which "
                         f"{type(optimizer).__name__} does not keep (use 'none', or an SGD with momentum)")
