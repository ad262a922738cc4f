"""Command line of the report: ``python -m fusedoptim.bench [options]``."""
from __future__ import annotations

import argparse
import json
from typing import List, Optional, Sequence

import numpy as np

from .contenders import ALL_CONTENDERS, OPTIMIZERS
from ..lowp import ROUNDINGS as LOWP_ROUNDINGS
from .lowp import STATE_DTYPES as LOWP_STATE_DTYPES, print_state_dtypes, run_state_dtypes
from .report import run
from .workloads import KI, MI, MODEL_WORKLOADS, QUICK_WORKLOADS, WORKLOADS, parse_size, parse_workload

__all__ = ["build_parser", "main"]


def _size_list(s: str) -> List[int]:
    if s in ("", "none"):
        return []
    try:
        return [parse_size(x) for x in s.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _list_arg(valid: Sequence[str], what: str, aliases: Optional[dict] = None):
    def parse(s: str) -> List[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        if items == ["all"]:
            return list(valid)
        items = [(aliases or {}).get(x, x) for x in items]
        for x in items:
            if x not in valid:
                hint = (" (Muon's Newton-Schulz products have their own benchmark: python -m fusedoptim.bench.muon)"
                        if x == "muon" else "")
                raise argparse.ArgumentTypeError(f"unknown {what} {x!r}; choose from {', '.join(valid)}{hint}")
        return items
    return parse


def _workload_list(s: str) -> List[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    if items == ["all"]:
        return list(WORKLOADS)
    for x in items:
        try:
            parse_workload(x)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))
    return items


#: contender names may also be spelled with hyphens (torch-fused for torch_fused)
_CONTENDER_ALIASES = {c.replace("_", "-"): c for c in ALL_CONTENDERS if "_" in c}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusedoptim.bench",
        description="Time fusedoptim's optimizers against the STREAM roofline, naive NumPy and "
                    "torch.optim (foreach/fused), and on a GPU (cupy) where one is present. "
                    "See bench/README.md for the columns.")
    p.add_argument("--optimizers", type=_list_arg(list(OPTIMIZERS), "optimizer"), default=list(OPTIMIZERS),
                   help="comma list or 'all' (default): " + ", ".join(OPTIMIZERS))
    p.add_argument("--workloads", type=_workload_list, default=None,
                   help="comma list or 'all': " + ", ".join(WORKLOADS) + "; any NxS (K=2**10, M=2**20, "
                        "prefix f64- for float64). Default: all, without 1x16M under --quick")
    p.add_argument("--contenders", type=_list_arg(list(ALL_CONTENDERS), "contender", _CONTENDER_ALIASES),
                   default=list(ALL_CONTENDERS),
                   help="comma list (default all): " + ", ".join(ALL_CONTENDERS) + " (the GPU ones "
                        "only where cupy sees a CUDA device)")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per contender (default 15; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps after the first (state-allocating) one (default 2; 0 with --quick)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of consecutive steps per sample (default 0.01; 0.001 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for fusedoptim and torch (default: fusedoptim.get_num_threads())")
    p.add_argument("--roofline-sizes", type=_size_list, default=None,
                   help="element counts of the extension-level STREAM table, or 'none' "
                        "(default 64K,1M,16M; 64K,1M,4M with --quick)")
    p.add_argument("--gpu-roofline-sizes", type=_size_list, default=None,
                   help="element counts of the device STREAM table, or 'none' "
                        "(default 1M,16M,64M; 1M,16M with --quick); only with a GPU")
    p.add_argument("--no-torch", action="store_true", help="skip the torch contenders even if torch imports")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU contenders even if cupy sees a device")
    p.add_argument("--memory", type=int, nargs="?", const=-1, default=None, metavar="STEPS",
                   help="also run the memory check (Adam, 200x327) for STEPS steps (default 10000; 1000 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write every figure and the machine info as JSON")
    p.add_argument("--quick", action="store_true", help="fewer samples, shorter samples, no 16M workload")
    p.add_argument("--list", action="store_true", help="list optimizers and workloads, then exit")
    p.add_argument("--state-dtype", type=_list_arg(list(LOWP_STATE_DTYPES), "state dtype"), default=None,
                   help="instead of the report: Adam with these state dtypes (comma list: "
                        + ", ".join(LOWP_STATE_DTYPES) + ") on --workloads (default resnet18,1x16M): bytes per "
                        "element, GB/s, %% of roofline, speedup over torch fused and bitsandbytes Adam8bit")
    p.add_argument("--rounding", type=_list_arg(list(LOWP_ROUNDINGS), "rounding"), default=None,
                   help="with --state-dtype: time bfloat16 and int8 state with each of these roundings (comma "
                        "list: " + ", ".join(LOWP_ROUNDINGS) + "; default: each dtype's own, stochastic for "
                        "bfloat16, nearest for int8)")
    return p


def _print_list() -> None:
    print("optimizers:")
    for c in OPTIMIZERS.values():
        print(f"  {c.key:<27} {c.cls.__name__}({', '.join(f'{k}={v!r}' for k, v in c.kwargs.items())})"
              + ("  [torch fused]" if c.torch_fused else "") + ("" if c.in_torch else "  [not in torch]"))
    print("workloads:")
    for w in dict.fromkeys(list(WORKLOADS) + list(MODEL_WORKLOADS)):
        wl = parse_workload(w)
        print(f"  {w:<14} {wl.n_tensors:>4} tensors {wl.n_elements:>11,} {wl.dtype}"
              + (f"  {wl.note}" if wl.note else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        _print_list()
        return 0
    q = args.quick
    repeat = args.repeat if args.repeat is not None else (3 if q else 15)
    warmup = args.warmup if args.warmup is not None else (0 if q else 2)
    min_time = args.min_time if args.min_time is not None else (0.001 if q else 0.01)
    workloads = args.workloads if args.workloads is not None else list(QUICK_WORKLOADS if q else WORKLOADS)
    sizes = args.roofline_sizes if args.roofline_sizes is not None else (
        [64 * KI, MI, 4 * MI] if q else [64 * KI, MI, 16 * MI])
    gsizes = args.gpu_roofline_sizes if args.gpu_roofline_sizes is not None else (
        [MI, 16 * MI] if q else [MI, 16 * MI, 64 * MI])
    memory = None if args.memory is None else (args.memory if args.memory > 0 else (1000 if q else 10_000))
    if repeat < 1 or warmup < 0 or min_time < 0:
        build_parser().error("--repeat must be >= 1, --warmup and --min-time >= 0")
    if args.rounding is not None and args.state_dtype is None:
        build_parser().error("--rounding needs --state-dtype")
    if args.state_dtype is not None:
        rows = run_state_dtypes(args.state_dtype, args.workloads or ["resnet18", "1x16M"],
                                args.repeat if args.repeat is not None else (3 if q else 7), min_time,
                                args.threads, args.seed, use_torch=not args.no_torch, use_bnb=not args.no_torch,
                                roundings=args.rounding)
        print_state_dtypes(rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"state_dtypes": rows}, f, indent=1, default=_json_default)
            print(f"wrote {args.json}")
        return 0
    report = run(args.optimizers, workloads, repeat, warmup, min_time, args.threads, sizes,
                 use_torch=not args.no_torch, contenders=args.contenders, seed=args.seed, memory=memory,
                 use_gpu=not args.no_gpu, gpu_roofline_sizes=gsizes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
        print(f"wrote {args.json}")
    return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
