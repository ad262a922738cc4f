import numpy as np

from .._backends import backend_for
from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool


class NovoGrad(Optimizer):
    r"""NovoGrad: layer-wise second moments (pytorch_optimizer.NovoGrad).

    Symbols: :math:`\gamma` = ``lr``, :math:`\beta_1, \beta_2` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay``, :math:`\beta_3 = 1 -
    \beta_1` with ``grad_averaging`` (else 1); :math:`s` is a per-tensor scalar
    (``grads_ema``), :math:`\lVert g\rVert^2` the sum of squares of the whole tensor.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        s_t &\leftarrow \lVert g_t\rVert^2 \text{ (first step)}, \quad
            s_{t-1} + (1 - \beta_2)(\lVert g_t\rVert^2 - s_{t-1}) \text{ (later)} \\
        g_t &\leftarrow g_t / (\sqrt{s_t} + \epsilon) \\
        \theta' &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \text{ (} 1 - \lambda
            \text{ if fixed\_decay) if weight\_decouple, else }
            g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        m_t &\leftarrow g_t \text{ (first step)}, \quad \beta_1 m_{t-1} + \beta_3 g_t \text{ (later)} \\
        \theta_t &\leftarrow \theta' - \gamma m_t

    :math:`s` is updated in the parameter's dtype, as the package does (a lerp).  One
    native call per step: a stats pass sums :math:`\lVert g\rVert^2` per tensor (fixed
    blocks), then the apply pass.

    State: ``step``, ``moments``, ``grads_ema`` (an array of shape ``()``).

    References: Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
    Moments for Training of Deep Networks", 2019; pytorch-optimizer 4.1 ``NovoGrad``.

    Example::

        >>> import numpy as np, fusedoptim as fo
        >>> w = np.ones((4, 3), np.float32)
        >>> opt = fo.NovoGrad([w], lr=1e-2)
        >>> opt.step([np.full_like(w, 0.5)])
        >>> float(opt.state[w]["grads_ema"])
        3.0
    """

    spec = AlgoSpec("novograd", scalars=("beta1", "beta3", "one_minus_beta2", "eps", "decay", "wd_coupled", "neg_lr",
                                         "first"),
                    buffers=("moments", "grads_ema"), stats=("grad_sumsq",), tensor_state=("grads_ema",))

    def __init__(self, params=None, lr=1e-3, betas=(0.95, 0.98), weight_decay=0.0, weight_decouple=False,
                 fixed_decay=False, grad_averaging=False, eps=1e-8, *, maximize=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                                      grad_averaging=grad_averaging, eps=eps, maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        for k in ("weight_decouple", "fixed_decay", "grad_averaging"):
            check_bool(g[k], f"{where}: {k}")

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # NovoGrad decays after the normalisation

    def init_buffer(self, name, p, g):
        if name == "grads_ema":
            return backend_for([p]).from_host(np.zeros(()), p)      # per tensor: shape ()
        return super().init_buffer(name, p, g)

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        lr, (b1, b2), wd = g["lr"], g["betas"], g["weight_decay"]
        decouple = g["weight_decouple"]
        return {"beta1": b1, "beta3": 1.0 - b1 if g["grad_averaging"] else 1.0, "one_minus_beta2": 1.0 - b2,
                "eps": g["eps"], "decay": 1.0 - wd * (1.0 if g["fixed_decay"] else lr) if decouple and wd else 1.0,
                "wd_coupled": 0.0 if decouple else wd, "neg_lr": -lr,
                "first": 1.0 if "grads_ema" in fresh else 0.0}
