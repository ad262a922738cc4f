"""fusedoptim against the independent NumPy references of reference.py, and the Optimizer API.

Why 200 steps: long enough for the bias corrections to fade (beta2 up to 0.999 is still
far from converged, but 1 - beta^t changes by orders of magnitude), for RAdam to cross
from the unrectified to the rectified branch (rho_t > 5 happens after ~5 steps for
beta2 near 1), for Adagrad's lr decay and accumulator to grow, and for float32 rounding
to accumulate; short enough that every case runs in well under a second.
"""
import numpy as np
import pytest

import fusedoptim
from cases import (BIG_SHAPES, CASES, OPTIMIZERS, RICH_CASES, SHAPES, build, case_params, draw_hparams,
                   grad_stream, make_params, seed_for, snapshot)
from reference import DEFAULTS, TOL, ReferenceOptimizer, assert_matches

STEPS = 200


def _state_of(opt, params):
    return lambda i: opt.state.get(params[i])


def _run(name, hp, dtype, shapes, steps, seed):
    params = make_params(seed, shapes, dtype)
    ref = ReferenceOptimizer(name, params, **hp)
    opt = build(name, params, **hp)
    for grads in grad_stream(seed + 1, shapes, dtype, steps):
        opt.step(grads)
        ref.step(grads)
    return params, opt, ref


# ------------------------------------------------------------------ the case table
@pytest.mark.parametrize("name,kwargs", case_params())
def test_matches_reference(name, kwargs, dtype):
    seed = seed_for(name, kwargs, dtype.name)
    hp = draw_hparams(name, kwargs, seed)
    params, opt, ref = _run(name, hp, dtype, SHAPES, STEPS, seed)
    assert opt.iterations == STEPS
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=f"{name} {hp}")


BIG = [("Adam", dict(amsgrad=True, weight_decay=1e-2, decoupled_weight_decay=True)),
       ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=1e-2))]


@pytest.mark.parametrize("name,kwargs", case_params(BIG))
def test_matches_reference_large(name, kwargs):
    """2**20 + 3 elements: above the grain, so the step runs on every thread, with chunk
    boundaries inside the big tensor and a small tensor behind it.  20 steps: the
    arithmetic per element is the one the small sizes test for 200 steps; what is new here
    is the split, which every step exercises the same way."""
    dtype = np.dtype(np.float32)
    seed = seed_for(name, kwargs, "big")
    hp = draw_hparams(name, kwargs, seed)
    params, opt, ref = _run(name, hp, dtype, BIG_SHAPES, 20, seed)
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=f"{name} {hp}")


# ------------------------------------------------------------------ in place, read-only grads
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_updates_in_place(name, kwargs):
    params = make_params(1, SHAPES, np.float32)
    views = [p.view() for p in params]        # other handles on the same memory
    opt = build(name, params, **kwargs)
    sign = -1 if kwargs.get("maximize") else 1
    for grads in grad_stream(2, SHAPES, np.float32, 3):
        before = [p.copy() for p in params]
        # Rprop leaves an element whose gradient changed sign where it is for this step
        rests = [p.size > 0 and name == "Rprop" and p in opt.state
                 and bool(np.all(opt.state[p]["prev"] * (sign * g) < 0)) for p, g in zip(params, grads)]
        opt.step(grads)
        for p, v, b, pg, r in zip(params, views, before, opt.param_groups[0]["params"], rests):
            assert pg is p
            assert np.shares_memory(p, v) or p.size == 0
            assert np.array_equal(v, p)
            if r:
                assert np.array_equal(p, b), "Rprop moved an element whose gradient changed sign"
            else:
                assert p.size == 0 or not np.array_equal(p, b), "parameter did not move"
        for p in params:
            for k, buf in opt.state[p].items():
                if isinstance(buf, np.ndarray):
                    assert not np.shares_memory(buf, p) and buf.shape == p.shape and buf.dtype == p.dtype


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_read_only_grads_accepted_and_untouched(name, kwargs):
    params = make_params(3, SHAPES, np.float64)
    opt = build(name, params, **kwargs)
    for grads in grad_stream(4, SHAPES, np.float64, 3):
        copies = [g.copy() for g in grads]
        assert not any(g.flags.writeable for g in grads)
        opt.step(grads)
        for g, c in zip(grads, copies):
            assert np.array_equal(g, c)


