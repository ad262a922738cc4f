"""Benchmark report: fusedoptim against the memory roofline, naive NumPy and torch.optim.

Run ``python -m fusedoptim.bench --quick`` (well under a minute) or without ``--quick``
for the full report; ``--help`` lists the options and ``bench/README.md`` explains every
column.  For each optimizer configuration and workload the report gives

* the median time of one ``opt.step(grads)``, in Gelem/s and GB/s;
* ``%roof``: the STREAM kernel of ``_kernels`` (a plain streaming loop with the same bytes
  per element as the optimizer: k = 2 + number of state buffers read, k - 1 written) run
  over the *same* arrays, in the same process, with the same threads, interleaved with the
  other contenders; 100 % means the step runs as fast as memory traffic allows;
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
traffic, :func:`gpu_stream_source`), and ``torch.optim`` fused on CUDA
(``torch_cuda_fused``) where torch sees the device.  GPU samples are timed on the host
around a batch of steps with ``cupy.cuda.Device().synchronize()`` before and after.

Timing: ``time.perf_counter``; warm-up steps first (they also create the optimizer
state); each sample times enough consecutive steps to last ``--min-time`` seconds; the
contenders take turns sample by sample, in a rotating order, so drift on a busy machine
hits all of them alike; the figure is the median sample.  The garbage collector is off
while timing.

The same helpers (workloads, contenders, ``measure``, ``memory_check``, ``probe_gpu``)
drive the pytest-benchmark suite in ``bench/``.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import struct
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _kernels
from .optim import SGD, Adam, AdamW, Adagrad, RMSprop, Adamax, NAdam, RAdam, Adadelta, Rprop, Lion

__all__ = [
    "OPTIMIZERS", "WORKLOADS", "QUICK_WORKLOADS", "CONTENDERS", "GPU_CONTENDERS", "ALL_CONTENDERS",
    "OptConfig", "Workload", "parse_workload", "make_data", "build_case", "measure", "calibrate",
    "calibrate_synced", "sync_every", "stream_roofline", "memory_check", "machine_info",
    "Gpu", "probe_gpu", "peak_bandwidth_gb_s", "device_figures", "gpu_device_info",
    "gpu_stream_source", "GpuStream", "gpu_stream_roofline", "run", "main",
]

KI = 1 << 10
MI = 1 << 20

# ============================================================================ workloads


@dataclass(frozen=True)
class Workload:
    """A list of parameter shapes of one dtype."""

    name: str
    shapes: Tuple[Tuple[int, ...], ...]
    dtype: str = "float32"
    note: str = ""

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    @property
    def n_elements(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


def gpt_block_shapes(vocab: int = 2048, ctx: int = 256, d: int = 256, layers: int = 4,
                     mlp: int = 4) -> List[Tuple[int, ...]]:
    """Parameter shapes of a small GPT-2-style decoder (tied output head): token and
    position embeddings, then per layer LayerNorm, fused QKV projection, output
    projection, LayerNorm, MLP up and down projections (weights and biases), then the
    final LayerNorm.  Defaults: 52 tensors, 3,749,376 elements, sizes 256 .. 524,288."""
    shapes: List[Tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),                 # ln_1 weight, bias
                   (d, 3 * d), (3 * d,),       # attn.c_attn (QKV)
                   (d, d), (d,),               # attn.c_proj
                   (d,), (d,),                 # ln_2 weight, bias
                   (d, mlp * d), (mlp * d,),   # mlp.c_fc
                   (mlp * d, d), (d,)]         # mlp.c_proj
    shapes += [(d,), (d,)]                     # ln_f
    return shapes


MODEL_WORKLOADS = {
    "gpt-4L-d256": Workload("gpt-4L-d256", tuple(gpt_block_shapes()), "float32",
                            "GPT-2-style decoder, 4 layers, d=256, vocab 2048, ctx 256: "
                            "52 tensors, 3.75M elements (weights, biases, LayerNorms)"),
}

#: Workloads of the full report, in print order.
WORKLOADS = ("1x1M", "1x16M", "100x10K", "200x327", "f64-1x1M", "gpt-4L-d256", "1x1")
#: ``--quick`` drops the 16M workload.
QUICK_WORKLOADS = ("1x1M", "100x10K", "200x327", "f64-1x1M", "gpt-4L-d256", "1x1")

_SPEC = re.compile(r"(?:(f32|f64)-)?(\d+)x(\d+)([KM]?)")


def parse_workload(name: str) -> Workload:
    """``"NxS"``: N tensors of S elements (suffix K = 2**10, M = 2**20), float32, or
    float64 with the prefix ``f64-``; or a model name from ``MODEL_WORKLOADS``.
    ``"100x10K"`` is 100 tensors of 10,240 elements (1,024,000 in total)."""
    if name in MODEL_WORKLOADS:
        return MODEL_WORKLOADS[name]
    m = _SPEC.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown workload {name!r}: use NxS (e.g. 1x1M, 200x327, f64-1x1M) "
                         f"or one of {sorted(MODEL_WORKLOADS)}")
    prefix, n, s, suffix = m.groups()
    n, s = int(n), int(s) * {"": 1, "K": KI, "M": MI}[suffix]
    if n < 1 or s < 1:
        raise ValueError(f"workload {name!r}: tensor count and size must be >= 1")
    return Workload(name, tuple([(s,)] * n), "float64" if prefix == "f64" else "float32")


def make_data(wl: Workload, seed: int = 0):
    """Initial parameters and gradients (standard normal) for ``wl``.  The gradients
    are read-only: fusedoptim and the NumPy baselines share them and never write them."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(wl.dtype)
    params = [rng.standard_normal(s, dtype=dt) for s in wl.shapes]
    grads = [rng.standard_normal(s, dtype=dt) for s in wl.shapes]
    for g in grads:
        g.flags.writeable = False
    return params, grads


# ===================================================== naive NumPy reference steps
# Written the way a NumPy user would: one Python loop over the tensors, whole-array
# expressions with temporaries, torch's formulas.  Gradients are never modified.

def _wd(p, g, grp):
    wd = grp.get("weight_decay", 0.0)
    if wd and not grp.get("decoupled_weight_decay", False):
        g = g + wd * p
    return g


