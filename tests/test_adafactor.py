"""fusedoptim.Adafactor: against torch.optim.Adafactor (torch 2.13; float32 within the
tolerances of test_torch_oracle.py, float64 ~1e-12) and the float64 reference in
reference.py, on 0-D, 1-D, 2-D, 3-D and 4-D tensors (torch factors the last two dims),
including matrices larger than one work unit (the split column sums of factored.h); then
the toolkit: threads (bit-identical), groups, schedules, clipping, accumulation, EMA,
non-finite skip, state_dict / fo.save / fo.load (bit-exact resume), names, bad input.

Why 200 steps: as test_torch_oracle.py; beta2_t grows towards 1 and the relative step
1/sqrt(t) shrinks, so errors in the statistics would accumulate over that span."""
import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import checkpoint as C
from fusedoptim import schedules as S
from reference import TOL, adafactor as ref_rule

# 0-D, 1-D (size 0 and odd), 2-D, 3-D, 4-D (a conv kernel: 3x3 matrices), one matrix
# larger than a unit (16384 elements: rows split across units), last a vector larger than a
# unit (its sums taken in runs of 256, then a shorter run; tests index the others by position)
SHAPES = [(), (7,), (0,), (5, 3), (4, 6, 9), (3, 2, 3, 3), (150, 130), (2, 3, 9000), (40003,)]
# torch.optim.Adafactor divides by numel: it raises ZeroDivisionError on empty tensors
TORCH_SHAPES = [s for s in SHAPES if np.prod(s, dtype=int) > 0]
STEPS = 200


def _params(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _grads(t, ps, seed=1):
    rng = np.random.default_rng([seed, t])
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in ps]


def _ref_run(ps, hp, steps, grads=_grads):
    ps = [p.copy() for p in ps]
    states = [{"step": 0} for _ in ps]
    for t in range(steps):
        for i, (p, g) in enumerate(zip(ps, grads(t, ps))):
            p[...] = ref_rule(p, g, states[i], **hp)
    return ps, states


CASES = [dict(), dict(lr=0.05, weight_decay=0.1), dict(maximize=True, d=1.5, beta2_decay=-0.5),
         dict(eps=(1e-20, 1e-2), lr=0.2)]


@pytest.mark.parametrize("hp", CASES, ids=lambda hp: "-".join(f"{k}={v}" for k, v in hp.items()) or "defaults")
def test_matches_reference_float64(hp):
    ps = _params(np.float64)
    opt = fo.Adafactor(ps, **hp)
    for t in range(60):
        opt.step(_grads(t, ps))
    want, states = _ref_run(_params(np.float64), hp, 60)
    for i, (p, w) in enumerate(zip(ps, want)):
        np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-12, err_msg=f"params[{i}]")
        for k, v in states[i].items():
            if k == "step":
                assert opt.state[p]["step"] == v
            else:
                assert opt.state[p][k].shape == v.shape
                np.testing.assert_allclose(opt.state[p][k], v, rtol=1e-12, atol=1e-300, err_msg=f"{i} {k}")