def test_one_gradient_shared_by_two_params():
    """Gradients are only read: the same (read-only) array may serve two parameters."""
    a, b = np.ones(5), np.ones(5)
    g = np.arange(5.0)
    g.flags.writeable = False
    opt = fusedoptim.SGD([a, b], lr=0.5)
    opt.step([g, g])
    assert np.array_equal(a, 1 - 0.5 * np.arange(5.0)) and np.array_equal(a, b)


# ------------------------------------------------------------------ param groups
def _two_group_hps(name):
    """Two hyperparameter sets of one optimizer, with different flags where it has any."""
    kws = [kw for n, kw in CASES if n == name]
    k0, k1 = kws[0], kws[-1]          # the plainest and the richest case
    return (draw_hparams(name, k0, seed_for(name, "group0")),
            draw_hparams(name, k1, seed_for(name, "group1")))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_param_groups_with_different_hyperparameters(name, dtype):
    hp0, hp1 = _two_group_hps(name)
    shapes0, shapes1 = SHAPES[:3], SHAPES[3:]
    p0 = make_params(5, shapes0, dtype)
    p1 = make_params(6, shapes1, dtype)
    ref = ReferenceOptimizer(name, [dict(params=p0, **hp0), dict(params=p1, **hp1)])
    opt = build(name, [dict(params=p0, **hp0), dict(params=p1, **hp1)])
    for grads in grad_stream(7, shapes0 + shapes1, dtype, 50):
        opt.step(grads)
        ref.step(grads)
    params = p0 + p1
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_lr_changed_between_steps_takes_effect(name, kwargs, dtype):
    hp = draw_hparams(name, kwargs, seed_for(name, "lr-change"))
    params = make_params(8, SHAPES, dtype)
    ref = ReferenceOptimizer(name, params, **hp)
    opt = build(name, params, **hp)
    rng = np.random.default_rng(9)
    for t, grads in enumerate(grad_stream(10, SHAPES, dtype, 40)):
        lr = float(rng.uniform(1e-4, 1e-1)) if t % 3 else 0.0       # lr = 0: theta stays, state moves
        if name == "Ftrl" and lr == 0.0:
            lr = 1e-4                                                 # Ftrl divides by lr: it must be > 0
        opt.param_groups[0]["lr"] = lr
        ref.param_groups[0]["lr"] = lr
        opt.step(grads)
        ref.step(grads)
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)
    # and it does take effect: a different lr sequence gives different params
    other = make_params(8, SHAPES, dtype)
    o2 = build(name, other, **hp)
    for grads in grad_stream(10, SHAPES, dtype, 40):
        o2.step(grads)
    assert not np.array_equal(other[3], params[3])


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_lr_schedule_callable_of_iterations(name, kwargs, dtype):
    hp = draw_hparams(name, kwargs, seed_for(name, "schedule"))
    base = hp.pop("lr")
    calls = []

    def schedule(it):
        calls.append(it)
        return base * 0.97 ** it

    params = make_params(11, SHAPES, dtype)
    ref = ReferenceOptimizer(name, params, lr=lambda it: base * 0.97 ** it, **hp)
    opt = build(name, params, lr=schedule, **hp)
    for grads in grad_stream(12, SHAPES, dtype, 30):
        opt.step(grads)
        ref.step(grads)
    assert calls == list(range(30)), "schedule must be called once per step with opt.iterations (0 first)"
    assert opt.iterations == 30
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_every_hyperparameter_change_between_steps_takes_effect(name, kwargs, dtype):
    """Switch the whole group between two hyperparameter sets (flags included, so buffers
    come and go: SGD/RMSprop momentum, RMSprop centered, amsgrad) every few steps."""
    hp_b = draw_hparams(name, kwargs, seed_for(name, "switch-b"))
    hp_a = draw_hparams(name, {}, seed_for(name, "switch-a"))
    hp_a = {k: hp_a.get(k, DEFAULTS[name][k]) for k in hp_b}
    params = make_params(24, SHAPES, dtype)
    ref = ReferenceOptimizer(name, params, **hp_a)
    opt = build(name, params, **hp_a)
    for t, grads in enumerate(grad_stream(25, SHAPES, dtype, 30)):
        hp = hp_b if (t // 5) % 2 else hp_a
        opt.param_groups[0].update(hp)
        ref.param_groups[0].update(hp)
        opt.step(grads)
        ref.step(grads)
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)


