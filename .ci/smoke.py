"""Smoke test of an installed fusedoptim (a wheel or an sdist install), run from outside the
source tree so that only the installed package can be imported.

One step of every optimizer class fusedoptim exports (found at run time from
``fusedoptim.__all__``, so optimizers added later are covered without a change here),
each checked against what the step must do to a parameter, then an ``fo.save`` /
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

here = os.path.dirname(os.path.abspath(__file__))
pkg = os.path.dirname(os.path.abspath(fo.__file__))
assert not pkg.startswith(os.path.dirname(here) + os.sep + "src"), f"imported the source tree ({pkg}), not an install"

optimizers = {name: getattr(fo, name) for name in fo.__all__
              if isinstance(getattr(fo, name), type) and issubclass(getattr(fo, name), fo.Optimizer)
              and getattr(fo, name) is not fo.Optimizer}
if os.environ.get("FO_EXPECT_OPENMP"):
    assert _kernels.HAVE_OPENMP, "this build has no OpenMP (FO_EXPECT_OPENMP is set)"
assert len(optimizers) >= 12, f"expected at least the 12 built-in optimizers, found {sorted(optimizers)}"

# Optimizers that a plain ``cls([W, b], lr=lr)`` and ``opt.step([gW, gb])`` cannot drive:
# name -> function(cls, W, b, gW, gb, lr) that builds one and takes one step, returning it.
SPECIAL = {}
# FTRL-proximal computes the weights from its accumulators (θ = (clip(z) - z)/(...)), not as
# θ - step, so its first step is a descent only from θ = 0: those start from zeros.
ZERO_START = {"Ftrl"}


def plain(cls, W, b, gW, gb, lr):
    opt = cls([W, b], lr=lr)
    opt.step([gW, gb])
    return opt


rng = np.random.default_rng(0)
for name, cls in optimizers.items():
    for dtype in (np.float32, np.float64):
        # a weight matrix and a bias vector, the shapes every optimizer must take
        W = rng.standard_normal((5, 3)).astype(dtype)
        b = rng.standard_normal(3).astype(dtype)
        if name in ZERO_START:
            W[...] = 0
            b[...] = 0
        W0, b0 = W.copy(), b.copy()
        gW = rng.standard_normal(W.shape).astype(dtype)
        gb = rng.standard_normal(b.shape).astype(dtype)
        lr = inspect.signature(cls).parameters["lr"].default
        lr = lr if isinstance(lr, float) and lr > 0 else 1e-2
        try:
            opt = SPECIAL.get(name, plain)(cls, W, b, gW, gb, lr)
        except Exception as e:
            raise AssertionError(f"{name} {np.dtype(dtype)}: one step failed ({type(e).__name__}: {e}); if it "
                                 "needs other arguments or another step signature, add it to SPECIAL in "
                                 ".ci/smoke.py") from e
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
