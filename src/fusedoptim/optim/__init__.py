"""The built-in optimizers, one module per family."""
from .sgd import SGD
from .adam import Adam, AdamW
from .adagrad import Adagrad
from .rmsprop import RMSprop
from .adamax import Adamax
from .nadam import NAdam
from .radam import RAdam
from .adadelta import Adadelta
from .rprop import Rprop
from .lion import Lion
from .asgd import ASGD
from .lamb import Lamb
from .lars import LARS
from .novograd import NovoGrad
from .adabelief import AdaBelief
from .yogi import Yogi
from .adan import Adan
from .ftrl import Ftrl
from .schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD
from .adafactor import Adafactor
from .muon import Muon
from .lbfgs import LBFGS
from ..lookahead import Lookahead
from . import registry

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Adadelta", "Rprop", "Lion",
           "ASGD", "Lamb", "LARS", "NovoGrad", "AdaBelief", "Yogi", "Adan", "Ftrl", "ScheduleFreeAdamW",
           "ScheduleFreeSGD", "Adafactor", "Muon", "LBFGS", "Lookahead"]
# Every optimizer class is exported here; what each can be driven with (step(grads), a
# closure, a wrapped optimizer, 2-D parameters only) is in fusedoptim.optim.registry, which
# the demo, fusedoptim.torch, the benchmark and .ci/smoke.py read.