def _edit_state_midway(name, kwargs, edit):
    dtype = np.dtype(np.float64)
    hp = draw_hparams(name, kwargs, seed_for(name, "state-edit"))
    params = make_params(26, SHAPES, dtype)
    ref = ReferenceOptimizer(name, params, **hp)
    opt = build(name, params, **hp)
    for t, grads in enumerate(grad_stream(27, SHAPES, dtype, 12)):
        if t == 6:
            for i, p in enumerate(params):
                for k, v in edit(i, p, opt.state[p]).items():
                    opt.state[p][k] = v
                    ref.set_state(i, k, v)
        opt.step(grads)
        ref.step(grads)
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_replaced_state_buffer_is_used(name, kwargs):
    """``opt.state[p]`` is the live state (torch semantics): a buffer replaced by a new
    array between steps is the one the next step reads and updates."""
    _edit_state_midway(name, kwargs, lambda i, p, st: {k: np.full_like(p, 0.5) for k in st
                                                          if isinstance(st[k], np.ndarray)})


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_reset_step_is_used(name, kwargs):
    """Setting ``opt.state[p]["step"] = 0`` between steps (a warm restart of the bias
    corrections, torch semantics) is what the next step counts from."""
    _edit_state_midway(name, kwargs, lambda i, p, st: {"step": 0} if i % 2 == 0 else {})


# ------------------------------------------------------------------ None grads
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_none_grad_skips_parameter(name, kwargs, dtype):
    """A None gradient leaves its parameter and its state untouched (step not incremented);
    parameters with different step counts then share later steps."""
    hp = draw_hparams(name, kwargs, seed_for(name, "none"))
    shapes = [(7,), (4099,), (), (0,)]
    params = make_params(13, shapes, dtype)
    ref = ReferenceOptimizer(name, params, **hp)
    opt = build(name, params, **hp)
    pattern = [(1, 1, 0, 1), (1, 0, 1, 0), (0, 0, 1, 1), (1, 1, 1, 1), (0, 1, 0, 1)] * 6
    rng = np.random.default_rng(14)
    for mask in pattern:
        full = [rng.standard_normal(s).astype(dtype) for s in shapes]
        grads = [g if m else None for g, m in zip(full, mask)]
        before = snapshot(opt, params)
        opt.step(grads)
        ref.step(grads)
        for i, m in enumerate(mask):
            if not m:
                assert np.array_equal(params[i], before["params"][i])
                if i in before["state"]:
                    st = opt.state[params[i]]
                    assert st["step"] == before["state"][i]["step"]
                    for k, v in before["state"][i].items():
                        assert np.array_equal(st[k], v) if isinstance(v, np.ndarray) else st[k] == v
                else:
                    assert params[i] not in opt.state
    steps = [sum(m[i] for m in pattern) for i in range(len(shapes))]
    assert [opt.state[p]["step"] for p in params] == steps
    assert opt.iterations == len(pattern)
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)


def test_all_none_grads_still_count_an_iteration():
    p = np.ones(3)
    opt = fusedoptim.Adam([p])
    opt.step([None])
    assert opt.iterations == 1 and p not in opt.state and np.array_equal(p, np.ones(3))


