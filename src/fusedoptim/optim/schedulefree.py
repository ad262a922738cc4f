"""Schedule-free AdamW and SGD (the ``schedulefree`` package), with its train/eval switch."""
import math

from .._spec import AlgoSpec
from ..optimizer import Optimizer
from ..validate import check_bool, check_int, check_real


class _ScheduleFree(Optimizer):
    """What both schedule-free optimizers share: the averaging weights c_{t+1} (with
    warmup, ``r`` and ``weight_lr_power``), the ``z`` buffer and :meth:`train` / :meth:`eval`."""

    scalar_state = ("step", "weight_sum", "lr_max")
    weights_from_state = True      # y interpolates toward the z buffer

    def _momentum(self, g) -> float:
        raise NotImplementedError

    def check_group(self, g, where):
        super().check_group(g, where)
        check_int(g["warmup_steps"], f"{where}: warmup_steps", lo=0)
        check_real(g["r"], f"{where}: r")
        check_real(g["weight_lr_power"], f"{where}: weight_lr_power", lo=0.0)
        check_bool(g["train_mode"], f"{where}: train_mode")
        check_bool(g.setdefault("optax_warmup", False), f"{where}: optax_warmup")

    def init_scalars(self, g):
        return {"step": 0, "weight_sum": 0.0, "lr_max": -1.0}

    def init_buffer(self, name, p, g):
        if name == "z":
            return p.copy()
        return super().init_buffer(name, p, g)

    def _advance(self, g, scal):
        """Advance the scalar state one step; return (the lr of the z step, c_{t+1})."""
        k = scal["step"]
        scal["step"] = k + 1
        warm = g["warmup_steps"]
        lr = g["lr"] * ((k + 1) / warm if k < warm else 1.0)
        lr_max = scal["lr_max"] = max(lr, scal["lr_max"])
        weight = ((k + 1) ** g["r"]) * (lr_max ** g["weight_lr_power"])
        weight_sum = scal["weight_sum"] = scal["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        if g.get("optax_warmup", False):     # optax: the z step's schedule is one count behind
            lr = g["lr"] * (k / warm if k < warm else 1.0)
        return lr, ckp1

    def step(self, grads, closure=None, **kw):
        """As :meth:`fusedoptim.Optimizer.step`; raises RuntimeError (nothing changed) when a
        param group is in eval mode: call :meth:`train` first."""
        with self.lock:
            for gi, g in enumerate(self.param_groups):
                if not g["train_mode"]:
                    raise RuntimeError(f"{type(self).__name__}: param group {gi} is in eval mode (the params hold "
                                       "x, not y); call opt.train() before step()")
            return super().step(grads, closure, **kw)

    def _switch(self, to_train: bool) -> None:
        with self.lock:
            for g in self.param_groups:
                if g["train_mode"] == to_train:
                    continue
                mom = self._momentum(g)
                w = 1.0 - mom if to_train else 1.0 - 1.0 / mom
                for p in g["params"]:
                    st = self.state.get(p)
                    if st is not None and "z" in st:
                        _lerp_(p, st["z"], w)
                g["train_mode"] = to_train

    def train(self) -> None:
        r"""Put every param group in train mode: the params hold :math:`y = (1 - \beta)z
        + \beta x` (``p.lerp_(z, 1 - beta)``).  A no-op for a group already there."""
        self._switch(True)

    def eval(self) -> None:
        r"""Put every param group in eval mode: the params hold the average :math:`x`
        (``p.lerp_(z, 1 - 1/beta)``), the weights to evaluate and to save for inference."""
        self._switch(False)


def _lerp_(a, b, w: float) -> None:
    """a <- torch.lerp(a, b, w) in place, in a's dtype (NumPy or CuPy)."""
    t = a.dtype.type
    if abs(w) < 0.5:
        a += t(w) * (b - a)
    else:
        a[...] = b - (b - a) * t(1.0 - w)


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-free AdamW (schedulefree.AdamWScheduleFree), no learning-rate schedule
    needed beyond the warmup.

    Symbols: :math:`\gamma` = ``lr`` (times :math:`\min(1, t / \text{warmup\_steps})`),
    :math:`\beta_1, \beta_2` = ``betas``, :math:`\epsilon` = ``eps``, :math:`\lambda` =
    ``weight_decay``; in train mode the parameters hold :math:`y`, the state ``z`` holds
    :math:`z` (:math:`z_0 = \theta_0`).

    .. math::

        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        u_t &\leftarrow g_t / (\sqrt{v_t / (1 - \beta_2^t)} + \epsilon) + \lambda y_{t-1} \\
        \gamma_{\max} &\leftarrow \max(\gamma_{\max}, \gamma_t), \quad
            w_t \leftarrow t^r \gamma_{\max}^{\text{weight\_lr\_power}}, \quad
            c_{t+1} \leftarrow w_t / \textstyle\sum_{i \le t} w_i \\
        y_t &\leftarrow y_{t-1} + c_{t+1}(z_{t-1} - y_{t-1}) + \gamma_t(\beta_1(1 - c_{t+1}) - 1) u_t \\
        z_t &\leftarrow z_{t-1} - \gamma_t u_t

    ``optax_warmup=True`` (optax.contrib.schedule_free's warmup): the z step (the
    :math:`\gamma_t` in :math:`y_t` and :math:`z_t`) uses the warmup value of the step
    before, :math:`\gamma \min(1, (t - 1) / \text{warmup\_steps})` (so the first step
    leaves z unchanged), while :math:`\gamma_{\max}` and :math:`c_{t+1}` use
    :math:`\gamma \min(1, t / \text{warmup\_steps})`, as here by default (and in the
    schedulefree package, which uses that one value for both).

    The evaluation point is :math:`x = (y - (1 - \beta_1) z) / \beta_1`: :meth:`eval` puts
    it in the parameters, :meth:`train` puts :math:`y` back (the package's
    ``p.lerp_(z, 1 - 1/beta1)`` and ``p.lerp_(z, 1 - beta1)``).  The optimizer starts in
    train mode (the package starts in eval mode and needs ``train()`` before the first
    step, which changes nothing then); ``step`` in eval mode raises.  ``betas[0]`` must be
    > 0.  ``maximize`` is a fusedoptim addition.

    State: ``step``, ``weight_sum``, ``lr_max`` (group entries ``k``, ``weight_sum``,
    ``lr_max`` in the package, per parameter here), ``z``, ``exp_avg_sq``.

    References: Defazio et al., "The Road Less Scheduled", NeurIPS 2024
    (arXiv:2405.15682); schedulefree 1.4.1 ``adamw_schedulefree.py``.

    Example::

        >>> import numpy as np, fusedoptim
        >>> w = np.zeros(2, np.float32)
        >>> opt = fusedoptim.ScheduleFreeAdamW([w], lr=0.1)
        >>> opt.step([np.array([1.0, -1.0], np.float32)])
        >>> opt.eval()        # w now holds x, the weights to evaluate
        >>> opt.train()       # back to y before the next step
    """

    spec = AlgoSpec("sf_adamw", scalars=("beta2", "one_minus_beta2", "bc2", "eps", "wd", "ckp1", "c_y", "neg_lr"),
                    buffers=("z", "exp_avg_sq"))

    def __init__(self, params=None, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0,
                 r=0.0, weight_lr_power=2.0, *, maximize=False, optax_warmup=False, **options):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                                      train_mode=True, maximize=maximize, optax_warmup=optax_warmup), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        if not float(g["betas"][0]) > 0.0:
            raise ValueError(f"{where}: Invalid beta parameter at index 0: {g['betas'][0]!r} (must be in (0, 1): "
                             "eval() divides by it)")

    def _momentum(self, g):
        return g["betas"][0]

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # applied to the normalized gradient: `wd`

    def kernel_scalars(self, g, scal, fresh):
        k = scal["step"]
        lr, ckp1 = self._advance(g, scal)
        b1, b2 = g["betas"]
        return {"beta2": b2, "one_minus_beta2": 1.0 - b2, "bc2": 1.0 - b2 ** (k + 1), "eps": g["eps"],
                "wd": g["weight_decay"], "ckp1": ckp1, "c_y": lr * (b1 * (1.0 - ckp1) - 1.0), "neg_lr": -lr}


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-free SGD (schedulefree.SGDScheduleFree).

    Symbols as :class:`ScheduleFreeAdamW`, with :math:`\beta` = ``momentum`` and the
    gradient :math:`u_t = g_t + \lambda y_{t-1}` (coupled weight decay):

    .. math::

        y_t &\leftarrow y_{t-1} + c_{t+1}(z_{t-1} - y_{t-1}) + \gamma_t(\beta(1 - c_{t+1}) - 1) u_t \\
        z_t &\leftarrow z_{t-1} - \gamma_t u_t

    with :math:`c_{t+1}` (and ``optax_warmup``) as in :class:`ScheduleFreeAdamW`; ``momentum`` in (0, 1);
    :meth:`eval` / :meth:`train` switch between :math:`x` and :math:`y` with :math:`\beta`.

    State: ``step``, ``weight_sum``, ``lr_max``, ``z``.

    References: Defazio et al., "The Road Less Scheduled", NeurIPS 2024;
    schedulefree 1.4.1 ``sgd_schedulefree.py``.
    """

    spec = AlgoSpec("sf_sgd", scalars=("ckp1", "c_y", "neg_lr"), buffers=("z",))

    def __init__(self, params=None, lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, *, maximize=False, optax_warmup=False, **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                      r=r, weight_lr_power=weight_lr_power, train_mode=True, maximize=maximize,
                                      optax_warmup=optax_warmup), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_real(g["momentum"], f"{where}: momentum", lo=0.0, lo_open=True, hi=1.0, hi_open=True)

    def _momentum(self, g):
        return g["momentum"]

    def kernel_scalars(self, g, scal, fresh):
        lr, ckp1 = self._advance(g, scal)
        return {"ckp1": ckp1, "c_y": lr * (g["momentum"] * (1.0 - ckp1) - 1.0), "neg_lr": -lr}
