"""fusedoptim.nn: finite-difference gradient checks (float64) for every layer and loss,
buffer reuse, dtypes, and training with a fusedoptim optimizer.

The gradient checks compare ``backward`` with central differences of a scalar
``f = sum(layer(x) * r)`` (r random, so every output element matters) in float64, where
the difference quotient is accurate to ~1e-9; tolerances are set well above that.
"""
import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import nn

F64 = np.float64
EPS = 1e-6


def numeric_grad(f, arr):
    """Central-difference gradient of the scalar f() with respect to arr (perturbed in place)."""
    g = np.zeros_like(arr, dtype=F64)
    flat, gflat = arr.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        fp = f()
        flat[i] = old - EPS
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * EPS)
    return g


def away_from_zero(a, margin=0.05):
    """Move values out of (-margin, margin), keeping the ReLU kink out of the differences."""
    return np.where(np.abs(a) < margin, np.sign(a + 1e-12) * margin + a, a)


# one table of layers for the gradient checks: (id, factory(rng) -> layer, input columns)
LAYERS = [
    ("dense", lambda rng: nn.Dense(5, 4, rng, dtype=F64, bias_init=0.1), 5),
    ("dense-nobias", lambda rng: nn.Dense(5, 3, rng, "glorot", bias=False, dtype=F64), 5),
    ("dense-normal-init", lambda rng: nn.Dense(3, 6, rng, "normal", dtype=F64), 3),
    ("relu", lambda rng: nn.ReLU(), 6),
    ("sigmoid", lambda rng: nn.Sigmoid(), 6),
    ("tanh", lambda rng: nn.Tanh(), 6),
    ("mlp-relu", lambda rng: nn.MLP([4, 7, 3], rng, dtype=F64), 4),
    ("mlp-tanh-2hidden", lambda rng: nn.MLP([3, 5, 4, 2], rng, "tanh", dtype=F64), 3),
    ("mlp-sigmoid", lambda rng: nn.MLP([3, 4, 2], rng, "sigmoid", dtype=F64), 3),
]


@pytest.mark.parametrize("factory,cols", [(f, c) for _, f, c in LAYERS], ids=[i for i, _, _ in LAYERS])
def test_layer_gradients_match_finite_differences(factory, cols):
    rng = np.random.default_rng(1)
    layer = factory(rng)
    if isinstance(layer, nn.Sequential):
        layer.input_grad = True
    x = away_from_zero(rng.standard_normal((7, cols)))
    y0 = layer.forward(x)
    r = rng.standard_normal(y0.shape)
    dx = layer.backward(r).copy()
    grads = [g.copy() for g in layer.grads()]

    def f():
        return float(np.sum(layer.forward(x) * r))

    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-8)
    for p, g in zip(layer.params(), grads):
        np.testing.assert_allclose(g, numeric_grad(f, p), rtol=1e-6, atol=1e-8)


LOSSES = [
    ("ce-labels", lambda rng: (rng.standard_normal((6, 4)), rng.integers(0, 4, 6)), nn.softmax_cross_entropy),
    ("ce-onehot", lambda rng: (rng.standard_normal((5, 3)), np.eye(3)[rng.integers(0, 3, 5)]),
     nn.softmax_cross_entropy),
    ("ce-soft-targets", lambda rng: (rng.standard_normal((5, 3)), rng.dirichlet(np.ones(3), 5) * 1.5),
     nn.softmax_cross_entropy),
    ("ce-large-logits", lambda rng: (30 * rng.standard_normal((4, 5)), rng.integers(0, 5, 4)),
     nn.softmax_cross_entropy),
    ("mse", lambda rng: (rng.standard_normal((6, 2)), rng.standard_normal((6, 2))), nn.mse),
    ("mse-column", lambda rng: (rng.standard_normal((6, 1)), rng.standard_normal(6)), nn.mse),
]


