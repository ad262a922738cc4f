"""The GPU side of the benchmark: finding a CUDA device through CuPy, its theoretical
peak bandwidth, and the device STREAM kernel (``stream.cu``) that is its roofline.

Device queries live in small functions (import_cupy, cuda_device_count,
gpu_device_info) and the arithmetic in pure ones (peak_bandwidth_gb_s, device_figures,
gpu_stream_source, gpu_stream_grid), so everything but the device itself is testable
on a machine without one.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Optional, Tuple

import numpy as np

__all__ = ["GPU_TIMING", "PEAK_FORMULA", "one_line", "peak_bandwidth_gb_s", "device_figures",
           "import_cupy", "cuda_device_count", "gpu_device_info", "Gpu", "probe_gpu",
           "GPU_STREAM_THREADS", "gpu_stream_source", "gpu_stream_grid", "GpuStream"]

#: How GPU samples are timed (stored in the JSON and the pytest-benchmark extra_info).
GPU_TIMING = ("host wall clock (time.perf_counter) around a batch of consecutive calls, "
              "cupy.cuda.Device().synchronize() before (untimed) and after (timed) each batch")

PEAK_FORMULA = ("2 * memoryClockRate[kHz] * 1e3 * memoryBusWidth[bit] / 8 / 1e9 GB/s: the theoretical "
                "peak (double data rate x bus width, cudaDeviceProp); no kernel reaches it")


def one_line(e: BaseException, limit: int = 160) -> str:
    """``Type: message``, first line only, at most ``limit`` characters."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def peak_bandwidth_gb_s(memory_clock_khz, bus_width_bits) -> Optional[float]:
    """Theoretical peak memory bandwidth of a CUDA device in GB/s (1e9 B/s):
    ``2 * memoryClockRate[kHz] * 1e3 * memoryBusWidth[bits] / 8 / 1e9`` -- two transfers
    per memory clock (double data rate) over the whole bus, as CUDA's
    ``bandwidthTest``/``deviceQuery`` samples compute it.  A100-SXM4-40GB: 1,215,000 kHz,
    5120 bit -> 1555.2 GB/s.  It is a ceiling no kernel reaches (a good streaming kernel
    typically gets 80-92 % on HBM); the measured device STREAM is the practical roofline.
    None when either figure is missing, zero or not a number."""
    try:
        clk, width = float(memory_clock_khz), float(bus_width_bits)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(clk) and math.isfinite(width) and clk > 0 and width > 0):
        return None
    return 2.0 * clk * 1e3 * width / 8.0 / 1e9


def device_figures(props: dict, attrs: Optional[dict] = None) -> dict:
    """The report's device figures from ``cupy.cuda.runtime.getDeviceProperties(dev)``
    (``props``) and, for the memory clock and bus width when ``props`` lacks them (CUDA
    13 dropped ``cudaDeviceProp.memoryClockRate``), ``cupy.cuda.Device(dev).attributes``
    (``attrs``: ``MemoryClockRate``, ``GlobalMemoryBusWidth``)."""
    attrs = attrs or {}

    def pick(prop_key, attr_key):
        v = props.get(prop_key)
        return v if v else attrs.get(attr_key)

    name = props.get("name", "?")
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    clk = pick("memoryClockRate", "MemoryClockRate")
    width = pick("memoryBusWidth", "GlobalMemoryBusWidth")
    major, minor = props.get("major"), props.get("minor")
    return {"name": str(name),
            "compute_capability": f"{major}.{minor}" if major is not None else None,
            "multiprocessors": props.get("multiProcessorCount") or attrs.get("MultiProcessorCount"),
            "total_memory_bytes": props.get("totalGlobalMem"),
            "memory_clock_khz": clk, "memory_bus_width_bits": width,
            "peak_gb_s": peak_bandwidth_gb_s(clk, width), "peak_formula": PEAK_FORMULA}


def import_cupy():
    """``(cupy, None)``, or ``(None, reason)`` when it does not import."""
    try:
        import cupy
    except ImportError:
        return None, "cupy is not installed (pip install 'fusedoptim[cuda]')"
    except Exception as e:  # a broken install
        return None, f"cupy does not import ({one_line(e)})"
    return cupy, None


def cuda_device_count(cp) -> Tuple[int, Optional[str]]:
    """``(number of CUDA devices, None)``, or ``(0, reason)``: without a driver or a
    device, CuPy raises ``CUDARuntimeError`` (cudaErrorNoDevice,
    cudaErrorInsufficientDriver, ...)."""
    try:
        n = int(cp.cuda.runtime.getDeviceCount())
    except Exception as e:
        return 0, f"no CUDA device ({one_line(e)})"
    if n < 1:
        return 0, "no CUDA device"
    return n, None


def gpu_device_info(cp, dev: int) -> dict:
    """:func:`device_figures` of device ``dev`` plus its id and the CuPy / CUDA versions."""
    props = cp.cuda.runtime.getDeviceProperties(dev)
    attrs = None
    if not (props.get("memoryClockRate") and props.get("memoryBusWidth")):
        attrs = dict(cp.cuda.Device(dev).attributes)
    info = {"device": dev}
    info.update(device_figures(props, attrs))
    info["cupy"] = getattr(cp, "__version__", None)
    for key, fn in (("cuda_runtime", "runtimeGetVersion"), ("cuda_driver", "driverGetVersion")):
        try:
            info[key] = int(getattr(cp.cuda.runtime, fn)())
        except Exception:
            info[key] = None
    return info


