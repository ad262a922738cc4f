"""Smoke test of the benchmark report (``python -m fusedoptim.bench``): tiny sizes, one or
two samples, the JSON is complete and valid.  No timing is asserted, ever.

The GPU columns are tested without a GPU: the formulas and the device-query parsing on
recorded properties, the "no cupy" and "cupy but no device" paths (one note line, JSON
``gpu: null`` with the reason), the whole GPU code path of the report on a NumPy-backed
stand-in for CuPy, the device STREAM kernel's indexing compiled for the host, and its
source compiled by NVRTC where CuPy's NVRTC loads."""
import ctypes
import json
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fusedoptim import _kernels
from fusedoptim import bench as fb
from fusedoptim.bench import report as fr

# tiny everything: the point is that every code path runs and reports
TINY = ["--workloads", "3x50,1x1", "--repeat", "2", "--warmup", "1", "--min-time", "0",
        "--roofline-sizes", "1K"]


def _finite_pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("key", [k for k, c in fb.OPTIMIZERS.items() if c.naive is not None])
def test_naive_numpy_matches_fusedoptim(key):
    """The NumPy baseline does the same update as fusedoptim (else the speedups lie).
    8 steps cover RAdam's switch to the rectified update (rho_t > 5 from step 6)."""
    cfg = fb.OPTIMIZERS[key]
    params, grads = fb.make_data(fb.parse_workload("f64-3x37"), seed=1)
    a = [p.copy() for p in params]
    b = [p.copy() for p in params]
    opt = cfg.cls(a, **cfg.kwargs)
    naive = fb.NaiveNumPy(cfg.naive, b, opt.param_groups[0])
    for _ in range(8):
        opt.step(grads)
        naive.step(grads)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    assert all(not g.flags.writeable for g in grads)   # nobody may write the shared grads


def test_parse_workload():
    assert fb.parse_workload("1x1M").shapes == ((1 << 20,),)
    assert fb.parse_workload("1x1").n_elements == 1
    assert fb.parse_workload("1x16M").n_elements == 1 << 24
    wl = fb.parse_workload("100x10K")
    assert (wl.n_tensors, wl.n_elements) == (100, 1_024_000)
    assert fb.parse_workload("200x327").n_elements == 65_400
    assert fb.parse_workload("f64-1x1M").dtype == "float64"
    model = fb.parse_workload("gpt-4L-d256")
    assert 1_000_000 <= model.n_elements <= 5_000_000 and model.n_tensors > 10
    assert set(fb.WORKLOADS) >= {"1x1M", "1x16M", "100x10K", "200x327", "f64-1x1M", "1x1"}
    for bad in ("", "x5", "3x", "0x5", "2x3G", "f16-1x1"):
        with pytest.raises(ValueError):
            fb.parse_workload(bad)


