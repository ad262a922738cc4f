"""fusedoptim.distributed: sync data parallel, ZeRO-1 and the parameter server.

Multi-rank behaviour runs in ``mpiexec`` subprocesses (scripts in tests/mpi_scripts,
mostly under ``python -m mpi4py``; the failure tests launch plain ``python`` to show the
package's own excepthook ends the job), each with a timeout; the pytest side checks what
they report and recomputes references in one process.  World-size-1 behaviour and
validation run in-process on COMM_SELF.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.arena import ParamArena
from fusedoptim.distributed import consolidate_checkpoint, shard_bounds

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "mpi_scripts")
_spec = importlib.util.spec_from_file_location("fusedoptim_test_mlp", os.path.join(SCRIPTS, "mlp.py"))
mlp = importlib.util.module_from_spec(_spec)  # the scripts' model, without touching sys.path
_spec.loader.exec_module(mlp)

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed (pip install mpi4py mpich)")
needs_mpiexec = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                                   reason="mpi4py or mpiexec missing (pip install mpi4py mpich gives both)")
TIMEOUT = 90  # seconds per mpiexec run; each takes about 1-2 s


def run_mpi(n, script, *args, plain=False, ok=True):
    """``mpiexec -n n python [-m mpi4py] script args`` (``plain``: without ``-m mpi4py``);
    ``ok``: assert it succeeded.  The result has ``seconds``, the wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "MPICH_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *([] if plain else ["-m", "mpi4py"]),
           os.path.join(SCRIPTS, script), *map(str, args)]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} hung for {TIMEOUT} s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    p.seconds = time.monotonic() - t0
    if ok:
        assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode})\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


# ------------------------------------------------------------------ sync DP and ZeRO
@pytest.fixture(scope="module")
def sync_run(tmp_path_factory):
    if not (HAVE_MPI4PY and MPIEXEC):
        pytest.skip("mpi4py or mpiexec missing (pip install mpi4py mpich gives both)")
    out = tmp_path_factory.mktemp("sync")
    run_mpi(2, "sync_zero.py", out)
    with open(out / "result.json") as f:
        return json.load(f), out


@needs_mpiexec
@pytest.mark.parametrize("name", [c[0] for c in mlp.CASES])
def test_sync_dp_and_zero_equal_one_process(sync_run, name):
    """DP (per-tensor, bucketed), DP (flat arena) and ZeRO-1 give the bits of a one-process
    run on the summed gradient, and match training on the concatenated batch."""
    res, _ = sync_run
    case = res["cases"][name]
    assert case["exact"] == {"dp_list": True, "dp_flat": True, "zero": True}
    assert case["iterations"] == 8 and case["moved"] > 1e-3
    assert case["max_rel_diff_concat"] < 1e-9


@needs_mpiexec
def test_float32_dp_and_zero_exact(sync_run):
    assert sync_run[0]["float32"] == {"dp": True, "zero": True, "dtype": "float32"}


@needs_mpiexec
def test_ranks_bit_identical(sync_run):
    res, _ = sync_run
    assert res["world"] == 2
    assert len(set(res["digest"])) == 1


@needs_mpiexec
def test_optimizer_state_broadcast_from_rank_0(sync_run):
    """Rank 0 stepped twice before wrapping, rank 1 never: after the wrap both hold rank
    0's state, iterations and hyperparameters; the lr schedule (a callable) stays local."""
    r0, r1 = sync_run[0]["bcast_state"]
    assert r0 == r1
    assert r0[:4] == [2, 2, True, 0.1]


@needs_mpiexec
def test_clip_and_nonfinite_guard_agree_across_ranks(sync_run):
    """One rank's NaN makes every rank skip the same step; clipping is decided on the
    reduced gradient (wrapper option == optimizer's own option == one-process run)."""
    clip = sync_run[0]["clip"]
    assert clip["clipped"]
    assert clip["dp_wrapper_eq_ref"] and clip["dp_inner_eq_ref"]
    assert clip["zero_max_abs_diff"] < 1e-12  # ZeRO sums the norm from per-rank partials
    for per_rank in clip["counts"]:
        assert per_rank == [1, 1, 1, 1, 7, 7]  # skips: wrapper, inner, ZeRO, reference; iterations
    assert clip["counts"][0] == clip["counts"][1]


