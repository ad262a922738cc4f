"""The Keras and optax conventions of the torch-style classes, against float64 NumPy
references written from the formulas in the class docstrings (one line per formula line),
50 steps in float64: each option changes exactly the formula it documents, and the
defaults stay torch's (the torch-default paths are covered by test_optimizers.py)."""
import math

import numpy as np
import pytest

import fusedoptim as fo

STEPS = 50


def _run(cls, kw, ref, seed=0, n=33, sched=None):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(n)
    p = theta.copy()
    opt = getattr(fo, cls)([p], **kw)
    s = {}
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(n)
        lr = kw["lr"](t - 1) if callable(kw["lr"]) else kw["lr"]
        theta = ref(theta, g, s, t, lr)
        opt.step([g])
    np.testing.assert_allclose(p, theta, rtol=1e-10, atol=1e-12)


def _adam(eps_before=False, eps_root=0.0, ams_bc=False, amsgrad=False, wd=0.0, decoupled=False):
    b1, b2, eps = 0.8, 0.95, 1e-3

    def ref(theta, g, s, t, lr):
        if wd and decoupled:
            theta = theta * (1 - lr * wd)
        elif wd:
            g = g + wd * theta
        m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        if amsgrad and ams_bc:
            vh = s["vmax"] = np.maximum(s.get("vmax", 0.0), v / bc2)
            return theta - lr / bc1 * m / (np.sqrt(vh + eps_root) + (eps / math.sqrt(bc2) if eps_before else eps))
        vh = s["vmax"] = np.maximum(s.get("vmax", 0.0), v) if amsgrad else v
        if eps_before:        # Keras: alpha = lr sqrt(bc2) / bc1; theta -= alpha m / (sqrt(v) + eps)
            return theta - lr * math.sqrt(bc2) / bc1 * m / (np.sqrt(vh + eps_root * bc2) + eps)
        return theta - lr / bc1 * m / (np.sqrt(vh / bc2 + eps_root) + eps)
    return ref


@pytest.mark.parametrize("kw", [dict(eps_before_bias_correction=True), dict(eps_root=1e-4),
                                dict(amsgrad=True, amsgrad_bias_corrected=True),
                                dict(amsgrad=True, amsgrad_bias_corrected=True, eps_root=1e-4),
                                dict(amsgrad=True, eps_before_bias_correction=True),
                                dict(eps_before_bias_correction=True, weight_decay=0.1, decoupled_weight_decay=True)],
                         ids=str)
def test_adam_options(kw):
    ref = _adam(eps_before=kw.get("eps_before_bias_correction", False), eps_root=kw.get("eps_root", 0.0),
                ams_bc=kw.get("amsgrad_bias_corrected", False), amsgrad=kw.get("amsgrad", False),
                wd=kw.get("weight_decay", 0.0), decoupled=kw.get("decoupled_weight_decay", False))
    _run("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-3, **kw), ref)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_lr_in_momentum_under_a_schedule(nesterov):
    mu, wd = 0.9, 0.05
    sched = lambda t: 0.1 * 0.9 ** t  # noqa: E731

    def ref(theta, g, s, t, lr):    # Keras: m = mu m - lr g; theta += m (nesterov: mu m - lr g)
        theta = theta * (1 - lr * wd)
        m = s["m"] = mu * s.get("m", 0.0) - lr * g
        return theta + (mu * m - lr * g if nesterov else m)
    _run("SGD", dict(lr=sched, momentum=mu, nesterov=nesterov, lr_in_momentum=True, weight_decay=wd,
                     decoupled_weight_decay=True), ref)


def test_sgd_lr_in_momentum_needs_zero_dampening():
    with pytest.raises(ValueError, match="lr_in_momentum requires zero dampening"):
        fo.SGD([np.zeros(2)], lr=0.1, momentum=0.9, dampening=0.1, lr_in_momentum=True)


@pytest.mark.parametrize("kw", [dict(eps_in_sqrt=True), dict(initial_scale=0.5), dict(bias_correction=True),
                                dict(momentum=0.9, lr_in_momentum=True), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.9, nesterov=True, lr_in_momentum=True, eps_in_sqrt=True),
                                dict(centered=True, bias_correction=True, eps_in_sqrt=True, initial_scale=0.5),
                                dict(centered=True, momentum=0.5, weight_decay=0.1, decoupled_weight_decay=True)],
                         ids=str)
