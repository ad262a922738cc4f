"""``fusedoptim demo``: one MLP, trained with every optimizer from the same start.

Each run uses the same initial weights, the same batch order and the same data; only the
optimizer (and its learning rate) changes.  The loop is written the way the library
expects to be used: parameters and gradient buffers allocated once, batches gathered into
preallocated arrays, one ``opt.step(grads)`` per batch, timed on its own.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

import fusedoptim as fo
from .. import nn
from . import data as _data
from ._util import DemoError, SCHEDULES, blas_threads, clip_function, make_schedule, progress

__all__ = ["OptSpec", "OPTIMIZERS", "train_one", "evaluate", "build_parser", "main"]


@dataclass(frozen=True)
class OptSpec:
    """One optimizer of the comparison: CLI key, display label, fusedoptim class and the
    default learning rate (chosen for this MLP on digits/MNIST with batch 32)."""

    key: str
    label: str
    cls: str
    lr: float
    kwargs: Dict[str, object] = field(default_factory=dict)

    def build(self, params, lr):
        return getattr(fo, self.cls)(params, lr=lr, **self.kwargs)


OPTIMIZERS: Dict[str, OptSpec] = {s.key: s for s in [
    OptSpec("sgd", "SGD", "SGD", 0.1),
    OptSpec("sgdm", "SGD+momentum", "SGD", 0.02, {"momentum": 0.9}),
    OptSpec("adagrad", "Adagrad", "Adagrad", 0.03),
    OptSpec("rmsprop", "RMSprop", "RMSprop", 1e-3),
    OptSpec("adam", "Adam", "Adam", 2e-3),
    OptSpec("adamw", "AdamW", "AdamW", 2e-3, {"weight_decay": 1e-2}),
    OptSpec("adamax", "Adamax", "Adamax", 5e-3),
    OptSpec("nadam", "NAdam", "NAdam", 2e-3),
    OptSpec("radam", "RAdam", "RAdam", 3e-3),
    OptSpec("adadelta", "Adadelta", "Adadelta", 1.0),
]}
_ALIASES = {"momentum": "sgdm", "sgd+momentum": "sgdm"}


def parse_optimizers(text: str, lr_override: Optional[float]) -> List[tuple]:
    """``"all"`` or a comma list of ``name`` / ``name=lr`` -> [(OptSpec, lr)]."""
    out = []
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise DemoError("--optimizers is empty")
    for item in items:
        name, _, lr_text = item.partition("=")
        name = name.strip().lower()
        if name == "all":
            out.extend((s, s.lr if lr_override is None else lr_override) for s in OPTIMIZERS.values())
            continue
        spec = OPTIMIZERS.get(_ALIASES.get(name, name))
        if spec is None:
            raise DemoError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)} (or all)")
        lr = spec.lr if lr_override is None else lr_override
        if lr_text:
            try:
                lr = float(lr_text)
            except ValueError:
                raise DemoError(f"--optimizers {item!r}: {lr_text!r} is not a learning rate") from None
        if not (lr >= 0 and math.isfinite(lr)):
            raise DemoError(f"--optimizers {item!r}: learning rate must be a finite number >= 0")
        out.append((spec, lr))
    return out


def evaluate(model: nn.Sequential, x: np.ndarray, y: np.ndarray, chunk: int = 1024):
    """(mean loss, accuracy) over ``x`` in chunks, so the model's buffers stay small."""
    if len(x) == 0:
        return float("nan"), float("nan")
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        logits = model.forward(x[i:i + chunk])
        yc = y[i:i + chunk]
        loss, _ = nn.softmax_cross_entropy(logits, yc)
        loss_sum += loss * len(yc)
        correct += int(np.count_nonzero(logits.argmax(axis=1) == yc))
    return loss_sum / len(x), correct / len(x)


