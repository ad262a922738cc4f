"""Muon's Newton-Schulz matmuls against torch.optim.Muon's, same shapes, same thread count.

``python -m fusedoptim.bench.muon [--threads N] [--shapes 512x512,2048x512,... | --workload resnet18] [--bf16]``

Times, per shape, fusedoptim's :func:`~fusedoptim.optim.muon.newton_schulz` (``np.matmul``,
NumPy's OpenBLAS, in float32) against torch 2.13's ``_zeropower_via_newtonschulz`` in
float32 (its bfloat16 cast made the identity: the same algorithm and dtype as ours, the
fair comparison) and, with ``--bf16``, as shipped (it casts to bfloat16 on every device;
on a CPU without bfloat16 matmul units that is 20-40x slower, so it is opt-in).  Then one
whole step of ``fusedoptim.Muon`` against ``torch.optim.Muon`` over all the shapes.  Both
libraries get ``--threads`` threads (OpenBLAS and fusedoptim's OpenMP here,
torch's intra-op pool there).  Reports the median of ``--repeat`` runs; the ratio column
is ours / torch's (below 1.0: we are faster).  ``--workload`` takes the 2-D shapes of a
model workload of :mod:`.workloads` (``resnet18``: each conv weight flattened to
``(out, in * kh * kw)`` as Muon implementations do, and the classifier; ``gpt-4L-d256``:
the embeddings and projections); repeated shapes are timed once and counted in the totals
as often as they occur.  The last lines give the sum of the Newton-Schulz times over all
tensors for both libraries, and fusedoptim's step with ``ns_steps=0`` (everything but the
Newton-Schulz iterations), whose difference to the whole step is the Newton-Schulz share.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import statistics
import time
from typing import List, Optional, Sequence

import numpy as np

from .. import get_num_threads, set_num_threads
from ..optim.muon import DEFAULT_NS_COEFFICIENTS, Muon, newton_schulz
from .workloads import MODEL_WORKLOADS

__all__ = ["main", "set_blas_threads", "blas_threads"]

DEFAULT_SHAPES = "256x256,1024x256,768x768,768x3072,3072x768,2048x2048"


def set_blas_threads(n: int) -> bool:
    """Set NumPy's OpenBLAS thread count (threadpoolctl if installed, else the OpenBLAS
    symbol of the library NumPy loaded); False if neither worked."""
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(n, user_api="blas")
        return True
    except ImportError:
        pass
    return _set_openblas_symbol(n)


def blas_threads() -> Optional[int]:
    """The thread count of the BLAS NumPy loaded (threadpoolctl; the one under NumPy's
    directories when several are loaded), None if unknown."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    mine = [i for i in blas if "numpy" in str(i.get("filepath", ""))] or blas
    return mine[0].get("num_threads") if mine else None


def _set_openblas_symbol(n: int) -> bool:
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "openblas" in line.lower() and line.split()[-1].startswith("/")}
    for path in libs:
        lib = ctypes.CDLL(path)
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return True
    return False


