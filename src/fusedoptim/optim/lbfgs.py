r"""L-BFGS (torch.optim.LBFGS of torch 2.13) for NumPy parameters.

NumPy has no autograd, so ``step(closure)`` takes a closure that recomputes the loss
*and* the gradients at the current parameters and returns ``(loss, grads)``, one gradient
per parameter (``None`` counts as zeros, as torch treats a missing ``.grad``).
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Optional

import numpy as np

from ..validate import check_int, check_real, scalar_from

__all__ = ["LBFGS"]

_DEFAULTS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn")
_ARRAY_STATE = ("d", "prev_flat_grad")
_LIST_STATE = ("old_dirs", "old_stps")
_SCALAR_STATE = ("func_evals", "n_iter", "t", "H_diag", "prev_loss")


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to the bounds
    (torch's ``_cubic_interpolate``, after minFunc's ``polyinterp``)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's ``_strong_wolfe``: bracketing, then zoom with cubic interpolation, until
    ``f(t) <= f + c1 t gtd`` and ``|g(t).d| <= -c2 gtd``.  Returns (f, g, t, evaluations)."""
    d_norm = np.abs(d).max()
    g = g.copy()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.copy(), gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new.copy(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new.copy(), gtd_new
    t = bracket[low_pos]
    return bracket_f[low_pos], bracket_g[low_pos], t, ls_func_evals


class LBFGS:
    r"""Limited-memory BFGS (torch.optim.LBFGS of torch 2.13: its options, defaults,
    state and stopping rules), for NumPy parameters, with an optional strong Wolfe line
    search.

    NumPy has no autograd, so ``opt.step(closure)`` takes a closure that recomputes the
    loss and the gradients at the current parameters and returns ``(loss, grads)``
    (``grads``: one array per parameter, in order; ``None`` counts as zeros).  ``step``
    calls it up to ``max_eval`` times and returns the first loss.

    Symbols: :math:`g` the flat gradient of all parameters, :math:`s_i, y_i` the last
    ``history_size`` steps and gradient changes (``old_stps``, ``old_dirs``), :math:`\rho_i =
    1 / y_i^\top s_i`, :math:`H = y^\top s / y^\top y` (``H_diag``).  Each of at most
    ``max_iter`` iterations:

    .. math::

        q &\leftarrow -g;\quad \alpha_i \leftarrow \rho_i s_i^\top q,\
            q \leftarrow q - \alpha_i y_i \quad (i = m-1, \dots, 0) \\
        d &\leftarrow H q;\quad \beta_i \leftarrow \rho_i y_i^\top d,\
            d \leftarrow d + (\alpha_i - \beta_i) s_i \quad (i = 0, \dots, m-1) \\
        t &\leftarrow \min(1, 1/\lVert g\rVert_1)\,\gamma \text{ (first iteration)},
            \ \gamma \text{ (later)};\quad
            t \leftarrow \text{strong Wolfe}(t) \text{ if line\_search\_fn} \\
        \theta &\leftarrow \theta + t\,d

    (the first direction is :math:`-g`; a pair is stored only when :math:`y^\top s >
    10^{-10}`).  It stops when :math:`\max|g| \le` ``tolerance_grad``, :math:`g^\top d >
    -` ``tolerance_change``, :math:`\max|t d| \le` ``tolerance_change``, the loss changes by
    less than ``tolerance_change``, or after ``max_iter`` iterations / ``max_eval``
    evaluations (default ``max_iter * 5 // 4``).  Like torch: one param group, all
    parameters of one dtype; scalars are computed in that dtype, as torch's 0-d tensors are.

    State (torch's keys, in ``state_dict()["state"][0]``): ``func_evals``, ``n_iter``,
    ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``,
    ``prev_loss``.  Not a fused optimizer: its vector operations run through NumPy (BLAS
    dot products); it does not take the toolkit options (clipping, EMA, ...).  Its state
    is flat vectors and lists of them, which the checkpoint format (one array per
    parameter) does not hold: ``fusedoptim.save`` refuses it; keep ``state_dict()``
    yourself (e.g. ``np.savez`` of its arrays) and restore with ``load_state_dict``.

    References: J. Nocedal, S. Wright, "Numerical Optimization", 2nd ed., Springer 2006,
    Algorithms 7.4/7.5 and 3.5/3.6 (strong Wolfe); M. Schmidt, minFunc (2005).
    """

    step_kind = "closure"          # fusedoptim.optim.registry: step(closure), no gradients argument

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None):
        if isinstance(params, np.ndarray):
            raise TypeError("params should be an iterable of arrays, got a single ndarray; wrap it in a list: [param]")
        params = list(params)
        if params and isinstance(params[0], dict):
            if len(params) != 1:
                raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
            extra = set(params[0]) - set(_DEFAULTS) - {"params"}
            if extra:
                raise ValueError(f"param group 0: unknown hyperparameter(s) {sorted(extra)}")
            group_opts = {k: v for k, v in params[0].items() if k != "params"}
            ps = params[0].get("params")
            params = [ps] if isinstance(ps, np.ndarray) else list(ps or [])
        else:
            group_opts = {}
        if max_eval is None and "max_eval" not in group_opts:
            mi = group_opts.get("max_iter", max_iter)
            max_eval = check_int(mi, "max_iter", lo=1, name="max_iter") * 5 // 4
        g = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                 tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn)
        g.update(group_opts)
        self._check_group(g, "LBFGS")
        _check_params(params)
        g["params"] = params
        self.param_groups = [g]
        self.defaults = {k: g[k] for k in _DEFAULTS}
        self.state: dict = {}      # torch keeps it under the first parameter; here under index 0
        self.lock = threading.RLock()

    @staticmethod
    def _check_group(g: dict, where: str) -> None:
        check_real(g["lr"], f"{where}: lr", lo=0.0)
        check_int(g["max_iter"], f"{where}: max_iter", lo=1)
        check_int(g["max_eval"], f"{where}: max_eval", lo=1)
        check_real(g["tolerance_grad"], f"{where}: tolerance_grad", lo=0.0)
        check_real(g["tolerance_change"], f"{where}: tolerance_change", lo=0.0)
        check_int(g["history_size"], f"{where}: history_size", lo=1)
        if g["line_search_fn"] not in (None, "strong_wolfe"):
            raise ValueError(f"{where}: line_search_fn must be None or 'strong_wolfe', got {g['line_search_fn']!r}")

    # ------------------------------------------------------------------ helpers
    def _flat_grad(self, grads) -> np.ndarray:
        params = self.param_groups[0]["params"]
        views = []
        for p, gr in zip(params, grads):
            views.append(np.zeros(p.size, p.dtype) if gr is None else np.asarray(gr).reshape(-1))
        return np.concatenate(views) if views else np.zeros(0, self._dtype())

    def _dtype(self):
        params = self.param_groups[0]["params"]
        return params[0].dtype if params else np.dtype(np.float64)

    def _add_grad(self, step_size, update) -> None:
        offset = 0
        for p in self.param_groups[0]["params"]:
            n = p.size
            p += (p.dtype.type(step_size) * update[offset:offset + n]).reshape(p.shape)
            offset += n

    def _evaluate(self, closure):
        """Call the closure; check and flatten what it returns: (loss as a float, flat grad)."""
        out = closure()
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError("LBFGS closure must return (loss, grads): the loss and one gradient per parameter "
                            f"(NumPy has no autograd), got {type(out).__name__}")
        loss, grads = out
        params = self.param_groups[0]["params"]
        if isinstance(grads, np.ndarray) or grads is None:
            raise TypeError("LBFGS closure must return (loss, grads) with grads a list of arrays, one per parameter")
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"LBFGS closure returned {len(grads)} gradients for {len(params)} parameters")
        for i, (p, gr) in enumerate(zip(params, grads)):
            if gr is None:
                continue
            if not isinstance(gr, np.ndarray):
                raise TypeError(f"LBFGS closure: grads[{i}] must be a numpy.ndarray, got {type(gr).__name__}")
            if gr.shape != p.shape:
                raise ValueError(f"LBFGS closure: grads[{i}] has shape {gr.shape}, its parameter {p.shape}")
            if gr.dtype != p.dtype:
                raise TypeError(f"LBFGS closure: grads[{i}] has dtype {gr.dtype}, its parameter {p.dtype}")
        try:
            loss = float(loss)
        except (TypeError, ValueError):
            raise TypeError(f"LBFGS closure: the loss must be a real number, got {type(loss).__name__}") from None
        return loss, self._flat_grad(grads)

    def _directional_evaluate(self, closure, x, t, d):
        self._add_grad(t, d)
        loss, flat_grad = self._evaluate(closure)
        for p, xi in zip(self.param_groups[0]["params"], x):
            p[...] = xi
        return loss, flat_grad

    # --------------------------------------------------------------------- step
    def step(self, closure: Optional[Callable] = None):
        """One L-BFGS step (up to ``max_iter`` iterations); returns the loss of the first
        closure call.  ``closure()`` must return ``(loss, grads)``."""
        if closure is None or not callable(closure):
            raise TypeError("LBFGS.step needs a closure: step(closure), where closure() recomputes the loss and the "
                            "gradients at the current parameters and returns (loss, grads) -- L-BFGS evaluates "
                            "the function several times per step")
        with self.lock:
            return self._step(closure)

    def _step(self, closure):
        group = self.param_groups[0]
        self._check_group(group, "param group 0")
        lr = float(group["lr"])
        max_iter, max_eval = int(group["max_iter"]), int(group["max_eval"])
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size = group["line_search_fn"], int(group["history_size"])
        dt = self._dtype().type

        orig_loss, flat_grad = self._evaluate(closure)      # a bad closure raises before anything changes
        state = self.state.setdefault(0, {})
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        loss = orig_loss
        current_evals = 1
        state["func_evals"] += 1
        opt_cond = np.abs(flat_grad).max(initial=0) <= tolerance_grad
        if opt_cond:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = flat_grad - prev_flat_grad
                s = d * dt(t)
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)
                num_old = len(old_dirs)
                if "al" not in state:
                    state["al"] = [None] * history_size
                al = state["al"]
                q = -flat_grad
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q += old_dirs[i] * (-al[i])
                d = r = q * H_diag
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    r += old_stps[i] * (al[i] - be_i)
            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.copy()
            else:
                prev_flat_grad[...] = flat_grad
            prev_loss = loss

            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr
            else:
                t = lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = [p.copy() for p in group["params"]]

                def obj_func(x, t, d):
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(obj_func, x_init, t, d, loss, flat_grad, gtd,
                                                                  max_ls=max_eval - current_evals)
                self._add_grad(t, d)
                opt_cond = np.abs(flat_grad).max(initial=0) <= tolerance_grad
            else:
                self._add_grad(t, d)
                if n_iter != max_iter:
                    loss, flat_grad = self._evaluate(closure)
                    opt_cond = np.abs(flat_grad).max(initial=0) <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if n_iter == max_iter:
                break
            if current_evals >= max_eval:
                break
            if opt_cond:
                break
            if np.abs(d * dt(t)).max(initial=0) <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state["d"], state["t"] = d, t
        state["old_dirs"], state["old_stps"], state["ro"] = old_dirs, old_stps, ro
        state["H_diag"], state["prev_flat_grad"], state["prev_loss"] = H_diag, prev_flat_grad, prev_loss
        return orig_loss

    # --------------------------------------------------------------- state dict
    def state_dict(self) -> dict:
        """torch's layout: ``{"state": {0: {...}}, "param_groups": [{..., "params": [0, 1, ...]}]}``
        plus ``"kind"``; arrays and lists of arrays are copies."""
        with self.lock:
            st = {}
            for k, v in self.state.get(0, {}).items():
                if isinstance(v, np.ndarray):
                    v = v.copy()
                elif isinstance(v, list):
                    v = [x.copy() if isinstance(x, np.ndarray) else _num(x) for x in v]
                elif v is not None:
                    v = _num(v)
                st[k] = v
            g = {k: v for k, v in self.param_groups[0].items() if k != "params"}
            g["params"] = list(range(len(self.param_groups[0]["params"])))
            return {"kind": "LBFGS", "state": {0: st} if st else {}, "param_groups": [g]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict from :meth:`state_dict`, checked before anything changes."""
        with self.lock:
            if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
                raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
            if state_dict.get("kind", "LBFGS") != "LBFGS":
                raise ValueError(f"state_dict is from a {state_dict['kind']} optimizer, not LBFGS")
            groups = list(state_dict["param_groups"])
            if len(groups) != 1 or not isinstance(groups[0], dict):
                raise ValueError("LBFGS state_dict must have exactly one param group")
            params = self.param_groups[0]["params"]
            sg = groups[0]
            if len(sg.get("params", ())) != len(params):
                raise ValueError(f"state_dict param group has {len(sg.get('params', ()))} params, this optimizer "
                                 f"has {len(params)}")
            unknown = set(sg) - set(_DEFAULTS) - {"params"}
            if unknown:
                raise ValueError(f"state_dict param group 0: unknown hyperparameter(s) {sorted(unknown)}")
            ng = {k: sg.get(k, self.param_groups[0][k]) for k in _DEFAULTS}
            self._check_group(ng, "state_dict param group 0")
            saved = state_dict["state"]
            if not isinstance(saved, dict) or len(saved) > 1:
                raise ValueError("LBFGS state_dict['state'] must hold at most one entry")
            n = sum(p.size for p in params)
            dt = self._dtype()
            new = {}
            for st in saved.values():
                if not isinstance(st, dict):
                    raise ValueError("LBFGS state_dict state entry must be a dict")
                for k, v in st.items():
                    where = f"state_dict state[{k!r}]"
                    if k in _ARRAY_STATE:
                        new[k] = None if v is None else _flat(v, n, dt, where)
                    elif k in _LIST_STATE:
                        if not isinstance(v, (list, tuple)):
                            raise ValueError(f"{where} must be a list of arrays")
                        new[k] = [_flat(a, n, dt, f"{where}[{i}]") for i, a in enumerate(v)]
                    elif k in ("ro", "al"):
                        if not isinstance(v, (list, tuple)):
                            raise ValueError(f"{where} must be a list of numbers")
                        new[k] = [None if x is None else dt.type(scalar_from(x, f"{where}[{i}]"))
                                  for i, x in enumerate(v)]
                    elif k in _SCALAR_STATE:
                        if v is None:
                            new[k] = None
                        else:
                            x = scalar_from(v, where, integer=k in ("func_evals", "n_iter"))
                            new[k] = x if k in ("func_evals", "n_iter", "prev_loss") else dt.type(x)
                    else:
                        raise ValueError(f"{where}: unknown LBFGS state key")
                m = [len(new.get(k, ())) for k in ("old_dirs", "old_stps", "ro")]
                if len(set(m)) != 1:
                    raise ValueError(f"state_dict state: old_dirs, old_stps and ro have different lengths {m}")
            self.param_groups[0].update(ng)
            self.state = {0: new} if new else {}


def _num(v):
    return v.item() if hasattr(v, "item") else v


def _flat(v, n: int, dt, where: str) -> np.ndarray:
    a = np.asarray(v)
    if a.shape != (n,):
        raise ValueError(f"{where}: expected a flat array of {n} elements, got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{where}: dtype {a.dtype} is not a real number type")
    return np.array(a, dtype=dt, copy=True)


def _check_params(params: list) -> None:
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{i}] must be a numpy.ndarray, got {type(p).__name__}")
        if p.dtype not in (np.float32, np.float64):
            raise TypeError(f"params[{i}]: dtype {p.dtype} is not float32 or float64")
        if p.dtype != params[0].dtype:
            raise TypeError(f"params[{i}]: dtype {p.dtype} differs from params[0]'s {params[0].dtype}")
        if not p.flags.writeable:
            raise ValueError(f"params[{i}] is read-only")
    for i in range(len(params)):
        for j in range(i):
            if np.shares_memory(params[i], params[j]):
                raise ValueError(f"params[{i}] shares memory with params[{j}]")
