"""CuPy backend: the CUDA kernels of ``csrc/fusedoptim/kernels.cu`` behind the interface
of the CPU backend (``_kernels``).

One launch per step updates every tensor of a parameter bucket: a device table holds,
per tensor, the pointers (param, grad, EMA or 0, state buffers: the segment layout of
``cpu.h``) after the prefix sum of the tensor sizes, and the kernel calls the element
rule of ``rules.h``, the very function the CPU loops call.  The per-step scalars travel
by value (the named block of rules.h, packed by name by ``_kernels.pack_scalars``), so a
step never waits for the GPU.  Global-norm clipping and the non-finite guard are computed
on the device (:func:`grad_control`) and consumed there by the update kernel.

The kernels are compiled once per process by NVRTC through ``cupy.RawModule`` from the
text of ``rules.h`` followed by ``kernels.cu`` (CuPy's compile cache hashes ``code``
only, not headers found with ``-I``, so the header text is part of ``code``).  CuPy is
imported on first use: ``import fusedoptim`` never needs it.

Interface (same as the CPU backend): ``check_params``, ``check_grads``, ``fused_step``,
``fused_step_q8`` (8-bit block-wise state, q8.h), ``quantize``,
``zeros_like``, ``full_like``, ``to_host``, ``from_host``, ``grad_norm_sq``,
``grad_stats``, ``accumulate``; plus ``grad_control`` and ``is_device_array``.
"""
from __future__ import annotations

import collections
import os
import re
import sys
import threading
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _kernels
from .lowp import bfloat16, is_bfloat16
from .validate import positive_or_none

__all__ = ["check_params", "check_grads", "fused_step", "fused_step_q8", "quantize", "zeros_like", "full_like", "to_host", "from_host",
           "grad_norm_sq", "grad_stats", "grad_control", "accumulate", "is_device_array", "take", "address",
           "kernel_source", "NVRTC_OPTIONS", "storage_dtype", "to_storage"]

# algorithm id (shared with the CPU backend) -> kernel name stem in kernels.cu: both are
# instantiated from rules.h's one list FO_ALGOS
_ALGOS = {spec.id: name for name, spec in _kernels.ALGORITHMS.items() if not spec.stats}
# the reducing algorithms (reduce.h: per-tensor statistics) have CPU loops only
_REDUCING = {spec.id: name for name, spec in _kernels.ALGORITHMS.items() if spec.stats}

# NVRTC options.  --fmad=false keeps a*b+c unfused, like the CPU build's -ffp-contract=off,
# so GPU and CPU round the same way except for float32 denormals (CuPy adds -ftz=true).
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")

# Control block written by grad_control (indices into the 4 doubles).
CTRL_SUMSQ, CTRL_NONFINITE, CTRL_SCALE, CTRL_SKIP = 0, 1, 2, 3

_FO_STATE = 3  # param, grad, EMA|NULL, then state buffers (cpu.h / kernels.cu)


# --------------------------------------------------------------------------- sources
def _source_dir() -> str:
    """Directory holding rules.h and kernels.cu: the copy installed in the package
    (``fusedoptim/csrc/fusedoptim``), else the repository's ``csrc/fusedoptim`` (editable
    installs, where this file lives in ``src/fusedoptim``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "csrc", "fusedoptim"),
                  os.path.join(here, os.pardir, os.pardir, "csrc", "fusedoptim")]
    for d in candidates:
        if os.path.isfile(os.path.join(d, "rules.h")) and os.path.isfile(os.path.join(d, "kernels.cu")):
            return os.path.normpath(d)
    raise FileNotFoundError("fusedoptim's CUDA sources (rules.h, kernels.cu) were not found in "
                            + " or ".join(os.path.normpath(d) for d in candidates))


def _read(name: str) -> str:
    with open(os.path.join(_source_dir(), name), encoding="utf-8") as f:
        return f.read()


def kernel_source() -> str:
    """The ``code`` given to NVRTC: rules.h, lowp.h, q8.h (its device part: the table
    layout and the per-element functions), then kernels.cu (whose guarded ``#include``s
    are then skipped), with ``#line`` marks for error messages."""
    return ('#line 1 "rules.h"\n' + _read("rules.h") + '\n#line 1 "lowp.h"\n' + _read("lowp.h")
            + '\n#line 1 "q8.h"\n' + _read("q8.h") + '\n#line 1 "kernels.cu"\n' + _read("kernels.cu"))


def _parse_defines(text: str) -> Dict[str, str]:
    return dict(re.findall(r"^#define\s+(FO_[A-Z0-9_]+)\s+(\S+)", text, flags=re.M))


class _Consts:
    """Launch constants, read from kernels.cu (and the block size from rules.h) so the two
    sides cannot disagree: MAXHP, THREADS, CHUNK, RED_THREADS, RED_CHUNK, CTRL,
    Q8_THREADS, Q8_PER."""

    def __init__(self, text: str):
        d = _parse_defines(text)
        self.MAXHP = int(_parse_defines(_read("rules.h"))["FO_MAXSCALARS"])
        for k in ("THREADS", "CHUNK", "RED_THREADS", "RED_CHUNK", "CTRL", "Q8_THREADS", "Q8_PER"):
            setattr(self, k, int(d["FO_" + k]))


