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
from typing import Dict, List, Optional, Sequence

import numpy as np

import fusedoptim as fo
from .. import nn
from . import data as _data
from ..lowp import STATE_DTYPES
from .choices import ALIASES, OptSpec, demo_optimizers, lookahead, probe, with_state_dtype
from .report import state_storage
from ._util import DemoError, SCHEDULES, blas_threads, clip_function, make_schedule, progress
from . import parallel
from .parallel import World, slice_weight

__all__ = ["OptSpec", "OPTIMIZERS", "train_one", "evaluate", "build_parser", "main"]


OPTIMIZERS: Dict[str, OptSpec] = demo_optimizers()
_ALIASES = ALIASES


def _spec_for(name: str) -> Optional[OptSpec]:
    """The OptSpec of key ``name`` (aliases included; ``lookahead-<key>`` wraps any other)."""
    spec = OPTIMIZERS.get(_ALIASES.get(name, name))
    if spec is None and name.startswith("lookahead-"):
        inner = _spec_for(name[len("lookahead-"):])
        if inner is not None and inner.inner is None:
            return lookahead(inner)
    return spec


def parse_optimizers(text: str, lr_override: Optional[float],
                     skipped: Optional[List[tuple]] = None) -> List[tuple]:
    """``"all"`` or a comma list of ``name`` / ``name=lr`` -> [(OptSpec, lr)].  ``name`` is
    an optimizer's key, an alias, or ``lookahead-<key>`` (Lookahead around that one).

    Every optimizer is checked with ``choices.probe`` first: one named explicitly that
    cannot run in this comparison is an error; ``all`` leaves it out and appends
    ``(label, reason)`` to ``skipped``."""
    out = []
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise DemoError("--optimizers is empty")
    for item in items:
        name, _, lr_text = item.partition("=")
        name = name.strip().lower()
        if name == "all":
            for s in OPTIMIZERS.values():
                why = probe(s)
                if why is None:
                    out.append((s, s.lr if lr_override is None else lr_override))
                elif skipped is not None:
                    skipped.append((s.label, why))
            continue
        spec = _spec_for(name)
        if spec is None:
            raise DemoError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}, lookahead-<name> "
                            "(or all)")
        lr = spec.lr if lr_override is None else lr_override
        if lr_text:
            try:
                lr = float(lr_text)
            except ValueError:
                raise DemoError(f"--optimizers {item!r}: {lr_text!r} is not a learning rate") from None
        if not (lr >= 0 and math.isfinite(lr)):
            raise DemoError(f"--optimizers {item!r}: learning rate must be a finite number >= 0")
        why = probe(spec)
        if why is not None:
            raise DemoError(f"--optimizers {item!r}: {spec.label} cannot run in this comparison ({why})")
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
              show_progress: bool = True, world: Optional["World"] = None) -> dict:
    """Train a fresh MLP with one optimizer; return its numbers and per-epoch history.

    ``wall_s`` is the whole run (evaluation included), ``train_s`` the training loop
    alone (batching, forward, backward, clipping, step) and ``step_s`` the time inside
    ``opt.step``.  Train loss/accuracy per epoch are running means over the epoch's
    batches; the final ones are a full pass over the training set.

    With ``world`` (a ``parallel.World``; collective: every rank calls it with the same
    arguments) each global batch of ``batch_size`` is split into contiguous per-rank
    slices, and ``DistributedOptimizer.allreduce`` averages the slices' gradients (one
    Allreduce, timed as ``allreduce_s``) before the step; the result also holds the
    world size, every rank's times and the parameters' SHA-256, checked to be the same
    on every rank (``ranks_bit_identical``).  Evaluation is not split: every rank
    evaluates the whole sets (same parameters, same numbers).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # divergence is reported
        return _train_one(spec, lr, dataset, hidden, epochs, batch_size, schedule, clip_norm, target_acc,
                          seed, show_progress, world)


def _train_one(spec, lr, dataset, hidden, epochs, batch_size, schedule, clip_norm, target_acc, seed,
               show_progress, world) -> dict:
    """Training of one run (see train_one)."""
    x, y = dataset.x_train, dataset.y_train
    n = len(x)
    if n == 0:
        raise DemoError("the training set is empty")
    init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
    model = nn.MLP([dataset.n_features, *hidden, dataset.n_classes], rng=np.random.default_rng(init_seq))
    grads = model.grads()
    steps_per_epoch = -(-n // batch_size)
    closure_step = spec.closure
    why = unsupported(spec, schedule, clip_norm, world is not None)
    if why is not None:
        raise DemoError(f"{spec.label}: {why}")
    opt = spec.build(model.params(), make_schedule(schedule, lr, epochs * steps_per_epoch))
    clip = clip_function() if clip_norm else None
    order_rng = np.random.default_rng(shuffle_seq)
    steps = 0
    if world is not None:
        from ..distributed import DistributedOptimizer, assert_synchronized
        # every rank built the same model from the same seed; the wrapper still broadcasts
        # rank 0's parameters and state, the recommended start.  Steps go to ``opt`` itself
        # so that the Allreduce and the step are timed apart.
        dist = DistributedOptimizer(opt, world.comm)
        nw = world.size

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
        lr_now = sched(steps) if callable(sched) else sched     # the next step's lr
        for k, v in zip(keys, (epoch, t, lr_now, tr_loss, tr_acc, te_loss, te_acc)):
            hist[k].append(v)
        return te_acc

    t_run = time.perf_counter()
    record(0, 0.0, *evaluate(model, x, y))
    if clip is not None:
        hist["grad_norm"].append(None)
    train_s = step_s = allreduce_s = 0.0
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
            if world is not None:                  # this rank's slice of the global batch
                lo, hi = world.bounds(len(idx))
                weight = slice_weight(hi - lo, len(idx), nw)
                idx = idx[lo:hi]
            m = len(idx)
            xm, ym, dm = xb[:m], yb[:m], dlogits[:m]
            np.take(x, idx, axis=0, out=xm, mode="clip")
            np.take(y, idx, out=ym, mode="clip")
            logits = model.forward(xm)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == ym))
            loss, dl = nn.softmax_cross_entropy(logits, ym, out=dm)
            loss_sum += loss * m
            if world is not None and weight != 1.0:    # uneven slices: weigh by slice size
                dl *= dl.dtype.type(weight)
            model.backward(dl)
            g = grads
            if world is not None:
                ta = perf()
                g = dist.allreduce(grads)          # one Allreduce, then / world: the global mean
                allreduce_s += perf() - ta
            if clip is not None:                   # on the averaged gradient: same bits, same decision
                norm_sum += float(clip(g, clip_norm))
            ts = perf()
            if closure_step:                       # LBFGS: the loss and gradients at any point of its search
                opt.step(lambda xm=xm, ym=ym, dm=dm: _loss_and_grads(model, grads, xm, ym, dm))
            else:
                opt.step(g)
            step_s += perf() - ts
            steps += 1
        train_s += perf() - t0
        if world is not None:                      # the epoch's sums over every rank's slices
            loss_sum, correct = world.sum(loss_sum, correct)
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
    storage = state_storage(opt, model.params())
    final_train = evaluate(model, x, y)
    final_test = (hist["test_loss"][-1], hist["test_acc"][-1])
    wall_s = time.perf_counter() - t_run
    result = {
        "optimizer": spec.key, "label": spec.label, "class": spec.cls, "lr": lr,
        "state_dtype": spec.state_dtype, "state_storage": storage,
        "hyperparameters": {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "lr")},
        "wall_s": wall_s, "train_s": train_s, "step_s": step_s, "steps": steps,
        "step_us": 1e6 * step_s / max(steps, 1),
        "epochs_run": hist["epoch"][-1], "diverged": diverged,
        "epochs_to_target": epochs_to_target, "time_to_target_s": time_to_target,
        "final": {"train_loss": final_train[0], "train_acc": final_train[1],
                  "test_loss": final_test[0], "test_acc": final_test[1]},
        "history": hist,
    }
    if world is not None:
        try:
            digest, identical = assert_synchronized(model.params(), world.comm), True
        except AssertionError:                     # raised on every rank alike
            digest, identical = None, False
        times = world.gather((wall_s, train_s, allreduce_s, step_s))
        result.update({
            "world_size": nw, "allreduce_s": allreduce_s, "allreduce_us": 1e6 * allreduce_s / max(steps, 1),
            "per_rank": {k: [t[i] for t in times]
                         for i, k in enumerate(("wall_s", "train_s", "allreduce_s", "step_s"))},
            "ranks_bit_identical": identical, "params_sha256": digest,
        })
    return result


def unsupported(spec: OptSpec, schedule: str, clip_norm, distributed: bool) -> Optional[str]:
    """Why ``spec`` cannot run with these options, or None.  A closure optimizer (LBFGS)
    evaluates the loss several times per step: no schedule, clipping or data parallelism;
    ``--distributed`` needs one optimizer stepping the whole parameter list from gradients."""
    if spec.closure and (schedule != "none" or clip_norm or distributed):
        return ("takes step(closure) (it evaluates the loss several times per step): --schedule, --clip-norm and "
                "--distributed do not apply to it")
    if distributed and (spec.step_kind != "grads" or spec.matrix_only):
        return "--distributed runs optimizers that step one parameter list from gradients"
    return None


def _loss_and_grads(model, grads, xm, ym, dm):
    """An LBFGS closure's value: (mean loss, gradients) of ``model`` on the batch, the
    gradients written into ``grads`` (LBFGS copies them before its next call)."""
    logits = model.forward(xm)
    loss, dl = nn.softmax_cross_entropy(logits, ym, out=dm)
    model.backward(dl)
    return loss, grads


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


def _lookahead(text):
    k_text, _, alpha_text = text.partition(",")
    try:
        k = int(k_text)
        alpha = float(alpha_text) if alpha_text.strip() else 0.5
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or K,ALPHA (e.g. 5,0.5), got {text!r}") from None
    if k < 1 or not 0.0 <= alpha < 1.0:
        raise argparse.ArgumentTypeError(f"K must be >= 1 and ALPHA in [0, 1), got {text!r}")
    return k, alpha


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusedoptim demo",
        description="Train one MLP with each optimizer from the same initialization and compare "
                    "time (total and inside opt.step), epochs to a target accuracy, and final "
                    "accuracy/loss.  Data: scikit-learn's handwritten digits (default) or MNIST "
                    "from local IDX files.  See also: fusedoptim demo toy2d --help.",
        epilog=f"optimizers: {', '.join(f'{s.key} (lr {s.lr:g})' for s in OPTIMIZERS.values())}")
    p.add_argument("--optimizers", default=None, metavar="LIST",
                   help="comma list of optimizer names, each optionally name=lr (default: all, every optimizer "
                        "fusedoptim exports; adam with --state-dtype); lookahead-NAME runs Lookahead around NAME")
    p.add_argument("--state-dtype", default=None, metavar="LIST",
                   help="run every optimizer once per optimizer-state dtype of this comma list (" + ", ".join(
                       STATE_DTYPES) + "), from the same start, and draw the runs side by side, e.g. "
                       "float32,bfloat16,int8; also prints how many elements had each state storage")
    p.add_argument("--min-8bit-size", type=int, default=None, metavar="N",
                   help="min_8bit_size of the int8 runs: smaller tensors keep float32 state (default: the "
                        "library's, 4096; 0: every tensor 8-bit)")
    p.add_argument("--lookahead", type=_lookahead, metavar="K,ALPHA",
                   help="wrap every optimizer in fusedoptim.Lookahead(opt, k=K, alpha=ALPHA) (ALPHA default 0.5)")
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
    p.add_argument("--distributed", action="store_true",
                   help="data parallel over MPI: run as 'mpiexec -n N python -m fusedoptim demo --distributed'; "
                        "each global batch is split across the N ranks and the gradients averaged by "
                        "fusedoptim.distributed.DistributedOptimizer (one Allreduce per step); rank 0 prints "
                        "and writes the files (needs pip install 'fusedoptim[mpi]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def _state_dtypes(text: Optional[str]) -> List[str]:
    """``--state-dtype``'s comma list, checked ([] when not given)."""
    if text is None:
        return []
    items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not items:
        raise DemoError("--state-dtype is empty; give a comma list of " + ", ".join(STATE_DTYPES))
    for d in items:
        if d not in STATE_DTYPES:
            raise DemoError(f"--state-dtype: unknown state dtype {d!r}; choose from {', '.join(STATE_DTYPES)}")
    return items


