"""Every built-in optimizer x workload, with its roofline and baselines in one group.

Groups are named ``algo-workload`` (e.g. ``adam-1x1M``); each group holds

* ``fusedoptim``     ``opt.step(grads)`` of the fusedoptim optimizer,
* ``stream``         the STREAM roofline kernel over the same arrays (same bytes moved),
* ``numpy``          a straightforward NumPy implementation (``fusedoptim.bench``),
* ``torch_foreach`` / ``torch_fused``  torch.optim, when torch imports (fused: SGD, Adam,
  AdamW, Adagrad only), with ``torch.set_num_threads`` equal to fusedoptim's.

The cases (``bench_case`` = (workload, optimizer, contender)) come from conftest.py.
``extra_info["bytes_moved"]`` is the minimum memory traffic of one step
(itemsize * (2k - 1) * elements, k = 2 + state buffers): GB/s = bytes_moved / time, and
% of roofline = stream time / fusedoptim time.  Times are per step (``iterations``
consecutive steps per round, ``FO_BENCH_ROUNDS`` rounds).
"""
import numpy as np
import pytest

from fusedoptim import _kernels
from fusedoptim import bench as fb


def test_step(benchmark, bench_cfg, workload_data, bench_case):
    workload, algo, contender = bench_case
    wl, params, grads = workload_data(workload)
    torch = bench_cfg.torch
    case = fb.build_case(fb.OPTIMIZERS[algo], wl, params, grads, [contender], torch)
    if contender in case.skipped:
        pytest.skip(case.skipped[contender])
    fn = case.fns[contender]
    group = f"{algo}-{workload}"
    benchmark.group = group
    benchmark.extra_info.update(
        optimizer=algo, workload=workload, contender=contender, dtype=wl.dtype,
        n_tensors=wl.n_tensors, n_elements=wl.n_elements, k=case.k,
        bytes_moved=case.bytes_per_step, threads=_kernels.get_num_threads(),
        torch_threads=torch.get_num_threads() if torch is not None else None)
    # constant gradients drive some states to NaN (e.g. centered RMSprop): no warnings
    with np.errstate(all="ignore"):
        iterations = fb.calibrate(fn, bench_cfg.min_time, warmup=1)
        benchmark.pedantic(fn, rounds=bench_cfg.rounds, iterations=iterations, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        bench_cfg.record(group, contender, stats.stats.median, case.bytes_per_step, wl.n_elements)


def test_memory_adam_200x327(benchmark, bench_cfg):
    """10,000 steps of Adam on 200 tensors of 327 float32 elements under tracemalloc:
    tracemalloc current/peak deltas and RSS before/after in extra_info (figures for the
    report, no assertion; the time includes tracemalloc's slowdown)."""
    benchmark.group = "memory-adam-200x327"
    out = {}
    benchmark.pedantic(lambda: out.update(fb.memory_check(steps=bench_cfg.memory_steps)),
                       rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    bench_cfg.memory.update(out)
