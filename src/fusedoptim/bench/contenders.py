"""The optimizer configurations and the contenders that run each of them.

For one configuration on one workload, :func:`build_case` makes a zero-argument ``step``
callable per contender: ``fusedoptim`` (``opt.step(grads)``), ``stream`` (the native
roofline loop over the same arrays, :func:`native_stream`), ``numpy`` (the naive
baselines of :mod:`.numpy_baselines`), ``torch_foreach`` / ``torch_fused``, and on a GPU
``gpu`` (fusedoptim on cupy arrays), ``gpu_stream`` (:class:`.gpu.GpuStream`) and
``torch_cuda_fused``.  ``fusedoptim_torch`` is :mod:`fusedoptim.torch`'s optimizer on the
same torch tensors as the torch contenders (``.grad`` set, ``opt.step()``): what a torch
CPU loop gets by switching its import.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import _kernels
from ..optim import SGD, Adam, AdamW, Adagrad, RMSprop, Adamax, NAdam, RAdam, Adadelta, Rprop, Lion
from ..optim import Lamb, LARS, NovoGrad, Adafactor
from . import numpy_baselines as nb
from .gpu import Gpu, GpuStream, one_line
from .workloads import Workload

__all__ = ["OptConfig", "OPTIMIZERS", "CONTENDERS", "GPU_CONTENDERS", "ALL_CONTENDERS",
           "import_torch", "native_stream", "Case", "build_case"]


@dataclass(frozen=True)
class OptConfig:
    """One optimizer configuration, spelled the same way for fusedoptim and torch."""

    key: str
    cls: type
    kwargs: dict
    naive: Optional[Callable]   # the NumPy baseline, or None (no ``numpy`` contender)
    torch_fused: bool   # torch.optim has fused=True for this class on CPU
    in_torch: bool = True   # a torch-based oracle exists at all (Lion: no)
    oracle: str = ""    # "module.Class" of that oracle when it is not torch.optim.<cls name>

    @property
    def torch_name(self) -> str:
        return self.oracle or f"torch.optim.{self.cls.__name__}"

    def oracle_class(self, torch):
        """The torch-based oracle class (ImportError / AttributeError when it is missing)."""
        if not self.oracle:
            return getattr(torch.optim, self.cls.__name__)
        module, _, name = self.oracle.rpartition(".")
        return getattr(importlib.import_module(module), name)


_CURATED = [
    OptConfig("sgd", SGD, dict(lr=1e-3), nb.sgd, True),
    OptConfig("sgd-momentum", SGD, dict(lr=1e-3, momentum=0.9), nb.sgd, True),
    OptConfig("sgd-nesterov", SGD, dict(lr=1e-3, momentum=0.9, nesterov=True), nb.sgd, True),
    OptConfig("adam", Adam, dict(lr=1e-3), nb.adam, True),
    OptConfig("adamw", AdamW, dict(lr=1e-3, weight_decay=1e-2), nb.adam, True),
    OptConfig("adam-amsgrad", Adam, dict(lr=1e-3, amsgrad=True), nb.adam, True),
    OptConfig("adagrad", Adagrad, dict(lr=1e-2), nb.adagrad, True),
    OptConfig("rmsprop", RMSprop, dict(lr=1e-2), nb.rmsprop, False),
    OptConfig("rmsprop-centered-momentum", RMSprop, dict(lr=1e-2, centered=True, momentum=0.9),
              nb.rmsprop, False),
    OptConfig("adamax", Adamax, dict(lr=2e-3), nb.adamax, False),
    OptConfig("nadam", NAdam, dict(lr=2e-3), nb.nadam, False),
    OptConfig("radam", RAdam, dict(lr=1e-3), nb.radam, False),
    OptConfig("adadelta", Adadelta, dict(lr=1.0), nb.adadelta, False),
    OptConfig("rprop", Rprop, dict(lr=1e-2), nb.rprop, False),
    OptConfig("lion", Lion, dict(lr=1e-4), nb.lion, False, in_torch=False),
    # reduction stage (per-tensor statistics); oracle: pytorch-optimizer, no NumPy baseline
    OptConfig("lamb", Lamb, dict(lr=1e-3, weight_decay=1e-2), None, False, oracle="pytorch_optimizer.Lamb"),
    OptConfig("lars", LARS, dict(lr=1e-1, weight_decay=1e-4), None, False, oracle="pytorch_optimizer.LARS"),
    OptConfig("novograd", NovoGrad, dict(lr=1e-3), None, False, oracle="pytorch_optimizer.NovoGrad"),
    # factored row/column statistics (factored.h); oracle: torch.optim.Adafactor
    OptConfig("adafactor", Adafactor, dict(lr=1e-2), None, False),
]

#: The oracle of each built-in optimizer that torch.optim lacks (None: no torch-based one;
#: Ftrl's is Keras).  Any other class is compared with torch.optim.<its name>.
_ORACLES = {"AdaBelief": "pytorch_optimizer.AdaBelief", "Yogi": "pytorch_optimizer.Yogi",
            "Adan": "pytorch_optimizer.Adan", "Ftrl": None,
            "ScheduleFreeAdamW": "schedulefree.AdamWScheduleFree", "ScheduleFreeSGD": "schedulefree.SGDScheduleFree"}


def _every_optimizer() -> List[OptConfig]:
    """The curated configurations, then every other built-in optimizer of the registry
    (``fusedoptim.optim.registry``) that steps any parameter list with a native rule, with
    its defaults (key: its lower-case name; no NumPy baseline).  Muon (2-D only, matmuls)
    has its own benchmark, :mod:`fusedoptim.bench.muon`; LBFGS and Lookahead are not timed."""
    from ..optim import registry
    out, covered = list(_CURATED), {c.cls for c in _CURATED}
    for name, entry in registry.entries().items():
        cls = entry.cls
        if cls in covered or not entry.steps_any_shape or getattr(cls, "spec", None) is None:
            continue
        oracle = _ORACLES.get(name, "")
        out.append(OptConfig(name.lower(), cls, {}, None, False, in_torch=oracle is not None, oracle=oracle or ""))
    return out


OPTIMIZERS: Dict[str, OptConfig] = {c.key: c for c in _every_optimizer()}

#: CPU contender names, in the order the report prints them.
CONTENDERS = ("fusedoptim", "stream", "numpy", "torch_foreach", "torch_fused", "fusedoptim_torch")
#: GPU contenders: fusedoptim on cupy arrays, the device STREAM kernel, torch fused on CUDA.
#: Built only with a :class:`.gpu.Gpu` (see :func:`.gpu.probe_gpu`); timed with ``measure(sync=...)``.
GPU_CONTENDERS = ("gpu", "gpu_stream", "torch_cuda_fused")
ALL_CONTENDERS = CONTENDERS + GPU_CONTENDERS


def import_torch():
    """torch, or None when it is not importable (it is optional)."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    return torch


