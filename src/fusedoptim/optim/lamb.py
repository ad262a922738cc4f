from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool, check_real


class Lamb(Optimizer):
    r"""LAMB: Adam moments with a per-tensor trust ratio (pytorch_optimizer.Lamb, its
    default non-rectified update).

    Symbols: :math:`\gamma` = ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay``, :math:`\beta_3 = 1 -
    \beta_1` with ``grad_averaging`` (else 1), :math:`c` = 10 (the weight-norm clamp);
    norms are the Euclidean norms of the whole tensor.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        m_t &\leftarrow \beta_1 m_{t-1} + \beta_3 g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta' &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \text{ (} 1 - \lambda
            \text{ if fixed\_decay) if weight\_decouple, else } \theta_{t-1} \\
        u_t &\leftarrow m_t / (\sqrt{v_t} + \epsilon) \; (+\, \lambda\theta' \text{ if not weight\_decouple}) \\
        r_t &\leftarrow \frac{\min(\lVert\theta'\rVert, c)}{\lVert u_t\rVert + \epsilon}
            \text{ (1 if either norm is 0, or with adam=True)} \\
        \theta_t &\leftarrow \theta' - \frac{\gamma}{1 - \beta_1^t}\, r_t\, u_t

    The step divides by :math:`1 - \beta_1^t` as the package's code does (its
    ``adam_debias`` is off); :math:`v` has no bias correction.  One native call per step:
    a stats pass updates :math:`m, v` and sums :math:`\lVert\theta'\rVert^2,
    \lVert u\rVert^2` per tensor (fixed blocks: the same bits for any thread count), then
    the apply pass writes :math:`\theta`.  ``rectify=True`` (RAdam-style) and
    ``pre_norm=True`` are not implemented (``ValueError``); the toolkit's ``clipnorm``
    options clip by the global norm instead.

    State: ``step``, ``exp_avg``, ``exp_avg_sq``.

    References: You et al., "Large Batch Optimization for Deep Learning: Training BERT
    in 76 minutes", ICLR 2020; pytorch-optimizer 4.1 ``Lamb``.

    Example::

        >>> import numpy as np, fusedoptim as fo
        >>> w = np.ones((4, 3), np.float32)
        >>> opt = fo.Lamb([w], lr=1e-2, weight_decay=1e-2)
        >>> opt.step([np.full_like(w, 0.5)])
    """

    spec = AlgoSpec("lamb", scalars=("decay", "beta1", "beta3", "beta2", "one_minus_beta2", "eps", "wd_update",
                                     "neg_step", "clamp", "adam"),
                    buffers=("exp_avg", "exp_avg_sq"), stats=("param_sumsq", "update_sumsq"))
    #: the clamp of the weight norm in the trust ratio (pytorch_optimizer's ``Lamb.clamp``)
    clamp = 10.0

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, weight_decouple=True,
                 fixed_decay=False, rectify=False, degenerated_to_sgd=False, n_sma_threshold=5, grad_averaging=True,
                 max_grad_norm=1.0, adam=False, pre_norm=False, eps=1e-6, *, maximize=False, **options):
        for name, v in (("rectify", rectify), ("pre_norm", pre_norm)):
            check_bool(v, name)
            if v:
                raise ValueError(f"Lamb: {name}=True is not implemented by fusedoptim (the default update, "
                                 f"{name}=False, is)")
        check_real(max_grad_norm, "max_grad_norm", lo=0.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                                      grad_averaging=grad_averaging, adam=adam, eps=eps, maximize=maximize),
                         **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        for k in ("weight_decouple", "fixed_decay", "grad_averaging", "adam"):
            check_bool(g[k], f"{where}: {k}")

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # LAMB's decay is its own (decay, wd_update)

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        decouple = g["weight_decouple"]
        return {"decay": 1.0 - wd * (1.0 if g["fixed_decay"] else lr) if decouple and wd != 0.0 else 1.0,
                "beta1": b1, "beta3": 1.0 - b1 if g["grad_averaging"] else 1.0, "beta2": b2,
                "one_minus_beta2": 1.0 - b2, "eps": g["eps"], "wd_update": 0.0 if decouple else wd,
                "neg_step": -(lr / (1.0 - b1 ** t)), "clamp": self.clamp, "adam": 1.0 if g["adam"] else 0.0}
