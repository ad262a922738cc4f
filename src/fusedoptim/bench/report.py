"""The report: runs the contenders workload by workload, prints one table per workload
and a summary as it goes, and returns every figure as a JSON-ready dict."""
from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from typing import Callable, Dict, Optional, Sequence

from .. import _kernels
from .contenders import ALL_CONTENDERS, GPU_CONTENDERS, OPTIMIZERS, Case, build_case, import_torch
from .gpu import GPU_TIMING, Gpu, one_line, probe_gpu
from .machine import loadavg, machine_info
from .memory import memory_check
from .roofline import gpu_stream_roofline, stream_roofline
from .timing import measure
from .workloads import Workload, make_data, parse_workload

__all__ = ["SCHEMA", "ROOF_NOTE", "HEAD", "GPU_HEAD", "format_time", "row_figures", "row_text", "gpu_line", "run"]

SCHEMA = "fusedoptim.bench/1"

#: How the CPU roofline columns are taken, printed under the header.  Where the arrays fit
#: in the last-level cache (1x1M, k = 4: 28 MB of traffic over 16 MiB of arrays, in a 32 MiB
#: L3) STREAM measures cache bandwidth, which moves with whatever else uses that cache and
#: the clock: on the 2-vCPU development VM, idle, the STREAM samples of one 1M case spread
#: by up to 1.6x (fastest to slowest; 1.4x at 16M) and the medians of two k = 4 cases of
#: one run differed by 1.6x.  Both contenders of a case stream the same arrays in alternating
#: order, so neither leaves the other a colder cache; the likely cause is other guests
#: sharing the host's L3 and clock.  The fastest sample of each contender is the steadiest
#: figure of what the machine delivers.
ROOF_NOTE = ("roofGB/s and %roof from the fastest sample of STREAM and of the step (medians: "
             "JSON roofline_median_gb_s, pct_roofline_median); step, Gelem/s, GB/s: medians")

HEAD = (f"{'optimizer':<26}{'k':>2} {'step':>9} {'Gelem/s':>8} {'GB/s':>7} {'roofGB/s':>8} "
        f"{'%roof':>6} | {'numpy':>8} {'speedup':>7} | {'t.foreach':>9} {'speedup':>7} | "
        f"{'t.fused':>8} {'speedup':>7} | {'fo.torch':>8} {'vs t.fused':>10} {'vs t.foreach':>12}")
GPU_HEAD = (f" | {'gpu':>8} {'GB/s':>7} {'%peak':>5} {'%roof':>5} | {'t.cuda':>8} {'speedup':>7}")


def format_time(s: Optional[float]) -> str:
    """Seconds with 3 significant digits in us, ms or s; ``-`` for none."""
    if s is None or not math.isfinite(s):
        return "-"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.3g}us"
    if abs(s) < 1:
        return f"{s * 1e3:.3g}ms"
    return f"{s:.3g}s"


def _fx(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3g}x"


def row_figures(case: Case, res: Dict[str, dict], peak_gb_s: Optional[float] = None) -> dict:
    """The figures of one table row (one JSON ``results`` entry) from the medians, except
    the CPU roofline: ``roofline_gb_s`` and ``pct_roofline`` come from the best (fastest)
    sample of STREAM and of the step (:data:`ROOF_NOTE`); their median-based values are
    ``roofline_median_gb_s`` and ``pct_roofline_median``."""
    med = {n: r["median_s"] for n, r in res.items()}
    best = {n: r["min_s"] for n, r in res.items()}
    t = med.get("fusedoptim")
    wl = case.workload
    d = {"optimizer": case.config.key, "workload": wl.name, "dtype": wl.dtype,
         "n_tensors": wl.n_tensors, "n_elements": wl.n_elements, "k": case.k,
         "bytes_per_step": case.bytes_per_step, "contenders": res, "skipped": case.skipped}
    ratio = lambda other: (med[other] / t) if (t and other in med) else None  # noqa: E731
    d["step_s"] = t
    d["gelem_s"] = wl.n_elements / t / 1e9 if t else None
    d["gb_s"] = case.bytes_per_step / t / 1e9 if t else None
    s = med.get("stream")
    sb, tb = best.get("stream"), best.get("fusedoptim")
    d["roofline_gb_s"] = case.bytes_per_step / sb / 1e9 if sb else None
    d["pct_roofline"] = 100.0 * sb / tb if (sb and tb) else None
    d["roofline_median_gb_s"] = case.bytes_per_step / s / 1e9 if s else None
    d["pct_roofline_median"] = 100.0 * s / t if (s and t) else None
    d["overhead_s"] = (t - s) if (s and t) else None
    d["speedup_vs_numpy"] = ratio("numpy")
    d["speedup_vs_torch_foreach"] = ratio("torch_foreach")
    d["speedup_vs_torch_fused"] = ratio("torch_fused")
    # fusedoptim.torch (torch tensors, .grad) against torch.optim on the same tensors
    ft = med.get("fusedoptim_torch")
    d["fusedoptim_torch_step_s"] = ft
    d["fusedoptim_torch_vs_torch_fused"] = med["torch_fused"] / ft if (ft and "torch_fused" in med) else None
    d["fusedoptim_torch_vs_torch_foreach"] = med["torch_foreach"] / ft if (ft and "torch_foreach" in med) else None
    # GPU figures (None without a GPU): same bytes-moved formula as the CPU columns
    tg, sg, tc = med.get("gpu"), med.get("gpu_stream"), med.get("torch_cuda_fused")
    d["gpu_step_s"] = tg
    d["gpu_gb_s"] = case.bytes_per_step / tg / 1e9 if tg else None
    d["gpu_peak_gb_s"] = peak_gb_s
    d["gpu_pct_peak"] = 100.0 * d["gpu_gb_s"] / peak_gb_s if (tg and peak_gb_s) else None
    d["gpu_roofline_gb_s"] = case.bytes_per_step / sg / 1e9 if sg else None
    d["gpu_pct_roofline"] = 100.0 * sg / tg if (sg and tg) else None
    d["speedup_vs_torch_cuda_fused"] = tc / tg if (tc and tg) else None
    d["gpu_speedup_vs_cpu"] = t / tg if (t and tg) else None
    return d


