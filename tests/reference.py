"""Independent NumPy references of the eighteen optimizers, written from torch.optim's formulas
(Lion, which torch lacks, from Chen et al. 2023 and optax.lion; AdaBelief, Yogi and Adan
from their papers and pytorch_optimizer, Ftrl from Keras, the schedule-free pair from
Defazio et al. 2024 and the schedulefree package).

Each rule is written from the docstring of its fusedoptim class (same symbols, one line
of code per formula line) and checked against torch/optim/*.py for the semantics (where
weight decay goes, what maximize negates, how the first SGD step fills the buffer, when
state is created).  It shares no code with fusedoptim.

Precision follows the library's contract: array math happens in the parameters' dtype
(float32 or float64; NumPy 2 keeps a float32 array float32 when it meets a Python
float), and every per-step scalar (bias corrections, 1 - beta, decayed lr, mu products)
is a Python float computed in double.  ``_same_dtype`` guards that no expression quietly
widens to float64 before it is stored.

A rule takes flat arrays ``theta`` (the parameter), ``g`` (its gradient) and the
parameter's state dict ``s`` (``s["step"]`` is 0 before the first step; buffers are
created on first use, like torch's lazy init) and returns the new ``theta``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

# torch.optim's defaults, written out so the reference does not read them from fusedoptim.
DEFAULTS: Dict[str, dict] = {
    "SGD": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                 decoupled_weight_decay=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
    "Adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                    maximize=False),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                    maximize=False),
    "Adamax": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False),
    "NAdam": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                  decoupled_weight_decay=False, maximize=False),
    "RAdam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                  maximize=False),
    "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False),
    "Rprop": dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False),
    # not in torch: optax.lion's / lion-pytorch's defaults
    "Lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False),
    "ASGD": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, maximize=False),
    # not in torch: pytorch_optimizer 4.1's, Keras 3's (Ftrl; learning_rate is lr) and schedulefree 1.4.1's
    # defaults (maximize is fusedoptim's addition to all of them)
    "AdaBelief": dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, weight_decouple=True, fixed_decay=False,
                      rectify=False, n_sma_threshold=5, degenerated_to_sgd=True, ams_bound=False, eps=1e-16,
                      maximize=False),
    "Yogi": dict(lr=1e-2, betas=(0.9, 0.999), initial_accumulator=1e-6, weight_decay=0.0, weight_decouple=True,
                 fixed_decay=False, eps=1e-3, maximize=False),
    "Adan": dict(lr=1e-3, betas=(0.98, 0.92, 0.99), weight_decay=0.0, weight_decouple=False, eps=1e-8,
                 maximize=False),
    "Ftrl": dict(lr=1e-3, learning_rate_power=-0.5, initial_accumulator_value=0.1, l1_regularization_strength=0.0,
                 l2_regularization_strength=0.0, l2_shrinkage_regularization_strength=0.0, beta=0.0,
                 weight_decay=0.0, maximize=False),
    "ScheduleFreeAdamW": dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0,
                              weight_lr_power=2.0, maximize=False),
    "ScheduleFreeSGD": dict(lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0,
                            maximize=False),
}

# The buffers each optimizer keeps, whatever its flags (torch's names).
BUFFERS: Dict[str, tuple] = {
    "SGD": ("momentum_buffer",),
    "Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "AdamW": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "Adagrad": ("sum",),
    "RMSprop": ("square_avg", "grad_avg", "momentum_buffer"),
    "Adamax": ("exp_avg", "exp_inf"),
    "NAdam": ("exp_avg", "exp_avg_sq"),
    "RAdam": ("exp_avg", "exp_avg_sq"),
    "Adadelta": ("square_avg", "acc_delta"),
    "Rprop": ("prev", "step_size"),
    "Lion": ("exp_avg",),
    "ASGD": ("ax",),
    "AdaBelief": ("exp_avg", "exp_avg_var", "max_exp_avg_var"),
    "Yogi": ("exp_avg", "exp_avg_sq"),
    "Adan": ("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"),
    "Ftrl": ("accumulator", "linear"),
    "ScheduleFreeAdamW": ("z", "exp_avg_sq"),
    "ScheduleFreeSGD": ("z",),
}


def _buf(s: dict, name: str, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """State buffer ``name``, created on first use (torch's lazy init)."""
    if name not in s:
        s[name] = np.full_like(like, fill)
    return s[name]


# --------------------------------------------------------------------------- SGD
def sgd(theta, g, s, *, lr, momentum, dampening, weight_decay, nesterov, maximize):
    s["step"] += 1
    if maximize:
        g = -g                                                   # g <- -g
    if weight_decay != 0:
        g = g + weight_decay * theta                             # g <- g + lambda theta
    if momentum != 0:
        if "momentum_buffer" not in s:
            b = g.copy()                                         # b_1 <- g_1 (torch copies)
        else:
            b = momentum * s["momentum_buffer"] + (1 - dampening) * g   # b <- mu b + (1 - tau) g
        s["momentum_buffer"] = b
        g = g + momentum * b if nesterov else b                  # g <- g + mu b | b
    return theta - lr * g                                        # theta <- theta - gamma g


# -------------------------------------------------------------------------- Adam
def adam(theta, g, s, *, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    t = s["step"] = s["step"] + 1
    b1, b2 = betas
    m, v = _buf(s, "exp_avg", theta), _buf(s, "exp_avg_sq", theta)
    if maximize:
        g = -g
    if decoupled_weight_decay:
        theta = theta * (1 - lr * weight_decay)                  # theta <- theta (1 - gamma lambda)
    elif weight_decay != 0:
        g = g + weight_decay * theta                             # g <- g + lambda theta
    s["exp_avg"] = m = b1 * m + (1 - b1) * g                     # m <- b1 m + (1 - b1) g
    s["exp_avg_sq"] = v = b2 * v + (1 - b2) * g * g              # v <- b2 v + (1 - b2) g^2
    if amsgrad:
        s["max_exp_avg_sq"] = v_hat = np.maximum(_buf(s, "max_exp_avg_sq", theta), v)  # v^ <- max(v^, v)
    else:
        v_hat = v
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    return theta - lr / bc1 * m / (np.sqrt(v_hat) / math.sqrt(bc2) + eps)


def adamw(theta, g, s, **hp):
    return adam(theta, g, s, decoupled_weight_decay=True, **hp)


# ----------------------------------------------------------------------- Adagrad
def adagrad(theta, g, s, *, lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize):
    t = s["step"] = s["step"] + 1
    acc = _buf(s, "sum", theta, initial_accumulator_value)      # s_0 = tau
    if maximize:
        g = -g
    clr = lr / (1 + (t - 1) * lr_decay)                          # gamma~ <- gamma / (1 + (t-1) eta)
    if weight_decay != 0:
        g = g + weight_decay * theta
    s["sum"] = acc = acc + g * g                                 # s <- s + g^2
    return theta - clr * g / (np.sqrt(acc) + eps)                # theta <- theta - gamma~ g / (sqrt(s) + eps)


# ----------------------------------------------------------------------- RMSprop
def rmsprop(theta, g, s, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    s["step"] += 1
    v = _buf(s, "square_avg", theta)
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * theta
    s["square_avg"] = v = alpha * v + (1 - alpha) * g * g        # v <- alpha v + (1 - alpha) g^2
    if centered:
        s["grad_avg"] = g_bar = alpha * _buf(s, "grad_avg", theta) + (1 - alpha) * g  # g_bar <- ...
        d = np.sqrt(v - g_bar * g_bar) + eps                     # d <- sqrt(v - g_bar^2) + eps
    else:
        d = np.sqrt(v) + eps                                     # d <- sqrt(v) + eps
    if momentum > 0:
        s["momentum_buffer"] = b = momentum * _buf(s, "momentum_buffer", theta) + g / d  # b <- mu b + g/d
        return theta - lr * b                                    # theta <- theta - gamma b
    return theta - lr * g / d                                    # theta <- theta - gamma g / d


# ------------------------------------------------------------------------ Adamax
def adamax(theta, g, s, *, lr, betas, eps, weight_decay, maximize):
    t = s["step"] = s["step"] + 1
    b1, b2 = betas
    m, u = _buf(s, "exp_avg", theta), _buf(s, "exp_inf", theta)
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * theta
    s["exp_avg"] = m = b1 * m + (1 - b1) * g                     # m <- b1 m + (1 - b1) g
    s["exp_inf"] = u = np.maximum(b2 * u, np.abs(g) + eps)       # u <- max(b2 u, |g| + eps)
    return theta - lr / (1 - b1 ** t) * m / u                    # theta <- theta - gamma/(1-b1^t) m/u


# ------------------------------------------------------------------------- NAdam
def nadam(theta, g, s, *, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize):
    t = s["step"] = s["step"] + 1
    b1, b2 = betas
    psi = momentum_decay
    m, v = _buf(s, "exp_avg", theta), _buf(s, "exp_avg_sq", theta)
    mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))                    # mu_t
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))           # mu_{t+1}
    s["mu_product"] = prod = s.get("mu_product", 1.0) * mu_t     # prod_{i<=t} mu_i (a float, per param)
    if maximize:
        g = -g
    if decoupled_weight_decay:
        theta = theta * (1 - lr * weight_decay)
    elif weight_decay != 0:
        g = g + weight_decay * theta
    s["exp_avg"] = m = b1 * m + (1 - b1) * g
    s["exp_avg_sq"] = v = b2 * v + (1 - b2) * g * g
    d = np.sqrt(v / (1 - b2 ** t)) + eps                         # d <- sqrt(v / (1 - b2^t)) + eps
    theta = theta - lr * (1 - mu_t) / (1 - prod) * g / d
    return theta - lr * mu_next / (1 - prod * mu_next) * m / d


