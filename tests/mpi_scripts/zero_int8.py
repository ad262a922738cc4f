"""Run with ``mpiexec -n 2 python -m mpi4py zero_int8.py OUTDIR``.

ZeRO-1 with 8-bit state (``state_dtype="int8"``, blocks of 128): the shards are cut at
block boundaries, so the pytest side can reshard the checkpoint to one rank (and
consolidate it) and continue with the same bits.  Every rank steps on the same gradient,
so the averaged gradient is exactly it (a sum of two equal float32 values halved).
Saves OUTDIR/ckpt after 5 steps (and OUTDIR/consolidated.npz, the arrays of
consolidated_state_dict), then continues 3 steps; rank 0 writes OUTDIR/result.json
(the shard bounds) and OUTDIR/after.npy (the parameters after the 8 steps)."""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

import fusedoptim as fo
from fusedoptim.arena import ParamArena
from fusedoptim.distributed import ZeroOptimizer

comm = MPI.COMM_WORLD
fo.set_num_threads(1)
outdir = sys.argv[1]
KW = dict(lr=1e-2, state_dtype="int8", block_size=128, min_8bit_size=64)


def arena():
    rng = np.random.default_rng(3)
    return ParamArena({"W": rng.standard_normal((64, 100)).astype(np.float32),
                       "b": rng.standard_normal(100).astype(np.float32)})


def grad(t, n):
    return np.random.default_rng(100 + t).standard_normal(n).astype(np.float32)


a = arena()
z = ZeroOptimizer(fo.Adam, a, comm, **KW)
g = a.grad_arena()
for t in range(8):
    if t == 5:
        z.save_checkpoint(os.path.join(outdir, "ckpt"))
        full = z.consolidated_state_dict()
        if comm.rank == 0:
            np.savez(os.path.join(outdir, "consolidated.npz"),
                     **{k: v for k, v in full["state"][0].items() if isinstance(v, np.ndarray)})
    g.flat[...] = grad(t, g.flat.size)
    z.step(g)
if comm.rank == 0:
    np.save(os.path.join(outdir, "after.npy"), a.flat)
    with open(os.path.join(outdir, "result.json"), "w") as f:
        json.dump({"bounds": [list(b) for b in z.bounds], "world": comm.size}, f)
