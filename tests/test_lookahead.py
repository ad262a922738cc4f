"""Lookahead (pytorch-optimizer 4.1's semantics): a float64 NumPy reference written from the
docstring, pytorch-optimizer's Lookahead around torch.optim as the oracle, bad input,
threads, checkpoints (bit-exact resume) and the toolkit interplay.

17 steps with k = 3 or 5: several synchronisations and a counter left mid-cycle."""
import numpy as np
import pytest

import fusedoptim as fo

STEPS = 17


def _setup(dtype=np.float64, shapes=((5, 3), (4,), (2, 2, 3)), seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


# ------------------------------------------------------------------ reference
def test_matches_reference_around_plain_sgd():
    params, grads = _setup()
    init = [p.copy() for p in params]
    la = fo.Lookahead(fo.SGD(params, lr=0.1), k=3, alpha=0.4)
    for g in grads:
        la.step(g)
    theta = [p.copy() for p in init]
    phi = [p.copy() for p in init]
    for t, g in enumerate(grads, 1):
        theta = [th - 0.1 * gi for th, gi in zip(theta, g)]
        if t % 3 == 0:
            theta = [ph + 0.4 * (th - ph) for th, ph in zip(theta, phi)]    # lerp(theta, phi, 1 - alpha)
            phi = [th.copy() for th in theta]
    for p, th, ph in zip(params, theta, phi):
        np.testing.assert_allclose(p, th, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(la.slow[id(p)]["slow_params"], ph, rtol=1e-13, atol=1e-14)
    assert la.counters == [STEPS % 3]


# ------------------------------------------------------------------ oracle
ORACLE = [
    ("sgd_momentum_none", "SGD", {"lr": 0.05, "momentum": 0.9}, {"k": 5, "alpha": 0.5}),
    ("sgd_nesterov_reset", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True},
     {"k": 3, "alpha": 0.3, "pullback_momentum": "reset"}),
    ("sgd_dampening_pullback", "SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.1},
     {"k": 3, "alpha": 0.7, "pullback_momentum": "pullback"}),
    ("adam_none", "Adam", {"lr": 0.01}, {"k": 4, "alpha": 0.5}),
    ("adamw_k2", "AdamW", {"lr": 0.01, "weight_decay": 0.1}, {"k": 2, "alpha": 0.9}),
]


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name,inner,kw,la_kw", ORACLE, ids=[c[0] for c in ORACLE])
def test_pytorch_optimizer_oracle(name, inner, kw, la_kw, dt):
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    params, grads = _setup(dt)
    tp = [torch.tensor(p) for p in params]
    ref = po.Lookahead(getattr(torch.optim, inner)(tp, **kw), **la_kw)
    la = fo.Lookahead(getattr(fo, inner)(params, **kw), **la_kw)
    for g in grads:
        for p, gi in zip(tp, g):
            p.grad = torch.tensor(gi)
        ref.step()
        la.step(g)
    tol = dict(rtol=1e-12, atol=1e-13) if dt == "float64" else dict(rtol=1e-5, atol=1e-6)
    for p, t in zip(params, tp):
        np.testing.assert_allclose(p, t.detach().numpy(), **tol)
        np.testing.assert_allclose(la.slow[id(p)]["slow_params"], ref.state[t]["slow_params"].numpy(), **tol)
        if la_kw.get("pullback_momentum") == "pullback":
            np.testing.assert_allclose(la.slow[id(p)]["slow_momentum"], ref.state[t]["slow_momentum"].numpy(),
                                       **tol)
        if "momentum" in kw:
            np.testing.assert_allclose(la.state[p]["momentum_buffer"],
                                       ref.optimizer.state[t]["momentum_buffer"].numpy(), **tol)


def test_only_parameters_with_a_gradient_synchronise():
    params, grads = _setup(steps=3)
    init = [p.copy() for p in params]
    la = fo.Lookahead(fo.SGD(params, lr=0.1), k=3, alpha=0.5)
    la.step(grads[0])
    la.step(grads[1])
    la.step([grads[2][0], None, grads[2][2]])           # the third step synchronises
    for i in (0, 2):
        np.testing.assert_array_equal(la.slow[id(params[i])]["slow_params"], params[i])
        assert not np.array_equal(params[i], init[i])
    # the parameter without a gradient kept its fast weights and its slow copy from construction
    np.testing.assert_array_equal(la.slow[id(params[1])]["slow_params"], init[1])
    np.testing.assert_allclose(params[1], init[1] - 0.1 * (grads[0][1] + grads[1][1]), rtol=1e-14)
    assert la.counters == [0]


def test_accumulation_and_skipped_steps_do_not_count():
    params, grads = _setup(steps=4)
    la = fo.Lookahead(fo.SGD(params, lr=0.1, gradient_accumulation_steps=2), k=2)
    for g in grads:
        la.step(g)
    assert la.counters == [0] and la.optimizer.iterations == 2     # two applied steps: one sync
    la2 = fo.Lookahead(fo.SGD(_setup()[0], lr=0.1, skip_nonfinite=True), k=2)
    bad = [np.full_like(p, np.nan) for p in la2.params]
    la2.step(bad)
    assert la2.counters == [0] and la2.optimizer.nonfinite_count == 1


def test_slow_weights_context():
    params, grads = _setup(steps=4)
    la = fo.Lookahead(fo.Adam(params, lr=0.01), k=3)
    for g in grads:
        la.step(g)
    fast = [p.copy() for p in params]
    with la.slow_weights():
        for p in params:
            np.testing.assert_array_equal(p, la.slow[id(p)]["slow_params"])
    for p, f in zip(params, fast):
        np.testing.assert_array_equal(p, f)


def test_threads_bit_identical():
    out = []
    for n in (1, 2):
        fo.set_num_threads(n)
        params, grads = _setup(np.float32, shapes=((400, 300), (7,)), seed=3, steps=6)
        la = fo.Lookahead(fo.SGD(params, lr=0.1, momentum=0.9), k=2, alpha=0.3, pullback_momentum="pullback")
        for g in grads:
            la.step(g)
        out.append([p.copy() for p in params] + [la.slow[id(p)]["slow_momentum"].copy() for p in params])
    for a, b in zip(*out):
        assert np.array_equal(a, b)


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("pullback", ["none", "pullback"])
def test_save_load_resume_bit_exact(tmp_path, pullback):
    params, grads = _setup(np.float32)
    la = fo.Lookahead(fo.SGD(params, lr=0.05, momentum=0.9), k=5, alpha=0.5, pullback_momentum=pullback)
    for g in grads[:7]:
        la.step(g)
    fo.save(tmp_path / "la.npz", la, params=list(params))
    sd = la.state_dict()
    for g in grads[7:]:
        la.step(g)
    for restore in ("file", "dict"):
        params2 = [np.zeros_like(p) for p in params]
        la2 = fo.Lookahead(fo.SGD(params2, lr=0.05, momentum=0.9), k=5, alpha=0.5, pullback_momentum=pullback)
        if restore == "file":
            fo.load(tmp_path / "la.npz", la2, params=params2)
        else:
            la2.load_state_dict(sd)
            for p2, p in zip(params2, fo.load(tmp_path / "la.npz")["params"]):
                p2[...] = p
        assert la2.counters == [2]
        for g in grads[7:]:
            la2.step(g)
        for p, p2 in zip(params, params2):
            assert np.array_equal(p, p2)
            assert np.array_equal(la.slow[id(p)]["slow_params"], la2.slow[id(p2)]["slow_params"])


def test_state_dict_layout():
    params, grads = _setup(steps=2)
    la = fo.Lookahead(fo.Adam(params), k=3, alpha=0.25)
    la.step(grads[0])
    sd = la.state_dict()
    assert sd["kind"] == "Lookahead"
    g = sd["param_groups"][0]
    got = (g["lookahead_k"], g["lookahead_alpha"], g["lookahead_counter"], g["lookahead_inner"])
    assert got == (3, 0.25, 1, "Adam")
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "slow_params"}


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("inner", [None, "SGD", object(), [np.zeros(3)]])
def test_rejects_a_non_optimizer(inner):
    with pytest.raises(TypeError, match="Lookahead wraps a fusedoptim optimizer"):
        fo.Lookahead(inner)


