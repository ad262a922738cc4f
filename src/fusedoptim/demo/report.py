"""Tables, JSON and plots of the demo results."""
from __future__ import annotations

import json
import math
import platform
import sys
from typing import List, Optional, Sequence

import numpy as np

import fusedoptim as fo
from ._util import PIP_HINT, finite, pyplot

__all__ = ["table", "ranked", "summary", "format_summary", "format_table", "sync_summary", "document", "write_json",
           "plot_curves", "curves_figure", "line_style", "state_style", "state_storage", "storage_text",
           "format_state_storage"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _sort_key(r: dict):
    """Runs that reached the target first (fewest epochs, then least training time), then
    the others by final test accuracy; diverged runs last."""
    acc = r["final"]["test_acc"]
    acc = acc if acc is not None and math.isfinite(acc) else -1.0
    reached = r["epochs_to_target"] is not None
    return (bool(r["diverged"]) and not reached, not reached,
            r["epochs_to_target"] if reached else 0, r["time_to_target_s"] if reached else 0.0, -acc)


def ranked(results: List[dict]) -> List[dict]:
    """The runs in the table's order (see ``_sort_key``)."""
    return sorted(results, key=_sort_key)


def _leaders(results: List[dict], value, best) -> tuple:
    """(best value, labels of the runs that have it) over the runs where ``value`` is known."""
    vals = [(value(r), r["label"]) for r in results]
    vals = [(v, lab) for v, lab in vals if v is not None and math.isfinite(v)]
    if not vals:
        return None, []
    top = best(v for v, _ in vals)
    return top, [lab for v, lab in vals if v == top]


def summary(results: List[dict], target_acc: float) -> dict:
    """Who won: fewest epochs to the target, least training time to it, best final test
    accuracy (``None`` and no labels where no run qualifies; ties list every label)."""
    ep, ep_who = _leaders(results, lambda r: r["epochs_to_target"], min)
    t, t_who = _leaders(results, lambda r: r["time_to_target_s"], min)
    acc, acc_who = _leaders(results, lambda r: r["final"]["test_acc"], max)
    return {"target_acc": target_acc,
            "fewest_epochs_to_target": {"epochs": ep, "optimizers": ep_who},
            "least_time_to_target": {"train_s": t, "optimizers": t_who},
            "best_final_test_acc": {"test_acc": acc, "optimizers": acc_who}}


def format_summary(results: List[dict], target_acc: float) -> str:
    """The summary as one line, e.g. ``fewest epochs to 0.95: Adagrad (4) | ...``."""
    s = summary(results, target_acc)
    e, t, a = s["fewest_epochs_to_target"], s["least_time_to_target"], s["best_final_test_acc"]
    none = "no run reached it"
    parts = [f"fewest epochs to {target_acc:g}: " + (f"{', '.join(e['optimizers'])} ({e['epochs']})"
                                                     if e["optimizers"] else none),
             f"least training time to {target_acc:g}: " + (f"{', '.join(t['optimizers'])} ({t['train_s']:.2f} s)"
                                                            if t["optimizers"] else none),
             "best final test accuracy: " + (f"{', '.join(a['optimizers'])} ({a['test_acc']:.4f})"
                                             if a["optimizers"] else "none (every run diverged)")]
    return " | ".join(parts)


def format_table(results: List[dict], target_acc: float) -> str:
    """One row per run, sorted (``ranked``), then the column notes and the summary line.
    Runs of ``--distributed`` (with ``world_size``) add the number of ranks and the time
    inside the gradient Allreduce next to the time inside the step."""
    dist = any("world_size" in r for r in results)
    headers = ["optimizer", "lr"] + (["ranks"] if dist else []) + ["wall s", "train s"] \
        + (["allreduce s", "allreduce %"] if dist else []) + ["step s", "step %"] \
        + [f"epochs to {target_acc:g}", "train acc", "test acc", "train loss", "test loss"]
    rows = []
    for r in ranked(results):
        f = r["final"]
        reach = str(r["epochs_to_target"]) if r["epochs_to_target"] is not None else \
            ("diverged" if r["diverged"] else "not reached")
        row = [r["label"], format(r["lr"], "g")]
        if dist:
            row.append(str(r.get("world_size", 1)))
        row += [_num(r["wall_s"], ".2f"), _num(r["train_s"], ".2f")]
        if dist:
            ar = r.get("allreduce_s")
            row += [_num(ar, ".3f"), _num(_pct(ar, r["train_s"]), ".1f")]
        row += [_num(r["step_s"], ".3f"), _num(_pct(r["step_s"], r["train_s"]), ".1f"),
                reach, _num(f["train_acc"], ".4f"), _num(f["test_acc"], ".4f"),
                _num(f["train_loss"], ".4f"), _num(f["test_loss"], ".4f")]
        rows.append(row)
    note = ("sorted by epochs to the target, then training time to it, then final test accuracy\n"
            "wall: whole run incl. evaluation; train: training loop (batching, forward, backward, step); "
            "step: inside opt.step")
    if dist:
        note += ("\nallreduce: inside DistributedOptimizer.allreduce (one Allreduce of the gradients, the "
                 "division by the world size, and waiting for the slowest rank); times are rank 0's, every "
                 "rank's are in the JSON (per_rank)")
    return table(headers, rows) + "\n" + format_summary(results, target_acc) + "\n" + note


def state_storage(opt, params) -> dict:
    """Elements of ``params`` by the storage of their optimizer state, e.g. ``{"int8": 8192,
    "float32": 1418}``: ``"int8"`` (uint8 codes), ``"bfloat16"``, ``"float32"``, ``"float64"``;
    ``"none"`` for a parameter without state of its shape (SGD without momentum; Adafactor's
    factored row and column statistics) and
    ``"unknown"`` where the optimizer's ``state`` is not ``opt.state[param]`` (the demo's
    Muon/AdamW split has none, LBFGS keeps one dict of its own)."""
    from ..lowp import ABSMAX_SUFFIX, is_bfloat16
    state = getattr(opt, "state", None)
    out: dict = {}
    for p in params:
        kind = "unknown"
        try:
            st = state.get(p) if state is not None else None
        except (TypeError, AttributeError):      # not keyed by parameter
            state = None
        if state is not None:
            kinds = sorted({"int8" if v.dtype == np.uint8 else "bfloat16" if is_bfloat16(v.dtype) else str(v.dtype)
                            for k, v in (st.items() if hasattr(st, "items") else ())
                            if isinstance(v, np.ndarray) and v.shape == p.shape and not k.endswith(ABSMAX_SUFFIX)})
            kind = "+".join(kinds) if kinds else "none"
        out[kind] = out.get(kind, 0) + int(p.size)
    return out


def storage_text(storage: dict) -> str:
    """``state_storage``'s counts as text, largest first: ``int8 8192 (85.2%), float32 1418 (14.8%)``."""
    total = sum(storage.values()) or 1
    return ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in sorted(storage.items(), key=lambda kv: -kv[1]))