# ------------------------------------------------------------------------- RAdam
def radam(theta, g, s, *, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize):
    t = s["step"] = s["step"] + 1
    b1, b2 = betas
    m, v = _buf(s, "exp_avg", theta), _buf(s, "exp_avg_sq", theta)
    if maximize:
        g = -g
    if decoupled_weight_decay:
        theta = theta * (1 - lr * weight_decay)
    elif weight_decay != 0:
        g = g + weight_decay * theta
    s["exp_avg"] = m = b1 * m + (1 - b1) * g
    s["exp_avg_sq"] = v = b2 * v + (1 - b2) * g * g
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    rho_inf = 2 / (1 - b2) - 1                                   # rho_inf
    rho_t = rho_inf - 2 * t * b2 ** t / bc2                      # rho_t
    if rho_t > 5:
        r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        return theta - lr * (m / bc1) * (math.sqrt(bc2) / (np.sqrt(v) + eps)) * r
    return theta - lr * (m / bc1)


# ---------------------------------------------------------------------- Adadelta
def adadelta(theta, g, s, *, lr, rho, eps, weight_decay, maximize):
    s["step"] += 1
    v, u = _buf(s, "square_avg", theta), _buf(s, "acc_delta", theta)
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * theta
    s["square_avg"] = v = rho * v + (1 - rho) * g * g            # v <- rho v + (1 - rho) g^2
    dx = np.sqrt(u + eps) / np.sqrt(v + eps) * g                 # dx <- sqrt(u + eps)/sqrt(v + eps) g
    s["acc_delta"] = rho * u + (1 - rho) * dx * dx               # u <- rho u + (1 - rho) dx^2
    return theta - lr * dx                                       # theta <- theta - gamma dx


