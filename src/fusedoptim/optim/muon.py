import math

import numpy as np

from .. import _kernels
from ..lowp import dequantize
from ..optimizer import Optimizer
from ..validate import check_bool, check_cpu_float_param, check_int, check_real, is_real

__all__ = ["Muon", "newton_schulz", "DEFAULT_NS_COEFFICIENTS"]

#: torch 2.13's defaults (Keller Jordan's quintic coefficients)
DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_ADJUST = (None, "original", "match_rms_adamw", "width_transfer")


def newton_schulz(x: np.ndarray, coefficients=DEFAULT_NS_COEFFICIENTS, steps: int = 5, eps: float = 1e-7,
                  *, work=None) -> np.ndarray:
    r"""Orthogonalise the 2-D C-contiguous array ``x`` in place (torch 2.13's
    ``_zeropower_via_newtonschulz``) and return it; every product is ``np.matmul`` (NumPy's
    BLAS) in ``x``'s dtype.

    With :math:`X \leftarrow X / \max(\lVert X\rVert_F, \varepsilon)` and, ``steps`` times,

    .. math::

        A &\leftarrow X X^\top \\
        B &\leftarrow b A + c A A \\
        X &\leftarrow a X + B X

    on the wide orientation (a tall ``x`` is processed as :math:`X^\top`, without a copy:
    :math:`A = X^\top X` and :math:`X \leftarrow a X + X B^\top`).  ``work``: optional
    ``(gram, square, product)`` scratch arrays of shapes ``(m, m)``, ``(m, m)`` and
    ``x.shape`` (m = min of the two dimensions).
    """
    a, b, c = coefficients
    rows, cols = x.shape
    tall = rows > cols
    m = cols if tall else rows
    flat = x.reshape(-1)
    norm = np.sqrt(np.dot(flat, flat))
    np.divide(x, max(norm, x.dtype.type(eps)), out=x)
    if steps == 0 or x.size == 0:
        return x
    if work is None:
        work = (np.empty((m, m), x.dtype), np.empty((m, m), x.dtype), np.empty_like(x))
    gram, square, prod = work
    for _ in range(steps):
        if tall:
            np.matmul(x.T, x, out=gram)
        else:
            np.matmul(x, x.T, out=gram)
        np.matmul(gram, gram, out=square)
        square *= c
        gram *= b
        gram += square                      # B = b A + c A A
        if tall:
            np.matmul(x, gram.T, out=prod)   # (B X^T)^T
        else:
            np.matmul(gram, x, out=prod)
        x *= a
        x += prod
    return x


def adjusted_lr(lr: float, adjust_lr_fn, shape, consistent_rms=None) -> float:
    """torch 2.13's ``_adjust_lr``: ``lr * sqrt(max(1, A / B))`` ("original", the default)
    or ``lr * 0.2 * sqrt(max(A, B))`` ("match_rms_adamw") for a parameter of shape (A, B);
    optax.contrib.muon's ``scale_by_shape``: ``lr * sqrt(max(1, B / A))`` ("width_transfer":
    A = fan_in, B = fan_out, JAX's ``x @ W`` layout), or ``lr * consistent_rms * sqrt(max(A,
    B))`` when ``consistent_rms`` is given (whatever ``adjust_lr_fn`` says)."""
    rows, cols = shape[:2]
    if consistent_rms is not None:
        return lr * float(consistent_rms) * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "width_transfer":
        return lr * math.sqrt(max(1, cols / rows)) if rows else lr
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols)) if cols else lr
    return lr * 0.2 * math.sqrt(max(rows, cols))