def _np_sgd(p, g, st, grp, t):
    lr, mom, damp = grp["lr"], grp["momentum"], grp["dampening"]
    g = _wd(p, g, grp)
    if mom != 0:
        if "momentum_buffer" not in st:
            st["momentum_buffer"] = g.copy()
        else:
            b = st["momentum_buffer"]
            b[...] = mom * b + (1 - damp) * g
        b = st["momentum_buffer"]
        g = g + mom * b if grp["nesterov"] else b
    p -= lr * g


def _np_adam(p, g, st, grp, t):
    lr, (b1, b2), eps, wd = grp["lr"], grp["betas"], grp["eps"], grp["weight_decay"]
    if grp["decoupled_weight_decay"]:
        p *= 1 - lr * wd
    g = _wd(p, g, grp)
    m = st.setdefault("exp_avg", np.zeros_like(p))
    v = st.setdefault("exp_avg_sq", np.zeros_like(p))
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    if grp["amsgrad"]:
        vmax = st.setdefault("max_exp_avg_sq", np.zeros_like(p))
        vmax[...] = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / math.sqrt(bc2) + eps
    else:
        denom = np.sqrt(v) / math.sqrt(bc2) + eps
    p -= (lr / bc1) * m / denom


def _np_adagrad(p, g, st, grp, t):
    g = _wd(p, g, grp)
    s = st.setdefault("sum", np.full_like(p, grp["initial_accumulator_value"]))
    clr = grp["lr"] / (1 + (t - 1) * grp["lr_decay"])
    s[...] = s + g * g
    p -= clr * g / (np.sqrt(s) + grp["eps"])


def _np_rmsprop(p, g, st, grp, t):
    a, eps, mom, lr = grp["alpha"], grp["eps"], grp["momentum"], grp["lr"]
    g = _wd(p, g, grp)
    v = st.setdefault("square_avg", np.zeros_like(p))
    v[...] = a * v + (1 - a) * g * g
    if grp["centered"]:
        ga = st.setdefault("grad_avg", np.zeros_like(p))
        ga[...] = a * ga + (1 - a) * g
        avg = np.sqrt(v - ga * ga) + eps
    else:
        avg = np.sqrt(v) + eps
    if mom > 0:
        b = st.setdefault("momentum_buffer", np.zeros_like(p))
        b[...] = mom * b + g / avg
        p -= lr * b
    else:
        p -= lr * g / avg


def _np_adamax(p, g, st, grp, t):
    lr, (b1, b2), eps = grp["lr"], grp["betas"], grp["eps"]
    g = _wd(p, g, grp)
    m = st.setdefault("exp_avg", np.zeros_like(p))
    u = st.setdefault("exp_inf", np.zeros_like(p))
    m[...] = b1 * m + (1 - b1) * g
    u[...] = np.maximum(b2 * u, np.abs(g) + eps)
    p -= lr / (1 - b1 ** t) * m / u


def _np_nadam(p, g, st, grp, t):
    lr, (b1, b2), eps, wd, psi = grp["lr"], grp["betas"], grp["eps"], grp["weight_decay"], grp["momentum_decay"]
    if grp["decoupled_weight_decay"]:
        p *= 1 - lr * wd
    g = _wd(p, g, grp)
    m = st.setdefault("exp_avg", np.zeros_like(p))
    v = st.setdefault("exp_avg_sq", np.zeros_like(p))
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    st["mu_product"] = mu_product = st.get("mu_product", 1.0) * mu
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v / (1 - b2 ** t)) + eps
    p -= lr * (1 - mu) / (1 - mu_product) * g / denom
    p -= lr * mu_next / (1 - mu_product * mu_next) * m / denom


def _np_radam(p, g, st, grp, t):
    lr, (b1, b2), eps, wd = grp["lr"], grp["betas"], grp["eps"], grp["weight_decay"]
    if grp["decoupled_weight_decay"]:
        p *= 1 - lr * wd
    g = _wd(p, g, grp)
    m = st.setdefault("exp_avg", np.zeros_like(p))
    v = st.setdefault("exp_avg_sq", np.zeros_like(p))
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / bc2
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        p -= (m / bc1) * lr * (math.sqrt(bc2) / (np.sqrt(v) + eps)) * rect
    else:
        p -= (m / bc1) * lr


def _np_adadelta(p, g, st, grp, t):
    rho, eps, lr = grp["rho"], grp["eps"], grp["lr"]
    g = _wd(p, g, grp)
    v = st.setdefault("square_avg", np.zeros_like(p))
    u = st.setdefault("acc_delta", np.zeros_like(p))
    v[...] = rho * v + (1 - rho) * g * g
    delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    u[...] = rho * u + (1 - rho) * delta * delta
    p -= lr * delta


def _np_rprop(p, g, st, grp, t):
    (etaminus, etaplus), (lo, hi) = grp["etas"], grp["step_sizes"]
    prev = st.setdefault("prev", np.zeros_like(p))
    step = st.setdefault("step_size", np.full_like(p, grp["lr"]))
    d = g * prev
    f = np.where(d > 0, p.dtype.type(etaplus), np.where(d < 0, p.dtype.type(etaminus), p.dtype.type(1)))
    step[...] = np.clip(step * f, lo, hi)
    prev[...] = np.where(d < 0, 0, g)
    p -= np.sign(prev) * step


def _np_lion(p, g, st, grp, t):
    lr, (b1, b2), wd = grp["lr"], grp["betas"], grp["weight_decay"]
    m = st.setdefault("exp_avg", np.zeros_like(p))
    p *= 1 - lr * wd
    p -= lr * np.sign(b1 * m + (1 - b1) * g)
    m[...] = b2 * m + (1 - b2) * g


class NaiveNumPy:
    """Straightforward NumPy optimizer: ``step(grads)`` loops over the tensors."""

    def __init__(self, rule: Callable, params: Sequence[np.ndarray], group: dict):
        if group.get("maximize"):
            raise ValueError("the naive NumPy baselines do not implement maximize")
        self.rule = rule
        self.params = list(params)
        self.group = dict(group)
        self.state: List[dict] = [{} for _ in self.params]
        self.t = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        for p, g, st in zip(self.params, grads, self.state):
            self.rule(p, g, st, self.group, self.t)


