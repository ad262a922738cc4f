import math

from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool, check_real


class AdaBelief(Optimizer):
    r"""AdaBelief (pytorch_optimizer.AdaBelief): Adam whose second moment is the "belief",
    the moving variance of the gradient around its moving mean.

    Symbols: :math:`\gamma` = ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay``.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \text{ if weight\_decouple
            } (1 - \lambda \text{ if fixed\_decay}), \text{ else }
            g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        s_t &\leftarrow \beta_2 s_{t-1} + (1 - \beta_2)(g_t - m_t)^2 + \epsilon \\
        \hat s_t &\leftarrow \max(\hat s_{t-1}, s_t) \text{ if ams\_bound, else } s_t \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
            \frac{m_t}{\sqrt{\hat s_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    With ``rectify=True`` (RAdam's rectification, as pytorch_optimizer): with
    :math:`\rho_\infty = 2 / (1 - \beta_2) - 1` and :math:`\rho_t = \rho_\infty - 2t\beta_2^t
    / (1 - \beta_2^t)`, when :math:`\rho_t \ge` ``n_sma_threshold`` the step is
    :math:`\theta_t \leftarrow \theta_{t-1} - \frac{\gamma r_t}{1 - \beta_1^t}
    \frac{m_t}{\sqrt{\hat s_t} + \epsilon}` with :math:`r_t = \sqrt{(1 - \beta_2^t)
    \frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}`;
    below it, :math:`\theta_t \leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} m_t`
    if ``degenerated_to_sgd``, else no step.  :math:`\epsilon` enters twice (in
    :math:`s_t` and in the denominator), as in the reference implementation; its default
    is 1e-16.

    State: ``step``, ``exp_avg``, ``exp_avg_var``, ``max_exp_avg_var`` (ams_bound).
    pytorch_optimizer keeps ``step`` per group, here per parameter (they agree when every
    parameter of a group steps every time).

    References: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", NeurIPS 2020 (arXiv:2010.07468); pytorch_optimizer 4.1
    ``optimizer/adabelief.py``.

    Example::

        >>> import numpy as np, fusedoptim
        >>> w = np.zeros(2, np.float32)
        >>> opt = fusedoptim.AdaBelief([w], lr=0.1)
        >>> opt.step([np.array([1.0, -1.0], np.float32)])
        >>> np.round(w, 3)
        array([-0.111,  0.111], dtype=float32)
    """

    spec = AlgoSpec("adabelief", scalars=("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "bc2_sqrt",
                                          "neg_step", "adaptive"),
                    flags=("ams_bound",), buffers=("exp_avg", "exp_avg_var", "max_exp_avg_var"))

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, weight_decouple=True,
                 fixed_decay=False, rectify=False, n_sma_threshold=5, degenerated_to_sgd=True, ams_bound=False,
                 eps=1e-16, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, fixed_decay=fixed_decay, rectify=rectify,
                                      n_sma_threshold=n_sma_threshold, degenerated_to_sgd=degenerated_to_sgd,
                                      ams_bound=ams_bound, eps=eps, maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        for k in ("weight_decouple", "fixed_decay", "rectify", "degenerated_to_sgd", "ams_bound"):
            check_bool(g[k], f"{where}: {k}")
        check_real(g["n_sma_threshold"], f"{where}: n_sma_threshold")

    def kernel_flags(self, g):
        return {"ams_bound": g["ams_bound"]}

    def common_scalars(self, g):
        out = super().common_scalars(g)
        return dict(out, weight_decay=0.0) if g["weight_decouple"] else out

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        decay = 1.0 - wd * (1.0 if g["fixed_decay"] else lr) if g["weight_decouple"] else 1.0
        step, bc2_sqrt, adaptive = lr, math.sqrt(1.0 - b2 ** t), 1.0
        if g["rectify"]:
            bc2_sqrt = 1.0
            rho_inf = 2.0 / (1.0 - b2) - 1.0
            b2t = b2 ** t
            rho = rho_inf - 2 * t * b2t / (1.0 - b2t)
            if rho >= g["n_sma_threshold"]:
                step = lr * math.sqrt((1.0 - b2t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf
                                      / (rho_inf - 2))
            else:
                adaptive = 0.0
                step = lr if g["degenerated_to_sgd"] else 0.0
        return {"decay": decay, "one_minus_beta1": 1.0 - b1, "beta2": b2, "one_minus_beta2": 1.0 - b2,
                "eps": g["eps"], "bc2_sqrt": bc2_sqrt, "neg_step": -(step / (1.0 - b1 ** t)), "adaptive": adaptive}
