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
    as in torch.  Options for the Keras and optax conventions (torch's defaults unchanged):

    - ``eps_before_bias_correction=True`` (Keras): :math:`\epsilon` is added to the
      uncorrected root, :math:`\theta_t \leftarrow \theta_{t-1} - \gamma\frac{\sqrt{1-\beta_2^t}}
      {1-\beta_1^t}\frac{m_t}{\sqrt{\hat v_t} + \epsilon}` (the same rule with
      :math:`\epsilon / \sqrt{1-\beta_2^t}` in place of :math:`\epsilon`);
    - ``eps_root`` (optax): :math:`\epsilon_r` is added under the root of the
      bias-corrected :math:`\hat v`: :math:`\sqrt{\hat v_t / (1-\beta_2^t) + \epsilon_r} + \epsilon`;
    - ``amsgrad_bias_corrected=True`` (optax's amsgrad): the maximum is taken over the
      bias-corrected second moment, :math:`\hat v_t \leftarrow \max(\hat v_{t-1}, v_t / (1-\beta_2^t))`,
      and the denominator is :math:`\sqrt{\hat v_t + \epsilon_r} + \epsilon` (torch keeps the
      maximum of the raw :math:`v_t` and corrects after it).

    State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015;
    Reddi et al., "On the Convergence of Adam and Beyond", 2018.
    """

    spec = AlgoSpec("adam", scalars=("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "bc2_sqrt", "eps",
                                     "neg_step", "eps_root", "vmax_scale"),
                    flags=("amsgrad",), buffers=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False, eps_root=0.0,
                 amsgrad_bias_corrected=False, eps_before_bias_correction=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay, eps_root=eps_root,
                                      amsgrad_bias_corrected=amsgrad_bias_corrected,
                                      eps_before_bias_correction=eps_before_bias_correction), **options)

    def kernel_flags(self, g):
        return {"amsgrad": g["amsgrad"]}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        bc2 = 1.0 - b2 ** t
        bc2_sqrt, eps, eps_root = math.sqrt(bc2), g.get("eps", 1e-8), g.get("eps_root", 0.0)
        if g.get("eps_before_bias_correction"):
            eps = eps / bc2_sqrt                # (sqrt(v) + eps) / bc2_sqrt = sqrt(v) / bc2_sqrt + eps'
        vmax_scale = 1.0
        if g["amsgrad"] and g.get("amsgrad_bias_corrected"):
            vmax_scale, bc2_sqrt = 1.0 / bc2, 1.0   # the max of v / bc2, no correction after it
        else:
            eps_root = eps_root * bc2           # sqrt(v / bc2 + r) = sqrt(v + r bc2) / bc2_sqrt
        return {"decay": 1.0 - lr * wd if g["decoupled_weight_decay"] else 1.0, "one_minus_beta1": 1.0 - b1,
                "beta2": b2, "one_minus_beta2": 1.0 - b2, "bc2_sqrt": bc2_sqrt, "eps": eps,
                "neg_step": -(lr / (1.0 - b1 ** t)), "eps_root": eps_root, "vmax_scale": vmax_scale}


class AdamW(Adam):
    r"""Adam with decoupled weight decay (torch.optim.AdamW): :math:`\theta \leftarrow
    \theta (1 - \gamma\lambda)` before the Adam update; ``weight_decay`` defaults to 1e-2.

    References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, **options):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, **options)
