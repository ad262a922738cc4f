"""Run with ``mpiexec -n 2 python -m mpi4py sync_zero.py OUTDIR``.

For every optimizer: synchronous DP (per-tensor list with tiny buckets, and flat arena)
and ZeRO-1 from rank-dependent initial parameters; all must equal, bit for bit, a
one-process run on the summed gradients, be close to one-process training on the
concatenated batch, and be bit-identical across ranks.  Then clipping and the non-finite
guard, state memory, and a sharded checkpoint (saved to OUTDIR/ckpt for the pytest side
to reload in one process).  Writes OUTDIR/result.json on rank 0."""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlp  # noqa: E402

import fusedoptim as fo  # noqa: E402
from fusedoptim.arena import ParamArena  # noqa: E402
from fusedoptim.distributed import (DistributedOptimizer, ZeroOptimizer, assert_synchronized,  # noqa: E402
                                    params_digest)

comm = MPI.COMM_WORLD
rank, world = comm.rank, comm.size
fo.set_num_threads(1)
outdir = sys.argv[1]
STEPS = 8  # enough for every optimizer's state to matter (momentum, bias corrections)
res = {"world": world, "cases": {}}


def flat_of(d):
    return np.concatenate([d[k].ravel() for k in mlp.KEYS])


# ------------------------------------------------------------ DP == ZeRO == reference
for name, kw in mlp.CASES:
    cls = getattr(fo, name)
    P1 = mlp.init(seed=rank + 1)                        # differs per rank: broadcast fixes it
    dp1 = DistributedOptimizer(cls([P1[k] for k in mlp.KEYS], **kw), comm, bucket_bytes=256)
    A2 = ParamArena(mlp.init(seed=rank + 1))
    dp2 = DistributedOptimizer(cls([A2.flat], **kw), comm)
    G2 = A2.grad_arena()
    A3 = ParamArena(mlp.init(seed=rank + 1))
    z = ZeroOptimizer(cls, A3, comm, **kw)
    G3 = A3.grad_arena()
    Pe = mlp.init(seed=1)                               # rank 0's start, one process
    oe = cls([Pe[k] for k in mlp.KEYS], **kw)
    Pc = mlp.init(seed=1)
    oc = cls([Pc[k] for k in mlp.KEYS], **kw)
    for t in range(STEPS):
        X, Y = mlp.batch(t)
        Xl, Yl = mlp.local(X, Y, rank, world)
        _, g = mlp.loss_and_grads(P1, Xl, Yl)
        dp1.step([g[k] for k in mlp.KEYS])
        mlp.loss_and_grads(A2.views, Xl, Yl, out=G2.views)
        dp2.step(G2)
        mlp.loss_and_grads(A3.views, Xl, Yl, out=G3.views)
        z.step(G3)
        ge = mlp.summed_grads(Pe, t, world)
        oe.step([ge[k] for k in mlp.KEYS], grad_scale=1.0 / world)
        _, gc = mlp.loss_and_grads(Pc, X, Y)             # the concatenated batch
        oc.step([gc[k] for k in mlp.KEYS])
    ref = flat_of(Pe)
    exact = {"dp_list": bool(np.array_equal(flat_of(P1), ref)),
             "dp_flat": bool(np.array_equal(flat_of(A2.views), ref)),
             "zero": bool(np.array_equal(flat_of(A3.views), ref))}
    close = float(np.max(np.abs(flat_of(P1) - flat_of(Pc)) / (1e-12 + np.abs(flat_of(Pc)))))
    for p in (P1, A2, A3):
        assert_synchronized(p if not isinstance(p, dict) else [p[k] for k in mlp.KEYS], comm)
    assert not A2.flat[A2.padding_mask()].any() and not A3.flat[A3.padding_mask()].any()
    res["cases"][name] = {"exact": exact, "max_rel_diff_concat": close, "iterations": z.iterations,
                          "moved": float(np.max(np.abs(ref - flat_of(mlp.init(seed=1)))))}

