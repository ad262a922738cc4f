"""Run with ``mpiexec -n N python -m mpi4py param_server.py MODE OUTFILE``.

MODE train    (N=3) rank 0 serves Adam on a linear regression until the full-data loss
              is below TARGET; worker 2 first pushes a gradient made stale on purpose
              (max_staleness=2), then leaves with a goodbye; worker 1 trains until STOP.
MODE dead     (N=3) worker 2 pushes 3 gradients and exits without a goodbye; the server
              must log it lost after worker_timeout and finish training with worker 1.
MODE alldead  (N=2) the only worker exits without a goodbye: the server must raise
              WorkerLostError after worker_timeout instead of waiting forever.
MODE refuse   (N=3) worker 1's arena has the server's size but other shapes; worker 2
              pushes a gradient message shorter than its header says.  The server must
              refuse both (ERROR, named in its stats), apply nothing, and end with
              WorkerLostError; worker 1 raises ValueError naming both layouts.
Rank 0 writes the server's stats (JSON) to OUTFILE."""
import json
import sys
import time

import numpy as np
from mpi4py import MPI

import fusedoptim as fo
from fusedoptim.arena import ParamArena
from fusedoptim.distributed import ParameterServer, PSWorker, WorkerLostError, run_worker
from fusedoptim.distributed.param_server import PUSHPULL, TAG_DATA, TAG_REPLY, TAG_REQ

comm = MPI.COMM_WORLD
side = comm.Dup()  # test-only coordination between workers, never seen by the server
rank = comm.rank
mode, outfile = sys.argv[1], sys.argv[2]
fo.set_num_threads(1)
TARGET = 1e-3
TIMEOUT = 1.0

rng = np.random.default_rng(0)
X = rng.standard_normal((512, 8))
w_true = rng.standard_normal(8)
y = X @ w_true + 0.01 * rng.standard_normal(512)
arena = ParamArena({"w": np.zeros(8), "b": np.zeros(1)})


def full_loss():
    r = X @ arena["w"] + arena["b"] - y
    return 0.5 * float(np.mean(r * r))


if rank == 0:
    # per-tensor optimizer in one mode, flat in the others: both bindings are exercised
    opt = fo.Adam(arena.params() if mode == "dead" else [arena.flat], lr=0.05)
    ps = ParameterServer(opt, arena, comm, max_staleness=2, worker_timeout=TIMEOUT)
    t0 = time.monotonic()
    try:
        stats = ps.serve(stop_when=lambda s: full_loss() < TARGET, time_limit=30)
    except WorkerLostError as e:
        stats = dict(ps.stats, error=str(e))
    stats["initial_loss"] = 0.5 * float(np.mean(y * y))
    stats["final_loss"] = full_loss()
    stats["params_untouched"] = not arena.flat.any()
    stats["wall"] = time.monotonic() - t0
    with open(outfile, "w") as f:
        json.dump(stats, f)
    sys.exit(0)

g = arena.grad_arena()
local = np.random.default_rng(rank)
slow = 0.0


def compute():
    idx = local.integers(0, len(X), 32)
    res = X[idx] @ arena["w"] + arena["b"] - y[idx]
    g["w"][...] = X[idx].T @ res / len(idx)
    g["b"][...] = res.mean()
    if slow:
        time.sleep(slow)
    return 0.5 * float(np.mean(res * res))


info = {}
if mode == "refuse" and rank == 1:
    other = ParamArena({"w": np.zeros((2, 4)), "b": np.zeros(1)})  # 9 float64 too, other shapes
    try:
        PSWorker(other, comm, timeout=30).pull()
    except ValueError as e:
        info["error"] = str(e)
    print(f"worker {rank}: {info}", flush=True)
    sys.exit(0)
worker = PSWorker(arena, comm, timeout=30)
if mode == "refuse":
    worker.pull()
    # by hand, as a foreign client might: a valid header (layout 0: a flat array of the
    # server's size), then a gradient of only 5 float64
    comm.Send(np.array([PUSHPULL, worker.version, 1.0, arena.flat.size, 8, 0]), dest=0, tag=TAG_REQ)
    comm.Send(np.ones(5), dest=0, tag=TAG_DATA)
    reply = np.empty(5)
    comm.Recv(reply, source=0, tag=TAG_REPLY)
    info["reply_status"] = float(reply[0])
elif mode == "train":
    if rank == 2:
        worker.pull()
        compute()
        side.send("pulled", dest=1)
        side.recv(source=1)                 # worker 1 has pushed 5 updates meanwhile
        info["stale_push"] = worker.push(g)  # computed 5 versions ago > max_staleness=2
        info["run"] = run_worker(worker, compute, g, max_steps=3)   # then leaves with BYE
        side.send("done", dest=1)
    else:
        side.recv(source=2)
        worker.pull()
        for _ in range(5):
            compute()
            assert worker.push(g) == "ok"
        side.send("go", dest=2)
        side.recv(source=2)
        info["run"] = run_worker(worker, compute, g)
elif mode == "dead" and rank == 2 or mode == "alldead":
    worker.pull()
    for _ in range(3):
        compute()
        worker.push(g)
    sys.exit(0)                                # no goodbye
else:
    slow = 0.02                                # ~1.7 s of training: well past the timeout
    info["run"] = run_worker(worker, compute, g)
print(f"worker {rank}: {info}", flush=True)