# ======================================================== optimizer configurations


@dataclass(frozen=True)
class OptConfig:
    """One optimizer configuration, spelled the same way for fusedoptim and torch."""

    key: str
    cls: type
    kwargs: dict
    naive: Callable
    torch_fused: bool   # torch.optim has fused=True for this class on CPU
    in_torch: bool = True   # torch.optim has this class at all (Lion: no)

    @property
    def torch_name(self) -> str:
        return self.cls.__name__


OPTIMIZERS: Dict[str, OptConfig] = {c.key: c for c in [
    OptConfig("sgd", SGD, dict(lr=1e-3), _np_sgd, True),
    OptConfig("sgd-momentum", SGD, dict(lr=1e-3, momentum=0.9), _np_sgd, True),
    OptConfig("sgd-nesterov", SGD, dict(lr=1e-3, momentum=0.9, nesterov=True), _np_sgd, True),
    OptConfig("adam", Adam, dict(lr=1e-3), _np_adam, True),
    OptConfig("adamw", AdamW, dict(lr=1e-3, weight_decay=1e-2), _np_adam, True),
    OptConfig("adam-amsgrad", Adam, dict(lr=1e-3, amsgrad=True), _np_adam, True),
    OptConfig("adagrad", Adagrad, dict(lr=1e-2), _np_adagrad, True),
    OptConfig("rmsprop", RMSprop, dict(lr=1e-2), _np_rmsprop, False),
    OptConfig("rmsprop-centered-momentum", RMSprop, dict(lr=1e-2, centered=True, momentum=0.9),
              _np_rmsprop, False),
    OptConfig("adamax", Adamax, dict(lr=2e-3), _np_adamax, False),
    OptConfig("nadam", NAdam, dict(lr=2e-3), _np_nadam, False),
    OptConfig("radam", RAdam, dict(lr=1e-3), _np_radam, False),
    OptConfig("adadelta", Adadelta, dict(lr=1.0), _np_adadelta, False),
    OptConfig("rprop", Rprop, dict(lr=1e-2), _np_rprop, False),
    OptConfig("lion", Lion, dict(lr=1e-4), _np_lion, False, in_torch=False),
]}

#: CPU contender names, in the order the report prints them.
CONTENDERS = ("fusedoptim", "stream", "numpy", "torch_foreach", "torch_fused")
#: GPU contenders: fusedoptim on cupy arrays, the device STREAM kernel, torch fused on CUDA.
#: Built only with a :class:`Gpu` (see :func:`probe_gpu`); timed with ``measure(sync=...)``.
GPU_CONTENDERS = ("gpu", "gpu_stream", "torch_cuda_fused")
ALL_CONTENDERS = CONTENDERS + GPU_CONTENDERS


def import_torch():
    """torch, or None when it is not importable (it is optional)."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    return torch


@dataclass
class Case:
    """One optimizer configuration on one workload: a zero-argument ``step`` callable
    per contender, each over private copies of the parameters.  fusedoptim, STREAM and
    NumPy share the (read-only) gradients; each torch contender gets its own copies,
    because torch may write ``.grad`` (SGD nesterov with foreach adds the momentum
    buffer into it, legal in torch where backward overwrites ``.grad`` every step).
    GPU contenders (``GPU_CONTENDERS``) work on device copies; their calls only queue
    work on the device, so time them with ``measure(..., sync=gpu.sync)``."""

    config: OptConfig
    workload: Workload
    k: int                                   # buffers streamed: param, grad, state...
    fns: Dict[str, Callable[[], None]] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)   # contender -> reason

    @property
    def bytes_per_step(self) -> int:
        """Minimum memory traffic of one step: k buffers read, k - 1 written."""
        return self.workload.itemsize * (2 * self.k - 1) * self.workload.n_elements


def build_case(config: OptConfig, wl: Workload, params: Sequence[np.ndarray],
               grads: Sequence[np.ndarray], contenders: Sequence[str] = CONTENDERS,
               torch=None, gpu: Optional["Gpu"] = None) -> Case:
    """Build the requested contenders; each has taken one step already (state exists).

    ``stream`` runs the STREAM kernel over the fusedoptim optimizer's own parameter,
    gradient and state arrays with a zero multiplier (it changes nothing).  torch
    contenders are skipped (``case.skipped``) when ``torch`` is None or has no such
    variant; GPU contenders when ``gpu`` is None or building them fails (the reason is
    in ``case.skipped``)."""
    grads = list(grads)
    fo_params = [p.copy() for p in params]
    opt = config.cls(fo_params, **config.kwargs)
    opt.step(grads)
    st0 = opt.state[fo_params[0]]
    names = [n for n, v in st0.items() if isinstance(v, np.ndarray)]
    case = Case(config, wl, 2 + len(names))
    for name in contenders:
        if name == "fusedoptim":
            case.fns[name] = lambda opt=opt: opt.step(grads)
        elif name == "stream":
            states = [[opt.state[p][n] for p in fo_params] for n in names]
            hp = (float(case.k), 0.0)
            fs, algo = _kernels.fused_step, _kernels.STREAM
            case.fns[name] = lambda: fs(algo, hp, fo_params, grads, states)
        elif name == "numpy":
            naive = NaiveNumPy(config.naive, [p.copy() for p in params], opt.param_groups[0])
            naive.step(grads)
            case.fns[name] = lambda naive=naive: naive.step(grads)
        elif name in ("torch_foreach", "torch_fused"):
            if torch is None:
                case.skipped[name] = "torch not importable"
                continue
            if not config.in_torch:
                case.skipped[name] = f"torch.optim has no {config.torch_name}"
                continue
            if name == "torch_fused" and not config.torch_fused:
                case.skipped[name] = f"torch.optim.{config.torch_name} has no fused variant"
                continue
            tparams = [torch.from_numpy(p.copy()) for p in params]
            for tp, g in zip(tparams, grads):
                tp.grad = torch.from_numpy(np.array(g))   # a private, writeable copy
            flag = {"foreach": True} if name == "torch_foreach" else {"fused": True}
            try:
                topt = getattr(torch.optim, config.torch_name)(tparams, **config.kwargs, **flag)
                topt.step()
            except (TypeError, RuntimeError, ValueError) as e:  # variant missing in this torch
                case.skipped[name] = f"{type(e).__name__}: {e}"
                continue
            case.fns[name] = topt.step
        elif name in GPU_CONTENDERS:
            why = "no GPU" if gpu is None else _add_gpu_contender(case, name, gpu, params, grads, torch)
            if why is not None:
                case.skipped[name] = why
        else:
            raise ValueError(f"unknown contender {name!r}; choose from {ALL_CONTENDERS}")
    return case


def _one_line(e: BaseException, limit: int = 160) -> str:
    """``Type: message``, first line only, at most ``limit`` characters."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _add_gpu_contender(case: Case, name: str, gpu: "Gpu", params, grads, torch) -> Optional[str]:
    """Add GPU contender ``name`` to ``case.fns`` after one step (and a device sync);
    return why it can't be added, or None."""
    config, wl, cp = case.config, case.workload, gpu.cp
    if name == "gpu":
        try:
            dparams = [cp.asarray(p) for p in params]
            dgrads = [cp.asarray(g) for g in grads]
            gopt = config.cls(dparams, **config.kwargs)
            gopt.step(dgrads)
            gpu.sync()
        except Exception as e:  # NVRTC missing, out of memory, ...
            return f"fusedoptim on cupy arrays failed: {_one_line(e)}"
        from . import _cuda
        nbuf = sum(1 for v in gopt.state[dparams[0]].values()
                   if _cuda.is_device_array(v) or isinstance(v, np.ndarray))
        if 2 + nbuf != case.k:   # would make GB/s of CPU and GPU incomparable
            return f"the GPU optimizer has {nbuf} state buffers, the CPU one {case.k - 2}"
        case.fns[name] = lambda: gopt.step(dgrads)
    elif name == "gpu_stream":
        try:
            stream = GpuStream(gpu, wl.n_elements, case.k, wl.dtype)
            stream()
            gpu.sync()
        except Exception as e:
            return f"device STREAM kernel failed: {_one_line(e)}"
        case.fns[name] = stream
    elif name == "torch_cuda_fused":
        if torch is None:
            return "torch not importable"
        try:
            cuda_ok = bool(torch.cuda.is_available())
        except Exception as e:
            return f"torch.cuda.is_available() raised {_one_line(e)}"
        if not cuda_ok:
            return "torch.cuda.is_available() is False"
        if not config.torch_fused:
            return f"torch.optim.{config.torch_name} has no fused variant"
        dev = f"cuda:{gpu.device}"
        try:
            tparams = [torch.from_numpy(p.copy()).to(dev) for p in params]
            for tp, g in zip(tparams, grads):
                tp.grad = torch.from_numpy(np.array(g)).to(dev)
            topt = getattr(torch.optim, config.torch_name)(tparams, **config.kwargs, fused=True)
            topt.step()
            torch.cuda.synchronize(dev)
        except Exception as e:  # variant missing on CUDA in this torch, out of memory, ...
            return _one_line(e)
        case.fns[name] = topt.step
    return None


