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

__all__ = ["table", "format_table", "sync_summary", "document", "write_json", "plot_curves"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def format_table(results: List[dict], target_acc: float) -> str:
    """One row per run.  Runs of ``--distributed`` (with ``world_size``) add the number of
    ranks and the time inside the gradient Allreduce next to the time inside the step."""
    dist = any("world_size" in r for r in results)
    headers = ["optimizer", "lr"] + (["ranks"] if dist else []) + ["wall s", "train s"] \
        + (["allreduce s", "allreduce %"] if dist else []) + ["step s", "step %"] \
        + [f"epochs to {target_acc:g}", "train acc", "test acc", "train loss", "test loss"]
    rows = []
    for r in results:
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
    note = ("wall: whole run incl. evaluation; train: training loop (batching, forward, backward, step); "
            "step: inside opt.step")
    if dist:
        note += ("\nallreduce: inside DistributedOptimizer.allreduce (one Allreduce of the gradients, the "
                 "division by the world size, and waiting for the slowest rank); times are rank 0's, every "
                 "rank's are in the JSON (per_rank)")
    return table(headers, rows) + "\n" + note


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


def plot_curves(results: List[dict], path: str, title: str = "") -> Optional[str]:
    """Loss and accuracy per epoch, and test accuracy against training time, one line per
    optimizer.  Returns the path, or None (with a note) when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        missing_matplotlib(f"plot {path}")
        return None
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = plt.get_cmap("tab10")
    for i, r in enumerate(results):
        h = r["history"]
        c = colors(i % 10)
        ep = h["epoch"]
        kw = dict(color=c, lw=1.4)
        axes[0, 0].plot(ep, [_pos(v) for v in h["train_loss"]], label=r["label"], **kw)
        axes[0, 1].plot(ep, [_pos(v) for v in h["test_loss"]], label=r["label"], **kw)
        axes[1, 0].plot(ep, h["test_acc"], label=r["label"], **kw)
        axes[1, 1].plot(h["time_s"], h["test_acc"], label=r["label"], **kw)
    axes[0, 0].set(title="train loss (running mean over each epoch)", xlabel="epoch", yscale="log")
    axes[0, 1].set(title="test loss", xlabel="epoch", yscale="log")
    axes[1, 0].set(title="test accuracy", xlabel="epoch", ylim=_acc_ylim(results))
    axes[1, 1].set(title="test accuracy vs training time", xlabel="seconds (training loop)",
                   ylim=_acc_ylim(results))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pos(v):
    """Loss for a log axis: None/NaN/inf/<=0 become NaN (a gap in the line)."""
    return v if v is not None and math.isfinite(v) and v > 0 else float("nan")


def _acc_ylim(results):
    """Zoom on the second half of training, where the optimizers differ."""
    late = [v for r in results for v in r["history"]["test_acc"][len(r["history"]["test_acc"]) // 2:]
            if v is not None and math.isfinite(v)]
    lo = min(late) if late else 0.0
    return (max(0.0, lo - 0.1), 1.0)
