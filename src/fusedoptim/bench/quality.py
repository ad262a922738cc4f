"""Does low-precision optimizer state train as well as float32?  A quality benchmark.

``python -m fusedoptim.bench.quality [--long] [--seeds N] [--optimizers adam,sgdm]
[--state-dtypes float32,bfloat16,int8] [--tasks digits,regression] [--min-8bit-size N]
[--rounding stochastic|nearest] [--json PATH] [--plot PNG]``

Trains two tasks to convergence with each optimizer and each ``state_dtype``, over several
seeds, and reports per (task, optimizer, state dtype) the final train loss, test loss and
test accuracy (R² for the regression) as mean ± standard deviation over the seeds, and
whether the bfloat16 and int8 runs fall within the **spread of the float32 runs: their
min..max over the same seeds**.  A dtype passes a metric when its mean over the seeds
lies inside that range; the table also counts how many of its single runs do.

The tasks (fixed data; a seed changes the initial weights, the batch order and the
stochastic-rounding bits, and runs of one seed share the first two across state dtypes):

* ``digits``: the demo's task, an MLP 64-128-10 (ReLU, softmax cross-entropy) on
  scikit-learn's 8x8 digits (``fusedoptim.demo.data.load_digits(seed=0)``: 1437 train /
  360 test), batch 32;
* ``regression``: a teacher-student regression, an MLP 16-128-64-1 (ReLU, mean squared
  error) fitting a fixed random 16-32-1 tanh network plus Gaussian noise of standard
  deviation 0.1 (2000 train / 1000 test samples, inputs N(0, 1)), batch 64; the noise
  floor of the test MSE is 0.01.

Every run follows a cosine decay of the learning rate to 0 over its epochs
(``fusedoptim.schedules.CosineDecay``), so the final numbers are those of a converged run
rather than a snapshot of the last steps' noise.  Optimizers: ``adam`` (Adam, lr 2e-3),
``sgdm`` (SGD, momentum 0.9, lr 0.02 on the digits, 0.01 on the regression) and ``lion``
(Lion, lr 3e-4).  ``int8`` state applies to the tensors of at least ``min_8bit_size``
elements, the library's default 4096: the first weight matrix of the digits MLP (8192 of
9610 elements) and the 128x64 matrix of the regression MLP (8192 of 10497); the report
prints how many elements had 8-bit state.  ``--min-8bit-size 0`` gives every tensor 8-bit
state (see bench/README.md for what that does to Adam).  Rounding is each storage's
default (stochastic for bfloat16, nearest for int8).  Each run takes one step thread and
one BLAS thread (``--threads``; the results are the same for any thread count, and on
these small models more threads only wait for each other).

A benchmark, not a test: nothing is asserted, and timings are not part of it.  The default
run (60 runs: 5 seeds, 20 + 40 epochs) takes about 30 s of CPU (2.5 min of wall time on the
project's shared, loaded 2-core VM); ``--long`` trains longer (60 + 150 epochs) over 10
seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import nn
from ..lowp import STATE_DTYPES
from ..schedules import CosineDecay

__all__ = ["TASKS", "OPTIMIZERS", "Task", "make_task", "train", "run", "summarize", "format_report", "build_parser",
           "main"]


@dataclass
class Task:
    """One training problem: data, model sizes, loss, metric, epochs and batch size."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sizes: List[int]
    classify: bool            # softmax cross-entropy + accuracy; else MSE + R²
    epochs: int
    batch: int

    @property
    def metric(self) -> str:
        return "test acc" if self.classify else "test R²"

    def loss(self, out, y):
        return nn.softmax_cross_entropy(out, y) if self.classify else nn.mse(out, y)

    def evaluate(self, model, x, y):
        """(mean loss, accuracy or R²) of ``model`` on ``(x, y)``."""
        out = model.predict(x)
        loss = float(self.loss(out, y)[0])
        if self.classify:
            return loss, nn.accuracy(out, y)
        return loss, 1.0 - loss / float(np.var(y))


def _digits(long: bool) -> Task:
    from ..demo.data import load_digits
    ds = load_digits(seed=0)
    return Task("digits", ds.x_train, ds.y_train, ds.x_test, ds.y_test, [ds.n_features, 128, ds.n_classes], True,
                60 if long else 20, 32)


def _regression(long: bool) -> Task:
    rng = np.random.default_rng(1234)
    w1 = rng.standard_normal((16, 32)) / 4.0
    b1 = 0.1 * rng.standard_normal(32)
    w2 = rng.standard_normal((32, 1)) / math.sqrt(32)
    x = rng.standard_normal((3000, 16))
    y = np.tanh(x @ w1 + b1) @ w2 + 0.1 * rng.standard_normal((3000, 1))
    x, y = x.astype(np.float32), y.astype(np.float32)
    return Task("regression", x[:2000], y[:2000], x[2000:], y[2000:], [16, 128, 64, 1], False,
                150 if long else 40, 64)


