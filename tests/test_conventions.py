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


# ------------------------------------------------------ optax options (issue 14, the rest)
def _rule(fn, **hp):
    """A reference.py rule as a ``_run`` reference (its state dict keeps ``step``)."""
    def ref(theta, g, s, t, lr):
        s.setdefault("step", 0)
        return fn(theta, g, s, **dict(hp, lr=lr))
    return ref


@pytest.mark.parametrize("kw", [dict(eps_root=1e-3), dict(eps_root=1e-3, optax_diff_weight=True, weight_decay=0.1,
                                                         weight_decouple=True)], ids=str)
def test_adan_eps_root(kw):
    import reference
    hp = dict(dict(betas=(0.9, 0.8, 0.95), eps=1e-4, weight_decay=0.0, weight_decouple=False), **kw)
    _run("Adan", dict(lr=0.01, **hp), _rule(reference.adan, maximize=False, **hp))


@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.05, step_sizes=(1e-3, 2e-2), etas=(0.3, 1.5)),
                                dict(lr=0.01, maximize=True)], ids=str)
def test_rprop_delayed(kw):
    # lr=0.05 above the window: optax keeps an unsigned step size unclamped (it only
    # clamps a step size it multiplies), so the first moves are by 0.05
    import reference
    hp = dict(etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), maximize=False)
    hp.update({k: v for k, v in kw.items() if k != "lr"})
    _run("Rprop", dict(kw, delayed=True), _rule(reference.rprop, delayed=True, **hp))


def test_rprop_delayed_first_step_does_not_move():
    p = np.ones(3)
    opt = fo.Rprop([p], lr=0.1, delayed=True)
    opt.step([np.array([1.0, -1.0, 0.0])])
    np.testing.assert_array_equal(p, 1.0)
    opt.step([np.array([1.0, 1.0, 2.0])])          # moves by the step before: 0.1 sign(g_1); flip: 0
    np.testing.assert_allclose(p, [0.9, 1.0, 1.0], rtol=1e-15)


