from .._backends import backend_for
from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_real


class Ftrl(Optimizer):
    r"""FTRL-Proximal (keras.optimizers.Ftrl: Keras 3's formulas, names and defaults; the
    learning rate is ``lr`` as everywhere in fusedoptim).

    Symbols: :math:`\gamma` = ``lr``, :math:`p` = ``learning_rate_power``,
    :math:`\lambda_1, \lambda_2, \lambda_s` = ``l1_regularization_strength``,
    ``l2_regularization_strength``, ``l2_shrinkage_regularization_strength``,
    :math:`\beta` = ``beta``, :math:`w` = ``weight_decay`` (Keras's, decoupled);
    :math:`n` is the accumulator (``accumulator``, starting at
    ``initial_accumulator_value``), :math:`z` the linear term (``linear``).

    .. math::

        g_t &\leftarrow -g_t \text{ if maximize} \\
        \theta_{t-1} &\leftarrow \theta_{t-1} (1 - \gamma w) \\
        n_t &\leftarrow n_{t-1} + g_t^2 \\
        z_t &\leftarrow z_{t-1} + g_t + 2\lambda_s\theta_{t-1}
            - \frac{n_t^{-p} - n_{t-1}^{-p}}{\gamma}\,\theta_{t-1} \\
        q_t &\leftarrow \frac{n_t^{-p}}{\gamma} + 2\left(\lambda_2 + \frac{\beta}{2\gamma}\right) \\
        \theta_t &\leftarrow \frac{\operatorname{clip}(z_t, -\lambda_1, \lambda_1) - z_t}{q_t}

    The default :math:`p = -1/2` takes square roots instead of powers; ``lr`` must be > 0.  ``beta`` must be >= 0 (Keras does not check it).  The common ``l1`` option
    is the usual gradient penalty, not FTRL's :math:`\lambda_1`.

    State: ``step``, ``accumulator``, ``linear``.

    References: McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013;
    Keras 3 ``keras/src/optimizers/ftrl.py``.

    Example::

        >>> import numpy as np, fusedoptim
        >>> w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
        >>> opt = fusedoptim.Ftrl([w], lr=0.5)
        >>> opt.step([np.array([1.0, 6.0, 7.0, 2.0], np.float32)])
        >>> np.round(w, 4)
        array([0.2218, 1.3954, 2.3651, 2.8814], dtype=float32)
    """

    spec = AlgoSpec("ftrl", scalars=("decay", "shrink2", "neg_power", "lr", "two_l2", "l1_strength"),
                    flags=("half_power",), buffers=("accumulator", "linear"))
    weights_from_state = True      # θ = (clip(z) - z) / (...): computed from the accumulators

    def __init__(self, params=None, lr=1e-3, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0, weight_decay=0.0, *, maximize=False,
                 **options):
        super().__init__(params, dict(lr=lr, learning_rate_power=learning_rate_power,
                                      initial_accumulator_value=initial_accumulator_value,
                                      l1_regularization_strength=l1_regularization_strength,
                                      l2_regularization_strength=l2_regularization_strength,
                                      l2_shrinkage_regularization_strength=l2_shrinkage_regularization_strength,
                                      beta=beta, weight_decay=weight_decay, maximize=maximize), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        if not callable(g["lr"]):
            check_real(g["lr"], f"{where}: lr", lo=0.0, lo_open=True)
        check_real(g["learning_rate_power"], f"{where}: learning_rate_power", hi=0.0)
        for k in ("l1_regularization_strength", "l2_regularization_strength",
                  "l2_shrinkage_regularization_strength", "beta"):
            check_real(g[k], f"{where}: {k}", lo=0.0)

    def scheduled_lr(self, g, gi):
        lr = super().scheduled_lr(g, gi)
        if not lr > 0:
            raise ValueError(f"param group {gi}: lr (from schedule at iteration {self.iterations}) must be > 0 for "
                             f"Ftrl (it divides by lr), got {lr!r}")
        return lr

    def kernel_flags(self, g):
        return {"half_power": g["learning_rate_power"] == -0.5}

    def init_buffer(self, name, p, g):
        be = backend_for([p])
        return be.full_like(p, g["initial_accumulator_value"]) if name == "accumulator" else be.zeros_like(p)

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # Keras's decay is decoupled: `decay`

    def kernel_scalars(self, g, scal, fresh):
        scal["step"] += 1
        lr = g["lr"]
        return {"decay": 1.0 - lr * g["weight_decay"], "shrink2": 2.0 * g["l2_shrinkage_regularization_strength"],
                "neg_power": -g["learning_rate_power"], "lr": lr,
                "two_l2": 2.0 * (g["l2_regularization_strength"] + g["beta"] / (2.0 * lr)),
                "l1_strength": float(g["l1_regularization_strength"])}
