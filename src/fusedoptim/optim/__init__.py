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

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Adadelta", "Rprop", "Lion",
           "ASGD", "Lamb", "LARS", "NovoGrad", "AdaBelief", "Yogi", "Adan", "Ftrl", "ScheduleFreeAdamW",
           "ScheduleFreeSGD"]
