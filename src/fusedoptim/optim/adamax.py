from .._spec import AlgoSpec
from ..optimizer import Optimizer


class Adamax(Optimizer):
    r"""Adamax, the infinity-norm variant of Adam (torch.optim.Adamax).

    .. math::

        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ if } \lambda \ne 0 \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        u_t &\leftarrow \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \frac{m_t}{u_t}

    State: ``step``, ``exp_avg``, ``exp_inf``.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015, sec. 7.
    """

    spec = AlgoSpec("adamax", scalars=("one_minus_beta1", "beta2", "eps", "neg_clr"), buffers=("exp_avg", "exp_inf"))

    def __init__(self, params=None, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **options)

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        b1, b2 = g["betas"]
        return {"one_minus_beta1": 1.0 - b1, "beta2": b2, "eps": g["eps"], "neg_clr": -(g["lr"] / (1.0 - b1 ** t))}
