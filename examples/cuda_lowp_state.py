"""bfloat16 and 8-bit block-wise optimizer state on the GPU (CuPy arrays), against the
same runs on the CPU.

A least-squares problem ``min ||X w - y||^2`` trained with ``fusedoptim.AdamW`` on float32
CuPy parameters, once per state dtype:

- ``state_dtype="bfloat16"``: the moments live on the device as uint16 arrays of bfloat16
  bits (CuPy has no bfloat16 dtype); ``state_dict()`` gives ``ml_dtypes.bfloat16`` host
  arrays;
- ``state_dtype="int8"``: each moment lives on the device as uint8 codes plus one float32
  absmax per block of 256 elements; ``state_dict()`` gives the same host arrays as a CPU
  optimizer (codes, absmax, the storage tag).

Each GPU run takes the CPU run's steps (same seed, same stochastic-rounding bits).

    python examples/cuda_lowp_state.py            # both
    python examples/cuda_lowp_state.py int8       # one of them
"""
import sys

import numpy as np

try:
    import cupy as cp
    import ml_dtypes  # noqa: F401  (state_dict's bfloat16 arrays)
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no CUDA device")
except Exception as e:      # ImportError, or CuPy without a driver / device
    sys.exit(f"cuda_lowp_state.py needs cupy, ml_dtypes and a CUDA device ({type(e).__name__}: {e})")

import fusedoptim as fo

rng = np.random.default_rng(0)
X = rng.standard_normal((1024, 8192)).astype(np.float32) / 64
y = X @ rng.standard_normal(8192).astype(np.float32)


def train(xp, state_dtype, steps=200):
    Xd, yd = xp.asarray(X), xp.asarray(y)
    w = xp.zeros(8192, xp.float32)          # >= min_8bit_size (4096): 8-bit state for int8
    opt = fo.AdamW([w], lr=1e-2, state_dtype=state_dtype, rounding="stochastic", seed=1)
    for _ in range(steps):
        r = Xd @ w - yd
        opt.step([(Xd.T @ r / len(yd)).astype(xp.float32)])
    loss = float(((Xd @ w - yd) ** 2).mean())
    return loss, opt


for state_dtype in sys.argv[1:] or ["bfloat16", "int8"]:
    gpu_loss, gpu_opt = train(cp, state_dtype)
    cpu_loss, _ = train(np, state_dtype)
    st = gpu_opt.state[gpu_opt.params[0]]
    sd = gpu_opt.state_dict()
    print(f"GPU {state_dtype} state: loss {gpu_loss:.3e} (exp_avg on the device: {st['exp_avg'].dtype}, "
          f"in state_dict: {sd['state'][0]['exp_avg'].dtype}; storage {sd.get('storage')})")
    print(f"CPU {state_dtype} state: loss {cpu_loss:.3e}")
