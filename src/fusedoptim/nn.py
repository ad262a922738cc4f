"""A small NumPy neural-network module with manual backprop, built to feed fusedoptim.

It is meant to be read and copied as the starting point of your own training loop::

    import numpy as np
    import fusedoptim as fo
    from fusedoptim import nn

    model = nn.MLP([64, 128, 10], rng=0)            # Dense-ReLU-Dense, float32
    opt = fo.Adam(model.params(), lr=1e-3)
    grads = model.grads()                           # the same arrays on every step
    for xb, yb in batches:                          # xb: (n, 64) float32, yb: (n,) int
        logits = model.forward(xb)
        loss, dlogits = nn.softmax_cross_entropy(logits, yb)
        model.backward(dlogits)                     # fills the gradient buffers
        opt.step(grads)                             # updates the parameters in place

Conventions, chosen so that a training step allocates (almost) nothing:

- Parameters are C-contiguous arrays of the model's dtype (float32 unless you ask for
  float64), created once and updated in place.  Never rebind ``layer.W``: the optimizer
  holds the array.  To load values use ``model.set_params(arrays)`` (it copies).
- ``backward`` *overwrites* the gradient buffers; there is nothing to accumulate and no
  ``zero_grad``.  ``model.grads()`` is aligned with ``model.params()`` and returns the
  same arrays every time, so ``opt.step(model.grads())`` can be written once.
- ``forward`` and ``backward`` return views into per-layer work buffers that grow to the
  largest batch seen: a result stays valid until the next call on that layer (copy it to
  keep it), and ``backward`` must follow the ``forward`` whose result it differentiates.
- Inputs are 2-D, ``(batch, features)``.  Weights are ``(in_features, out_features)``, so
  a layer computes ``x @ W + b``.

Names follow torch: ``model.named_params()`` gives ``("0.weight", W), ("0.bias", b), ...``
and ``model.named_grads()`` the gradient buffers under the same names, so
``fo.Adam(model.named_params())`` and ``opt.step(model.named_grads())`` work by name.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "Layer", "Dense", "ReLU", "Sigmoid", "Tanh", "Sequential", "MLP",
    "softmax_cross_entropy", "mse", "accuracy",
]

RngLike = Union[None, int, np.random.Generator]
InitLike = Union[str, float, Callable[[np.random.Generator, Tuple[int, int]], np.ndarray]]


class Layer:
    """Base class: ``forward(x) -> y``, ``backward(dy) -> dx``, plus parameter lists.

    ``input_grad = False`` tells ``backward`` that nobody needs ``dx`` (the first layer of a
    model), so it skips that matrix product and returns None.
    """

    input_grad = True

    def __init__(self):
        self._bufs = {}

    def params(self) -> List[np.ndarray]:
        return []

    def grads(self) -> List[np.ndarray]:
        return []

    def named_params(self, prefix: str = "") -> List[Tuple[str, np.ndarray]]:
        return []

    def named_grads(self, prefix: str = "") -> Dict[str, np.ndarray]:
        """``{name: gradient buffer}`` with the names of :meth:`named_params`: for an
        optimizer built with names (``fo.Adam(model.named_params())``, or the groups of
        ``fusedoptim.split_decay_groups``), ``opt.step(model.named_grads())`` matches them
        by name, whatever the groups' order."""
        return {n: g for (n, _), g in zip(self.named_params(prefix), self.grads())}

    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> Optional[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def _scratch(self, name: str, n: int, cols: int, dtype) -> np.ndarray:
        """The first ``n`` rows of a reusable ``(capacity, cols)`` buffer (C-contiguous)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != cols or buf.dtype != dtype:
            buf = np.empty((n, cols), dtype=dtype)
            self._bufs[name] = buf
        return buf[:n]


def _check_2d(x: np.ndarray, cols: Optional[int], who: str) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"{who}: expected a 2-D array (batch, features), got "
                         f"{type(x).__name__ if not isinstance(x, np.ndarray) else f'shape {x.shape}'}")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"{who}: expected {cols} features, got shape {x.shape}")


def _init_weight(init: InitLike, rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    shape = (fan_in, fan_out)
    if callable(init):
        w = np.asarray(init(rng, shape))
        if w.shape != shape:
            raise ValueError(f"init callable returned shape {w.shape}, expected {shape}")
        return w
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return rng.normal(0.0, float(init), shape)
    if init == "he":        # Kaiming normal, for ReLU
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if init == "glorot":    # Xavier uniform, for tanh / sigmoid
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, shape)
    if init == "lecun":
        return rng.normal(0.0, math.sqrt(1.0 / fan_in), shape)
    if init == "normal":    # N(0, 1), the tutorials' tf.random.normal
        return rng.standard_normal(shape)
    raise ValueError(f"unknown init {init!r}; use 'he', 'glorot', 'lecun', 'normal', a standard "
                     "deviation, or a callable (rng, shape) -> array")


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b``.

    ``rng`` is a ``numpy.random.Generator`` or a seed; ``init`` is ``"he"`` (default,
    N(0, 2/in)), ``"glorot"`` (uniform, for tanh/sigmoid), ``"lecun"``, ``"normal"`` (N(0, 1)),
    a standard deviation, or ``callable(rng, (in, out)) -> array``.  The bias starts at
    ``bias_init``.  Parameters ``W``, ``b`` and gradients ``dW``, ``db`` are attributes.
    """

    def __init__(self, in_features: int, out_features: int, rng: RngLike = None, init: InitLike = "he",
                 *, bias: bool = True, bias_init: float = 0.0, dtype=np.float32):
        super().__init__()
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"Dense needs positive sizes, got in={in_features}, out={out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        rng = np.random.default_rng(rng)
        self.W = np.ascontiguousarray(_init_weight(init, rng, self.in_features, self.out_features),
                                      dtype=self.dtype)
        self.dW = np.zeros_like(self.W)
        self.b = np.full(self.out_features, bias_init, dtype=self.dtype) if bias else None
        self.db = np.zeros_like(self.b) if bias else None
        self._x = None

    def params(self):
        return [self.W] if self.b is None else [self.W, self.b]

    def grads(self):
        return [self.dW] if self.b is None else [self.dW, self.db]

    def named_params(self, prefix=""):
        out = [(prefix + "weight", self.W)]
        if self.b is not None:
            out.append((prefix + "bias", self.b))
        return out

    def forward(self, x):
        _check_2d(x, self.in_features, "Dense.forward")
        self._x = x
        y = self._scratch("y", x.shape[0], self.out_features, self.dtype)
        np.matmul(x, self.W, out=y)
        if self.b is not None:
            y += self.b
        return y

    def backward(self, dy):
        x = self._x
        if x is None:
            raise RuntimeError("Dense.backward called before forward")
        _check_2d(dy, self.out_features, "Dense.backward")
        if dy.shape[0] != x.shape[0]:
            raise ValueError(f"Dense.backward: dy has {dy.shape[0]} rows, the last forward had {x.shape[0]}")
        np.matmul(x.T, dy, out=self.dW)
        if self.b is not None:
            np.sum(dy, axis=0, out=self.db)
        if not self.input_grad:
            return None
        dx = self._scratch("dx", dy.shape[0], self.in_features, self.dtype)
        np.matmul(dy, self.W.T, out=dx)
        return dx

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}, bias={self.b is not None}, dtype={self.dtype.name})"