class Muon(Optimizer):
    r"""Muon: momentum, then Newton-Schulz orthogonalisation of the update, for 2-D
    parameters (torch.optim.Muon of torch 2.13: its options, defaults and update).

    Symbols: :math:`\gamma` = ``lr``, :math:`\lambda` = ``weight_decay``, :math:`\mu` =
    ``momentum``, :math:`(a, b, c)` = ``ns_coefficients``, :math:`k` = ``ns_steps``,
    :math:`\varepsilon` = ``eps``; :math:`B` is ``momentum_buffer``, :math:`A \times C` the
    parameter's shape.

    .. math::

        B_t &\leftarrow \mathrm{lerp}(B_{t-1}, g_t, 1 - \mu) = \mu B_{t-1} + (1 - \mu) g_t \\
        \tilde B_t &\leftarrow \mathrm{lerp}(g_t, B_t, \mu) \text{ if nesterov, else } B_t \\
        O_t &\leftarrow \mathrm{NS}^{(a,b,c)}_k(\tilde B_t; \varepsilon)
            \quad\text{(}\texttt{newton\_schulz}\text{)} \\
        \theta_t &\leftarrow \theta_{t-1}(1 - \gamma\lambda) - \gamma\,r\,O_t,
            \quad r = \sqrt{\max(1, A/C)} \text{ ("original") or } 0.2\sqrt{\max(A, C)}
            \text{ ("match\_rms\_adamw")}

    (torch's code uses the lerp form of the momentum shown here; its docstring writes
    :math:`\mu B + g`.)

    optax.contrib.muon's options: ``bias_correction=True`` orthogonalises the
    bias-corrected momentum,

    .. math::

        \tilde B_t \leftarrow \frac{\mu B_t}{1 - \mu^{t+1}} + \frac{(1 - \mu) g_t}{1 - \mu^t}
            \text{ if nesterov, else } \frac{B_t}{1 - \mu^t}

    (computed as :math:`\mathrm{lerp}(g_t, B_t, w_t)` times a positive factor, which the
    normalisation of Newton-Schulz removes); ``adjust_lr_fn="width_transfer"`` is optax's
    shape scale :math:`r = \sqrt{\max(1, C/A)}` (optax's parameters are ``(fan_in,
    fan_out)``), ``consistent_rms=ρ`` its :math:`r = \rho\sqrt{\max(A, C)}` (torch's
    "match_rms_adamw" is ρ = 0.2).  optax normalises by :math:`\lVert X\rVert_F + \varepsilon`
    where torch and fusedoptim take :math:`\max(\lVert X\rVert_F, \varepsilon)`: the same
    in float32 unless the momentum's norm is within a few orders of :math:`\varepsilon`.

    The two element-wise stages are one native call each over all
    parameters of a group (the momentum stage also applies the options' gradient
    transforms: clipping, ``grad_scale``, ``l1``; the last stage the EMA); Newton-Schulz
    runs per parameter through ``np.matmul`` **in the parameter's dtype** (torch casts to
    bfloat16 on every device, so float32 results differ from torch's at bfloat16
    precision; ``tests/test_muon.py`` compares with torch's code minus that cast).

    ``state_dtype="bfloat16"`` or ``"int8"`` stores ``momentum_buffer`` in low precision
    (the signed 8-bit code map; ``min_8bit_size``, ``block_size``, ``rounding`` and
    ``seed`` as for every optimizer, :mod:`fusedoptim.lowp`): the momentum stage decodes the
    buffers to float32, runs the same native loop and writes them back with the rounding
    bits the fused loops use (``_kernels.store_state``), one pass per buffer more than the
    fused loops (the Newton-Schulz matmuls, :math:`O(\min(A, C))` flops per element, cost
    far more).

    Only 2-D NumPy parameters are accepted (as torch: a clear ``ValueError`` at
    construction otherwise); optimize biases, norms and embeddings with another optimizer,
    e.g. ``AdamW``.  Weight decay is decoupled (torch's).  State: ``momentum_buffer``,
    ``step``.

    References: K. Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks" (2024), https://kellerjordan.github.io/posts/muon/ ; J. Liu et al., "Muon is
    Scalable for LLM Training" (2025), arXiv:2502.16982.
    """

    buffers = ("momentum_buffer",)
    q8_signed = ("momentum_buffer",)   # the 8-bit code map of each buffer (fusedoptim.lowp.signed_buffers)
    lowp_state = True                  # low-precision state_dtype: handled in update_group
    matrix_only = True             # fusedoptim.optim.registry: 2-D parameters only

    def __init__(self, params=None, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=DEFAULT_NS_COEFFICIENTS, eps=1e-7, ns_steps=5, adjust_lr_fn=None, *,
                 bias_correction=False, consistent_rms=None, **options):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn, bias_correction=bias_correction,
                                      consistent_rms=consistent_rms), **options)

    def check_group(self, g, where):
        super().check_group(g, where)
        check_bool(g["nesterov"], f"{where}: nesterov")
        # torch checks momentum >= 0 only; above 1 the lerp extrapolates and the buffer grows
        # without bound, so it is refused here (1.0 keeps the buffer at zero, as torch)
        check_real(g["momentum"], f"{where}: momentum", lo=0.0, hi=1.0, name="momentum")
        co = g["ns_coefficients"]
        if not isinstance(co, (tuple, list)) or len(co) != 3:
            raise ValueError(f"{where}: ns_coefficients must be three numbers (a, b, c), got {co!r}")
        for i, v in enumerate(co):
            if not is_real(v):
                raise TypeError(f"{where}: ns_coefficients[{i}] must be a real number, got {v!r}")
            check_real(v, f"{where}: ns_coefficients[{i}]")
        n = check_int(g["ns_steps"], f"{where}: ns_steps", lo=0)
        if n >= 100:
            raise ValueError(f"{where}: ns_steps must be < 100 (torch's limit), got {n}")
        if g["adjust_lr_fn"] not in _ADJUST:
            raise ValueError(f"{where}: adjust_lr_fn must be None, 'original', 'match_rms_adamw' or "
                             f"'width_transfer', got {g['adjust_lr_fn']!r}")
        check_bool(g.setdefault("bias_correction", False), f"{where}: bias_correction")
        if g.setdefault("consistent_rms", None) is not None:
            check_real(g["consistent_rms"], f"{where}: consistent_rms", lo=0.0, lo_open=True)
        for j, p in enumerate(g.get("params", ())):
            check_cpu_float_param(p, j, where, "Muon", "its Newton-Schulz step is np.matmul",
                                  " (Newton-Schulz in their dtype)")
            if p.ndim != 2:
                raise ValueError(f"{where}: Muon only supports 2-D parameters, params[{j}] has shape "
                                 f"{p.shape}; optimize biases, norms and embeddings with another optimizer "
                                 "(e.g. fusedoptim.AdamW in a second optimizer)")

    def common_scalars(self, g):
        return dict(super().common_scalars(g), weight_decay=0.0)   # decoupled: the decay factor below

    def _momentum_f32(self, p, st):
        """The momentum buffer of ``p`` as float32 values: the buffer itself when stored in
        the parameter's dtype, else a decoded copy (bfloat16 or 8-bit state)."""
        b = st["momentum_buffer"]
        if b.dtype == p.dtype:
            return b
        if b.dtype == np.uint8:
            return dequantize(b, st["momentum_buffer_absmax"], True, self.registry.block_size)
        return b.astype(np.float32)

    def update_group(self, g, common, scal, params, grads, states, tscale, emas):
        """Momentum (one native call), Newton-Schulz per parameter (np.matmul), decay and
        step (one native call)."""
        bufs = [self._momentum_f32(p, st) for p, st in zip(params, states)]
        outs = [np.empty_like(p) for p in params]
        mu, nesterov, w = float(g["momentum"]), bool(g["nesterov"]), None
        if nesterov and g.get("bias_correction", False) and mu < 1.0:
            # optax: mu B / (1 - mu^(t+1)) + (1 - mu) g / (1 - mu^t) = (a + b) lerp(g, B, a / (a + b));
            # Newton-Schulz's normalisation drops the factor a + b (so does B / (1 - mu^t))
            t = scal["step"]
            a, b = mu / (1.0 - mu ** (t + 1)), (1.0 - mu) / (1.0 - mu ** t)
            w = a / (a + b)
        _kernels.muon_momentum(common, mu, nesterov, params, grads, bufs, outs, tscale, w)
        if self.registry.state_dtype != "float32":
            o = self.options
            for p, st, b in zip(params, states, bufs):
                if b is st["momentum_buffer"]:
                    continue                    # float32 state (a parameter below min_8bit_size)
                key = (o["seed"], scal["step"], self.registry.index(p), o["rounding"] == "stochastic")
                _kernels.store_state(b, st["momentum_buffer"], st.get("momentum_buffer_absmax"), True,
                                     o["block_size"], key, 0)
        co, steps, eps = tuple(float(v) for v in g["ns_coefficients"]), int(g["ns_steps"]), float(g["eps"])
        for o in outs:
            newton_schulz(o, co, steps, eps)
        lr = float(g["lr"])
        neg = [-adjusted_lr(lr, g["adjust_lr_fn"], p.shape, g.get("consistent_rms")) for p in params]
        _kernels.muon_apply(common["ema_weight"], 1.0 - lr * float(g["weight_decay"]), params, outs, emas, neg)
