"""fusedoptim: fused, multi-threaded optimizers for NumPy training loops.

``opt = fusedoptim.Adam([W, b], lr=1e-3); opt.step([gW, gb])`` updates W and b in place
in one native call, with torch.optim's semantics, names and defaults.
"""
from ._kernels import get_num_threads, set_num_threads
from .optimizer import Optimizer
from .optim import SGD, Adam, AdamW, Adagrad, RMSprop, Adamax, NAdam, RAdam, Adadelta

__version__ = "0.1.0"

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam",
    "Adadelta", "get_num_threads", "set_num_threads",
]
