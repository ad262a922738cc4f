from .._spec import AlgoSpec
from ..optimizer import Optimizer


class Lion(Optimizer):
    r"""Lion, EvoLved Sign Momentum (optax.lion; lion-pytorch).  torch.optim has no Lion.

    Symbols: :math:`\gamma` = ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\lambda` = ``weight_decay`` (decoupled, scaled by :math:`\gamma`).

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        \theta_{t-1} &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \\
        c_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma \operatorname{sign}(c_t) \\
        m_t &\leftarrow \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Every element moves by exactly :math:`\pm\gamma` (before decay), so Lion wants an lr
    3-10x smaller than AdamW's and a weight_decay 3-10x larger (Chen et al., sec. 5).
    :math:`\operatorname{sign}(0) = 0` and :math:`\operatorname{sign}(\mathrm{NaN}) =
    \mathrm{NaN}` (``jnp.sign``, as in optax): a NaN gradient makes its parameter NaN
    instead of silently freezing it.  :math:`c_t` and :math:`m_t` are multiply-adds, as in
    both references (not ``torch.lerp``).

    State: ``step``, ``exp_avg``.

    References: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023
    (arXiv:2302.06675), Algorithm 2.

    Example::

        >>> import numpy as np, fusedoptim
        >>> w = np.zeros(3, np.float32)
        >>> opt = fusedoptim.Lion([w], lr=0.1)
        >>> opt.step([np.array([1.0, -2.0, 0.0], np.float32)])
        >>> w
        array([-0.1,  0.1,  0. ], dtype=float32)
    """

    spec = AlgoSpec("lion", scalars=("decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "neg_lr"),
                    buffers=("exp_avg",))

    def __init__(self, params=None, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize),
                         **options)

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # decoupled: the decay scalar

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        lr, (b1, b2) = g["lr"], g["betas"]
        return {"decay": 1.0 - lr * g["weight_decay"], "beta1": b1, "one_minus_beta1": 1.0 - b1, "beta2": b2,
                "one_minus_beta2": 1.0 - b2, "neg_lr": -lr}