def _check_report(d, optimizers, workloads, torch_expected):
    assert d["schema"] == "fusedoptim.bench/1"
    m = d["machine"]
    for key in ("cpu_model", "cpu_count", "numpy", "torch", "fusedoptim_threads", "simd", "platform"):
        assert key in m
    assert m["numpy"] == np.__version__
    assert (m["torch"] is not None) == torch_expected
    assert d["config"]["threads"] == m["fusedoptim_threads"] >= 1
    assert {r["k"] for r in d["roofline"]} == {2, 3, 4, 5, 6}
    assert all(_finite_pos(r["gb_s"]) for r in d["roofline"])
    for r in d["roofline"]:     # GB/s of the fastest sample, the median's beside it
        assert r["gb_s"] == pytest.approx(r["bytes"] / r["min_s"] / 1e9) and r["gb_s"] >= r["median_gb_s"]
    assert [(r["optimizer"], r["workload"]) for r in d["results"]] == \
        [(o, w) for w in workloads for o in optimizers]
    for r in d["results"]:
        assert r["k"] == 2 + {"sgd": 0, "adam": 2, "adam-amsgrad": 3, "nadam": 2}[r["optimizer"]]
        wl = fb.parse_workload(r["workload"])
        assert r["bytes_per_step"] == wl.itemsize * (2 * r["k"] - 1) * wl.n_elements
        for key in ("step_s", "gelem_s", "gb_s", "roofline_gb_s", "pct_roofline", "speedup_vs_numpy"):
            assert _finite_pos(r[key]), (key, r)
        for name in ("fusedoptim", "stream", "numpy"):
            c = r["contenders"][name]
            assert len(c["samples_s"]) == d["config"]["repeat"]
            assert c["min_s"] <= c["median_s"] <= c["max_s"]
        # the CPU roofline from the fastest samples (report.ROOF_NOTE), the medians beside it
        cs, cf = r["contenders"]["stream"], r["contenders"]["fusedoptim"]
        assert r["roofline_gb_s"] == pytest.approx(r["bytes_per_step"] / cs["min_s"] / 1e9)
        assert r["pct_roofline"] == pytest.approx(100 * cs["min_s"] / cf["min_s"])
        assert r["roofline_median_gb_s"] == pytest.approx(r["bytes_per_step"] / cs["median_s"] / 1e9)
        assert r["pct_roofline_median"] == pytest.approx(100 * cs["median_s"] / cf["median_s"])
        fused = fb.OPTIMIZERS[r["optimizer"]].torch_fused
        assert ("torch_foreach" in r["contenders"]) == torch_expected
        assert ("torch_fused" in r["contenders"]) == (torch_expected and fused)
        assert (r["speedup_vs_torch_fused"] is not None) == (torch_expected and fused)
        # fusedoptim.torch on torch tensors: with torch, for every optimizer (Lion included)
        assert ("fusedoptim_torch" in r["contenders"]) == torch_expected
        assert (r["fusedoptim_torch_vs_torch_fused"] is not None) == (torch_expected and fused)
        assert (r["fusedoptim_torch_vs_torch_foreach"] is not None) == (torch_expected and r["optimizer"] != "lion")
        if torch_expected:
            med = {n: c["median_s"] for n, c in r["contenders"].items()}
            assert r["fusedoptim_torch_step_s"] == med["fusedoptim_torch"]
            assert r["fusedoptim_torch_vs_torch_foreach"] == med["torch_foreach"] / med["fusedoptim_torch"]
        else:
            assert r["skipped"]["fusedoptim_torch"] == "torch not importable"


def _check_no_gpu(text, d, reason):
    """The report without a GPU: one note line, no GPU columns, JSON gpu null + reason."""
    notes = [line for line in text.splitlines() if line.startswith("GPU columns left out: ")]
    assert notes == [f"GPU columns left out: {reason}"]
    assert "%peak" not in text and "t.cuda" not in text
    assert d["gpu"] is None and d["gpu_reason"] == reason
    for r in d["results"]:
        for key in ("gpu_step_s", "gpu_gb_s", "gpu_pct_peak", "gpu_roofline_gb_s", "gpu_pct_roofline",
                    "speedup_vs_torch_cuda_fused", "gpu_speedup_vs_cpu", "gpu_peak_gb_s"):
            assert r[key] is None
        assert not set(r["contenders"]) & set(fb.GPU_CONTENDERS)