def train_one(spec: OptSpec, lr: float, dataset: _data.Dataset, *, hidden: Sequence[int] = (128,),
              epochs: int = 20, batch_size: int = 32, schedule: str = "none",
              clip_norm: Optional[float] = None, target_acc: float = 0.95, seed: int = 0,
              show_progress: bool = True) -> dict:
    """Train a fresh MLP with one optimizer; return its numbers and per-epoch history.

    ``wall_s`` is the whole run (evaluation included), ``train_s`` the training loop
    alone (batching, forward, backward, clipping, step) and ``step_s`` the time inside
    ``opt.step``.  Train loss/accuracy per epoch are running means over the epoch's
    batches; the final ones are a full pass over the training set.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # divergence is reported
        return _train_one(spec, lr, dataset, hidden, epochs, batch_size, schedule, clip_norm, target_acc,
                          seed, show_progress)


def _train_one(spec, lr, dataset, hidden, epochs, batch_size, schedule, clip_norm, target_acc, seed,
               show_progress) -> dict:
    """Training of one run (see train_one)."""
    x, y = dataset.x_train, dataset.y_train
    n = len(x)
    if n == 0:
        raise DemoError("the training set is empty")
    init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
    model = nn.MLP([dataset.n_features, *hidden, dataset.n_classes], rng=np.random.default_rng(init_seq))
    grads = model.grads()
    steps_per_epoch = -(-n // batch_size)
    opt = spec.build(model.params(), make_schedule(schedule, lr, epochs * steps_per_epoch))
    clip = clip_function() if clip_norm else None
    order_rng = np.random.default_rng(shuffle_seq)

    # preallocated batch buffers; the last, smaller batch uses a prefix view
    xb = np.empty((batch_size, x.shape[1]), dtype=np.float32)
    yb = np.empty(batch_size, dtype=y.dtype)
    dlogits = np.empty((batch_size, dataset.n_classes), dtype=np.float32)

    keys = ("epoch", "time_s", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    hist: Dict[str, list] = {k: [] for k in keys}
    if clip is not None:
        hist["grad_norm"] = []

    def record(epoch, t, tr_loss, tr_acc):
        te_loss, te_acc = evaluate(model, dataset.x_test, dataset.y_test)
        sched = opt.param_groups[0]["lr"]
        lr_now = sched(opt.iterations) if callable(sched) else sched     # the next step's lr
        for k, v in zip(keys, (epoch, t, lr_now, tr_loss, tr_acc, te_loss, te_acc)):
            hist[k].append(v)
        return te_acc

    t_run = time.perf_counter()
    record(0, 0.0, *evaluate(model, x, y))
    if clip is not None:
        hist["grad_norm"].append(None)
    train_s = step_s = 0.0
    diverged = False
    epochs_to_target = time_to_target = None
    bar = progress(epochs, f"{spec.label:>12}", "epoch", show_progress)
    perf = time.perf_counter
    for epoch in range(1, epochs + 1):
        t0 = perf()
        perm = order_rng.permutation(n)
        loss_sum, correct, norm_sum = 0.0, 0, 0.0
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            m = len(idx)
            xm, ym, dm = xb[:m], yb[:m], dlogits[:m]
            np.take(x, idx, axis=0, out=xm, mode="clip")
            np.take(y, idx, out=ym, mode="clip")
            logits = model.forward(xm)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == ym))
            loss, dl = nn.softmax_cross_entropy(logits, ym, out=dm)
            loss_sum += loss * m
            model.backward(dl)
            if clip is not None:
                norm_sum += float(clip(grads, clip_norm))
            ts = perf()
            opt.step(grads)
            step_s += perf() - ts
        train_s += perf() - t0
        tr_loss, tr_acc = loss_sum / n, correct / n
        te_acc = record(epoch, train_s, tr_loss, tr_acc)
        if clip is not None:
            hist["grad_norm"].append(norm_sum / steps_per_epoch)
        if epochs_to_target is None and te_acc >= target_acc:
            epochs_to_target, time_to_target = epoch, train_s
        bar.update(1)
        bar.set_postfix_str(f"loss {tr_loss:.4f}  test acc {te_acc:.4f}")
        if not math.isfinite(tr_loss):
            diverged = True
            break
    bar.close()
    final_train = evaluate(model, x, y)
    final_test = (hist["test_loss"][-1], hist["test_acc"][-1])
    wall_s = time.perf_counter() - t_run
    steps = opt.iterations
    return {
        "optimizer": spec.key, "label": spec.label, "class": spec.cls, "lr": lr,
        "hyperparameters": {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "lr")},
        "wall_s": wall_s, "train_s": train_s, "step_s": step_s, "steps": steps,
        "step_us": 1e6 * step_s / max(steps, 1),
        "epochs_run": hist["epoch"][-1], "diverged": diverged,
        "epochs_to_target": epochs_to_target, "time_to_target_s": time_to_target,
        "final": {"train_loss": final_train[0], "train_acc": final_train[1],
                  "test_loss": final_test[0], "test_acc": final_test[1]},
        "history": hist,
    }


# ------------------------------------------------------------------------------- CLI
def _positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text):
    v = float(text)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _hidden(text):
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of layer sizes, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusedoptim demo",
        description="Train one MLP with each optimizer from the same initialization and compare "
                    "time (total and inside opt.step), epochs to a target accuracy, and final "
                    "accuracy/loss.  Data: scikit-learn's handwritten digits (default) or MNIST "
                    "from local IDX files.  See also: fusedoptim demo toy2d --help.",
        epilog=f"optimizers: {', '.join(f'{s.key} (lr {s.lr:g})' for s in OPTIMIZERS.values())}")
    p.add_argument("--optimizers", default="all", metavar="LIST",
                   help="comma list of optimizer names, each optionally name=lr (default: all)")
    p.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs per run (default 20; 8 with --quick)")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="mini-batch size (default 32)")
    p.add_argument("--lr", type=float, metavar="LR", help="learning rate for every optimizer (overrides the defaults)")
    p.add_argument("--schedule", choices=SCHEDULES, default="none",
                   help="learning-rate schedule over the whole run (fusedoptim.schedules)")
    p.add_argument("--clip-norm", type=_positive_float, metavar="MAX",
                   help="clip the global gradient norm to MAX before each step (fusedoptim.clip_grad_norm)")
    p.add_argument("--target-acc", type=float, default=0.95, metavar="A",
                   help="test accuracy whose first epoch is reported (default 0.95)")
    p.add_argument("--hidden", type=_hidden, default=[128], metavar="SIZES",
                   help="hidden layer sizes, comma separated (default 128)")
    p.add_argument("--mnist", metavar="DIR", help="train on MNIST read from the IDX files in DIR")
    p.add_argument("--out", default="fusedoptim-demo", metavar="DIR",
                   help="directory for the PNG and JSON (default ./fusedoptim-demo)")
    p.add_argument("--quick", action="store_true",
                   help="a run of a few seconds: fewer epochs (and a subset of MNIST)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split, initialization and batch order")
    p.add_argument("--threads", type=int, metavar="N", help="threads for opt.step (fusedoptim.set_num_threads)")
    p.add_argument("--blas-threads", type=int, default=1, metavar="N",
                   help="threads for NumPy's matrix products, via threadpoolctl (default 1: the demo's "
                        "products are small; 0 leaves BLAS alone)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def _load(args) -> _data.Dataset:
    if args.mnist:
        ds = _data.load_mnist(args.mnist)
        if args.quick:
            ds = ds.subset(min(len(ds.x_train), 5000), min(len(ds.x_test), 1000), args.seed)
        return ds
    return _data.load_digits(args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import report

    args = build_parser().parse_args(argv)
    if args.lr is not None and not (args.lr >= 0 and math.isfinite(args.lr)):
        raise DemoError(f"--lr must be a finite number >= 0, got {args.lr}")
    if not 0.0 <= args.target_acc <= 1.0:
        raise DemoError(f"--target-acc must be in [0, 1], got {args.target_acc}")
    runs = parse_optimizers(args.optimizers, args.lr)
    epochs = args.epochs or (8 if args.quick else 20)
    if args.schedule != "none":
        make_schedule(args.schedule, 1.0, 1)   # fail now, not after loading data
    if args.clip_norm:
        clip_function()
    dataset = _load(args)
    os.makedirs(args.out, exist_ok=True)

    print(f"fusedoptim {fo.__version__} demo: {dataset.describe()}")
    blas_limit, blas_note = blas_threads(args.blas_threads)
    print(f"MLP {'-'.join(str(s) for s in [dataset.n_features, *args.hidden, dataset.n_classes])} (ReLU), "
          f"{epochs} epochs, batch {args.batch_size}, schedule {args.schedule}, "
          f"clip {args.clip_norm or 'off'}, seed {args.seed}, step threads "
          f"{args.threads if args.threads else fo.get_num_threads()}, {blas_note}")
    if args.threads:
        fo.set_num_threads(args.threads)
    results = []
    try:
        with blas_limit:
            for i, (spec, lr) in enumerate(runs, 1):
                r = train_one(spec, lr, dataset, hidden=args.hidden, epochs=epochs, batch_size=args.batch_size,
                              schedule=args.schedule, clip_norm=args.clip_norm, target_acc=args.target_acc,
                              seed=args.seed, show_progress=not args.no_progress)
                results.append(r)
                f = r["final"]
                print(f"[{i}/{len(runs)}] {spec.label:<12} lr {lr:<8g} test acc {f['test_acc']:.4f}  "
                      f"{r['wall_s']:.2f} s (step {r['step_s']:.3f} s)" + ("  DIVERGED" if r["diverged"] else ""),
                      flush=True)
    finally:
        if args.threads:
            fo.set_num_threads(0)

    print()
    print(report.format_table(results, args.target_acc))
    config = {
        "dataset": dataset.name, "n_train": len(dataset.x_train), "n_test": len(dataset.x_test),
        "n_features": dataset.n_features, "n_classes": dataset.n_classes,
        "sizes": [dataset.n_features, *args.hidden, dataset.n_classes], "activation": "relu",
        "epochs": epochs, "batch_size": args.batch_size, "schedule": args.schedule,
        "clip_norm": args.clip_norm, "target_acc": args.target_acc, "seed": args.seed,
        "quick": args.quick, "threads": args.threads or fo.get_num_threads(),
        "blas_threads": args.blas_threads, "blas_note": blas_note,
    }
    stem = os.path.join(args.out, f"demo_{dataset.name}")
    report.write_json(stem + ".json", report.document(config, results))
    print(f"\nwrote {stem}.json")
    if not args.no_plot:
        png = report.plot_curves(results, stem + ".png",
                                 title=f"{dataset.name}: MLP {'-'.join(map(str, config['sizes']))}, "
                                       f"batch {args.batch_size}, schedule {args.schedule}")
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