class _Torch:
    def __init__(self, ps, hp):
        import torch
        self.torch = torch
        self.params = [torch.tensor(p.copy()) for p in ps]
        self.opt = torch.optim.Adafactor(self.params, **hp)

    def step(self, grads):
        for t, g in zip(self.params, grads):
            t.grad = None if g is None else self.torch.from_numpy(g.copy())
        self.opt.step()


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("hp", CASES, ids=lambda hp: "-".join(f"{k}={v}" for k, v in hp.items()) or "defaults")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_matches_torch(hp, dtype, foreach):
    """float64: torch's values within 1e-12.  float32: within test_torch_oracle.py's
    tolerances with the absolute one raised to 64 ulp of the tensor's largest value
    (elements near 0 of parameters of |theta| ~ 10, whose ulp is 1e-6: torch's CPU kernels
    use FMA and other reduction orders), and the largest error against torch's own float64
    trajectory at most 1.5x torch's float32 one."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ps = _params(dtype, TORCH_SHAPES)
        tr = _Torch(ps, dict(hp, foreach=foreach))
        truth = _Torch([p.astype(np.float64) for p in ps], dict(hp, foreach=foreach)) if dtype == np.float32 else None
        opt = fo.Adafactor(ps, **hp)
        for t in range(STEPS):
            gs = _grads(t, ps)
            opt.step(gs)
            tr.step(gs)
            if truth is not None:
                truth.step([g.astype(np.float64) for g in gs])
    finally:
        torch.set_num_threads(old)
    tol = TOL[np.dtype(dtype)]
    for i, (p, q) in enumerate(zip(ps, tr.params)):
        q = q.numpy()
        if truth is None:
            np.testing.assert_allclose(p, q, **tol, err_msg=f"params[{i}]")
        else:
            w = truth.params[i].numpy()
            scale = 64 * np.finfo(np.float32).eps * np.abs(w).max()      # 64 ulp of the tensor's largest value
            np.testing.assert_allclose(p, q, rtol=tol["rtol"], atol=max(tol["atol"], scale), err_msg=f"params[{i}]")
            assert np.abs(p - w).max() <= 1.5 * np.abs(q - w).max() + tol["atol"], i
        tst = tr.opt.state[tr.params[i]]
        assert set(tst) == set(opt.state[p]), (i, set(tst), set(opt.state[p]))
        for k, v in tst.items():
            if k == "step":
                assert opt.state[p]["step"] == int(v.item())
            else:
                assert opt.state[p][k].shape == tuple(v.shape)
                np.testing.assert_allclose(opt.state[p][k], v.numpy(), rtol=tol["rtol"] * 10,
                                           atol=np.finfo(dtype).tiny, err_msg=f"params[{i}] {k}")


def test_skipped_grads_and_lr_changes_match_torch():
    torch = pytest.importorskip("torch")
    ps = _params(np.float64, TORCH_SHAPES)
    tr = _Torch(ps, dict(lr=0.05, weight_decay=0.01))
    opt = fo.Adafactor(ps, lr=0.05, weight_decay=0.01)
    rng = np.random.default_rng(5)
    for t in range(60):
        gs = [g if rng.random() < 0.7 else None for g in _grads(t, ps)]
        if t % 10 == 9:
            lr = 0.05 * float(rng.uniform(0.1, 2.0))
            opt.param_groups[0]["lr"] = lr
            tr.opt.param_groups[0]["lr"] = lr
        opt.step(gs)
        tr.step(gs)
    for p, q in zip(ps, tr.params):
        np.testing.assert_allclose(p, q.numpy(), rtol=1e-12, atol=1e-12)
    assert torch is not None


def test_loads_a_torch_state_dict():
    torch = pytest.importorskip("torch")
    ps = _params(np.float64, TORCH_SHAPES)
    tr = _Torch(ps, dict(lr=0.03))
    for t in range(10):
        tr.step(_grads(t, ps))
    sd = tr.opt.state_dict()
    mine = [q.numpy().copy() for q in tr.params]
    opt = fo.Adafactor(mine, lr=0.03)
    opt.load_state_dict({
        "state": {i: {k: (v.item() if k == "step" else v.numpy().copy()) for k, v in st.items()}
                  for i, st in sd["state"].items()},
        "param_groups": [{k: v for k, v in g.items() if k in opt.defaults or k == "params"}
                         for g in sd["param_groups"]]})
    for t in range(10, 20):
        gs = _grads(t, ps)
        opt.step(gs)
        tr.step(gs)
    for p, q in zip(mine, tr.params):
        np.testing.assert_allclose(p, q.numpy(), rtol=1e-12, atol=1e-12)
    assert torch is not None


def test_bit_identical_for_one_and_two_threads():
    # above the grain: many units of every kind (vector, whole matrices, split rows)
    shapes = [(300, 500), (64, 64, 3, 3), (50001,), (3, 40000)]
    out = []
    old = fo.get_num_threads()
    try:
        for threads in (1, 2):
            fo.set_num_threads(threads)
            ps = _params(np.float32, shapes)
            opt = fo.Adafactor(ps, lr=0.05, weight_decay=0.01, clipnorm=50.0, ema_decay=0.9)
            for t in range(5):
                opt.step(_grads(t, ps))
            out.append((ps, opt.state_dict()))
    finally:
        fo.set_num_threads(old)
    (a, sa), (b, sb) = out
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            assert np.asarray(v).tobytes() == np.asarray(sb["state"][i][k]).tobytes(), (i, k)


def test_param_groups_and_schedule():
    # two groups with their own lr; a cosine schedule on both: each group follows the
    # reference with the lr the schedule gives at that step
    ps = _params(np.float64)
    opt = fo.Adafactor([dict(params=ps[:4], lr=0.02), dict(params=ps[4:], lr=0.005, weight_decay=0.1)])
    sched = S.CosineAnnealingLR(opt, T_max=8)
    ref = _params(np.float64)
    states = [{"step": 0} for _ in ref]
    for t in range(12):
        lrs = [g["lr"] for g in opt.param_groups]
        gs = _grads(t, ps)
        opt.step(gs)
        sched.step()
        for i, (p, g) in enumerate(zip(ref, gs)):
            hp = dict(lr=lrs[0]) if i < 4 else dict(lr=lrs[1], weight_decay=0.1)
            p[...] = ref_rule(p, g, states[i], **hp)
    for p, w in zip(ps, ref):
        np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-12)


def test_global_clipnorm_clips_the_gradient_first():
    ps = _params(np.float64)
    opt = fo.Adafactor(ps, lr=0.05, global_clipnorm=2.0)
    ref = _params(np.float64)
    states = [{"step": 0} for _ in ref]
    for t in range(10):
        gs = _grads(t, ps)
        opt.step(gs)
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in gs))
        f = 2.0 / max(norm, 2.0)
        for i, (p, g) in enumerate(zip(ref, gs)):
            p[...] = ref_rule(p, g * f, states[i], lr=0.05)
    for p, w in zip(ps, ref):
        np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-12)


def test_nonfinite_skip_accumulation_and_ema():
    ps = _params(np.float64)
    opt = fo.Adafactor(ps, skip_nonfinite=True, ema_decay=0.9)
    opt.step(_grads(0, ps))
    for p in ps:                        # the first average is the weights after the first update
        np.testing.assert_array_equal(opt.state[p]["ema"], p)
    before = [p.copy() for p in ps]
    bad = _grads(1, ps)
    bad[SHAPES.index((5, 3))][0, 0] = np.nan
    opt.step(bad)
    assert opt.last_step_skipped
    assert all(p.tobytes() == b.tobytes() for p, b in zip(ps, before))
    first = [p.copy() for p in ps]
    opt.step(_grads(2, ps))
    for p, a in zip(ps, first):
        np.testing.assert_allclose(opt.state[p]["ema"], a + 0.1 * (p - a), rtol=1e-14, atol=1e-15)
    ref = _params(np.float64)
    ropt = fo.Adafactor(ref)
    acc = _params(np.float64)
    aopt = fo.Adafactor(acc, gradient_accumulation_steps=2)
    for t in range(3):
        g = _grads(t, ref)
        ropt.step(g)
        aopt.step([x * 0.5 for x in g])
        aopt.step([x * 1.5 for x in g])
        assert aopt.last_step_applied
    for x, y in zip(acc, ref):
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-14)


def test_checkpoint_resume_is_bit_exact(tmp_path):
    def build(ps):
        return fo.Adafactor([dict(params=ps[:3], lr=0.003), dict(params=ps[3:])], weight_decay=0.01)
    ref = _params(np.float32)
    ropt = build(ref)
    for t in range(20):
        ropt.step(_grads(t, ref))
    ps = _params(np.float32)
    opt = build(ps)
    for t in range(10):
        opt.step(_grads(t, ps))
    C.save(tmp_path / "c.npz", opt, params={str(i): p for i, p in enumerate(ps)})
    new = [np.full_like(p, np.nan) for p in _params(np.float32)]
    opt2 = build(new)
    C.load(tmp_path / "c.npz", opt2, params={str(i): p for i, p in enumerate(new)})
    for t in range(10, 20):
        opt2.step(_grads(t, new))
    for x, y in zip(new, ref):
        assert x.tobytes() == y.tobytes()


def test_named_params_and_state_dict_by_name():
    ps = _params(np.float64)
    names = [f"layer{i}.w" for i in range(len(ps))]
    opt = fo.Adafactor(dict(zip(names, ps)), lr=0.02)
    opt.step(dict(zip(names, _grads(0, ps))))
    sd = opt.state_dict()
    assert set(sd["state"]) == set(names)
    m = f"layer{SHAPES.index((5, 3))}.w"
    assert sd["state"][m]["row_var"].shape == (5, 1)
    assert sd["state"][m]["col_var"].shape == (1, 3)
    assert sd["state"]["layer1.w"]["variance"].shape == (7,)
    ps2 = [p.copy() for p in ps]
    opt2 = fo.Adafactor(dict(zip(names, ps2)), lr=0.02)
    opt2.load_state_dict(sd)
    opt.step(dict(zip(names, _grads(1, ps))))
    opt2.step(dict(zip(names, _grads(1, ps))))
    for x, y in zip(ps, ps2):
        assert x.tobytes() == y.tobytes()
    bad = opt.state_dict()
    bad["state"]["layer3.w"]["row_var"] = np.zeros((5, 3))
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"]["layer1.w"]["row_var"] = np.zeros((7, 1))
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(bad)


@pytest.mark.parametrize("kw,match", [
    (dict(lr=-1.0), "lr"),
    (dict(beta2_decay=0.5), "beta2_decay"),
    (dict(eps=(-1.0, 1e-3)), "eps"),
    (dict(eps=(None, -1e-3)), "eps"),
    (dict(eps=1e-3), "eps"),
    (dict(d=0.5), "d"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(foreach=1), "foreach"),
])
def test_bad_hyperparameters_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fo.Adafactor(_params(np.float32), **kw)


def test_bad_params_and_steps_change_nothing():
    with pytest.raises(TypeError, match="float16"):
        fo.Adafactor([np.zeros((2, 2), np.float16)])
    ps = _params(np.float32)
    opt = fo.Adafactor(ps)
    opt.step(_grads(0, ps))
    before = [p.copy() for p in ps]
    state = {i: {k: np.array(v, copy=True) for k, v in opt.state[p].items() if isinstance(v, np.ndarray)}
             for i, p in enumerate(ps)}
    opt.param_groups[0]["d"] = 0.0
    with pytest.raises(ValueError, match="d"):
        opt.step(_grads(1, ps))
    opt.param_groups[0]["d"] = 1.0
    gs = _grads(1, ps)
    gs[3] = gs[3].astype(np.float64)
    with pytest.raises((ValueError, TypeError)):
        opt.step(gs)
    for p, b in zip(ps, before):
        assert p.tobytes() == b.tobytes()
    for i, p in enumerate(ps):
        for k, v in state[i].items():
            assert opt.state[p][k].tobytes() == v.tobytes()
        assert opt.state[p]["step"] == 1


def test_readme_snippet_runs(capsys):
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", text[text.index("### `Adafactor`"):], re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README Adafactor snippet", "exec"), scope)
    assert capsys.readouterr().out.strip() == "(256, 1) (1, 128) (128,)"
    assert scope["opt"].state[scope["W"]]["step"] == 1


def test_keras_form_is_the_core_class_with_keras_options():
    # README "Coming from Keras" table row: fusedoptim.keras.Adafactor = the core class with
    # keras_form=True; both equal the float64 reference's Keras form (1-D, 2-D, 3-D)
    from fusedoptim import keras as fk
    shapes = [(7,), (5, 3), (2, 4, 6)]
    a, b = _params(np.float64, shapes), _params(np.float64, shapes)
    kopt = fk.Adafactor(learning_rate=0.05, beta_2_decay=-0.7, epsilon_1=1e-20, epsilon_2=1e-2,
                        clip_threshold=0.8, weight_decay=0.1)
    copt = fo.Adafactor(b, lr=0.05, beta2_decay=-0.7, eps=(1e-20, 1e-2), d=0.8, weight_decay=0.1, keras_form=True)
    ref = _params(np.float64, shapes)
    states = [{"step": 0} for _ in ref]
    for t in range(20):
        gs = _grads(t, a)
        kopt.apply_gradients(zip(gs, a))
        copt.step(gs)
        for i, (p, g) in enumerate(zip(ref, gs)):
            p[...] = ref_rule(p, g, states[i], lr=0.05, beta2_decay=-0.7, eps=(1e-20, 1e-2), d=0.8,
                              weight_decay=0.1, keras_form=True)
    for x, y, w in zip(a, b, ref):
        assert x.tobytes() == y.tobytes()
        np.testing.assert_allclose(x, w, rtol=1e-12, atol=1e-12)