def _median_times(fns, repeat: int, setups=None) -> list:
    """Median seconds of each zero/one-argument callable, the samples interleaved (one of
    each per round) so that a change in machine load hits every contender alike."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            arg = setups[k]() if setups is not None and setups[k] is not None else None
            t0 = time.perf_counter()
            fn(arg)
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


@contextlib.contextmanager
def _torch_without_bf16(torch):
    orig = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.clone()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = orig


def _shapes(s: str) -> List[tuple]:
    out = []
    for item in s.split(","):
        a, _, b = item.strip().partition("x")
        out.append((int(a), int(b)))
    return out


def workload_matrices(name: str) -> List[tuple]:
    """The 2-D shapes Muon takes from model workload ``name``: every parameter of 2 or more
    dimensions as ``(shape[0], prod(shape[1:]))``; vectors (biases, norms) are left out."""
    if name not in MODEL_WORKLOADS:
        raise SystemExit(f"--workload: unknown {name!r}; choose from {', '.join(MODEL_WORKLOADS)}")
    return [(s[0], math.prod(s[1:])) for s in MODEL_WORKLOADS[name].shapes if len(s) >= 2]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusedoptim.bench.muon", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both libraries (default: fusedoptim.get_num_threads(), OMP_NUM_THREADS or "
                        "the CPU count)")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"comma list of RxC (default {DEFAULT_SHAPES})")
    p.add_argument("--workload", help=f"the 2-D shapes of a model workload ({', '.join(MODEL_WORKLOADS)}) "
                                      "instead of --shapes")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="Newton-Schulz iterations (default 5, torch's)")
    p.add_argument("--bf16", action="store_true", help="also time torch as shipped (bfloat16; slow on most CPUs)")
    args = p.parse_args(argv)
    import torch
    from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns

    n = args.threads if args.threads is not None else get_num_threads()
    if n < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(n)
    set_num_threads(n)
    blas = set_blas_threads(n)
    nb = blas_threads()
    shapes = workload_matrices(args.workload) if args.workload else _shapes(args.shapes)
    co, eps = DEFAULT_NS_COEFFICIENTS, 1e-7
    rng = np.random.default_rng(0)
    print(f"threads {n}: torch {torch.get_num_threads()}, NumPy's BLAS "
          f"{nb if nb is not None else ('set' if blas else 'NOT set')}, fusedoptim {get_num_threads()}; "
          f"NS steps {args.steps}; median of {args.repeat}, samples interleaved; times in ms")
    print(f"{'shape':>12} {'count':>5} {'fusedoptim f32':>15} {'torch f32':>10} {'ratio':>6} {'torch bf16':>11}")
    counts: dict = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    ns_ours = ns_torch = 0.0
    for shape, count in counts.items():
        g = rng.standard_normal(shape).astype(np.float32)
        tg = torch.from_numpy(g)
        ours_fn = lambda x: newton_schulz(x, co, args.steps, eps)          # noqa: E731
        torch_fn = lambda _: torch_ns(tg, co, args.steps, eps)             # noqa: E731
        with _torch_without_bf16(torch):
            ours, torch_f32 = _median_times([ours_fn, torch_fn], args.repeat, setups=[g.copy, None])
        torch_bf16 = _median_times([torch_fn], args.repeat)[0] if args.bf16 else math.nan
        ns_ours += count * ours
        ns_torch += count * torch_f32
        print(f"{shape[0]:>5}x{shape[1]:<6} {count:>5} {ours * 1e3:>15.2f} {torch_f32 * 1e3:>10.2f} "
              f"{ours / torch_f32:>6.2f} {torch_bf16 * 1e3:>11.2f}")
    print(f"Newton-Schulz over all {len(shapes)} tensors: fusedoptim {ns_ours * 1e3:.2f} ms, torch (float32) "
          f"{ns_torch * 1e3:.2f} ms, ratio {ns_ours / ns_torch:.2f}")
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = Muon([q.copy() for q in params], lr=0.02, ns_steps=args.steps)
    opt.step(grads)
    # the step without its Newton-Schulz iterations (ns_steps=0 keeps the normalisation):
    # momentum, decay and step (two native calls), the scratch arrays and the Python around them
    rest_opt = Muon([q.copy() for q in params], lr=0.02, ns_steps=0)
    rest_opt.step(grads)
    tp = [torch.from_numpy(q.copy()) for q in params]
    for t, gg in zip(tp, grads):
        t.grad = torch.from_numpy(gg)
    topt = torch.optim.Muon(tp, lr=0.02, ns_steps=args.steps)
    topt.step()
    with _torch_without_bf16(torch):
        ours, theirs32, rest = _median_times([lambda _: opt.step(grads), lambda _: topt.step(),
                                              lambda _: rest_opt.step(grads)], args.repeat)
    theirs = _median_times([lambda _: topt.step()], args.repeat)[0] if args.bf16 else math.nan
    print(f"whole step over {len(shapes)} tensors: fusedoptim.Muon {ours * 1e3:.2f} ms, torch.optim.Muon "
          f"{theirs32 * 1e3:.2f} ms in float32 (ratio {ours / theirs32:.2f}), {theirs * 1e3:.2f} ms as shipped "
          "(bf16)")
    print(f"fusedoptim.Muon step with ns_steps=0 (momentum, normalisation, decay and step): {rest * 1e3:.2f} ms, "
          f"so Newton-Schulz is {1 - rest / ours:.1%} of the step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
