"""fusedoptim against torch.optim itself: same case table (every optimizer torch.optim has,
so all but Lion and those test_collection_oracles.py covers), same gradients, 200 steps.

torch runs its default CPU path (single-tensor loops; foreach is off on CPU, and we pass
foreach=False to make that explicit), so both sides do element-wise float32/float64
arithmetic with Python-float per-step scalars.  Why 200 steps: see test_optimizers.py.

Every state entry torch keeps is compared, under torch's name; fusedoptim additionally
counts ``step`` for SGD, which torch does not.
"""
import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cases import (CASES, RICH_CASES, SHAPES, build, case_id, case_params, draw_hparams, grad_stream,  # noqa: E402
                   make_params, seed_for)
from reference import TOL  # noqa: E402

STEPS = 200
# optimizers torch.optim does not have: tested against reference.py only
NO_TORCH = ("Lion", "AdaBelief", "Yogi", "Adan", "Ftrl", "ScheduleFreeAdamW", "ScheduleFreeSGD")
TORCH_CASES = [c for c in CASES if c[0] not in NO_TORCH]
TORCH_RICH_CASES = [c for c in RICH_CASES if c[0] not in NO_TORCH]
SHAPES = SHAPES[:4]     # sizes 0, 1, 7, 4099; torch's per-tensor Python loop is the cost here
SCALAR_STATE = ("step", "mu_product", "eta", "mu")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """torch's element-wise CPU results do not depend on its thread count; one thread keeps
    it from competing with the other test processes on this small machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@contextlib.contextmanager
def torch_default_dtype(dtype):
    """torch keeps each parameter's ``step`` and NAdam's ``mu_product`` as tensors of the
    *default* dtype (torch.optim.optimizer._get_scalar_dtype), whatever the parameter's
    dtype.  fusedoptim keeps them as Python int/float (double).  In float64 runs a float32
    mu_product would put a 6e-8 relative error into NAdam's step size, far above the 1e-12
    tolerance, so the float64 torch run uses float64 as its default dtype (restored after)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class TorchRun:
    def __init__(self, name, params, hp, dtype):
        self.dtype = dtype
        with torch_default_dtype(dtype):
            self.params = [torch.tensor(np.array(p)) for p in params]
            self.opt = getattr(torch.optim, name)(self.params, foreach=False, **hp)

    def step(self, grads):
        with torch_default_dtype(self.dtype):
            for t, g in zip(self.params, grads):
                t.grad = None if g is None else torch.from_numpy(np.array(g))
            self.opt.step()

    def state(self, i):
        st = self.opt.state.get(self.params[i])
        if not st:
            return None
        return {k: (v.item() if k in SCALAR_STATE else v.numpy()) for k, v in st.items()}


def assert_matches_torch(name, params, opt, tr: TorchRun, *, rtol, atol):
    for i, p in enumerate(params):
        want = tr.params[i].numpy()
        assert np.isfinite(want).all()
        np.testing.assert_allclose(p, want, rtol=rtol, atol=atol, err_msg=f"{name}: params[{i}]")
        ts, st = tr.state(i), opt.state.get(p)
        if ts is None:
            assert not st or set(st) == {"step"}, f"{name}: params[{i}]: torch keeps no state, we keep {sorted(st)}"
            continue
        ours = set(st) - ({"step"} if name == "SGD" else set())
        assert ours == set(ts), f"{name}: params[{i}] state keys {sorted(st)} vs torch's {sorted(ts)}"
        for k, v in ts.items():
            if k == "step":
                assert st[k] == v, f"{name}: params[{i}] step {st[k]} vs torch's {v}"
            elif k in SCALAR_STATE:
                # NAdam's mu_product.  In float32 runs torch keeps it in float32 (see
                # torch_default_dtype): each of its t products rounds (relative error up to
                # t * 2**-24 ~ 1.2e-5 after 200 steps) and it underflows below float32's
                # smallest normal number within ~130 steps (mu_t ~ beta1 / 2), where
                # fusedoptim's double keeps going (1e-147).  Both give 1 - mu_product == 1
                # then, so the update is unaffected; compare down to float32's range only.
                if p.dtype == np.float32:
                    np.testing.assert_allclose(st[k], v, rtol=2e-5, atol=np.finfo(np.float32).tiny,
                                               err_msg=f"{name}: params[{i}] {k}")
                else:
                    np.testing.assert_allclose(st[k], v, rtol=1e-14, err_msg=f"{name}: params[{i}] {k}")
            else:
                np.testing.assert_allclose(st[k], v, rtol=rtol, atol=atol, err_msg=f"{name}: params[{i}] {k}")


