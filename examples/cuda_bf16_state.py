"""bfloat16 optimizer state on the GPU (CuPy arrays), against the same run on the CPU.

A least-squares problem ``min ||X w - y||^2`` trained with ``fusedoptim.AdamW`` on
float32 CuPy parameters with ``state_dtype="bfloat16"``: the moments live on the device as
uint16 arrays of bfloat16 bits (CuPy has no bfloat16 dtype), ``state_dict()`` gives
``ml_dtypes.bfloat16`` host arrays, and the run tracks the same run on NumPy arrays (same
seed, same stochastic-rounding bits).

    python examples/cuda_bf16_state.py
"""
import sys

import numpy as np

try:
    import cupy as cp
    import ml_dtypes  # noqa: F401  (state_dict's bfloat16 arrays)
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no CUDA device")
except Exception as e:      # ImportError, or CuPy without a driver / device
    sys.exit(f"cuda_bf16_state.py needs cupy, ml_dtypes and a CUDA device ({type(e).__name__}: {e})")

import fusedoptim as fo

rng = np.random.default_rng(0)
X = rng.standard_normal((512, 64)).astype(np.float32)
y = X @ rng.standard_normal(64).astype(np.float32)


def train(xp, steps=300):
    Xd, yd = xp.asarray(X), xp.asarray(y)
    w = xp.zeros(64, xp.float32)
    opt = fo.AdamW([w], lr=3e-2, state_dtype="bfloat16", seed=1)
    for _ in range(steps):
        r = Xd @ w - yd
        opt.step([(Xd.T @ r / len(yd)).astype(xp.float32)])
    loss = float(((Xd @ w - yd) ** 2).mean())
    return loss, opt


gpu_loss, gpu_opt = train(cp)
cpu_loss, _ = train(np)
m = gpu_opt.state_dict()["state"][0]["exp_avg"]
print(f"GPU bfloat16 state: loss {gpu_loss:.3e} (exp_avg on the device: "
      f"{gpu_opt.state[gpu_opt.params[0]]['exp_avg'].dtype}, in state_dict: {m.dtype})")
print(f"CPU bfloat16 state: loss {cpu_loss:.3e}")