@dataclass
class Gpu:
    """A CUDA device reached through CuPy: the module, the device id (the current
    device: choose another with ``CUDA_VISIBLE_DEVICES``) and :func:`gpu_device_info`."""

    cp: object
    device: int
    info: dict

    @property
    def peak_gb_s(self) -> Optional[float]:
        return self.info.get("peak_gb_s")

    def sync(self) -> None:
        """Wait for all work queued on the device (every stream: torch's too)."""
        self.cp.cuda.Device(self.device).synchronize()

    def free(self) -> None:
        """Return CuPy's cached blocks to the driver (between workloads)."""
        try:
            self.cp.get_default_memory_pool().free_all_blocks()
        except Exception:
            pass


def probe_gpu() -> Tuple[Optional[Gpu], Optional[str]]:
    """``(Gpu, None)`` when CuPy imports and sees a CUDA device, else ``(None, reason)``
    -- the one-line reason the report prints and stores as ``gpu_reason``."""
    cp, why = import_cupy()
    if cp is None:
        return None, why
    ver = getattr(cp, "__version__", "?")
    n, why = cuda_device_count(cp)
    if why is not None:
        return None, f"cupy {ver}: {why}"
    try:
        dev = int(cp.cuda.runtime.getDevice())
        info = gpu_device_info(cp, dev)
    except Exception as e:
        return None, f"cupy {ver}: CUDA device not usable ({one_line(e)})"
    return Gpu(cp, dev, info), None


# dtype -> (element type, 16-byte vector type, its components, kernel name suffix)
_GPU_TYPES = {"float32": ("float", "float4", "xyzw", "f32"), "float64": ("double", "double2", "xy", "f64")}
GPU_STREAM_THREADS = 256
_PER_BUFFER = "  // per buffer"


@functools.lru_cache(maxsize=None)
def _stream_template() -> Tuple[str, ...]:
    """The lines of ``stream.cu`` after its leading comment block."""
    lines = resources.files(__package__).joinpath("stream.cu").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith("//"))
    return tuple(lines[start:])


def gpu_stream_source(k: int, dtype="float32") -> Tuple[str, str]:
    """``(name, CUDA C++ source)`` of the device STREAM kernel for ``k`` buffers, from the
    template ``stream.cu``: the first buffer (the gradient) is only read, the k - 1 others
    (parameter, state buffers) are read and written (``b[i] += m * g[i]``, called with
    m = 0), so a call moves ``itemsize * (2k - 1) * n`` bytes, the traffic of an optimizer
    step with k - 2 state buffers and the same formula as the CPU STREAM.  A grid-stride
    loop over 16-byte vectors (float4 / double2: the buffers come from CuPy's allocator,
    256-byte aligned), then the tail element by element."""
    k = int(k)
    if k < 2:
        raise ValueError("the STREAM kernel needs k >= 2 buffers (gradient and parameter)")
    dt = np.dtype(dtype).name
    if dt not in _GPU_TYPES:
        raise ValueError(f"no device STREAM kernel for dtype {dt}")
    t, vt, comps, suffix = _GPU_TYPES[dt]
    name = f"fo_bench_stream_k{k}_{suffix}"
    subs = dict(NAME=name, T=t, VT=vt, W=len(comps),
                VADD=" ".join(f"v.{c} += m * gv.{c};" for c in comps))
    out = []
    for line in _stream_template():
        if line.endswith(_PER_BUFFER):
            line = Template(line[:-len(_PER_BUFFER)])
            out += [line.substitute(subs, B=f"b{i}") for i in range(1, k)]
        else:
            out.append(Template(line).substitute(subs))
    return name, "\n".join(out) + "\n"


def gpu_stream_grid(n: int, dtype, multiprocessors: Optional[int], threads: int = GPU_STREAM_THREADS) -> int:
    """Blocks of the STREAM launch: one vector per thread up to 32 blocks per
    multiprocessor (several waves of resident blocks; the grid-stride loop does the
    rest), at least 1."""
    w = len(_GPU_TYPES[np.dtype(dtype).name][2])
    work = max(n // w, n % w, 1)
    return int(max(1, min(-(-work // threads), 32 * max(1, int(multiprocessors or 1)))))


class GpuStream:
    """The device STREAM roofline: :func:`gpu_stream_source` over ``k`` flat device
    buffers of ``n`` elements (fresh, filled with 1; the multiplier is 0), one launch per
    call.  Flat buffers are the ideal layout for that traffic: the roofline for the fused
    multi-tensor step, whatever the workload's tensor sizes."""

    def __init__(self, gpu: Gpu, n: int, k: int, dtype="float32"):
        cp = gpu.cp
        name, src = gpu_stream_source(k, dtype)
        dt = np.dtype(dtype)
        self.k, self.n, self.dtype = k, int(n), dt.name
        self.kernel = cp.RawKernel(src, name)
        self.bufs = [cp.full(int(n), 1.0, dtype=dt) for _ in range(k)]
        self.grid = (gpu_stream_grid(n, dt, gpu.info.get("multiprocessors")),)
        self.block = (GPU_STREAM_THREADS,)
        self.args = tuple(self.bufs) + (dt.type(0.0), np.int64(n))

    @property
    def nbytes(self) -> int:
        return np.dtype(self.dtype).itemsize * (2 * self.k - 1) * self.n

    def __call__(self) -> None:
        self.kernel(self.grid, self.block, self.args)