def _per_state_dtype(runs: List[tuple], state_dtypes: Sequence[str], min_8bit_size: Optional[int],
                     skipped: List[tuple]) -> List[tuple]:
    """Each (spec, lr) once per state dtype, in that order; a combination the optimizer
    refuses (checked with ``choices.probe``: Adafactor and LBFGS keep float32 state) is left
    out with a note."""
    out = []
    for spec, lr in runs:
        for d in state_dtypes:
            s = with_state_dtype(spec, d, min_8bit_size)
            why = probe(s)
            if why is None:
                out.append((s, lr))
            else:
                skipped.append((s.label, why))
    return out


def _load(args) -> _data.Dataset:
    if args.mnist:
        ds = _data.load_mnist(args.mnist)
        if args.quick:
            ds = ds.subset(min(len(ds.x_train), 5000), min(len(ds.x_test), 1000), args.seed)
        return ds
    return _data.load_digits(args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lr is not None and not (args.lr >= 0 and math.isfinite(args.lr)):
        raise DemoError(f"--lr must be a finite number >= 0, got {args.lr}")
    if not 0.0 <= args.target_acc <= 1.0:
        raise DemoError(f"--target-acc must be in [0, 1], got {args.target_acc}")
    launched = parallel.launched_size()
    if launched > 1 and not args.distributed:
        raise DemoError(f"started by an MPI launcher as one of {launched} processes, but without "
                        "--distributed every process would run the whole demo and write the same files; "
                        "add --distributed (or run a single process)")
    state_dtypes = _state_dtypes(args.state_dtype)
    if args.min_8bit_size is not None and args.min_8bit_size < 0:
        raise DemoError(f"--min-8bit-size must be >= 0, got {args.min_8bit_size}")
    skipped: List[tuple] = []
    runs = parse_optimizers(args.optimizers or ("adam" if state_dtypes else "all"), args.lr, skipped)
    if args.lookahead:
        wrapped = []
        for spec, lr in runs:
            if spec.inner is not None or spec.step_kind != "grads" or spec.matrix_only:
                skipped.append((spec.label, "--lookahead wraps optimizers that step one parameter list from "
                                            "gradients"))
                continue
            wrapped.append((lookahead(spec, *args.lookahead), lr))
        runs = wrapped
        if not runs:
            raise DemoError("--lookahead: none of the optimizers can be wrapped")
    if state_dtypes:
        runs = _per_state_dtype(runs, state_dtypes, args.min_8bit_size, skipped)
    kept = []
    for spec, lr in runs:
        why = unsupported(spec, args.schedule, args.clip_norm, args.distributed)
        if why is None:
            kept.append((spec, lr))
        else:
            skipped.append((spec.label, why))
    if not kept:
        raise DemoError("none of the optimizers can run with these options: "
                        + "; ".join(f"{label}: {why}" for label, why in skipped))
    runs = kept
    epochs = args.epochs or (8 if args.quick else 20)
    if args.schedule != "none":
        make_schedule(args.schedule, 1.0, 1)   # fail now, not after loading data
    if args.clip_norm:
        clip_function()
    world = parallel.connect() if args.distributed else None
    dataset = _load(args)                      # every rank loads the same data, or fails alike
    if world is None:
        return _run(args, runs, epochs, dataset, None, skipped)
    try:
        return _run(args, runs, epochs, dataset, world, skipped)
    except BaseException:
        if world.size > 1:                     # don't leave the other ranks in a collective
            world.abort(1)
        raise


def _run(args, runs, epochs, dataset: _data.Dataset, world: Optional[World], skipped=()) -> int:
    """Train every run, then (rank 0) print the table and write the JSON and PNG."""
    from . import report

    root = world is None or world.root
    say = print if root else _quiet
    if root:
        os.makedirs(args.out, exist_ok=True)
    threads = args.threads
    if world is not None and not threads:
        # keep ranks x threads within the cores (MPI ranks on one machine share them)
        threads = max(1, fo.get_num_threads() // world.local_size())

    say(f"fusedoptim {fo.__version__} demo: {dataset.describe()}")
    for label, why in skipped:
        say(f"note: {label} is left out of this comparison: {why}")
    blas_limit, blas_note = blas_threads(args.blas_threads)
    sizes = [dataset.n_features, *args.hidden, dataset.n_classes]
    say(f"MLP {'-'.join(map(str, sizes))} (ReLU), "
        f"{epochs} epochs, batch {args.batch_size}, schedule {args.schedule}, "
        f"clip {args.clip_norm or 'off'}, seed {args.seed}, step threads "
        f"{threads if threads else fo.get_num_threads()}{' per rank' if world else ''}, {blas_note}")
    if world is not None:
        per = "/".join(map(str, sorted(set(parallel.slice_sizes(args.batch_size, world.size)), reverse=True)))
        n_grad = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        say(f"distributed: {world.size} rank{'s' if world.size != 1 else ''} ({world.library()}), "
            f"each global batch of {args.batch_size} split into slices of {per}, "
            f"one Allreduce of {n_grad} float32 gradients ({4 * n_grad / 1024:.1f} KiB) per step")
    if threads:
        fo.set_num_threads(threads)
    results = []
    try:
        with blas_limit:
            for i, (spec, lr) in enumerate(runs, 1):
                r = train_one(spec, lr, dataset, hidden=args.hidden, epochs=epochs, batch_size=args.batch_size,
                              schedule=args.schedule, clip_norm=args.clip_norm, target_acc=args.target_acc,
                              seed=args.seed, show_progress=root and not args.no_progress, world=world)
                results.append(r)
                f = r["final"]
                times = (f"allreduce {r['allreduce_s']:.3f} s, step {r['step_s']:.3f} s" if world is not None
                         else f"step {r['step_s']:.3f} s")
                say(f"[{i}/{len(runs)}] {spec.label:<12} lr {lr:<8g} test acc {f['test_acc']:.4f}  "
                    f"{r['wall_s']:.2f} s ({times})" + ("  DIVERGED" if r["diverged"] else "")
                    + ("  RANKS DIFFER" if r.get("ranks_bit_identical") is False else ""),
                    flush=True)
    finally:
        if threads:
            fo.set_num_threads(0)

    synced = all(r.get("ranks_bit_identical", True) for r in results)
    if not root:
        return 0 if synced else 1
    print()
    print(report.format_table(results, args.target_acc))
    if args.state_dtype:
        print(_state_dtype_lines(results, args.min_8bit_size))
    if world is not None:
        print(report.sync_summary(results, world.size))
    config = {
        "dataset": dataset.name, "n_train": len(dataset.x_train), "n_test": len(dataset.x_test),
        "n_features": dataset.n_features, "n_classes": dataset.n_classes,
        "sizes": sizes, "activation": "relu",
        "epochs": epochs, "batch_size": args.batch_size, "schedule": args.schedule,
        "clip_norm": args.clip_norm, "target_acc": args.target_acc, "seed": args.seed,
        "quick": args.quick, "threads": threads or fo.get_num_threads(),
        "blas_threads": args.blas_threads, "blas_note": blas_note,
        "distributed": world is not None, "world_size": world.size if world is not None else 1,
        "state_dtypes": _state_dtypes(args.state_dtype) or None, "min_8bit_size": args.min_8bit_size,
    }
    if world is not None:
        config.update({"mpi_library": world.library(), "ranks_bit_identical": synced,
                       "slice_sizes": parallel.slice_sizes(args.batch_size, world.size)})
    stem = os.path.join(args.out, f"demo_{dataset.name}")
    doc = report.document(config, results)
    doc["ranking"] = [r["optimizer"] for r in report.ranked(results)]     # the table's order
    doc["summary"] = report.summary(results, args.target_acc)
    report.write_json(stem + ".json", doc)
    print(f"\nwrote {stem}.json")
    if not args.no_plot:
        ranks = f", {world.size} ranks" if world is not None else ""
        dts = f", optimizer state {' / '.join(_state_dtypes(args.state_dtype))}" if args.state_dtype else ""
        png = report.plot_curves(results, stem + ".png",
                                 title=f"{dataset.name}: MLP {'-'.join(map(str, sizes))}, "
                                       f"batch {args.batch_size}, schedule {args.schedule}{ranks}{dts}",
                                 target_acc=args.target_acc, by_state_dtype=bool(args.state_dtype))
        if png:
            print(f"wrote {png}")
    return 0 if synced else 1


def _state_dtype_lines(results: List[dict], min_8bit_size: Optional[int]) -> str:
    """After the table of a ``--state-dtype`` run: the elements of each state storage per
    run, then per optimizer the final test accuracy and loss of each state dtype next to
    float32's."""
    import inspect
    from . import report
    from ..lowp import check_lowp_options
    if min_8bit_size is None:
        min_8bit_size = inspect.signature(check_lowp_options).parameters["min_8bit_size"].default
    note = (f"; with int8, tensors under min_8bit_size={min_8bit_size} elements keep float32 state"
            if any(r["state_dtype"] == "int8" for r in results) else "")
    lines = [f"state storage (parameter elements by the dtype of their optimizer state{note}):",
             report.format_state_storage(results)]
    by_opt: Dict[str, Dict[str, dict]] = {}
    for r in results:
        by_opt.setdefault(r["label"].rsplit(" [", 1)[0], {})[r["state_dtype"]] = r
    for label, by in by_opt.items():
        base = by.get("float32")
        parts = []
        for d, r in by.items():
            f = r["final"]
            delta = ""
            if base is not None and d != "float32":
                b = base["final"]
                delta = (f" ({f['test_acc'] - b['test_acc']:+.4f}, loss {f['test_loss'] - b['test_loss']:+.4f} "
                         "vs float32)")
            parts.append(f"{d} {f['test_acc']:.4f} / {f['test_loss']:.4f}{delta}")
        lines.append(f"{label}: final test accuracy / loss: " + "; ".join(parts))
    lines.append("one seed, the same start and batch order for every state dtype; across seeds: "
                 "python -m fusedoptim.bench.quality")
    return "\n".join(lines)


def _quiet(*args, **kwargs) -> None:
    """print for the ranks other than 0: nothing."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