# ================================================================== timing


def calibrate(fn: Callable[[], None], min_time: float, warmup: int = 1, cap: int = 100_000) -> int:
    """Run ``fn`` ``warmup`` times, then return how many consecutive calls last about
    ``min_time`` seconds (at least 1), from the fastest of up to 5 timed calls (one
    descheduled call on a busy machine must not shrink every sample to one step)."""
    for _ in range(max(warmup, 0)):
        fn()
    best = math.inf
    spent = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent >= min_time:
            break
    if best <= 0:
        return cap
    return int(max(1, min(cap, math.ceil(min_time / best))))


def calibrate_synced(fn: Callable[[], None], sync: Callable[[], None], min_time: float,
                     warmup: int = 1, cap: int = 100_000) -> int:
    """:func:`calibrate` for asynchronous calls (GPU steps, which only queue work):
    ``warmup`` calls, then batches timed from an idle device to ``sync()`` returning.
    The fastest of 3 one-call batches (an overestimate of the step time: it includes one
    synchronisation) gives a first count, refined by timing one batch of that many calls."""
    for _ in range(max(warmup, 0)):
        fn()

    def batch(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return time.perf_counter() - t0

    best = min(batch(1) for _ in range(3))
    if best <= 0:
        return cap
    n = int(max(1, min(cap, math.ceil(min_time / best))))
    if n > 1:
        t = batch(n)
        if t > 0:
            n = int(max(1, min(cap, math.ceil(min_time * n / t))))
    return n


def sync_every(fn: Callable[[], None], sync: Callable[[], None], n: int) -> Callable[[], None]:
    """``fn`` wrapped so that every ``n``-th call also waits for the device
    (``sync()``): for a timer that times ``n`` consecutive calls from an idle device
    (pytest-benchmark's ``pedantic(iterations=n)``), each timed batch then ends when its
    work is done, not when it is queued."""
    if n < 1:
        raise ValueError("n must be >= 1")
    count = [0]

    def call():
        fn()
        count[0] += 1
        if count[0] % n == 0:
            sync()
    return call


def measure(fns: Dict[str, Callable[[], None]], repeat: int, min_time: float,
            warmup: int = 1, sync: Optional[Callable[[], None]] = None) -> Dict[str, dict]:
    """Median seconds per call of each function.  Every round takes one sample of each
    contender (``inner`` consecutive calls), in an order rotated every round.

    With ``sync`` (asynchronous calls, e.g. ``Gpu.sync`` for GPU contenders) each sample
    starts on an idle device (``sync()`` before, untimed) and ends when ``sync()`` after
    the last call returns: wall time of the batch including the device's work, and
    :func:`calibrate_synced` fixes ``inner``."""
    names = list(fns)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        # a constant gradient drives e.g. centered RMSprop to sqrt(< 0): no NumPy warnings
        with np.errstate(all="ignore"):
            if sync is None:
                inner = {n: calibrate(fns[n], min_time, warmup) for n in names}
            else:
                inner = {n: calibrate_synced(fns[n], sync, min_time, warmup) for n in names}
            for r in range(repeat):
                shift = r % len(names) if names else 0
                for n in names[shift:] + names[:shift]:
                    fn, k = fns[n], inner[n]
                    if sync is not None:
                        sync()
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    if sync is not None:
                        sync()
                    samples[n].append((time.perf_counter() - t0) / k)
    finally:
        if gc_was:
            gc.enable()
    return {n: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                "inner": inner[n], "samples_s": s}
            for n, s in samples.items()}


