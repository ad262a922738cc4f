import math

from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool, check_real


class RAdam(Optimizer):
    r"""Rectified Adam (torch.optim.RAdam).

    .. math::

        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ (or decoupled: }
            \theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)) \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \rho_\infty &\leftarrow 2 / (1 - \beta_2) - 1, \quad
        \rho_t \leftarrow \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t) \\
        r_t &\leftarrow \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma \frac{m_t}{1 - \beta_1^t}
            \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon} r_t \text{ if } \rho_t > 5,
            \text{ else } \theta_{t-1} - \gamma \frac{m_t}{1 - \beta_1^t}

    optax.radam is ``eps_after_bias_correction=True``: the rectified step is
    :math:`\gamma r_t \hat m_t / (\sqrt{\hat v_t} + \epsilon)` with :math:`\hat v_t = v_t /
    (1 - \beta_2^t)`, i.e. :math:`\epsilon` is added after the bias correction (the loop
    gets :math:`\epsilon\sqrt{1 - \beta_2^t}`).  ``threshold`` is the :math:`\rho_t`
    above which the step is rectified (5, torch's and optax's; optax rectifies at
    :math:`\rho_t \ge` threshold, torch above it: they differ only when :math:`\rho_t` equals
    it).  optax's ``eps_root`` and ``nesterov`` are not offered (0 and False, its defaults).

    State: ``step``, ``exp_avg``, ``exp_avg_sq``.

    References: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", 2020.
    """

    spec = AlgoSpec("radam", scalars=("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "bc1", "lr", "rectified",
                                      "bc2_sqrt", "eps", "rect"),
                    buffers=("exp_avg", "exp_avg_sq"))

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, eps_after_bias_correction=False, threshold=5.0, maximize=False,
                 **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      eps_after_bias_correction=eps_after_bias_correction, threshold=threshold,
                                      maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_bool(g["eps_after_bias_correction"], f"{where}: eps_after_bias_correction")
        check_real(g["threshold"], f"{where}: threshold")

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        decoupled = g["decoupled_weight_decay"]
        bc1 = 1.0 - b1 ** t
        bc2 = 1.0 - b2 ** t
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * (b2 ** t) / bc2
        rectified = rho_t > g["threshold"]
        rect = (math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                if rectified else 0.0)
        return {"decay": 1.0 - lr * wd if decoupled else 1.0, "one_minus_beta1": 1.0 - b1, "beta2": b2,
                "one_minus_beta2": 1.0 - b2, "bc1": bc1, "lr": lr, "rectified": 1.0 if rectified else 0.0,
                "bc2_sqrt": math.sqrt(bc2),
                "eps": g["eps"] * math.sqrt(bc2) if g["eps_after_bias_correction"] else g["eps"], "rect": rect}
