"""Muon (torch.optim.Muon of torch 2.13): an independent float64 NumPy reference written from
the docstring's formulas, torch's own code as the oracle, bad input, threads, options and
resume.

torch casts the Newton-Schulz input to bfloat16 on every device; fusedoptim runs it in the
parameter's dtype.  The oracle tests therefore run torch's code with that cast made the
identity (``_no_bf16``), which is then the same algorithm in float32/float64; one test
checks the unpatched torch at bfloat16 precision.  20 steps: enough for the momentum
buffer to matter (mu = 0.95 keeps 36% of the first gradient) at a cheap size.
"""
import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.optim.muon import DEFAULT_NS_COEFFICIENTS, newton_schulz

SHAPES = [(6, 4), (4, 6), (5, 5), (1, 7), (7, 1), (33, 17)]
CASES = [
    ("defaults", {}),
    ("no_nesterov", {"nesterov": False, "momentum": 0.9}),
    ("decay_match_rms", {"weight_decay": 0.3, "adjust_lr_fn": "match_rms_adamw", "lr": 0.02}),
    ("original_ns3", {"adjust_lr_fn": "original", "ns_steps": 3, "eps": 1e-5, "lr": 0.05}),
    ("coefficients", {"ns_coefficients": (2.0, -1.5, 0.5), "momentum": 0.5}),
]
STEPS = 20


def _grads(rng, shapes, dtype, steps=STEPS):
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


# ------------------------------------------------------------------ reference
def ref_ns(G, coefficients, steps, eps):
    """NS^{(a,b,c)}_k in float64, written on the wide orientation as the docstring states."""
    a, b, c = coefficients
    X = G.T.copy() if G.shape[0] > G.shape[1] else G.copy()
    X = X / max(np.linalg.norm(X), eps)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if G.shape[0] > G.shape[1] else X


def ref_muon(params, grad_seq, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
             ns_coefficients=DEFAULT_NS_COEFFICIENTS, eps=1e-7, ns_steps=5, adjust_lr_fn=None):
    params = [p.astype(np.float64) for p in params]
    bufs = [np.zeros_like(p) for p in params]
    for grads in grad_seq:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.astype(np.float64)
            bufs[i] = momentum * bufs[i] + (1 - momentum) * g                # B = lerp(B, g, 1 - mu)
            u = g + momentum * (bufs[i] - g) if nesterov else bufs[i]       # lerp(g, B, mu)
            o = ref_ns(u, ns_coefficients, ns_steps, eps)
            A, C = p.shape
            r = 0.2 * math.sqrt(max(A, C)) if adjust_lr_fn == "match_rms_adamw" else math.sqrt(max(1, A / C))
            params[i] = p * (1 - lr * weight_decay) - lr * r * o
    return params, bufs


def _run(shapes, kw, dtype, grad_seq, seed=0, **options):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    init = [p.copy() for p in params]
    opt = fo.Muon(params, **kw, **options)
    for grads in grad_seq:
        opt.step(grads)
    return init, params, opt


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_float64_matches_reference(name, kw):
    grad_seq = _grads(np.random.default_rng(1), SHAPES, np.float64)
    init, params, opt = _run(SHAPES, kw, np.float64, grad_seq)
    want, bufs = ref_muon(init, grad_seq, **kw)
    for p, w, b, st in zip(params, want, bufs, [opt.state[p] for p in params]):
        np.testing.assert_allclose(p, w, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(st["momentum_buffer"], b, rtol=1e-12, atol=1e-13)
        assert st["step"] == STEPS


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_float32_tracks_reference(name, kw):
    grad_seq = _grads(np.random.default_rng(1), SHAPES, np.float32)
    init, params, _ = _run(SHAPES, kw, np.float32, grad_seq)
    want, _ = ref_muon(init, grad_seq, **kw)
    for p, w in zip(params, want):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, w, rtol=1e-4, atol=2e-5)


def test_newton_schulz_orthogonalises_in_place():
    rng = np.random.default_rng(3)
    for shape in [(40, 30), (30, 40)]:
        g = rng.standard_normal(shape)
        x = g.copy()
        out = newton_schulz(x, steps=10)
        assert out is x
        np.testing.assert_allclose(x, ref_ns(g, DEFAULT_NS_COEFFICIENTS, 10, 1e-7), rtol=1e-10, atol=1e-12)
        s = np.linalg.svd(x, compute_uv=False)
        assert 0.5 < s.min() and s.max() < 1.3        # Keller Jordan's quintic: singular values near 1


# ------------------------------------------------------------------ torch oracle
@pytest.fixture
def _no_bf16(monkeypatch):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("this torch has no torch.optim.Muon")
    # torch's _zeropower_via_newtonschulz starts with grad.bfloat16(); a copy in the same
    # dtype instead runs its algorithm unchanged in float32/float64
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self.clone())
    return torch