# ------------------------------------------------------------------ Keras style
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_apply_gradients_equals_step(name, kwargs):
    hp = draw_hparams(name, kwargs, seed_for(name, "keras"))
    a = make_params(15, SHAPES, np.float32)
    b = [p.copy() for p in a]
    oa = build(name, a, **hp)
    ob = build(name, b, **hp)
    for grads in grad_stream(16, SHAPES, np.float32, 10):
        oa.step(grads)
        ob.apply_gradients(zip(grads, b))
    assert oa.iterations == ob.iterations == 10
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
        for k, v in oa.state[x].items():
            assert np.array_equal(v, ob.state[y][k]) if isinstance(v, np.ndarray) else v == ob.state[y][k]


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_keras_style_optimizer_built_without_params(name, kwargs, dtype):
    """``cls(**hp)`` with no params learns its variables in apply_gradients; a variable
    first seen later starts fresh; a variable left out of a call is not updated."""
    hp = draw_hparams(name, kwargs, seed_for(name, "keras-empty"))
    opt = getattr(fusedoptim, name)(**hp)
    assert opt.param_groups == [] and opt.iterations == 0
    params = make_params(17, SHAPES, dtype)
    ref = ReferenceOptimizer(name, params, **hp)
    late = len(params) - 1
    for t, grads in enumerate(grad_stream(18, SHAPES, dtype, 12)):
        if t < 4:
            pairs = [(g, v) for i, (g, v) in enumerate(zip(grads, params)) if i != late]
            rgrads = [g if i != late else None for i, g in enumerate(grads)]
        elif t == 7:
            pairs = list(zip(grads, params))[1:]       # params[0] left out this step
            rgrads = [None] + list(grads[1:])
        else:
            pairs = list(zip(grads, params))
            rgrads = grads
        opt.apply_gradients(pairs)
        ref.step(rgrads)
    assert opt.iterations == 12
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(params)
    assert all(any(p is q for q in opt.param_groups[0]["params"]) for p in params)
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)


def test_apply_gradients_rejects_bad_pairs_and_learns_nothing():
    opt = fusedoptim.Adam(lr=1e-2)
    v = np.ones(3)
    with pytest.raises(ValueError, match="shape"):
        opt.apply_gradients([(np.ones(4), v)])
    assert opt.param_groups == [] and opt.iterations == 0 and v not in opt.state
    with pytest.raises(TypeError, match="pair"):
        opt.apply_gradients([np.ones(3)])
    opt.apply_gradients([(np.ones(3), v)])
    assert opt.iterations == 1 and opt.state[v]["step"] == 1


# ------------------------------------------------------------------ add_param_group
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_add_param_group(name, kwargs, dtype):
    hp0, hp1 = _two_group_hps(name)
    p0 = make_params(19, SHAPES[:3], dtype)
    p1 = make_params(20, SHAPES[3:], dtype)
    opt = build(name, p0, **hp0)
    ref = ReferenceOptimizer(name, [dict(params=p0), dict(params=p1, **{k: v for k, v in hp1.items()})], **hp0)
    params = p0 + p1
    for t, grads in enumerate(grad_stream(21, SHAPES, dtype, 20)):
        if t == 5:
            opt.add_param_group(dict(params=p1, **hp1))
            assert len(opt.param_groups) == 2
            # hyperparameters the new group leaves out come from the defaults
            assert set(opt.param_groups[1]) == set(opt.param_groups[0])
        if t < 5:
            opt.step(grads[:3])
            ref.step(list(grads[:3]) + [None] * len(p1))
        else:
            opt.step(grads)
            ref.step(grads)
    assert_matches(params, _state_of(opt, params), ref, **TOL[dtype], what=name)


def test_add_param_group_takes_defaults():
    a, b = np.ones(2), np.ones(2)
    opt = fusedoptim.SGD([a], lr=0.5, momentum=0.9)
    opt.add_param_group({"params": [b], "lr": 0.25})
    g = opt.param_groups[1]
    assert g["lr"] == 0.25 and g["momentum"] == 0.9 and g["params"][0] is b
    opt.step([np.ones(2), np.ones(2)])
    assert np.array_equal(a, [0.5, 0.5]) and np.array_equal(b, [0.75, 0.75])