#: task name -> builder (``long``: the longer epoch counts)
TASKS: Dict[str, Callable[[bool], Task]] = {"digits": _digits, "regression": _regression}

#: optimizer key -> (label, class name, keyword arguments, lr per task)
OPTIMIZERS: Dict[str, tuple] = {
    "adam": ("Adam", "Adam", {}, {"digits": 2e-3, "regression": 2e-3}),
    "sgdm": ("SGD+momentum", "SGD", {"momentum": 0.9}, {"digits": 0.02, "regression": 0.01}),
    "lion": ("Lion", "Lion", {}, {"digits": 3e-4, "regression": 3e-4}),
}


def make_task(name: str, long: bool = False) -> Task:
    """The task ``name`` (a key of :data:`TASKS`)."""
    return TASKS[name](long)


def _storage(opt, params) -> Dict[str, int]:
    from ..demo.report import state_storage
    return state_storage(opt, params)


def train(task: Task, optimizer: str, state_dtype: str, seed: int, epochs: Optional[int] = None,
          min_8bit_size: int = 4096, rounding: Optional[str] = None) -> dict:
    """Train a fresh model on ``task`` with one optimizer and one state dtype; returns the
    per-epoch curves (train loss: running mean over the epoch's batches; test loss and
    metric after each epoch, epoch 0 before training), the final numbers (train loss
    over the whole training set), the elements of each state storage and the seconds.
    ``rounding``: that of the low-precision state (None: the storage's default)."""
    import fusedoptim as fo
    label, cls, kwargs, lrs = OPTIMIZERS[optimizer]
    epochs = task.epochs if epochs is None else epochs
    n = len(task.x_train)
    steps = epochs * -(-n // task.batch)
    init_seq, order_seq = np.random.SeedSequence(seed).spawn(2)
    model = nn.MLP(task.sizes, rng=np.random.default_rng(init_seq))
    storage = {"state_dtype": state_dtype, "seed": seed}
    if state_dtype == "int8":
        storage["min_8bit_size"] = min_8bit_size
    if rounding is not None and state_dtype != "float32":
        storage["rounding"] = rounding
    opt = getattr(fo, cls)(model.params(), lr=CosineDecay(lrs[task.name], decay_steps=steps), **kwargs, **storage)
    grads = model.grads()
    order = np.random.default_rng(order_seq)
    t0 = time.perf_counter()
    curve = {"train_loss": [], "test_loss": [], "metric": []}
    te = task.evaluate(model, task.x_test, task.y_test)
    curve["train_loss"].append(task.evaluate(model, task.x_train, task.y_train)[0])
    curve["test_loss"].append(te[0])
    curve["metric"].append(te[1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(epochs):
            total = 0.0
            perm = order.permutation(n)
            for i in range(0, n, task.batch):
                idx = perm[i:i + task.batch]
                loss, d = task.loss(model.forward(task.x_train[idx]), task.y_train[idx])
                total += loss * len(idx)
                model.backward(d)
                opt.step(grads)
            te = task.evaluate(model, task.x_test, task.y_test)
            curve["train_loss"].append(total / n)
            curve["test_loss"].append(te[0])
            curve["metric"].append(te[1])
    train_loss = task.evaluate(model, task.x_train, task.y_train)[0]
    return {"task": task.name, "optimizer": optimizer, "label": label, "state_dtype": state_dtype, "seed": seed,
            "epochs": epochs, "train_loss": train_loss, "test_loss": curve["test_loss"][-1],
            "metric": curve["metric"][-1], "curve": curve, "state_storage": _storage(opt, model.params()),
            "seconds": time.perf_counter() - t0}


def run(tasks: Sequence[str] = ("digits", "regression"), optimizers: Sequence[str] = ("adam", "sgdm"),
        state_dtypes: Sequence[str] = STATE_DTYPES, seeds: Sequence[int] = range(5), *, long: bool = False,
        epochs: Optional[int] = None, min_8bit_size: int = 4096, rounding: Optional[str] = None,
        progress: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Every (task, optimizer, state dtype, seed) run (float32 always included: it is the
    reference), in that order; ``progress`` is called with each result."""
    dts = ["float32"] + [d for d in state_dtypes if d != "float32"]
    out = []
    for name in tasks:
        task = make_task(name, long)
        for opt in optimizers:
            for d in dts:
                for s in seeds:
                    r = train(task, opt, d, s, epochs, min_8bit_size, rounding)
                    out.append(r)
                    if progress is not None:
                        progress(r)
    return out


_METRICS = ("train_loss", "test_loss", "metric")


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}


def summarize(results: Sequence[dict]) -> List[dict]:
    """One row per (task, optimizer, state dtype), in the order of ``results``: ``n`` seeds,
    per metric (``train_loss``, ``test_loss``, ``metric``) the mean, std (ddof 1), min,
    max and values over the seeds; ``state_storage`` (the first run's); and, against the
    float32 row of the same task and optimizer, per metric ``within[metric]`` (the mean
    lies in float32's min..max) and ``runs_within[metric]`` (how many single runs do).
    The float32 row itself has ``within`` None."""
    groups: Dict[tuple, List[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["optimizer"], r["state_dtype"]), []).append(r)
    rows = []
    for (task, opt, dt), runs in groups.items():
        row = {"task": task, "optimizer": opt, "label": runs[0]["label"], "state_dtype": dt, "n": len(runs),
               "epochs": runs[0]["epochs"], "state_storage": runs[0]["state_storage"]}
        for m in _METRICS:
            row[m] = _stats([r[m] for r in runs])
        rows.append(row)
    ref = {(r["task"], r["optimizer"]): r for r in rows if r["state_dtype"] == "float32"}
    for row in rows:
        base = ref.get((row["task"], row["optimizer"]))
        if row["state_dtype"] == "float32" or base is None:
            row["within"] = row["runs_within"] = None
            continue
        row["within"], row["runs_within"] = {}, {}
        for m in _METRICS:
            lo, hi = base[m]["min"], base[m]["max"]
            row["within"][m] = bool(lo <= row[m]["mean"] <= hi)
            row["runs_within"][m] = sum(lo <= v <= hi for v in row[m]["values"])
    return rows


def _pm(s: dict, digits: int) -> str:
    """``mean ± std``; a diverged configuration (huge or NaN) in 3 significant digits."""
    if not (abs(s["mean"]) < 1e3 and abs(s["std"]) < 1e3):
        return f"{s['mean']:.3g} ± {s['std']:.3g}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def format_report(rows: Sequence[dict]) -> str:
    """The table of :func:`summarize`'s rows, the verdict per row and the state storage."""
    from ..demo.report import storage_text, table
    headers = ["task", "optimizer", "state", "seeds", "train loss", "test loss", "test acc / R²",
               "in f32 spread (mean; runs)"]
    out_rows = []
    for r in rows:
        if r["within"] is None:
            verdict = "reference"
        else:
            verdict = "; ".join(f"{short} {'yes' if r['within'][m] else 'NO'} {r['runs_within'][m]}/{r['n']}"
                                for short, m in (("loss", "test_loss"), ("acc", "metric")))
        out_rows.append([r["task"], r["label"], r["state_dtype"], str(r["n"]), _pm(r["train_loss"], 5),
                         _pm(r["test_loss"], 4), _pm(r["metric"], 4), verdict])
    lines = [table(headers, out_rows, left=3), "",
             "mean ± std over the seeds (std with ddof 1); train loss over the whole training set after the last "
             "epoch; 'in f32 spread': whether the mean of this state dtype's final test loss / test accuracy "
             "(R² for the regression) lies in the min..max of the float32 runs of the same seeds, then how many "
             "of its single runs do"]
    checks = [r for r in rows if r["within"] is not None]
    if checks:
        inside = [r for r in checks if r["within"]["test_loss"] and r["within"]["metric"]]
        lines.append(f"within the float32 spread (test loss and accuracy/R²): {len(inside)} of {len(checks)} "
                     "low-precision configurations"
                     + ("" if len(inside) == len(checks) else "; outside: " + ", ".join(
                         f"{r['task']} {r['label']} {r['state_dtype']}" for r in checks if r not in inside)))
    lines.append("state storage (elements of the parameters, by the dtype of their optimizer state): "
                 + " | ".join(f"{r['task']} {r['label']} {r['state_dtype']}: {storage_text(r['state_storage'])}"
                              for r in rows if r["state_dtype"] != "float32"))
    return "\n".join(lines)


def plot(results: Sequence[dict], path: str) -> Optional[str]:
    """Test loss per epoch, one panel per (task, optimizer): each state dtype's mean over the
    seeds as a line and its min..max as a band.  None when matplotlib is missing."""
    from ..demo._util import pyplot
    plt = pyplot()
    if plt is None:
        return None
    panels: Dict[tuple, Dict[str, list]] = {}
    for r in results:
        panels.setdefault((r["task"], r["label"]), {}).setdefault(r["state_dtype"], []).append(r["curve"]["test_loss"])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    colors = {"float32": "C0", "bfloat16": "C1", "int8": "C2"}
    for ax, ((task, label), by) in zip(axes[0], panels.items()):
        for d, curves in by.items():
            c = np.asarray(curves, dtype=np.float64)
            ep = np.arange(c.shape[1])
            ax.plot(ep, c.mean(axis=0), color=colors.get(d, "C3"), label=f"{d} (mean of {len(c)})")
            ax.fill_between(ep, c.min(axis=0), c.max(axis=0), color=colors.get(d, "C3"), alpha=0.2)
        ax.set(title=f"{task}: {label}", xlabel="epoch", ylabel="test loss (log scale)", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _list(valid: Sequence[str], what: str):
    def parse(text: str) -> List[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        for x in items:
            if x not in valid:
                raise argparse.ArgumentTypeError(f"unknown {what} {x!r}; choose from {', '.join(valid)}")
        if not items:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return items
    return parse


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusedoptim.bench.quality",
        description="Train the demo's digits classifier and a teacher-student regression to convergence with "
                    "float32, bfloat16 and int8 optimizer state over several seeds; report final loss and "
                    "accuracy (R²) per state dtype and whether the low-precision runs fall within the float32 "
                    "spread (min..max over the seeds).  See bench/README.md.")
    p.add_argument("--tasks", type=_list(list(TASKS), "task"), default=list(TASKS),
                   help="comma list: " + ", ".join(TASKS) + " (default both)")
    p.add_argument("--optimizers", type=_list(list(OPTIMIZERS), "optimizer"), default=["adam", "sgdm"],
                   help="comma list: " + ", ".join(OPTIMIZERS) + " (default adam,sgdm)")
    p.add_argument("--state-dtypes", type=_list(list(STATE_DTYPES), "state dtype"), default=list(STATE_DTYPES),
                   help="comma list (float32, the reference, is always run): " + ", ".join(STATE_DTYPES))
    p.add_argument("--seeds", type=_positive, default=None, help="seeds per configuration (default 5; 10 with --long)")
    p.add_argument("--epochs", type=_positive, default=None,
                   help="epochs of every run (default per task: digits 20, regression 40; 60 and 150 with --long)")
    p.add_argument("--long", action="store_true", help="the long version: more epochs and 10 seeds")
    p.add_argument("--min-8bit-size", type=_non_negative, default=4096,
                   help="min_8bit_size of the int8 runs: smaller tensors keep float32 state (default 4096, the "
                        "library's; 0: every tensor 8-bit)")
    p.add_argument("--rounding", choices=("stochastic", "nearest"), default=None,
                   help="rounding of the bfloat16 and int8 state (default: each storage's, stochastic for bfloat16, "
                        "nearest for int8)")
    p.add_argument("--threads", type=_positive, default=1,
                   help="threads of opt.step and of NumPy's BLAS (default 1; the results do not depend on it)")
    p.add_argument("--json", metavar="PATH", help="write every run (curves included) and the summary as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw the test-loss curves per state dtype (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no line per run")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import fusedoptim as fo
    args = build_parser().parse_args(argv)
    from ..demo._util import blas_threads
    seeds = range(args.seeds if args.seeds is not None else (10 if args.long else 5))
    fo.set_num_threads(args.threads)
    blas_limit, blas_note = blas_threads(args.threads)
    t0 = time.perf_counter()

    def say(r: dict) -> None:
        if not args.quiet:
            print(f"  {r['task']:<10} {r['label']:<12} {r['state_dtype']:<8} seed {r['seed']}: train loss "
                  f"{r['train_loss']:.5f}  test loss {r['test_loss']:.4f}  {r['metric']:.4f}  "
                  f"({r['seconds']:.1f} s)", flush=True)

    others = [d for d in args.state_dtypes if d != "float32"]
    print(f"fusedoptim {fo.__version__} quality benchmark: tasks {','.join(args.tasks)}, optimizers "
          f"{','.join(args.optimizers)}, state dtypes {','.join(['float32 (reference)'] + others)}, "
          f"{len(seeds)} seeds, {'long' if args.long else 'default'} epochs, int8 min_8bit_size "
          f"{args.min_8bit_size}, rounding {args.rounding or 'default'}, step threads {fo.get_num_threads()}, "
          f"{blas_note}", flush=True)
    try:
        with blas_limit:
            results = run(args.tasks, args.optimizers, args.state_dtypes, seeds, long=args.long, epochs=args.epochs,
                          min_8bit_size=args.min_8bit_size, rounding=args.rounding, progress=say)
    finally:
        fo.set_num_threads(0)
    rows = summarize(results)
    print()
    print(format_report(rows))
    print(f"{len(results)} runs in {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": {"tasks": args.tasks, "optimizers": args.optimizers,
                                  "state_dtypes": args.state_dtypes, "seeds": list(seeds), "long": args.long,
                                  "epochs": args.epochs, "min_8bit_size": args.min_8bit_size,
                                  "rounding": args.rounding, "threads": args.threads,
                                  "spread": "float32 min..max over the seeds"},
                       "summary": rows, "runs": results}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {args.plot}" if plot(results, args.plot) else
              "note: --plot skipped: matplotlib is not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