_consts_cache: List[_Consts] = []


def _consts() -> _Consts:
    if not _consts_cache:
        _consts_cache.append(_Consts(_read("kernels.cu")))
    return _consts_cache[0]


# ------------------------------------------------------------------ pure host logic
def _hp_struct(block: np.ndarray) -> np.ndarray:
    """A packed block (``_kernels.pack_scalars``) as one ``fo_hparams`` passed by value."""
    k = _consts()
    if block.shape != (k.MAXHP,):
        raise ValueError(f"a scalar block has {k.MAXHP} doubles, got shape {block.shape}")
    a = np.zeros(1, dtype=np.dtype([("h", np.float64, (k.MAXHP,))]))
    a["h"][0] = block
    return a


def _pack_meta(sizes: Sequence[int], rows: Sequence[Sequence[int]], tids=None) -> np.ndarray:
    """``starts[0..n]`` (prefix sum of ``sizes``) then the pointer rows, as int64; then,
    for a low-precision launch, the ``n`` tensor ids ``tids``."""
    return _pack_meta_cols(sizes, [list(c) for c in zip(*rows)] if len(sizes) else [], tids)


def _pack_meta_cols(sizes: Sequence[int], cols: Sequence[Sequence[int]], tids=None) -> np.ndarray:
    """:func:`_pack_meta` from the pointer columns (one list per buffer slot)."""
    n, nbuf = len(sizes), len(cols)
    meta = np.empty(n + 1 + n * nbuf + (0 if tids is None else n), dtype=np.int64)
    meta[0] = 0
    np.cumsum(np.fromiter(sizes, dtype=np.int64, count=n), out=meta[1:n + 1])
    if n:
        table = meta[n + 1:n + 1 + n * nbuf].reshape(n, nbuf).view(np.uint64)
        for k, col in enumerate(cols):
            table[:, k] = np.fromiter(col, dtype=np.uint64, count=n)
    if tids is not None:
        meta[n + 1 + n * nbuf:] = np.asarray(tids, dtype=np.uint64).view(np.int64)
    return meta


_F32, _F64, _BF16_BITS, _U8 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint16), np.dtype(np.uint8)
_SUFFIX = {_F32: "f32", _F64: "f64"}


def _column(what: str, col, sizes: List[int], dtype, ptr) -> List[int]:
    """The addresses of one buffer column, after checking it against the parameters
    (one list comparison each for the sizes and the dtypes in the usual case)."""
    try:
        ok = [a.size for a in col] == sizes and {a.dtype for a in col} == {dtype}
    except AttributeError:          # a None
        ok = False
    if not ok:
        for i, a in enumerate(col):
            if a is None or a.size != sizes[i] or a.dtype != dtype:
                raise ValueError(f"{what} of tensor {i} does not match its parameter")
    if ptr is _ptr:                 # CuPy: the addresses in one comprehension, no call per array
        return [a.data.ptr for a in col]
    return [ptr(a) for a in col]


def _prepare(algo, common, scalars, flags, params, grads, states, emas, ptr, rounding=None):
    """Check the call and build its launch arguments; ``ptr(a)`` gives an array's address.

    State buffers of uint16 (bfloat16 bits; CuPy has no bfloat16 dtype) with float32
    parameters select the low-precision kernel ``fo_<algo>_kernel_lp4``: ``rounding`` =
    ``(seed, step, tensor_ids, stochastic)`` as for the CPU backend (None: ``(0, 0, None,
    True)``) keys its random bits, and the tensor ids end the table.

    Returns ``(kernel name, fo_hparams struct, meta table, nbuf, has_ema, extra)``,
    ``extra`` the trailing launch arguments of a low-precision kernel (else ``()``)."""
    if algo in _REDUCING:
        raise NotImplementedError(f"{_REDUCING[algo]}: the CUDA backend has no reduction stage yet (per-tensor "
                                  f"statistics); step this optimizer on NumPy arrays (the CPU backend)")
    if algo not in _ALGOS:
        raise ValueError(f"no CUDA kernel for algorithm {algo}")
    block = _kernels.pack_scalars(algo, common, scalars)     # by name; raises on a missing one
    ntens = len(params)
    want = _kernels.kept_buffers(algo, flags)
    if len(states) != len(want):
        raise ValueError(f"algorithm {_ALGOS[algo]} with flags {flags:#x} keeps {len(want)} state buffer(s) "
                         f"{want}, got {len(states)}")
    nbuf = _FO_STATE + len(states)
    if len(grads) != ntens or (emas is not None and len(emas) != ntens):
        raise ValueError(f"expected {ntens} gradients (and EMA buffers)")
    if any(len(col) != ntens for col in states):
        raise ValueError(f"expected {ntens} arrays per state buffer")
    dtype = params[0].dtype
    suffix = _SUFFIX.get(dtype)
    if suffix is None:
        raise ValueError(f"no CUDA kernel for dtype {dtype}")
    sdtype = dtype
    if states and dtype == _F32 and states[0][0] is not None and states[0][0].dtype == _BF16_BITS:
        sdtype, suffix = _BF16_BITS, "lp4"     # bfloat16 state (cpu.h's storage code 4)
    if {p.dtype for p in params} != {dtype}:
        raise TypeError("mixed dtypes in one native call")
    sizes: List[int] = [p.size for p in params]
    cols = [[p.data.ptr for p in params] if ptr is _ptr else [ptr(p) for p in params],
            _column("gradient", grads, sizes, dtype, ptr)]
    cols.append([0] * ntens if emas is None else _column("EMA buffer", emas, sizes, dtype, ptr))
    cols += [_column(f"state buffer {k}", col, sizes, sdtype, ptr) for k, col in enumerate(states)]
    extra, tids = (), None
    if suffix == "lp4":
        seed, step, tids, stochastic = (0, 0, None, True) if rounding is None else rounding
        tids = np.arange(ntens, dtype=np.uint64) if tids is None else np.asarray(tids, dtype=np.uint64)
        if tids.shape != (ntens,):
            raise ValueError(f"rounding: expected {ntens} tensor ids, got {tids.size}")
        extra = (np.uint64(seed), np.uint64(step), np.int32(1 if stochastic else 0))
    return (f"fo_{_ALGOS[algo]}_kernel_{suffix}", _hp_struct(block), _pack_meta_cols(sizes, cols, tids), nbuf,
            0 if emas is None else 1, extra)