@needs_mpiexec
def test_zero_state_memory_divided_by_world(sync_run):
    sb = sync_run[0]["state_bytes"]
    big = sb["1M"]
    assert big["zero_per_rank"] == [big["dp_per_rank"] // 2] * 2  # Adam: 2 x 4 MiB -> 4 MiB per rank
    small = sb["mlp"]
    assert sum(small["zero_per_rank"]) == small["dp_per_rank"]


@needs_mpiexec
def test_zero_checkpoint_resume_and_validation(sync_run):
    res, _ = sync_run
    assert res["ckpt_resume_exact"]
    assert "failed on 2 of 2 ranks" in res["bad_load"] and "Adam" in res["bad_load"]


def _continue_one_process(params_flat, opt, arena, grads_flat=True):
    g = arena.grad_arena()
    for t in range(5, 9):
        gs = mlp.summed_grads(arena.views, t, 2)
        arena.flatten(gs, out=g.flat)
        opt.step([g.flat] if grads_flat else g.grads(), grad_scale=0.5)
    return arena.flat


@needs_mpiexec
def test_zero_checkpoint_consolidated_in_one_process(sync_run):
    """A 2-rank checkpoint reassembled without MPI equals the state gathered by
    consolidated_state_dict, and resumes training exactly like the 2-rank run."""
    _, out = sync_run
    sd, flat = consolidate_checkpoint(str(out / "ckpt"))
    with np.load(out / "consolidated.npz") as z:
        np.testing.assert_array_equal(flat, z["param"])
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(sd["state"][0][k], z[k])
    assert sd["iterations"] == 5 and sd["state"][0]["step"] == 5
    after = np.load(out / "after_resume.npy")
    arena = ParamArena(mlp.init(seed=3))
    arena.flat[...] = flat
    opt = fo.Adam([arena.flat])
    opt.load_state_dict(sd)  # hyperparameters come from the checkpoint
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    np.testing.assert_array_equal(_continue_one_process(flat, opt, arena), after)
    # and per tensor, through the arena's split
    per = ParamArena(mlp.init(seed=4))
    per.flat[...] = flat
    popt = fo.Adam(per.params())
    popt.load_state_dict(per.split_state_dict(sd))
    np.testing.assert_array_equal(_continue_one_process(flat, popt, per, grads_flat=False), after)


@needs_mpiexec
def test_zero_checkpoint_reshard_to_one_rank(sync_run):
    """ZeroOptimizer on one rank (COMM_SELF) loads the 2-rank checkpoint (reads both
    files for its single shard) and continues exactly."""
    from mpi4py import MPI
    from fusedoptim.distributed import ZeroOptimizer
    _, out = sync_run
    arena = ParamArena(mlp.init(seed=9))
    z = ZeroOptimizer(fo.Adam, arena, MPI.COMM_SELF, lr=0.3)
    z.load_checkpoint(str(out / "ckpt"))
    assert z.iterations == 5 and z.param_groups[0]["lr"] == 1e-2
    g = arena.grad_arena()
    for t in range(5, 9):
        arena.flatten(mlp.summed_grads(arena.views, t, 2), out=g.flat)
        g.flat *= 0.5                  # the 2-rank average (exact: a power of two)
        z.step(g)
    np.testing.assert_array_equal(arena.flat, np.load(out / "after_resume.npy"))


# ---------------------------------------------------------------- parameter server
@needs_mpiexec
def test_parameter_server_trains_with_bounded_staleness(tmp_path):
    out = tmp_path / "ps.json"
    p = run_mpi(3, "param_server.py", "train", out)
    st = json.loads(out.read_text())
    assert st["reason"] == "stop_when returned True"
    assert st["final_loss"] < 1e-3 < st["initial_loss"]
    assert st["stale"] == 1 and st["max_staleness_seen"] >= 5  # the deliberately old gradient
    assert st["max_staleness_applied"] <= 2                     # never applied beyond the bound
    assert st["finished"] == [2] and st["lost"] == []           # worker 2 said goodbye
    assert st["pushes"]["1"] > 5 and st["pushes"]["2"] == 4
    assert "'stale_push': 'stale'" in p.stdout


@needs_mpiexec
def test_parameter_server_survives_a_dead_worker(tmp_path):
    out = tmp_path / "ps.json"
    p = run_mpi(3, "param_server.py", "dead", out)
    st = json.loads(out.read_text())
    assert st["lost"] == [2] and st["pushes"]["2"] == 3
    assert "worker rank 2 sent nothing" in p.stderr and "treating it as lost" in p.stderr
    assert st["reason"] == "stop_when returned True" and st["final_loss"] < 1e-3
    assert st["lost_at_update"]["2"] < st["updates"]  # lost mid-training, and training went on


@needs_mpiexec
def test_parameter_server_refuses_workers_that_do_not_fit(tmp_path):
    """A worker whose arena has the server's size but other shapes, and a client whose
    gradient message is shorter than its header says, are refused (ERROR, named in the
    stats) and nothing of theirs is applied."""
    out = tmp_path / "ps.json"
    p = run_mpi(3, "param_server.py", "refuse", out)
    st = json.loads(out.read_text())
    assert st["updates"] == 0 and st["params_untouched"]
    assert sorted(st["refused"]) == ["1", "2"] and sorted(st["lost"]) == [1, 2]
    assert "w (8,), b (1,)" in st["refused"]["1"]
    assert st["refused"]["2"] == "its gradient message has 40 bytes, the server's parameters 128"
    assert "every worker was lost" in st["error"]
    assert "refused this worker: it has 16 float64 parameters (w (2, 4), b (1,)" in p.stdout
    assert "'reply_status': 3.0" in p.stdout  # ERROR


@needs_mpiexec
def test_parameter_server_stops_when_every_worker_is_lost(tmp_path):
    out = tmp_path / "ps.json"
    run_mpi(2, "param_server.py", "alldead", out)
    st = json.loads(out.read_text())
    assert st["lost"] == [1] and st["updates"] == 3
    assert "every worker was lost" in st["error"]
    assert st["wall"] < 10  # the timeout is 1 s: the server gave up instead of hanging


# ----------------------------------------------- ranks that disagree, skip or fail
# Each case of disagree.py's "agree" mode and what its error must name.  The message must
# be the same on both ranks, and the refused step must leave the parameters untouched.
DISAGREE = {
    "presence": ["params[0] (group 0, index 0): float64 (3,) on rank 0; no gradient on rank 1",
                 "params[1] (group 0, index 1): no gradient on rank 0; float64 (4,) on rank 1"],
    "shape": ["rank 1 refused its input: ValueError:", "params[1]", "shape (5,) does not match"],
    "dtype": ["rank 1 refused its input: TypeError:", "params[1]", "dtype float32 does not match"],
    "count": ["rank 1 refused its input", "expected 2 gradients"],
    "operation": ["operation: step on rank 0; allreduce on rank 1"],
    "param_shapes": ["params[1] (group 0, index 1): float64 (4,) on rank 0; float64 (2, 2) on rank 1"],
    "hyperparameter": ["param_groups[0]['lr']: 0.1 on rank 0; 0.2 on rank 1"],
    "iterations": ["iterations: 0 on rank 0; 1 on rank 1"],
    "zero_shape": ["ZeroOptimizer", "rank 1 refused its input", "gradient shape (7,)"],
    "zero_hyperparameter": ["ZeroOptimizer", "param_groups[0]['lr']: 0.01 on rank 0; 0.02 on rank 1"],
    "zero_operation": ["ZeroOptimizer", "operation: step on rank 0; reduce_scatter on rank 1"],
}


@pytest.fixture(scope="module")
def agree_run(tmp_path_factory):
    if not (HAVE_MPI4PY and MPIEXEC):
        pytest.skip("mpi4py or mpiexec missing (pip install mpi4py mpich gives both)")
    out = tmp_path_factory.mktemp("agree") / "agree.json"
    run_mpi(2, "disagree.py", "agree", out)
    return json.loads(out.read_text())


@needs_mpiexec
@pytest.mark.parametrize("case", list(DISAGREE))
def test_ranks_that_disagree_raise_the_same_error(agree_run, case):
    res = agree_run[case]
    m0, m1 = res["messages"]
    assert m0 is not None and m0 == m1, res["messages"]
    for part in DISAGREE[case]:
        assert part in m0, m0
    # nothing was reduced or stepped (in "iterations" rank 1 stepped on its own, on purpose)
    assert res["unchanged"] == ([True, False] if case == "iterations" else [True, True])


@needs_mpiexec
def test_after_a_refused_step_the_ranks_go_on_in_step(agree_run):
    after = agree_run["after"]
    assert after["digest"][0] == after["digest"][1]
    assert after["iterations"] == 2 and after["values"] == [[0.7] * 3, [0.7] * 4]  # 1 - 2 x 0.1 x mean(1, 2)


FAILURE_BOUND = 30  # seconds: the timeout in disagree.py is 3 s and a launch takes about 1 s


@needs_mpiexec
@pytest.mark.parametrize("kind", ["dp", "zero"])
def test_a_rank_skipping_a_step_ends_the_job(kind):
    """Rank 1 skips one of 4 steps and waits in a Barrier: rank 0's 4th step times out
    (CollectiveTimeoutError) and the excepthook aborts both, under a plain launch."""
    p = run_mpi(2, "disagree.py", "skip", kind, plain=True, ok=False)
    assert p.returncode != 0
    assert p.seconds < FAILURE_BOUND
    assert "CollectiveTimeoutError" in p.stderr and "entered call 4 (iteration 3)" in p.stderr, p.stderr
    assert "aborting every rank" in p.stderr


@needs_mpiexec
def test_an_exception_on_one_rank_ends_a_plain_mpiexec_job():
    """Rank 1 raises while rank 0 waits in a step without a timeout: without the
    excepthook this hangs until killed; with it the job ends in about a second."""
    p = run_mpi(2, "disagree.py", "raise", plain=True, ok=False)
    assert p.returncode != 0
    assert p.seconds < FAILURE_BOUND
    assert "RuntimeError: rank 1 fails between steps" in p.stderr
    assert "uncaught RuntimeError on rank 1 of 2: aborting every rank" in p.stderr


@needs_mpi4py
@pytest.mark.parametrize("how", ["call", "env"])
def test_abort_hook_opt_out(how):
    """The hook wraps the previous one on first use; abort_on_error(False) or
    FUSEDOPTIM_MPI_ABORT=0 leaves sys.excepthook alone."""
    code = ("import sys\n"
            "from mpi4py import MPI\n"
            "import fusedoptim as fo, fusedoptim.distributed as d\n"
            "before = sys.excepthook\n"
            "if sys.argv[1] == 'call':\n"
            "    d.DistributedOptimizer(fo.SGD([__import__('numpy').zeros(2)]), MPI.COMM_SELF)\n"
            "    assert sys.excepthook is not before and sys.excepthook.previous is before\n"
            "    d.abort_on_error(False)\n"
            "d.DistributedOptimizer(fo.SGD([__import__('numpy').zeros(2)]), MPI.COMM_SELF)\n"
            "assert sys.excepthook is before\n"
            "print('ok')\n")
    env = dict(os.environ, FUSEDOPTIM_MPI_ABORT="0" if how == "env" else "1")
    p = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


# ------------------------------------------------------------ in-process, world 1
def test_import_without_mpi4py():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import fusedoptim, fusedoptim.arena, fusedoptim.distributed as d\n"
            "assert 'mpi4py.MPI' not in sys.modules\n"
            "try:\n    d.DistributedOptimizer(fusedoptim.SGD([__import__('numpy').zeros(3)]))\n"
            "except ImportError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "pip install 'fusedoptim[mpi]'" in p.stdout


@pytest.mark.parametrize("numel,world,align,expect", [
    (10, 2, 1, [(0, 5), (5, 10)]),
    (11, 2, 1, [(0, 6), (6, 11)]),
    (100, 2, 16, [(0, 64), (64, 100)]),
    (16, 2, 16, [(0, 16), (16, 16)]),      # the second rank's shard is empty
    (0, 3, 16, [(0, 0)] * 3),
    (7, 1, 16, [(0, 7)]),
])
def test_shard_bounds(numel, world, align, expect):
    assert shard_bounds(numel, world, align) == expect


def test_consolidate_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        consolidate_checkpoint(str(tmp_path))
    (tmp_path / "zero-manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a fusedoptim-zero1-v1 checkpoint"):
        consolidate_checkpoint(str(tmp_path))


@needs_mpi4py
@pytest.mark.parametrize("name,kw", mlp.CASES, ids=[c[0] for c in mlp.CASES])
def test_world_one_wrappers_equal_plain_optimizer(name, kw):
    """On one rank DistributedOptimizer (list and GradArena inputs) and ZeroOptimizer
    are the plain optimizer."""
    from mpi4py import MPI
    from fusedoptim.distributed import DistributedOptimizer, ZeroOptimizer
    cls = getattr(fo, name)
    ref = ParamArena(mlp.init(seed=1))
    a1 = ParamArena(mlp.init(seed=1))
    a2 = ParamArena(mlp.init(seed=1))
    a3 = ParamArena(mlp.init(seed=1))
    o_ref = cls([ref.flat], **kw)
    d1 = DistributedOptimizer(cls(a1.params(), **kw), MPI.COMM_SELF, bucket_bytes=100)
    d2 = DistributedOptimizer(cls(a2.params(), **kw), MPI.COMM_SELF)
    z3 = ZeroOptimizer(cls, a3, MPI.COMM_SELF, **kw)
    g = ref.grad_arena()
    g2 = a2.grad_arena()
    for t in range(4):
        _, gr = mlp.loss_and_grads(ref.views, *mlp.batch(t))
        ref.flatten(gr, out=g.flat)
        ro = [x.copy() for x in g.grads()]
        for x in ro:
            x.flags.writeable = False  # read-only grads go through the staging buffer
        d1.step(ro)
        g2.flat[...] = g.flat
        d2.step(g2)                    # GradArena for a per-tensor optimizer: one Allreduce
        z3.step(g)
        o_ref.step([g.flat])
    for a in (a1, a2, a3):
        np.testing.assert_array_equal(a.flat, ref.flat)


@needs_mpi4py
def test_validation_errors():
    from mpi4py import MPI
    from fusedoptim.distributed import (DistributedOptimizer, ZeroOptimizer, allreduce_gradients,
                                        broadcast_parameters)
    self_ = MPI.COMM_SELF
    p = np.zeros(4)
    with pytest.raises(TypeError, match="wraps a fusedoptim Optimizer"):
        DistributedOptimizer(object(), self_)
    with pytest.raises(ValueError, match="bucket_bytes"):
        DistributedOptimizer(fo.SGD([p]), self_, bucket_bytes=0)
    with pytest.raises(ValueError, match="timeout"):
        DistributedOptimizer(fo.SGD([p]), self_, timeout=0)
    with pytest.raises(ValueError, match="global_clipnorm"):
        DistributedOptimizer(fo.SGD([p]), self_, global_clipnorm=-1.0)
    d = DistributedOptimizer(fo.SGD([p], lr=0.1), self_)
    with pytest.raises(ValueError, match="expected 1 gradients"):
        d.step([np.zeros(4), np.zeros(4)])
    with pytest.raises(ValueError, match="shape"):
        d.step([np.zeros(5)])
    arena = ParamArena({"a": np.zeros(3)})
    with pytest.raises(ValueError, match="clip each rank.s shard"):
        ZeroOptimizer(fo.Adam, arena, self_, clipnorm=1.0)
    with pytest.raises(TypeError, match="optimizer_class"):
        ZeroOptimizer(fo.Adam([np.zeros(2)]), arena, self_)
    with pytest.raises(ValueError, match="1-D numpy array"):
        ZeroOptimizer(fo.Adam, np.zeros((2, 2)), self_)
    z = ZeroOptimizer(fo.Adam, arena, self_)
    with pytest.raises(ValueError, match="does not match"):
        z.step(np.zeros(5))
    with pytest.raises(ValueError, match="shares memory"):
        z.step(arena.flat)
    with pytest.raises(ValueError, match="writeable and C-contiguous"):
        broadcast_parameters([np.zeros(4)[::2]], self_)
    # averaging on one rank is the identity; read-only input is replaced, not written
    ro = np.arange(3.0)
    ro.flags.writeable = False
    out = allreduce_gradients([ro, np.ones(2)], self_)
    assert out[0] is not ro and np.array_equal(out[0], ro)


@needs_mpi4py
def test_state_dict_round_trip_through_wrappers(tmp_path):
    """DistributedOptimizer exposes the wrapped optimizer's state_dict; a one-rank ZeRO
    checkpoint round-trips, including one saved before any step."""
    from mpi4py import MPI
    from fusedoptim.distributed import DistributedOptimizer, ZeroOptimizer
    arena = ParamArena(mlp.init(seed=1))
    d = DistributedOptimizer(fo.Adam([arena.flat], lr=1e-2), MPI.COMM_SELF)
    g = arena.grad_arena()
    g.flat[...] = 0.5
    d.step(g)
    sd = d.state_dict()
    assert sd["kind"] == "Adam" and sd["iterations"] == 1 and d.iterations == 1
    z = ZeroOptimizer(fo.RMSprop, arena, MPI.COMM_SELF, lr=1e-2, momentum=0.9)
    z.save_checkpoint(str(tmp_path / "fresh"))
    sd0, flat0 = consolidate_checkpoint(str(tmp_path / "fresh"))
    assert sd0["state"] == {} and sd0["iterations"] == 0
    np.testing.assert_array_equal(flat0, arena.flat)
    z.step(g)
    z.save_checkpoint(str(tmp_path / "one"), include_params=False)
    sd1, flat1 = consolidate_checkpoint(str(tmp_path / "one"))
    assert flat1 is None and set(sd1["state"][0]) == {"step", "square_avg", "momentum_buffer"}
    z2 = ZeroOptimizer(fo.RMSprop, ParamArena(mlp.init(seed=1)), MPI.COMM_SELF, lr=1e-2, momentum=0.9)
    with pytest.raises(ValueError, match="saved without parameters"):
        z2.load_checkpoint(str(tmp_path / "one"))
    z2.load_checkpoint(str(tmp_path / "one"), load_params=False)
    assert z2.iterations == 1


@needs_mpi4py
def test_apply_gradients_goes_through_the_allreduce():
    from mpi4py import MPI
    from fusedoptim.distributed import DistributedOptimizer
    W, b = np.ones((2, 2)), np.ones(2)
    d = DistributedOptimizer(fo.SGD([W, b], lr=0.5), MPI.COMM_SELF)
    d.apply_gradients([(np.ones(2), b)])
    assert (b == 0.5).all() and (W == 1).all() and d.iterations == 1
    with pytest.raises(ValueError, match="not one of the optimizer's parameters"):
        d.apply_gradients([(np.ones(2), np.ones(2))])