@pytest.mark.parametrize("kw,err,match", [
    ({"k": 0}, ValueError, "k must be >= 1"),
    ({"k": 2.5}, TypeError, "k must be an integer"),
    ({"alpha": 1.0}, ValueError, "alpha must be < 1"),
    ({"alpha": -0.1}, ValueError, "alpha must be >= 0"),
    ({"pullback_momentum": "yes"}, ValueError, "pullback_momentum must be one of"),
])
def test_bad_settings(kw, err, match):
    with pytest.raises(err, match=match):
        fo.Lookahead(fo.SGD([np.zeros(3)], momentum=0.9), **kw)


def test_pullback_needs_a_momentum_buffer():
    with pytest.raises(ValueError, match="Adam does not keep"):
        fo.Lookahead(fo.Adam([np.zeros(3)]), pullback_momentum="reset")


def test_bad_state_dict_changes_nothing():
    params, grads = _setup(steps=4)
    la = fo.Lookahead(fo.SGD(params, lr=0.1, momentum=0.9), k=3)
    for g in grads:
        la.step(g)
    good = la.state_dict()
    before = la.state_dict()

    def same():
        now = la.state_dict()
        assert now["param_groups"] == before["param_groups"]
        for i in before["state"]:
            for key, v in before["state"][i].items():
                assert np.array_equal(now["state"][i][key], v)

    with pytest.raises(ValueError, match="from a SGD optimizer, not Lookahead"):
        la.load_state_dict(la.optimizer.state_dict())
    bad = la.state_dict()
    del bad["param_groups"][0]["lookahead_k"]
    with pytest.raises(ValueError, match="lacks the Lookahead settings"):
        la.load_state_dict(bad)
    bad = la.state_dict()
    bad["state"][1]["slow_params"] = np.zeros(7)
    with pytest.raises(ValueError, match="shape"):
        la.load_state_dict(bad)
    bad = la.state_dict()
    bad["param_groups"][0]["lookahead_counter"] = 3
    with pytest.raises(ValueError, match="lookahead_counter must be < lookahead_k"):
        la.load_state_dict(bad)
    bad = la.state_dict()
    bad["param_groups"][0]["lr"] = -1.0                    # the inner optimizer's part, checked by it
    bad["state"][0]["slow_params"] = bad["state"][0]["slow_params"] + 1
    with pytest.raises(ValueError, match="lr"):
        la.load_state_dict(bad)
    bad = la.state_dict()
    bad["param_groups"][0]["lookahead_inner"] = "Adam"
    with pytest.raises(ValueError, match="wraps SGD"):
        la.load_state_dict(bad)
    same()
    la.load_state_dict(good)
    same()


