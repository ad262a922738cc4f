"""8-bit block-wise optimizer state: float32 vs ``state_dtype="int8"``.

A least-squares problem ``min ||X w - y||^2`` with 8192 weights, trained with
``fusedoptim.Adam`` with float32 state and with 8-bit state (uint8 codes plus one float32
absmax per 256 elements: about a quarter of the state memory).  Both reach about the same
loss; no extra package needed.

    python examples/int8_state.py
"""
import numpy as np

import fusedoptim as fo

rng = np.random.default_rng(0)
X = rng.standard_normal((1024, 8192)).astype(np.float32) / np.float32(64.0)
w_true = rng.standard_normal(8192).astype(np.float32)
y = X @ w_true + 0.01 * rng.standard_normal(1024).astype(np.float32)


def train(state_dtype, steps=300):
    w = np.zeros(8192, np.float32)
    opt = fo.Adam([w], lr=3e-2, state_dtype=state_dtype)
    for _ in range(steps):
        err = X @ w - y
        opt.step([(2.0 / len(y)) * (X.T @ err)])
    err = X @ w - y
    state_bytes = sum(a.nbytes for a in opt.state[w].values() if isinstance(a, np.ndarray))
    return float(np.mean(err * err)), state_bytes


base, base_bytes = train("float32")
for sdt in ("float32", "int8"):
    loss, nbytes = train(sdt)
    print(f"Adam, {sdt:7s} state: final mse {loss:.5f} (initial {float(np.mean(y * y)):.3f}), "
          f"state {nbytes} bytes ({nbytes / base_bytes:.2f}x float32)")
