from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_real


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum (torch.optim.SGD).

    Symbols: :math:`\gamma` = ``lr``, :math:`\mu` = ``momentum``, :math:`\tau` =
    ``dampening``, :math:`\lambda` = ``weight_decay``.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \text{ if } \lambda \ne 0 \\
        b_t &\leftarrow g_t \text{ (first step)}, \quad \mu b_{t-1} + (1 - \tau) g_t \text{ (later)} \\
        g_t &\leftarrow g_t + \mu b_t \text{ if nesterov, else } b_t \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma g_t

    The "SGDM" of many tutorials, :math:`m \leftarrow \beta m + (1-\beta) g`, is
    ``SGD(momentum=beta, dampening=beta)`` (torch's first step copies the gradient
    into the buffer instead of scaling it by :math:`1-\beta`).

    ``lr_in_momentum=True`` keeps the learning rate inside the buffer, as Keras does
    (dampening must be 0): :math:`b_t \leftarrow \mu b_{t-1} - \gamma g_t` (no first-step
    copy), :math:`\theta_t \leftarrow \theta_{t-1} + \mu b_t - \gamma g_t` if nesterov, else
    :math:`\theta_{t-1} + b_t`; the same as torch's for a constant lr, different under a
    schedule (the buffer remembers the past learning rates).

    ``decoupled_weight_decay=True`` replaces the coupled L2 term by the decoupled decay
    :math:`\theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)` before the update (Keras's
    ``weight_decay``, optax's ``add_decayed_weights`` before the learning rate).

    State: ``momentum_buffer`` (only when momentum != 0), ``step``.
    """

    spec = AlgoSpec("sgd", scalars=("lr", "momentum", "one_minus_dampening", "nesterov", "first", "decay", "grad_coef"),
                    flags=("momentum",), buffers=("momentum_buffer",))

    def __init__(self, params=None, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, decoupled_weight_decay=False, lr_in_momentum=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      lr_in_momentum=lr_in_momentum), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["dampening"], f"{where}: dampening", lo=0.0, hi=1.0)
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError(f"{where}: Nesterov momentum requires a momentum and zero dampening")
        if g.get("lr_in_momentum") and g["dampening"] != 0:
            raise ValueError(f"{where}: lr_in_momentum requires zero dampening")

    def kernel_flags(self, g):
        return {"momentum": g["momentum"] != 0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        lr = g["lr"]
        decay = 1.0 - lr * g["weight_decay"] if g.get("decoupled_weight_decay") else 1.0
        if g.get("lr_in_momentum") and g["momentum"] != 0:   # b = mu b - lr g; p += b (or mu b - lr g)
            return {"lr": -1.0, "momentum": g["momentum"], "one_minus_dampening": -lr,
                    "nesterov": 1.0 if g["nesterov"] else 0.0, "first": 0.0, "decay": decay, "grad_coef": -lr}
        return {"lr": lr, "momentum": g["momentum"], "one_minus_dampening": 1.0 - g["dampening"],
                "nesterov": 1.0 if g["nesterov"] else 0.0, "first": 1.0 if "momentum_buffer" in fresh else 0.0,
                "decay": decay, "grad_coef": 1.0}