@pytest.mark.parametrize("cls", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_schedule_free_optax_warmup(cls):
    import reference
    if cls == "ScheduleFreeAdamW":
        hp = dict(betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, warmup_steps=10, r=0.0, weight_lr_power=2.0)
        fn = reference.schedule_free_adamw
    else:
        hp = dict(momentum=0.8, weight_decay=0.1, warmup_steps=10, r=0.5, weight_lr_power=2.0)
        fn = reference.schedule_free_sgd
    _run(cls, dict(lr=0.05, optax_warmup=True, **hp), _rule(fn, maximize=False, optax_warmup=True, **hp))


AF_OPTAX = [dict(eps=(1e-30, 1e-3), eps_in_stats=True, cap_lr=False),
            dict(eps=(1e-20, 1e-3), eps_in_stats=True, cap_lr=False, min_dim_size_to_factor=6, d=None, momentum=0.9),
            dict(eps=(1e-30, 1e-3), eps_in_stats=True, multiply_by_parameter_scale=False, d=0.5, momentum=0.5,
                 weight_decay=0.1),
            dict(min_dim_size_to_factor=5, cap_lr=False, momentum=0.8)]


@pytest.mark.parametrize("kw", AF_OPTAX, ids=str)
def test_adafactor_optax_options(kw):
    # shapes: factored (8, 6) and (3, 5, 7) (second largest dim 5: factored unless k = 6),
    # (4, 3) kept whole once k >= 4, and a vector
    import reference
    rng = np.random.default_rng(7)
    shapes = [(8, 6), (3, 5, 7), (4, 3), (9,)]
    thetas = [rng.standard_normal(sh) for sh in shapes]
    ps = [t.copy() for t in thetas]
    opt = fo.Adafactor(ps, lr=0.05, **kw)
    states = [{"step": 0} for _ in shapes]
    for _ in range(STEPS):
        gs = [rng.standard_normal(sh) for sh in shapes]
        thetas = [reference.adafactor(t, g, s, lr=0.05, **kw) for t, g, s in zip(thetas, gs, states)]
        opt.step(gs)
    for p, t, s in zip(ps, thetas, states):
        np.testing.assert_allclose(p, t, rtol=1e-10, atol=1e-12)
        st = opt.state[p]
        assert ("variance" in st) == ("variance" in s) and ("exp_avg" in st) == ("exp_avg" in s)
        if "exp_avg" in s:
            np.testing.assert_allclose(st["exp_avg"], s["exp_avg"], rtol=1e-10, atol=1e-12)


def _ns_ref(x, coeffs, steps, eps):
    a, b, c = coeffs
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(np.linalg.norm(x), eps)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


@pytest.mark.parametrize("kw", [dict(nesterov=True), dict(nesterov=False, weight_decay=0.1),
                                dict(nesterov=True, consistent_rms=0.2)], ids=str)
@pytest.mark.parametrize("shape", [(5, 9), (9, 5)], ids=str)
def test_muon_optax_options(kw, shape):
    """bias_correction=True and adjust_lr_fn="width_transfer" (or consistent_rms): the
    formulas of Muon's docstring, with Newton-Schulz in float64."""
    from fusedoptim.optim.muon import DEFAULT_NS_COEFFICIENTS as co
    mu, lr, wd, eps = 0.9, 0.02, kw.get("weight_decay", 0.0), 1e-8
    rng = np.random.default_rng(3)
    theta = rng.standard_normal(shape)
    p = theta.copy()
    opt = fo.Muon([p], lr=lr, momentum=mu, eps=eps, bias_correction=True, adjust_lr_fn="width_transfer",
                  **dict(kw, weight_decay=wd))
    B = np.zeros(shape)
    A, C = shape
    r = kw["consistent_rms"] * math.sqrt(max(A, C)) if "consistent_rms" in kw else math.sqrt(max(1, C / A))
    for t in range(1, 31):
        g = rng.standard_normal(shape)
        B = mu * B + (1 - mu) * g
        if kw["nesterov"]:
            Bt = mu * B / (1 - mu ** (t + 1)) + (1 - mu) * g / (1 - mu ** t)
        else:
            Bt = B / (1 - mu ** t)
        theta = theta * (1 - lr * wd) - lr * r * _ns_ref(Bt, co, 5, eps)
        opt.step([g])
    np.testing.assert_allclose(p, theta, rtol=1e-9, atol=1e-10)


def test_optax_options_are_validated():
    w = np.zeros((2, 2))
    cases = [(fo.Adan, dict(eps_root=-1.0), ValueError, "eps_root"),
             (fo.Rprop, dict(delayed="yes"), TypeError, "delayed"),
             (fo.ScheduleFreeAdamW, dict(optax_warmup=1), TypeError, "optax_warmup"),
             (fo.Adafactor, dict(momentum=1.5), ValueError, "momentum"),
             (fo.Adafactor, dict(min_dim_size_to_factor=-1), ValueError, "min_dim_size_to_factor"),
             (fo.Adafactor, dict(cap_lr="no"), TypeError, "cap_lr"),
             (fo.Adafactor, dict(multiply_by_parameter_scale=None), TypeError, "multiply_by_parameter_scale"),
             (fo.Adafactor, dict(d=0.5), ValueError, "clipping threshold"),
             (fo.Muon, dict(bias_correction=1), TypeError, "bias_correction"),
             (fo.Muon, dict(consistent_rms=0.0), ValueError, "consistent_rms"),
             (fo.Muon, dict(adjust_lr_fn="optax"), ValueError, "width_transfer")]
    for cls, kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            cls([w], **kw)
    # a bad value set on a live group refuses the step and changes nothing
    p = np.ones(4)
    opt = fo.Adan([p], lr=0.1)
    opt.param_groups[0]["eps_root"] = float("nan")
    with pytest.raises(ValueError, match="eps_root"):
        opt.step([np.ones(4)])
    np.testing.assert_array_equal(p, 1.0)
    assert not opt.state.get(p)


def test_readme_optax_options_snippet_runs(capsys):
    """The second snippet of README's "Coming from optax" (Adafactor, Muon, Rprop)."""
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Coming from optax"):]
    section = section[:section.index("\n## ", 5)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    scope: dict = {}
    exec(compile(blocks[1], "README optax options snippet", "exec"), scope)
    assert capsys.readouterr().out.split("\n")[0] == "['col_var', 'exp_avg', 'row_var', 'step']"
    W = scope["W"]
    assert not np.allclose(W, 1.0) and scope["af"].state[W]["exp_avg"].shape == W.shape