# ------------------------------------------------------------------------- Rprop
def rprop(theta, g, s, *, lr, etas, step_sizes, maximize, delayed=False):
    s["step"] += 1
    if delayed:
        return _rprop_delayed(theta, g, s, lr=lr, etas=etas, step_sizes=step_sizes, maximize=maximize)
    T = theta.dtype.type                                         # etas and bounds round to the dtype, as in torch
    eta_minus, eta_plus = etas
    lo, hi = step_sizes
    g_prev, step = _buf(s, "prev", theta), _buf(s, "step_size", theta, lr)   # g^_0 = 0, s_0 = gamma
    if maximize:
        g = -g
    d = g_prev * g
    f = np.where(d > 0, T(eta_plus), np.where(d < 0, T(eta_minus), np.where(d == 0, T(1), d)))  # NaN stays
    s["step_size"] = step = np.minimum(np.maximum(f * step, T(lo)), T(hi))  # s <- min(max(f s, lo), hi)
    g = np.where(d < 0, T(0), g)                                 # g <- 0 where the sign flipped
    s["prev"] = g                                                # g^ <- g
    return theta - step * np.sign(g)                             # theta <- theta - s sign(g)


def _rprop_delayed(theta, g, s, *, lr, etas, step_sizes, maximize):
    """optax.rprop's order (Rprop's ``delayed=True``), written from optax's state: the
    step sizes and prev_updates u = s sign(g^) (0 after a sign change)."""
    eta_minus, eta_plus = etas
    lo, hi = step_sizes
    g_prev, step = _buf(s, "prev", theta), _buf(s, "step_size", theta, lr)
    if maximize:
        g = -g
    u_prev = step * np.sign(g_prev)                              # optax's prev_updates
    d = g * u_prev
    s["step_size"] = step = np.where(d == 0, step, np.clip(step * np.where(d > 0, eta_plus, eta_minus), lo, hi))
    s["prev"] = np.where(d < 0, 0.0, g)                          # (optax: u = where(d < 0, 0, s sign(g)))
    return theta - np.where(d < 0, 0.0, u_prev)                  # theta <- theta - u_prev unless the sign flipped