def test_rmsprop_options(kw):
    a, eps, mu = 0.9, 1e-3, kw.get("momentum", 0.0)
    inside, bc_on = kw.get("eps_in_sqrt", False), kw.get("bias_correction", False)
    inlr, nest, wd = kw.get("lr_in_momentum", False), kw.get("nesterov", False), kw.get("weight_decay", 0.0)

    def ref(theta, g, s, t, lr):
        if wd:
            theta = theta * (1 - lr * wd)
        v = s["v"] = a * s.get("v", kw.get("initial_scale", 0.0)) + (1 - a) * g * g
        bc = 1 - a ** t if bc_on else 1.0
        x = v / bc
        if kw.get("centered"):
            gb = s["gb"] = a * s.get("gb", 0.0) + (1 - a) * g
            x = x - (gb / bc) ** 2
        d = np.sqrt(x + eps) if inside else np.sqrt(x) + eps
        if not mu:
            return theta - lr * g / d
        inc = (lr if inlr else 1.0) * g / d
        b = s["b"] = mu * s.get("b", 0.0) + inc
        step = inc + mu * b if nest else b
        return theta - (1.0 if inlr else lr) * step
    _run("RMSprop", dict(lr=0.01, alpha=a, eps=eps, **kw), ref)


def test_adagrad_eps_in_sqrt_and_decoupled_decay():
    eps, wd = 1e-3, 0.1

    def ref(theta, g, s, t, lr):
        theta = theta * (1 - lr * wd)
        acc = s["s"] = s.get("s", 0.1) + g * g
        return theta - lr * g / np.sqrt(acc + eps)
    _run("Adagrad", dict(lr=0.05, eps=eps, eps_in_sqrt=True, initial_accumulator_value=0.1, weight_decay=wd,
                         decoupled_weight_decay=True), ref)


def test_adamax_eps_after_max():
    b1, b2, eps = 0.8, 0.95, 1e-3

    def ref(theta, g, s, t, lr):      # Keras: u = max(b2 u, |g|); theta -= lr m / ((1 - b1^t)(u + eps))
        m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        u = s["u"] = np.maximum(b2 * s.get("u", 0.0), np.abs(g))
        return theta - lr * m / ((1 - b1 ** t) * (u + eps))
    _run("Adamax", dict(lr=0.01, betas=(b1, b2), eps=eps, eps_after_max=True), ref)


def test_adadelta_decoupled_decay():
    rho, eps, wd = 0.9, 1e-3, 0.1

    def ref(theta, g, s, t, lr):
        theta = theta * (1 - lr * wd)
        v = s["v"] = rho * s.get("v", 0.0) + (1 - rho) * g * g
        dx = np.sqrt(s.get("u", 0.0) + eps) / np.sqrt(v + eps) * g
        s["u"] = rho * s.get("u", 0.0) + (1 - rho) * dx * dx
        return theta - lr * dx
    _run("Adadelta", dict(lr=0.5, rho=rho, eps=eps, weight_decay=wd, decoupled_weight_decay=True), ref)


@pytest.mark.parametrize("cls", ["SGD", "Adam", "Adagrad", "RMSprop", "Adamax", "Adadelta", "NAdam"])
def test_decoupled_decay_alone_scales_the_weights(cls):
    # a zero gradient leaves only the decay: theta (1 - lr wd) per step, on every optimizer
    p = np.full(5, 2.0)
    opt = getattr(fo, cls)([p], lr=0.5, weight_decay=0.1, decoupled_weight_decay=True)
    for _ in range(3):
        opt.step([np.zeros(5)])
    np.testing.assert_allclose(p, 2.0 * 0.95 ** 3, rtol=1e-14)


def test_new_flags_are_validated():
    with pytest.raises(TypeError, match="eps_in_sqrt"):
        fo.RMSprop([np.zeros(2)], eps_in_sqrt="yes")
    with pytest.raises(ValueError, match="eps_root"):
        fo.Adam([np.zeros(2)], eps_root=-1.0)
