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

    ``decoupled_weight_decay=True`` replaces the coupled L2 term by the decoupled decay
    :math:`\theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)` before the update (Keras's
    ``weight_decay``, optax's ``add_decayed_weights`` before the learning rate).

    State: ``step``, ``square_avg``, ``acc_delta``.

    References: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """

    spec = AlgoSpec("adadelta", scalars=("rho", "one_minus_rho", "eps", "neg_lr", "decay"), buffers=("square_avg", "acc_delta"))

    def __init__(self, params=None, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False,
                 decoupled_weight_decay=False, **options):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["rho"], f"{where}: rho value", lo=0.0, hi=1.0)

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        r = g["rho"]
        lr = g["lr"]
        return {"rho": r, "one_minus_rho": 1.0 - r, "eps": g["eps"], "neg_lr": -lr,
                "decay": 1.0 - lr * g["weight_decay"] if g.get("decoupled_weight_decay") else 1.0}