def format_state_storage(results: List[dict]) -> str:
    """One line per run that has ``state_storage``: ``  Adam [int8]: int8 8192 (85.2%), ...``."""
    return "\n".join(f"  {r['label']}: {storage_text(r['state_storage'])}" for r in results if r.get("state_storage"))


def _pct(part, whole):
    return 100 * part / whole if part is not None and whole else None


def sync_summary(results: List[dict], world_size: int) -> str:
    """One line: whether every rank ended every run with the same parameter bits."""
    bad = [r["label"] for r in results if r.get("ranks_bit_identical") is False]
    if bad:
        return (f"ranks NOT bit-identical after: {', '.join(bad)} (fusedoptim.distributed.assert_synchronized "
                f"over {world_size} ranks); please report this")
    if world_size == 1:
        return "ranks bit-identical: one rank, nothing to compare (fusedoptim.distributed.assert_synchronized)"
    return (f"ranks bit-identical: the parameters of all {world_size} ranks have the same SHA-256 after every "
            f"run (fusedoptim.distributed.assert_synchronized)")


def _clean(x):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite(x)
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return repr(x)


def document(config: dict, results: List[dict]) -> dict:
    """Everything a demo measured, with the versions and machine it ran on."""
    return _clean({
        "fusedoptim_version": fo.__version__, "numpy_version": np.__version__,
        "python": sys.version.split()[0], "machine": platform.machine(),
        "config": config, "runs": results,
    })


def write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_clean(doc), f, indent=1, allow_nan=False)
        f.write("\n")


def missing_matplotlib(what: str) -> None:
    print(f"note: {what} skipped: matplotlib is not installed; {PIP_HINT}", file=sys.stderr)


# Line styles: a colour and a dash pattern per optimizer, both changing from one optimizer
# to the next, so curves that lie on top of each other (Adam and AdamW) stay apart.
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#00008b", "#8b0000", "#006400")
_DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))


def line_style(i: int) -> dict:
    """matplotlib keywords of the i-th optimizer's curves."""
    return dict(color=_COLORS[i % len(_COLORS)], linestyle=_DASHES[i % len(_DASHES)], lw=1.6)


