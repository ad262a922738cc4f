from .._spec import AlgoSpec
from ..optimizer import Optimizer


class Adamax(Optimizer):
    r"""Adamax, the infinity-norm variant of Adam (torch.optim.Adamax).

    .. math::

        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ if } \lambda \ne 0 \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        u_t &\leftarrow \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \frac{m_t}{u_t}

    ``eps_after_max=True`` (Keras; optax adds it inside the max, like torch): :math:`u_t \leftarrow \max(\beta_2 u_{t-1}, |g_t|)`,
    :math:`\theta_t \leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \frac{m_t}{u_t + \epsilon}`.

    ``decoupled_weight_decay=True`` replaces the coupled L2 term by the decoupled decay
    :math:`\theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)` before the update (Keras's
    ``weight_decay``, optax's ``add_decayed_weights`` before the learning rate).

    State: ``step``, ``exp_avg``, ``exp_inf``.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015, sec. 7.
    """

    spec = AlgoSpec("adamax", scalars=("one_minus_beta1", "beta2", "eps", "neg_clr", "decay", "eps_denom"), buffers=("exp_avg", "exp_inf"))

    def __init__(self, params=None, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 *, maximize=False, decoupled_weight_decay=False, eps_after_max=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                                      eps_after_max=eps_after_max), **options)

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        b1, b2 = g["betas"]
        lr, eps, after = g["lr"], g["eps"], g.get("eps_after_max", False)
        return {"one_minus_beta1": 1.0 - b1, "beta2": b2, "eps": 0.0 if after else eps,
                "neg_clr": -(lr / (1.0 - b1 ** t)),
                "decay": 1.0 - lr * g["weight_decay"] if g.get("decoupled_weight_decay") else 1.0,
                "eps_denom": eps if after else 0.0}
