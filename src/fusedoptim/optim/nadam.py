from .._spec import AlgoSpec
from ..optimizer import Optimizer


class NAdam(Optimizer):
    r"""Adam with Nesterov momentum (torch.optim.NAdam).

    Symbols as in :class:`Adam`; :math:`\psi` = ``momentum_decay``.

    .. math::

        \mu_t &\leftarrow \beta_1 (1 - \tfrac12 0.96^{t\psi}), \quad
            \mu_{t+1} \leftarrow \beta_1 (1 - \tfrac12 0.96^{(t+1)\psi}) \\
        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ (or decoupled: }
            \theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)) \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        d_t &\leftarrow \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma \frac{1 - \mu_t}{1 - \prod_{i \le t}\mu_i} \frac{g_t}{d_t}
            - \gamma \frac{\mu_{t+1}}{1 - \prod_{i \le t+1}\mu_i} \frac{m_t}{d_t}

    Keras's Nadam is ``momentum_decay=1.0`` (:math:`\mu_t = \beta_1(1 - \tfrac12 0.96^t)`);
    ``momentum_decay=None`` keeps :math:`\mu_t = \beta_1` constant: optax's nadam
    (``optax.adam(nesterov=True)``; with ``decoupled_weight_decay=True``, optax's nadamw),
    whose step is :math:`\gamma(\beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 -
    \beta_1^t)) / d_t`.

    State: ``step``, ``mu_product``, ``exp_avg``, ``exp_avg_sq``.

    References: Dozat, "Incorporating Nesterov Momentum into Adam", 2016.
    """

    spec = AlgoSpec("nadam", scalars=("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "bc2", "eps", "c_grad",
                                      "c_avg"),
                    buffers=("exp_avg", "exp_avg_sq"))
    scalar_state = ("step", "mu_product")

    def __init__(self, params=None, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize), **options)

    def init_scalars(self, g):
        return {"step": 0, "mu_product": 1.0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd, psi = g["lr"], g["betas"], g["weight_decay"], g["momentum_decay"]
        decoupled = g["decoupled_weight_decay"]
        if psi is None:     # optax: mu_t = beta1
            mu = mu_next = b1
        else:
            mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
            mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
        scal["mu_product"] = mu_product = scal["mu_product"] * mu
        return {"decay": 1.0 - lr * wd if decoupled else 1.0, "one_minus_beta1": 1.0 - b1, "beta2": b2,
                "one_minus_beta2": 1.0 - b2, "bc2": 1.0 - b2 ** t, "eps": g["eps"],
                "c_grad": -lr * (1.0 - mu) / (1.0 - mu_product),
                "c_avg": -lr * mu_next / (1.0 - mu_product * mu_next)}
