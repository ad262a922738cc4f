"""An MLP on handwritten digits with Adam, a cosine learning-rate schedule and gradient clipping.

The pieces: ``fusedoptim.nn`` for the model and its gradient buffers,
``fusedoptim.schedules.CosineDecay`` as the learning rate (the optimizer calls it with the
step count), ``fusedoptim.clip_grad_norm`` to cap the global gradient norm in place.
Needs scikit-learn for the data: ``pip install 'fusedoptim[demo]'``.

    python examples/mlp_adam_cosine_clip.py
"""
import sys

import numpy as np

import fusedoptim as fo
from fusedoptim import nn

try:
    from sklearn.datasets import load_digits
except ImportError:
    sys.exit("this example needs scikit-learn: pip install 'fusedoptim[demo]'")
try:
    from fusedoptim import clip_grad_norm
    from fusedoptim.schedules import CosineDecay
except ImportError as e:
    sys.exit(f"this example needs fusedoptim.schedules and fusedoptim.clip_grad_norm ({e})")

digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
order = np.random.default_rng(0).permutation(len(x))
train, test = order[:1400], order[1400:]

epochs, batch = 15, 32
steps = epochs * -(-len(train) // batch)
model = nn.MLP([64, 128, 10], rng=0)
grads = model.grads()
opt = fo.Adam(model.params(), lr=CosineDecay(initial_learning_rate=3e-3, decay_steps=steps))

rng = np.random.default_rng(1)
for epoch in range(1, epochs + 1):
    losses, norms = [], []
    perm = rng.permutation(train)
    for s in range(0, len(perm), batch):
        idx = perm[s:s + batch]
        loss, dlogits = nn.softmax_cross_entropy(model.forward(x[idx]), y[idx])
        model.backward(dlogits)
        losses.append(loss)
        norms.append(clip_grad_norm(grads, max_norm=1.0))   # returns the norm before clipping
        # (or build Adam(..., global_clipnorm=1.0) to clip inside the step's own pass)
        opt.step(grads)
    if epoch % 3 == 0 or epoch == 1:
        acc = nn.accuracy(model.predict(x[test]), y[test])
        lr = opt.param_groups[0]["lr"](opt.iterations)
        print(f"epoch {epoch:2d}  loss {np.mean(losses):.4f}  grad norm {np.mean(norms):.3f}  lr {lr:.2e}  test acc {acc:.4f}")
