from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_real


class Adadelta(Optimizer):
    r"""Adadelta (torch.optim.Adadelta).

    Symbols: :math:`\gamma` = ``lr``, :math:`\rho` = ``rho``, :math:`\epsilon` = ``eps``.

    .. math::

        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ if } \lambda \ne 0 \\
        v_t &\leftarrow \rho v_{t-1} + (1 - \rho) g_t^2 \\
        \Delta x_t &\leftarrow \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t \\
        u_t &\leftarrow \rho u_{t-1} + (1 - \rho) \Delta x_t^2 \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma \Delta x_t

    State: ``step``, ``square_avg``, ``acc_delta``.

    References: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """

    spec = AlgoSpec("adadelta", scalars=("rho", "one_minus_rho", "eps", "neg_lr"), buffers=("square_avg", "acc_delta"))

    def __init__(self, params=None, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["rho"], f"{where}: rho value", lo=0.0, hi=1.0)

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        r = g["rho"]
        return {"rho": r, "one_minus_rho": 1.0 - r, "eps": g["eps"], "neg_lr": -g["lr"]}
