"""Where the host time of a GPU step goes: Adam over N small CuPy tensors, timed with the
device synchronized, then profiled with cProfile (top functions by own time).

    python bench/gpu_step_profile.py [--tensors 100] [--size 10240] [--steps 300]
"""
import argparse
import cProfile
import pstats
import time

import cupy as cp

import fusedoptim as fo

ap = argparse.ArgumentParser()
ap.add_argument("--tensors", type=int, default=100)
ap.add_argument("--size", type=int, default=10240)
ap.add_argument("--steps", type=int, default=300)
a = ap.parse_args()
ps = [cp.random.standard_normal(a.size, dtype=cp.float32) for _ in range(a.tensors)]
gs = [cp.random.standard_normal(a.size, dtype=cp.float32) for _ in range(a.tensors)]
opt = fo.Adam(ps, lr=1e-3)
for _ in range(20):
    opt.step(gs)
cp.cuda.Device().synchronize()
t = time.perf_counter()
for _ in range(a.steps):
    opt.step(gs)
cp.cuda.Device().synchronize()
print(f"{a.tensors} tensors x {a.size}: {(time.perf_counter() - t) / a.steps * 1e6:.1f} us per step (synchronized)")
pr = cProfile.Profile()
pr.enable()
for _ in range(a.steps):
    opt.step(gs)
cp.cuda.Device().synchronize()
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(14)