@pytest.mark.parametrize("make,loss_fn", [(m, f) for _, m, f in LOSSES], ids=[i for i, _, _ in LOSSES])
def test_loss_gradients_match_finite_differences(make, loss_fn):
    z, y = make(np.random.default_rng(2))
    loss, dz = loss_fn(z, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    dz = dz.copy()
    np.testing.assert_allclose(dz, numeric_grad(lambda: loss_fn(z, y)[0], z), rtol=1e-5, atol=1e-8)


def test_model_and_loss_end_to_end_gradient():
    """d CE(model(x), y) / d params through the whole MLP, as the demo computes it."""
    rng = np.random.default_rng(3)
    model = nn.MLP([5, 8, 6, 4], rng, dtype=F64)
    x = rng.standard_normal((9, 5))
    y = rng.integers(0, 4, 9)
    _, dl = nn.softmax_cross_entropy(model.forward(x), y)
    model.backward(dl)
    grads = [g.copy() for g in model.grads()]

    def f():
        return nn.softmax_cross_entropy(model.forward(x), y)[0]

    for (name, p), g in zip(model.named_params(), grads):
        np.testing.assert_allclose(g, numeric_grad(f, p), rtol=1e-5, atol=1e-8, err_msg=name)


def test_cross_entropy_values():
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, dz = nn.softmax_cross_entropy(z, np.array([0, 2]))
    assert loss == pytest.approx(np.log(3) / 2)
    np.testing.assert_allclose(dz, [[0, 0, 0], [1 / 6, 1 / 6, -1 / 3]], atol=1e-12)
    onehot = nn.softmax_cross_entropy(z, np.eye(3)[[0, 2]])
    assert onehot[0] == pytest.approx(loss)
    np.testing.assert_allclose(onehot[1], dz, atol=1e-12)


def test_cross_entropy_in_place_on_the_logits():
    rng = np.random.default_rng(0)
    for y in (rng.integers(0, 4, 5), np.eye(4)[rng.integers(0, 4, 5)]):
        z = rng.standard_normal((5, 4))
        loss, d = nn.softmax_cross_entropy(z, y)
        z2 = z.copy()
        loss2, d2 = nn.softmax_cross_entropy(z2, y, out=z2)
        assert d2 is z2 and loss2 == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(d2, d, rtol=1e-12)


def test_losses_write_into_out_and_check_shapes():
    z = np.zeros((4, 3), np.float32)
    out = np.empty_like(z)
    _, d = nn.softmax_cross_entropy(z, np.array([0, 1, 2, 0]), out=out)
    assert d is out and d.dtype == np.float32
    p = np.ones((4, 1), np.float32)
    buf = np.empty_like(p)
    loss, d = nn.mse(p, np.zeros(4, np.float32), out=buf)
    assert d is buf and loss == 1.0
    with pytest.raises(ValueError, match="target shape"):
        nn.mse(p, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="labels"):
        nn.softmax_cross_entropy(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        nn.softmax_cross_entropy(z, np.array([0.0, 1, 2, 0]))


def test_sigmoid_saturates_without_overflow():
    s = nn.Sigmoid()
    with np.errstate(all="raise"):
        y = s.forward(np.array([[-1000.0, 0.0, 1000.0]], np.float32))
        np.testing.assert_allclose(y, [[0.0, 0.5, 1.0]])
        assert np.all(s.backward(np.ones((1, 3), np.float32)) >= 0)


def test_float32_by_default_and_aligned_names():
    model = nn.MLP([6, 5, 3], rng=0)
    names = [n for n, _ in model.named_params()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(p.dtype == np.float32 and p.flags.c_contiguous for p in model.params())
    assert [g.shape for g in model.grads()] == [p.shape for p in model.params()]
    assert model.num_params() == 6 * 5 + 5 + 5 * 3 + 3
    out = model.forward(np.ones((2, 6)))               # float64 input is cast once
    assert out.dtype == np.float32 and out.shape == (2, 3)


def test_same_seed_same_model():
    a, b, c = nn.MLP([4, 8, 2], rng=5), nn.MLP([4, 8, 2], rng=5), nn.MLP([4, 8, 2], rng=6)
    for p, q in zip(a.params(), b.params()):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a.params()[0], c.params()[0])


def test_init_scales():
    rng = np.random.default_rng(0)
    assert np.std(nn.Dense(400, 300, rng, "he").W) == pytest.approx(np.sqrt(2 / 400), rel=0.05)
    assert np.abs(nn.Dense(400, 300, rng, "glorot").W).max() <= np.sqrt(6 / 700)
    assert np.std(nn.Dense(400, 300, rng, 0.1).W) == pytest.approx(0.1, rel=0.05)
    w = nn.Dense(2, 3, rng, lambda r, shape: np.full(shape, 7.0)).W
    assert w.dtype == np.float32 and np.all(w == 7)
    with pytest.raises(ValueError, match="unknown init"):
        nn.Dense(2, 3, rng, "xavier")
    with pytest.raises(ValueError, match="unknown activation"):
        nn.MLP([2, 3, 1], activation="gelu")


def test_buffers_are_reused_and_grads_overwritten():
    rng = np.random.default_rng(0)
    model = nn.MLP([4, 6, 3], rng=0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y1 = model.forward(x)
    y2 = model.forward(x)
    assert np.shares_memory(y1, y2)                    # no allocation per call
    model.backward(np.ones_like(y2))
    g1 = [g.copy() for g in model.grads()]
    ids = [id(g) for g in model.grads()]
    model.forward(x)
    model.backward(np.ones((8, 3), np.float32))
    for a, b in zip(g1, model.grads()):                # overwritten, not accumulated
        np.testing.assert_array_equal(a, b)
    assert [id(g) for g in model.grads()] == ids
    # a smaller batch is a prefix view; a larger one grows the buffer; values stay right
    small = model.forward(x[:3]).copy()
    big = model.forward(np.concatenate([x, x])).copy()
    np.testing.assert_allclose(small, big[:3], rtol=1e-6)
    np.testing.assert_allclose(big[:8], big[8:], rtol=1e-6)


def test_first_layer_skips_input_gradient():
    model = nn.MLP([4, 3, 2], rng=0)
    model.forward(np.ones((2, 4), np.float32))
    assert model.backward(np.ones((2, 2), np.float32)) is None
    model.input_grad = True
    model.forward(np.ones((2, 4), np.float32))
    assert model.backward(np.ones((2, 2), np.float32)).shape == (2, 4)


def test_shape_errors():
    d = nn.Dense(3, 2, 0)
    with pytest.raises(RuntimeError, match="before forward"):
        d.backward(np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="expected 3 features"):
        d.forward(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        d.forward(np.ones(3, np.float32))
    d.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="rows"):
        d.backward(np.ones((5, 2), np.float32))
    with pytest.raises(TypeError, match="mix dtypes"):
        nn.Sequential(nn.Dense(2, 2, 0), nn.Dense(2, 2, 0, dtype=np.float64))


def test_set_params_copies_in_place():
    a, b = nn.MLP([3, 4, 2], rng=0), nn.MLP([3, 4, 2], rng=1)
    before = [id(p) for p in a.params()]
    a.set_params(b.params())
    assert [id(p) for p in a.params()] == before
    for p, q in zip(a.params(), b.params()):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="shape"):
        a.set_params([np.zeros((1, 1))] * 4)


def test_grads_for_follows_the_group_order():
    model = nn.MLP([3, 4, 2], rng=0)
    W0, b0, W1, b1 = model.params()
    dW0, db0, dW1, db1 = model.grads()
    groups = [{"params": [W0, W1]}, {"params": [b0, b1]}]
    assert all(a is b for a, b in zip(model.grads_for(groups), [dW0, dW1, db0, db1]))
    assert all(a is b for a, b in zip(model.grads_for([b1, W0]), [db1, dW0]))
    with pytest.raises(ValueError, match="not a parameter"):
        model.grads_for([np.zeros(2, np.float32)])


def test_predict_matches_forward_in_chunks():
    model = nn.MLP([3, 5, 2], rng=0)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, batch_size=4), model.forward(x).copy(), rtol=1e-6)


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_training_with_fusedoptim_updates_in_place(opt_name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)       # XOR-like: needs the hidden layer
    model = nn.MLP([2, 16, 2], rng=0)
    params = model.params()
    opt = getattr(fo, opt_name)(params, lr=0.05 if opt_name == "Adam" else 0.5)
    grads = model.grads()
    first = None
    for _ in range(300):
        loss, d = nn.softmax_cross_entropy(model.forward(x), y)
        first = loss if first is None else first
        model.backward(d)
        opt.step(grads)
    assert loss < 0.5 * first
    assert all(a is b for a, b in zip(params, model.params()))
    assert nn.accuracy(model.forward(x), y) > 0.9
