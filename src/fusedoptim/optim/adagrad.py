from .._backends import backend_for
from .._spec import AlgoSpec
from ..optimizer import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad (torch.optim.Adagrad).

    Symbols: :math:`\gamma` = ``lr``, :math:`\eta` = ``lr_decay``, :math:`\epsilon` =
    ``eps``, :math:`\lambda` = ``weight_decay``, :math:`\tau` = ``initial_accumulator_value``.

    .. math::

        \tilde\gamma &\leftarrow \gamma / (1 + (t - 1)\eta) \\
        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ if } \lambda \ne 0 \\
        s_t &\leftarrow s_{t-1} + g_t^2 \quad (s_0 = \tau) \\
        \theta_t &\leftarrow \theta_{t-1} - \tilde\gamma\, g_t / (\sqrt{s_t} + \epsilon)

    State: ``step``, ``sum``.

    References: Duchi et al., "Adaptive Subgradient Methods", JMLR 2011.
    """

    spec = AlgoSpec("adagrad", scalars=("neg_clr", "eps"), buffers=("sum",))

    def __init__(self, params=None, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), **options)

    def init_buffer(self, name, p, g):
        return backend_for([p]).full_like(p, g["initial_accumulator_value"])

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        return {"neg_clr": -(g["lr"] / (1.0 + (t - 1) * g["lr_decay"])), "eps": g["eps"]}
