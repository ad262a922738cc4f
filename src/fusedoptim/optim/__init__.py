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

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Adadelta", "Rprop", "Lion",
           "ASGD", "Lamb", "LARS", "NovoGrad", "AdaBelief", "Yogi", "Adan", "Ftrl", "ScheduleFreeAdamW",
           "ScheduleFreeSGD", "Adafactor"]
# Muon (2-D parameters only) and LBFGS (step(closure), not an Optimizer subclass) are
# importable here and as fusedoptim.Muon / fusedoptim.LBFGS but left out of __all__: the
# demo and fusedoptim.torch take __all__ as "optimizers that step any parameter list from
# gradients" (the demo's MLP has bias vectors; torch.optim has its own LBFGS)
