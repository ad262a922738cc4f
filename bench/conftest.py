"""pytest-benchmark suite of fusedoptim: ``pytest bench/ --benchmark-only``.

Environment:
  FO_BENCH_FULL=1       add the 1x16M workload (16.7M float32 elements)
  FO_BENCH_ROUNDS=N     timed rounds per benchmark (default 5)
  FO_BENCH_MIN_TIME=S   seconds of consecutive steps per round (default 0.002)
  FO_BENCH_THREADS=N    threads for fusedoptim and torch (default fusedoptim's)
  FO_BENCH_NO_TORCH=1   leave torch out even when it imports
  FO_BENCH_MEMORY_STEPS=N  steps of the memory check (default 10000)

At the end of the session a derived table (GB/s, % of roofline, speedups) is printed
from the medians; see bench/README.md.
"""
from __future__ import annotations

import os
import statistics
from types import SimpleNamespace

import pytest

from fusedoptim import _kernels
from fusedoptim import bench as fb

FULL = os.environ.get("FO_BENCH_FULL", "") not in ("", "0")
ROUNDS = int(os.environ.get("FO_BENCH_ROUNDS", "5"))
MIN_TIME = float(os.environ.get("FO_BENCH_MIN_TIME", "0.002"))
MEMORY_STEPS = int(os.environ.get("FO_BENCH_MEMORY_STEPS", "10000"))
TORCH = None if os.environ.get("FO_BENCH_NO_TORCH", "") not in ("", "0") else fb.import_torch()

WORKLOADS = [w for w in fb.WORKLOADS if FULL or w != "1x16M"]

# group -> contender -> figures, filled by record() and printed by the summary hook
RESULTS: dict = {}
MEMORY: dict = {}      # memory check figures, printed by the summary hook

#: (workload, optimizer, contender), workload-major so each workload is generated once
CASES = [(w, a, c) for w in WORKLOADS for a in fb.OPTIMIZERS for c in fb.CONTENDERS
         if ((TORCH is not None and fb.OPTIMIZERS[a].in_torch) or not c.startswith("torch"))
         and (c != "torch_fused" or fb.OPTIMIZERS[a].torch_fused)
         and (c != "numpy" or fb.OPTIMIZERS[a].naive is not None)]


def pytest_generate_tests(metafunc):
    if "bench_case" in metafunc.fixturenames:
        metafunc.parametrize("bench_case", CASES, ids=[f"{a}-{w}-{c}" for w, a, c in CASES])


@pytest.fixture(scope="session", autouse=True)
def bench_threads():
    """Same thread count for fusedoptim and torch for the whole session."""
    n = int(os.environ.get("FO_BENCH_THREADS", "0")) or _kernels.get_num_threads()
    _kernels.set_num_threads(n)
    saved_torch = TORCH.get_num_threads() if TORCH is not None else None
    if TORCH is not None:
        TORCH.set_num_threads(n)
    yield n
    _kernels.set_num_threads(0)        # back to the OpenMP default
    if TORCH is not None:
        TORCH.set_num_threads(saved_torch)


_DATA: dict = {}


@pytest.fixture
def workload_data():
    """``get(name) -> (Workload, params, grads)``, cached for the last workload only
    (the tests are ordered workload-major, so each is generated once)."""
    def get(name):
        if name not in _DATA:
            _DATA.clear()
            wl = fb.parse_workload(name)
            _DATA[name] = (wl,) + fb.make_data(wl)
        return _DATA[name]
    return get


def record(group: str, contender: str, median_s: float, bytes_moved: int, n_elements: int) -> None:
    RESULTS.setdefault(group, {})[contender] = {"median_s": median_s, "bytes": bytes_moved,
                                               "n_elements": n_elements}


@pytest.fixture(scope="session")
def bench_cfg():
    """The suite's settings (from the environment) and the ``record`` hook."""
    return SimpleNamespace(rounds=ROUNDS, min_time=MIN_TIME, memory_steps=MEMORY_STEPS,
                           torch=TORCH, record=record, memory=MEMORY)


def pytest_report_header(config):
    t = f"torch {TORCH.__version__}" if TORCH is not None else "torch not used"
    return (f"fusedoptim bench: workloads {', '.join(WORKLOADS)}; {ROUNDS} rounds of >= "
            f"{MIN_TIME * 1e3:g} ms; {t}; threads {_kernels.get_num_threads()} "
            f"(FO_BENCH_THREADS); SIMD {_kernels.simd_level()}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    if MEMORY:
        m = MEMORY
        tr.section("fusedoptim memory check")
        tr.write_line(f"Adam, {m['n_tensors']} x {m['size']} float32, {m['steps']} steps under tracemalloc: "
                      f"current delta {m['tracemalloc_current_delta']} B, peak delta "
                      f"{m['tracemalloc_peak_delta']} B; RSS {m['rss_before']} -> {m['rss_after']} B "
                      f"(tracemalloc's own {m['tracemalloc_overhead']} B)")
    if not RESULTS:
        return
    tr.section("fusedoptim derived figures (medians)")
    tr.write_line(f"{'group':<40} {'fo GB/s':>8} {'roof GB/s':>9} {'%roof':>6} {'x numpy':>8} "
                  f"{'x t.foreach':>11} {'x t.fused':>9}")
    for group, res in RESULTS.items():
        fo = res.get("fusedoptim")
        st = res.get("stream")
        gb = lambda r: r["bytes"] / r["median_s"] / 1e9 if r else None  # noqa: E731
        x = lambda o: (res[o]["median_s"] / fo["median_s"]) if (fo and o in res) else None  # noqa: E731
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        pct = 100 * st["median_s"] / fo["median_s"] if (fo and st) else None
        tr.write_line(f"{group:<40} {f(gb(fo), '.3g'):>8} {f(gb(st), '.3g'):>9} {f(pct, '.0f'):>6} "
                      f"{f(x('numpy'), '.3g'):>8} {f(x('torch_foreach'), '.3g'):>11} "
                      f"{f(x('torch_fused'), '.3g'):>9}")
    pcts = [100 * r["stream"]["median_s"] / r["fusedoptim"]["median_s"]
            for r in RESULTS.values() if "stream" in r and "fusedoptim" in r]
    if pcts:
        tr.write_line(f"median % of roofline over {len(pcts)} groups: {statistics.median(pcts):.0f}")