# ----------------------------------------------------------- float32, Adam: same story
f32 = {}
A = ParamArena(mlp.init(seed=rank + 1, dtype=np.float32)); G = A.grad_arena()
dp = DistributedOptimizer(fo.Adam([A.flat], lr=1e-2), comm)
B = ParamArena(mlp.init(seed=rank + 1, dtype=np.float32)); GB = B.grad_arena()
zf = ZeroOptimizer(fo.Adam, B, comm, lr=1e-2)
R = ParamArena(mlp.init(seed=1, dtype=np.float32)); GR = R.grad_arena()
ofr = fo.Adam([R.flat], lr=1e-2)
for t in range(STEPS):
    X, Y = (a.astype(np.float32) for a in mlp.batch(t))
    Xl, Yl = mlp.local(X, Y, rank, world)
    mlp.loss_and_grads(A.views, Xl, Yl, out=G.views)
    dp.step(G)
    mlp.loss_and_grads(B.views, Xl, Yl, out=GB.views)
    zf.step(GB)
    parts = [mlp.loss_and_grads(R.views, *mlp.local(X, Y, r, world))[1] for r in range(world)]
    R.flatten({k: parts[0][k] + parts[1][k] for k in mlp.KEYS} if world == 2 else parts[0], out=GR.flat)
    ofr.step([GR.flat], grad_scale=1.0 / world)
assert_synchronized(A, comm)
res["float32"] = {"dp": bool(np.array_equal(A.flat, R.flat)), "zero": bool(np.array_equal(B.flat, R.flat)),
                  "dtype": str(A.flat.dtype)}

# -------------------------------- optimizer state broadcast (rank 0 ahead, lr schedule)
P = ParamArena(mlp.init(seed=rank + 1))
o = fo.Adam([P.flat], lr=lambda it: 1e-2 / (1 + it), weight_decay=0.1 * (rank + 1))
if rank == 0:
    G0 = P.grad_arena()
    for t in range(2):
        mlp.loss_and_grads(P.views, *mlp.batch(t), out=G0.views)
        o.step([G0.flat])
d = DistributedOptimizer(o, comm)
st = o.state[P.flat]
res["bcast_state"] = comm.allgather([o.iterations, st["step"], callable(o.param_groups[0]["lr"]),
                                     o.param_groups[0]["weight_decay"],
                                     params_digest([st["exp_avg"], st["exp_avg_sq"], P.flat])])

# ---------------------------------------------------- clipping and the non-finite guard
CLIP = 0.05
opts = dict(lr=1e-2)
A_w = ParamArena(mlp.init(seed=rank + 1)); G_w = A_w.grad_arena()
dp_w = DistributedOptimizer(fo.Adam([A_w.flat], **opts), comm, global_clipnorm=CLIP, skip_nonfinite=True)
A_i = ParamArena(mlp.init(seed=rank + 1)); G_i = A_i.grad_arena()
dp_i = DistributedOptimizer(fo.Adam([A_i.flat], global_clipnorm=CLIP, skip_nonfinite=True, **opts), comm)
A_z = ParamArena(mlp.init(seed=rank + 1)); G_z = A_z.grad_arena()
z_c = ZeroOptimizer(fo.Adam, A_z, comm, global_clipnorm=CLIP, skip_nonfinite=True, **opts)
R = ParamArena(mlp.init(seed=1)); GR = R.grad_arena()
o_r = fo.Adam([R.flat], global_clipnorm=CLIP, skip_nonfinite=True, **opts)
NAN_AT = 3
norms = []
for t in range(STEPS):
    X, Y = mlp.batch(t)
    Xl, Yl = mlp.local(X, Y, rank, world)
    for A, G, o in ((A_w, G_w, dp_w), (A_i, G_i, dp_i), (A_z, G_z, z_c)):
        mlp.loss_and_grads(A.views, Xl, Yl, out=G.views)
        if t == NAN_AT and rank == world - 1:
            G["W2"][1, 2] = np.nan                      # one rank's gradient goes bad
        o.step(G)
    ge = mlp.summed_grads(R.views, t, world)
    R.flatten(ge, out=GR.flat)
    if t == NAN_AT:
        GR["W2"][1, 2] = np.nan
    o_r.step([GR.flat], grad_scale=1.0 / world)
    norms.append([dp_w.last_grad_norm, z_c.last_grad_norm, o_r.last_grad_norm])