# -------------------------------------------------------------------------- Lion
def lion(theta, g, s, *, lr, betas, weight_decay, maximize):
    s["step"] += 1
    b1, b2 = betas
    m = _buf(s, "exp_avg", theta)
    if maximize:
        g = -g
    theta = theta * (1 - lr * weight_decay)                      # theta <- theta (1 - gamma lambda)
    c = b1 * m + (1 - b1) * g                                    # c <- b1 m + (1 - b1) g
    theta = theta - lr * np.sign(c)                              # theta <- theta - gamma sign(c)
    s["exp_avg"] = b2 * m + (1 - b2) * g                         # m <- b2 m + (1 - b2) g
    return theta


# -------------------------------------------------------------------------- ASGD
def asgd(theta, g, s, *, lr, lambd, alpha, t0, weight_decay, maximize):
    t = s["step"] = s["step"] + 1
    eta, mu = s.get("eta", lr), s.get("mu", 1.0)                 # eta_1 = gamma, mu_1 = 1
    ax = _buf(s, "ax", theta)
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * theta                             # g <- g + w theta
    theta = theta * (1 - lambd * eta) - eta * g                  # theta <- theta (1 - lambda eta) - eta g
    s["ax"] = theta.copy() if mu == 1 else ax + mu * (theta - ax)   # a <- a + mu (theta - a) | theta
    s["eta"] = lr / (1 + lambd * lr * t) ** alpha                # eta_{t+1}
    s["mu"] = 1 / max(1, t - t0)                                 # mu_{t+1}
    return theta


