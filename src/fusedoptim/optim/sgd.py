from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_real


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum (torch.optim.SGD).

    Symbols: :math:`\gamma` = ``lr``, :math:`\mu` = ``momentum``, :math:`\tau` =
    ``dampening``, :math:`\lambda` = ``weight_decay``.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \text{ if } \lambda \ne 0 \\
        b_t &\leftarrow g_t \text{ (first step)}, \quad \mu b_{t-1} + (1 - \tau) g_t \text{ (later)} \\
        g_t &\leftarrow g_t + \mu b_t \text{ if nesterov, else } b_t \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma g_t

    The "SGDM" of many tutorials, :math:`m \leftarrow \beta m + (1-\beta) g`, is
    ``SGD(momentum=beta, dampening=beta)`` (torch's first step copies the gradient
    into the buffer instead of scaling it by :math:`1-\beta`).

    State: ``momentum_buffer`` (only when momentum != 0), ``step``.
    """

    spec = AlgoSpec("sgd", scalars=("lr", "momentum", "one_minus_dampening", "nesterov", "first"),
                    flags=("momentum",), buffers=("momentum_buffer",))

    def __init__(self, params=None, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["dampening"], f"{where}: dampening", lo=0.0, hi=1.0)
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError(f"{where}: Nesterov momentum requires a momentum and zero dampening")

    def kernel_flags(self, g):
        return {"momentum": g["momentum"] != 0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        return {"lr": g["lr"], "momentum": g["momentum"], "one_minus_dampening": 1.0 - g["dampening"],
                "nesterov": 1.0 if g["nesterov"] else 0.0, "first": 1.0 if "momentum_buffer" in fresh else 0.0}