def row_text(d: dict, gpu: bool = False) -> str:
    """One table row (under :data:`HEAD`, plus :data:`GPU_HEAD` with ``gpu``)."""
    med = {n: r["median_s"] for n, r in d["contenders"].items()}
    ft = format_time
    g = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    text = (f"{d['optimizer']:<26}{d['k']:>2} {ft(d['step_s']):>9} {g(d['gelem_s'], '.3g'):>8} "
            f"{g(d['gb_s'], '.3g'):>7} {g(d['roofline_gb_s'], '.3g'):>8} {g(d['pct_roofline'], '.0f'):>6} | "
            f"{ft(med.get('numpy')):>8} {_fx(d['speedup_vs_numpy']):>7} | "
            f"{ft(med.get('torch_foreach')):>9} {_fx(d['speedup_vs_torch_foreach']):>7} | "
            f"{ft(med.get('torch_fused')):>8} {_fx(d['speedup_vs_torch_fused']):>7} | "
            f"{ft(d.get('fusedoptim_torch_step_s')):>8} {_fx(d.get('fusedoptim_torch_vs_torch_fused')):>10} "
            f"{_fx(d.get('fusedoptim_torch_vs_torch_foreach')):>12}")
    if gpu:
        text += (f" | {ft(d['gpu_step_s']):>8} {g(d['gpu_gb_s'], '.4g'):>7} {g(d['gpu_pct_peak'], '.0f'):>5} "
                 f"{g(d['gpu_pct_roofline'], '.0f'):>5} | {ft(med.get('torch_cuda_fused')):>8} "
                 f"{_fx(d['speedup_vs_torch_cuda_fused']):>7}")
    return text


def gpu_line(info: dict) -> str:
    """The header line of the device: name, SMs, memory, versions, theoretical peak."""
    parts = [f"GPU {info.get('device')}: {info.get('name')}"]
    mem = info.get("total_memory_bytes")
    parts[0] += (f" (sm {info.get('compute_capability')}, {info.get('multiprocessors')} SMs"
                 + (f", {mem / 2**30:.1f} GiB)" if mem else ")"))
    rt = info.get("cuda_runtime")
    parts.append(f"cupy {info.get('cupy')}" + (f", CUDA runtime {rt // 1000}.{rt % 1000 // 10}" if rt else ""))
    peak = info.get("peak_gb_s")
    parts.append(f"peak {peak:.1f} GB/s (theoretical: 2 x {info['memory_clock_khz'] / 1e3:g} MHz x "
                 f"{info['memory_bus_width_bits']} bit / 8)" if peak else "peak bandwidth unknown")
    return " | ".join(parts)


