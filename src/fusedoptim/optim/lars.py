from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool, check_real


class LARS(Optimizer):
    r"""LARS: SGD with a per-tensor trust ratio (pytorch_optimizer.LARS).

    Symbols: :math:`\gamma` = ``lr``, :math:`\lambda` = ``weight_decay``, :math:`\mu` =
    ``momentum``, :math:`\tau` = ``dampening``, :math:`\eta` = ``trust_coefficient``;
    norms are the Euclidean norms of the whole tensor.  Tensors with ``ndim > 1``:

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        r_t &\leftarrow \frac{\eta\lVert\theta_{t-1}\rVert}{\lVert g_t\rVert + \lambda\lVert\theta_{t-1}\rVert}
            \text{ (1 if } \lVert\theta_{t-1}\rVert = 0 \text{ or the denominator is 0)} \\
        g_t &\leftarrow (g_t + \lambda\theta_{t-1})\, r_t \\
        b_t &\leftarrow \mu b_{t-1} + (1 - \tau) g_t \text{ if } \mu > 0 \\
        g_t &\leftarrow g_t + \mu b_t \text{ if nesterov, else } b_t \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma g_t

    Scalars and vectors (``ndim <= 1``: biases, norms) skip the first two lines: a plain
    SGD step without weight decay.

    optax.lars is three options (``weight_decay_in_norm=True, trust_all_tensors=True``,
    and ``trust_eps`` = its ``eps``): :math:`r_t = \eta\lVert\theta_{t-1}\rVert /
    (\lVert g_t + \lambda\theta_{t-1}\rVert + \epsilon_r)` (1 if either norm is 0) for every
    tensor, whatever its ``ndim`` (optax's default masks).  optax keeps :math:`\gamma` inside
    the momentum trace: the same steps under a constant ``lr``.  The momentum buffer starts at zero (torch.optim.SGD
    copies the first gradient instead).  One native call per step: a stats pass sums
    :math:`\lVert\theta\rVert^2, \lVert g\rVert^2` per tensor (fixed blocks), then the
    apply pass.

    State: ``step``, ``momentum_buffer`` (when momentum > 0).

    References: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks",
    2017; pytorch-optimizer 4.1 ``LARS``.

    Example::

        >>> import numpy as np, fusedoptim as fo
        >>> w, b = np.ones((4, 3), np.float32), np.zeros(3, np.float32)
        >>> opt = fo.LARS([w, b], lr=0.1, weight_decay=1e-4)
        >>> opt.step([np.full_like(w, 0.5), np.full_like(b, 0.5)])
    """

    spec = AlgoSpec("lars", scalars=("weight_decay", "momentum", "one_minus_dampening", "trust_coefficient",
                                     "nesterov", "neg_lr", "norm_wd", "den_wd", "trust_eps", "all_tensors"),
                    flags=("momentum",), buffers=("momentum_buffer",), stats=("param_sumsq", "grad_sumsq"))

    def __init__(self, params=None, lr=1e-3, weight_decay=0.0, momentum=0.9, dampening=0.0, trust_coefficient=1e-3,
                 nesterov=False, *, weight_decay_in_norm=False, trust_eps=0.0, trust_all_tensors=False,
                 maximize=False, **options):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                                      trust_coefficient=trust_coefficient, nesterov=nesterov,
                                      weight_decay_in_norm=weight_decay_in_norm, trust_eps=trust_eps,
                                      trust_all_tensors=trust_all_tensors, maximize=maximize),
                         **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["momentum"], f"{where}: momentum", lo=0.0, hi=1.0)
        check_real(g["dampening"], f"{where}: dampening", lo=0.0, hi=1.0)
        check_real(g["trust_coefficient"], f"{where}: trust_coefficient", lo=0.0)
        check_bool(g["nesterov"], f"{where}: nesterov")
        check_bool(g["weight_decay_in_norm"], f"{where}: weight_decay_in_norm")
        check_bool(g["trust_all_tensors"], f"{where}: trust_all_tensors")
        check_real(g["trust_eps"], f"{where}: trust_eps", lo=0.0)

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # LARS decays inside the trust ratio

    def kernel_flags(self, g):
        return {"momentum": g["momentum"] > 0.0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        return {"weight_decay": g["weight_decay"], "momentum": g["momentum"],
                "one_minus_dampening": 1.0 - g["dampening"], "trust_coefficient": g["trust_coefficient"],
                "nesterov": 1.0 if g["nesterov"] else 0.0, "neg_lr": -g["lr"],
                "norm_wd": g["weight_decay"] if g["weight_decay_in_norm"] else 0.0,
                "den_wd": 0.0 if g["weight_decay_in_norm"] else g["weight_decay"],
                "trust_eps": float(g["trust_eps"]), "all_tensors": 1.0 if g["trust_all_tensors"] else 0.0}
