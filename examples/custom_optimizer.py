"""A custom optimizer on the fusedoptim base class: Lion, in NumPy.

Subclass ``fusedoptim.Optimizer`` and write ``update(param, grad, state, group)``; the base
class brings param groups, validation, schedules, ``step``, ``state_dict`` /
``load_state_dict``, clipping, accumulation and EMA.  Only public names are used:
``buffers`` lists the per-parameter buffers the base class allocates (zeros) before the
first update and ``load_state_dict`` accepts; ``check_group`` validates hyperparameters
with the validators of ``fusedoptim.validate``.  (The built-in optimizers instead name a
native rule with a ``spec``: docs/ARCHITECTURE.md.)

Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023)::

    c  = beta1 * m + (1 - beta1) * g
    p -= lr * (sign(c) + weight_decay * p)
    m  = beta2 * m + (1 - beta2) * g

    python examples/custom_optimizer.py
"""
import numpy as np

import fusedoptim as fo
from fusedoptim.validate import check_betas


class Lion(fo.Optimizer):
    buffers = ("exp_avg",)                           # created (zeros) before the first update

    def __init__(self, params=None, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def check_group(self, g, where):                 # runs at construction and when a value changes
        super().check_group(g, where)
        check_betas(g["betas"], where)

    def update(self, param, grad, state, group):     # one parameter, in place
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        m = state["exp_avg"]
        c = b1 * m + (1 - b1) * grad
        if wd:
            param *= 1 - lr * wd
        param -= lr * np.sign(c)
        m *= b2
        m += (1 - b2) * grad


# Minimize an ill-conditioned quadratic f(w) = 0.5 * sum(a * w^2) with Lion and with Adam.
a = np.logspace(0, 3, 50).astype(np.float32)
for name, make in [("Lion", lambda p: Lion(p, lr=0.01)), ("Adam", lambda p: fo.Adam(p, lr=0.03))]:
    w = np.ones(50, np.float32)
    opt = make([w])
    for step in range(300):
        opt.step([a * w])                            # the gradient of f
    print(f"{name}: f(w) = {0.5 * np.sum(a * w * w):.2e} after {opt.iterations} steps")

# The base class gives checkpoints for free.
w = np.ones(3, np.float32)
opt = Lion([w], lr=0.1)
opt.step([np.array([1.0, -2.0, 0.0], np.float32)])
sd = opt.state_dict()
again = Lion([w.copy()], lr=0.1)
again.load_state_dict(sd)
print("state after one step:", sd["state"][0]["step"], sd["state"][0]["exp_avg"])