def run(optimizers: Sequence[str], workloads: Sequence[str], repeat: int, warmup: int,
        min_time: float, threads: Optional[int], roofline_sizes: Sequence[int],
        use_torch: bool = True, contenders: Sequence[str] = ALL_CONTENDERS, seed: int = 0,
        memory: Optional[int] = None, out=None, use_gpu: bool = True,
        gpu_roofline_sizes: Sequence[int] = ()) -> dict:
    """Produce the report (printed to ``out``, default stdout) and return it as a
    JSON-ready dict.  GPU contenders run when ``use_gpu``, they are among ``contenders``
    and :func:`.gpu.probe_gpu` finds a device; otherwise one line says why and the JSON has
    ``"gpu": null`` and ``"gpu_reason"``."""
    def say(*a):
        print(*a, file=out if out is not None else sys.stdout, flush=True)

    configs = [OPTIMIZERS[o] for o in optimizers]
    wls = [parse_workload(w) for w in workloads]
    if not use_gpu:
        gpu, gpu_reason = None, "disabled (--no-gpu)"
    elif not any(c in GPU_CONTENDERS for c in contenders):
        gpu, gpu_reason = None, "no GPU contender requested (--contenders)"
    else:
        gpu, gpu_reason = probe_gpu()
    cpu_contenders = [c for c in contenders if c not in GPU_CONTENDERS]
    gpu_contenders = [c for c in contenders if c in GPU_CONTENDERS] if gpu is not None else []
    torch = import_torch() if use_torch and any(c.startswith("torch") for c in
                                                 cpu_contenders + gpu_contenders) else None
    if threads is not None:
        _kernels.set_num_threads(threads)
    nthreads = _kernels.get_num_threads()
    if torch is not None:
        torch.set_num_threads(nthreads)
    info = machine_info(torch)
    report = {"schema": SCHEMA, "machine": info,
              "config": {"threads": nthreads, "torch_threads": info["torch_threads"], "repeat": repeat,
                         "warmup": warmup, "min_time_s": min_time, "seed": seed,
                         "optimizers": list(optimizers), "workloads": list(workloads),
                         "contenders": list(contenders)},
              "roofline": [], "results": [], "memory": None,
              "gpu": None if gpu is None else dict(gpu.info, roofline=[], timing=GPU_TIMING),
              "gpu_reason": gpu_reason}
    t_start = time.perf_counter()
    _say_header(say, info, torch, nthreads, repeat, min_time, gpu, gpu_reason)
    if roofline_sizes:
        report["roofline"] = _roofline_table(say, roofline_sizes, sorted({1, nthreads}), repeat, min_time)
    if gpu is not None and gpu_roofline_sizes:
        report["gpu"]["roofline"] = _gpu_roofline_table(say, gpu, gpu_roofline_sizes, repeat, min_time)
    for wl in wls:
        report["results"] += _workload_table(say, wl, configs, seed, cpu_contenders + gpu_contenders,
                                             torch, gpu, repeat, min_time, warmup)
    if memory:
        report["memory"] = _memory_section(say, memory)
    _summary(report, say)
    report["machine"]["loadavg_end"] = loadavg()
    report["wall_s"] = time.perf_counter() - t_start
    say(f"\n({report['wall_s']:.1f} s)")
    return report


def _say_header(say: Callable, info: dict, torch, nthreads: int, repeat: int, min_time: float,
                gpu: Optional[Gpu], gpu_reason: Optional[str]) -> None:
    say(f"fusedoptim {info['fusedoptim']} bench | {info['cpu_model']} | {info['cpus_available']} CPUs available"
        f" | load {tuple(round(x, 2) for x in info['loadavg']) if info['loadavg'] else '?'}")
    say(f"numpy {info['numpy']} (single-threaded elementwise) | torch {info['torch'] or 'not used'}"
        + (f" (torch.set_num_threads({info['torch_threads']}))" if torch is not None else "")
        + f" | fusedoptim threads {nthreads} (OpenMP {'on' if info['openmp'] else 'off'}, grain "
        f"{info['grain_size']}) | SIMD {info['simd']['clone']}")
    say(f"median of {repeat} interleaved samples, each >= {min_time * 1e3:g} ms of steps; "
        f"speedup = contender time / fusedoptim time (>1: fusedoptim faster)")
    say(ROOF_NOTE)
    if gpu is None:
        say(f"GPU columns left out: {gpu_reason}")
    else:
        say(gpu_line(gpu.info))
        say("GPU columns: fusedoptim on cupy arrays (gpu step, GB/s, %peak of the theoretical peak, %roof of "
            "the device STREAM), torch fused on CUDA (t.cuda); timed around batches of steps with "
            "Device().synchronize()")


def _roofline_table(say: Callable, sizes, ths, repeat: int, min_time: float) -> list:
    say("\nSTREAM roofline (extension level, float32, bytes = 4*(2k-1) per element), GB/s of the fastest sample")
    say(f"{'elements':>10} {'threads':>7} " + " ".join(f"{'k=' + str(k):>7}" for k in range(2, 7)))
    roof = stream_roofline(sizes, ths, repeat=repeat, min_time=min_time)
    for n in sizes:
        for th in ths:
            row = [r for r in roof if r["n_elements"] == n and r["threads"] == th]
            say(f"{n:>10} {th:>7} " + " ".join(f"{r['gb_s']:>7.1f}" for r in row))
    return roof


