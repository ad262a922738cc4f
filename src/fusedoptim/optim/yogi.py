import math

from .._backends import backend_for
from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool, check_real


class Yogi(Optimizer):
    r"""Yogi (pytorch_optimizer.Yogi): Adam whose second moment moves additively, by at
    most :math:`(1 - \beta_2) g^2` per step, towards :math:`g^2`.

    Symbols: :math:`\gamma` = ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay``, :math:`v_0 = m_0` =
    ``initial_accumulator``.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \text{ if weight\_decouple
            } (1 - \lambda \text{ if fixed\_decay}), \text{ else }
            g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow v_{t-1} - (1 - \beta_2)\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2 \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
            \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    :math:`\operatorname{sign}(\mathrm{NaN})` is NaN here (torch's is 0): a NaN gradient
    reaches the parameter, as with every other optimizer.  ``eps`` defaults to 1e-3 and
    both moments start at ``initial_accumulator`` (1e-6), as in pytorch_optimizer.

    State: ``step``, ``exp_avg``, ``exp_avg_sq``.

    References: Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018;
    pytorch_optimizer 4.1 ``optimizer/yogi.py``.

    Example::

        >>> import numpy as np, fusedoptim
        >>> w = np.zeros(2, np.float32)
        >>> opt = fusedoptim.Yogi([w], lr=0.1)
        >>> opt.step([np.array([1.0, -1.0], np.float32)])
        >>> np.round(w, 3)
        array([-0.1,  0.1], dtype=float32)
    """

    spec = AlgoSpec("yogi", scalars=("decay", "one_minus_beta1", "one_minus_beta2", "bc2_sqrt", "eps",
                                     "neg_step"),
                    buffers=("exp_avg", "exp_avg_sq"))

    def __init__(self, params=None, lr=1e-2, betas=(0.9, 0.999), initial_accumulator=1e-6, weight_decay=0.0,
                 weight_decouple=True, fixed_decay=False, eps=1e-3, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), initial_accumulator=initial_accumulator,
                                      weight_decay=weight_decay, weight_decouple=weight_decouple,
                                      fixed_decay=fixed_decay, eps=eps, maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["initial_accumulator"], f"{where}: initial_accumulator", lo=0.0)
        for k in ("weight_decouple", "fixed_decay"):
            check_bool(g[k], f"{where}: {k}")

    def init_buffer(self, name, p, g):
        return backend_for([p]).full_like(p, g["initial_accumulator"])

    def common_scalars(self, g):
        out = super().common_scalars(g)
        return dict(out, weight_decay=0.0) if g["weight_decouple"] else out

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        decay = 1.0 - wd * (1.0 if g["fixed_decay"] else lr) if g["weight_decouple"] else 1.0
        return {"decay": decay, "one_minus_beta1": 1.0 - b1, "one_minus_beta2": 1.0 - b2,
                "bc2_sqrt": math.sqrt(1.0 - b2 ** t), "eps": g["eps"], "neg_step": -(lr / (1.0 - b1 ** t))}