# ------------------------------------------------------------------- AdaBelief
def adabelief(theta, g, s, *, lr, betas, weight_decay, weight_decouple, fixed_decay, rectify, n_sma_threshold,
              degenerated_to_sgd, ams_bound, eps, maximize):
    t = s["step"] = s["step"] + 1
    b1, b2 = betas
    m, v = _buf(s, "exp_avg", theta), _buf(s, "exp_avg_var", theta)
    if maximize:
        g = -g
    if weight_decouple:
        theta = theta * (1 - weight_decay * (1.0 if fixed_decay else lr))   # theta <- theta (1 - gamma lambda)
    elif weight_decay != 0:
        g = g + weight_decay * theta                             # g <- g + lambda theta
    s["exp_avg"] = m = b1 * m + (1 - b1) * g                     # m <- b1 m + (1 - b1) g
    r = g - m
    s["exp_avg_var"] = v = b2 * v + (1 - b2) * r * r + eps      # s <- b2 s + (1 - b2)(g - m)^2 + eps
    if ams_bound:
        s["max_exp_avg_var"] = v = np.maximum(_buf(s, "max_exp_avg_var", theta), v)   # s^ <- max(s^, s)
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    if not rectify:
        return theta - lr / bc1 * m / (np.sqrt(v) / math.sqrt(bc2) + eps)
    rho_inf = 2 / (1 - b2) - 1                                   # rho_inf
    rho = rho_inf - 2 * t * b2 ** t / bc2                        # rho_t
    if rho >= n_sma_threshold:
        r = math.sqrt(bc2 * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return theta - lr * r / bc1 * m / (np.sqrt(v) + eps)    # rectified step
    return theta - lr / bc1 * m if degenerated_to_sgd else theta   # SGD step, or none


# ------------------------------------------------------------------------ Yogi
def yogi(theta, g, s, *, lr, betas, initial_accumulator, weight_decay, weight_decouple, fixed_decay, eps,
         maximize):
    t = s["step"] = s["step"] + 1
    b1, b2 = betas
    m = _buf(s, "exp_avg", theta, initial_accumulator)          # m_0 = v_0 = initial_accumulator
    v = _buf(s, "exp_avg_sq", theta, initial_accumulator)
    if maximize:
        g = -g
    if weight_decouple:
        theta = theta * (1 - weight_decay * (1.0 if fixed_decay else lr))
    elif weight_decay != 0:
        g = g + weight_decay * theta
    s["exp_avg"] = m = b1 * m + (1 - b1) * g                     # m <- b1 m + (1 - b1) g
    g2 = g * g
    s["exp_avg_sq"] = v = v - (1 - b2) * np.sign(v - g2) * g2   # v <- v - (1 - b2) sign(v - g^2) g^2
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    return theta - lr / bc1 * m / (np.sqrt(v) / math.sqrt(bc2) + eps)


# ------------------------------------------------------------------------ Adan
def adan(theta, g, s, *, lr, betas, weight_decay, weight_decouple, eps, maximize, eps_root=0.0,
         optax_diff_weight=False):
    t = s["step"] = s["step"] + 1
    b1, b2, b3 = betas
    first = "previous_grad" not in s
    m, v, n = _buf(s, "exp_avg", theta), _buf(s, "exp_avg_sq", theta), _buf(s, "exp_avg_diff", theta)
    if maximize:
        g = -g
    d = np.zeros_like(g) if first else g - (-s["previous_grad"])   # d <- g - g_prev (d_1 = 0)
    s["exp_avg"] = m = b1 * m + (1 - b1) * g                     # m <- b1 m + (1 - b1) g
    s["exp_avg_diff"] = n = b2 * n + (1 - b2) * d                # n <- b2 n + (1 - b2) d
    w = 1 - b2 if optax_diff_weight else b2                      # optax weights d by 1 - b2
    s["exp_avg_sq"] = v = b3 * v + (1 - b3) * (g + w * d) ** 2   # v <- b3 v + (1 - b3)(g + b2 d)^2
    eta = np.sqrt(v / (1 - b3 ** t) + eps_root) + eps            # eta <- sqrt(v / (1 - b3^t) + eps_root) + eps
    if weight_decouple:
        theta = theta * (1 - lr * weight_decay)                  # theta <- theta (1 - gamma lambda)
    theta = theta - lr / (1 - b1 ** t) * m / eta - lr * w / (1 - b2 ** t) * n / eta
    if not weight_decouple:
        theta = theta / (1 + lr * weight_decay)                  # theta <- theta / (1 + gamma lambda)
    s["previous_grad"] = -g                                      # stored as -g (pytorch_optimizer)
    return theta


# ------------------------------------------------------------------------ Ftrl
def ftrl(theta, g, s, *, lr, learning_rate_power, initial_accumulator_value, l1_regularization_strength,
         l2_regularization_strength, l2_shrinkage_regularization_strength, beta, weight_decay, maximize):
    s["step"] += 1
    p = learning_rate_power
    n = _buf(s, "accumulator", theta, initial_accumulator_value)   # n_0
    z = _buf(s, "linear", theta)
    if maximize:
        g = -g
    theta = theta * (1 - lr * weight_decay)                      # theta <- theta (1 - gamma w)
    n_new = n + g * g                                            # n_t <- n + g^2
    root = np.sqrt if p == -0.5 else (lambda x: x ** -p)         # n^-p (a square root for p = -1/2)
    z = z + ((g + 2 * l2_shrinkage_regularization_strength * theta) - (root(n_new) - root(n)) / lr * theta)
    q = root(n_new) / lr + 2 * (l2_regularization_strength + beta / (2 * lr))   # q_t
    l1 = l1_regularization_strength
    s["accumulator"], s["linear"] = n_new, z
    return (np.clip(z, -l1, l1) - z) / q                         # theta <- (clip(z, -l1, l1) - z) / q


# --------------------------------------------------------------- schedule-free
def _sf_weights(s, lr, warmup_steps, r, weight_lr_power, optax_warmup=False):
    """gamma_t (with warmup; optax_warmup: the z step's gamma at t - 1) and c_{t+1};
    advances step, lr_max, weight_sum."""
    k = s["step"]
    s["step"] = k + 1
    lr0, lr = lr, lr * ((k + 1) / warmup_steps if k < warmup_steps else 1.0)   # gamma_t
    s["lr_max"] = lr_max = max(lr, s.get("lr_max", -1.0))       # gamma_max
    w = (k + 1) ** r * lr_max ** weight_lr_power                 # w_t
    s["weight_sum"] = s.get("weight_sum", 0.0) + w               # sum w
    if optax_warmup:
        lr = lr0 * (k / warmup_steps if k < warmup_steps else 1.0)   # gamma_{t-1} for the z step
    return lr, (w / s["weight_sum"] if s["weight_sum"] != 0 else 0.0)   # c_{t+1}


def schedule_free_adamw(theta, g, s, *, lr, betas, eps, weight_decay, warmup_steps, r, weight_lr_power, maximize,
                        optax_warmup=False):
    b1, b2 = betas
    if "z" not in s:
        s["z"] = theta.copy()                                    # z_0 = theta_0
    z, v = s["z"], _buf(s, "exp_avg_sq", theta)
    t = s["step"] + 1
    lr, c = _sf_weights(s, lr, warmup_steps, r, weight_lr_power, optax_warmup)
    if maximize:
        g = -g
    s["exp_avg_sq"] = v = b2 * v + (1 - b2) * g * g              # v <- b2 v + (1 - b2) g^2
    u = g / (np.sqrt(v / (1 - b2 ** t)) + eps) + weight_decay * theta   # u <- g / (sqrt(v / bc2) + eps) + lambda y
    y = theta + c * (z - theta) + lr * (b1 * (1 - c) - 1) * u   # y <- y + c (z - y) + gamma (b1 (1 - c) - 1) u
    s["z"] = z - lr * u                                          # z <- z - gamma u
    return y


def schedule_free_sgd(theta, g, s, *, lr, momentum, weight_decay, warmup_steps, r, weight_lr_power, maximize,
                      optax_warmup=False):
    if "z" not in s:
        s["z"] = theta.copy()                                    # z_0 = theta_0
    z = s["z"]
    lr, c = _sf_weights(s, lr, warmup_steps, r, weight_lr_power, optax_warmup)
    if maximize:
        g = -g
    u = g + weight_decay * theta                                 # u <- g + lambda y
    y = theta + c * (z - theta) + lr * (momentum * (1 - c) - 1) * u
    s["z"] = z - lr * u
    return y


RULES: Dict[str, Callable] = {
    "SGD": sgd, "Adam": adam, "AdamW": adamw, "Adagrad": adagrad, "RMSprop": rmsprop,
    "Adamax": adamax, "NAdam": nadam, "RAdam": radam, "Adadelta": adadelta, "Rprop": rprop, "Lion": lion,
    "ASGD": asgd, "AdaBelief": adabelief, "Yogi": yogi, "Adan": adan, "Ftrl": ftrl,
    "ScheduleFreeAdamW": schedule_free_adamw, "ScheduleFreeSGD": schedule_free_sgd,
}


def _same_dtype(name: str, a, dtype) -> None:
    if not (isinstance(a, np.ndarray) and a.dtype == dtype):
        raise AssertionError(f"reference bug: {name} became {getattr(a, 'dtype', type(a))}, expected {dtype}")


class ReferenceOptimizer:
    """Drives a rule over param groups the way torch.optim does.

    ``params``: a list of arrays or of group dicts (``{"params": [...], **hyperparameters}``);
    they are copied to ``dtype``.  ``param_groups[i]["lr"]`` may be changed between steps
    or be a callable of ``iterations``.  ``state[i]`` is parameter i's state (None until
    its first gradient), arrays shaped like the parameter.
    """

    def __init__(self, name: str, params, dtype=None, **hparams):
        if name not in RULES:
            raise KeyError(name)
        self.name = name
        groups = list(params)
        if not groups or not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: List[dict] = []
        self.params: List[np.ndarray] = []
        for grp in groups:
            hp = {**DEFAULTS[name], **hparams, **{k: v for k, v in grp.items() if k != "params"}}
            ps = [np.array(p, dtype=dtype or np.asarray(p).dtype, copy=True) for p in grp["params"]]
            self.params.extend(ps)
            self.param_groups.append({**hp, "params": ps})
        self.dtype = self.params[0].dtype if self.params else np.dtype(dtype or np.float64)
        self._flat: List[Optional[dict]] = [None] * len(self.params)
        self.iterations = 0

    @property
    def state(self) -> List[Optional[dict]]:
        out = []
        for p, s in zip(self.params, self._flat):
            out.append(None if s is None else
                       {k: (v.reshape(p.shape) if isinstance(v, np.ndarray) else v) for k, v in s.items()})
        return out

    def set_state(self, i: int, key: str, value) -> None:
        """Replace state entry ``key`` of parameter i (an array shaped like the parameter,
        or a number), as a user editing ``opt.state[p][key]`` would."""
        self._flat[i][key] = (np.array(value, dtype=self.params[i].dtype).reshape(-1)
                              if isinstance(value, np.ndarray) else value)

    def step(self, grads) -> None:
        grads = list(grads)
        assert len(grads) == len(self.params)
        i = 0
        for grp in self.param_groups:
            hp = {k: v for k, v in grp.items() if k != "params"}
            if callable(hp["lr"]):
                hp["lr"] = hp["lr"](self.iterations)
            hp = {k: (tuple(float(b) for b in v) if isinstance(v, (tuple, list)) else
                      v if isinstance(v, (bool, np.bool_)) else float(v)) for k, v in hp.items()}
            for p in grp["params"]:
                gr = grads[i]
                if gr is not None:
                    s = self._flat[i]
                    if s is None:
                        s = self._flat[i] = {"step": 0}
                    theta = p.reshape(-1)
                    g = np.asarray(gr, dtype=p.dtype).reshape(-1)
                    new = RULES[self.name](theta, g, s, **hp)
                    _same_dtype("theta", new, p.dtype)
                    for k, v in s.items():
                        if isinstance(v, np.ndarray):
                            _same_dtype(k, v, p.dtype)
                    theta[...] = new
                i += 1
        self.iterations += 1


# ------------------------------------------------------------------ comparisons
TOL = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
}


