"""fusedoptim: fused, multi-threaded optimizers for NumPy training loops.

``opt = fusedoptim.Adam([W, b], lr=1e-3); opt.step([gW, gb])`` updates W and b in place
in one native call, with torch.optim's semantics, names and defaults.
"""
from ._kernels import get_num_threads, set_num_threads
from .pipeline import clip_by_global_norm, clip_grad_norm, clip_grad_value, global_norm
from .optim import SGD, Adam, AdamW, Adagrad, RMSprop, Adamax, NAdam, RAdam, Adadelta, Rprop, Lion, ASGD
from .optim import Lamb, LARS, NovoGrad
from .optim import AdaBelief, Yogi, Adan, Ftrl, ScheduleFreeAdamW, ScheduleFreeSGD
from .optim import Muon, LBFGS
from .optim import Adafactor
from .lookahead import Lookahead
from .optimizer import Optimizer
from .toolkit import DynamicLossScale, split_decay_groups

__version__ = "0.1.0"

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam",
    "Adadelta", "Rprop", "Lion", "ASGD", "Lamb", "LARS", "NovoGrad", "get_num_threads", "set_num_threads", "clip_grad_norm", "clip_grad_value",
    "clip_by_global_norm", "global_norm", "DynamicLossScale", "split_decay_groups", "save", "load", "schedules",
    "ParamArena", "Lookahead", "Muon", "LBFGS",
]
__all__ += ["AdaBelief", "Yogi", "Adan", "Ftrl", "ScheduleFreeAdamW", "ScheduleFreeSGD"]
__all__ += ["Adafactor"]

# Submodules and functions loaded on first use, so `import fusedoptim` stays light.
_LAZY = {
    "save": ("checkpoint", "save"),
    "load": ("checkpoint", "load"),
    "ParamArena": ("arena", "ParamArena"),
    "schedules": ("schedules", None),
    "nn": ("nn", None),
    "checkpoint": ("checkpoint", None),
    "arena": ("arena", None),
    "keras": ("keras", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod_name, attr = _LAZY[name]
        mod = importlib.import_module(f".{mod_name}", __name__)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fusedoptim' has no attribute {name!r}")


def __dir__():
    """The module's names, the lazily loaded ones (``save``, ``load``, ``schedules``, ``nn``, ...) included."""
    return sorted(set(globals()) | set(_LAZY))
