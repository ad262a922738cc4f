"""A torch CPU training loop on fusedoptim: the only change is the import of the optimizer.

``fusedoptim.torch.AdamW`` is a ``torch.optim.Optimizer``: it reads ``p.grad`` after
``loss.backward()`` and updates every parameter in one fused, multi-threaded native pass,
in place (no copies), with torch.optim's semantics.  LR schedulers, ``zero_grad``,
``state_dict`` and ``torch.save`` work as before.  Here: a small conv net on random
"images" whose label is the sign of their mean.  Needs ``pip install torch``.

    python examples/torch_cpu_loop.py
"""
import sys

try:
    import torch
except ImportError:
    sys.exit("this example needs torch: pip install torch")

from fusedoptim.torch import AdamW      # was: from torch.optim import AdamW

torch.manual_seed(0)
X = torch.randn(512, 1, 8, 8)
y = (X.mean(dim=(1, 2, 3)) > 0).long()
model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
    torch.nn.Linear(8 * 8 * 8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

opt = AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
for epoch in range(30):
    for i in range(0, len(X), 64):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X[i:i + 64]), y[i:i + 64])
        loss.backward()
        opt.step()
    sched.step()
with torch.no_grad():
    acc = (model(X).argmax(1) == y).float().mean().item()
print(f"loss {loss.item():.4f}, lr {sched.get_last_lr()[0]:.2e}, train accuracy {acc:.3f}")