def test_readme_snippet_runs(tmp_path, monkeypatch):
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", text[text.index("### `Lookahead`"):], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README Lookahead snippet", "exec"), scope)
    assert scope["la"].counters == [0] and scope["la"].iterations == 10


def test_named_parameters_round_trip(tmp_path):
    """With named parameters (fo.SGD({'W': W, 'b': b})) the state is keyed by name; so are the
    slow weights, and fo.save / fo.load resume bit for bit."""
    rng = np.random.default_rng(4)
    grads = [{"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)} for _ in range(9)]

    def build():
        params = {"W": np.ones((3, 2)), "b": np.zeros(2)}
        return params, fo.Lookahead(fo.SGD(params, lr=0.1, momentum=0.9), k=4)

    params, la = build()
    for g in grads[:5]:
        la.step([g["W"], g["b"]])
    sd = la.state_dict()
    assert set(sd["state"]) == {"W", "b"} and "slow_params" in sd["state"]["W"]
    fo.save(tmp_path / "n.npz", la, params=params)
    for g in grads[5:]:
        la.step([g["W"], g["b"]])
    params2, la2 = build()
    fo.load(tmp_path / "n.npz", la2, params=params2)
    for g in grads[5:]:
        la2.step([g["W"], g["b"]])
    for n in params:
        assert np.array_equal(params[n], params2[n])
