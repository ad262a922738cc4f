"""Naive NumPy reference steps: the ``numpy`` contender of the benchmark.

Written the way a NumPy user would: one Python loop over the tensors, whole-array
expressions with temporaries, torch's formulas.  Gradients are never modified.  Each
rule is ``rule(p, g, st, grp, t)``: parameter (updated in place), gradient, the
tensor's state dict, the hyperparameter group, the 1-based step count.
``tests/test_bench_report.py`` checks every one against fusedoptim.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence

import numpy as np

__all__ = ["NaiveNumPy", "sgd", "adam", "adagrad", "rmsprop", "adamax", "nadam", "radam",
           "adadelta", "rprop", "lion"]


class NaiveNumPy:
    """Straightforward NumPy optimizer: ``step(grads)`` loops over the tensors."""

    def __init__(self, rule: Callable, params: Sequence[np.ndarray], group: dict):
        if group.get("maximize"):
            raise ValueError("the naive NumPy baselines do not implement maximize")
        self.rule = rule
        self.params = list(params)
        self.group = dict(group)
        self.state: List[dict] = [{} for _ in self.params]
        self.t = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        for p, g, st in zip(self.params, grads, self.state):
            self.rule(p, g, st, self.group, self.t)


def _wd(p, g, grp):
    """The gradient with L2 weight decay added (not for decoupled weight decay)."""
    wd = grp.get("weight_decay", 0.0)
    if wd and not grp.get("decoupled_weight_decay", False):
        g = g + wd * p
    return g


def _adam_moments(p, g, st, grp):
    """The part Adam, NAdam and RAdam share: decoupled decay of ``p`` or L2 decay of
    ``g``, then both moment updates.  Returns ``(g, m, v)``."""
    lr, (b1, b2), wd = grp["lr"], grp["betas"], grp["weight_decay"]
    if grp["decoupled_weight_decay"]:
        p *= 1 - lr * wd
    g = _wd(p, g, grp)
    m = st.setdefault("exp_avg", np.zeros_like(p))
    v = st.setdefault("exp_avg_sq", np.zeros_like(p))
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    return g, m, v


def sgd(p, g, st, grp, t):
    lr, mom, damp = grp["lr"], grp["momentum"], grp["dampening"]
    g = _wd(p, g, grp)
    if mom != 0:
        if "momentum_buffer" not in st:
            st["momentum_buffer"] = g.copy()
        else:
            b = st["momentum_buffer"]
            b[...] = mom * b + (1 - damp) * g
        b = st["momentum_buffer"]
        g = g + mom * b if grp["nesterov"] else b
    p -= lr * g


def adam(p, g, st, grp, t):
    lr, (b1, b2), eps = grp["lr"], grp["betas"], grp["eps"]
    g, m, v = _adam_moments(p, g, st, grp)
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    if grp["amsgrad"]:
        vmax = st.setdefault("max_exp_avg_sq", np.zeros_like(p))
        vmax[...] = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / math.sqrt(bc2) + eps
    else:
        denom = np.sqrt(v) / math.sqrt(bc2) + eps
    p -= (lr / bc1) * m / denom


def adagrad(p, g, st, grp, t):
    g = _wd(p, g, grp)
    s = st.setdefault("sum", np.full_like(p, grp["initial_accumulator_value"]))
    clr = grp["lr"] / (1 + (t - 1) * grp["lr_decay"])
    s[...] = s + g * g
    p -= clr * g / (np.sqrt(s) + grp["eps"])


def rmsprop(p, g, st, grp, t):
    a, eps, mom, lr = grp["alpha"], grp["eps"], grp["momentum"], grp["lr"]
    g = _wd(p, g, grp)
    v = st.setdefault("square_avg", np.zeros_like(p))
    v[...] = a * v + (1 - a) * g * g
    if grp["centered"]:
        ga = st.setdefault("grad_avg", np.zeros_like(p))
        ga[...] = a * ga + (1 - a) * g
        avg = np.sqrt(v - ga * ga) + eps
    else:
        avg = np.sqrt(v) + eps
    if mom > 0:
        b = st.setdefault("momentum_buffer", np.zeros_like(p))
        b[...] = mom * b + g / avg
        p -= lr * b
    else:
        p -= lr * g / avg


def adamax(p, g, st, grp, t):
    lr, (b1, b2), eps = grp["lr"], grp["betas"], grp["eps"]
    g = _wd(p, g, grp)
    m = st.setdefault("exp_avg", np.zeros_like(p))
    u = st.setdefault("exp_inf", np.zeros_like(p))
    m[...] = b1 * m + (1 - b1) * g
    u[...] = np.maximum(b2 * u, np.abs(g) + eps)
    p -= lr / (1 - b1 ** t) * m / u


def nadam(p, g, st, grp, t):
    lr, (b1, b2), eps, psi = grp["lr"], grp["betas"], grp["eps"], grp["momentum_decay"]
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    st["mu_product"] = mu_product = st.get("mu_product", 1.0) * mu
    g, m, v = _adam_moments(p, g, st, grp)
    denom = np.sqrt(v / (1 - b2 ** t)) + eps
    p -= lr * (1 - mu) / (1 - mu_product) * g / denom
    p -= lr * mu_next / (1 - mu_product * mu_next) * m / denom


def radam(p, g, st, grp, t):
    lr, (b1, b2), eps = grp["lr"], grp["betas"], grp["eps"]
    g, m, v = _adam_moments(p, g, st, grp)
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / bc2
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        p -= (m / bc1) * lr * (math.sqrt(bc2) / (np.sqrt(v) + eps)) * rect
    else:
        p -= (m / bc1) * lr


def adadelta(p, g, st, grp, t):
    rho, eps, lr = grp["rho"], grp["eps"], grp["lr"]
    g = _wd(p, g, grp)
    v = st.setdefault("square_avg", np.zeros_like(p))
    u = st.setdefault("acc_delta", np.zeros_like(p))
    v[...] = rho * v + (1 - rho) * g * g
    delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    u[...] = rho * u + (1 - rho) * delta * delta
    p -= lr * delta


def rprop(p, g, st, grp, t):
    (etaminus, etaplus), (lo, hi) = grp["etas"], grp["step_sizes"]
    prev = st.setdefault("prev", np.zeros_like(p))
    step = st.setdefault("step_size", np.full_like(p, grp["lr"]))
    d = g * prev
    f = np.where(d > 0, p.dtype.type(etaplus), np.where(d < 0, p.dtype.type(etaminus), p.dtype.type(1)))
    step[...] = np.clip(step * f, lo, hi)
    prev[...] = np.where(d < 0, 0, g)
    p -= np.sign(prev) * step


def lion(p, g, st, grp, t):
    lr, (b1, b2), wd = grp["lr"], grp["betas"], grp["weight_decay"]
    m = st.setdefault("exp_avg", np.zeros_like(p))
    p *= 1 - lr * wd
    p -= lr * np.sign(b1 * m + (1 - b1) * g)
    m[...] = b2 * m + (1 - b2) * g
