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
from .muon import Muon
from .lbfgs import LBFGS

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Adadelta", "Rprop", "Lion",
           "ASGD", "Muon", "LBFGS"]
