"""Training-toolkit options fused into the step: clipping, L1, EMA, non-finite guard,
gradient accumulation, grad_scale, dynamic loss scaling, decay groups.

Each test compares against the formula written out here in float64 NumPy (and torch's
clip_grad_norm_ where torch is installed)."""
import copy
import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels

SHAPES = [(7,), (33, 5), (4099,), (1,), (0,)]


def make(rng, dtype=np.float32, scale=1.0):
    return [(rng.standard_normal(s) * scale).astype(dtype) for s in SHAPES]


def sgd_ref(params, grads, lr):
    return [p.astype(np.float64) - lr * g for p, g in zip(params, grads)]


def close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- norms
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm_matches_float64_and_is_thread_independent(rng, dtype):
    grads = make(rng, dtype) + [rng.standard_normal((1 << 18) + 3).astype(dtype)]
    ref = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    old = _kernels.get_grain_size()
    try:
        fo.set_num_threads(1)
        n1 = fo.global_norm(grads)
        fo.set_num_threads(2)
        _kernels.set_grain_size(16)
        n2 = fo.global_norm(grads)
    finally:
        fo.set_num_threads(0)
        _kernels.set_grain_size(old)
    assert n1 == n2  # same bits for any thread count
    assert n1 == pytest.approx(ref, rel=1e-6)  # float32 sub-block sums, widened per 256
    assert fo.global_norm(grads, math.inf) == pytest.approx(max(np.abs(g).max() for g in grads if g.size))
    assert fo.global_norm(grads, 1.0) == pytest.approx(sum(np.abs(g.astype(np.float64)).sum() for g in grads), rel=1e-9)


def test_global_norm_flags_nonfinite(rng):
    grads = make(rng)
    grads[2][17] = np.nan
    assert math.isnan(fo.global_norm(grads))
    grads[2][17] = np.inf
    assert math.isinf(fo.global_norm(grads))


def test_clip_grad_norm_standalone_matches_formula_and_torch(rng):
    grads = make(rng, scale=3.0)
    before = [g.copy() for g in grads]
    norm = fo.clip_grad_norm(grads, 2.0)
    ref_norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in before))
    assert norm == pytest.approx(ref_norm, rel=1e-6)
    coef = min(1.0, 2.0 / (ref_norm + 1e-6))
    close(grads, [g * coef for g in before])
    torch = pytest.importorskip("torch")
    ts = []
    for g in before:
        t = torch.zeros(g.shape, requires_grad=True)
        t.grad = torch.tensor(g)
        ts.append(t)
    tn = torch.nn.utils.clip_grad_norm_(ts, 2.0)
    assert float(tn) == pytest.approx(norm, rel=1e-5)
    close(grads, [t.grad.numpy() for t in ts])


def test_clip_grad_value_standalone(rng):
    grads = make(rng, scale=3.0)
    grads[0][0] = np.nan
    before = [g.copy() for g in grads]
    fo.clip_grad_value(grads, 0.5)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, np.clip(b, -0.5, 0.5))


# ------------------------------------------------------- fused clipping
def test_global_clipnorm_fused_equals_keras_formula(rng):
    params = make(rng)
    grads = make(rng, scale=3.0)
    ref = [p.copy() for p in params]
    opt = fo.SGD(params, lr=0.1, global_clipnorm=1.5)
    opt.step(grads)
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert opt.last_grad_norm == pytest.approx(norm, rel=1e-6)  # float32 sub-block sums
    c = 1.5 / max(norm, 1.5)
    close(params, sgd_ref(ref, [g.astype(np.float64) * c for g in grads], 0.1))


def test_clipnorm_per_parameter(rng):
    params = make(rng)
    grads = make(rng, scale=3.0)
    ref = [p.copy() for p in params]
    fo.SGD(params, lr=0.1, clipnorm=1.0).step(grads)
    clipped = []
    for g in grads:
        n = float(np.linalg.norm(g.astype(np.float64)))
        clipped.append(g.astype(np.float64) * (1.0 / max(n, 1.0)))
    close(params, sgd_ref(ref, clipped, 0.1))