# Cases that cannot meet the tolerance for a reason outside fusedoptim's control, reported
# to the lead; strict, so a fix (or a change of tolerance policy) has to remove the entry.
KNOWN_GAPS = {
    ("float32", "RMSprop-centered-momentum=0.9-weight_decay=0.01"):
        "float32 rounding at the trajectory's scale, not a bug: momentum 0.95 makes |buffer| ~20 "
        "and params wander to |theta| ~23 (ulp 1.9e-6); fusedoptim and torch both end ~2.4e-5 "
        "(abs) from the float64 trajectory, so an element that comes back near 0 (-0.0296) can "
        "differ by 1.6e-6 > atol 1e-6.  The two round differently because torch 2.13's CPU "
        "add(alpha=)/addcmul/lerp kernels use FMA (one rounding) and fusedoptim's rules do not "
        "(-ffp-contract=off).",
}


@pytest.mark.parametrize("name,kwargs", case_params(TORCH_CASES))
def test_matches_torch(name, kwargs, dtype, request):
    gap = KNOWN_GAPS.get((dtype.name, case_id(name, kwargs)))
    if gap:
        request.applymarker(pytest.mark.xfail(strict=True, reason=gap))
    seed = seed_for(name, kwargs, dtype.name, "torch")
    hp = draw_hparams(name, kwargs, seed)
    params = make_params(seed, SHAPES, dtype)
    tr = TorchRun(name, params, hp, dtype)
    opt = build(name, params, **hp)
    for grads in grad_stream(seed + 1, SHAPES, dtype, STEPS):
        opt.step(grads)
        tr.step(grads)
    assert_matches_torch(name, params, opt, tr, **TOL[dtype])


@pytest.mark.parametrize("name,kwargs", case_params(TORCH_RICH_CASES))
def test_matches_torch_with_skipped_grads_and_lr_changes(name, kwargs, dtype):
    """None gradients (torch: p.grad is None) give parameters different step counts; lr
    changes between steps reach both through param_groups."""
    seed = seed_for(name, kwargs, dtype.name, "torch-skip")
    hp = draw_hparams(name, kwargs, seed)
    params = make_params(seed, SHAPES, dtype)
    tr = TorchRun(name, params, hp, dtype)
    opt = build(name, params, **hp)
    rng = np.random.default_rng(seed)
    for t, grads in enumerate(grad_stream(seed + 1, SHAPES, dtype, 60)):
        grads = [g if rng.random() < 0.7 else None for g in grads]
        if t % 10 == 9:
            lr = hp["lr"] * float(rng.uniform(0.1, 2.0))
            opt.param_groups[0]["lr"] = lr
            tr.opt.param_groups[0]["lr"] = lr
        opt.step(grads)
        tr.step(grads)
    assert_matches_torch(name, params, opt, tr, **TOL[dtype])


@pytest.mark.parametrize("name,kwargs", case_params(TORCH_RICH_CASES))
def test_load_torch_state_dict(name, kwargs):
    """A torch state_dict converted to numpy loads into fusedoptim (documented in
    Optimizer.load_state_dict) and both continue identically."""
    dtype = np.dtype(np.float64)
    seed = seed_for(name, kwargs, "torch-sd")
    hp = draw_hparams(name, kwargs, seed)
    params = make_params(seed, SHAPES, dtype)
    tr = TorchRun(name, params, hp, dtype)
    stream = list(grad_stream(seed + 1, SHAPES, dtype, 20))
    for grads in stream[:10]:
        tr.step(grads)
    sd = tr.opt.state_dict()
    mine = [t.detach().numpy().copy() for t in tr.params]
    opt = build(name, mine, **hp)
    converted = {   # tensors -> numpy; torch-only group options (foreach, fused, ...) dropped
        "state": {i: {k: (v.item() if k in SCALAR_STATE else v.numpy().copy()) for k, v in st.items()}
                  for i, st in sd["state"].items()},
        "param_groups": [{k: v for k, v in g.items() if k in opt.defaults or k == "params"}
                         for g in sd["param_groups"]],
    }
    opt.load_state_dict(converted)
    for grads in stream[10:]:
        opt.step(grads)
        tr.step(grads)
    assert_matches_torch(name, mine, opt, tr, **TOL[dtype])
