"""Linear regression in plain NumPy: full-batch gradient descent vs mini-batch SGD.

Both fit ``y = X @ w + b`` by mean squared error with ``fusedoptim.SGD``; the only
difference is how many rows each gradient sees.  Gradient descent takes one exact step
per epoch; SGD takes many cheap, noisy ones and gets close in fewer passes over the data.

    python examples/linear_regression_sgd.py
"""
import time

import numpy as np

import fusedoptim as fo

rng = np.random.default_rng(0)
X = rng.random((2000, 2), dtype=np.float32)
y = X @ np.array([2.0, 3.0], np.float32) + 1.0 + 0.1 * rng.standard_normal(2000, dtype=np.float32)


def mse_and_grads(w, b, xb, yb, gw, gb):
    """Loss of one batch; d loss / d w and d loss / d b written into gw, gb."""
    err = xb @ w + b - yb
    np.matmul(xb.T, err, out=gw)
    gw *= 2.0 / len(yb)
    gb[0] = 2.0 * err.mean()
    return float(np.mean(err * err))


def fit(batch_size, epochs, lr):
    w, b = np.zeros(2, np.float32), np.zeros(1, np.float32)       # the parameters
    gw, gb = np.empty_like(w), np.empty_like(b)                    # their gradient buffers
    opt = fo.SGD([w, b], lr=lr)
    order_rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = order_rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            mse_and_grads(w, b, X[rows], y[rows], gw, gb)
            opt.step([gw, gb])                                     # w, b updated in place
    seconds = time.perf_counter() - t0
    loss = mse_and_grads(w, b, X, y, gw, gb)
    return w, b, loss, opt.iterations, seconds


print(f"{'method':<28}{'epochs':>7}{'steps':>7}{'mse':>9}   w            b      time")
for name, batch, epochs, lr in [("gradient descent (batch all)", len(X), 200, 0.5),
                                ("gradient descent (batch all)", len(X), 20, 0.5),
                                ("SGD (batch 16)", 16, 20, 0.05)]:
    w, b, loss, steps, sec = fit(batch, epochs, lr)
    print(f"{name:<28}{epochs:>7}{steps:>7}{loss:>9.4f}   [{w[0]:.2f} {w[1]:.2f}]  {b[0]:.2f}  {sec:.3f} s")
print("true: w = [2, 3], b = 1, noise variance 0.01")