def test_cli_json_without_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)      # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "cupy", None)       # import cupy -> ImportError
    out = tmp_path / "r.json"
    assert fb.main(["--optimizers", "sgd,adam-amsgrad"] + TINY + ["--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "== 3x50: 3 tensors, 150 float32 elements ==" in text and "%roof" in text
    d = json.loads(out.read_text())
    _check_report(d, ["sgd", "adam-amsgrad"], ["3x50", "1x1"], torch_expected=False)
    assert d["results"][0]["skipped"]["torch_foreach"] == "torch not importable"
    _check_no_gpu(text, d, "cupy is not installed (pip install 'fusedoptim[cuda]')")


def test_cli_json_with_torch(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    out = tmp_path / "r.json"
    try:
        assert fb.main(["--optimizers", "adam,nadam", "--threads", "1"] + TINY + ["--json", str(out)]) == 0
    finally:
        torch.set_num_threads(saved)
        _kernels.set_num_threads(0)
    d = json.loads(out.read_text())
    _check_report(d, ["adam", "nadam"], ["3x50", "1x1"], torch_expected=True)
    assert d["config"]["threads"] == d["config"]["torch_threads"] == 1
    assert "torch.set_num_threads(1)" in capsys.readouterr().out


def test_memory_check_figures():
    m = fb.memory_check(steps=3, n_tensors=4, size=5)
    assert m["steps"] == 3 and m["iterations_after"] == 4      # one state-allocating step + 3
    for key in ("tracemalloc_current_delta", "tracemalloc_peak_delta", "tracemalloc_overhead",
                "rss_before", "rss_after", "rss_delta"):
        assert key in m


def test_module_entry_point_lists():
    r = subprocess.run([sys.executable, "-m", "fusedoptim.bench", "--list"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in list(fb.OPTIMIZERS) + list(fb.WORKLOADS):
        assert name in r.stdout


def test_bad_arguments():
    with pytest.raises(SystemExit):
        fb.main(["--optimizers", "adamm"])
    with pytest.raises(SystemExit):
        fb.main(["--workloads", "1xQ"])
    with pytest.raises(SystemExit):
        fb.main(["--roofline-sizes", "2G"])
    with pytest.raises(SystemExit):
        fb.main(["--contenders", "torch-fusedd"])


def test_contender_names_with_hyphens():
    """``--contenders torch-fused`` means torch_fused (both spellings are accepted)."""
    args = fb.build_parser().parse_args(["--contenders", "fusedoptim,torch-fused,torch_foreach,gpu-stream"])
    assert args.contenders == ["fusedoptim", "torch_fused", "torch_foreach", "gpu_stream"]


def test_native_stream_changes_nothing():
    """The native roofline loop over k buffers (multiplier 0): runs, writes nothing new."""
    params, grads = fb.make_data(fb.parse_workload("2x1001"))
    states = [[np.ones_like(p) for p in params] for _ in range(3)]
    before = [p.copy() for p in params] + [b.copy() for s in states for b in s]
    run = fb.native_stream(5, params, grads, states)
    assert run() is None
    for x, y in zip(params + [b for s in states for b in s], before):
        np.testing.assert_array_equal(x, y)


def test_machine_info_simd_from_the_extension():
    simd = fb.machine_info()["simd"]
    assert simd["clone"] == _kernels.simd_level() in ("x86-64-v4", "x86-64-v3", "x86-64", "generic")


# ====================================================================== GPU columns

A100_PROPS = {"name": b"NVIDIA A100-SXM4-40GB\0\0\0", "major": 8, "minor": 0, "multiProcessorCount": 108,
              "totalGlobalMem": 42_505_273_344, "memoryClockRate": 1_215_000, "memoryBusWidth": 5120}


def test_peak_bandwidth_formula():
    """2 * memoryClockRate[kHz] * 1e3 * memoryBusWidth[bit] / 8, in 1e9 B/s: the datasheet
    figures of three devices (HBM2, HBM3, GDDR6X) from their deviceQuery values."""
    assert fb.peak_bandwidth_gb_s(1_215_000, 5120) == pytest.approx(1555.2)     # A100 40GB
    assert fb.peak_bandwidth_gb_s(2_619_000, 5120) == pytest.approx(3352.32)    # H100 SXM5
    assert fb.peak_bandwidth_gb_s(10_501_000, 384) == pytest.approx(1008.096)   # RTX 4090
    for clk, width in ((0, 5120), (1_215_000, 0), (None, 5120), (1_215_000, None), ("x", 1), (-1, 64),
                       (math.inf, 64)):
        assert fb.peak_bandwidth_gb_s(clk, width) is None
    assert "theoretical" in fb.PEAK_FORMULA and "memoryClockRate" in fb.PEAK_FORMULA


def test_device_figures_from_properties():
    f = fb.device_figures(A100_PROPS)
    assert f["name"] == "NVIDIA A100-SXM4-40GB" and f["compute_capability"] == "8.0"
    assert (f["multiprocessors"], f["memory_clock_khz"], f["memory_bus_width_bits"]) == (108, 1_215_000, 5120)
    assert f["peak_gb_s"] == pytest.approx(1555.2) and f["peak_formula"] == fb.PEAK_FORMULA
    # CUDA 13 dropped cudaDeviceProp.memoryClockRate: the device attributes stand in
    props = {k: v for k, v in A100_PROPS.items() if k != "memoryClockRate"}
    assert fb.device_figures(props)["peak_gb_s"] is None
    f = fb.device_figures(props, {"MemoryClockRate": 1_215_000, "GlobalMemoryBusWidth": 5120})
    assert f["peak_gb_s"] == pytest.approx(1555.2)


class _CudaRuntimeError(RuntimeError):
    pass


class FakeCuPy:
    """A NumPy-backed stand-in for what fusedoptim.bench uses of CuPy, with one fake
    "device" of A100 properties.  Its arrays are NumPy arrays (``ndarray`` here is a class
    nothing is an instance of), so fusedoptim runs them on its CPU backend: this covers the
    report's GPU code path, not the device.  ``RawKernel`` does what the STREAM kernel
    source does (``b += m * g`` for every buffer but the first) and checks the launch."""

    __version__ = "0.0-fake"
    ndarray = type("ndarray", (), {})

    def __init__(self, props=A100_PROPS, device_count=1):
        self.syncs = 0
        self.launches = []
        fake = self

        def count():
            if isinstance(device_count, Exception):
                raise device_count
            return device_count

        class Device:
            def __init__(self, dev=None):
                self.id = 0 if dev is None else dev
                self.attributes = {"MultiProcessorCount": 108}

            def synchronize(self):
                fake.syncs += 1

        self.cuda = SimpleNamespace(Device=Device, runtime=SimpleNamespace(
            getDeviceCount=count, getDevice=lambda: 0, getDeviceProperties=lambda dev: dict(props),
            runtimeGetVersion=lambda: 12090, driverGetVersion=lambda: 12090))

    def asarray(self, a):
        return np.array(a)

    def full(self, n, v, dtype):
        return np.full(n, v, dtype=dtype)

    def get_default_memory_pool(self):
        return SimpleNamespace(free_all_blocks=lambda: None)

    def RawKernel(self, src, name):
        assert f"void {name}(" in src
        fake = self

        def launch(grid, block, args):
            g, *bufs, m, n = args
            assert isinstance(grid, tuple) and isinstance(block, tuple) and grid[0] >= 1
            assert all(b.size == n and b.dtype == g.dtype for b in bufs) and type(m) is g.dtype.type
            for b in bufs:
                b += m * g
            fake.launches.append(name)
        return launch


def test_probe_gpu_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert fb.probe_gpu() == (None, "cupy is not installed (pip install 'fusedoptim[cuda]')")


def test_probe_gpu_cupy_without_device(monkeypatch):
    """CuPy imports, but the runtime finds no device (or no driver): the reason names both."""
    err = _CudaRuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected\nmore")
    monkeypatch.setitem(sys.modules, "cupy", FakeCuPy(device_count=err))
    assert fb.probe_gpu() == (None, "cupy 0.0-fake: no CUDA device (_CudaRuntimeError: cudaErrorNoDevice: "
                                    "no CUDA-capable device is detected)")
    monkeypatch.setitem(sys.modules, "cupy", FakeCuPy(device_count=0))
    assert fb.probe_gpu() == (None, "cupy 0.0-fake: no CUDA device")


def test_report_with_real_cupy_and_no_device(tmp_path, capsys, monkeypatch):
    """With CuPy installed on a machine without a usable device the report runs, prints
    one note and stores the reason."""
    cupy = pytest.importorskip("cupy")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        n = 0
    if n > 0:
        pytest.skip("a CUDA device is present")
    gpu, reason = fb.probe_gpu()
    assert gpu is None and reason.startswith(f"cupy {cupy.__version__}: no CUDA device")
    monkeypatch.setitem(sys.modules, "torch", None)
    out = tmp_path / "r.json"
    assert fb.main(["--optimizers", "sgd"] + TINY + ["--json", str(out)]) == 0
    _check_no_gpu(capsys.readouterr().out, json.loads(out.read_text()), reason)


@pytest.mark.parametrize("argv,reason", [(["--no-gpu"], "disabled (--no-gpu)"),
                                         (["--contenders", "fusedoptim,stream,numpy"],
                                          "no GPU contender requested (--contenders)")])
def test_report_gpu_not_requested(tmp_path, capsys, monkeypatch, argv, reason):
    fake = FakeCuPy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    out = tmp_path / "r.json"
    assert fb.main(["--optimizers", "sgd", "--no-torch"] + TINY + argv + ["--json", str(out)]) == 0
    _check_no_gpu(capsys.readouterr().out, json.loads(out.read_text()), reason)
    assert fake.syncs == 0 and not fake.launches


def test_report_gpu_columns_on_fake_cupy(tmp_path, capsys, monkeypatch):
    """The report's whole GPU path (probe, contenders, synced timing, device STREAM table,
    columns, JSON) on FakeCuPy: figures follow the formulas from the measured medians."""
    fake = FakeCuPy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    out = tmp_path / "r.json"
    argv = ["--optimizers", "sgd,adam", "--gpu-roofline-sizes", "1K,1001"] + TINY + ["--json", str(out)]
    assert fb.main(argv) == 0
    text = capsys.readouterr().out
    d = json.loads(out.read_text())
    torch = fb.import_torch()
    _check_report(d, ["sgd", "adam"], ["3x50", "1x1"], torch_expected=torch is not None)
    assert "GPU columns left out" not in text
    assert ("GPU 0: NVIDIA A100-SXM4-40GB (sm 8.0, 108 SMs, 39.6 GiB) | cupy 0.0-fake, CUDA runtime 12.9 | "
            "peak 1555.2 GB/s (theoretical: 2 x 1215 MHz x 5120 bit / 8)") in text
    assert "GPU STREAM roofline" in text and text.count(fr.HEAD + fr.GPU_HEAD) == 2   # one per workload
    g = d["gpu"]
    assert d["gpu_reason"] is None
    assert g["name"] == "NVIDIA A100-SXM4-40GB" and g["peak_gb_s"] == pytest.approx(1555.2)
    assert g["cupy"] == "0.0-fake" and g["cuda_runtime"] == 12090 and "synchronize" in g["timing"]
    assert [(r["n_elements"], r["k"]) for r in g["roofline"]] == [(n, k) for n in (1024, 1001) for k in range(2, 7)]
    for r in g["roofline"]:
        assert r["bytes"] == 4 * (2 * r["k"] - 1) * r["n_elements"]
        assert r["gb_s"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
        assert r["pct_peak"] == pytest.approx(100 * r["gb_s"] / 1555.2)
    for r in d["results"]:
        c = r["contenders"]
        tg, ts = c["gpu"]["median_s"], c["gpu_stream"]["median_s"]
        assert len(c["gpu"]["samples_s"]) == d["config"]["repeat"]
        assert r["gpu_step_s"] == tg and r["gpu_peak_gb_s"] == pytest.approx(1555.2)
        assert r["gpu_gb_s"] == pytest.approx(r["bytes_per_step"] / tg / 1e9)
        assert r["gpu_pct_peak"] == pytest.approx(100 * r["gpu_gb_s"] / 1555.2)
        assert r["gpu_roofline_gb_s"] == pytest.approx(r["bytes_per_step"] / ts / 1e9)
        assert r["gpu_pct_roofline"] == pytest.approx(100 * ts / tg)
        assert r["gpu_speedup_vs_cpu"] == pytest.approx(r["step_s"] / tg)
        # torch here is a CPU build (or absent): torch on CUDA is skipped with the reason
        assert r["speedup_vs_torch_cuda_fused"] is None and "torch_cuda_fused" not in c
        assert r["skipped"]["torch_cuda_fused"] in ("torch not importable", "torch.cuda.is_available() is False") \
            or torch is not None and torch.cuda.is_available()
    names = {r["workload"]: r for r in d["results"] if r["optimizer"] == "adam"}
    assert names["3x50"]["k"] == 4 and "fo_bench_stream_k4_f32" in fake.launches
    assert fake.syncs >= 2 * d["config"]["repeat"] * 2 * len(d["results"])   # before + after every GPU sample
    assert "gpu %peak" in text.split("summary")[-1]


def test_build_case_gpu_contenders_need_a_gpu():
    params, grads = fb.make_data(fb.parse_workload("2x10"))
    case = fb.build_case(fb.OPTIMIZERS["adam"], fb.parse_workload("2x10"), params, grads,
                         ["fusedoptim"] + list(fb.GPU_CONTENDERS))
    assert set(case.fns) == {"fusedoptim"}
    assert case.skipped == {c: "no GPU" for c in fb.GPU_CONTENDERS}


def test_torch_cuda_contender_failure_is_a_skip(monkeypatch):
    """torch claims CUDA but the fused optimizer can't be built there (here: a CPU-only
    torch): the contender is skipped with a one-line reason, the others still run."""
    torch = pytest.importorskip("torch")
    fake = FakeCuPy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    gpu, why = fb.probe_gpu()
    assert why is None and gpu.peak_gb_s == pytest.approx(1555.2)
    wl = fb.parse_workload("2x10")
    params, grads = fb.make_data(wl)
    case = fb.build_case(fb.OPTIMIZERS["rmsprop"], wl, params, grads, list(fb.GPU_CONTENDERS), torch, gpu)
    assert case.skipped["torch_cuda_fused"] in ("torch.cuda.is_available() is False",
                                                "torch.optim.RMSprop has no fused variant")
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        case = fb.build_case(fb.OPTIMIZERS["adam"], wl, params, grads, list(fb.GPU_CONTENDERS), torch, gpu)
        why = case.skipped["torch_cuda_fused"]
        assert "\n" not in why and len(why) <= 160 and why != "torch.cuda.is_available() is False"
    assert set(case.fns) == {"gpu", "gpu_stream"} and case.k == 4
    case.fns["gpu_stream"]()
    assert fake.launches[-1] == "fo_bench_stream_k4_f32"


def test_measure_with_sync_and_sync_every():
    """Asynchronous contenders: each sample is bracketed by sync() calls; sync_every
    makes every n-th call wait (pytest-benchmark's iterations = n)."""
    log = []
    fns = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    res = fb.measure(fns, repeat=3, min_time=0.0, warmup=1, sync=lambda: log.append("sync"))
    assert set(res) == {"a", "b"} and all(len(r["samples_s"]) == 3 for r in res.values())
    assert all(r["inner"] == 1 for r in res.values())
    timed = log[-3 * 2 * 3:]                     # 3 rounds x 2 contenders x (sync, call, sync)
    assert timed == ["sync", "a", "sync", "sync", "b", "sync",       # the order rotates each round
                     "sync", "b", "sync", "sync", "a", "sync",
                     "sync", "a", "sync", "sync", "b", "sync"]
    assert fb.calibrate_synced(lambda: None, lambda: None, 0.0, warmup=0) == 1
    calls = []
    f = fb.sync_every(lambda: calls.append("f"), lambda: calls.append("s"), 3)
    for _ in range(7):
        f()
    assert calls == ["f", "f", "f", "s", "f", "f", "f", "s", "f"]
    with pytest.raises(ValueError):
        fb.sync_every(f, f, 0)


def test_gpu_stream_source_and_grid():
    name, src = fb.gpu_stream_source(5, "float32")
    assert name == "fo_bench_stream_k5_f32" and src.startswith(f'extern "C" __global__ void {name}(')
    assert src.count("const float* __restrict__ g") == 1 and src.count("float* __restrict__ b") == 4
    assert "float4" in src and "const float m, const long long n" in src
    for b in ("b1", "b2", "b3", "b4"):            # k - 1 buffers read and written, g only read
        assert f"{b}[i] += m * gi;" in src and f"reinterpret_cast<float4*>({b})[i] = v;" in src
    assert "b5" not in src and "g[i] =" not in src
    name, src = fb.gpu_stream_source(2, np.float64)
    assert name == "fo_bench_stream_k2_f64" and "double2" in src and "v.z" not in src
    for bad in ((1, "float32"), (3, "float16"), (3, "int32")):
        with pytest.raises(ValueError):
            fb.gpu_stream_source(*bad)
    assert fb.gpu_stream_grid(1, "float32", 108) == 1
    assert fb.gpu_stream_grid(3, "float32", 108) == 1
    assert fb.gpu_stream_grid(1 << 20, "float32", 108) == 1024           # one float4 per thread
    assert fb.gpu_stream_grid(1 << 26, "float32", 108) == 32 * 108       # capped: grid-stride
    assert fb.gpu_stream_grid(1 << 20, "float64", None) == 32


_HOST_PRELUDE = """
#include <cstdint>
struct float4 { float x, y, z, w; };
struct double2 { double x, y; };
struct fo_dim3 { unsigned x; };
static fo_dim3 gridDim, blockDim, blockIdx, threadIdx;
#define __global__
"""


def _host_launcher(k, dtype):
    """The STREAM kernel source, plus a C entry point running every (block, thread) of a
    launch in turn: the kernel's indexing, compiled for the host."""
    name, src = fb.gpu_stream_source(k, dtype)
    t = "float" if np.dtype(dtype) == np.float32 else "double"
    args = ", ".join([f"(const {t}*)p[0]"] + [f"({t}*)p[{i}]" for i in range(1, k)] + [f"({t})m", "n"])
    return name, src + f"""
extern "C" void run_{name}(void** p, double m, long long n, unsigned grid, unsigned block) {{
  gridDim.x = grid; blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b)
    for (unsigned t = 0; t < block; ++t) {{ blockIdx.x = b; threadIdx.x = t; {name}({args}); }}
}}
"""


def test_gpu_stream_kernel_indexing_on_the_host(tmp_path):
    """Compiled for the host with a sequential grid, the device STREAM kernel adds m * g
    to every element of the k - 1 written buffers exactly once, leaves g alone, for sizes
    around the vector width and grids from 1 block to the computed one."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    units = [_host_launcher(k, dt) for k in (2, 4, 5) for dt in ("float32", "float64")]
    code = _HOST_PRELUDE + "\n".join(src for _, src in units)
    (tmp_path / "stream.cpp").write_text(code)
    lib = tmp_path / "stream.so"
    r = subprocess.run([cxx, "-O1", "-fno-strict-aliasing", "-shared", "-fPIC", "-o", str(lib),
                        str(tmp_path / "stream.cpp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    so = ctypes.CDLL(str(lib))
    for (name, _), (k, dt) in zip(units, [(k, dt) for k in (2, 4, 5) for dt in ("float32", "float64")]):
        fn = getattr(so, f"run_{name}")
        fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_double, ctypes.c_longlong,
                       ctypes.c_uint, ctypes.c_uint]
        for n in (1, 3, 4, 5, 7, 8, 9, 1023, 4099):
            for grid, block in ((1, 1), (2, 3), (fb.gpu_stream_grid(n, dt, 1, threads=4), 4),
                                (fb.gpu_stream_grid(n, dt, 108), fb.GPU_STREAM_THREADS)):
                g = np.arange(1, n + 1, dtype=dt)
                bufs = [np.full(n, float(i), dtype=dt) for i in range(1, k)]
                ptrs = (ctypes.c_void_p * k)(*([g.ctypes.data] + [b.ctypes.data for b in bufs]))
                fn(ptrs, 2.0, n, grid, block)
                np.testing.assert_array_equal(g, np.arange(1, n + 1, dtype=dt))
                for i, b in enumerate(bufs, 1):
                    np.testing.assert_array_equal(b, i + 2.0 * g, err_msg=f"{name} n={n} grid={grid}x{block}")


def test_gpu_stream_source_compiles_with_nvrtc():
    """The kernels NVRTC receives from GpuStream (CuPy's NVRTC; no GPU needed)."""
    pytest.importorskip("cupy")
    try:
        from cupy.cuda.compiler import _NVRTCProgram
        _NVRTCProgram('extern "C" __global__ void f(float* a) { a[0] = 1; }', "probe.cu",
                      method="ptx").compile(("-arch=compute_80",))
    except Exception as e:
        pytest.skip(f"NVRTC is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    for k in range(2, 7):
        for dt in ("float32", "float64"):
            name, src = fb.gpu_stream_source(k, dt)
            # compute_75 (Turing): the oldest virtual architecture both CUDA 12's and CUDA 13's
            # NVRTC accept (CUDA 13 dropped sm_70/compute_70: NVRTC_ERROR_INVALID_OPTION)
            ptx, _ = _NVRTCProgram(src, name + ".cu", method="ptx").compile(("-arch=compute_75", "-ftz=true"))
            ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
            assert f".entry {name}(" in ptx
            assert "ld.global.nc.v" in ptx and "st.global.v" in ptx     # 16-byte loads and stores
