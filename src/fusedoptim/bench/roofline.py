"""The roofline tables: STREAM bandwidth for k = 2..6 buffers at a few sizes, through the
extension (:func:`stream_roofline`) and on the GPU (:func:`gpu_stream_roofline`)."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .. import _kernels
from .contenders import native_stream
from .gpu import Gpu, GpuStream
from .timing import measure

__all__ = ["stream_roofline", "gpu_stream_roofline"]


def stream_roofline(sizes: Sequence[int], threads_list: Sequence[int], ks=(2, 3, 4, 5, 6),
                    dtype="float32", repeat: int = 7, min_time: float = 0.005) -> List[dict]:
    """Extension-level roofline: STREAM over k buffers of n elements, in GB/s of the
    fastest sample (``gb_s``; ``median_gb_s`` of the median one): at sizes that fit in the
    last-level cache the samples spread widely on a shared machine (see
    :data:`.report.ROOF_NOTE`)."""
    out = []
    dt = np.dtype(dtype)
    saved = _kernels.get_num_threads()
    try:
        for n in sizes:
            bufs = [np.full(n, 1.0, dtype=dt) for _ in range(max(ks))]
            fns = {k: native_stream(k, [bufs[0]], [bufs[1]], [[b] for b in bufs[2:k]]) for k in ks}
            for th in threads_list:
                _kernels.set_num_threads(th)
                res = measure(fns, repeat, min_time)
                for k in ks:
                    nbytes = dt.itemsize * (2 * k - 1) * n
                    out.append({"n_elements": n, "dtype": dtype, "threads": th, "k": k,
                                "bytes": nbytes, "median_s": res[k]["median_s"], "min_s": res[k]["min_s"],
                                "gb_s": nbytes / res[k]["min_s"] / 1e9,
                                "median_gb_s": nbytes / res[k]["median_s"] / 1e9})
            del bufs, fns
    finally:
        _kernels.set_num_threads(saved)
    return out


def gpu_stream_roofline(gpu: Gpu, sizes: Sequence[int], ks=(2, 3, 4, 5, 6), dtype="float32",
                        repeat: int = 7, min_time: float = 0.005) -> List[dict]:
    """Device-level roofline: :class:`.gpu.GpuStream` over k buffers of n elements, in
    GB/s and % of the theoretical peak."""
    out = []
    peak = gpu.peak_gb_s
    for n in sizes:
        streams = {k: GpuStream(gpu, n, k, dtype) for k in ks}
        res = measure(streams, repeat, min_time, warmup=1, sync=gpu.sync)
        for k in ks:
            gb = streams[k].nbytes / res[k]["median_s"] / 1e9
            out.append({"n_elements": n, "dtype": np.dtype(dtype).name, "k": k, "bytes": streams[k].nbytes,
                        "median_s": res[k]["median_s"], "gb_s": gb,
                        "pct_peak": 100.0 * gb / peak if peak else None})
        del streams
        gpu.free()
    return out
