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
  fusedoptim's thread count.  torch is optional: without it those columns are empty.

It also measures the extension-level roofline: STREAM bandwidth in GB/s for k = 2..6
buffers at a few sizes (bytes = itemsize * (2k - 1) per element).

Timing: ``time.perf_counter``; warm-up steps first (they also create the optimizer
state); each sample times enough consecutive steps to last ``--min-time`` seconds; the
contenders take turns sample by sample, in a rotating order, so drift on a busy machine
hits all of them alike; the figure is the median sample.  The garbage collector is off
while timing.

The same helpers (workloads, contenders, ``measure``, ``memory_check``) drive the
pytest-benchmark suite in ``bench/``.
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
from .optim import SGD, Adam, AdamW, Adagrad, RMSprop, Adamax, NAdam, RAdam, Adadelta

__all__ = [
    "OPTIMIZERS", "WORKLOADS", "QUICK_WORKLOADS", "CONTENDERS", "OptConfig", "Workload",
    "parse_workload", "make_data", "build_case", "measure", "calibrate", "stream_roofline",
    "memory_check", "machine_info", "run", "main",
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
]}

#: Contender names, in the order the report prints them.
CONTENDERS = ("fusedoptim", "stream", "numpy", "torch_foreach", "torch_fused")


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
    buffer into it, legal in torch where backward overwrites ``.grad`` every step)."""

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
               torch=None) -> Case:
    """Build the requested contenders; each has taken one step already (state exists).

    ``stream`` runs the STREAM kernel over the fusedoptim optimizer's own parameter,
    gradient and state arrays with a zero multiplier (it changes nothing).  torch
    contenders are skipped (``case.skipped``) when ``torch`` is None or has no such
    variant."""
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
        else:
            raise ValueError(f"unknown contender {name!r}; choose from {CONTENDERS}")
    return case


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


def measure(fns: Dict[str, Callable[[], None]], repeat: int, min_time: float,
            warmup: int = 1) -> Dict[str, dict]:
    """Median seconds per call of each function.  Every round takes one sample of each
    contender (``inner`` consecutive calls), in an order rotated every round."""
    names = list(fns)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        # a constant gradient drives e.g. centered RMSprop to sqrt(< 0): no NumPy warnings
        with np.errstate(all="ignore"):
            inner = {n: calibrate(fns[n], min_time, warmup) for n in names}
            for r in range(repeat):
                shift = r % len(names) if names else 0
                for n in names[shift:] + names[:shift]:
                    fn, k = fns[n], inner[n]
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
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


def _row_figures(case: Case, res: Dict[str, dict]) -> dict:
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
    return d


_HEAD = (f"{'optimizer':<26}{'k':>2} {'step':>9} {'Gelem/s':>8} {'GB/s':>7} {'roofGB/s':>8} "
         f"{'%roof':>6} | {'numpy':>8} {'speedup':>7} | {'t.foreach':>9} {'speedup':>7} | "
         f"{'t.fused':>8} {'speedup':>7}")


def _row_text(d: dict) -> str:
    med = {n: r["median_s"] for n, r in d["contenders"].items()}
    g = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    return (f"{d['optimizer']:<26}{d['k']:>2} {_ft(d['step_s']):>9} {g(d['gelem_s'], '.3g'):>8} "
            f"{g(d['gb_s'], '.3g'):>7} {g(d['roofline_gb_s'], '.3g'):>8} {g(d['pct_roofline'], '.0f'):>6} | "
            f"{_ft(med.get('numpy')):>8} {_fx(d['speedup_vs_numpy']):>7} | "
            f"{_ft(med.get('torch_foreach')):>9} {_fx(d['speedup_vs_torch_foreach']):>7} | "
            f"{_ft(med.get('torch_fused')):>8} {_fx(d['speedup_vs_torch_fused']):>7}")


def run(optimizers: Sequence[str], workloads: Sequence[str], repeat: int, warmup: int,
        min_time: float, threads: Optional[int], roofline_sizes: Sequence[int],
        use_torch: bool = True, contenders: Sequence[str] = CONTENDERS, seed: int = 0,
        memory: Optional[int] = None, out=None) -> dict:
    """Produce the report (printed to ``out``, default stdout) and return it as a
    JSON-ready dict."""
    def say(*a):
        print(*a, file=out if out is not None else sys.stdout, flush=True)

    configs = [OPTIMIZERS[o] for o in optimizers]
    wls = [parse_workload(w) for w in workloads]
    torch = import_torch() if use_torch and any(c.startswith("torch") for c in contenders) else None
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
              "roofline": [], "results": [], "memory": None}
    t_start = time.perf_counter()
    say(f"fusedoptim {info['fusedoptim']} bench | {info['cpu_model']} | {info['cpus_available']} CPUs available"
        f" | load {tuple(round(x, 2) for x in info['loadavg']) if info['loadavg'] else '?'}")
    say(f"numpy {info['numpy']} (single-threaded elementwise) | torch {info['torch'] or 'not used'}"
        + (f" (torch.set_num_threads({info['torch_threads']}))" if torch is not None else "")
        + f" | fusedoptim threads {nthreads} (OpenMP {'on' if info['openmp'] else 'off'}, grain "
        f"{info['grain_size']}) | SIMD {info['simd']['clone']}")
    say(f"median of {repeat} interleaved samples, each >= {min_time * 1e3:g} ms of steps; "
        f"speedup = contender time / fusedoptim time (>1: fusedoptim faster)")

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

    for wl in wls:
        t_wl = time.perf_counter()
        params, grads = make_data(wl, seed)
        say(f"\n== {wl.name}: {wl.n_tensors} tensor{'s' if wl.n_tensors > 1 else ''}, "
            f"{wl.n_elements:,} {wl.dtype} elements" + (f" ({wl.note})" if wl.note else "") + " ==")
        say(_HEAD)
        for cfg in configs:
            case = build_case(cfg, wl, params, grads, contenders, torch)
            res = measure(case.fns, repeat, min_time, warmup)
            d = _row_figures(case, res)
            report["results"].append(d)
            say(_row_text(d))
            del case, res
        del params, grads
        gc.collect()
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
                              ("speedup_vs_torch_fused", "vs torch fused", "{:.3g}x")):
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
                    "torch.optim (foreach/fused). See bench/README.md for the columns.")
    p.add_argument("--optimizers", type=_list_arg(list(OPTIMIZERS), "optimizer"), default=list(OPTIMIZERS),
                   help="comma list or 'all' (default): " + ", ".join(OPTIMIZERS))
    p.add_argument("--workloads", type=_workload_list, default=None,
                   help="comma list or 'all': " + ", ".join(WORKLOADS) + "; any NxS (K=2**10, M=2**20, "
                        "prefix f64- for float64). Default: all, without 1x16M under --quick")
    p.add_argument("--contenders", type=_list_arg(list(CONTENDERS), "contender"), default=list(CONTENDERS),
                   help="comma list (default all): " + ", ".join(CONTENDERS))
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
    p.add_argument("--no-torch", action="store_true", help="skip the torch contenders even if torch imports")
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
                  + ("  [torch fused]" if c.torch_fused else ""))
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
    memory = None if args.memory is None else (args.memory if args.memory > 0 else (1000 if q else 10_000))
    if repeat < 1 or warmup < 0 or min_time < 0:
        build_parser().error("--repeat must be >= 1, --warmup and --min-time >= 0")
    report = run(args.optimizers, workloads, repeat, warmup, min_time, args.threads, sizes,
                 use_torch=not args.no_torch, contenders=args.contenders, seed=args.seed, memory=memory)
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