def stream_roofline(sizes: Sequence[int], threads_list: Sequence[int], ks=(2, 3, 4, 5, 6),
                    dtype="float32", repeat: int = 7, min_time: float = 0.005) -> List[dict]:
    """Extension-level roofline: STREAM over k buffers of n elements, in GB/s."""
    out = []
    dt = np.dtype(dtype)
    saved = _kernels.get_num_threads()
    try:
        for n in sizes:
            bufs = [np.full(n, 1.0, dtype=dt) for _ in range(max(ks))]
            args = {k: ((float(k), 0.0), [bufs[0]], [bufs[1]], [[b] for b in bufs[2:k]]) for k in ks}
            fs, algo = _kernels.fused_step, _kernels.STREAM
            fns = {k: (lambda a=args[k]: fs(algo, *a)) for k in ks}
            for th in threads_list:
                _kernels.set_num_threads(th)
                res = measure(fns, repeat, min_time)
                for k in ks:
                    nbytes = dt.itemsize * (2 * k - 1) * n
                    out.append({"n_elements": n, "dtype": dtype, "threads": th, "k": k,
                                "bytes": nbytes, "median_s": res[k]["median_s"],
                                "gb_s": nbytes / res[k]["median_s"] / 1e9})
            del bufs, args, fns
    finally:
        _kernels.set_num_threads(saved)
    return out


# ================================================================== GPU (CuPy)
# Device queries live in small functions (import_cupy, cuda_device_count,
# gpu_device_info) and the arithmetic in pure ones (peak_bandwidth_gb_s, device_figures,
# gpu_stream_source, gpu_stream_grid), so everything but the device itself is testable
# on a machine without one.

_GPU_TIMING = ("host wall clock (time.perf_counter) around a batch of consecutive calls, "
               "cupy.cuda.Device().synchronize() before (untimed) and after (timed) each batch")

PEAK_FORMULA = ("2 * memoryClockRate[kHz] * 1e3 * memoryBusWidth[bit] / 8 / 1e9 GB/s: the theoretical "
                "peak (double data rate x bus width, cudaDeviceProp); no kernel reaches it")


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
        return None, f"cupy does not import ({_one_line(e)})"
    return cupy, None


def cuda_device_count(cp) -> Tuple[int, Optional[str]]:
    """``(number of CUDA devices, None)``, or ``(0, reason)``: without a driver or a
    device, CuPy raises ``CUDARuntimeError`` (cudaErrorNoDevice,
    cudaErrorInsufficientDriver, ...)."""
    try:
        n = int(cp.cuda.runtime.getDeviceCount())
    except Exception as e:
        return 0, f"no CUDA device ({_one_line(e)})"
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
        return None, f"cupy {ver}: CUDA device not usable ({_one_line(e)})"
    return Gpu(cp, dev, info), None


_GPU_TYPES = {"float32": ("float", "float4", "xyzw", "f32"), "float64": ("double", "double2", "xy", "f64")}
GPU_STREAM_THREADS = 256


def gpu_stream_source(k: int, dtype="float32") -> Tuple[str, str]:
    """``(name, CUDA C++ source)`` of the device STREAM kernel for ``k`` buffers: the
    first (the gradient) is only read, the k - 1 others (parameter, state buffers) are
    read and written (``b[i] += m * g[i]``, called with m = 0), so a call moves
    ``itemsize * (2k - 1) * n`` bytes, the traffic of an optimizer step with k - 2 state
    buffers and the same formula as the CPU STREAM.  A grid-stride loop over 16-byte
    vectors (float4 / double2: the buffers come from CuPy's allocator, 256-byte aligned),
    then the tail element by element."""
    k = int(k)
    if k < 2:
        raise ValueError("the STREAM kernel needs k >= 2 buffers (gradient and parameter)")
    dt = np.dtype(dtype).name
    if dt not in _GPU_TYPES:
        raise ValueError(f"no device STREAM kernel for dtype {dt}")
    t, vt, comps, suffix = _GPU_TYPES[dt]
    w = len(comps)
    name = f"fo_bench_stream_k{k}_{suffix}"
    bufs = [f"b{i}" for i in range(1, k)]
    args = ", ".join([f"const {t}* __restrict__ g"] + [f"{t}* __restrict__ {b}" for b in bufs]
                     + [f"const {t} m", "const long long n"])
    vec = [f"    const {vt} gv = reinterpret_cast<const {vt}*>(g)[i];"]
    for b in bufs:
        vec.append(f"    {{ {vt} v = reinterpret_cast<{vt}*>({b})[i]; "
                   + " ".join(f"v.{c} += m * gv.{c};" for c in comps)
                   + f" reinterpret_cast<{vt}*>({b})[i] = v; }}")
    tail = [f"    const {t} gi = g[i];"] + [f"    {b}[i] += m * gi;" for b in bufs]
    src = (f'extern "C" __global__ void {name}({args}) {{\n'
           "  const long long stride = (long long)gridDim.x * blockDim.x;\n"
           "  const long long t0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
           f"  const long long nv = n / {w};\n"
           "  for (long long i = t0; i < nv; i += stride) {\n" + "\n".join(vec) + "\n  }\n"
           f"  for (long long i = nv * {w} + t0; i < n; i += stride) {{\n" + "\n".join(tail) + "\n  }\n"
           "}\n")
    return name, src


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


def gpu_stream_roofline(gpu: Gpu, sizes: Sequence[int], ks=(2, 3, 4, 5, 6), dtype="float32",
                        repeat: int = 7, min_time: float = 0.005) -> List[dict]:
    """Device-level roofline: :class:`GpuStream` over k buffers of n elements, in GB/s
    and % of the theoretical peak."""
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



