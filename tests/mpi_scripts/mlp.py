"""A tiny NumPy MLP and data set shared by the MPI test scripts and the pytest side
(which recomputes reference trajectories in one process)."""
import numpy as np

SHAPES = {"W1": (6, 16), "b1": (16,), "W2": (16, 3), "b2": (3,)}
KEYS = list(SHAPES)
GLOBAL_BATCH = 16


def init(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * (0.5 if k[0] == "W" else 0.1)).astype(dtype) for k, s in SHAPES.items()}


def batch(t, dtype=np.float64):
    """The global batch of step t: (X, Y)."""
    rng = np.random.default_rng(1000 + t)
    X = rng.standard_normal((GLOBAL_BATCH, 6)).astype(dtype)
    Y = np.sin(X[:, :3]) + 0.1 * rng.standard_normal((GLOBAL_BATCH, 3)).astype(dtype)
    return X, Y


def local(X, Y, rank, world):
    """Rank's contiguous share of a global batch (equal shares)."""
    n = len(X) // world
    return X[rank * n:(rank + 1) * n], Y[rank * n:(rank + 1) * n]


def loss_and_grads(p, X, Y, out=None):
    """Mean over the batch of 0.5 * ||tanh(X W1 + b1) W2 + b2 - Y||^2; gradients are
    written into ``out`` (dict of arrays, e.g. GradArena views) or new arrays."""
    h = np.tanh(X @ p["W1"] + p["b1"])
    r = h @ p["W2"] + p["b2"] - Y
    n = len(X)
    loss = 0.5 * float(np.sum(r * r)) / n
    d = r / n
    dh = (d @ p["W2"].T) * (1 - h * h)
    g = {"W1": X.T @ dh, "b1": dh.sum(0), "W2": h.T @ d, "b2": d.sum(0)}
    if out is None:
        return loss, g
    for k in KEYS:
        out[k][...] = g[k]
    return loss, out


def summed_grads(p, t, world):
    """What Allreduce(SUM) of the ranks' local gradients gives for 2 ranks (a + b is
    exact-order independent): the reference for bit-exact comparisons."""
    X, Y = batch(t)
    total = None
    for r in range(world):
        _, g = loss_and_grads(p, *local(X, Y, r, world))
        total = g if total is None else {k: total[k] + g[k] for k in KEYS}
    return total


# (optimizer, kwargs): every optimizer class once, plus the flags that add state buffers
CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.5)),
    ("Adamax", dict(lr=1e-2)),
    ("NAdam", dict(lr=1e-2)),
    ("RAdam", dict(lr=1e-2)),
    ("Adadelta", dict(lr=1.0)),
    ("Rprop", dict(lr=1e-2)),
    ("Lion", dict(lr=1e-3)),
    ("ASGD", dict(lr=1e-2, t0=2.0)),
]
