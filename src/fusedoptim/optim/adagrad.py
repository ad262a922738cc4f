from .._backends import backend_for
from .._spec import AlgoSpec
from ..optimizer import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad (torch.optim.Adagrad).

    Symbols: :math:`\gamma` = ``lr``, :math:`\eta` = ``lr_decay``, :math:`\epsilon` =
    ``eps``, :math:`\lambda` = ``weight_decay``, :math:`\tau` = ``initial_accumulator_value``.

    .. math::

        \tilde\gamma &\leftarrow \gamma / (1 + (t - 1)\eta) \\
        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ if } \lambda \ne 0 \\
        s_t &\leftarrow s_{t-1} + g_t^2 \quad (s_0 = \tau) \\
        \theta_t &\leftarrow \theta_{t-1} - \tilde\gamma\, g_t / (\sqrt{s_t} + \epsilon)

    ``eps_in_sqrt=True`` (Keras, optax): :math:`\theta_t \leftarrow \theta_{t-1} - \tilde\gamma\,
    g_t / \sqrt{s_t + \epsilon}`.
    ``decoupled_weight_decay=True`` replaces the coupled L2 term by the decoupled decay
    :math:`\theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)` before the update (Keras's
    ``weight_decay``, optax's ``add_decayed_weights`` before the learning rate).

    State: ``step``, ``sum``.

    References: Duchi et al., "Adaptive Subgradient Methods", JMLR 2011.
    """

    spec = AlgoSpec("adagrad", scalars=("neg_clr", "eps", "decay", "eps_root"), buffers=("sum",))

    def __init__(self, params=None, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, decoupled_weight_decay=False,
                 eps_in_sqrt=False, **options):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                                      eps_in_sqrt=eps_in_sqrt), **options)

    def init_buffer(self, name, p, g):
        return backend_for([p]).full_like(p, g["initial_accumulator_value"])

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        lr, eps = g["lr"], g["eps"]
        inside = g.get("eps_in_sqrt", False)
        return {"neg_clr": -(lr / (1.0 + (t - 1) * g["lr_decay"])), "eps": 0.0 if inside else eps,
                "decay": 1.0 - lr * g["weight_decay"] if g.get("decoupled_weight_decay") else 1.0,
                "eps_root": eps if inside else 0.0}