# ------------------------------------------------------------------ the subclass API
class NumpySGDM(fusedoptim.Optimizer):
    """SGD with momentum in plain NumPy: the documented way to add an optimizer without a
    native kernel.  No ``spec`` routes each parameter to ``update``; the base class does
    the groups, validation, buffers, step counting, schedules and state_dict."""

    buffers = ("momentum_buffer",)

    def __init__(self, params=None, lr=1e-3, momentum=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    def check_group(self, g, where):
        super().check_group(g, where)
        if not 0.0 <= g["momentum"] < 1.0:
            raise ValueError(f"{where}: momentum must be in [0, 1), got {g['momentum']!r}")

    def update(self, param, grad, state, group):
        buf = state["momentum_buffer"]
        if state["step"] == 1:
            buf[...] = grad                       # torch: the first step copies the gradient
        else:
            buf *= group["momentum"]
            buf += grad
        param += -group["lr"] * buf


def test_custom_numpy_optimizer_matches_builtin_sgd(dtype):
    a = make_params(22, SHAPES, dtype)
    b = [p.copy() for p in a]
    mine = NumpySGDM(a, lr=0.05, momentum=0.9)
    theirs = fusedoptim.SGD(b, lr=0.05, momentum=0.9)
    for grads in grad_stream(23, SHAPES, dtype, 30):
        mine.step(grads)
        theirs.step(grads)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, **TOL[dtype])
        assert mine.state[x]["step"] == theirs.state[y]["step"] == 30
        np.testing.assert_allclose(mine.state[x]["momentum_buffer"], theirs.state[y]["momentum_buffer"],
                                   **TOL[dtype])
    assert mine.iterations == 30


def test_custom_numpy_optimizer_gets_the_scheduled_lr_and_validation():
    p = np.ones(3)
    seen = []

    class Probe(NumpySGDM):
        def update(self, param, grad, state, group):
            seen.append((group["lr"], state["step"]))
            super().update(param, grad, state, group)

    opt = Probe([p], lr=lambda it: 0.5 ** it)
    for _ in range(3):
        opt.step([np.ones(3)])
    assert seen == [(1.0, 1), (0.5, 2), (0.25, 3)]
    with pytest.raises(ValueError, match="momentum"):
        Probe([np.ones(2)], momentum=1.5)
    sd = opt.state_dict()
    q = p.copy()
    other = Probe([q], lr=lambda it: 0.5 ** it)
    other.load_state_dict(sd)
    assert other.iterations == 3 and other.state[q]["step"] == 3


def test_subclass_without_update_or_kernel_says_so():
    class Nothing(fusedoptim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1))

    opt = Nothing([np.ones(2)])
    with pytest.raises(NotImplementedError, match="update"):
        opt.step([np.ones(2)])


# ------------------------------------------------------------------ small contract points
def test_step_returns_closure_value_and_counts_iterations():
    p = np.ones(2)
    opt = fusedoptim.SGD([p], lr=0.1)
    assert opt.step([np.ones(2)], closure=lambda: 3.5) == 3.5
    assert opt.step([np.ones(2)]) is None
    assert opt.iterations == 2


def test_defaults_match_torch():
    for name, d in DEFAULTS.items():
        opt = getattr(fusedoptim, name)([np.ones(1)])
        g = opt.param_groups[0]
        for k, v in d.items():
            assert g[k] == v, f"{name}.{k} default {g[k]!r} != torch's {v!r}"
        if name == "AdamW":
            assert g["decoupled_weight_decay"] is True


def test_zero_size_only_optimizer():
    params = [np.zeros((0,)), np.zeros((3, 0))]
    opt = fusedoptim.Adam(params, amsgrad=True)
    opt.step([np.zeros((0,)), np.zeros((3, 0))])
    assert opt.state[params[1]]["exp_avg"].shape == (3, 0) and opt.state[params[1]]["step"] == 1


