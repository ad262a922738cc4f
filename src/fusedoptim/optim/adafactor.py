import math

import numpy as np

from .. import _kernels
from ..optimizer import Optimizer
from ..validate import check_bool, check_cpu_float_param, check_int, check_real

__all__ = ["Adafactor"]


class Adafactor(Optimizer):
    r"""Adafactor: factored second moments (torch.optim.Adafactor of torch 2.13: its names,
    defaults and update).

    Symbols: :math:`\gamma` = ``lr``, :math:`\tau` = ``beta2_decay``,
    :math:`(\epsilon_1, \epsilon_2)` = ``eps`` (:math:`\epsilon_1` None: the machine
    epsilon of the parameter's dtype, as torch), :math:`d` = ``d``, :math:`\lambda` =
    ``weight_decay``.  A tensor of 2 or more dims is factored over its last two dims (each
    leading index its own :math:`n \times m` matrix): :math:`R` = ``row_var`` (shape
    ``(..., n, 1)``) and :math:`C` = ``col_var`` (``(..., 1, m)``), means over a row / a
    column; any other tensor keeps a full :math:`V` = ``variance``.
    :math:`\mathrm{RMS}(x) = \lVert x\rVert_2 / \sqrt{\mathrm{numel}(x)}` per tensor.

    .. math::

        G_t &\leftarrow -g_t \text{ if maximize, else } g_t \\
        \hat\beta_{2,t} &\leftarrow 1 - t^{\tau} \\
        \rho_t &\leftarrow \min(\gamma, 1/\sqrt{t}) \\
        \alpha_t &\leftarrow \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
        \theta' &\leftarrow \theta_{t-1}(1 - \gamma\lambda) \\
        R_t &\leftarrow \mathrm{lerp}(R_{t-1}, \mathrm{mean}_{\text{row}}(G_t^2), t^{\tau}),\quad
        C_t \leftarrow \mathrm{lerp}(C_{t-1}, \mathrm{mean}_{\text{col}}(G_t^2), t^{\tau}) \\
        \hat V_t &\leftarrow R_t C_t / \max(\mathrm{mean}(R_t), \epsilon_1)
            \quad\text{(a vector: } \hat V_t \leftarrow \mathrm{lerp}(\hat V_{t-1}, G_t^2, t^{\tau})\text{)} \\
        U_t &\leftarrow G_t / \sqrt{\max(\hat V_t, \epsilon_1^2)} \\
        \theta_t &\leftarrow \theta' - \alpha_t\, U_t / \max(1, \mathrm{RMS}(U_t)/d)

    ``keras_form=True`` (what ``fusedoptim.keras.Adafactor`` uses) switches to Keras 3's
    formulas: :math:`\epsilon_1` is added to :math:`G_t^2` inside the statistics and
    there is no floor (:math:`\hat V = R C / \mathrm{mean}(R)`, :math:`U = G / \sqrt{\hat V}`),
    and :math:`\mathrm{RMS}(\theta)` is taken after the decay (:math:`\theta'`).

    optax's options (``optax.adafactor``; every one defaults to torch's formula):

    - ``eps_in_stats=True``: :math:`\epsilon_1` inside the statistics with no floors, as
      ``keras_form``, but :math:`\mathrm{RMS}(\theta_{t-1})` before the decay (optax's
      ``eps``);
    - ``min_dim_size_to_factor=k``: a tensor is factored only when its second largest
      dimension is :math:`\ge k` (optax: 128); any other keeps a full :math:`V`
      (``variance``).  The factored dims are always the last two (optax factors the two
      largest: the same for 2-D tensors and for any whose two largest dims are the last two);
    - ``cap_lr=False``: :math:`\rho_t \leftarrow \gamma` (optax with a ``learning_rate``;
      optax's ``learning_rate=None`` is ``lr=1.0, cap_lr=False``);
    - ``multiply_by_parameter_scale=False``: :math:`\alpha_t \leftarrow \rho_t`
      (:math:`\epsilon_2` unused);
    - ``d=None``: no update clipping (optax's ``clipping_threshold=None``); any ``d > 0``
      is accepted with ``eps_in_stats`` or ``keras_form`` (torch requires ``d >= 1``);
    - ``momentum=β₁`` (default None): a momentum of the scaled update (state
      ``exp_avg``, optax's ``ema(β₁, debias=False)``),

      .. math::

          m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1)\,\alpha_t U_t / \max(1, \mathrm{RMS}(U_t)/d),
          \quad \theta_t \leftarrow \theta' - m_t.

    optax's ``weight_decay_rate`` :math:`r` decays by :math:`1 - r`, not :math:`1 - \gamma r`:
    it is ``weight_decay=r / lr`` here (exact for a constant ``lr``).

    One native call per step for all tensors of a group (per dtype): a statistics pass
    (row/column means of :math:`G^2` and :math:`\lVert\theta\rVert^2`, or the full
    :math:`V`), a pass for :math:`\lVert U\rVert^2` (factored tensors) and the update pass
    (decay, step, EMA); :math:`\hat V` and :math:`U` are never stored.  Fixed work units
    (a function of the shapes only) and sums in unit order: the same bits for any number
    of threads.  The toolkit's gradient transforms (clipping, ``grad_scale``,
    accumulation, non-finite skip) apply to :math:`g_t` before the update.  NumPy float32
    and float64 parameters only; ``foreach`` is accepted for torch compatibility and
    ignored.  State: ``step``, ``row_var`` and ``col_var`` or ``variance``; ``exp_avg``
    with ``momentum``.

    ``state_dtype`` other than ``"float32"`` is refused at construction: the factored
    statistics of an :math:`n \times m` matrix are :math:`n + m` values, and the only
    element-wise buffer, ``variance``, belongs to tensors of fewer than 2 dims (biases,
    norms: below ``min_8bit_size`` in practice); torch's Adafactor keeps no first moment.
    Storing these in bfloat16 or 8 bits would save well under 1% of a model's state
    (bitsandbytes and torchao ship no low-precision Adafactor either).

    References: N. Shazeer and M. Stern, "Adafactor: Adaptive Learning Rates with
    Sublinear Memory Cost", ICML 2018 (arXiv:1804.04235); torch 2.13
    ``torch.optim.Adafactor``.

    Example::

        >>> import numpy as np, fusedoptim as fo
        >>> w, b = np.ones((4, 3), np.float32), np.zeros(3, np.float32)
        >>> opt = fo.Adafactor([w, b], lr=1e-2)
        >>> opt.step([np.full_like(w, 0.5), np.full_like(b, 0.1)])
        >>> opt.state[w]["row_var"].shape, opt.state[b]["variance"].shape
        ((4, 1), (3,))
    """

    buffers = ("row_var", "col_var", "variance", "exp_avg")
    # state_dtype="bfloat16"/"int8" is refused (optimizer.py prints this reason)
    lowp_refusal = ("its state is already sublinear (row and column statistics of each matrix, plus a full "
                    "variance only for tensors of fewer than 2 dims, the size of a bias) and it keeps no first "
                    "moment unless optax's momentum option is on, so no large element-wise buffer is left to "
                    "store in low precision")

    def __init__(self, params=None, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 foreach=None, maximize=False, keras_form=False, eps_in_stats=False, min_dim_size_to_factor=None,
                 cap_lr=True, multiply_by_parameter_scale=True, momentum=None, **options):
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize, keras_form=keras_form,
                                      eps_in_stats=eps_in_stats, min_dim_size_to_factor=min_dim_size_to_factor,
                                      cap_lr=cap_lr, multiply_by_parameter_scale=multiply_by_parameter_scale,
                                      momentum=momentum), **options)

    def check_group(self, g, where):
        super().check_group({k: v for k, v in g.items() if k != "eps" and not (k == "momentum" and v is None)},
                            where)
        check_real(g["beta2_decay"], f"{where}: beta2_decay", hi=0.0)
        eps = g["eps"]
        if isinstance(eps, list):
            eps = g["eps"] = tuple(eps)
        if not isinstance(eps, tuple) or len(eps) != 2:
            raise ValueError(f"{where}: eps must be a pair (eps1, eps2), eps1 may be None; got {eps!r}")
        if eps[0] is not None:
            check_real(eps[0], f"{where}: eps[0] (epsilon1)", lo=0.0)
        check_real(eps[1], f"{where}: eps[1] (epsilon2)", lo=0.0)
        check_bool(g["keras_form"], f"{where}: keras_form")
        for k in ("eps_in_stats", "cap_lr", "multiply_by_parameter_scale"):
            check_bool(g.setdefault(k, k != "eps_in_stats"), f"{where}: {k}")
        if g.setdefault("min_dim_size_to_factor", None) is not None:
            check_int(g["min_dim_size_to_factor"], f"{where}: min_dim_size_to_factor", lo=0)
        if g.setdefault("momentum", None) is not None:
            check_real(g["momentum"], f"{where}: momentum", lo=0.0, hi=1.0)
        if g["d"] is None:       # optax's clipping_threshold=None: no update clipping
            pass
        elif g["keras_form"] or g["eps_in_stats"]:      # Keras's / optax's threshold: any positive number
            check_real(g["d"], f"{where}: d (clipping threshold)", lo=0.0, lo_open=True)
        else:
            check_real(g["d"], f"{where}: d (clipping threshold)", lo=1.0)
        if g["foreach"] is not None:
            check_bool(g["foreach"], f"{where}: foreach")
        for j, p in enumerate(g.get("params", ())):
            check_cpu_float_param(p, j, where, "Adafactor", "its factored statistics are a CPU kernel")

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # decoupled: the decay factor below

    def state_names(self, g):
        return ()     # row_var/col_var or variance, by the parameter's dims: made in update_group

    @staticmethod
    def state_shapes(shape, min_dim_size_to_factor=None):
        """``{name: shape}`` of the statistics of a parameter of ``shape``: factored when it
        has >= 2 dims (and, with ``min_dim_size_to_factor``, when its second largest dim is
        at least that)."""
        shape = tuple(shape)
        k = min_dim_size_to_factor
        if len(shape) >= 2 and (k is None or sorted(shape)[-2] >= k):
            return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1, shape[-1])}
        return {"variance": shape}

    def update_group(self, g, common, scal, params, grads, states, tscale, emas):
        """One native call (``_kernels.adafactor_step``) per dtype of the bucket."""
        t = scal["step"]
        lr, wd, keras = float(g["lr"]), float(g["weight_decay"]), bool(g["keras_form"])
        eps1, eps2 = g["eps"]
        decay = 1.0 - lr * wd
        mom = g.get("momentum")
        by_dtype = {}
        for j, (p, st) in enumerate(zip(params, states)):
            shapes = self.state_shapes(p.shape, g.get("min_dim_size_to_factor"))
            if mom is not None:
                shapes["exp_avg"] = p.shape
            for name, shape in shapes.items():
                if name not in st:
                    dict.__setitem__(st, name, np.zeros(shape, p.dtype))
            by_dtype.setdefault(p.dtype, []).append(j)
        rho = min(lr, 1.0 / math.sqrt(t)) if g.get("cap_lr", True) else lr
        scaled = g.get("multiply_by_parameter_scale", True)
        for dt, idx in by_dtype.items():
            e1 = float(np.finfo(dt).eps) if eps1 is None else float(eps1)
            sc = {"w": float(t) ** float(g["beta2_decay"]), "decay": decay, "rho": rho, "eps2": float(eps2),
                  "inv_d": 0.0 if g["d"] is None else 1.0 / float(g["d"]),
                  "beta1": 0.0 if mom is None else float(mom), "one_minus_beta1": 1.0 - (mom or 0.0)}
            if keras:
                sc.update(eps_add=e1, clamp_r=0.0, clamp_v=0.0, rms_scale=abs(decay))
            elif g.get("eps_in_stats", False):
                sc.update(eps_add=e1, clamp_r=0.0, clamp_v=0.0, rms_scale=1.0)
            else:
                sc.update(eps_add=0.0, clamp_r=e1, clamp_v=e1 * e1, rms_scale=1.0)
            if not scaled:
                sc["rms_scale"] = 0.0
            sel = idx if len(idx) < len(params) else None
            pick = (lambda xs: xs) if sel is None else (lambda xs: [xs[j] for j in sel])   # noqa: E731
            ps, sts = pick(params), pick(states)
            _kernels.adafactor_step(common, sc, ps, pick(grads), [st.get("row_var") for st in sts],
                                    [st.get("col_var") for st in sts], [st.get("variance") for st in sts],
                                    None if emas is None else pick(emas),
                                    None if tscale is None else [tscale[j] for j in (sel or range(len(params)))],
                                    None if mom is None else [st.get("exp_avg") for st in sts])
