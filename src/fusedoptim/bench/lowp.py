"""Low-precision state: ``python -m fusedoptim.bench --state-dtype float32,bfloat16,int8``.

Adam on each workload with every requested ``state_dtype``, timed in the same
interleaved rounds as the native STREAM loop over the same float32 arrays, torch's
``Adam(fused=True)`` (float32 state) and, where installed, bitsandbytes' 8-bit
``Adam8bit`` on the CPU.  Per state dtype: bytes moved per element (parameter and
gradient float32: 4 + 4 read, 4 written; each of the two moments read and written in
its storage size: for int8 one byte per code plus the float32 absmax of each block, and
float32 for the tensors below ``min_8bit_size``), GB/s at that byte count, % of the roofline (the STREAM loop's GB/s
on the same arrays: the machine's bandwidth, whatever the byte count; from the fastest
samples, as the main table, the median-based figure beside it in the rows), the speedup
over torch and bitsandbytes, and the state memory relative to float32.  ``--rounding
nearest,stochastic`` times each low-precision state dtype with each rounding (default:
each dtype's default, stochastic for bfloat16, nearest for int8; float32 has one row).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import _kernels
from ..lowp import ROUNDINGS, check_lowp_options
from ..optim import Adam
from .contenders import import_torch, native_stream
from .timing import measure
from .workloads import make_data, parse_workload

__all__ = ["STATE_DTYPES", "BYTES_PER_ELEMENT", "run_state_dtypes", "print_state_dtypes"]

#: the state dtypes this benchmark knows
STATE_DTYPES = ("float32", "bfloat16", "int8")
#: Adam's minimum traffic per element: read p, g, m, v; write p, m, v (int8: the codes plus
#: 2 x 2 x 4 bytes of absmax per 256-element block; the rows count a workload's actual state)
BYTES_PER_ELEMENT = {"float32": 28, "bfloat16": 20, "int8": 16 + 16 / 256}


def _bitsandbytes_adam8bit(params: Sequence[np.ndarray], grads: Sequence[np.ndarray]):
    """bitsandbytes' Adam8bit over CPU copies, or (None, reason)."""
    try:
        import torch
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a broken install
        return None, f"bitsandbytes not importable ({type(e).__name__})"
    ts = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params]
    for t, g in zip(ts, grads):
        t.grad = torch.from_numpy(np.array(g))
    try:
        opt = bnb.optim.Adam8bit(ts, lr=1e-3)
        opt.step()
    except Exception as e:
        return None, f"bitsandbytes Adam8bit failed on CPU: {type(e).__name__}: {e}"
    return opt.step, None


