import math

from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_betas, check_bool, check_real


class Adan(Optimizer):
    r"""Adan, adaptive Nesterov momentum (pytorch_optimizer.Adan).

    Symbols: :math:`\gamma` = ``lr``, :math:`\beta_1, \beta_2, \beta_3` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\epsilon_{root}` = ``eps_root`` (default 0: torch's
    and pytorch_optimizer's formula; optax.adan's default is 1e-8), :math:`\lambda` =
    ``weight_decay``; :math:`d_t` is the
    gradient difference (:math:`d_1 = 0`).

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        d_t &\leftarrow g_t - g_{t-1} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        n_t &\leftarrow \beta_2 n_{t-1} + (1 - \beta_2) d_t \\
        v_t &\leftarrow \beta_3 v_{t-1} + (1 - \beta_3)(g_t + \beta_2 d_t)^2 \\
        \eta_t &\leftarrow \sqrt{v_t / (1 - \beta_3^t) + \epsilon_{root}} + \epsilon \\
        \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \text{ if weight\_decouple} \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\frac{m_t}{\eta_t}
            - \frac{\gamma\beta_2}{1 - \beta_2^t}\frac{n_t}{\eta_t} \\
        \theta_t &\leftarrow \theta_t / (1 + \gamma\lambda) \text{ unless weight\_decouple}

    The default decay (``weight_decouple=False``) is the paper's proximal form, a division
    after the step, not an L2 term in the gradient.  ``previous_grad`` holds
    :math:`-g_{t-1}`, as pytorch_optimizer stores it.  Its ``max_grad_norm`` is not
    offered: use the ``global_clipnorm`` option (Keras's clip factor
    :math:`c / \max(\lVert g\rVert, c)`), or clip before the step.  On the first step
    :math:`d_1 = 0` with ``maximize`` as well (pytorch_optimizer seeds ``previous_grad``
    from the gradient before negating it, which gives :math:`d_1 = -2g_1` there).

    ``optax_diff_weight=True`` weights the difference by :math:`1 - \beta_2` instead of
    :math:`\beta_2`, in :math:`v_t` (:math:`g_t + (1 - \beta_2) d_t`) and in the step
    (:math:`\gamma(1 - \beta_2) / (1 - \beta_2^t)`): optax.adan's formulas (with
    ``weight_decouple=True`` and ``eps_root=1e-8``, optax's defaults).

    State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff``, ``previous_grad``.

    References: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models", IEEE TPAMI 2024 (arXiv:2208.06677); pytorch_optimizer 4.1
    ``optimizer/adan.py``.

    Example::

        >>> import numpy as np, fusedoptim
        >>> w = np.zeros(2, np.float32)
        >>> opt = fusedoptim.Adan([w], lr=0.1)
        >>> opt.step([np.array([1.0, -1.0], np.float32)])
        >>> np.round(w, 3)
        array([-0.1,  0.1], dtype=float32)
    """

    spec = AlgoSpec("adan", scalars=("decay", "post", "one_minus_beta1", "beta2", "one_minus_beta2", "beta3",
                                     "one_minus_beta3", "bc3_sqrt", "eps", "neg_step", "neg_diff_step", "first",
                                     "eps_root"),
                    flags=("proximal",), buffers=("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"))

    def __init__(self, params=None, lr=1e-3, betas=(0.98, 0.92, 0.99), weight_decay=0.0, weight_decouple=False,
                 eps=1e-8, *, eps_root=0.0, optax_diff_weight=False, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, eps=eps, eps_root=eps_root,
                                      optax_diff_weight=optax_diff_weight, maximize=maximize), **options)

    def check_group(self, g, where):
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 3:
            raise ValueError(f"{where}: betas must be a triple (beta1, beta2, beta3), got {betas!r}")
        check_betas(betas, where, n=3)
        super().check_group({k: v for k, v in g.items() if k != "betas"}, where)
        check_bool(g["weight_decouple"], f"{where}: weight_decouple")
        check_bool(g.setdefault("optax_diff_weight", False), f"{where}: optax_diff_weight")
        check_real(g.setdefault("eps_root", 0.0), f"{where}: eps_root", lo=0.0)

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # decay and post below

    def kernel_flags(self, g):
        # the loop divides by post only then (post is 1 otherwise: same bits, one divide fewer)
        return {"proximal": not g["weight_decouple"] and g["weight_decay"] != 0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2, b3), wd = g["lr"], g["betas"], g["weight_decay"]
        w = 1.0 - b2 if g["optax_diff_weight"] else b2      # the weight of d in g + w d and of n in the step
        decouple = g["weight_decouple"]
        return {"decay": 1.0 - lr * wd if decouple and wd != 0 else 1.0,
                "post": 1.0 + lr * wd if not decouple and wd != 0 else 1.0,
                "one_minus_beta1": 1.0 - b1, "beta2": w, "one_minus_beta2": 1.0 - b2, "beta3": b3,
                "one_minus_beta3": 1.0 - b3, "bc3_sqrt": math.sqrt(1.0 - b3 ** t), "eps": g["eps"],
                "neg_step": -lr / (1.0 - b1 ** t), "neg_diff_step": -lr * w / (1.0 - b2 ** t),
                "first": 1.0 if "previous_grad" in fresh else 0.0,
                "eps_root": g.get("eps_root", 0.0) * (1.0 - b3 ** t)}   # sqrt(v/bc3 + r) = sqrt(v + r bc3)/sqrt(bc3)