def assert_matches(params, state_of, ref: ReferenceOptimizer, *, rtol, atol, what="") -> None:
    """Every parameter and every state entry of a fusedoptim run equals the reference's.

    ``state_of(i)`` returns the library's state dict of parameter i (or None).  The set of
    state keys must be the same; integer counters must be equal; arrays within tolerance.
    """
    assert len(params) == len(ref.params)
    ref_state = ref.state
    for i, (p, q) in enumerate(zip(params, ref.params)):
        assert np.isfinite(q).all(), f"{what}: reference params[{i}] is not finite; pick saner hyperparameters"
        np.testing.assert_allclose(p, q, rtol=rtol, atol=atol, err_msg=f"{what}: params[{i}]")
        st, rs = state_of(i), ref_state[i]
        if rs is None:
            assert not st, f"{what}: params[{i}] has state {sorted(st)} but never had a gradient"
            continue
        assert st is not None, f"{what}: params[{i}] has no state"
        assert sorted(st) == sorted(rs), f"{what}: params[{i}] state keys {sorted(st)} != {sorted(rs)}"
        for k, want in rs.items():
            got = st[k]
            if k == "step":
                assert got == want, f"{what}: params[{i}] step {got} != {want}"
            elif isinstance(want, np.ndarray):
                assert isinstance(got, np.ndarray) and got.shape == p.shape and got.dtype == p.dtype, \
                    f"{what}: params[{i}] state {k!r} is {type(got).__name__} {getattr(got, 'shape', '')}"
                np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{what}: params[{i}] {k}")
            else:
                assert math.isclose(got, want, rel_tol=1e-14, abs_tol=0.0), \
                    f"{what}: params[{i}] {k} {got!r} != {want!r}"