def plot_curves(results: List[dict], path: str, title: str = "", target_acc: Optional[float] = None,
                by_state_dtype: bool = False) -> Optional[str]:
    """Loss and accuracy per epoch, and test accuracy against training time, one line per
    optimizer (in the table's order), one legend for the four panels, the target accuracy
    as a dotted line.  Accuracy uses a logit axis, so the first epochs (far from the
    target) and the last (close to 1) are both readable.  Returns the path, or None (with
    a note) when matplotlib is missing.  ``by_state_dtype`` (``demo --state-dtype``): one
    colour per optimizer, one dash pattern per state dtype (``state_style``)."""
    plt = pyplot()
    if plt is None:
        missing_matplotlib(f"plot {path}")
        return None
    fig = curves_figure(plt, results, title, target_acc, by_state_dtype)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def state_style(results: List[dict]):
    """``style(run) -> matplotlib keywords`` for runs that differ in their state dtype:
    the colour follows the optimizer (the label without `` [dtype]``), the dash pattern
    the state dtype (float32 solid, then bfloat16, int8 in ``fusedoptim.lowp.STATE_DTYPES``'s
    order); with a single optimizer the colour follows the state dtype too."""
    from ..lowp import STATE_DTYPES
    bases = list(dict.fromkeys(r["label"].rsplit(" [", 1)[0] for r in results))

    def style(r):
        dt = r.get("state_dtype", "float32")
        k = STATE_DTYPES.index(dt) if dt in STATE_DTYPES else len(STATE_DTYPES)
        c = k if len(bases) == 1 else bases.index(r["label"].rsplit(" [", 1)[0])
        return dict(color=_COLORS[c % len(_COLORS)], linestyle=_DASHES[k % len(_DASHES)], lw=1.6)
    return style


def curves_figure(plt, results: List[dict], title: str = "", target_acc: Optional[float] = None,
                  by_state_dtype: bool = False):
    """The figure of ``plot_curves`` (a matplotlib Figure; the caller closes it)."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    order = results if by_state_dtype else ranked(results)     # by optimizer, then state dtype
    style = state_style(results) if by_state_dtype else (lambda r: line_style(order.index(r)))
    for r in order:
        h = r["history"]
        ep = h["epoch"]
        kw = dict(label=r["label"], **style(r))
        axes[0, 0].plot(ep, [_pos(v) for v in h["train_loss"]], **kw)
        axes[0, 1].plot(ep, [_pos(v) for v in h["test_loss"]], **kw)
        axes[1, 0].plot(ep, [_acc(v) for v in h["test_acc"]], **kw)
        axes[1, 1].plot(h["time_s"], [_acc(v) for v in h["test_acc"]], **kw)
    lo, hi = _acc_ylim(results, target_acc)
    for ax in (axes[1, 0], axes[1, 1]):
        if target_acc is not None and 0 < target_acc < 1:
            ax.axhline(target_acc, color="0.3", lw=1.0, linestyle=(0, (1, 2)), label=f"target {target_acc:g}")
        ax.set_yscale("logit")
        ax.set_ylim(lo, hi)
        ticks = [t for t in _ACC_TICKS if lo <= t <= hi]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_yticks([], minor=True)
        ax.set_ylabel("test accuracy (logit scale)")
    axes[0, 0].set(title="train loss (running mean over each epoch)", xlabel="epoch",
                   ylabel="cross-entropy (log scale)", yscale="log")
    axes[0, 1].set(title="test loss", xlabel="epoch", ylabel="cross-entropy (log scale)", yscale="log")
    axes[1, 0].set(title="test accuracy", xlabel="epoch (0: before training)")
    axes[1, 1].set(title="test accuracy vs training time", xlabel="seconds (training loop)")
    from matplotlib.ticker import MaxNLocator
    last = max((r["history"]["epoch"][-1] for r in results if r["history"]["epoch"]), default=0)
    for ax in axes.flat:
        ax.grid(alpha=0.3, which="both")
        ax.set_xlim(left=0)
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))       # whole epochs, 0 to the last
        if last > 0:
            ax.set_xlim(0, last)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9,
               title="optimizer [state dtype]" if by_state_dtype else "optimizer (table order)",
               handlelength=3.5, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    return fig


def _pos(v):
    """Loss for a log axis: None/NaN/inf/<=0 become NaN (a gap in the line)."""
    return v if v is not None and math.isfinite(v) and v > 0 else float("nan")


def _acc(v):
    """Accuracy for a logit axis: None/NaN become NaN (a gap)."""
    return v if v is not None and math.isfinite(v) else float("nan")


_ACC_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


def _acc_ylim(results, target_acc=None):
    """Every epoch's accuracy in view (epoch 0 included), kept inside (0, 1) for the logit axis."""
    vals = [v for r in results for v in r["history"]["test_acc"] if v is not None and math.isfinite(v)]
    if target_acc is not None and 0 < target_acc < 1:
        vals.append(target_acc)
    lo = min(vals) if vals else 0.1
    hi = max(vals) if vals else 0.9
    return max(0.8 * lo, 1e-3), min(1 - 0.6 * (1 - hi), 1 - 1e-4)