class _Activation(Layer):
    """Element-wise activation; keeps its output ``y`` for the backward pass."""

    def forward(self, x):
        _check_2d(x, None, f"{type(self).__name__}.forward")
        y = self._scratch("y", x.shape[0], x.shape[1], x.dtype)
        self._apply(x, y)
        self._y = y
        return y

    def backward(self, dy):
        y = getattr(self, "_y", None)
        if y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if dy.shape != y.shape:
            raise ValueError(f"{type(self).__name__}.backward: dy shape {dy.shape} != output shape {y.shape}")
        dx = self._scratch("dx", y.shape[0], y.shape[1], y.dtype)
        self._grad(y, dy, dx)
        return dx

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(_Activation):
    """``y = max(x, 0)``; ``dx = dy`` where ``y > 0``, else 0."""

    def _apply(self, x, y):
        np.maximum(x, 0, out=y)

    def _grad(self, y, dy, dx):
        np.greater(y, 0, out=dx)      # 1.0 / 0.0 mask, written in place
        dx *= dy


class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``, computed as ``(1 + tanh(x/2)) / 2`` (no overflow); ``dx = dy y (1 - y)``."""

    def _apply(self, x, y):
        np.multiply(x, 0.5, out=y)
        np.tanh(y, out=y)
        y += 1
        y *= 0.5

    def _grad(self, y, dy, dx):
        np.subtract(1, y, out=dx)
        dx *= y
        dx *= dy


class Tanh(_Activation):
    """``y = tanh(x)``; ``dx = dy (1 - y^2)``."""

    def _apply(self, x, y):
        np.tanh(x, out=y)

    def _grad(self, y, dy, dx):
        np.multiply(y, y, out=dx)
        np.subtract(1, dx, out=dx)
        dx *= dy


_ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class Sequential(Layer):
    """Layers applied in order.  The first layer does not compute the input gradient
    unless ``input_grad=True`` (then ``backward`` returns ``d loss / d x``)."""

    def __init__(self, *layers: Layer, input_grad: bool = False):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is a {type(layer).__name__}, not a fusedoptim.nn.Layer")
        self.layers = list(layers)
        self.input_grad = input_grad
        dtypes = {p.dtype for p in self.params()}
        if len(dtypes) > 1:
            raise TypeError(f"layers mix dtypes {sorted(d.name for d in dtypes)}; use one dtype")
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)

    @property
    def input_grad(self) -> bool:
        return self._input_grad

    @input_grad.setter
    def input_grad(self, value: bool) -> None:
        self._input_grad = bool(value)
        if hasattr(self, "layers"):
            self.layers[0].input_grad = self._input_grad

    def params(self):
        return [p for layer in self.layers for p in layer.params()]

    def grads(self):
        return [g for layer in self.layers for g in layer.grads()]

    def named_params(self, prefix=""):
        return [nv for i, layer in enumerate(self.layers) for nv in layer.named_params(f"{prefix}{i}.")]

    def grads_for(self, params) -> List[np.ndarray]:
        """The gradient buffers of ``params`` in that order: a list of this model's
        parameters, or param groups (dicts with ``"params"``, a list or a dict of
        arrays), e.g. ``opt.param_groups`` after regrouping with
        ``fusedoptim.split_decay_groups``.  ``opt.step`` takes a list of gradients in the
        order of its param groups, which may differ from ``params()``."""
        grad_of = {id(p): g for p, g in zip(self.params(), self.grads())}

        def arrays(ps):
            return list(ps.values()) if isinstance(ps, dict) else list(ps)
        flat = ([p for grp in params for p in arrays(grp["params"])] if params and isinstance(params[0], dict)
                else params)
        try:
            return [grad_of[id(p)] for p in flat]
        except KeyError:
            raise ValueError("grads_for: an array is not a parameter of this model") from None

    def num_params(self) -> int:
        return sum(p.size for p in self.params())

    def set_params(self, values: Iterable[np.ndarray]) -> None:
        """Copy ``values`` (aligned with ``params()``) into the parameters, in place."""
        params = self.params()
        values = list(values)
        if len(values) != len(params):
            raise ValueError(f"expected {len(params)} arrays, got {len(values)}")
        for i, (p, v) in enumerate(zip(params, values)):
            if np.shape(v) != p.shape:
                raise ValueError(f"value {i}: shape {np.shape(v)} != parameter shape {p.shape}")
        for p, v in zip(params, values):
            np.copyto(p, v, casting="same_kind")

    def forward(self, x):
        x = np.asarray(x)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Forward pass in chunks (bounded buffers), returning a new array."""
        x = np.asarray(x)
        chunks = [self.forward(x[i:i + batch_size]).copy() for i in range(0, max(len(x), 1), batch_size)]
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def __repr__(self):
        inner = ",\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}(\n{inner}\n)"


