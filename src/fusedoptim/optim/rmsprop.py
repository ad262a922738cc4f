from .._backends import backend_for
from .._spec import AlgoSpec
from ..optimizer import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (torch.optim.RMSprop).

    Symbols: :math:`\gamma` = ``lr``, :math:`\alpha` = ``alpha``, :math:`\epsilon` =
    ``eps``, :math:`\mu` = ``momentum``, :math:`\lambda` = ``weight_decay``.

    .. math::

        g_t &\leftarrow g_t + \lambda\theta_{t-1} \text{ if } \lambda \ne 0 \\
        v_t &\leftarrow \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &\leftarrow \alpha \bar g_{t-1} + (1 - \alpha) g_t \text{ (centered)} \\
        d_t &\leftarrow \sqrt{v_t - \bar g_t^2} + \epsilon \text{ (centered), else } \sqrt{v_t} + \epsilon \\
        b_t &\leftarrow \mu b_{t-1} + g_t / d_t,\ \theta_t \leftarrow \theta_{t-1} - \gamma b_t
            \text{ if } \mu > 0, \text{ else } \theta_t \leftarrow \theta_{t-1} - \gamma g_t / d_t

    Options for the Keras and optax conventions (torch's defaults unchanged):

    - ``eps_in_sqrt=True`` (Keras; optax's default): :math:`d_t \leftarrow \sqrt{v_t + \epsilon}`
      (centered: :math:`\sqrt{v_t - \bar g_t^2 + \epsilon}`);
    - ``initial_scale`` (optax): :math:`v_0` (0 in torch and Keras);
    - ``bias_correction=True`` (optax): :math:`v_t` and :math:`\bar g_t` divided by
      :math:`1 - \alpha^t` before they enter :math:`d_t`;
    - ``lr_in_momentum=True`` (Keras, optax): the buffer holds learning-rate-scaled steps,
      :math:`b_t \leftarrow \mu b_{t-1} + \gamma g_t / d_t`, :math:`\theta_t \leftarrow \theta_{t-1} - b_t`
      (the same as torch's for a constant lr);
    - ``nesterov=True`` (optax): :math:`\theta_t \leftarrow \theta_{t-1} - (\gamma g_t / d_t + \mu b_t)`
      (the increment in units of ``lr_in_momentum``'s buffer);

    - ``decoupled_weight_decay=True`` replaces the coupled L2 term by the decoupled decay
    :math:`\theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)` before the update (Keras's
    ``weight_decay``, optax's ``add_decayed_weights`` before the learning rate).

    State: ``step``, ``square_avg``, ``grad_avg`` (centered), ``momentum_buffer`` (momentum > 0).

    References: Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012.
    """

    spec = AlgoSpec("rmsprop", scalars=("alpha", "one_minus_alpha", "eps", "momentum", "neg_lr", "decay", "eps_root",
                                        "vscale", "mscale", "grad_coef", "nesterov"),
                    flags=("centered", "momentum"), buffers=("square_avg", "grad_avg", "momentum_buffer"))

    def __init__(self, params=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, decoupled_weight_decay=False, eps_in_sqrt=False,
                 initial_scale=0.0, nesterov=False, bias_correction=False, lr_in_momentum=False, **options):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay, eps_in_sqrt=eps_in_sqrt,
                                      initial_scale=initial_scale, nesterov=nesterov,
                                      bias_correction=bias_correction, lr_in_momentum=lr_in_momentum), **options)

    def init_buffer(self, name, p, g):
        if name == "square_avg" and g.get("initial_scale", 0.0) != 0.0:
            return backend_for([p]).full_like(p, g["initial_scale"])
        return super().init_buffer(name, p, g)

    def kernel_flags(self, g):
        return {"centered": g["centered"], "momentum": g["momentum"] > 0}

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] = t = scal["step"] + 1
        a, lr, eps = g["alpha"], g["lr"], g["eps"]
        inside = g.get("eps_in_sqrt", False)
        bc = 1.0 - a ** t if g.get("bias_correction") else 1.0
        inlr = g.get("lr_in_momentum", False) and g["momentum"] > 0
        return {"alpha": a, "one_minus_alpha": 1.0 - a, "eps": 0.0 if inside else eps, "momentum": g["momentum"],
                "neg_lr": -1.0 if inlr else -lr,
                "decay": 1.0 - lr * g["weight_decay"] if g.get("decoupled_weight_decay") else 1.0,
                "eps_root": eps if inside else 0.0, "vscale": 1.0 / bc, "mscale": 1.0 / bc,
                "grad_coef": lr if inlr else 1.0, "nesterov": 1.0 if g.get("nesterov") else 0.0}