# ------------------------------------------------------------------ Rprop and Lion specifics
def test_rprop_step_size_clamps_and_sign_flips(dtype):
    """A constant gradient grows the step size by etaplus until step_sizes[1] caps it; an
    alternating one zeroes the gradient on every flip (no move, prev = 0) and shrinks the
    step size by etaminus down to step_sizes[0]; a zero gradient leaves it as it is."""
    p = np.zeros(3, dtype)
    opt = fusedoptim.Rprop([p], lr=0.1, etas=(0.5, 2.0), step_sizes=(0.01, 1.0))
    ref = ReferenceOptimizer("Rprop", [p.copy()], lr=0.1, etas=(0.5, 2.0), step_sizes=(0.01, 1.0))
    for t in range(12):
        g = np.array([1.0, (-1.0) ** t, 0.0], dtype)
        opt.step([g])
        ref.step([g])
    st = opt.state[p]
    assert st["step_size"][0] == 1.0                    # 0.1 * 2**k, capped at 1.0
    np.testing.assert_allclose(p[0], -(0.1 + 0.2 + 0.4 + 0.8 + 8 * 1.0), **TOL[dtype])
    # alternating: move (factor 1 after a rest), flip (halve, rest, prev = 0), ...: the step
    # size goes 0.1, 0.05, 0.025, 0.0125, then 0.00625 is floored at 0.01
    assert st["step_size"][1] == dtype.type(0.01)
    np.testing.assert_allclose(p[1], -(0.1 + 0.05 + 0.025 + 0.0125 + 0.01 + 0.01), **TOL[dtype])
    assert st["step_size"][2] == dtype.type(0.1) and p[2] == 0.0     # g = 0: factor 1, no move
    assert_matches([p], _state_of(opt, [p]), ref, **TOL[dtype], what="Rprop clamps")


@pytest.mark.parametrize("name", ["Rprop", "Lion"])
def test_sign_optimizers_nan_gradient_reaches_the_parameter(name, dtype):
    """sign(NaN) is NaN (np.sign, jnp.sign): a NaN gradient element makes its parameter
    NaN, as for every other optimizer, instead of being skipped silently (torch.sign(NaN)
    is 0); the other elements step normally and sign(0) = 0."""
    p = np.ones(4, dtype)
    ref = ReferenceOptimizer(name, [p.copy()], lr=0.1)
    opt = getattr(fusedoptim, name)([p], lr=0.1)
    g = np.array([np.nan, 2.0, 0.0, -3.0], dtype)
    for _ in range(2):
        opt.step([g])
        ref.step([g])
    assert np.isnan(p[0]) and np.isfinite(p[1:]).all()
    assert p[2] == 1.0 and p[1] < 1.0 < p[3]
    np.testing.assert_array_equal(p, ref.params[0])
    for k, v in opt.state[p].items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, ref.state[0][k])


def _optax_lion(params, grads_seq, *, lr, b1, b2, weight_decay, maximize):
    """optax.lion written out: chain(scale_by_lion(b1, b2), add_decayed_weights(wd),
    scale_by_learning_rate(lr)), then optax.apply_updates; maximize negates the gradient."""
    mu = [np.zeros_like(p) for p in params]
    params = [p.copy() for p in params]
    for grads in grads_seq:
        grads = [-g if maximize else g for g in grads]
        updates = [np.sign((1.0 - b1) * g + b1 * m) for g, m in zip(grads, mu)]      # scale_by_lion
        mu = [(1.0 - b2) * g + b2 * m for g, m in zip(grads, mu)]
        updates = [u + weight_decay * p for u, p in zip(updates, params)]            # add_decayed_weights
        updates = [-lr * u for u in updates]                                          # scale_by_learning_rate
        params = [p + u for p, u in zip(params, updates)]                             # apply_updates
    return params, mu


@pytest.mark.parametrize("name,kwargs", case_params([c for c in CASES if c[0] == "Lion"]))
def test_lion_matches_optax_formulas(name, kwargs):
    """float64, 200 steps, against optax's formulation (decay folded into the update and
    scaled by lr, rather than lion-pytorch's multiply-first): the same trajectory up to
    rounding; the momentum is bit-identical because it never depends on the parameters."""
    dtype = np.dtype(np.float64)
    seed = seed_for(name, kwargs, "optax")
    hp = draw_hparams(name, kwargs, seed)
    params = make_params(seed, SHAPES, dtype)
    stream = list(grad_stream(seed + 1, SHAPES, dtype, STEPS))
    want, mu = _optax_lion(params, stream, lr=hp["lr"], b1=hp["betas"][0], b2=hp["betas"][1],
                           weight_decay=hp.get("weight_decay", 0.0), maximize=hp.get("maximize", False))
    opt = build(name, params, **hp)
    for grads in stream:
        opt.step(grads)
    for p, w, m in zip(params, want, mu):
        np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(opt.state[p]["exp_avg"], m)