class MLP(Sequential):
    """``sizes = [in, hidden..., out]``: Dense layers with ``activation`` between them and
    none after the last (it returns logits).  ``init`` defaults to ``"he"`` for ReLU and
    ``"glorot"`` otherwise; one ``rng`` seeds every layer, so equal seeds give equal models.
    """

    def __init__(self, sizes: Sequence[int], rng: RngLike = None, activation: str = "relu",
                 init: Optional[InitLike] = None, *, bias_init: float = 0.0, dtype=np.float32):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least [in, out] sizes, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)}")
        if init is None:
            init = "he" if activation == "relu" else "glorot"
        rng = np.random.default_rng(rng)
        layers: List[Layer] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            if i:
                layers.append(_ACTIVATIONS[activation]())
            layers.append(Dense(a, b, rng, init, bias_init=bias_init, dtype=dtype))
        super().__init__(*layers)
        self.sizes = sizes


# ---------------------------------------------------------------------------- losses
def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray, *, out: Optional[np.ndarray] = None
                          ) -> Tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` against ``y``; returns ``(loss, dlogits)``.

    ``y`` is either integer class labels of shape ``(n,)`` or target probabilities (e.g.
    one-hot) of the logits' shape.  ``dlogits`` is written into ``out`` when given (a
    buffer of the logits' shape and dtype; ``out=logits`` works in place), else into a new
    array.  The loss is a float, summed in float64.
    """
    _check_2d(logits, None, "softmax_cross_entropy")
    n, k = logits.shape
    if out is None:
        out = np.empty_like(logits)
    elif out.shape != logits.shape:
        raise ValueError(f"softmax_cross_entropy: out shape {out.shape} != logits shape {logits.shape}")
    y = np.asarray(y)
    labels = y.ndim == 1
    if labels:
        if y.shape[0] != n:
            raise ValueError(f"softmax_cross_entropy: {y.shape[0]} labels for {n} rows")
        if y.dtype.kind not in "iu":
            raise TypeError(f"softmax_cross_entropy: labels must be integers, got {y.dtype}")
    elif y.shape != logits.shape:
        raise ValueError(f"softmax_cross_entropy: y must be labels (n,) or targets {logits.shape}, got {y.shape}")
    if n == 0:
        return 0.0, out
    # read what the loss needs from the logits first, so that out=logits works in place
    if labels:
        rows = np.arange(n)
        target_logit = np.sum(logits[rows, y], dtype=np.float64)          # sum_i z_{i, y_i}
    else:
        target_logit = np.sum(y * logits, dtype=np.float64)               # sum_ij y_ij z_ij
        mass = y.sum(axis=1, keepdims=True)                               # sum_j y_ij (1 for one-hot)
    m = logits.max(axis=1, keepdims=True)
    np.subtract(logits, m, out=out)            # shifted logits z - max
    np.exp(out, out=out)
    s = out.sum(axis=1, keepdims=True)
    lse = m + np.log(s)                        # log-sum-exp, (n, 1)
    out /= s                                   # softmax p
    if labels:
        loss = (float(np.sum(lse, dtype=np.float64)) - float(target_logit)) / n
        out[rows, y] -= 1                      # p - onehot(y)
    else:
        # loss -sum_j y_j (z_j - lse); gradient p * sum_j y_j - y
        loss = (float(np.sum(mass * lse, dtype=np.float64)) - float(target_logit)) / n
        out *= mass
        out -= y
    out *= 1.0 / n
    return loss, out


def mse(pred: np.ndarray, target: np.ndarray, *, out: Optional[np.ndarray] = None
        ) -> Tuple[float, np.ndarray]:
    """Mean squared error ``mean((pred - target)**2)`` over all elements; returns
    ``(loss, dpred)``.  ``target`` must have ``pred``'s shape (a ``(n,)`` target for a
    ``(n, 1)`` prediction is accepted: no silent ``(n, n)`` broadcast).
    """
    target = np.asarray(target)
    if target.shape != pred.shape:
        if pred.ndim == 2 and pred.shape[1] == 1 and target.shape == (pred.shape[0],):
            target = target.reshape(-1, 1)
        else:
            raise ValueError(f"mse: target shape {target.shape} != prediction shape {pred.shape}")
    if out is None:
        out = np.empty_like(pred)
    elif out.shape != pred.shape:
        raise ValueError(f"mse: out shape {out.shape} != prediction shape {pred.shape}")
    if pred.size == 0:
        return 0.0, out
    np.subtract(pred, target, out=out)
    loss = float(np.square(out, dtype=np.float64).sum()) / pred.size
    out *= 2.0 / pred.size
    return loss, out


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose arg-max matches the integer label."""
    if len(y) == 0:
        return 0.0
    return float(np.count_nonzero(logits.argmax(axis=1) == y)) / len(y)