def test_clipvalue_fused_with_maximize_and_grad_scale(rng):
    params = make(rng)
    grads = make(rng, scale=3.0)
    ref = [p.copy() for p in params]
    fo.SGD(params, lr=0.1, clipvalue=0.5, maximize=True).step(grads, grad_scale=0.25)
    # clipvalue applies to the unscaled gradient g * grad_scale
    close(params, sgd_ref(ref, [-np.clip(g.astype(np.float64) * 0.25, -0.5, 0.5) for g in grads], 0.1))


def test_clip_options_validated():
    p = [np.zeros(3, np.float32)]
    for kw in [dict(global_clipnorm=-1.0), dict(clipnorm=float("nan")), dict(clipvalue=0.0),
               dict(clipnorm=1.0, global_clipnorm=1.0), dict(ema_decay=1.0), dict(ema_decay=-0.1),
               dict(gradient_accumulation_steps=0), dict(gradient_accumulation_steps=1.5),
               dict(skip_nonfinite="yes"), dict(l1=-1.0)]:
        with pytest.raises((ValueError, TypeError)):
            fo.Adam(p, **kw)


# ------------------------------------------------------------------ L1
def test_l1_is_sign_based_and_per_group(rng):
    w = rng.standard_normal(50).astype(np.float32)
    w[3] = 0.0
    b = rng.standard_normal(5).astype(np.float32)
    g_w, g_b = np.zeros_like(w), np.zeros_like(b)
    w0, b0 = w.copy(), b.copy()
    opt = fo.SGD([{"params": [w], "l1": 0.2}, {"params": [b]}], lr=0.5)
    opt.step([g_w, g_b])
    np.testing.assert_allclose(w, w0 - 0.5 * 0.2 * np.sign(w0), rtol=1e-6)
    np.testing.assert_array_equal(b, b0)


def test_split_decay_groups_excludes_biases():
    W = np.ones((3, 3), np.float32)
    b = np.ones(3, np.float32)
    groups = fo.split_decay_groups({"W": W, "b": b}, weight_decay=0.1, l1=0.01)
    opt = fo.AdamW(groups, lr=0.1)
    opt.step([np.zeros_like(W), np.zeros_like(b)])
    assert (W < 0.99).all()  # decoupled decay (0.99) and the L1 term both pulled W down
    np.testing.assert_array_equal(b, np.ones(3, np.float32))
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[1]["l1"] == 0.0


# ----------------------------------------------------------------- EMA
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adadelta"])
def test_ema_fused_matches_formula_and_swaps(rng, name):
    params = make(rng)
    twin = [p.copy() for p in params]
    opt = getattr(fo, name)(params, lr=0.01, ema_decay=0.9)
    plain = getattr(fo, name)(twin, lr=0.01)
    ema = None
    for _ in range(20):
        grads = make(rng)
        opt.step(grads)
        plain.step(grads)
        if ema is None:   # torch's AveragedModel and Keras: the first average is the first updated weights
            ema = [p.astype(np.float64) for p in params]
            for p in params:
                np.testing.assert_array_equal(opt.state[p]["ema"], p)
        else:
            ema = [e * 0.9 + 0.1 * p.astype(np.float64) for e, p in zip(ema, params)]
        for p, t in zip(params, twin):
            np.testing.assert_array_equal(p, t)  # EMA never changes the trajectory
    close([opt.state[p]["ema"] for p in params], ema, rtol=1e-5, atol=1e-6)
    trained = [p.copy() for p in params]
    averaged = [opt.state[p]["ema"].copy() for p in params]
    with opt.ema_weights():
        for p, a in zip(params, averaged):
            np.testing.assert_array_equal(p, a)
    for p, t in zip(params, trained):
        np.testing.assert_array_equal(p, t)


