from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_real


class ASGD(Optimizer):
    r"""Averaged stochastic gradient descent (torch.optim.ASGD).

    Symbols: :math:`\gamma` = ``lr``, :math:`\lambda` = ``lambd``, :math:`\alpha` =
    ``alpha``, :math:`t_0` = ``t0``, :math:`w` = ``weight_decay``; :math:`\eta_t` and
    :math:`\mu_t` are per-parameter scalar state (``eta``, ``mu``), :math:`a` the averaged
    parameters (``ax``).

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize}, \quad g_t \leftarrow g_t + w\theta_{t-1}
            \text{ if } w \ne 0 \\
        \theta_t &\leftarrow \theta_{t-1}(1 - \lambda\eta_t) - \eta_t g_t \\
        a_t &\leftarrow a_{t-1} + \mu_t(\theta_t - a_{t-1}) \text{ if } \mu_t \ne 1,
            \text{ else } \theta_t \\
        \eta_{t+1} &\leftarrow \gamma / (1 + \lambda\gamma t)^\alpha, \quad
        \mu_{t+1} \leftarrow 1 / \max(1, t - t_0)

    with :math:`\eta_1 = \gamma` and :math:`\mu_1 = 1` (set when a parameter's state is
    created).  ``ax`` is the Polyak average; evaluate with it by copying it into the
    parameters (or use ``ema_decay`` and :meth:`ema_weights` for an exponential average).

    State: ``step``, ``eta``, ``mu``, ``ax``.

    References: Polyak & Juditsky, "Acceleration of Stochastic Approximation by
    Averaging", SIAM J. Control Optim. 1992.
    """

    spec = AlgoSpec("asgd", scalars=("decay", "neg_eta", "mu", "copy"), buffers=("ax",))
    scalar_state = ("step", "eta", "mu")

    def __init__(self, params=None, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, *,
                 maximize=False, **options):
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                                      maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["lambd"], f"{where}: lambd", lo=0.0)
        check_real(g["t0"], f"{where}: t0", lo=0.0)

    def init_scalars(self, g):
        return {"step": 0, "eta": float(g["lr"]), "mu": 1.0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, lambd, eta, mu = g["lr"], g["lambd"], scal["eta"], scal["mu"]
        out = {"decay": 1.0 - lambd * eta, "neg_eta": -eta, "mu": mu, "copy": 1.0 if mu == 1.0 else 0.0}
        scal["eta"] = lr / ((1.0 + lambd * lr * t) ** g["alpha"])
        scal["mu"] = 1.0 / max(1.0, t - g["t0"])
        return out