def native_stream(k: int, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                  states: Sequence[Sequence[np.ndarray]]) -> Callable[[], None]:
    """The native roofline loop (``_kernels.stream``), bound to its arrays:
    a zero-argument callable that streams ``k`` buffers per element (the gradient is only
    read; the parameter and the ``k - 2`` state buffers, one list per buffer in
    ``states``, are read and written with a zero multiplier, so nothing changes) through
    the same driver, threads, chunking and SIMD clone as the optimizers.

    Every native STREAM call of the benchmark goes through here.  The arguments are bound
    once so that the timed call is the bare native call."""
    stream = _kernels.stream
    params, grads, states = list(params), list(grads), [list(s) for s in states]
    return lambda: stream(k, params, grads, states)


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
               torch=None, gpu: Optional[Gpu] = None) -> Case:
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
    names = [n for n, v in st0.items() if isinstance(v, np.ndarray) and v.shape == fo_params[0].shape]
    case = Case(config, wl, 2 + len(names))
    for name in contenders:
        why = None
        if name == "fusedoptim":
            case.fns[name] = lambda opt=opt: opt.step(grads)
        elif name == "stream":
            states = [[opt.state[p][n] for p in fo_params] for n in names]
            case.fns[name] = native_stream(case.k, fo_params, grads, states)
        elif name == "numpy" and config.naive is None:
            why = f"no naive NumPy baseline for {config.cls.__name__}"
        elif name == "numpy":
            naive = nb.NaiveNumPy(config.naive, [p.copy() for p in params], opt.param_groups[0])
            naive.step(grads)
            case.fns[name] = lambda naive=naive: naive.step(grads)
        elif name in ("torch_foreach", "torch_fused"):
            why = _add_torch_contender(case, name, params, grads, torch)
        elif name == "fusedoptim_torch":
            why = _add_fusedoptim_torch_contender(case, params, grads, torch)
        elif name in GPU_CONTENDERS:
            why = "no GPU" if gpu is None else _add_gpu_contender(case, name, gpu, params, grads, torch)
        else:
            raise ValueError(f"unknown contender {name!r}; choose from {ALL_CONTENDERS}")
        if why is not None:
            case.skipped[name] = why
    return case