# ================================================================== memory check


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _maxrss_bytes() -> Optional[int]:
    try:
        import resource
    except ImportError:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def memory_check(steps: int = 10_000, n_tensors: int = 200, size: int = 327,
                 seed: int = 0) -> dict:
    """Adam on ``n_tensors`` tensors of ``size`` float32 elements: after one step (state
    allocated), ``steps`` steps under tracemalloc, with RSS read before and after.
    A leak of one small object per step shows as a tracemalloc current delta of about
    ``steps`` times its size; the peak delta is the largest transient allocation.  RSS
    includes tracemalloc's own bookkeeping (``tracemalloc_overhead``).  Figures, not
    assertions; the step time under tracemalloc is not a benchmark figure."""
    params, grads = make_data(parse_workload(f"{n_tensors}x{size}"), seed)
    opt = Adam(params, lr=1e-3)
    opt.step(grads)
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    rss0, maxrss0 = _rss_bytes(), _maxrss_bytes()
    tracemalloc.reset_peak()
    cur0, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step(grads)
    elapsed = time.perf_counter() - t0
    cur1, peak = tracemalloc.get_traced_memory()
    rss1, maxrss1 = _rss_bytes(), _maxrss_bytes()
    overhead = tracemalloc.get_tracemalloc_memory()
    if not was_tracing:
        tracemalloc.stop()
    sub = lambda a, b: None if a is None or b is None else a - b  # noqa: E731
    return {"optimizer": "adam", "n_tensors": n_tensors, "size": size, "steps": steps,
            "state_bytes": 2 * n_tensors * size * 4,
            "rss_before": rss0, "rss_after": rss1, "rss_delta": sub(rss1, rss0),
            "maxrss_before": maxrss0, "maxrss_after": maxrss1,
            "tracemalloc_current_delta": cur1 - cur0, "tracemalloc_peak_delta": peak - cur0,
            "tracemalloc_overhead": overhead,
            "traced_s": elapsed, "us_per_step_traced": elapsed / steps * 1e6,
            "iterations_after": opt.iterations}


# ================================================================== machine info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numpy_cpu_features() -> dict:
    for mod in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            m = __import__(mod, fromlist=["__cpu_features__"])
            return dict(getattr(m, "__cpu_features__"))
        except Exception:
            continue
    return {}


