"""Low-precision optimizer state: float32 vs bfloat16 state vs bfloat16 parameters.

A least-squares problem ``min ||X w - y||^2`` trained with ``fusedoptim.Adam`` three
ways: float32 everything; ``state_dtype="bfloat16"`` (the moments in bfloat16, half the
state memory, float32 arithmetic, stochastic rounding on the write); and bfloat16
parameters (no float32 master copy) with bfloat16 gradients.  All three reach about
the same loss.

    python examples/lowprec_state.py
"""
import sys

import numpy as np

try:
    import ml_dtypes
except ImportError:
    sys.exit("lowprec_state.py needs ml_dtypes (pip install ml_dtypes)")

import fusedoptim as fo

rng = np.random.default_rng(0)
X = rng.standard_normal((512, 64)).astype(np.float32)
w_true = rng.standard_normal(64).astype(np.float32)
y = X @ w_true + 0.01 * rng.standard_normal(512).astype(np.float32)


def train(param_dtype, state_dtype, steps=400):
    w = np.zeros(64, np.float32).astype(param_dtype)
    opt = fo.Adam([w], lr=3e-2, state_dtype=state_dtype)
    for _ in range(steps):
        err = X @ w.astype(np.float32) - y
        g = (2.0 / len(y)) * (X.T @ err)
        opt.step([g.astype(param_dtype)])
    err = X @ w.astype(np.float32) - y
    state_bytes = sum(a.nbytes for a in opt.state[w].values() if isinstance(a, np.ndarray))
    return float(np.mean(err * err)), state_bytes


for label, pdt, sdt in (("float32 params, float32 state", np.float32, "float32"),
                        ("float32 params, bfloat16 state", np.float32, "bfloat16"),
                        ("bfloat16 params, float32 state", ml_dtypes.bfloat16, "float32")):
    loss, nbytes = train(pdt, sdt)
    print(f"{label:32s} final mse {loss:.5f}   state {nbytes} bytes")
