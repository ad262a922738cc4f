"""Ranks that disagree, skip a step or die.  Run with ``mpiexec -n 2``:

MODE agree OUTFILE   (``python -m mpi4py``) every way the ranks can disagree in a step of
                     DistributedOptimizer and ZeroOptimizer; each must raise the same
                     RanksDisagreeError on both ranks, after which a correct step still
                     works and the ranks stay bit-identical.  Rank 0 writes OUTFILE (JSON).
MODE skip dp|zero    (plain ``python``) rank 1 skips one of 4 steps and then waits in a
                     Barrier: rank 0's last step raises CollectiveTimeoutError after
                     TIMEOUT s and the excepthook aborts the job.
MODE raise           (plain ``python``) rank 1 raises while rank 0 waits in a step with no
                     timeout: the excepthook's MPI_Abort ends both.
"""
import json
import sys

import numpy as np
from mpi4py import MPI

import fusedoptim as fo
from fusedoptim.arena import ParamArena
from fusedoptim.distributed import DistributedOptimizer, RanksDisagreeError, ZeroOptimizer, assert_synchronized

comm = MPI.COMM_WORLD
rank = comm.rank
fo.set_num_threads(1)
mode = sys.argv[1]
TIMEOUT = 3.0


def new_dp(shapes=((3,), (4,)), **kw):
    params = [np.full(s, 1.0) for s in shapes]
    return params, DistributedOptimizer(fo.SGD(params, lr=0.1), comm, **kw)


def grads_for(params):
    return [np.full(p.shape, 1.0 + rank) for p in params]


def error_of(fn):
    """The RanksDisagreeError message ``fn`` raises on this rank (None if it did not)."""
    try:
        fn()
    except RanksDisagreeError as e:
        return str(e)
    return None


def dp_cases():
    p, d = new_dp()
    g = grads_for(p)
    yield "presence", p, d, lambda: d.step([g[0], None] if rank == 0 else [None, g[1]])
    bad = np.zeros(5) if rank == 1 else g[1]
    yield "shape", p, d, lambda: d.step([g[0], bad])
    bad32 = g[1].astype(np.float32) if rank == 1 else g[1]
    yield "dtype", p, d, lambda: d.step([g[0], bad32])
    yield "count", p, d, lambda: d.step(g if rank == 0 else g[:1])
    yield "operation", p, d, lambda: d.step(g) if rank == 0 else d.allreduce(g)
    # parameters that differ between ranks (no broadcast): each rank's gradients fit its own
    p2, d2 = new_dp(((3,), (4,) if rank == 0 else (2, 2)), broadcast=False)
    yield "param_shapes", p2, d2, lambda: d2.step(grads_for(p2))

    def lr():
        d.param_groups[0]["lr"] = 0.1 if rank == 0 else 0.2
        try:
            d.step(g)
        finally:
            d.param_groups[0]["lr"] = 0.1
    yield "hyperparameter", p, d, lr

    def stepped_alone():  # rank 1 steps the wrapped optimizer outside the wrapper
        if rank == 1:
            d.optimizer.step(grads_for(p))
        d.step(g)
    yield "iterations", p, d, stepped_alone


def zero_cases():
    arena = ParamArena({"w": np.ones(6), "b": np.ones(2)})
    z = ZeroOptimizer(fo.Adam, arena, comm, lr=1e-2)
    g = arena.grad_arena()
    g.flat[...] = 1.0 + rank
    wrong = np.zeros(7) if rank == 1 else g.flat
    yield "zero_shape", arena.flat, z, lambda: z.step(wrong)

    def lr():
        z.param_groups[0]["lr"] = 1e-2 if rank == 0 else 2e-2
        try:
            z.step(g)
        finally:
            z.param_groups[0]["lr"] = 1e-2
    yield "zero_hyperparameter", arena.flat, z, lr
    yield "zero_operation", arena.flat, z, lambda: z.step(g) if rank == 0 else z.reduce_scatter(g)


def agree(outfile):
    out = {}
    for name, params, opt, fn in [*dp_cases(), *zero_cases()]:
        before = [np.copy(a) for a in (params if isinstance(params, list) else [params])]
        msgs = comm.gather(error_of(fn), root=0)
        unchanged = all(np.array_equal(a, b) for a, b in zip(before, params if isinstance(params, list) else [params]))
        out[name] = {"messages": msgs, "unchanged": comm.gather(unchanged, root=0)}
    # the failed steps left the communicator usable: a correct step works and agrees
    p, d = new_dp()
    d.step(grads_for(p))
    d.step(grads_for(p))
    out["after"] = {"digest": comm.gather(assert_synchronized(p, comm), root=0),
                    "iterations": d.iterations, "values": [a.tolist() for a in p]}
    if rank == 0:
        with open(outfile, "w") as f:
            json.dump(out, f, indent=1)


def skip(kind):
    if kind == "dp":
        p, opt = new_dp(timeout=TIMEOUT)
        grads = grads_for(p)
    else:
        arena = ParamArena({"w": np.ones(6), "b": np.ones(2)})
        opt = ZeroOptimizer(fo.Adam, arena, comm, lr=1e-2, timeout=TIMEOUT)
        grads = arena.grad_arena()
    for step in range(4):
        if rank == 1 and step == 2:
            continue  # the bug: this rank skips a step
        opt.step(grads)
    print(f"rank {rank}: done stepping", flush=True)
    comm.Barrier()  # rank 1 waits here; rank 0 is still in its 4th step


def raise_on_one_rank():
    p, d = new_dp(timeout=None)
    d.step(grads_for(p))
    if rank == 1:
        raise RuntimeError("rank 1 fails between steps")
    d.step(grads_for(p))  # rank 0 waits here for ever, but for the abort


if mode == "agree":
    agree(sys.argv[2])
elif mode == "skip":
    skip(sys.argv[2])
elif mode == "raise":
    raise_on_one_rank()
else:
    raise SystemExit(f"unknown mode {mode!r}")
