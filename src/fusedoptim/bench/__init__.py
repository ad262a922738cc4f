"""Benchmark report: fusedoptim against the memory roofline, naive NumPy and torch.optim.

Run ``python -m fusedoptim.bench --quick`` (well under a minute) or without ``--quick``
for the full report; ``--help`` lists the options and ``bench/README.md`` explains every
column.  For each optimizer configuration and workload the report gives

* the median time of one ``opt.step(grads)``, in Gelem/s and GB/s;
* ``%roof``: the STREAM kernel of ``_kernels`` (a plain streaming loop with the same bytes
  per element as the optimizer: k = 2 + number of state buffers read, k - 1 written) run
  over the *same* arrays, in the same process, with the same threads, interleaved with the
  other contenders; 100 % means the step runs as fast as memory traffic allows (the
  fastest sample of each against the other's: see ``bench/README.md``, "Why the fastest
  samples");
* the speedup over a straightforward NumPy implementation of the same update (one loop
  over the tensors, expressions with temporaries, as a user would write it);
* the speedup over ``torch.optim`` with ``foreach=True`` and, where torch has one,
  ``fused=True`` (SGD, Adam, AdamW, Adagrad), with ``torch.set_num_threads`` equal to
  fusedoptim's thread count.  torch is optional: without it (and for Lion, which
  torch.optim lacks) those columns are empty.

It also measures the extension-level roofline: STREAM bandwidth in GB/s for k = 2..6
buffers at a few sizes (bytes = itemsize * (2k - 1) per element).

Where CuPy imports and sees a CUDA device, GPU columns are added (else one line says why
they are left out): the same optimizer and workload on cupy arrays through fusedoptim
(``gpu``), with its GB/s, ``%peak`` (of the device's theoretical peak memory bandwidth,
:func:`peak_bandwidth_gb_s`) and ``%roof`` (of a device STREAM kernel with the same
traffic, ``stream.cu`` through :func:`gpu_stream_source`), and ``torch.optim`` fused on
CUDA (``torch_cuda_fused``) where torch sees the device.  GPU samples are timed on the
host around a batch of steps with ``cupy.cuda.Device().synchronize()`` before and after.

The modules, one job each:

* :mod:`.workloads`        workload names and shapes (incl. a GPT-like model), their data
* :mod:`.numpy_baselines`  the naive NumPy optimizers (the ``numpy`` contender)
* :mod:`.contenders`       the optimizer configurations, the contenders of one case, and
  :func:`native_stream`, the one wrapper of the native roofline loop
* :mod:`.gpu`              CuPy device probing, peak bandwidth, the device STREAM kernel
* :mod:`.timing`           calibration and interleaved median sampling
* :mod:`.roofline`         the STREAM tables (extension level and device level)
* :mod:`.memory`           the memory check (tracemalloc, RSS)
* :mod:`.machine`          machine info (SIMD clone as reported by the extension)
* :mod:`.report`           the tables, the summary and the JSON-ready report (:func:`run`)
* :mod:`.cli`              argparse and :func:`main`

Two more benchmarks have their own entry points: :mod:`.muon` (``python -m
fusedoptim.bench.muon``: Muon's Newton-Schulz products against torch's) and
:mod:`.quality` (``python -m fusedoptim.bench.quality``: whether bfloat16 and int8
optimizer state train as well as float32, over seeds; not timed).

The same helpers (workloads, contenders, ``measure``, ``memory_check``, ``probe_gpu``)
drive the pytest-benchmark suite in ``bench/``.
"""
from .cli import build_parser, main
from .contenders import (ALL_CONTENDERS, CONTENDERS, GPU_CONTENDERS, OPTIMIZERS, Case, OptConfig,
                         build_case, import_torch, native_stream)
from .gpu import (GPU_STREAM_THREADS, GPU_TIMING, PEAK_FORMULA, Gpu, GpuStream, device_figures,
                  gpu_device_info, gpu_stream_grid, gpu_stream_source, peak_bandwidth_gb_s, probe_gpu)
from .machine import machine_info
from .memory import memory_check
from .numpy_baselines import NaiveNumPy
from .report import run
from .roofline import gpu_stream_roofline, stream_roofline
from .timing import calibrate, calibrate_synced, measure, sync_every
from .workloads import MODEL_WORKLOADS, QUICK_WORKLOADS, WORKLOADS, Workload, make_data, parse_workload

__all__ = [
    "OPTIMIZERS", "WORKLOADS", "QUICK_WORKLOADS", "MODEL_WORKLOADS", "CONTENDERS", "GPU_CONTENDERS",
    "ALL_CONTENDERS", "OptConfig", "Case", "Workload", "NaiveNumPy", "parse_workload", "make_data",
    "build_case", "import_torch", "native_stream", "measure", "calibrate", "calibrate_synced",
    "sync_every", "stream_roofline", "memory_check", "machine_info", "Gpu", "probe_gpu",
    "peak_bandwidth_gb_s", "device_figures", "gpu_device_info", "gpu_stream_source", "gpu_stream_grid",
    "GPU_STREAM_THREADS", "GPU_TIMING", "PEAK_FORMULA", "GpuStream", "gpu_stream_roofline", "run",
    "build_parser", "main",
]