for A in (A_w, A_i, A_z):
    assert_synchronized(A, comm)
counts = comm.allgather([dp_w.nonfinite_count, dp_i.nonfinite_count, z_c.nonfinite_count, o_r.nonfinite_count,
                         dp_w.iterations, z_c.iterations])
res["clip"] = {
    "dp_wrapper_eq_ref": bool(np.array_equal(A_w.flat, R.flat)),
    "dp_inner_eq_ref": bool(np.array_equal(A_i.flat, R.flat)),
    "zero_max_abs_diff": float(np.max(np.abs(A_z.flat - R.flat))),
    "counts": counts, "norms": norms, "clipped": bool(any(n[0] > CLIP for n in norms if np.isfinite(n[0]))),
}

# --------------------------------------------------------- state memory per rank
for label, numel, dtype in (("mlp", None, np.float64), ("1M", 1 << 20, np.float32)):
    arena = ParamArena(mlp.init(seed=1)) if numel is None else ParamArena({"w": np.zeros(numel, dtype)})
    zz = ZeroOptimizer(fo.Adam, arena, comm)
    dd = DistributedOptimizer(fo.Adam([np.array(arena.flat)]), comm)
    g = arena.grad_arena()
    zz.step(g)
    dd.step([g.flat])
    full = sum(v.nbytes for v in dd.optimizer.state[dd.optimizer.param_groups[0]["params"][0]].values()
               if isinstance(v, np.ndarray))
    res.setdefault("state_bytes", {})[label] = {"zero_per_rank": comm.allgather(zz.state_bytes()),
                                                "dp_per_rank": full, "numel": int(arena.flat.size)}

# ----------------------------------------------------------------- checkpoints
ckpt = os.path.join(outdir, "ckpt")
A = ParamArena(mlp.init(seed=rank + 1)); G = A.grad_arena()
zk = ZeroOptimizer(fo.Adam, A, comm, lr=1e-2, betas=(0.8, 0.99))
for t in range(5):
    mlp.loss_and_grads(A.views, *mlp.local(*mlp.batch(t), rank, world), out=G.views)
    zk.step(G)
zk.save_checkpoint(ckpt)
full = zk.consolidated_state_dict(root=0)
if rank == 0:
    np.savez(os.path.join(outdir, "consolidated.npz"), param=A.flat,
             **{k: v for k, v in full["state"][0].items() if isinstance(v, np.ndarray)})
B = ParamArena(mlp.init(seed=7)); GB = B.grad_arena()
zl = ZeroOptimizer(fo.Adam, B, comm, lr=0.5)                      # other start, other lr: all replaced
zl.load_checkpoint(ckpt)
assert zl.iterations == 5 and zl.param_groups[0]["lr"] == 1e-2 and zl.param_groups[0]["betas"] == (0.8, 0.99)
assert np.array_equal(A.flat, B.flat)
for t in range(5, 9):
    mlp.loss_and_grads(A.views, *mlp.local(*mlp.batch(t), rank, world), out=G.views)
    zk.step(G)
    mlp.loss_and_grads(B.views, *mlp.local(*mlp.batch(t), rank, world), out=GB.views)
    zl.step(GB)
res["ckpt_resume_exact"] = bool(np.array_equal(A.flat, B.flat))
if rank == 0:
    np.save(os.path.join(outdir, "after_resume.npy"), A.flat)
# a bad checkpoint directory raises the same error on every rank (no hang)
try:
    ZeroOptimizer(fo.SGD, ParamArena(mlp.init(seed=1)), comm, lr=0.1).load_checkpoint(ckpt)
    res["bad_load"] = None
except ValueError as e:
    res["bad_load"] = str(e)
res["digest"] = comm.allgather(params_digest(A))

if rank == 0:
    with open(os.path.join(outdir, "result.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("sync_zero: ok")
