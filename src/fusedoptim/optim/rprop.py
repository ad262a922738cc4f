import math

from .._backends import backend_for
from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool, check_pair, check_real


class Rprop(Optimizer):
    r"""Resilient backpropagation (torch.optim.Rprop).

    Symbols: :math:`\gamma` = ``lr`` (the initial step size), :math:`\eta_-, \eta_+` =
    ``etas``, :math:`\Gamma_{min}, \Gamma_{max}` = ``step_sizes``; :math:`s` is the
    ``step_size`` buffer and :math:`\hat g` the ``prev`` buffer, all element-wise.

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        f_t &\leftarrow \eta_+ \text{ if } \hat g_{t-1} g_t > 0, \quad
            \eta_- \text{ if } \hat g_{t-1} g_t < 0, \quad 1 \text{ otherwise} \\
        s_t &\leftarrow \min(\max(f_t s_{t-1}, \Gamma_{min}), \Gamma_{max})
            \quad (s_0 = \gamma) \\
        g_t &\leftarrow 0 \text{ if } \hat g_{t-1} g_t < 0 \\
        \theta_t &\leftarrow \theta_{t-1} - s_t \operatorname{sign}(g_t) \\
        \hat g_t &\leftarrow g_t \quad (\hat g_0 = 0)

    ``lr`` only seeds the step sizes: it is read when a parameter's state is created (its
    first step), as in torch; later changes of ``lr`` do not reach existing state.  Like
    torch's, this Rprop has no ``weight_decay``; ``l1``, clipping and ``ema_decay`` work as
    for every optimizer.  :math:`\operatorname{sign}(0) = 0`.  Finite gradients give
    torch's bits (every product but :math:`f_t s_{t-1}` is exact).  NaN: here a NaN in
    :math:`\hat g_{t-1} g_t` makes :math:`s`, :math:`\theta` and :math:`\hat g` NaN, as a
    NaN gradient poisons every other optimizer's state; torch's ``sign(NaN)`` is 0, so
    torch instead leaves that element's :math:`\theta` and :math:`s` unchanged.

    ``delayed=True`` gives optax.rprop's order: each step moves by the step size and
    sign of the step before (the first step does not move), and a step size with no sign
    is kept as it is (not clamped),

    .. math::

        \theta_t &\leftarrow \theta_{t-1} - s_{t-1} \operatorname{sign}(\hat g_{t-1})
            \text{ unless } \hat g_{t-1} g_t < 0 \\
        s_t &\leftarrow \min(\max(f_t s_{t-1}, \Gamma_{min}), \Gamma_{max})
            \text{ if } \hat g_{t-1} g_t \ne 0, \text{ else } s_{t-1}

    then :math:`\hat g_t` as above (optax keeps :math:`s_t \operatorname{sign}(\hat g_t)`,
    its ``prev_updates``; ``prev`` holds :math:`\hat g_t`, from which it follows).

    State: ``step``, ``prev``, ``step_size``.

    References: Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm", IEEE ICNN 1993.
    """

    spec = AlgoSpec("rprop", scalars=("etaminus", "etaplus", "step_size_min", "step_size_max", "delayed"),
                    buffers=("prev", "step_size"))

    def __init__(self, params=None, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, maximize=False,
                 delayed=False, **options):
        super().__init__(params, dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes), maximize=maximize,
                                      delayed=delayed), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_bool(g.setdefault("delayed", False), f"{where}: delayed")
        etas = check_pair(g["etas"], "etas", "(etaminus, etaplus)", where)
        em, ep = float(etas[0]), float(etas[1])
        if not (0.0 < em < 1.0 < ep and math.isfinite(ep)):
            raise ValueError(f"{where}: Invalid eta values: {etas[0]!r}, {etas[1]!r} "
                             "(must be 0 < etaminus < 1 < etaplus, finite)")
        sizes = check_pair(g["step_sizes"], "step_sizes", "(min, max)", where)
        for i, v in enumerate(sizes):
            check_real(v, f"{where}: step size at index {i}", lo=0.0)
        if float(sizes[0]) > float(sizes[1]):
            raise ValueError(f"{where}: Invalid step sizes: min {sizes[0]!r} > max {sizes[1]!r}")

    def init_buffer(self, name, p, g):
        be = backend_for([p])
        return be.full_like(p, g["lr"]) if name == "step_size" else be.zeros_like(p)

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # no weight decay, even if a group has one

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        (em, ep), (lo, hi) = g["etas"], g["step_sizes"]
        return {"etaminus": float(em), "etaplus": float(ep), "step_size_min": float(lo), "step_size_max": float(hi),
                "delayed": 1.0 if g.get("delayed", False) else 0.0}
