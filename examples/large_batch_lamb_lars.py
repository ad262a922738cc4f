"""Layer-wise trust ratios: LAMB, LARS and NovoGrad on a two-layer NumPy MLP.

Each of them scales a tensor's update by statistics of the whole tensor (LAMB and LARS:
a ratio of the weight norm to the update or gradient norm; NovoGrad: a running average
of the gradient's squared norm).  fusedoptim computes those per-tensor statistics and the
update for all tensors in one native call per step.  Runs in about a second.
"""
import numpy as np

import fusedoptim as fo

rng = np.random.default_rng(0)
X = rng.standard_normal((512, 20)).astype(np.float32)
y = (X[:, :5].sum(axis=1, keepdims=True) > 0).astype(np.float32)


def init():
    r = np.random.default_rng(1)
    return [(r.standard_normal((20, 64)) * 0.3).astype(np.float32), np.zeros(64, np.float32),
            (r.standard_normal((64, 1)) * 0.3).astype(np.float32), np.zeros(1, np.float32)]


def loss_and_grads(params):
    W1, b1, W2, b2 = params
    h = np.maximum(X @ W1 + b1, 0.0)
    z = h @ W2 + b2
    p = 0.5 * (1.0 + np.tanh(0.5 * z))                       # sigmoid, without overflow
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))      # binary cross-entropy
    d = (p - y) / len(X)
    dh = (d @ W2.T) * (h > 0)
    return loss, [X.T @ dh, dh.sum(0), h.T @ d, d.sum(0)]


for name, build in [("Lamb", lambda ps: fo.Lamb(ps, lr=5e-3, weight_decay=1e-2)),
                    ("LARS", lambda ps: fo.LARS(ps, lr=1.0, weight_decay=1e-4, trust_coefficient=1e-2)),
                    ("NovoGrad", lambda ps: fo.NovoGrad(ps, lr=1e-2))]:
    params = init()
    opt = build(params)
    first, _ = loss_and_grads(params)
    for step in range(200):
        loss, grads = loss_and_grads(params)
        opt.step(grads)
    print(f"{name:9s} training loss {first:.3f} -> {loss:.3f} in 200 steps")