def test_ema_overwrite_frequency_keras_semantics():
    # keras optimizer_test.py::test_ema: SGD lr 1, momentum 0.9, overwrite every 3 steps
    w = np.array([[3.0, 4.0], [5.0, 6.0]], np.float32)
    g = np.ones_like(w)
    opt = fo.SGD([w], lr=1.0, ema_decay=0.9, ema_overwrite_frequency=3)
    opt.step([g])
    np.testing.assert_allclose(w, [[2.0, 3.0], [4.0, 5.0]])
    np.testing.assert_allclose(opt.state[w]["ema"], [[2.0, 3.0], [4.0, 5.0]])
    opt.step([g])
    np.testing.assert_allclose(w, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(opt.state[w]["ema"], [[1.9, 2.9], [3.9, 4.9]], rtol=1e-6)
    opt.step([g])
    np.testing.assert_allclose(w, [[1.71, 2.71], [3.71, 4.71]], rtol=1e-6)
    np.testing.assert_allclose(opt.state[w]["ema"], w)


@pytest.mark.parametrize("bad", [dict(ema_overwrite_frequency=2), dict(ema_decay=0.9, ema_overwrite_frequency=0),
                                 dict(ema_decay=0.9, ema_overwrite_frequency=1.5)])
def test_ema_overwrite_frequency_checked(bad):
    with pytest.raises(ValueError, match="ema_overwrite_frequency"):
        fo.SGD([np.zeros(2, np.float32)], lr=0.1, **bad)


def test_swap_ema_requires_option():
    opt = fo.SGD([np.zeros(2, np.float32)], lr=0.1)
    with pytest.raises(RuntimeError, match="ema_decay"):
        opt.swap_ema()


# ---------------------------------------------------- non-finite guard
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_skip_nonfinite_leaves_everything_untouched(rng, bad):
    params = make(rng)
    opt = fo.Adam(params, lr=0.01, skip_nonfinite=True, ema_decay=0.5)
    opt.step(make(rng))
    snap_p = [p.copy() for p in params]
    snap_s = copy.deepcopy(opt.state_dict())
    grads = make(rng)
    grads[2][100] = bad
    opt.step(grads)
    assert opt.last_step_skipped and opt.nonfinite_count == 1
    for p, s in zip(params, snap_p):
        np.testing.assert_array_equal(p, s)
    after = opt.state_dict()
    assert after["iterations"] == snap_s["iterations"]
    for i, st in snap_s["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(after["state"][i][k], v)
    opt.step(make(rng))
    assert not opt.last_step_skipped and opt.iterations == 2


def test_without_guard_nan_propagates(rng):
    params = make(rng)
    grads = make(rng)
    grads[0][0] = np.nan
    fo.SGD(params, lr=0.1).step(grads)
    assert np.isnan(params[0][0]) and np.isfinite(params[0][1:]).all()


# ------------------------------------------------------ accumulation
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_gradient_accumulation_equals_mean_gradient(rng, name):
    params = make(rng)
    twin = [p.copy() for p in params]
    acc = getattr(fo, name)(params, lr=0.01, gradient_accumulation_steps=3)
    ref = getattr(fo, name)(twin, lr=0.01)
    for _ in range(4):
        micro = [make(rng) for _ in range(3)]
        for k, g in enumerate(micro):
            acc.step(g)
            if k < 2:
                assert acc.iterations == ref.iterations
        mean = [(a.astype(np.float64) + b + c) / 3 for a, b, c in zip(*micro)]
        ref.step([m.astype(np.float32) for m in mean])
        close(params, twin, rtol=1e-5, atol=1e-6)
    assert acc.iterations == 4


def test_accumulation_resumes_mid_cycle(rng):
    params = make(rng)
    opt = fo.Adam(params, lr=0.01, gradient_accumulation_steps=2)
    seq = [make(rng) for _ in range(5)]
    for g in seq[:3]:
        opt.step(g)
    sd = opt.state_dict()
    assert sd["accum_count"] == 1
    other = [p.copy() for p in params]
    opt2 = fo.Adam(other, lr=0.01, gradient_accumulation_steps=2)
    opt2.load_state_dict(sd)
    for g in seq[3:]:
        opt.step(g)
        opt2.step(g)
    for p, q in zip(params, other):
        np.testing.assert_array_equal(p, q)


# ---------------------------------------------------- loss scaling
def test_dynamic_loss_scale_unscales_skips_and_grows(rng):
    params = make(rng)
    twin = [p.copy() for p in params]
    opt = fo.SGD(params, lr=0.1)
    ref = fo.SGD(twin, lr=0.1)
    scaler = fo.DynamicLossScale(initial_scale=1024.0, growth_interval=2)
    g = make(rng)
    assert scaler.step(opt, [x * np.float32(1024) for x in g])
    ref.step(g)
    close(params, twin, rtol=1e-6, atol=1e-7)
    bad = [x * np.float32(1024) for x in g]
    bad[1][0, 0] = np.inf
    snap = [p.copy() for p in params]
    assert not scaler.step(opt, bad)
    assert scaler.scale == 512.0
    for p, s in zip(params, snap):
        np.testing.assert_array_equal(p, s)
    assert scaler.step(opt, g) and scaler.step(opt, g)
    assert scaler.scale == 1024.0
    s2 = fo.DynamicLossScale()
    s2.load_state_dict(scaler.state_dict())
    assert s2.scale == scaler.scale and s2.good_steps == scaler.good_steps


def test_checkpoint_keeps_toolkit_state_bit_exact(rng, tmp_path):
    """EMA buffers, a half-filled accumulation cycle and the non-finite counter survive
    save/load: 5 calls + save + load + 5 calls equals 10 uninterrupted calls."""
    def build(params):
        return fo.Adam(params, lr=fo.schedules.CosineDecay(1e-2, 20), ema_decay=0.9,
                       gradient_accumulation_steps=2, skip_nonfinite=True)
    seq = [make(rng) for _ in range(10)]
    seq[2][0][0] = np.nan
    straight = make(np.random.default_rng(7))
    resumed = [p.copy() for p in straight]
    a = build(straight)
    for g in seq:
        a.step(g)
    b = build(resumed)
    for g in seq[:5]:
        b.step(g)
    fo.save(tmp_path / "ck.npz", b, params=resumed)
    fresh = [np.zeros_like(p) for p in resumed]
    c = build(fresh)
    fo.load(tmp_path / "ck.npz", c, params=fresh)
    for g in seq[5:]:
        c.step(g)
    assert c.nonfinite_count == a.nonfinite_count == 1
    for p, q in zip(straight, fresh):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(a.state[p]["ema"], c.state[q]["ema"])


def test_accumulation_with_missing_gradients_never_reuses_stale_sums(rng):
    """A parameter without a gradient in some micro-batches gets the sum of the ones it
    had, divided by k (optax MultiSteps' mean); one with none in a cycle is skipped."""
    a, b = np.zeros(4, np.float32), np.zeros(3, np.float32)
    opt = fo.SGD([a, b], lr=1.0, gradient_accumulation_steps=2)
    ga = [np.full(4, v, np.float32) for v in (1.0, 3.0, 5.0, 7.0)]
    gb = np.full(3, 2.0, np.float32)
    opt.step([ga[0], gb])          # cycle 1: b gets a gradient only here
    opt.step([ga[1], None])
    np.testing.assert_allclose(a, -(1.0 + 3.0) / 2)
    np.testing.assert_allclose(b, -2.0 / 2)
    opt.step([ga[2], None])        # cycle 2: b has no gradient at all -> untouched, step not counted
    opt.step([ga[3], None])
    np.testing.assert_allclose(a, -2.0 - (5.0 + 7.0) / 2)
    np.testing.assert_allclose(b, -1.0)
    assert opt.state[b]["step"] == 1 and opt.state[a]["step"] == 2
