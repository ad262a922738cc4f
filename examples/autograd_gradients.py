"""Gradients from the ``autograd`` package, updates from fusedoptim.

Write the loss in ``autograd.numpy``, let ``autograd.grad`` differentiate it, and hand the
gradients to the optimizer: the parameters are ordinary float64 arrays updated in place.
Here: a 2-16-1 tanh network separating the points inside a circle from those outside.
Needs ``pip install autograd``.

    python examples/autograd_gradients.py
"""
import sys

import numpy as onp

import fusedoptim as fo

try:
    import autograd.numpy as np
    from autograd import grad
except ImportError:
    sys.exit("this example needs the autograd package: pip install autograd")

rng = onp.random.default_rng(0)
X = rng.standard_normal((300, 2))
y = (onp.sum(X ** 2, axis=1) < 2.0).astype(float)


def loss(params, X, y):
    W1, b1, W2, b2 = params
    h = np.tanh(X @ W1 + b1)
    logit = (h @ W2 + b2)[:, 0]
    # binary cross-entropy with logits, written stably
    return np.mean(np.logaddexp(0.0, logit) - y * logit)


params = [rng.standard_normal((2, 16)) * 0.5, onp.zeros(16), rng.standard_normal((16, 1)) * 0.5, onp.zeros(1)]
loss_grad = grad(loss)          # d loss / d params, a list aligned with params
opt = fo.Adam(params, lr=0.03)

for step in range(301):
    grads = loss_grad(params, X, y)
    opt.step(grads)             # params updated in place; the list keeps the same arrays
    if step % 100 == 0:
        W1, b1, W2, b2 = params
        acc = onp.mean(((onp.tanh(X @ W1 + b1) @ W2 + b2)[:, 0] > 0) == (y > 0.5))
        print(f"step {step:3d}  loss {loss(params, X, y):.4f}  accuracy {acc:.3f}")
