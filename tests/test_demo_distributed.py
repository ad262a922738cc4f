"""``fusedoptim demo --distributed``: data parallelism over MPI in the demo.

The 2-rank runs go through ``mpiexec`` in subprocesses with a timeout (a hung collective
fails the test instead of the suite); the single-process references run in-process.

What is compared with what, and why these tolerances:

- 2 ranks vs one process on the same global batches: every rank backpropagates half of
  each batch in float32 and the halves' gradients are summed by the Allreduce, so the
  gradient's summation order differs from one matrix product over the whole batch.  The
  runs agree to rounding: losses measured within ~1e-7 relative after 8 epochs; we assert
  rtol 1e-4 (three orders of margin; leaving out the weights of uneven slices moves the
  losses by 7e-4 in the batch-31 test, a wrong average by far more) and accuracies within
  2 samples.
- 1 rank (``--distributed`` without mpiexec) vs no ``--distributed``: the same bits (the
  Allreduce of one rank leaves the gradient as it is and there is nothing to divide).
- The ranks among themselves: the same parameter bits after every run (the demo checks
  it with ``fusedoptim.distributed.assert_synchronized`` and reports it).
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fusedoptim.__main__ import main
from fusedoptim.demo import _util, parallel

HAVE_SKLEARN = _util.optional("sklearn.datasets") is not None
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN,
                                   reason="scikit-learn not installed (pip install 'fusedoptim[demo]')")
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed (pip install 'fusedoptim[mpi]')")
needs_mpiexec = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                                   reason="mpi4py or mpiexec missing (pip install 'fusedoptim[mpi]' gives both)")
TIMEOUT = 120       # seconds per subprocess; each 2-rank quick run takes about 2 s
RTOL = 1e-4         # 2 ranks vs one process: float32 summation order of the gradient (see above)
ACC_SAMPLES = 2     # ... and accuracies within this many samples of the evaluated set


def clean_env():
    """The environment without a surrounding launcher's variables, one thread per rank."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "MPICH_", "HYDRA_", "OMPI_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=clean_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} hung for {TIMEOUT} s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    return p


def run_demo_mpi(n, *args):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "fusedoptim", "demo", "--distributed", *map(str, args)]
    p = run(cmd)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode})\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def load(path):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=bad)


def single_process(tmp, *args):
    """The same demo in this process, without --distributed: the reference."""
    assert main(["demo", *map(str, args), "--out", str(tmp), "--no-progress", "--no-plot"]) == 0
    return load(tmp / "demo_digits.json")


def assert_same_training(dist, ref):
    """Same runs, same steps, and losses/accuracies equal to rounding (module docstring)."""
    assert [r["optimizer"] for r in dist["runs"]] == [r["optimizer"] for r in ref["runs"]]
    n_test, n_train = ref["config"]["n_test"], ref["config"]["n_train"]
    for d, r in zip(dist["runs"], ref["runs"]):
        assert d["steps"] == r["steps"] and d["epochs_run"] == r["epochs_run"]
        for key in ("train_loss", "test_loss"):
            np.testing.assert_allclose(d["history"][key], r["history"][key], rtol=RTOL, err_msg=key)
            np.testing.assert_allclose(d["final"][key], r["final"][key], rtol=RTOL, err_msg=key)
        for key, n in (("train_acc", n_train), ("test_acc", n_test)):
            np.testing.assert_allclose(d["history"][key], r["history"][key], rtol=0, atol=ACC_SAMPLES / n)
        np.testing.assert_allclose(d["final"]["test_acc"], r["final"]["test_acc"], rtol=0,
                                   atol=ACC_SAMPLES / n_test)


# --------------------------------------------------------------------------- 2 ranks
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    if not (HAVE_MPI4PY and MPIEXEC):
        pytest.skip("mpi4py or mpiexec missing (pip install 'fusedoptim[mpi]' gives both)")
    if not HAVE_SKLEARN:
        pytest.skip("scikit-learn not installed (pip install 'fusedoptim[demo]')")
    out = tmp_path_factory.mktemp("demo2")
    p = run_demo_mpi(2, "--quick", "--optimizers", "adam,sgd", "--out", out, "--no-progress")
    return p, load(out / "demo_digits.json"), out


@needs_mpiexec
@needs_sklearn
def test_two_ranks_table_and_only_rank_0_prints(two_ranks):
    p, _, out = two_ranks
    lines = p.stdout.splitlines()
    assert sum(line.startswith("fusedoptim ") for line in lines) == 1      # one header: rank 0's
    assert "distributed: 2 ranks" in p.stdout and "slices of 16" in p.stdout
    head = next(i for i, line in enumerate(lines) if line.startswith("optimizer "))
    cols = re.split(r"\s{2,}", lines[head].strip())
    assert cols[:8] == ["optimizer", "lr", "ranks", "wall s", "train s", "allreduce s", "allreduce %", "step s"]
    rows = {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in lines[head + 2:head + 4]}
    assert set(rows) == {"Adam", "SGD"}
    for row in rows.values():
        assert row[cols.index("ranks")] == "2"
        assert float(row[cols.index("allreduce s")]) >= 0 and float(row[cols.index("step s")]) >= 0
    assert "ranks bit-identical: the parameters of all 2 ranks" in p.stdout
    assert p.stdout.count("wrote ") == (2 if _util.optional("matplotlib") else 1)
    assert sorted(os.listdir(out)) == sorted(["demo_digits.json"] + (["demo_digits.png"]
                                                                      if _util.optional("matplotlib") else []))


