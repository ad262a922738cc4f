"""LBFGS (torch.optim.LBFGS of torch 2.13) on NumPy parameters, closure -> (loss, grads):
torch as the oracle on a Rosenbrock function and a small logistic regression, in both
line-search modes; convergence; the closure contract; bad input; state_dict resume.

The Rosenbrock oracle runs take 2 steps of max_iter 8 (16 iterations, the state carried
across steps): long enough to fill and use the curvature history (history_size 3 wraps),
short of the narrow valley where rounding differences (different dot-product summation
orders, 1e-16) grow past 1e-10 -- they reach ~1e-11 after 40 iterations and ~1e-7 after
60; the well-conditioned logistic regression runs 4 steps of max_iter 10."""
import numpy as np
import pytest

import fusedoptim as fo


def rosenbrock(x):
    f = np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


def _logreg_data(dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 5)).astype(dtype)
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.3 * rng.standard_normal(64) > 0).astype(dtype)
    return X, y


def logreg(X, y, w, b, l2=1e-2):
    z = X @ w + b
    p = 1 / (1 + np.exp(-z))
    loss = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * np.dot(w, w)
    r = (p - y) / len(y)
    return loss, [X.T @ r + l2 * w, np.array([r.sum()], dtype=X.dtype)]


def _ours_rosen(x, kw, steps):
    opt = fo.LBFGS([x], **kw)
    losses = [opt.step(lambda: (lambda f, g: (f, [g]))(*rosenbrock(x))) for _ in range(steps)]
    return losses, opt


def _torch_rosen(torch, x0, kw, steps):
    """torch.optim.LBFGS on the same function: the closure evaluates ``rosenbrock`` (NumPy)
    and sets ``.grad``, so both optimizers see identical function values and gradients and
    any difference comes from the optimizers (autograd's own rounding, amplified over 60
    iterations on this ill-conditioned valley, would reach ~1e-8)."""
    x = torch.tensor(x0)
    opt = torch.optim.LBFGS([x], **kw)

    def closure():
        f, g = rosenbrock(x.numpy())
        x.grad = torch.tensor(g)
        return torch.tensor(f)

    losses = [float(opt.step(closure)) for _ in range(steps)]
    return losses, x.numpy(), opt


CASES = [
    ("fixed_step", {"lr": 0.1, "max_iter": 8}),
    ("strong_wolfe", {"lr": 1.0, "max_iter": 8, "line_search_fn": "strong_wolfe"}),
    ("wolfe_short_history", {"lr": 1.0, "max_iter": 8, "history_size": 3, "line_search_fn": "strong_wolfe"}),
    ("fixed_max_eval", {"lr": 0.05, "max_iter": 8, "max_eval": 5, "history_size": 5}),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_torch_oracle_rosenbrock(name, kw):
    torch = pytest.importorskip("torch")
    x0 = np.array([-1.2, 1.0, -0.5, 0.8, 1.3, -0.7])
    x = x0.copy()
    losses, opt = _ours_rosen(x, kw, 2)
    t_losses, tx, t_opt = _torch_rosen(torch, x0, kw, 2)
    np.testing.assert_allclose(losses, t_losses, rtol=1e-10)
    np.testing.assert_allclose(x, tx, rtol=1e-10, atol=1e-12)
    st, tst = opt.state[0], t_opt.state[t_opt._params[0]]
    assert st["func_evals"] == tst["func_evals"] and st["n_iter"] == tst["n_iter"]
    assert len(st["old_dirs"]) == len(tst["old_dirs"])
    np.testing.assert_allclose(st["d"], tst["d"].numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_torch_oracle_logistic_regression(line_search_fn):
    torch = pytest.importorskip("torch")
    X, y = _logreg_data(np.float64)
    w, b = np.zeros(5), np.zeros(1)
    kw = {"lr": 0.5 if line_search_fn is None else 1.0, "max_iter": 10, "line_search_fn": line_search_fn}
    opt = fo.LBFGS([w, b], **kw)
    losses = [opt.step(lambda: logreg(X, y, w, b)) for _ in range(4)]

    tw, tb = torch.zeros(5, dtype=torch.float64, requires_grad=True), torch.zeros(1, dtype=torch.float64,
                                                                                requires_grad=True)
    tX, ty = torch.tensor(X), torch.tensor(y)
    topt = torch.optim.LBFGS([tw, tb], **kw)

    def closure():
        topt.zero_grad()
        z = tX @ tw + tb
        loss = torch.mean(torch.nn.functional.softplus(z) - ty * z) + 0.5 * 1e-2 * tw.dot(tw)
        loss.backward()
        return loss

    t_losses = [float(topt.step(closure).detach()) for _ in range(4)]
    np.testing.assert_allclose(losses, t_losses, rtol=1e-10)
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, tb.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_float32_tracks_torch():
    torch = pytest.importorskip("torch")
    x0 = np.array([-1.2, 1.0, -0.5, 0.8], dtype=np.float32)
    kw = {"lr": 1.0, "max_iter": 10, "line_search_fn": "strong_wolfe"}
    x = x0.copy()
    losses, _ = _ours_rosen(x, kw, 1)
    t_losses, tx, _ = _torch_rosen(torch, x0, kw, 1)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, tx, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_converges_on_rosenbrock(line_search_fn):
    x = np.array([-1.2, 1.0])
    opt = fo.LBFGS([x], lr=1.0 if line_search_fn else 0.02, max_iter=200, line_search_fn=line_search_fn,
                   tolerance_grad=1e-10, tolerance_change=1e-14)
    for _ in range(20 if line_search_fn else 100):
        opt.step(lambda: (lambda f, g: (f, [g]))(*rosenbrock(x)))
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-5)


def test_a_none_gradient_counts_as_zero():
    x, z = np.array([-1.2, 1.0]), np.array([3.0])
    opt = fo.LBFGS([x, z], lr=1.0, line_search_fn="strong_wolfe")
    opt.step(lambda: (lambda f, g: (f, [g, None]))(*rosenbrock(x)))
    assert z[0] == 3.0 and rosenbrock(x)[0] < rosenbrock(np.array([-1.2, 1.0]))[0]


# ------------------------------------------------------------------ bad input
def test_step_without_closure_raises_and_changes_nothing():
    x = np.array([-1.2, 1.0])
    opt = fo.LBFGS([x])
    with pytest.raises(TypeError, match=r"LBFGS.step needs a closure.*returns \(loss, grads\)"):
        opt.step()
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step([np.ones(2)])
    assert np.array_equal(x, [-1.2, 1.0]) and opt.state == {}


@pytest.mark.parametrize("ret,err,match", [
    (lambda x: 1.0, TypeError, r"must return \(loss, grads\)"),
    (lambda x: (1.0, np.ones(2)), TypeError, "grads a list of arrays"),
    (lambda x: (1.0, [np.ones(3)]), ValueError, r"grads\[0\] has shape"),
    (lambda x: (1.0, [np.ones(2, np.float32)]), TypeError, "dtype"),
    (lambda x: (1.0, [np.ones(2), np.ones(2)]), ValueError, "2 gradients for 1 parameters"),
    (lambda x: ("a", [np.ones(2)]), TypeError, "loss must be a real number"),
])
def test_bad_closure_result_changes_nothing(ret, err, match):
    x = np.array([-1.2, 1.0])
    opt = fo.LBFGS([x])
    with pytest.raises(err, match=match):
        opt.step(lambda: ret(x))
    assert np.array_equal(x, [-1.2, 1.0]) and opt.state == {}


@pytest.mark.parametrize("kw,err,match", [
    ({"lr": -1.0}, ValueError, "lr"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"max_eval": 0}, ValueError, "max_eval"),
    ({"history_size": 0}, ValueError, "history_size"),
    ({"tolerance_grad": -1.0}, ValueError, "tolerance_grad"),
    ({"line_search_fn": "armijo"}, ValueError, "line_search_fn must be None or 'strong_wolfe'"),
])
def test_bad_hyperparameters(kw, err, match):
    with pytest.raises(err, match=match):
        fo.LBFGS([np.zeros(2)], **kw)