def _gpu_roofline_table(say: Callable, gpu: Gpu, sizes, repeat: int, min_time: float) -> list:
    peak = gpu.peak_gb_s
    say("\nGPU STREAM roofline (device level, float32, bytes = 4*(2k-1) per element), GB/s"
        + (f" (% of the {peak:.0f} GB/s theoretical peak)" if peak else ""))
    say(f"{'elements':>10} " + " ".join(f"{'k=' + str(k):>13}" for k in range(2, 7)))
    try:
        groof = gpu_stream_roofline(gpu, sizes, repeat=repeat, min_time=min_time)
    except Exception as e:  # out of device memory for the largest size, ...
        say(f"  failed: {one_line(e)}")
        groof = []
    for n in sizes:
        row = [r for r in groof if r["n_elements"] == n]
        if row:
            say(f"{n:>10} " + " ".join(
                f"{r['gb_s']:>7.1f}" + (f" ({r['pct_peak']:>3.0f}%)" if r["pct_peak"] is not None else " " * 7)
                for r in row))
    return groof


def _workload_table(say: Callable, wl: Workload, configs, seed: int, contenders, torch,
                    gpu: Optional[Gpu], repeat: int, min_time: float, warmup: int) -> list:
    """Time every configuration on ``wl``, print its table, return its result rows."""
    t_wl = time.perf_counter()
    rows = []
    params, grads = make_data(wl, seed)
    say(f"\n== {wl.name}: {wl.n_tensors} tensor{'s' if wl.n_tensors > 1 else ''}, "
        f"{wl.n_elements:,} {wl.dtype} elements" + (f" ({wl.note})" if wl.note else "") + " ==")
    say(HEAD + (GPU_HEAD if gpu is not None else ""))
    for cfg in configs:
        case = build_case(cfg, wl, params, grads, contenders, torch, gpu)
        fns = {n: f for n, f in case.fns.items() if n not in GPU_CONTENDERS}
        res = measure(fns, repeat, min_time, warmup)
        gfns = {n: f for n, f in case.fns.items() if n in GPU_CONTENDERS}
        if gfns:
            res.update(measure(gfns, repeat, min_time, warmup, sync=gpu.sync))
        d = row_figures(case, res, gpu.peak_gb_s if gpu is not None else None)
        rows.append(d)
        say(row_text(d, gpu is not None))
        del case, res, fns, gfns
    del params, grads
    gc.collect()
    if gpu is not None:
        gpu.free()
    say(f"({time.perf_counter() - t_wl:.1f} s)")
    return rows


def _memory_section(say: Callable, steps: int) -> dict:
    say(f"\nmemory check: Adam, 200 x 327 float32, {steps} steps")
    m = memory_check(steps=steps)
    mb = lambda x: "?" if x is None else f"{x / 2**20:+.2f} MiB"  # noqa: E731
    say(f"  tracemalloc current delta {m['tracemalloc_current_delta']} B, peak delta "
        f"{m['tracemalloc_peak_delta']} B; RSS delta {mb(m['rss_delta'])} (tracemalloc's own "
        f"{m['tracemalloc_overhead'] / 2**20:.2f} MiB); optimizer state {m['state_bytes']} B")
    return m


def _summary(report: dict, say: Callable) -> None:
    rows = report["results"]
    if not rows:
        return
    say("\nsummary (medians over optimizers):")
    for wl in dict.fromkeys(r["workload"] for r in rows):
        rs = [r for r in rows if r["workload"] == wl]
        parts = []
        for key, label, f in (("pct_roofline", "%roof", "{:.0f}"), ("speedup_vs_numpy", "vs numpy", "{:.3g}x"),
                              ("speedup_vs_torch_foreach", "vs torch foreach", "{:.3g}x"),
                              ("speedup_vs_torch_fused", "vs torch fused", "{:.3g}x"),
                              ("fusedoptim_torch_vs_torch_fused", "fusedoptim.torch vs torch fused", "{:.3g}x"),
                              ("fusedoptim_torch_vs_torch_foreach", "fusedoptim.torch vs torch foreach",
                               "{:.3g}x"),
                              ("gpu_pct_peak", "gpu %peak", "{:.0f}"), ("gpu_pct_roofline", "gpu %roof", "{:.0f}"),
                              ("speedup_vs_torch_cuda_fused", "gpu vs torch cuda fused", "{:.3g}x")):
            v = [r[key] for r in rs if r[key] is not None]
            if v:
                parts.append(f"{label} {f.format(statistics.median(v))}")
        ov = [r["overhead_s"] for r in rs if r["overhead_s"] is not None]
        st = [r["contenders"]["stream"]["median_s"] for r in rs if "stream" in r["contenders"]]
        if ov and st:
            parts.append(f"step - STREAM call {format_time(statistics.median(ov))} "
                         f"(STREAM call {format_time(statistics.median(st))})")
        say(f"  {wl:<14} " + ", ".join(parts))