@needs_mpiexec
@needs_sklearn
def test_two_ranks_json(two_ranks):
    _, doc, _ = two_ranks
    cfg = doc["config"]
    assert cfg["distributed"] is True and cfg["world_size"] == 2 and cfg["ranks_bit_identical"] is True
    assert cfg["slice_sizes"] == [16, 16] and cfg["threads"] == 1          # 2 ranks x 1 thread on 2 cores
    runs = {r["optimizer"]: r for r in doc["runs"]}
    assert runs["adam"]["final"]["test_acc"] > 0.85 and runs["sgd"]["final"]["test_acc"] > 0.85
    for r in runs.values():
        assert r["world_size"] == 2 and r["ranks_bit_identical"] is True
        assert re.fullmatch(r"[0-9a-f]{64}", r["params_sha256"])
        assert r["steps"] == 8 * -(-cfg["n_train"] // 32)                  # global batches, not slices
        assert r["allreduce_s"] > 0 and 0 <= r["step_s"] <= r["train_s"] <= r["wall_s"]
        assert {k: len(v) for k, v in r["per_rank"].items()} == \
            {"wall_s": 2, "train_s": 2, "allreduce_s": 2, "step_s": 2}
        assert r["per_rank"]["allreduce_s"][0] == r["allreduce_s"]         # the table shows rank 0's


@needs_mpiexec
@needs_sklearn
def test_two_ranks_equal_one_process_on_the_whole_batch(two_ranks, tmp_path):
    _, doc, _ = two_ranks
    ref = single_process(tmp_path, "--quick", "--optimizers", "adam,sgd")
    assert ref["config"]["world_size"] == 1 and "world_size" not in ref["runs"][0]
    assert_same_training(doc, ref)


@needs_mpiexec
@needs_sklearn
def test_two_ranks_uneven_slices_and_clipping(tmp_path):
    """Batch 31: slices of 15 and 16, weighted so their average is the batch mean; clipping
    runs on the averaged gradient, so every rank takes the same decision."""
    args = ["--epochs", "2", "--batch-size", "31", "--optimizers", "sgdm", "--clip-norm", "1.0"]
    run_demo_mpi(2, *args, "--out", tmp_path / "d", "--no-progress", "--no-plot")
    doc = load(tmp_path / "d" / "demo_digits.json")
    assert doc["config"]["slice_sizes"] == [15, 16] and doc["runs"][0]["ranks_bit_identical"]
    ref = single_process(tmp_path / "s", *args)
    assert_same_training(doc, ref)
    np.testing.assert_allclose(doc["runs"][0]["history"]["grad_norm"][1:], ref["runs"][0]["history"]["grad_norm"][1:],
                               rtol=RTOL)


# ------------------------------------------------------------------ one process
@needs_mpi4py
@needs_sklearn
def test_one_process_is_world_size_one_and_bit_identical(tmp_path):
    """--distributed without mpiexec: MPI starts as a world of one; the numbers are those
    of the run without --distributed, bit for bit."""
    args = ["--epochs", "2", "--optimizers", "adam", "--no-progress", "--no-plot"]
    p = run([sys.executable, "-m", "fusedoptim", "demo", "--distributed", *args, "--out", str(tmp_path / "d")])
    assert p.returncode == 0, p.stderr
    assert "distributed: 1 rank " in p.stdout and "one rank, nothing to compare" in p.stdout
    doc = load(tmp_path / "d" / "demo_digits.json")
    assert doc["config"]["world_size"] == 1 and doc["runs"][0]["world_size"] == 1
    ref = single_process(tmp_path / "s", "--epochs", "2", "--optimizers", "adam")
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert doc["runs"][0]["history"][key] == ref["runs"][0]["history"][key]
    assert doc["runs"][0]["final"] == ref["runs"][0]["final"]


def test_without_mpi4py_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from fusedoptim.__main__ import main\n"
            f"sys.exit(main(['demo', '--distributed', '--quick', '--out', {str(tmp_path / 'out')!r}]))\n")
    p = run([sys.executable, "-c", code])
    assert p.returncode == 2, p.stderr
    assert "--distributed needs mpi4py" in p.stderr and "pip install 'fusedoptim[mpi]'" in p.stderr
    assert "Traceback" not in p.stderr and not os.path.exists(tmp_path / "out")


def test_under_a_launcher_without_distributed_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PMI_SIZE", "2")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "add --distributed" in capsys.readouterr().err


# ------------------------------------------------------------- the batch split
@pytest.mark.parametrize("m,world", [(32, 2), (31, 2), (30, 4), (1, 2), (5, 8), (0, 3), (7, 1)])
def test_slices_cover_the_batch_and_weights_give_its_mean(m, world):
    """Contiguous slices, sizes within one of each other; the average over ranks of
    weight x (slice mean) is the mean over the whole batch (an empty slice counts 0)."""
    sizes = parallel.slice_sizes(m, world)
    assert sum(sizes) == m and max(sizes) - min(sizes) <= 1
    bounds = [parallel.bounds(r, world, m) for r in range(world)]
    assert [lo for lo, _ in bounds] == [0] + [hi for _, hi in bounds[:-1]]
    v = np.random.default_rng(m).standard_normal(m)
    avg = sum(parallel.slice_weight(hi - lo, m, world) * (v[lo:hi].mean() if hi > lo else 0.0)
              for lo, hi in bounds) / world
    assert avg == pytest.approx(v.mean() if m else 0.0, rel=1e-12, abs=1e-15)
    if m % world == 0:
        assert {parallel.slice_weight(s, m, world) for s in sizes} == {1.0}   # even split: untouched
