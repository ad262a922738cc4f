from .._spec import AlgoSpec
from ..optimizer import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (torch.optim.RMSprop).

    Symbols: :math:`\gamma` = ``lr``, :math:`\alpha` = ``alpha``, :math:`\epsilon` =
    ``eps``, :math:`\mu` = ``momentum``, :math:`\lambda` = ``weight_decay``.

    .. math::

        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ if } \lambda \ne 0 \\
        v_t &\leftarrow \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &\leftarrow \alpha \bar g_{t-1} + (1 - \alpha) g_t \text{ (centered)} \\
        d_t &\leftarrow \sqrt{v_t - \bar g_t^2} + \epsilon \text{ (centered), else } \sqrt{v_t} + \epsilon \\
        b_t &\leftarrow \mu b_{t-1} + g_t / d_t,\ \theta_t \leftarrow \theta_{t-1} - \gamma b_t
            \text{ if } \mu > 0, \text{ else } \theta_t \leftarrow \theta_{t-1} - \gamma g_t / d_t

    State: ``step``, ``square_avg``, ``grad_avg`` (centered), ``momentum_buffer`` (momentum > 0).

    References: Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012.
    """

    spec = AlgoSpec("rmsprop", scalars=("alpha", "one_minus_alpha", "eps", "momentum", "neg_lr"),
                    flags=("centered", "momentum"), buffers=("square_avg", "grad_avg", "momentum_buffer"))

    def __init__(self, params=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize), **options)

    def kernel_flags(self, g):
        return {"centered": g["centered"], "momentum": g["momentum"] > 0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        a = g["alpha"]
        return {"alpha": a, "one_minus_alpha": 1.0 - a, "eps": g["eps"], "momentum": g["momentum"], "neg_lr": -g["lr"]}