# ------------------------------------------------------------------ Adafactor
def adafactor(theta, g, s, *, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
              maximize=False, keras_form=False, eps_in_stats=False, min_dim_size_to_factor=None, cap_lr=True,
              multiply_by_parameter_scale=True, momentum=None):
    """Adafactor (fusedoptim.Adafactor's docstring; torch 2.13 torch.optim.Adafactor, or
    Keras 3's formulas with ``keras_form``, or optax's options) on a *shaped* ``theta`` (the
    statistics factor its last two dims, so this rule is not in ``RULES``, which
    flattens).  float64 math."""
    t = s["step"] = s["step"] + 1
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = float(np.finfo(theta.dtype).eps)
    no_floor = keras_form or eps_in_stats
    G = -g if maximize else g
    w = t ** beta2_decay                                           # 1 - beta2_t
    rho = min(lr, 1.0 / math.sqrt(t)) if cap_lr else lr
    rms = lambda x: math.sqrt(float(np.mean(np.square(x)))) if x.size else 0.0  # noqa: E731
    decay = 1.0 - lr * weight_decay
    theta1 = theta * decay                                         # theta'
    alpha = max(eps2, rms(theta1 if keras_form else theta)) * rho if multiply_by_parameter_scale else rho
    G2 = G * G + (eps1 if no_floor else 0.0)
    k = min_dim_size_to_factor
    if theta.ndim >= 2 and (k is None or sorted(theta.shape)[-2] >= k):
        R = s.setdefault("row_var", np.zeros(theta.shape[:-1] + (1,), theta.dtype))
        C = s.setdefault("col_var", np.zeros(theta.shape[:-2] + (1, theta.shape[-1]), theta.dtype))
        R += w * (G2.mean(axis=-1, keepdims=True) - R)
        C += w * (G2.mean(axis=-2, keepdims=True) - C)
        Rm = R.mean(axis=-2, keepdims=True)
        V = R * C / (Rm if no_floor else np.maximum(Rm, eps1))
    else:
        V = s.setdefault("variance", np.zeros(theta.shape, theta.dtype))
        V += w * (G2 - V)
        V = V.copy()
    U = G / np.sqrt(V if no_floor else np.maximum(V, eps1 * eps1))
    step = alpha / (1.0 if d is None else max(1.0, rms(U) / d)) * U
    if momentum is not None:                                       # optax: m <- b1 m + (1 - b1) step
        step = s["exp_avg"] = momentum * s.get("exp_avg", 0.0) + (1 - momentum) * step
    return theta1 - step