def _torch_run(torch, init, grad_seq, kw):
    tp = [torch.tensor(p) for p in init]
    opt = torch.optim.Muon(tp, **kw)
    for grads in grad_seq:
        for p, g in zip(tp, grads):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in tp], [opt.state[p]["momentum_buffer"].numpy() for p in tp]


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_torch_oracle(_no_bf16, name, kw, dt):
    torch = _no_bf16
    grad_seq = _grads(np.random.default_rng(2), SHAPES, dt)
    init, params, opt = _run(SHAPES, kw, dt, grad_seq)
    want, bufs = _torch_run(torch, init, grad_seq, kw)
    # float32: torch's own default float32 tolerances (torch.testing: rtol 1.3e-6, atol 1e-5)
    tol = dict(rtol=1e-11, atol=1e-12) if dt == "float64" else dict(rtol=1.3e-6, atol=1e-5)
    for p, w, b in zip(params, want, bufs):
        np.testing.assert_allclose(p, w, **tol)
        np.testing.assert_allclose(opt.state[p]["momentum_buffer"], b, **tol)


def test_torch_oracle_bfloat16_as_shipped():
    """Unpatched torch (Newton-Schulz in bfloat16): one step agrees to bfloat16 precision."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("this torch has no torch.optim.Muon")
    grad_seq = _grads(np.random.default_rng(5), [(24, 16)], np.float32, steps=1)
    kw = {"lr": 0.1, "weight_decay": 0.0}
    init, params, _ = _run([(24, 16)], kw, np.float32, grad_seq)
    want, _ = _torch_run(torch, init, grad_seq, kw)
    step_ours, step_torch = params[0] - init[0], want[0] - init[0]
    assert np.abs(step_ours - step_torch).max() < 2e-2 * np.abs(step_torch).max()


# ------------------------------------------------------------------ bad input
def test_rejects_non_2d_parameters_without_mutation():
    W, b = np.ones((3, 4)), np.ones(4)
    with pytest.raises(ValueError, match=r"Muon only supports 2-D parameters, params\[1\] has shape \(4,\)"):
        fo.Muon([W, b])
    opt = fo.Muon([W])
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": [np.ones((2, 2, 2))]})
    assert len(opt.param_groups) == 1 and len(opt.params) == 1


@pytest.mark.parametrize("kw,err,match", [
    ({"lr": -1.0}, ValueError, "lr"),
    ({"momentum": -0.1}, ValueError, "momentum"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ({"ns_steps": 100}, ValueError, "ns_steps must be < 100"),
    ({"ns_steps": 2.5}, TypeError, "ns_steps must be an integer"),
    ({"ns_coefficients": (1.0, 2.0)}, ValueError, "three numbers"),
    ({"ns_coefficients": (1.0, "x", 2.0)}, TypeError, r"ns_coefficients\[1\]"),
    ({"adjust_lr_fn": "rms"}, ValueError, "adjust_lr_fn"),
    ({"nesterov": 1}, TypeError, "nesterov"),
])
def test_bad_hyperparameters(kw, err, match):
    with pytest.raises(err, match=match):
        fo.Muon([np.ones((2, 3))], **kw)


def test_bad_hyperparameter_in_group_leaves_everything_unchanged():
    W = np.ones((3, 4))
    opt = fo.Muon([W], lr=0.1)
    opt.step([np.full((3, 4), 0.5)])
    before_W, before_buf = W.copy(), opt.state[W]["momentum_buffer"].copy()
    opt.param_groups[0]["ns_steps"] = -1
    with pytest.raises(ValueError, match="ns_steps"):
        opt.step([np.ones((3, 4))])
    assert np.array_equal(W, before_W) and np.array_equal(opt.state[W]["momentum_buffer"], before_buf)
    assert opt.state[W]["step"] == 1


def test_bad_gradient_leaves_everything_unchanged():
    W = np.ones((3, 4))
    opt = fo.Muon([W])
    with pytest.raises(ValueError):
        opt.step([np.ones((4, 3))])
    assert np.array_equal(W, np.ones((3, 4))) and len(opt.state) == 0


# ------------------------------------------------------------------ threads, options, resume
def test_threads_bit_identical():
    rng = np.random.default_rng(7)
    shapes = [(300, 280), (64, 700)]                # above the 64K-element grain: really threaded
    grad_seq = _grads(rng, shapes, np.float32, steps=3)
    out = []
    for n in (1, 2):
        fo.set_num_threads(n)
        _, params, opt = _run(shapes, {"lr": 0.02}, np.float32, grad_seq)
        out.append([p.copy() for p in params] + [opt.state[p]["momentum_buffer"].copy() for p in params])
    for a, b in zip(*out):
        assert np.array_equal(a, b)


def test_clipvalue_grad_scale_and_ema():
    """The options fused into the native stages: grad_scale, then the clip value, before the
    momentum, the EMA after the step."""
    shapes = [(6, 4), (3, 8)]
    grad_seq = _grads(np.random.default_rng(8), shapes, np.float64, steps=5)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in shapes]
    init = [p.copy() for p in params]
    opt = fo.Muon(params, lr=0.05, clipvalue=0.5, ema_decay=0.9)
    for grads in grad_seq:
        opt.step(grads, grad_scale=0.5)
    # clipvalue acts on the scaled gradient
    clipped = [[np.clip(g * 0.5, -0.5, 0.5) for g in grads] for grads in grad_seq]
    # the first average is the weights after the first update (torch's AveragedModel, Keras)
    for k in range(len(grad_seq)):
        cur, _ = ref_muon(init, clipped[:k + 1], lr=0.05)
        ema = [c.copy() for c in cur] if k == 0 else [e + 0.1 * (c - e) for e, c in zip(ema, cur)]
    for p, w, e, st in zip(params, cur, ema, [opt.state[p] for p in params]):
        np.testing.assert_allclose(p, w, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(st["ema"], e, rtol=1e-11, atol=1e-12)


def test_accumulation_and_global_clipnorm():
    """Two accumulated calls apply their mean once; global_clipnorm scales it by c / max(norm, c)."""
    shapes = [(6, 4), (3, 8)]
    g1, g2 = _grads(np.random.default_rng(11), shapes, np.float64, steps=2)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in shapes]
    init = [p.copy() for p in params]
    opt = fo.Muon(params, lr=0.05, gradient_accumulation_steps=2, global_clipnorm=0.5)
    opt.step(g1)
    assert all(np.array_equal(p, q) for p, q in zip(params, init))
    opt.step(g2)
    mean = [(a + b) / 2 for a, b in zip(g1, g2)]
    norm = np.sqrt(sum(np.sum(m * m) for m in mean))
    want, _ = ref_muon(init, [[m * (0.5 / max(norm, 0.5)) for m in mean]], lr=0.05)
    for p, w in zip(params, want):
        np.testing.assert_allclose(p, w, rtol=1e-11, atol=1e-12)
    assert opt.iterations == 1 and opt.state[params[0]]["step"] == 1


def test_two_groups_and_a_skipped_parameter():
    rng = np.random.default_rng(9)
    A, B, C = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal((2, 2))
    init = [A.copy(), B.copy(), C.copy()]
    opt = fo.Muon([{"params": [A, B]}, {"params": [C], "lr": 0.1, "nesterov": False}], lr=0.01)
    g = [rng.standard_normal(x.shape) for x in init]
    opt.step([g[0], None, g[2]])
    want_a, _ = ref_muon([init[0]], [[g[0]]], lr=0.01)
    want_c, _ = ref_muon([init[2]], [[g[2]]], lr=0.1, nesterov=False)
    np.testing.assert_allclose(A, want_a[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(B, init[1])
    np.testing.assert_allclose(C, want_c[0], rtol=1e-12, atol=1e-13)


def test_save_load_resume_bit_exact(tmp_path):
    shapes = [(6, 4), (4, 9)]
    grad_seq = _grads(np.random.default_rng(10), shapes, np.float32, steps=8)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = fo.Muon(params, lr=0.02)
    for grads in grad_seq[:4]:
        opt.step(grads)
    fo.save(tmp_path / "m.npz", opt, params=list(params))
    for grads in grad_seq[4:]:
        opt.step(grads)
    params2 = [np.zeros(s, np.float32) for s in shapes]
    opt2 = fo.Muon(params2, lr=0.5)
    fo.load(tmp_path / "m.npz", opt2, params=params2)
    assert opt2.param_groups[0]["lr"] == 0.02
    for grads in grad_seq[4:]:
        opt2.step(grads)
    for a, b in zip(params, params2):
        assert np.array_equal(a, b)
    assert np.array_equal(opt.state[params[0]]["momentum_buffer"], opt2.state[params2[0]]["momentum_buffer"])


def test_readme_snippet_runs():
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", text[text.index("### `Muon`"):], re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README Muon snippet", "exec"), scope)
    assert sorted(scope["muon"].state[scope["W1"]]) == ["momentum_buffer", "step"]
    assert scope["muon"].iterations == 3


def test_bench_muon_runs(capsys):
    """The timing tool runs (timings themselves are not asserted anywhere in tests/)."""
    pytest.importorskip("torch")
    from fusedoptim.bench.muon import main
    assert main(["--shapes", "8x4,4x8", "--repeat", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "8x4" in out and "4x8" in out and "whole step over 2 tensors" in out
    assert "Newton-Schulz over all 2 tensors" in out and "so Newton-Schulz is" in out
    # the thread counts each library was given (default: fusedoptim's own)
    assert f"threads {fo.get_num_threads()}: torch " in out and "NumPy's BLAS" in out


def test_bench_muon_workload_shapes():
    """--workload: the model's tensors of 2+ dimensions, flattened to (out, rest)."""
    from fusedoptim.bench.muon import workload_matrices
    from fusedoptim.bench.workloads import resnet18_shapes, gpt_block_shapes
    r = workload_matrices("resnet18")
    assert len(r) == 21 and r[0] == (64, 3 * 7 * 7) and r[-1] == (1000, 512)
    assert sum(a * b for a, b in r) == sum(int(np.prod(s)) for s in resnet18_shapes() if len(s) > 1)
    g = workload_matrices("gpt-4L-d256")
    assert g[:2] == [(2048, 256), (256, 256)] and len(g) == 2 + 4 * 4 and all(len(s) == 2 for s in g)
    assert len(g) == sum(1 for s in gpt_block_shapes() if len(s) == 2)