def test_bad_params():
    with pytest.raises(ValueError, match="per-parameter options"):
        fo.LBFGS([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)]}])
    with pytest.raises(TypeError, match="float32 or float64"):
        fo.LBFGS([np.zeros(2, dtype=np.int64)])
    with pytest.raises(TypeError, match="differs"):
        fo.LBFGS([np.zeros(2), np.zeros(2, np.float32)])
    with pytest.raises(TypeError, match="wrap it in a list"):
        fo.LBFGS(np.zeros(2))


def test_max_eval_defaults_like_torch():
    assert fo.LBFGS([np.zeros(2)], max_iter=8).param_groups[0]["max_eval"] == 10
    assert fo.LBFGS([np.zeros(2)]).param_groups[0]["max_eval"] == 25


# ------------------------------------------------------------------ state dict
def test_state_dict_resume_matches_continuing():
    X, y = _logreg_data(np.float64)
    w, b = np.zeros(5), np.zeros(1)
    kw = {"lr": 1.0, "max_iter": 4, "line_search_fn": "strong_wolfe", "history_size": 3}
    opt = fo.LBFGS([w, b], **kw)
    for _ in range(2):
        opt.step(lambda: logreg(X, y, w, b))
    sd = opt.state_dict()
    w2, b2 = w.copy(), b.copy()
    for _ in range(2):
        opt.step(lambda: logreg(X, y, w, b))
    opt2 = fo.LBFGS([w2, b2], lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["line_search_fn"] == "strong_wolfe"
    for _ in range(2):
        opt2.step(lambda: logreg(X, y, w2, b2))
    assert np.array_equal(w, w2) and np.array_equal(b, b2)


def test_bad_state_dict_changes_nothing():
    x = np.array([-1.2, 1.0])
    opt = fo.LBFGS([x], line_search_fn="strong_wolfe")
    opt.step(lambda: (lambda f, g: (f, [g]))(*rosenbrock(x)))
    sd = opt.state_dict()
    bad = opt.state_dict()
    bad["state"][0]["d"] = np.zeros(3)
    with pytest.raises(ValueError, match="flat array of 2"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["param_groups"][0]["history_size"] = 0
    with pytest.raises(ValueError, match="history_size"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="not LBFGS"):
        opt.load_state_dict(fo.SGD([np.zeros(2)]).state_dict())
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert np.array_equal(now["state"][0]["d"], sd["state"][0]["d"])


def test_readme_snippet_runs():
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", text[text.index("### `LBFGS`"):], re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README LBFGS snippet", "exec"), scope)
    np.testing.assert_allclose(scope["w"], [1.0, -2.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(scope["b"], [0.1], atol=1e-3)


def test_checkpoint_refuses_lbfgs(tmp_path):
    """fo.save holds one array per parameter; LBFGS's flat vectors and lists don't fit, so it is
    refused up front rather than written and then unloadable."""
    x = np.array([-1.2, 1.0])
    opt = fo.LBFGS([x])
    opt.step(lambda: (lambda f, g: (f, [g]))(*rosenbrock(x)))
    with pytest.raises(TypeError, match="optimizer must be a fusedoptim Optimizer, got LBFGS"):
        fo.save(tmp_path / "l.npz", opt)
    assert not (tmp_path / "l.npz").exists()