def run_state_dtypes(state_dtypes: Sequence[str], workloads: Sequence[str], repeat: int = 5,
                     min_time: float = 0.01, threads: Optional[int] = None, seed: int = 0,
                     use_torch: bool = True, use_bnb: bool = True,
                     roundings: Optional[Sequence[str]] = None) -> List[dict]:
    """One row per (workload, state dtype, rounding), plus the contenders' times in each row.

    ``roundings``: the ``rounding`` options to time each bfloat16 / int8 state with (None: the
    dtype's default only); float32 state is timed once."""
    for sd in state_dtypes:
        if sd not in STATE_DTYPES:
            raise ValueError(f"unknown state dtype {sd!r}; this benchmark knows {STATE_DTYPES}")
    for r in roundings or ():
        if r not in ROUNDINGS:
            raise ValueError(f"unknown rounding {r!r}; choose from {ROUNDINGS}")
    # (label, state dtype, rounding option, the rounding it means)
    configs = []
    for sd in state_dtypes:
        for r in ([None] if sd == "float32" or not roundings else roundings):
            eff = None if sd == "float32" else check_lowp_options(state_dtype=sd, rounding=r, seed=0)["rounding"]
            configs.append((sd if r is None else f"{sd}/{r}", sd, r, eff))
    torch = import_torch() if use_torch else None
    saved = _kernels.get_num_threads()
    rows = []
    try:
        if threads is not None:
            _kernels.set_num_threads(threads)
        nth = _kernels.get_num_threads()
        if torch is not None:
            torch.set_num_threads(nth)
        for name in workloads:
            wl = parse_workload(name)
            params, grads = make_data(wl, seed)
            fns: Dict[str, object] = {}
            opts = {}
            for label, sd, r, _ in configs:
                ps = [p.copy() for p in params]
                opt = Adam(ps, lr=1e-3, state_dtype=sd, **({} if r is None else {"rounding": r}))
                opt.step(grads)
                opts[label] = opt
                fns[f"fusedoptim[{label}]"] = (lambda o=opt, g=grads: o.step(g))
            bufs = [[np.zeros_like(p) for p in params] for _ in range(2)]
            fns["stream"] = native_stream(4, [p.copy() for p in params], grads, bufs)
            notes = {}
            if torch is not None:
                tp = [torch.from_numpy(p.copy()) for p in params]
                for t, g in zip(tp, grads):
                    t.grad = torch.from_numpy(np.array(g))
                topt = torch.optim.Adam(tp, lr=1e-3, fused=True)
                topt.step()
                fns["torch_fused"] = topt.step
            if use_bnb:
                step, why = _bitsandbytes_adam8bit(params, grads)
                if step is None:
                    notes["bitsandbytes"] = why
                else:
                    fns["bnb_adam8bit"] = step
            res = measure(fns, repeat, min_time)
            n = wl.n_elements
            # the roofline as the main table has it (report.ROOF_NOTE): the fastest sample of
            # STREAM and of the step; the medians give the times and the ratios
            stream_gbs = 4 * 7 * n / res["stream"]["min_s"] / 1e9
            stream_median_gbs = 4 * 7 * n / res["stream"]["median_s"] / 1e9
            f32_state = 8 * n
            for label, sd, _, eff in configs:
                t = res[f"fusedoptim[{label}]"]["median_s"]
                tb = res[f"fusedoptim[{label}]"]["min_s"]
                st = opts[label].state
                state_bytes = sum(v.nbytes for p in opts[label].params for v in st[p].values()
                                  if isinstance(v, np.ndarray))
                bpe = 12 + 2 * state_bytes / n      # p, g read, p written; the state read and written
                gbs = bpe * n / t / 1e9
                row = {"workload": name, "n_tensors": wl.n_tensors, "n_elements": n, "threads": nth,
                       "state_dtype": sd, "rounding": eff, "median_s": t, "bytes_per_element": bpe, "gb_s": gbs,
                       "stream_gb_s": stream_gbs, "pct_roofline": 100.0 * bpe * n / tb / 1e9 / stream_gbs,
                       "stream_median_gb_s": stream_median_gbs, "pct_roofline_median": 100.0 * gbs / stream_median_gbs,
                       "state_bytes": state_bytes, "state_vs_float32": state_bytes / f32_state,
                       "torch_fused_s": res["torch_fused"]["median_s"] if "torch_fused" in res else None,
                       "bnb_adam8bit_s": res["bnb_adam8bit"]["median_s"] if "bnb_adam8bit" in res else None,
                       "notes": dict(notes)}
                row["vs_torch_fused"] = None if row["torch_fused_s"] is None else row["torch_fused_s"] / t
                row["vs_bnb_adam8bit"] = None if row["bnb_adam8bit_s"] is None else row["bnb_adam8bit_s"] / t
                rows.append(row)
            del opts, fns, bufs
    finally:
        _kernels.set_num_threads(saved)
    return rows


def print_state_dtypes(rows: List[dict]) -> None:
    hdr = (f"{'workload':<10} {'state':<9} {'rounding':<10} {'ms':>8} {'B/elem':>6} {'GB/s':>6} {'%roof':>6} "
           f"{'x torch':>8} {'x bnb8':>8} {'state mem':>9}")
    print("Adam with low-precision state (interleaved medians; %roof: the fastest step sample against the fastest "
          "native STREAM sample on the same arrays, as the main table)")
    print(hdr)
    for r in rows:
        f = lambda x, fmt: "-" if x is None else format(x, fmt)  # noqa: E731
        print(f"{r['workload']:<10} {r['state_dtype']:<9} {r['rounding'] or '-':<10} {r['median_s'] * 1e3:8.2f} "
              f"{r['bytes_per_element']:6.2f} "
              f"{r['gb_s']:6.1f} {r['pct_roofline']:6.0f} {f(r['vs_torch_fused'], '8.2f')} "
              f"{f(r['vs_bnb_adam8bit'], '8.1f')} {r['state_vs_float32']:8.2f}x")
    for r in rows:
        for k, v in r["notes"].items():
            print(f"  {r['workload']}: {k}: {v}")
