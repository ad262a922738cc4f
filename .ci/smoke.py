"""Smoke test of an installed fusedoptim (a wheel or an sdist install), run from outside the
source tree so that only the installed package can be imported.

One step of every optimizer class fusedoptim exports (found at run time from the registry
``fusedoptim.optim.registry``, so optimizers added later are covered without a change here;
each driven as its registry entry says: gradients, a closure, a wrapped optimizer, 2-D
weights with an AdamW for the bias), each checked against what the step must do to a parameter, then an ``fo.save`` /
``fo.load`` round trip that resumes bit for bit.  Needs NumPy only.  Exit code 0 or an
AssertionError naming the optimizer.

    python .ci/smoke.py            # from any directory but the repository root
"""
import inspect
import os
import sys
import tempfile

import numpy as np

import fusedoptim as fo
from fusedoptim import _kernels
from fusedoptim.optim import registry

here = os.path.dirname(os.path.abspath(__file__))
pkg = os.path.dirname(os.path.abspath(fo.__file__))
assert not pkg.startswith(os.path.dirname(here) + os.sep + "src"), f"imported the source tree ({pkg}), not an install"

entries = registry.entries()
optimizers = {name: e.cls for name, e in entries.items()}
if os.environ.get("FO_EXPECT_OPENMP"):
    assert _kernels.HAVE_OPENMP, "this build has no OpenMP (FO_EXPECT_OPENMP is set)"
assert len(optimizers) >= 12, f"expected at least the 12 built-in optimizers, found {sorted(optimizers)}"

# An optimizer whose weights are computed from its state (registry: weights_from_state; e.g.
# FTRL-proximal, θ = (clip(z) - z)/(...), not θ - step) makes a first-step descent only from
# θ = 0: those start from zeros.


def plain(cls, W, b, gW, gb, lr):
    opt = cls([W, b], lr=lr)
    opt.step([gW, gb])
    return opt


def matrices_only(cls, W, b, gW, gb, lr):
    """2-D parameters only (Muon): W with it, b with an AdamW, as a user splits them."""
    opt, rest = cls([W], lr=lr), fo.AdamW([b], lr=lr)
    opt.step([gW])
    rest.step([gb])
    return opt


def closure(cls, W, b, gW, gb, lr):
    """step(closure), the closure returning (loss, grads) of the linear loss <g, θ>."""
    opt = cls([W, b], lr=lr, max_iter=1)
    opt.step(lambda: (float(np.sum(gW * W) + np.sum(gb * b)), [gW, gb]))
    opt.iterations = opt.state[0]["n_iter"]
    return opt


def wrapper(cls, W, b, gW, gb, lr):
    """Around an AdamW, synchronising after every step (k=1)."""
    opt = cls(fo.AdamW([W, b], lr=1e-2), k=1)
    opt.step([gW, gb])
    return opt


DRIVE = {"grads": plain, "closure": closure, "wrapper": wrapper}


rng = np.random.default_rng(0)
for name, cls in optimizers.items():
    for dtype in (np.float32, np.float64):
        # a weight matrix and a bias vector, the shapes every optimizer must take
        W = rng.standard_normal((5, 3)).astype(dtype)
        b = rng.standard_normal(3).astype(dtype)
        if entries[name].weights_from_state:
            W[...] = 0
            b[...] = 0
        W0, b0 = W.copy(), b.copy()
        gW = rng.standard_normal(W.shape).astype(dtype)
        gb = rng.standard_normal(b.shape).astype(dtype)
        lr = inspect.signature(cls).parameters.get("lr")
        lr = lr.default if lr is not None and isinstance(lr.default, float) and lr.default > 0 else 1e-2
        drive = matrices_only if entries[name].matrix_only else DRIVE[entries[name].step_kind]
        try:
            opt = drive(cls, W, b, gW, gb, lr)
        except Exception as e:
            raise AssertionError(f"{name} {np.dtype(dtype)}: one step failed ({type(e).__name__}: {e}); if it "
                                 "needs other arguments or another step signature, say so in its registry "
                                 "entry (fusedoptim.optim.registry)") from e
        for p, p0, g in ((W, W0, gW), (b, b0, gb)):
            assert np.all(np.isfinite(p)), f"{name} {np.dtype(dtype)}: non-finite parameter after one step"
            assert not np.array_equal(p, p0), f"{name} {np.dtype(dtype)}: one step left the parameter unchanged"
            # every built-in rule moves a parameter against its gradient on the first step
            # (from zero state, no weight decay): the step's direction agrees with -g in sum
            assert np.sum((p - p0).astype(np.float64) * g) < 0, f"{name} {np.dtype(dtype)}: step is not a descent"
        assert opt.iterations == 1, (name, opt.iterations)
        if name == "SGD":                                   # the one rule simple enough to restate here
            np.testing.assert_allclose(W, W0.astype(np.float64) - lr * gW, rtol=1e-6, atol=1e-7)
print(f"one step: OK for {len(optimizers)} optimizers x float32/float64 ({', '.join(optimizers)})")

# save / load: 3 steps + save + load into fresh objects + 3 steps == 6 uninterrupted steps
grads = [[rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
         for _ in range(6)]


def build():
    params = {"W": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    return params, fo.AdamW(list(params.values()), lr=1e-2, amsgrad=True)


ref, opt = build()
for g in grads:
    opt.step(g)
params, opt = build()
for g in grads[:3]:
    opt.step(g)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ckpt.npz")
    fo.save(path, opt, params=params, extra={"epoch": 3})
    params, opt = build()
    out = fo.load(path, opt, params=params)
assert out["extra"]["epoch"] == 3 and opt.iterations == 3
for g in grads[3:]:
    opt.step(g)
for k in ref:
    assert np.array_equal(params[k], ref[k]), f"save/load: {k} differs from the uninterrupted run"
print("save/load: resumed bit for bit")
print(f"fusedoptim {fo.__version__} from {pkg}: OpenMP {'yes' if _kernels.HAVE_OPENMP else 'no'}, "
      f"{fo.get_num_threads()} threads; python {sys.version.split()[0]}, numpy {np.__version__}")
