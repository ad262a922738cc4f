"""8-bit block-wise optimizer state on the GPU (CuPy arrays), against the same run on the CPU.

A least-squares problem ``min ||X w - y||^2`` trained with ``fusedoptim.AdamW`` on float32
CuPy parameters with ``state_dtype="int8"``: each moment lives on the device as uint8 codes
plus one float32 absmax per block of 256 elements, ``state_dict()`` gives the same host
arrays as a CPU optimizer (codes, absmax, the storage tag), and the GPU run takes the CPU
run's steps (same seed, same codes).

    python examples/cuda_int8_state.py
"""
import sys

import numpy as np

try:
    import cupy as cp
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no CUDA device")
except Exception as e:      # ImportError, or CuPy without a driver / device
    sys.exit(f"cuda_int8_state.py needs cupy and a CUDA device ({type(e).__name__}: {e})")

import fusedoptim as fo

rng = np.random.default_rng(0)
X = rng.standard_normal((1024, 8192)).astype(np.float32) / 64
y = X @ rng.standard_normal(8192).astype(np.float32)


def train(xp, steps=200):
    Xd, yd = xp.asarray(X), xp.asarray(y)
    w = xp.zeros(8192, xp.float32)          # >= min_8bit_size (4096): 8-bit state
    opt = fo.AdamW([w], lr=1e-2, state_dtype="int8", rounding="stochastic", seed=1)
    for _ in range(steps):
        r = Xd @ w - yd
        opt.step([(Xd.T @ r / len(yd)).astype(xp.float32)])
    loss = float(((Xd @ w - yd) ** 2).mean())
    return loss, opt


gpu_loss, gpu_opt = train(cp)
cpu_loss, _ = train(np)
st = gpu_opt.state[gpu_opt.params[0]]
sd = gpu_opt.state_dict()
print(f"GPU int8 state: loss {gpu_loss:.3e} (exp_avg on the device: {st['exp_avg'].dtype}, "
      f"absmax {st['exp_avg_absmax'].shape}; state_dict storage {sd['storage']})")
print(f"CPU int8 state: loss {cpu_loss:.3e}")
