"""The optimizers with a reduction stage (per-tensor statistics): Lamb, LARS, NovoGrad.

Oracle: the pytorch-optimizer 4.1 package (``pytorch_optimizer.Lamb``, ``LARS``,
``NovoGrad``), run in float64 (agreement to ~1e-12) and float32 (the suite's usual
rtol 1e-5 / atol 1e-6).  The shapes include a matrix, vectors (LARS treats ``ndim <= 1``
differently), a 3-D tensor, a single element, an empty tensor and one of 40000 elements
(three blocks of the stats pass, the last one partial), so every path of the driver runs.
Plus: thread-count bit identity, param groups, schedules, clipping, EMA, state_dict /
fo.save / fo.load bit-exact resume, bad input, and the CUDA backend's refusal.
"""
import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels
from fusedoptim import checkpoint as C
from fusedoptim import schedules as S

SHAPES = [(64, 33), (33,), (5, 7, 3), (1,), (0,), (40000,)]

# (name, kwargs): every option of each optimizer switched on somewhere
CASES = [
    ("Lamb", dict(lr=1e-2)),
    ("Lamb", dict(lr=1e-2, weight_decay=0.1)),
    ("Lamb", dict(lr=1e-2, weight_decay=0.1, weight_decouple=False, betas=(0.8, 0.99))),
    ("Lamb", dict(lr=1e-2, weight_decay=0.1, fixed_decay=True, grad_averaging=False, maximize=True)),
    ("Lamb", dict(lr=1e-2, adam=True, eps=1e-8)),
    ("LARS", dict(lr=0.1)),
    ("LARS", dict(lr=0.1, weight_decay=1e-2, momentum=0.0)),
    ("LARS", dict(lr=0.1, weight_decay=1e-2, momentum=0.9, nesterov=True, trust_coefficient=2e-2)),
    ("LARS", dict(lr=0.1, weight_decay=1e-2, dampening=0.3, maximize=True)),
    ("NovoGrad", dict(lr=1e-2)),
    ("NovoGrad", dict(lr=1e-2, weight_decay=0.1)),
    ("NovoGrad", dict(lr=1e-2, weight_decay=0.1, weight_decouple=True, grad_averaging=True)),
    ("NovoGrad", dict(lr=1e-2, weight_decay=0.1, weight_decouple=True, fixed_decay=True, maximize=True,
                      betas=(0.9, 0.3))),
]
IDS = [f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for n, kw in CASES]


def _params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _grads(step, params, seed=1):
    rng = np.random.default_rng([seed, step])
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def _oracle(name, tparams, groups_kw, kw):
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(kw)
    maximize = kw.pop("maximize", False)
    groups = [dict(params=tparams[:2], **groups_kw), dict(params=tparams[2:])]
    return getattr(po, name)(groups, maximize=maximize, **kw)


def _run_pair(name, kw, dtype, steps, groups_kw=None, clip=None):
    """fusedoptim and the oracle on the same data, two param groups; returns both params."""
    torch = pytest.importorskip("torch")
    groups_kw = {"lr": kw["lr"] * 0.5} if groups_kw is None else groups_kw
    ps = _params(dtype)
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    opt = getattr(fo, name)([dict(params=ps[:2], **groups_kw), dict(params=ps[2:])], **kw,
                            **({} if clip is None else {"global_clipnorm": clip}))
    ref = _oracle(name, tps, groups_kw, kw)
    for t in range(steps):
        gs = _grads(t, ps)
        tg = [torch.tensor(g) for g in gs]
        if clip is not None:     # Keras' global-norm clip, g * c / max(norm, c), done by hand for the oracle
            norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in gs))
            tg = [g * (clip / max(norm, clip)) for g in tg]
        for a, g in zip(tps, tg):
            a.grad = g
        ref.step()
        opt.step(gs)
    return ps, [a.detach().numpy() for a in tps], opt, ref


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_matches_pytorch_optimizer_float64(name, kw):
    ps, want, _, _ = _run_pair(name, kw, np.float64, 30)
    for p, w in zip(ps, want):
        np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_matches_pytorch_optimizer_float32(name, kw):
    ps, want, opt, ref = _run_pair(name, kw, np.float32, 50)
    _, truth, _, _ = _run_pair(name, kw, np.float64, 50)
    for p, w, t in zip(ps, want, truth):
        # within rtol 1e-5 / atol 1e-6 of the float32 oracle, or closer than it to the float64
        # result: the trust ratios' norms are summed in double here, in float32 by torch, so
        # the float32 oracle is the less accurate of the two where a step amplifies them
        close = np.abs(p - w) <= 1e-5 * np.abs(w) + 1e-6
        better = np.abs(p - t) <= np.abs(w - t) + 1e-6
        assert np.all(close | better), np.abs(p - w).max()
        np.testing.assert_allclose(p, w, rtol=1e-4, atol=1e-5)
    # the state too, under the package's names
    for p, tp in zip(opt.params, [q for g in ref.param_groups for q in g["params"]]):
        for k, v in ref.state[tp].items():
            if k in opt.state[p]:
                np.testing.assert_allclose(opt.state[p][k], v.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", ["Lamb", "LARS", "NovoGrad"])
def test_global_clipnorm_matches_the_oracle_on_clipped_gradients(name):
    kw = dict(CASES[[n for n, _ in CASES].index(name) + 1][1])
    ps, want, _, _ = _run_pair(name, kw, np.float64, 20, clip=5.0)
    for p, w in zip(ps, want):
        np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["Lamb", "LARS", "NovoGrad"])
