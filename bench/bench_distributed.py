"""Communication vs computation of fusedoptim.distributed, per step, on N ranks.

    mpiexec -n 2 python bench/bench_distributed.py                  # 1M and 16M float32
    mpiexec -n 2 python bench/bench_distributed.py --sizes 1M --reps 20 --threads 1

For each size (float32 parameters in one flat ParamArena, Adam) it times, per step:

  step          opt.step([grad]) alone on the full vector (what one process does)
  allreduce     Allreduce(SUM, in place) of the flat gradient alone
  dp step       DistributedOptimizer.step: allreduce + step (the average fused in the step)
  reduce-scat   Reduce_scatter of the flat gradient alone (ZeRO's first half)
  allgather     Allgatherv of the parameters alone (ZeRO's second half)
  zero step     ZeroOptimizer.step: reduce-scatter + step of 1/world + allgather

Each timing is the slowest rank's time for one call (a barrier before each call),
median (and min) over ``--reps`` calls after one warm-up; "x step" = median / the
median of ``step``.  GB/s for the collectives is the
gradient's size / time (the algorithm bandwidth, as nccl-tests' "algbw").  Also prints
the optimizer state bytes held per rank by DP and by ZeRO-1.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

import fusedoptim as fo
from fusedoptim.arena import ParamArena
from fusedoptim.distributed import DistributedOptimizer, ZeroOptimizer


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KMG" else s) * mult)


def timed(comm, fn, reps: int):
    """(median, min) over reps of the slowest rank's seconds for one fn() call."""
    fn()  # warm-up: first-touch page faults, MPI buffer registration
    out = []
    for _ in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        out.append(comm.allreduce(dt, op=MPI.MAX))
    return statistics.median(out), min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,16M", help="comma-separated element counts (K/M suffixes)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1,
                    help="fusedoptim threads per rank (default 1: ranks x threads <= cores)")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, world = comm.rank, comm.size
    fo.set_num_threads(args.threads)
    rows = []
    for n in (parse_size(s) for s in args.sizes.split(",")):
        arena = ParamArena({"w": np.random.default_rng(0).standard_normal(n, dtype=np.float32)})
        grads = arena.grad_arena()
        grads.flat[...] = np.random.default_rng(1 + rank).standard_normal(arena.flat.size, dtype=np.float32)
        g = grads.flat
        mb = g.nbytes / 1e6
        t = {}

        plain = fo.Adam([arena.flat.copy()], lr=1e-6)
        t["step"] = timed(comm, lambda: plain.step([g]), args.reps)
        buf = g.copy()
        t["allreduce"] = timed(comm, lambda: comm.Allreduce(MPI.IN_PLACE, [buf, MPI.FLOAT], op=MPI.SUM),
                               args.reps)
        dp = DistributedOptimizer(fo.Adam([arena.flat], lr=1e-6), comm)
        gd = g.copy()  # step leaves the sum in gd: values double per call, harmless for Adam
        t["dp step"] = timed(comm, lambda: dp.step([gd]), args.reps)
        dp_state = sum(v.nbytes for v in dp.optimizer.state[arena.flat].values() if isinstance(v, np.ndarray))

        arena2 = ParamArena({"w": arena["w"].copy()})
        z = ZeroOptimizer(fo.Adam, arena2, comm, lr=1e-6)
        t["reduce-scat"] = timed(comm, lambda: z._reduce_scatter_sum(g), args.reps)
        t["allgather"] = timed(comm, z.allgather_params, args.reps)
        t["zero step"] = timed(comm, lambda: z.step(g), args.reps)
        z_state = comm.allgather(z.state_bytes())
        rows.append((n, mb, t, dp_state, z_state))
        z = arena2 = plain = buf = gd = dp = None  # free before the next size

    if rank:
        return
    print(f"# fusedoptim.distributed: {world} ranks, {args.threads} fusedoptim thread(s) per rank, Adam float32, "
          f"median of {args.reps} (slowest rank)")
    print(f"# MPI: {MPI.Get_library_version().splitlines()[0]}")
    hdr = f"{'params':>8} {'op':<12} {'median ms':>10} {'min ms':>9} {'GB/s':>7} {'x step':>7}"
    print(hdr)
    print("-" * len(hdr))
    for n, mb, t, dp_state, z_state in rows:
        label = f"{n / (1 << 20):g}M"
        for op, (sec, best) in t.items():
            bw = f"{mb / 1e3 / sec:7.2f}" if op in ("allreduce", "reduce-scat", "allgather") else f"{'':>7}"
            print(f"{label:>8} {op:<12} {sec * 1e3:10.2f} {best * 1e3:9.2f} {bw} {sec / t['step'][0]:7.2f}")
        print(f"{label:>8} state bytes per rank: DP {dp_state / 1e6:.1f} MB, ZeRO-1 "
              + ", ".join(f"{b / 1e6:.1f}" for b in z_state) + " MB")
        print()


if __name__ == "__main__":
    main()
