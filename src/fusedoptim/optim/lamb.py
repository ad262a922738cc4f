import math

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
    ``adam_debias`` is off); :math:`v` has no bias correction.

    Keras's and optax's LAMB are two options (``fusedoptim.keras.Lamb`` sets both, with
    ``weight_decouple=True``; optax.lamb is ``weight_decouple=False``):

    - ``bias_correction=True``: Adam's direction, :math:`u_t = \hat m_t / (\sqrt{\hat v_t}
      + \epsilon)` with :math:`\hat m_t = m_t / (1 - \beta_1^t)`, :math:`\hat v_t = v_t /
      (1 - \beta_2^t)` (plus :math:`\lambda\theta'` when coupled), and the step
      :math:`\theta_t \leftarrow \theta' - \gamma r_t u_t` (no second division);
    - ``plain_trust_ratio=True``: :math:`r_t = \lVert\theta'\rVert / \lVert u_t\rVert` (1 if
      either norm is 0): no clamp of :math:`\lVert\theta'\rVert` at :math:`c` and no
      :math:`\epsilon` under the fraction.

    These change per-step scalars only (the loops compute :math:`u_t` up to a per-step
    factor, which the ratio cancels).  optax's ``eps_root`` is not offered (0, its default).  One native call per step:
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
                                     "neg_step", "clamp", "adam", "ratio_eps", "fallback_ratio"),
                    buffers=("exp_avg", "exp_avg_sq"), stats=("param_sumsq", "update_sumsq"))
    #: the clamp of the weight norm in the trust ratio (pytorch_optimizer's ``Lamb.clamp``)
    clamp = 10.0

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, weight_decouple=True,
                 fixed_decay=False, rectify=False, degenerated_to_sgd=False, n_sma_threshold=5, grad_averaging=True,
                 max_grad_norm=1.0, adam=False, pre_norm=False, eps=1e-6, *, bias_correction=False,
                 plain_trust_ratio=False, maximize=False, **options):
        for name, v in (("rectify", rectify), ("pre_norm", pre_norm)):
            check_bool(v, name)
            if v:
                raise ValueError(f"Lamb: {name}=True is not implemented by fusedoptim (the default update, "
                                 f"{name}=False, is)")
        check_real(max_grad_norm, "max_grad_norm", lo=0.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                                      grad_averaging=grad_averaging, adam=adam, eps=eps,
                                      bias_correction=bias_correction, plain_trust_ratio=plain_trust_ratio,
                                      maximize=maximize),
                         **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        for k in ("weight_decouple", "fixed_decay", "grad_averaging", "adam", "bias_correction",
                  "plain_trust_ratio"):
            check_bool(g[k], f"{where}: {k}")

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # LAMB's decay is its own (decay, wd_update)

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        decouple, eps = g["weight_decouple"], g["eps"]
        plain = g["plain_trust_ratio"]
        if g["bias_correction"]:
            # u (Keras, optax) = k * m / (sqrt(v) + eps sqrt(bc2)) with k = sqrt(bc2) / bc1: the loops
            # compute u / k; the ratio |theta'| / |u| cancels k, the fallback ratio 1 does not
            bc2_sqrt = math.sqrt(1.0 - b2 ** t)
            k = bc2_sqrt / (1.0 - b1 ** t)
            eps_loop, wd_update, neg_step, fallback = eps * bc2_sqrt, wd / k, -lr, k
            ratio_eps = 0.0 if plain else eps / k
        else:
            eps_loop, wd_update, neg_step, fallback = eps, wd, -(lr / (1.0 - b1 ** t)), 1.0
            ratio_eps = 0.0 if plain else eps
        return {"decay": 1.0 - wd * (1.0 if g["fixed_decay"] else lr) if decouple and wd != 0.0 else 1.0,
                "beta1": b1, "beta3": 1.0 - b1 if g["grad_averaging"] else 1.0, "beta2": b2,
                "one_minus_beta2": 1.0 - b2, "eps": eps_loop, "wd_update": 0.0 if decouple else wd_update,
                "neg_step": neg_step, "clamp": math.inf if plain else self.clamp,
                "adam": 1.0 if g["adam"] else 0.0, "ratio_eps": ratio_eps, "fallback_ratio": fallback}
