"""Every built-in optimizer x workload, with its roofline and baselines in one group.

Groups are named ``algo-workload`` (e.g. ``adam-1x1M``); each group holds

* ``fusedoptim``     ``opt.step(grads)`` of the fusedoptim optimizer,
* ``stream``         the STREAM roofline kernel over the same arrays (same bytes moved),
* ``numpy``          a straightforward NumPy implementation (``fusedoptim.bench``),
* ``torch_foreach`` / ``torch_fused``  torch.optim, when torch imports (fused: SGD, Adam,
  AdamW, Adagrad only), with ``torch.set_num_threads`` equal to fusedoptim's.
* ``fusedoptim_torch``  ``fusedoptim.torch.<Cls>`` (the torch.optim front end) on torch
  tensors with ``.grad`` set, when torch imports.

The cases (``bench_case`` = (workload, optimizer, contender)) come from conftest.py.
``extra_info["bytes_moved"]`` is the minimum memory traffic of one step
(itemsize * (2k - 1) * elements, k = 2 + state buffers): GB/s = bytes_moved / time, and
% of roofline = stream time / fusedoptim time.  Times are per step (``iterations``
consecutive steps per round, ``FO_BENCH_ROUNDS`` rounds).

``test_step_gpu`` adds, in the same groups, the GPU contenders where cupy imports and
sees a CUDA device (``fusedoptim.bench.probe_gpu``; ``FO_BENCH_NO_GPU=1`` leaves them out):

* ``gpu``               ``opt.step(grads)`` on cupy arrays (fusedoptim's CUDA kernels),
* ``gpu_stream``        the device STREAM kernel over k flat buffers (same bytes moved),
* ``torch_cuda_fused``  torch.optim ``fused=True`` on CUDA, where ``torch.cuda.is_available()``.

Each round is ``iterations`` steps from an idle device up to ``cupy.cuda.Device().synchronize()``
returning (``fusedoptim.bench.sync_every``), so times are per step including the GPU's
work.  ``extra_info`` adds ``device``, ``peak_gb_s`` (theoretical) and ``timing``; the
end of the session prints GB/s, % of peak and % of the device STREAM per group.
Without a device, one skipped test says why.
"""
import os

import numpy as np
import pytest

from fusedoptim import _kernels
from fusedoptim import bench as fb
from fusedoptim.bench.report import gpu_line


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


# the same workloads as conftest.py (FO_BENCH_FULL adds 1x16M)
GPU_WORKLOADS = [w for w in fb.WORKLOADS if _env_flag("FO_BENCH_FULL") or w != "1x16M"]
GPU, GPU_REASON = (None, "FO_BENCH_NO_GPU is set") if _env_flag("FO_BENCH_NO_GPU") else fb.probe_gpu()


def _torch_cuda() -> bool:
    if GPU is None or _env_flag("FO_BENCH_NO_TORCH"):
        return False
    torch = fb.import_torch()
    try:
        return torch is not None and bool(torch.cuda.is_available())
    except Exception:
        return False


def _gpu_cases():
    """(workload, optimizer, contender) with a GPU, workload-major; else one param
    that skips with the reason (one line, not one skip per case)."""
    if GPU is None:
        return [pytest.param(None, id="no-gpu",
                             marks=pytest.mark.skip(reason=f"GPU contenders left out: {GPU_REASON}"))]
    tc = _torch_cuda()
    return [pytest.param((w, a, c), id=f"{a}-{w}-{c}")
            for w in GPU_WORKLOADS for a in fb.OPTIMIZERS for c in fb.GPU_CONTENDERS
            if c != "torch_cuda_fused" or (tc and fb.OPTIMIZERS[a].torch_fused)]


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


class _GpuSummary:
    """Plugin registered by the first GPU benchmark: prints the derived GPU figures at
    the end of the session (GB/s, % of the theoretical peak, % of the device STREAM)."""

    def __init__(self, gpu):
        self.gpu = gpu
        self.rows: dict = {}    # group -> contender -> (median_s, bytes)

    def pytest_terminal_summary(self, terminalreporter):
        if not self.rows:
            return
        tr, peak = terminalreporter, self.gpu.peak_gb_s
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        tr.section("fusedoptim GPU figures (medians)")
        tr.write_line(gpu_line(self.gpu.info))
        tr.write_line(f"{'group':<40} {'gpu GB/s':>8} {'%peak':>5} {'roof GB/s':>9} {'%roof':>5} {'x t.cuda':>8}")
        for group, res in self.rows.items():
            gb = lambda n: res[n][1] / res[n][0] / 1e9 if n in res else None  # noqa: E731
            g, st, tc = gb("gpu"), gb("gpu_stream"), res.get("torch_cuda_fused")
            tr.write_line(f"{group:<40} {f(g, '.4g'):>8} {f(100 * g / peak if g and peak else None, '.0f'):>5} "
                          f"{f(st, '.4g'):>9} {f(100 * g / st if g and st else None, '.0f'):>5} "
                          f"{f(tc[0] / res['gpu'][0] if tc and 'gpu' in res else None, '.3g'):>8}")


@pytest.fixture(scope="session")
def gpu_summary(request):
    plugin = _GpuSummary(GPU)
    request.config.pluginmanager.register(plugin, "fusedoptim-gpu-summary")
    return plugin


@pytest.mark.parametrize("gpu_case", _gpu_cases())
def test_step_gpu(benchmark, bench_cfg, workload_data, gpu_summary, gpu_case):
    workload, algo, contender = gpu_case
    wl, params, grads = workload_data(workload)
    case = fb.build_case(fb.OPTIMIZERS[algo], wl, params, grads, [contender], bench_cfg.torch, GPU)
    if contender in case.skipped:
        pytest.skip(case.skipped[contender])
    fn = case.fns[contender]
    group = f"{algo}-{workload}"
    benchmark.group = group
    benchmark.extra_info.update(
        optimizer=algo, workload=workload, contender=contender, dtype=wl.dtype,
        n_tensors=wl.n_tensors, n_elements=wl.n_elements, k=case.k,
        bytes_moved=case.bytes_per_step, device=GPU.info["name"], peak_gb_s=GPU.peak_gb_s,
        timing=fb.GPU_TIMING)
    with np.errstate(all="ignore"):
        iterations = fb.calibrate_synced(fn, GPU.sync, bench_cfg.min_time, warmup=1)
        benchmark.pedantic(fb.sync_every(fn, GPU.sync, iterations), rounds=bench_cfg.rounds,
                           iterations=iterations, warmup_rounds=1)
    GPU.sync()
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        gpu_summary.rows.setdefault(group, {})[contender] = (stats.stats.median, case.bytes_per_step)
    del case, fn
    GPU.free()


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
