"""Results are bit-identical for any thread count, and the thread count follows
OMP_NUM_THREADS, threadpoolctl and set_num_threads.

The driver splits the total element count of all tensors into one chunk per thread and
cuts chunks at tensor boundaries; below the grain size a step stays on one thread.  The
tests lower the grain to 1 so that small tensors are split too, and use many tensors of
odd sizes (zero-size ones included) so chunk boundaries fall inside tensors, on their
edges and on empty tensors.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedoptim
from fusedoptim import _kernels
from cases import (RICH_CASES, assert_same_snapshot, build, case_params, draw_hparams, grad_stream, make_params,
                   seed_for, snapshot)

THREADS = (1, 2, 3)
# 60 tensors, 0..300 elements each (several empty), then a 0-d one and one above SIMD width
_rng = np.random.default_rng(2024)
MANY_SHAPES = tuple((int(n),) for n in _rng.integers(0, 300, 60)) + ((0,), (), (4099,), (0,), (5, 13))


def _run(name, hp, dtype, shapes, steps, seed, nthreads):
    fusedoptim.set_num_threads(nthreads)
    assert fusedoptim.get_num_threads() == nthreads
    params = make_params(seed, shapes, dtype)
    opt = build(name, params, **hp)
    for t, grads in enumerate(grad_stream(seed + 1, shapes, dtype, steps)):
        if t == 1:      # one step with holes: fewer tensors in the call, other boundaries
            grads = [None if i % 3 == 0 else g for i, g in enumerate(grads)]
        opt.step(grads)
    return snapshot(opt, params)


@pytest.mark.skipif(not _kernels.HAVE_OPENMP, reason="built without OpenMP")
@pytest.mark.parametrize("name,kwargs", case_params())
def test_bit_identical_across_thread_counts(name, kwargs, dtype):
    seed = seed_for(name, kwargs, dtype.name, "threads")
    hp = draw_hparams(name, kwargs, seed)
    _kernels.set_grain_size(1)
    runs = [_run(name, hp, dtype, MANY_SHAPES, 4, seed, n) for n in THREADS]
    for n, r in zip(THREADS[1:], runs[1:]):
        assert_same_snapshot(runs[0], r, same_arrays=False)


@pytest.mark.skipif(not _kernels.HAVE_OPENMP, reason="built without OpenMP")
@pytest.mark.parametrize("name,kwargs", case_params([c for c in RICH_CASES if c[0] in ("Adam", "RMSprop")]))
def test_bit_identical_above_default_grain(name, kwargs):
    """The default grain, a tensor large enough to be split by it."""
    hp = draw_hparams(name, kwargs, 5)
    shapes = ((2 ** 20 + 3,), (3,))
    runs = [_run(name, hp, np.float32, shapes, 3, 6, n) for n in (1, 2)]
    assert_same_snapshot(runs[0], runs[1], same_arrays=False)


def test_grain_size_setter_validates_and_round_trips():
    old = _kernels.get_grain_size()
    _kernels.set_grain_size(123)
    assert _kernels.get_grain_size() == 123
    with pytest.raises(ValueError):
        _kernels.set_grain_size(0)
    assert _kernels.get_grain_size() == 123
    _kernels.set_grain_size(old)


def _in_subprocess(code, **env):
    full = dict(os.environ)
    full.pop("OMP_NUM_THREADS", None)
    full.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not _kernels.HAVE_OPENMP, reason="built without OpenMP")
def test_get_num_threads_honours_omp_num_threads_and_set_num_threads():
    got = _in_subprocess("""
        import fusedoptim
        print(fusedoptim.get_num_threads())
        fusedoptim.set_num_threads(5)
        print(fusedoptim.get_num_threads())
        fusedoptim.set_num_threads(0)
        print(fusedoptim.get_num_threads())
    """, OMP_NUM_THREADS="3")
    assert got == ["3", "5", "3"]
    assert _in_subprocess("import fusedoptim; print(fusedoptim.get_num_threads())", OMP_NUM_THREADS="1") == ["1"]


@pytest.mark.skipif(not _kernels.HAVE_OPENMP, reason="built without OpenMP")
def test_get_num_threads_follows_threadpoolctl():
    pytest.importorskip("threadpoolctl")
    got = _in_subprocess("""
        import numpy as np
        import fusedoptim
        from threadpoolctl import threadpool_limits
        before = fusedoptim.get_num_threads()
        with threadpool_limits(1, user_api="openmp"):
            inside = fusedoptim.get_num_threads()
            p = np.ones(100000, np.float32)
            fusedoptim.Adam([p]).step([np.ones(100000, np.float32)])   # runs under the limit
        print(before, inside, fusedoptim.get_num_threads())
    """, OMP_NUM_THREADS="2")
    assert got == ["2", "1", "2"]
