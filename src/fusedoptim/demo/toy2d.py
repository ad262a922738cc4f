"""``fusedoptim demo toy2d``: the tutorials' 2-11-1 network, with and without L2.

300 points ``x ~ N(0, I)`` labelled 1 inside ``x0^2 + x1^2 < 2`` (with noise on the radius),
a Dense(2, 11)-ReLU-Dense(11, 1) network with N(0, 1) weights and 0.01 biases, mean squared
error, plain SGD with lr 0.005 for 800 epochs of batches of 32: the classic setup.  The
regularized run adds ``weight_decay`` (an L2 penalty ``wd/2 * sum(w^2)``, the tutorials'
``regularizer * tf.nn.l2_loss(w)``) on the weights only, not the biases, through the two
param groups of ``fusedoptim.split_decay_groups``.  The PNG shows both decision boundaries (prediction = 0.5).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Optional, Sequence

import numpy as np

import fusedoptim as fo
from .. import nn
from . import report
from ._util import DemoError, blas_threads, progress, pyplot
from .data import make_toy2d
from .train import OPTIMIZERS, _ALIASES, _positive_int

__all__ = ["build_model", "train_toy2d", "main"]


def build_model(seed: int = 0, hidden: int = 11) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Dense(2, hidden, rng, "normal", bias_init=0.01), nn.ReLU(),
                         nn.Dense(hidden, 1, rng, "normal", bias_init=0.01))


def _accuracy(model: nn.Sequential, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((model.predict(x) > 0.5) == (y > 0.5)))


def train_toy2d(x, y, x_test, y_test, *, optimizer: str = "sgd", lr: float = 0.005, weight_decay: float = 0.0,
                epochs: int = 800, batch_size: int = 32, seed: int = 0, show_progress: bool = True,
                label: str = "") -> dict:
    """Train the 2-11-1 network once; weight decay on the weights only.  Returns the model
    and its numbers."""
    spec = OPTIMIZERS[_ALIASES.get(optimizer, optimizer)]
    model = build_model(seed)
    dense = [layer for layer in model.layers if isinstance(layer, nn.Dense)]
    # two param groups: the weights decay, the biases (1-D) don't; gradients in group order
    groups = fo.split_decay_groups(model.named_params(), weight_decay=weight_decay)
    grads = model.grads_for(groups)
    opt = spec.build(groups, lr)
    name_of = {id(p): n for n, p in model.named_params()}
    decayed = [name_of[id(p)] for g in opt.param_groups if g["weight_decay"] for p in g["params"]]
    rng = np.random.default_rng([seed, 1])
    n = len(x)
    xb = np.empty((batch_size, 2), np.float32)
    yb = np.empty((batch_size, 1), np.float32)
    dp = np.empty((batch_size, 1), np.float32)
    losses = []
    step_s = 0.0
    bar = progress(epochs, f"{label or ('L2' if weight_decay else 'no L2'):>8}", "epoch", show_progress)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = rng.permutation(n)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            m = len(idx)
            np.take(x, idx, axis=0, out=xb[:m], mode="clip")
            np.take(y, idx, axis=0, out=yb[:m], mode="clip")
            loss, d = nn.mse(model.forward(xb[:m]), yb[:m], out=dp[:m])
            total += loss * m
            model.backward(d)
            ts = time.perf_counter()
            opt.step(grads)
            step_s += time.perf_counter() - ts
        losses.append(total / n)
        bar.update(1)
        if not math.isfinite(losses[-1]):
            break
    bar.close()
    train_s = time.perf_counter() - t0
    return {
        "model": model, "optimizer": spec.key, "lr": lr, "weight_decay": weight_decay, "decayed": decayed,
        "epochs_run": len(losses), "train_s": train_s, "step_s": step_s,
        "train_loss": nn.mse(model.predict(x), y)[0],
        "train_acc": _accuracy(model, x, y), "test_acc": _accuracy(model, x_test, y_test),
        "weight_sq_norm": float(sum(np.sum(np.square(d.W, dtype=np.float64)) for d in dense)),
        "loss_history": losses,
    }


def plot_boundaries(runs, x, y, path: str) -> Optional[str]:
    plt = pyplot()
    if plt is None:
        report.missing_matplotlib(f"plot {path}")
        return None
    xx, yy = np.mgrid[-3:3:0.02, -3:3:0.02]
    grid = np.c_[xx.ravel(), yy.ravel()].astype(np.float32)
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 5.2), squeeze=False)
    colors = np.where(y.ravel() > 0.5, "tab:red", "tab:blue")
    t = np.linspace(0, 2 * np.pi, 200)
    for ax, r in zip(axes[0], runs):
        z = r["model"].predict(grid).reshape(xx.shape)
        ax.contourf(xx, yy, z, levels=[-1e9, 0.5, 1e9], colors=["#dbe7f5", "#f7dede"], alpha=0.8)
        ax.contour(xx, yy, z, levels=[0.5], colors="k", linewidths=1.5)
        ax.plot(math.sqrt(2) * np.cos(t), math.sqrt(2) * np.sin(t), "--", color="gray", lw=1,
                label="true boundary x0² + x1² = 2")
        ax.scatter(x[:, 0], x[:, 1], c=colors, s=12, edgecolors="none")
        wd = r["weight_decay"]
        ax.set(title=(f"{'with L2, weight_decay=' + format(wd, 'g') if wd else 'without regularization'}\n"
                      f"train acc {r['train_acc']:.3f}, test acc {r['test_acc']:.3f}, "
                      f"Σw² {r['weight_sq_norm']:.1f}"),
               xlabel="x0", ylabel="x1", xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
        ax.legend(loc="lower left", fontsize=8)
    r0 = runs[0]
    fig.suptitle(f"2-11-1 MLP, {r0['optimizer']} lr {r0['lr']:g}, {r0['epochs_run']} epochs, MSE loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusedoptim demo toy2d",
        description="The tutorials' 2-11-1 network on a seeded 2-D point cloud (label: x0^2 + x1^2 < 2, "
                    "noisy), trained twice from the same start: without and with L2 weight decay on the "
                    "weights.  Prints both runs and plots both decision boundaries.")
    p.add_argument("--optimizer", default="sgd", help=f"one of {', '.join(OPTIMIZERS)} (default sgd)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.005 for sgd, else the optimizer's demo default)")
    p.add_argument("--weight-decay", type=float, default=0.03, help="L2 coefficient of the regularized run (default 0.03)")
    p.add_argument("--epochs", type=_positive_int, help="epochs (default 800; 200 with --quick)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--points", type=_positive_int, default=300, help="training points (default 300)")
    p.add_argument("--noise", type=float, default=0.5, help="std of the noise on x0^2 + x1^2 (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="fusedoptim-demo", metavar="DIR", help="directory for the PNG and JSON")
    p.add_argument("--quick", action="store_true", help="fewer epochs (a run of about a second)")
    p.add_argument("--blas-threads", type=int, default=1, metavar="N",
                   help="threads for NumPy's matrix products (default 1; 0 leaves BLAS alone)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    key = _ALIASES.get(args.optimizer.lower(), args.optimizer.lower())
    if key not in OPTIMIZERS:
        raise DemoError(f"unknown optimizer {args.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    lr = args.lr if args.lr is not None else (0.005 if key == "sgd" else OPTIMIZERS[key].lr)
    if not (lr >= 0 and math.isfinite(lr)):
        raise DemoError(f"--lr must be a finite number >= 0, got {lr}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise DemoError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    epochs = args.epochs or (200 if args.quick else 800)
    x, y = make_toy2d(args.points, args.seed, args.noise)
    x_test, y_test = make_toy2d(2000, args.seed + 1, args.noise)
    os.makedirs(args.out, exist_ok=True)
    print(f"fusedoptim {fo.__version__} demo toy2d: {args.points} points, 2-11-1 ReLU MLP, MSE, "
          f"{OPTIMIZERS[key].label} lr {lr:g}, {epochs} epochs, batch {args.batch_size}, seed {args.seed}")
    blas_limit, _ = blas_threads(args.blas_threads)
    with blas_limit:
        runs = [train_toy2d(x, y, x_test, y_test, optimizer=key, lr=lr, weight_decay=wd, epochs=epochs,
                            batch_size=args.batch_size, seed=args.seed, show_progress=not args.no_progress)
                for wd in (0.0, args.weight_decay)]
    rows = [["without L2" if r["weight_decay"] == 0 else f"L2 {r['weight_decay']:g}",
             f"{r['train_loss']:.4f}", f"{r['train_acc']:.3f}", f"{r['test_acc']:.3f}",
             f"{r['weight_sq_norm']:.2f}", f"{r['train_s']:.2f}", f"{r['step_s']:.3f}"] for r in runs]
    print()
    print(report.table(["run", "train mse", "train acc", "test acc", "sum w^2", "train s", "step s"], rows))
    print("(test: 2000 fresh points from the same distribution)")
    stem = os.path.join(args.out, "toy2d")
    config = {"points": args.points, "noise": args.noise, "seed": args.seed, "epochs": epochs,
              "batch_size": args.batch_size, "optimizer": key, "lr": lr, "weight_decay": args.weight_decay,
              "sizes": [2, 11, 1], "loss": "mse", "n_test": 2000}
    report.write_json(stem + ".json", report.document(config, [{k: v for k, v in r.items() if k != "model"}
                                                               for r in runs]))
    print(f"\nwrote {stem}.json")
    if not args.no_plot:
        png = plot_boundaries(runs, x, y, stem + ".png")
        if png:
            print(f"wrote {png}")
    return 0
