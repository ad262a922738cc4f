"""The machine the benchmark ran on, for the report's header and its JSON."""
from __future__ import annotations

import os
import platform

import numpy as np

from .. import _kernels

__all__ = ["cpu_model", "loadavg", "machine_info"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info(torch=None) -> dict:
    """CPU, versions, thread settings, and ``simd``: the loop clone the extension runs on
    this CPU (``clone``: ``"x86-64-v4"``, ``"x86-64-v3"``, ``"x86-64"`` or ``"generic"``),
    as the extension itself reports it (``_kernels.simd_level()``)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    from .. import __version__
    return {
        "cpu_model": cpu_model(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "cpus_available": affinity, "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None) if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "fusedoptim": __version__, "fusedoptim_threads": _kernels.get_num_threads(),
        "openmp": bool(_kernels.HAVE_OPENMP), "grain_size": _kernels.get_grain_size(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "simd": {"clone": _kernels.simd_level(), "how": "reported by the extension: _kernels.simd_level()"},
        "loadavg": loadavg(),
    }