def test_schedule_matches_the_oracle_with_torch_scheduler(name):
    torch = pytest.importorskip("torch")
    kw = dict(lr=0.05)
    ps = _params(np.float64)
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    opt = getattr(fo, name)(ps, **kw)
    ref = getattr(pytest.importorskip("pytorch_optimizer"), name)(tps, **kw)
    s1, s2 = S.CosineAnnealingLR(opt, T_max=10), torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=10)
    for t in range(15):
        gs = _grads(t, ps)
        for a, g in zip(tps, gs):
            a.grad = torch.tensor(g)
        ref.step()
        opt.step(gs)
        s1.step()
        s2.step()
    for p, a in zip(ps, tps):
        np.testing.assert_allclose(p, a.detach().numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name,kw", [CASES[1], CASES[7], CASES[11]], ids=["Lamb", "LARS", "NovoGrad"])
def test_bit_identical_for_one_and_two_threads(name, kw):
    # above the grain (one thread below it): 3 tensors, 200k elements, blocks shared between threads
    # and for any cache batching of the tensors (1 byte: each tensor a batch; 1 TiB: one batch)
    shapes = [(300, 500), (7,), (50001,), (3, 5)]
    out = []
    for threads, batch in ((1, 8 << 20), (2, 8 << 20), (2, 1), (1, 1 << 40), (2, 1 << 40)):
        fo.set_num_threads(threads)
        _kernels.set_reduce_batch(batch)
        try:
            ps = _params(np.float32, shapes=shapes)
            opt = getattr(fo, name)(ps, **kw, clipnorm=50.0, ema_decay=0.9)
            for t in range(5):
                opt.step(_grads(t, ps))
        finally:
            _kernels.set_reduce_batch(8 << 20)
        out.append((ps, opt.state_dict()))
    (a, sa) = out[0]
    for b, sb in out[1:]:
        for x, y in zip(a, b):
            assert x.tobytes() == y.tobytes()
        for i in sa["state"]:
            for k, v in sa["state"][i].items():
                assert np.asarray(v).tobytes() == np.asarray(sb["state"][i][k]).tobytes(), (i, k)
    with pytest.raises(ValueError, match="batch budget"):
        _kernels.set_reduce_batch(0)


@pytest.mark.parametrize("name,kw", [CASES[1], CASES[7], CASES[11]], ids=["Lamb", "LARS", "NovoGrad"])
def test_checkpoint_resume_is_bit_exact(tmp_path, name, kw):
    def build(ps):
        return getattr(fo, name)([dict(params=ps[:2], lr=kw["lr"] * 0.3), dict(params=ps[2:])],
                                 **{k: v for k, v in kw.items()})
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


def test_state_dict_round_trip_keeps_per_tensor_state():
    ps = _params(np.float64)
    opt = fo.NovoGrad(ps, lr=1e-2)
    opt.step(_grads(0, ps))
    st = opt.state[ps[0]]
    assert st["grads_ema"].shape == () and st["grads_ema"].dtype == np.float64
    assert float(st["grads_ema"]) == pytest.approx(float((_grads(0, ps)[0] ** 2).sum()), rel=1e-14)
    sd = opt.state_dict()
    ps2 = [p.copy() for p in ps]
    opt2 = fo.NovoGrad(ps2, lr=1e-2)
    opt2.load_state_dict(sd)
    opt.step(_grads(1, ps))
    opt2.step(_grads(1, ps2))
    for x, y in zip(ps, ps2):
        assert x.tobytes() == y.tobytes()
    bad = opt.state_dict()
    bad["state"][0]["grads_ema"] = np.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(bad)


def test_ema_epilogue_runs_in_the_apply_pass():
    # torch's AveragedModel / Keras: the first average is the weights after the first
    # update; from then on ema <- ema + (1 - decay) (p - ema)
    ps = _params(np.float64)
    opt = fo.LARS(ps, lr=0.1, ema_decay=0.9)
    before = [p.copy() for p in ps]
    opt.step(_grads(0, ps))
    for p in ps:
        np.testing.assert_array_equal(opt.state[p]["ema"], p)
    first = [p.copy() for p in ps]
    opt.step(_grads(1, ps))
    for p, a in zip(ps, first):
        np.testing.assert_allclose(opt.state[p]["ema"], a + 0.1 * (p - a), rtol=1e-14, atol=1e-15)
    assert any(not np.array_equal(p, b) for p, b in zip(ps, before))
    assert any(not np.array_equal(p, a) for p, a in zip(ps, first))


@pytest.mark.parametrize("build,match", [
    (lambda ps: fo.LARS(ps, momentum=1.5), "momentum"),
    (lambda ps: fo.LARS(ps, trust_coefficient=-1.0), "trust_coefficient"),
    (lambda ps: fo.Lamb(ps, rectify=True), "rectify"),
    (lambda ps: fo.Lamb(ps, pre_norm=True), "pre_norm"),
    (lambda ps: fo.Lamb(ps, betas=(1.5, 0.9)), "beta"),
    (lambda ps: fo.NovoGrad(ps, eps=-1.0), "eps"),
    (lambda ps: fo.NovoGrad(ps, weight_decouple=1), "weight_decouple"),
])
def test_bad_hyperparameters_are_refused(build, match):
    ps = _params(np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        build(ps)


@pytest.mark.parametrize("name", ["Lamb", "LARS", "NovoGrad"])
def test_bad_step_changes_nothing(name):
    ps = _params(np.float32)
    opt = getattr(fo, name)(ps, lr=1e-2)
    opt.step(_grads(0, ps))
    before = [p.copy() for p in ps]
    state = {i: {k: np.array(v, copy=True) for k, v in opt.state[p].items() if isinstance(v, np.ndarray)}
             for i, p in enumerate(ps)}
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step(_grads(1, ps))
    opt.param_groups[0]["lr"] = 1e-2
    gs = _grads(1, ps)
    gs[2] = gs[2].astype(np.float64)
    with pytest.raises((ValueError, TypeError)):
        opt.step(gs)
    for p, b in zip(ps, before):
        assert p.tobytes() == b.tobytes()
    for i, p in enumerate(ps):
        for k, v in state[i].items():
            assert opt.state[p][k].tobytes() == v.tobytes()


def test_specs_declare_the_reduction():
    for cls, stats in ((fo.Lamb, ("param_sumsq", "update_sumsq")), (fo.LARS, ("param_sumsq", "grad_sumsq")),
                       (fo.NovoGrad, ("grad_sumsq",))):
        assert cls.spec.stats == stats == _kernels.ALGORITHMS[cls.spec.name].stats
        assert cls.spec.id >= _kernels.REDUCE_FIRST
    assert fo.NovoGrad.spec.tensor_state == ("grads_ema",)


def test_cuda_backend_refuses_reducing_algorithms():
    from fusedoptim import _cuda
    with pytest.raises(NotImplementedError, match="lamb"):
        _cuda._prepare(fo.Lamb.spec.id, {}, {}, 0, [], [], [], None, None)


@pytest.mark.parametrize("name,kw", [CASES[1], CASES[7], CASES[11]], ids=["Lamb", "LARS", "NovoGrad"])
def test_nonfinite_skip_and_accumulation(name, kw):
    # a NaN gradient with skip_nonfinite: nothing changes; accumulating two calls of g/2 and
    # g/2 * 3 applies their mean, the same bits as one step with g (a power-of-two scale)
    ps = _params(np.float64)
    opt = getattr(fo, name)(ps, **kw, skip_nonfinite=True)
    opt.step(_grads(0, ps))
    before = [p.copy() for p in ps]
    bad = _grads(1, ps)
    bad[0][0, 0] = np.nan
    opt.step(bad)
    assert opt.last_step_skipped
    assert all(p.tobytes() == b.tobytes() for p, b in zip(ps, before))
    ref = _params(np.float64)
    ropt = getattr(fo, name)(ref, **kw)
    acc = _params(np.float64)
    aopt = getattr(fo, name)(acc, **kw, gradient_accumulation_steps=2)
    for t in range(3):
        g = _grads(t, ref)
        ropt.step(g)
        aopt.step([x * 0.5 for x in g])
        aopt.step([x * 1.5 for x in g])
        assert aopt.last_step_applied
    for x, y in zip(acc, ref):
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-14)
