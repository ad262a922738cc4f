"""Run with ``mpiexec -n 2 python -m mpi4py names.py OUTFILE``.

Named parameters across ranks: rank 0 trains a named Adam alone (its state differs from
rank 1's), then ``broadcast_optimizer_state`` sends it to rank 1 (the named encoding);
both then take synchronous data-parallel steps with gradients given by name (the first
step leaves "b" out on both ranks).  Data parallelism reduces gradients by position, so
every rank builds its parameters in the same order, as the same model code does.
Rank 0 writes JSON to OUTFILE: each rank's parameters after the broadcast and after
the steps, by name."""
import json
import sys

import numpy as np
from mpi4py import MPI

import fusedoptim as fo
from fusedoptim.distributed import DistributedOptimizer, broadcast_optimizer_state

comm = MPI.COMM_WORLD
rank = comm.rank
fo.set_num_threads(1)
rng = np.random.default_rng(0)
init = {"W": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
params = {n: a.copy() for n, a in init.items()}
opt = fo.Adam(params, lr=0.05)
if rank == 0:
    for k in range(3):
        opt.step({"W": np.full((4, 3), 0.1 * (k + 1), np.float32), "b": np.full(3, -0.2, np.float32)})
    for n in params:
        params[n][...] = init[n]       # only the state differs between the ranks now
broadcast_optimizer_state(opt, comm)
state = {n: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
         for n, st in opt.state_dict()["state"].items()}
d = DistributedOptimizer(opt, comm)
g = np.random.default_rng([1, rank])
d.step({"W": g.standard_normal((4, 3)).astype(np.float32)})                  # no "b": no gradient
d.step({"b": g.standard_normal(3).astype(np.float32), "W": g.standard_normal((4, 3)).astype(np.float32)})
out = comm.gather({"state": state, "params": {n: p.tolist() for n, p in params.items()},
                   "iterations": opt.iterations}, root=0)
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
