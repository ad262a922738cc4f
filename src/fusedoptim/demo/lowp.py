"""``fusedoptim demo --state-dtype bfloat16``: does low-precision state train as well?

Adam with float32 state and with each requested ``state_dtype`` on two tasks, over a few
seeds: the digits classifier (an MLP on scikit-learn's 8x8 digits, the demo's dataset)
and a regression (an MLP fitting a smooth function of 8 inputs).  For each task it prints
the final loss and accuracy of every run and says whether the low-precision runs fall
within the spread (min..max) of the float32 runs; with ``--plot FILE`` (matplotlib) it
draws the loss curves side by side.  A quality benchmark, not a timed test.  With
``int8`` every tensor gets 8-bit state (``min_8bit_size=0``: these models are small, and
the default 4096 would leave most of them float32).
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import nn
from ..lowp import STATE_DTYPES
from ..optim import Adam
from ._util import DemoError
from .data import load_digits

__all__ = ["main", "train_digits", "train_regression"]


def _batches(n: int, batch: int, rng: np.random.Generator):
    idx = rng.permutation(n)
    for i in range(0, n, batch):
        yield idx[i:i + batch]


def _storage(state_dtype: str) -> dict:
    return {"min_8bit_size": 0} if state_dtype == "int8" else {}


def train_digits(state_dtype: str, seed: int, epochs: int = 30, lr: float = 2e-3) -> Dict[str, object]:
    """MLP 64-128-10 on the digits; returns the per-epoch test loss and the final accuracy."""
    ds = load_digits(seed=0)
    model = nn.MLP([ds.n_features, 128, ds.n_classes], rng=seed)
    opt = Adam(model.params(), lr=lr, state_dtype=state_dtype, seed=seed, **_storage(state_dtype))
    grads = model.grads()
    rng = np.random.default_rng(seed)
    curve = []
    for _ in range(epochs):
        for b in _batches(len(ds.x_train), 64, rng):
            logits = model.forward(ds.x_train[b])
            _, d = nn.softmax_cross_entropy(logits, ds.y_train[b])
            model.backward(d)
            opt.step(grads)
        logits = model.predict(ds.x_test)
        curve.append(float(nn.softmax_cross_entropy(logits, ds.y_test)[0]))
    return {"curve": curve, "loss": curve[-1], "accuracy": nn.accuracy(model.predict(ds.x_test), ds.y_test)}


def train_regression(state_dtype: str, seed: int, epochs: int = 60, lr: float = 2e-3) -> Dict[str, object]:
    """MLP 8-64-1 fitting y = sin(x . a) + 0.5 (x . b)^2 (fixed a, b; noise 0.05); test MSE."""
    data = np.random.default_rng(1234)
    a, b = data.standard_normal(8) / 3, data.standard_normal(8) / 3
    x = data.standard_normal((3000, 8)).astype(np.float32)
    y = (np.sin(x @ a) + 0.5 * (x @ b) ** 2 + 0.05 * data.standard_normal(3000)).astype(np.float32)[:, None]
    xtr, ytr, xte, yte = x[:2400], y[:2400], x[2400:], y[2400:]
    model = nn.MLP([8, 64, 1], rng=seed)
    opt = Adam(model.params(), lr=lr, state_dtype=state_dtype, seed=seed, **_storage(state_dtype))
    grads = model.grads()
    rng = np.random.default_rng(seed)
    curve = []
    for _ in range(epochs):
        for bi in _batches(len(xtr), 64, rng):
            pred = model.forward(xtr[bi])
            _, d = nn.mse(pred, ytr[bi])
            model.backward(d)
            opt.step(grads)
        curve.append(float(nn.mse(model.predict(xte), yte)[0]))
    return {"curve": curve, "loss": curve[-1], "accuracy": None}


TASKS = {"digits": train_digits, "regression": train_regression}


def run(state_dtypes: Sequence[str], seeds: Sequence[int], epochs: Optional[int] = None) -> Dict[str, dict]:
    """``{task: {state_dtype: [result per seed]}}`` (float32 always included)."""
    dts = ["float32"] + [d for d in state_dtypes if d != "float32"]
    out: Dict[str, dict] = {}
    for task, fn in TASKS.items():
        kw = {} if epochs is None else {"epochs": epochs}
        out[task] = {d: [fn(d, s, **kw) for s in seeds] for d in dts}
    return out


def report(results: Dict[str, dict]) -> List[str]:
    lines = []
    for task, by in results.items():
        base = [r["loss"] for r in by["float32"]]
        lo, hi = min(base), max(base)
        lines.append(f"{task}: final test loss over {len(base)} seeds (float32 spread {lo:.4f} .. {hi:.4f})")
        for d, runs in by.items():
            losses = [r["loss"] for r in runs]
            acc = [r["accuracy"] for r in runs if r["accuracy"] is not None]
            inside = all(lo <= v <= hi for v in losses)
            mean = float(np.mean(losses))
            verdict = "" if d == "float32" else ("  within the float32 spread" if inside else
                                                 f"  mean {'inside' if lo <= mean <= hi else 'outside'} the "
                                                 "float32 spread")
            accs = f"  accuracy {' '.join(f'{a:.3f}' for a in acc)}" if acc else ""
            lines.append(f"  {d:<9} loss {' '.join(f'{v:.4f}' for v in losses)}{accs}{verdict}")
    return lines


def _plot(results: Dict[str, dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DemoError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    colors = {"float32": "C0", "bfloat16": "C1", "int8": "C2"}
    for ax, (task, by) in zip(np.atleast_1d(axes), results.items()):
        for d, runs in by.items():
            for k, r in enumerate(runs):
                ax.plot(r["curve"], color=colors.get(d, "C3"), alpha=0.7, label=d if k == 0 else None)
        ax.set_title(f"{task}: test loss")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="fusedoptim demo --state-dtype",
                                description="Adam with float32 vs low-precision state on the digits and a "
                                            "regression task, over a few seeds.")
    p.add_argument("--state-dtype", required=True,
                   help="comma list of state dtypes to compare with float32: " + ", ".join(STATE_DTYPES))
    p.add_argument("--seeds", type=int, default=3, help="runs per state dtype (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 30 digits, 60 regression)")
    p.add_argument("--plot", metavar="FILE", default=None, help="save the loss curves (needs matplotlib)")
    args = p.parse_args(list(argv))
    dts = [d.strip() for d in args.state_dtype.split(",") if d.strip()]
    for d in dts:
        if d not in STATE_DTYPES:
            raise DemoError(f"--state-dtype: unknown {d!r}; choose from {', '.join(STATE_DTYPES)}")
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1):
        raise DemoError("--seeds and --epochs must be >= 1")
    results = run(dts, range(args.seeds), args.epochs)
    print("\n".join(report(results)))
    if args.plot:
        _plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0
