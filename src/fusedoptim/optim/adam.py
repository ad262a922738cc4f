import math

from .._spec import AlgoSpec
from ..optimizer import Optimizer


class Adam(Optimizer):
    r"""Adam, AMSGrad and (with ``decoupled_weight_decay=True``) AdamW (torch.optim.Adam).

    Symbols: :math:`\gamma` = ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay``.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \text{ if decoupled, else }
            g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &\leftarrow \max(\hat v_{t-1}, v_t) \text{ if amsgrad, else } v_t \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Note that :math:`\epsilon` is added after the bias correction of :math:`\sqrt{v}`,
    as in torch (Keras adds it to the uncorrected root).

    State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015;
    Reddi et al., "On the Convergence of Adam and Beyond", 2018.
    """

    spec = AlgoSpec("adam", scalars=("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "bc2_sqrt", "eps",
                                     "neg_step"),
                    flags=("amsgrad",), buffers=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay), **options)

    def kernel_flags(self, g):
        return {"amsgrad": g["amsgrad"]}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        return {"decay": 1.0 - lr * wd if g["decoupled_weight_decay"] else 1.0, "one_minus_beta1": 1.0 - b1,
                "beta2": b2, "one_minus_beta2": 1.0 - b2, "bc2_sqrt": math.sqrt(1.0 - b2 ** t), "eps": g["eps"],
                "neg_step": -(lr / (1.0 - b1 ** t))}


class AdamW(Adam):
    r"""Adam with decoupled weight decay (torch.optim.AdamW): :math:`\theta \leftarrow
    \theta (1 - \gamma\lambda)` before the Adam update; ``weight_decay`` defaults to 1e-2.

    References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, **options):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, **options)