def _torch_optimizer(torch, config: OptConfig, params, grads, device: Optional[str] = None, **flag):
    """``torch.optim.<Cls>`` over torch copies of ``params`` (on ``device``), each with a
    private, writeable copy of its gradient as ``.grad``, after one step."""
    tparams = [torch.from_numpy(p.copy()) for p in params]
    if device is not None:
        tparams = [tp.to(device) for tp in tparams]
    for tp, g in zip(tparams, grads):
        tg = torch.from_numpy(np.array(g))
        tp.grad = tg if device is None else tg.to(device)
    topt = config.oracle_class(torch)(tparams, **config.kwargs, **flag)
    if callable(getattr(topt, "train", None)):   # schedulefree: steps only in train mode
        topt.train()
    topt.step()
    return topt


def _add_torch_contender(case: Case, name: str, params, grads, torch) -> Optional[str]:
    """Add ``torch_foreach`` or ``torch_fused`` (CPU) to ``case.fns``; return why it
    can't be added, or None."""
    config = case.config
    if torch is None:
        return "torch not importable"
    if not config.in_torch:
        return f"no torch-based oracle for {config.cls.__name__}"
    if name == "torch_fused" and not config.torch_fused:
        return f"{config.torch_name} has no fused variant"
    flag = {"foreach": True} if name == "torch_foreach" else {"fused": True}
    try:
        topt = _torch_optimizer(torch, config, params, grads, **flag)
    except (ImportError, AttributeError) as e:  # the oracle's package is not installed
        return f"{config.torch_name}: {type(e).__name__}: {e}"
    except (TypeError, RuntimeError, ValueError) as e:  # variant missing in this torch
        return f"{type(e).__name__}: {e}"
    case.fns[name] = topt.step
    return None


def _add_fusedoptim_torch_contender(case: Case, params, grads, torch) -> Optional[str]:
    """Add ``fusedoptim_torch``: ``fusedoptim.torch.<Cls>`` over torch copies of ``params``
    with ``.grad`` set, as the torch contenders have them, after one step.  Its time is the
    fused kernel plus what the torch front end costs (reading ``p.grad``, zero-copy views,
    the param-group sync); return why it can't be added, or None."""
    if torch is None:
        return "torch not importable"
    from .. import torch as fo_torch      # imports torch: only reached when torch is importable
    tparams = [torch.from_numpy(p.copy()) for p in params]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.from_numpy(np.array(g))
    opt = getattr(fo_torch, case.config.cls.__name__)(tparams, **case.config.kwargs)
    opt.step()
    case.fns["fusedoptim_torch"] = opt.step
    return None


def _add_gpu_contender(case: Case, name: str, gpu: Gpu, params, grads, torch) -> Optional[str]:
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
            return f"fusedoptim on cupy arrays failed: {one_line(e)}"
        from .. import _cuda
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
            return f"device STREAM kernel failed: {one_line(e)}"
        case.fns[name] = stream
    elif name == "torch_cuda_fused":
        if torch is None:
            return "torch not importable"
        try:
            cuda_ok = bool(torch.cuda.is_available())
        except Exception as e:
            return f"torch.cuda.is_available() raised {one_line(e)}"
        if not cuda_ok:
            return "torch.cuda.is_available() is False"
        if not config.torch_fused:
            return f"{config.torch_name} has no fused variant"
        dev = f"cuda:{gpu.device}"
        try:
            topt = _torch_optimizer(torch, config, params, grads, dev, fused=True)
            torch.cuda.synchronize(dev)
        except Exception as e:  # variant missing on CUDA in this torch, out of memory, ...
            return one_line(e)
        case.fns[name] = topt.step
    return None