def _q8_threads(block: int) -> int:
    """Threads per block of the 8-bit kernels for quantization blocks of ``block``: one
    element per thread up to FO_Q8_THREADS threads (kernels.cu: at most FO_Q8_PER each)."""
    k = _consts()
    t = min(int(block), k.Q8_THREADS)
    if t * k.Q8_PER < block:
        raise ValueError(f"block_size {block} is too large for the CUDA kernels ({k.Q8_THREADS * k.Q8_PER} at most)")
    return t


def _prepare_q8(algo, common, scalars, flags, params, grads, states, absmax, emas, ptr, rounding, block):
    """:func:`_prepare` for 8-bit state (``fo_<algo>_kernel_q8``): ``states[k][i]`` are
    tensor i's uint8 codes when ``absmax[k][i]`` is its float32 absmax array (one per
    block), else its float32 state (a tensor below min_8bit_size).

    Returns ``(kernel name, fo_hparams struct, qmeta table, nbuf, has_ema, nblocks,
    extra)``, ``extra`` = ``(seed, step, stochastic, block)``; ``nblocks`` is the total
    block count of the launch."""
    if algo in _REDUCING:
        raise NotImplementedError(f"{_REDUCING[algo]}: the CUDA backend has no reduction stage yet (per-tensor "
                                  f"statistics); step this optimizer on NumPy arrays (the CPU backend)")
    if algo not in _ALGOS:
        raise ValueError(f"no CUDA kernel for algorithm {algo}")
    block = _kernels.q8_check_block(block)
    pblock = _kernels.pack_scalars(algo, common, scalars)
    ntens = len(params)
    want = _kernels.kept_buffers(algo, flags)
    if len(states) != len(want) or len(absmax) != len(want):
        raise ValueError(f"algorithm {_ALGOS[algo]} with flags {flags:#x} keeps {len(want)} state buffer(s) "
                         f"{want}, got {len(states)} code and {len(absmax)} absmax lists")
    if len(grads) != ntens or (emas is not None and len(emas) != ntens):
        raise ValueError(f"expected {ntens} gradients (and EMA buffers)")
    if any(len(col) != ntens for col in states) or any(len(col) != ntens for col in absmax):
        raise ValueError(f"expected {ntens} arrays per state buffer")
    if {p.dtype for p in params} != {_F32}:
        raise TypeError(f"8-bit state on CUDA goes with float32 parameters, got {params[0].dtype}")
    sizes: List[int] = [p.size for p in params]
    nst = len(states)
    quant = [a is not None for a in absmax[0]] if nst else [False] * ntens
    for col in absmax[1:]:
        if [a is not None for a in col] != quant:
            raise ValueError("some state buffers of a tensor are 8-bit, others float32")
    nblk = [-(-n // block) for n in sizes]
    cols = [[p.data.ptr for p in params] if ptr is _ptr else [ptr(p) for p in params],
            _column("gradient", grads, sizes, _F32, ptr)]
    cols.append([0] * ntens if emas is None else _column("EMA buffer", emas, sizes, _F32, ptr))
    amcols = []
    dts = [_U8 if q else _F32 for q in quant]
    qnblk = [b if q else 0 for b, q in zip(nblk, quant)]
    fast = ptr is _ptr
    for k in range(nst):
        col, acol = states[k], absmax[k]
        try:       # the usual case in list comparisons, as _column does
            ok = [a.size for a in col] == sizes and [a.dtype for a in col] == dts and \
                [0 if am is None else am.size for am in acol] == qnblk and \
                all(am is None or am.dtype == _F32 for am in acol)
        except AttributeError:       # a None
            ok = False
        if not ok:
            for i, (a, am) in enumerate(zip(col, acol)):
                if a is None or a.size != sizes[i] or a.dtype != dts[i]:
                    raise ValueError(f"state buffer {k} of tensor {i} does not match its parameter "
                                     f"(expected {dts[i]} of {sizes[i]} elements)")
                if quant[i] and (am.dtype != _F32 or am.size != nblk[i]):
                    raise ValueError(f"state absmax {k} of tensor {i}: expected float32 of {nblk[i]} blocks, got "
                                     f"{am.dtype} of {am.size}")
        cols.append([a.data.ptr for a in col] if fast else [ptr(a) for a in col])
        amcols.append([0 if am is None else (am.data.ptr if fast else ptr(am)) for am in acol])
    seed, step, tids, stochastic = (0, 0, None, False) if rounding is None else rounding
    tids = np.arange(ntens, dtype=np.uint64) if tids is None else np.asarray(tids, dtype=np.uint64)
    if tids.shape != (ntens,):
        raise ValueError(f"rounding: expected {ntens} tensor ids, got {tids.size}")
    nbuf = _FO_STATE + nst
    meta = np.empty(ntens + 1 + ntens * (nbuf + nst) + 2 * ntens, dtype=np.int64)
    meta[0] = 0
    np.cumsum(np.asarray(nblk, dtype=np.int64), out=meta[1:ntens + 1])
    o = ntens + 1
    for width, columns in ((nbuf, cols), (nst, amcols)):   # the pointer rows, then the absmax rows
        if ntens and width:
            table = meta[o:o + ntens * width].reshape(ntens, width).view(np.uint64)
            for k, col in enumerate(columns):
                table[:, k] = np.fromiter(col, dtype=np.uint64, count=ntens)
        o += ntens * width
    meta[o:o + ntens] = sizes
    meta[o + ntens:] = tids.view(np.int64)
    extra = (np.uint64(seed), np.uint64(step), np.int32(1 if stochastic else 0), np.int64(block))
    return (f"fo_{_ALGOS[algo]}_kernel_q8", _hp_struct(pblock), meta, nbuf, 0 if emas is None else 1,
            int(meta[ntens]), extra)


def _grid(nwork: int, per_block: int, nsm: int) -> int:
    """Blocks for ``nwork`` items, ``per_block`` per block iteration: enough to fill the
    device (8 blocks per multiprocessor), no more than there is work, at least 1."""
    return max(1, min(-(-nwork // per_block), 8 * max(1, nsm)))


# --------------------------------------------------------------------- CuPy access
_cupy = None


def _cp():
    """CuPy, imported on first use."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise ImportError("fusedoptim's CUDA backend needs CuPy: pip install 'fusedoptim[cuda]' "
                              "(or the cupy-cudaXXx wheel matching your CUDA)") from e
        _cupy = cupy
    return _cupy


def is_device_array(x) -> bool:
    """True for a ``cupy.ndarray``; never imports CuPy (no CuPy loaded, no CuPy array)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


_lock = threading.Lock()
_module = None
_functions: Dict[Tuple[int, str], object] = {}
_sm_count: Dict[int, int] = {}
_meta_cache: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_META_CACHE_SIZE = 32


def _function(dev: int, name: str):
    """A kernel of the module, compiled by NVRTC at the first call in this process."""
    global _module
    key = (dev, name)
    fn = _functions.get(key)
    if fn is None:
        cp = _cp()
        with _lock:
            if _module is None:
                _module = cp.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
            with cp.cuda.Device(dev):
                fn = _module.get_function(name)
            _functions[key] = fn
    return fn


def _nsm(dev: int) -> int:
    n = _sm_count.get(dev)
    if n is None:
        n = int(_cp().cuda.Device(dev).attributes["MultiProcessorCount"])
        _sm_count[dev] = n
    return n


def _upload(meta: np.ndarray, dev: int):
    """The device copy of a pointer table.  Tables are cached by content: a training loop
    that reuses its gradient buffers uploads nothing after the first step.  The copy is
    asynchronous (CuPy stages it through pinned memory), so no step waits for the GPU."""
    key = (dev, meta.tobytes())
    with _lock:
        d = _meta_cache.get(key)
        if d is not None:
            _meta_cache.move_to_end(key)
            return d
    cp = _cp()
    with cp.cuda.Device(dev):
        d = cp.asarray(meta)
    with _lock:
        _meta_cache[key] = d
        while len(_meta_cache) > _META_CACHE_SIZE:
            _meta_cache.popitem(last=False)
    return d


def _ptr(a) -> int:
    return int(a.data.ptr)


def _null():
    return np.uint64(0)  # a NULL device pointer by value (works with every CuPy version)


# ------------------------------------------------------------------------ checks
def _where(i: int, labels) -> str:
    return f"params[{i}]" if labels is None else labels[i]


def _gname(i: int, labels) -> str:
    return f"grads[{i}]" if labels is None else "gradient of " + labels[i]


def _not_cupy(what: str, x) -> TypeError:
    if isinstance(x, np.ndarray):
        return TypeError(f"{what}: expected a cupy.ndarray, got numpy.ndarray; numpy and cupy arrays "
                         "can't be mixed in one optimizer (cupy.asarray copies an array to the GPU)")
    return TypeError(f"{what}: expected a cupy.ndarray, got {type(x).__name__}")


def _check_param(i: int, a, first, labels) -> None:
    if a.dtype != np.float32 and a.dtype != np.float64:
        hint = ("; bfloat16 parameters run on the CPU backend only (CuPy has no bfloat16 dtype: keep float32 "
                "parameters and pass state_dtype='bfloat16' for bfloat16 state)") if a.dtype == _BF16_BITS else ""
        raise TypeError(f"{_where(i, labels)}: dtype {a.dtype} is not supported; use float32 or float64{hint}")
    if a.dtype != first.dtype:
        raise TypeError(f"{_where(i, labels)}: dtype {a.dtype} differs from {first.dtype} of the "
                        "first parameter; float32 and float64 can't be mixed in one optimizer")
    if not a.flags.c_contiguous:
        raise ValueError(f"{_where(i, labels)}: array is not C-contiguous; the optimizer updates it "
                         "in place, so pass a contiguous array (cupy.ascontiguousarray makes a copy)")
    if a.device.id != first.device.id:
        raise ValueError(f"{_where(i, labels)}: array is on GPU {a.device.id}, the first parameter on "
                         f"GPU {first.device.id}; one optimizer updates the arrays of one device")


class _Seen:
    """The arrays of the last successful check, by identity, held by weak references (a
    cache must not keep a step's gradients alive): the same arrays again need no second
    look, since an array's dtype, device, memory and layout never change (a CuPy array's
    shape may be assigned in place, so shapes are compared again)."""

    __slots__ = ("ids", "refs", "shapes", "params", "nnone")

    def __init__(self):
        self.ids, self.refs, self.shapes, self.params, self.nnone = None, (), None, None, 0

    def hit(self, arrays: list) -> bool:
        if self.ids is None or len(arrays) != len(self.refs):
            return False
        if tuple(map(id, arrays)) != self.ids:
            return False
        return all(r is None or r() is a for r, a in zip(self.refs, arrays)) and \
            [None if a is None else a.shape for a in arrays] == self.shapes

    def remember(self, arrays: list) -> None:
        try:
            self.refs = tuple(None if a is None else weakref.ref(a) for a in arrays)
        except TypeError:            # an array type without weak references: no cache
            self.ids = None
            return
        self.ids = tuple(map(id, arrays))
        self.shapes = [None if a is None else a.shape for a in arrays]


_seen_params = threading.local()
_seen_grads = threading.local()


def _seen(tl) -> _Seen:
    c = getattr(tl, "c", None)
    if c is None:
        c = tl.c = _Seen()
    return c


def check_params(params: list, labels=None) -> None:
    """Raise unless every entry is a C-contiguous float32/float64 ``cupy.ndarray`` of
    one dtype, all on one device.  ``labels[i]`` names entry i in messages.  The same
    arrays as the last successful call (an optimizer's own parameters, every step) are
    not looked at again."""
    seen = _seen(_seen_params)
    if seen.hit(params):
        return
    _check_arrays(params, labels)
    seen.remember(params)


def _check_arrays(arrays: list, labels=None) -> None:
    cp = _cp()
    for i, a in enumerate(arrays):
        if not isinstance(a, cp.ndarray):
            raise _not_cupy(_where(i, labels), a)
        _check_param(i, a, arrays[0], labels)


def check_grads(params: list, grads: list, labels=None) -> int:
    """Raise unless grads[i] is None or matches params[i]: ``cupy.ndarray`` on the same
    device, same dtype and shape, C-contiguous, not overlapping the parameter.
    Returns the number of None entries.  The same gradient arrays as the last successful
    call (a training loop that reuses its gradient buffers) are not looked at again."""
    n = len(params)
    if len(grads) != n:
        raise ValueError(f"expected {n} gradients, one per parameter, got {len(grads)}")
    seen = _seen(_seen_grads)
    if seen.hit(grads) and seen.params == tuple(map(id, params)):
        return seen.nnone
    nd = _cp().ndarray
    nnone = 0
    for i in range(n):
        g = grads[i]
        if g is None:
            nnone += 1
            continue
        p = params[i]
        # the usual case in plain attribute reads (CuPy's ndarray fields _c_contiguous, dtype,
        # data and MemoryPointer's device_id, ptr are C fields: no Flags or Device object);
        # anything else (an attribute missing, a check failing): the full check
        try:
            if type(g) is nd and g.dtype == p.dtype and g.shape == p.shape and g._c_contiguous:
                gd, pd = g.data, p.data
                if gd.device_id == pd.device_id:
                    pb, gb, pn, gn = pd.ptr, gd.ptr, p.nbytes, g.nbytes
                    if not (pn > 0 and gn > 0 and pb < gb + gn and gb < pb + pn):
                        continue
        except AttributeError:
            pass
        _check_grad(i, p, g, labels)
    seen.remember(grads)
    seen.params, seen.nnone = tuple(map(id, params)), nnone
    return nnone


def _check_grad(i: int, p, g, labels) -> None:
    cp = _cp()
    if not isinstance(g, cp.ndarray):
        raise _not_cupy(_gname(i, labels), g)
    if g.dtype != p.dtype:
        raise TypeError(f"{_gname(i, labels)}: dtype {g.dtype} does not match the parameter's {p.dtype}")
    if g.shape != p.shape:
        raise ValueError(f"{_gname(i, labels)}: shape {g.shape} does not match the parameter's shape {p.shape}")
    if not g.flags.c_contiguous:
        raise ValueError(f"{_gname(i, labels)}: array is not C-contiguous (cupy.ascontiguousarray makes a copy)")
    if g.device.id != p.device.id:
        raise ValueError(f"{_gname(i, labels)}: gradient is on GPU {g.device.id}, its parameter on GPU {p.device.id}")
    pb, gb, pn, gn = _ptr(p), _ptr(g), p.nbytes, g.nbytes
    if pn > 0 and gn > 0 and pb < gb + gn and gb < pb + pn:
        raise ValueError(f"{_gname(i, labels)}: the gradient shares memory with its parameter")


# --------------------------------------------------------------------------- step
def fused_step(algo: int, common: dict, scalars: dict, flags: int, params: list, grads: list, states: list,
               emas: Optional[list] = None, tscale=None, control=None, rounding=None) -> None:
    """Run ``algo`` once over all tensors, in one kernel launch on the parameters' GPU.

    Same arguments as the CPU backend's ``fused_step`` (arrays already checked by
    ``check_params``/``check_grads``): ``tscale`` (optional) multiplies the gradient scale
    ``gscale`` per tensor -- a sequence of floats, or a float64 cupy array with one entry
    per tensor (e.g. from :func:`grad_control`, so it never leaves the device).
    ``control`` (optional) is the control block of :func:`grad_control`, read by the
    kernel on the device: skip flag and global clip coefficient.
    bfloat16 state: uint16 state buffers holding bfloat16 bits (see :func:`to_storage`)
    with float32 parameters; ``rounding`` = ``(seed, step, tensor_ids, stochastic)`` as
    for the CPU backend, whose bits the kernel reproduces.
    Asynchronous: returns once the launch is queued on the current stream.
    """
    if len(params) == 0:
        return
    cp = _cp()
    name, hps, meta, nbuf, ema, extra = _prepare(algo, common, scalars, flags, params, grads, states, emas, _ptr,
                                                 rounding)
    ntens = len(params)
    total = int(meta[ntens])
    if total == 0:
        return
    dev = params[0].data.device_id
    if control is not None:
        _check_device_vector(control, _consts().CTRL, dev, "control")
    k = _consts()
    with cp.cuda.Device(dev):
        ts = _tscale_arg(tscale, ntens, dev)
        fn = _function(dev, name)
        meta_d = _upload(meta, dev)
        fn((_grid(total, k.CHUNK, _nsm(dev)),), (k.THREADS,),
           (hps, meta_d, np.int32(ntens), np.int32(nbuf), np.int32(ema), np.uint32(flags),
            _null() if ts is None else ts, _null() if control is None else control) + extra)


def fused_step_q8(algo: int, common: dict, scalars: dict, flags: int, params: list, grads: list, states: list,
                  absmax: list, emas: Optional[list] = None, tscale=None, control=None, rounding=None,
                  block: int = 256) -> None:
    """:func:`fused_step` with 8-bit block-wise state: the CPU backend's ``fused_step_q8``
    on the device, one launch of ``fo_<algo>_kernel_q8`` (kernels.cu) for every tensor of
    the call, bit for bit the CPU loop's codes and absmax (up to -ftz).

    ``states[k][i]``: tensor i's uint8 codes when ``absmax[k][i]`` is its float32 absmax
    (one per block of ``block`` elements), else its float32 state (below min_8bit_size).
    Parameters and gradients are float32.  ``rounding`` = ``(seed, step, tensor_ids,
    stochastic)`` as for the CPU backend.  Asynchronous, as :func:`fused_step`."""
    if len(params) == 0:
        return
    cp = _cp()
    name, hps, meta, nbuf, ema, nblk, extra = _prepare_q8(algo, common, scalars, flags, params, grads, states,
                                                          absmax, emas, _ptr, rounding, block)
    if nblk == 0:
        return
    ntens = len(params)
    dev = params[0].data.device_id
    if control is not None:
        _check_device_vector(control, _consts().CTRL, dev, "control")
    with cp.cuda.Device(dev):
        ts = _tscale_arg(tscale, ntens, dev)
        fn = _function(dev, name)
        meta_d = _upload(meta, dev)
        fn((_grid(nblk, 1, _nsm(dev)),), (_q8_threads(block),),
           (hps, meta_d, np.int32(ntens), np.int32(nbuf), np.int32(ema), np.uint32(flags),
            _null() if ts is None else ts, _null() if control is None else control) + extra + (_q8_tables(dev),))


_q8_tables_dev: Dict[int, object] = {}


def _q8_tables(dev: int):
    """The device copy (per device, made once) of the host's two code tables (q8.h's
    ``fo_q8_table``, unsigned then signed: ``_kernels.q8_table_bytes``)."""
    t = _q8_tables_dev.get(dev)
    if t is None:
        cp = _cp()
        with cp.cuda.Device(dev):
            t = cp.asarray(np.frombuffer(_kernels.q8_table_bytes(), dtype=np.uint8))
        with _lock:
            t = _q8_tables_dev.setdefault(dev, t)
    return t


def quantize(x, signed: bool, block: int = 256):
    """``(codes, absmax)`` of a float32 device array ``x`` on its device: uint8 codes of
    x's shape and one float32 absmax per block of ``block`` elements, nearest rounding
    (``fo_q8_quantize_kernel``: the CPU's ``fusedoptim.lowp.quantize``, bit for bit)."""
    cp = _cp()
    block = _kernels.q8_check_block(block)
    if x.dtype != _F32 or not x.flags.c_contiguous:
        raise TypeError(f"8-bit state is quantized from a C-contiguous float32 array, got {x.dtype}")
    dev = x.device.id
    n = x.size
    nblk = -(-n // block)
    with cp.cuda.Device(dev):
        codes = cp.empty(x.shape, dtype=_U8)
        amax = cp.empty(nblk, dtype=_F32)
        if n:
            _function(dev, "fo_q8_quantize_kernel")(
                (_grid(nblk, 1, _nsm(dev)),), (_q8_threads(block),),
                (x, codes, amax, np.int64(n), np.int64(block), np.int32(1 if signed else 0), _q8_tables(dev)))
    return codes, amax


def accumulate(accs: list, grads: list, scale: float = 1.0) -> None:
    """accs[i] += scale * grads[i] for every pair, in one launch: the SGD rule with lr = -1,
    gradient scale ``scale`` and no decay (as the CPU backend does; arrays checked by the
    caller)."""
    common = _kernels.ACCUMULATE_COMMON if scale == 1.0 else dict(_kernels.ACCUMULATE_COMMON, gscale=float(scale))
    fused_step(_kernels.ALGORITHMS["sgd"].id, common, _kernels.ACCUMULATE_SCALARS, 0, accs, grads, [])


def _tscale_arg(tscale, ntens: int, dev: int):
    if tscale is None:
        return None
    if is_device_array(tscale):
        _check_device_vector(tscale, ntens, dev, "tscale")
        return tscale
    ts = np.asarray(tscale, dtype=np.float64)
    if ts.shape != (ntens,):
        raise ValueError(f"expected {ntens} per-tensor scales, got {ts.size}")
    return _upload(ts.view(np.int64), dev)  # the bits of the doubles, cached like a table


def _check_device_vector(a, n: int, dev: int, what: str) -> None:
    cp = _cp()
    if not isinstance(a, cp.ndarray) or a.dtype != np.float64 or a.shape != (n,) or not a.flags.c_contiguous:
        raise TypeError(f"{what} must be a C-contiguous float64 cupy array of {n} entries")
    if a.device.id != dev:
        raise ValueError(f"{what} is on GPU {a.device.id}, the parameters on GPU {dev}")


# -------------------------------------------------------------- device reductions
def _reduction_meta(sizes: Sequence[int], ptrs: Sequence[int], red_chunk: int) -> np.ndarray:
    """starts[0..n], blk[0..n] (blocks of red_chunk elements per tensor), pointers."""
    n = len(sizes)
    sz = np.asarray(sizes, dtype=np.int64)
    meta = np.zeros(3 * n + 2, dtype=np.int64)
    np.cumsum(sz, out=meta[1:n + 1])
    np.cumsum(-(-sz // red_chunk), out=meta[n + 2:2 * n + 2])
    meta[2 * n + 2:] = np.asarray(ptrs, dtype=np.uint64).view(np.int64)
    return meta


def grad_control(grads: list, *, grad_scale: float = 1.0, global_clipnorm: Optional[float] = None,
                 clipnorm: Optional[float] = None, skip_nonfinite: bool = False, per_tensor: bool = False):
    """The statistics and control block of a step, computed on the device, no host sync.

    Returns ``(ctrl, tscale, per)``:

    - ``ctrl``: float64 cupy array of 4 -- ``[sum of squares of every gradient element,
      1.0 if an element is NaN/Inf, global clip coefficient, 1.0 to skip the step]``.
      The coefficient is ``c / max(norm, c)`` with ``norm = sqrt(sumsq) * grad_scale``
      (NaN for a non-finite gradient) when ``global_clipnorm = c`` is given, else 1; the
      skip flag is set when ``skip_nonfinite`` and an element is non-finite.
    - ``tscale``: with ``clipnorm = c``, a float64 cupy array of the per-gradient
      coefficients ``c / max(norm_i, c)`` (NaN for a non-finite norm), else None.
    - ``per``: with ``per_tensor``, a float64 cupy array of per-gradient sums of squares.

    ``None`` gradients count as empty (coefficient 1, sum 0).  Pass ``control=ctrl`` and
    ``tscale`` (its entries for the tensors of the call) to :func:`fused_step`.  Sums are
    float64 over fixed blocks in a fixed order: the bits depend on the gradients alone,
    never on the launch configuration.
    """
    cp = _cp()
    gclip = positive_or_none(global_clipnorm, "global_clipnorm")
    pclip = positive_or_none(clipnorm, "clipnorm")
    grad_scale = float(grad_scale)
    present = [(i, g) for i, g in enumerate(grads) if g is not None]
    _check_arrays([g for _, g in present], [f"grads[{i}]" for i, _ in present])
    k = _consts()
    dev = present[0][1].device.id if present else cp.cuda.Device().id
    ntens = len(grads)
    sizes = [0 if g is None else g.size for g in grads]
    ptrs = [0 if g is None else _ptr(g) for g in grads]
    meta = _reduction_meta(sizes, ptrs, k.RED_CHUNK)
    nblk = int(meta[2 * ntens + 1]) if ntens else 0
    with cp.cuda.Device(dev):
        ctrl = cp.empty(k.CTRL, dtype=np.float64)
        tscale = cp.empty(ntens, dtype=np.float64) if pclip is not None else None
        per = cp.empty(ntens, dtype=np.float64) if per_tensor else None
        partial = cp.empty(max(1, 2 * nblk), dtype=np.float64)
        meta_d = _upload(meta, dev)
        if nblk:
            suffix = "f32" if present[0][1].dtype == np.float32 else "f64"
            _function(dev, "fo_sumsq_kernel_" + suffix)(
                (_grid(nblk, 1, _nsm(dev)),), (k.RED_THREADS,), (meta_d, np.int32(ntens), partial))
        _function(dev, "fo_grad_control_kernel")(
            (1,), (k.RED_THREADS,),
            (meta_d, np.int32(ntens), partial, np.float64(grad_scale),
             np.float64(gclip if gclip is not None else 0.0), np.float64(pclip if pclip is not None else 0.0),
             np.int32(bool(skip_nonfinite)), ctrl,
             _null() if tscale is None else tscale, _null() if per is None else per))
    return ctrl, tscale, per


def grad_stats(arrays: list, per_tensor: bool = False, want_max: bool = False):
    """The CPU backend's ``grad_stats`` on the device: ``(sumsq, None, per)`` with
    ``sumsq`` a 0-d float64 cupy array and ``per`` a float64 cupy array or None.  They
    stay on the device (``float(sumsq)`` waits for the GPU).  ``want_max`` is not
    supported on CUDA."""
    if want_max:
        raise NotImplementedError("grad_stats(want_max=True) is not implemented for CuPy arrays")
    ctrl, _, per = grad_control(arrays, per_tensor=per_tensor)
    return ctrl[CTRL_SUMSQ], None, per


def grad_norm_sq(grads: list):
    """Sum of the squares of all gradient elements, as a 0-d float64 cupy array (on the
    device: ``float(...)`` of it waits for the GPU)."""
    return grad_control(grads)[0][CTRL_SUMSQ]


# ----------------------------------------------------------------- array helpers
def take(a, idx: Sequence[int]):
    """``a[idx]`` for a device vector (e.g. the per-tensor scales of one bucket), without
    leaving the device."""
    cp = _cp()
    with a.device:
        return cp.take(a, cp.asarray(np.asarray(idx, dtype=np.int64)))


def address(a) -> int:
    """Device address of a cupy array's first element (for overlap checks)."""
    return _ptr(a)


def zeros_like(p):
    """A zero-filled state buffer on ``p``'s device."""
    cp = _cp()
    with p.device:
        return cp.zeros(p.shape, dtype=p.dtype)


def full_like(p, v: float):
    """A state buffer filled with ``v`` on ``p``'s device."""
    cp = _cp()
    with p.device:
        return cp.full(p.shape, v, dtype=p.dtype)


def to_host(a) -> np.ndarray:
    """A NumPy copy of a device array (waits for the GPU); NumPy input is copied.  A
    uint16 device array is bfloat16 state (the only uint16 arrays this backend keeps):
    its copy is an ``ml_dtypes.bfloat16`` array, as the CPU backend's state."""
    if is_device_array(a):
        h = _cp().asnumpy(a)
        return h.view(bfloat16()) if h.dtype == _BF16_BITS else h
    return np.array(a, copy=True)


def from_host(a, like):
    """A C-contiguous device copy of ``a`` (NumPy or CuPy) with ``like``'s dtype, on
    ``like``'s device; a host ``bfloat16`` array becomes uint16 bfloat16 bits (state) and
    uint8 8-bit codes stay uint8."""
    cp = _cp()
    dtype = like.dtype
    if isinstance(a, np.ndarray) and is_bfloat16(a.dtype):
        a, dtype = np.ascontiguousarray(a).view(np.uint16), _BF16_BITS
    elif a.dtype == _U8:
        dtype = _U8
    with like.device:
        return cp.array(a, dtype=dtype, order="C", copy=True)


def storage_dtype(dtype):
    """How this backend stores a state dtype: bfloat16 as uint16 bits (CuPy has no
    bfloat16), the rest as itself."""
    return _BF16_BITS if dtype is not None and is_bfloat16(dtype) else dtype


def to_storage(a, dtype):
    """A state buffer ``a`` (a float32 device array, fresh from the optimizer's
    ``init_buffer``) in the storage of ``dtype``: bfloat16 is rounded to the nearest even
    by lowp.h on the device (fo_bf16_round_kernel, as the CPU's ``astype(bfloat16)``)
    into uint16 bits; other dtypes are ``a.astype(dtype)``."""
    if not is_bfloat16(dtype):
        return a.astype(dtype)
    cp = _cp()
    if a.dtype != _F32 or not a.flags.c_contiguous:
        raise TypeError(f"bfloat16 state is rounded from a C-contiguous float32 array, got {a.dtype}")
    dev = a.device.id
    with cp.cuda.Device(dev):
        out = cp.empty(a.shape, dtype=_BF16_BITS)
        if a.size:
            _function(dev, "fo_bf16_round_kernel")(
                (_grid(a.size, _consts().THREADS, _nsm(dev)),), (_consts().THREADS,),
                (a, out, np.int64(a.size), np.uint64(0), np.uint64(0), np.uint64(0), np.int32(0), np.int32(0)))
    return out