def _count_ifuncs(path: str) -> Optional[int]:
    """Number of R_X86_64_IRELATIVE relocations (GCC target_clones resolvers) in an
    x86-64 ELF shared object, or None when that can't be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            return None
        if struct.unpack_from("<H", data, 18)[0] != 62:       # EM_X86_64
            return None
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        count = 0
        for i in range(shnum):
            off = shoff + i * shentsize
            if struct.unpack_from("<I", data, off + 4)[0] != 4:   # SHT_RELA
                continue
            sh_offset, sh_size = struct.unpack_from("<QQ", data, off + 0x18)
            entsize = struct.unpack_from("<Q", data, off + 0x38)[0] or 24
            for j in range(sh_size // entsize):
                if struct.unpack_from("<Q", data, sh_offset + j * entsize + 8)[0] & 0xFFFFFFFF == 37:
                    count += 1
        return count
    except (OSError, struct.error):
        return None


def simd_clone() -> dict:
    """Which target_clones variant of the kernels the loader picks, inferred: the
    extension must carry ifunc resolvers, and the level is the best of x86-64-v4 / -v3
    that the CPU supports (NumPy's CPU feature detection)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {"clone": "default", "how": f"no multiversioning on {platform.machine()}"}
    n = _count_ifuncs(_kernels.__file__)
    if n == 0:
        return {"clone": "default", "how": "extension built without target_clones", "ifuncs": 0}
    f = _numpy_cpu_features()
    v4 = f.get("X86_V4") or all(f.get(x) for x in ("AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL"))
    v3 = f.get("X86_V3") or all(f.get(x) for x in ("AVX2", "FMA3", "BMI2", "F16C", "MOVBE"))
    clone = "x86-64-v4" if v4 else "x86-64-v3" if v3 else "default"
    how = ("inferred from CPU features (numpy) and "
           + (f"{n} ifunc resolvers in _kernels" if n is not None else "an unreadable extension"))
    return {"clone": clone, "how": how, "ifuncs": n}


def machine_info(torch=None) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    from . import __version__
    return {
        "cpu_model": _cpu_model(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "cpus_available": affinity, "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None) if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "fusedoptim": __version__, "fusedoptim_threads": _kernels.get_num_threads(),
        "openmp": bool(_kernels.HAVE_OPENMP), "grain_size": _kernels.get_grain_size(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "simd": simd_clone(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# ================================================================== report


def _ft(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.3g}us"
    if abs(s) < 1:
        return f"{s * 1e3:.3g}ms"
    return f"{s:.3g}s"


def _fx(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3g}x"


def _row_figures(case: Case, res: Dict[str, dict], peak_gb_s: Optional[float] = None) -> dict:
    med = {n: r["median_s"] for n, r in res.items()}
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
    d["roofline_gb_s"] = case.bytes_per_step / s / 1e9 if s else None
    d["pct_roofline"] = 100.0 * s / t if (s and t) else None
    d["overhead_s"] = (t - s) if (s and t) else None
    d["speedup_vs_numpy"] = ratio("numpy")
    d["speedup_vs_torch_foreach"] = ratio("torch_foreach")
    d["speedup_vs_torch_fused"] = ratio("torch_fused")
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


_HEAD = (f"{'optimizer':<26}{'k':>2} {'step':>9} {'Gelem/s':>8} {'GB/s':>7} {'roofGB/s':>8} "
         f"{'%roof':>6} | {'numpy':>8} {'speedup':>7} | {'t.foreach':>9} {'speedup':>7} | "
         f"{'t.fused':>8} {'speedup':>7}")
_GPU_HEAD = (f" | {'gpu':>8} {'GB/s':>7} {'%peak':>5} {'%roof':>5} | {'t.cuda':>8} {'speedup':>7}")


def _row_text(d: dict, gpu: bool = False) -> str:
    med = {n: r["median_s"] for n, r in d["contenders"].items()}
    g = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    text = (f"{d['optimizer']:<26}{d['k']:>2} {_ft(d['step_s']):>9} {g(d['gelem_s'], '.3g'):>8} "
            f"{g(d['gb_s'], '.3g'):>7} {g(d['roofline_gb_s'], '.3g'):>8} {g(d['pct_roofline'], '.0f'):>6} | "
            f"{_ft(med.get('numpy')):>8} {_fx(d['speedup_vs_numpy']):>7} | "
            f"{_ft(med.get('torch_foreach')):>9} {_fx(d['speedup_vs_torch_foreach']):>7} | "
            f"{_ft(med.get('torch_fused')):>8} {_fx(d['speedup_vs_torch_fused']):>7}")
    if gpu:
        text += (f" | {_ft(d['gpu_step_s']):>8} {g(d['gpu_gb_s'], '.4g'):>7} {g(d['gpu_pct_peak'], '.0f'):>5} "
                 f"{g(d['gpu_pct_roofline'], '.0f'):>5} | {_ft(med.get('torch_cuda_fused')):>8} "
                 f"{_fx(d['speedup_vs_torch_cuda_fused']):>7}")
    return text


def _gpu_line(info: dict) -> str:
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
    and :func:`probe_gpu` finds a device; otherwise one line says why and the JSON has
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
    report = {"schema": "fusedoptim.bench/1", "machine": info,
              "config": {"threads": nthreads, "torch_threads": info["torch_threads"], "repeat": repeat,
                         "warmup": warmup, "min_time_s": min_time, "seed": seed,
                         "optimizers": list(optimizers), "workloads": list(workloads),
                         "contenders": list(contenders)},
              "roofline": [], "results": [], "memory": None,
              "gpu": None if gpu is None else dict(gpu.info, roofline=[], timing=_GPU_TIMING),
              "gpu_reason": gpu_reason}
    t_start = time.perf_counter()
    say(f"fusedoptim {info['fusedoptim']} bench | {info['cpu_model']} | {info['cpus_available']} CPUs available"
        f" | load {tuple(round(x, 2) for x in info['loadavg']) if info['loadavg'] else '?'}")
    say(f"numpy {info['numpy']} (single-threaded elementwise) | torch {info['torch'] or 'not used'}"
        + (f" (torch.set_num_threads({info['torch_threads']}))" if torch is not None else "")
        + f" | fusedoptim threads {nthreads} (OpenMP {'on' if info['openmp'] else 'off'}, grain "
        f"{info['grain_size']}) | SIMD {info['simd']['clone']}")
    say(f"median of {repeat} interleaved samples, each >= {min_time * 1e3:g} ms of steps; "
        f"speedup = contender time / fusedoptim time (>1: fusedoptim faster)")
    if gpu is None:
        say(f"GPU columns left out: {gpu_reason}")
    else:
        say(_gpu_line(gpu.info))
        say("GPU columns: fusedoptim on cupy arrays (gpu step, GB/s, %peak of the theoretical peak, %roof of "
            "the device STREAM), torch fused on CUDA (t.cuda); timed around batches of steps with "
            "Device().synchronize()")

    if roofline_sizes:
        ths = sorted({1, nthreads})
        say("\nSTREAM roofline (extension level, float32, bytes = 4*(2k-1) per element), GB/s")
        say(f"{'elements':>10} {'threads':>7} " + " ".join(f"{'k=' + str(k):>7}" for k in range(2, 7)))
        roof = stream_roofline(roofline_sizes, ths, repeat=repeat, min_time=min_time)
        report["roofline"] = roof
        for n in roofline_sizes:
            for th in ths:
                row = [r for r in roof if r["n_elements"] == n and r["threads"] == th]
                say(f"{n:>10} {th:>7} " + " ".join(f"{r['gb_s']:>7.1f}" for r in row))

    if gpu is not None and gpu_roofline_sizes:
        peak = gpu.peak_gb_s
        say("\nGPU STREAM roofline (device level, float32, bytes = 4*(2k-1) per element), GB/s"
            + (f" (% of the {peak:.0f} GB/s theoretical peak)" if peak else ""))
        say(f"{'elements':>10} " + " ".join(f"{'k=' + str(k):>13}" for k in range(2, 7)))
        try:
            groof = gpu_stream_roofline(gpu, gpu_roofline_sizes, repeat=repeat, min_time=min_time)
        except Exception as e:  # out of device memory for the largest size, ...
            say(f"  failed: {_one_line(e)}")
            groof = []
        report["gpu"]["roofline"] = groof
        for n in gpu_roofline_sizes:
            row = [r for r in groof if r["n_elements"] == n]
            if row:
                say(f"{n:>10} " + " ".join(
                    f"{r['gb_s']:>7.1f}" + (f" ({r['pct_peak']:>3.0f}%)" if r["pct_peak"] is not None else " " * 7)
                    for r in row))

    for wl in wls:
        t_wl = time.perf_counter()
        params, grads = make_data(wl, seed)
        say(f"\n== {wl.name}: {wl.n_tensors} tensor{'s' if wl.n_tensors > 1 else ''}, "
            f"{wl.n_elements:,} {wl.dtype} elements" + (f" ({wl.note})" if wl.note else "") + " ==")
        say(_HEAD + (_GPU_HEAD if gpu is not None else ""))
        for cfg in configs:
            case = build_case(cfg, wl, params, grads, cpu_contenders + gpu_contenders, torch, gpu)
            fns = {n: f for n, f in case.fns.items() if n not in GPU_CONTENDERS}
            res = measure(fns, repeat, min_time, warmup)
            gfns = {n: f for n, f in case.fns.items() if n in GPU_CONTENDERS}
            if gfns:
                res.update(measure(gfns, repeat, min_time, warmup, sync=gpu.sync))
            d = _row_figures(case, res, gpu.peak_gb_s if gpu is not None else None)
            report["results"].append(d)
            say(_row_text(d, gpu is not None))
            del case, res, fns, gfns
        del params, grads
        gc.collect()
        if gpu is not None:
            gpu.free()
        say(f"({time.perf_counter() - t_wl:.1f} s)")

    if memory:
        say(f"\nmemory check: Adam, 200 x 327 float32, {memory} steps")
        m = memory_check(steps=memory)
        report["memory"] = m
        mb = lambda x: "?" if x is None else f"{x / 2**20:+.2f} MiB"  # noqa: E731
        say(f"  tracemalloc current delta {m['tracemalloc_current_delta']} B, peak delta "
            f"{m['tracemalloc_peak_delta']} B; RSS delta {mb(m['rss_delta'])} (tracemalloc's own "
            f"{m['tracemalloc_overhead'] / 2**20:.2f} MiB); optimizer state {m['state_bytes']} B")

    _summary(report, say)
    report["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["wall_s"] = time.perf_counter() - t_start
    say(f"\n({report['wall_s']:.1f} s)")
    return report


def _summary(report: dict, say) -> None:
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
                              ("gpu_pct_peak", "gpu %peak", "{:.0f}"), ("gpu_pct_roofline", "gpu %roof", "{:.0f}"),
                              ("speedup_vs_torch_cuda_fused", "gpu vs torch cuda fused", "{:.3g}x")):
            v = [r[key] for r in rs if r[key] is not None]
            if v:
                parts.append(f"{label} {f.format(statistics.median(v))}")
        ov = [r["overhead_s"] for r in rs if r["overhead_s"] is not None]
        st = [r["contenders"]["stream"]["median_s"] for r in rs if "stream" in r["contenders"]]
        if ov and st:
            parts.append(f"step - STREAM call {_ft(statistics.median(ov))} "
                         f"(STREAM call {_ft(statistics.median(st))})")
        say(f"  {wl:<14} " + ", ".join(parts))


# ================================================================== CLI


def _parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)([KM]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (e.g. 65536, 64K, 16M)")
    return int(m.group(1)) * {"": 1, "K": KI, "M": MI}[m.group(2)]


def _list_arg(valid: Optional[Sequence[str]], what: str):
    def parse(s: str) -> List[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        if valid is not None and items == ["all"]:
            return list(valid)
        for x in items:
            if valid is not None and x not in valid:
                raise argparse.ArgumentTypeError(f"unknown {what} {x!r}; choose from {', '.join(valid)}")
        return items
    return parse


def _workload_list(s: str) -> List[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    if items == ["all"]:
        return list(WORKLOADS)
    for x in items:
        try:
            parse_workload(x)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusedoptim.bench",
        description="Time fusedoptim's optimizers against the STREAM roofline, naive NumPy and "
                    "torch.optim (foreach/fused), and on a GPU (cupy) where one is present. "
                    "See bench/README.md for the columns.")
    p.add_argument("--optimizers", type=_list_arg(list(OPTIMIZERS), "optimizer"), default=list(OPTIMIZERS),
                   help="comma list or 'all' (default): " + ", ".join(OPTIMIZERS))
    p.add_argument("--workloads", type=_workload_list, default=None,
                   help="comma list or 'all': " + ", ".join(WORKLOADS) + "; any NxS (K=2**10, M=2**20, "
                        "prefix f64- for float64). Default: all, without 1x16M under --quick")
    p.add_argument("--contenders", type=_list_arg(list(ALL_CONTENDERS), "contender"), default=list(ALL_CONTENDERS),
                   help="comma list (default all): " + ", ".join(ALL_CONTENDERS) + " (the GPU ones "
                        "only where cupy sees a CUDA device)")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per contender (default 15; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps after the first (state-allocating) one (default 2; 0 with --quick)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of consecutive steps per sample (default 0.01; 0.001 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for fusedoptim and torch (default: fusedoptim.get_num_threads())")
    p.add_argument("--roofline-sizes", type=lambda s: [] if s in ("", "none") else [_parse_size(x) for x in s.split(",")],
                   default=None, help="element counts of the extension-level STREAM table, or 'none' "
                                      "(default 64K,1M,16M; 64K,1M,4M with --quick)")
    p.add_argument("--gpu-roofline-sizes", type=lambda s: [] if s in ("", "none") else [_parse_size(x) for x in s.split(",")],
                   default=None, help="element counts of the device STREAM table, or 'none' "
                                      "(default 1M,16M,64M; 1M,16M with --quick); only with a GPU")
    p.add_argument("--no-torch", action="store_true", help="skip the torch contenders even if torch imports")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU contenders even if cupy sees a device")
    p.add_argument("--memory", type=int, nargs="?", const=-1, default=None, metavar="STEPS",
                   help="also run the memory check (Adam, 200x327) for STEPS steps (default 10000; 1000 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write every figure and the machine info as JSON")
    p.add_argument("--quick", action="store_true", help="fewer samples, shorter samples, no 16M workload")
    p.add_argument("--list", action="store_true", help="list optimizers and workloads, then exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print("optimizers:")
        for c in OPTIMIZERS.values():
            print(f"  {c.key:<27} {c.cls.__name__}({', '.join(f'{k}={v!r}' for k, v in c.kwargs.items())})"
                  + ("  [torch fused]" if c.torch_fused else "") + ("" if c.in_torch else "  [not in torch]"))
        print("workloads:")
        for w in WORKLOADS:
            wl = parse_workload(w)
            print(f"  {w:<14} {wl.n_tensors:>4} tensors {wl.n_elements:>11,} {wl.dtype}"
                  + (f"  {wl.note}" if wl.note else ""))
        return 0
    q = args.quick
    repeat = args.repeat if args.repeat is not None else (3 if q else 15)
    warmup = args.warmup if args.warmup is not None else (0 if q else 2)
    min_time = args.min_time if args.min_time is not None else (0.001 if q else 0.01)
    workloads = args.workloads if args.workloads is not None else list(QUICK_WORKLOADS if q else WORKLOADS)
    sizes = args.roofline_sizes if args.roofline_sizes is not None else (
        [64 * KI, MI, 4 * MI] if q else [64 * KI, MI, 16 * MI])
    gsizes = args.gpu_roofline_sizes if args.gpu_roofline_sizes is not None else (
        [MI, 16 * MI] if q else [MI, 16 * MI, 64 * MI])
    memory = None if args.memory is None else (args.memory if args.memory > 0 else (1000 if q else 10_000))
    if repeat < 1 or warmup < 0 or min_time < 0:
        build_parser().error("--repeat must be >= 1, --warmup and --min-time >= 0")
    report = run(args.optimizers, workloads, repeat, warmup, min_time, args.threads, sizes,
                 use_torch=not args.no_torch, contenders=args.contenders, seed=args.seed, memory=memory,
                 use_gpu=not args.no_gpu, gpu_roofline_sizes=gsizes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
        print(f"wrote {args.json}")
    return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


if __name__ == "__main__":
    sys.exit(main())
