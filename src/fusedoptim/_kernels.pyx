# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native multi-tensor driver.

One call updates every tensor of a parameter bucket: the total element count of all
tensors is split into one contiguous chunk per thread (chunks cross tensor boundaries),
each chunk is cut at tensor boundaries into segments, and every segment runs the
algorithm's loop from ``csrc/fusedoptim/cpu.h`` (one generic loop around the element rule
of ``rules.h``).  Below the grain size the call stays on one thread.

The algorithms and their specs come from the native list (``rules.h``: ``FO_ALGOS`` and
each algorithm's named scalars, flags and buffers; ``spec.h`` exports the names):
:data:`ALGORITHMS` maps a name to its :class:`NativeSpec`, and :func:`fused_step` takes
the per-step scalars as dicts, packed here by name in the order the loops were compiled
with.  Nothing is positional.

This module checks arrays, not hyperparameters: the Python classes validate those.
"""
import os
import sys
from collections import namedtuple

import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from cpython.dict cimport PyDict_Update, PyDict_GetItem, PyDict_Next
from cpython.object cimport PyObject

cnp.import_array()

cdef extern from "fusedoptim/fo_omp.h" nogil:
    int omp_get_max_threads()
    int FO_HAVE_OPENMP

cdef extern from "fusedoptim/spec.h" nogil:
    ctypedef void (*fo_seg_fn)(const double *h, unsigned flags, char **bufs, Py_ssize_t n) noexcept nogil
    fo_seg_fn fo_cpu_seg(int algo, int dtype)
    ctypedef void (*fo_stats_fn)(const void *x, Py_ssize_t n, double *sumsq, double *maxabs) noexcept nogil
    fo_stats_fn fo_cpu_stats(int dtype)
    const char *fo_simd_level()
    ctypedef struct fo_lp_ctx:
        unsigned long long seed, step, tensor
        Py_ssize_t i0
        int stochastic
    ctypedef void (*fo_lp_fn)(const double *h, unsigned flags, char **bufs, Py_ssize_t n,
                              const fo_lp_ctx *x) noexcept nogil
    fo_lp_fn fo_cpu_seg_lp(int algo, int code)
    ctypedef struct fo_spec:
        const char *name
        const char *const *scalars
        const char *const *flags
        const char *const *buffers
        int nscalars, nflags, nbuffers
        unsigned (*mask)(unsigned flags)
        unsigned signs
    const fo_spec *fo_cpu_spec(int algo)
    const char *const fo_common_names[]
    enum:
        FO_NALGO
        FO_MAXSCALARS
        FO_NCOMMON
        FO_STATE
        FO_MAXSTATE

HAVE_OPENMP = bool(FO_HAVE_OPENMP)
MAX_SCALARS = FO_MAXSCALARS


cdef tuple _names(const char *const *lst):
    """A NULL-terminated C list of names as a tuple of interned strings (so a dict with
    literal keys in this order packs by identity: _pack)."""
    cdef list out = []
    cdef int k = 0
    while lst[k] != NULL:
        out.append(sys.intern(lst[k].decode()))
        k += 1
    return tuple(out)


NativeSpec = namedtuple("NativeSpec", "id name scalars flags buffers stats tensor_state", defaults=((), ()))
NativeSpec.__doc__ = """One algorithm as the extension was compiled: its id, the names of its
per-step scalars (packing order, after :data:`COMMON_SCALARS`), of its flags (flag k is bit
k) and of every state buffer it can keep (declaration order); for a reducing algorithm
(``_reduce.pxi``) also the per-tensor sums of its stats pass and its per-tensor state (the
last entries of ``buffers``, one-element arrays)."""

#: The scalars every block starts with (rules.h ``FO_COMMON_SCALARS``).
COMMON_SCALARS = _names(fo_common_names)
#: name -> :class:`NativeSpec`, in native id order (rules.h ``FO_ALGOS``).
ALGORITHMS = {}


cdef _export_specs():
    cdef const fo_spec *s
    for i in range(FO_NALGO):
        s = fo_cpu_spec(i)
        ALGORITHMS[s.name.decode()] = NativeSpec(i, s.name.decode(), _names(s.scalars), _names(s.flags),
                                                 _names(s.buffers))


_export_specs()
#: The roofline loop's id (not an optimizer: see :func:`stream`).
STREAM = FO_NALGO
cdef list _SCALAR_NAMES = None   # scalar names by native id (set after _reduce.pxi adds its algorithms)
cdef int _GSCALE = COMMON_SCALARS.index("gscale")


def kept_buffers(int algo, unsigned flags):
    """The names of the state buffers algorithm ``algo`` keeps under ``flags``, in the
    order :func:`fused_step` takes them (native: the descriptor's ``mask``)."""
    cdef const fo_spec *s = _spec(algo, flags)
    cdef unsigned m = s.mask(flags)
    return tuple(s.buffers[k].decode() for k in range(s.nbuffers) if (m >> k) & 1u)


cdef const fo_spec *_spec(int algo, unsigned flags) except NULL:
    cdef const fo_spec *s = fo_cpu_spec(algo) if algo < FO_NALGO else _reduce_spec(algo)
    if s == NULL:
        raise ValueError(f"no native algorithm with id {algo}")
    if flags >> s.nflags:
        raise ValueError(f"{s.name.decode()}: flag bits {flags:#x} outside its {s.nflags} flag(s) "
                         f"{_names(s.flags)}")
    return s


cdef int _popcount(unsigned m) noexcept:
    cdef int n = 0
    while m:
        n += m & 1u
        m >>= 1
    return n


cdef int _pack(dict d, tuple names, double *out, int algo) except -1:
    """out[k] = d[names[k]]; every name present, no other key (algo < 0: the common block).

    A dict written in the spec's order with literal keys (interned strings, as are the
    names here) is read in one walk comparing key identities; any other dict by lookups."""
    cdef Py_ssize_t k = 0, n = len(names), pos = 0
    cdef PyObject *key
    cdef PyObject *v
    if len(d) == n:
        while PyDict_Next(d, &pos, &key, &v):
            if key != <PyObject *>names[k]:
                break
            out[k] = <object>v
            k += 1
    cdef Py_ssize_t j
    for j in range(k, n):
        v = PyDict_GetItem(d, names[j])
        if v == NULL:
            raise ValueError(f"{_block_name(algo)}: the scalar {names[j]!r} is missing (expected {names})")
        out[j] = <object>v
    if len(d) != n:
        raise ValueError(f"{_block_name(algo)}: unknown scalar(s) {sorted(set(d) - set(names))}; expected {names}")
    return 0


cdef str _block_name(int algo):
    return "common block" if algo < 0 else _spec(algo, 0).name.decode()


def pack_scalars(int algo, dict common, dict scalars):
    """The block of ``algo``'s per-step scalars as the loops read it: a float64 array of
    :data:`MAX_SCALARS` entries, the common block then the algorithm's, packed by name
    (the CUDA backend passes it to the kernels by value)."""
    out = np.zeros(FO_MAXSCALARS, dtype=np.float64)
    cdef double[::1] o = out
    cdef const fo_spec *s = _spec(algo, 0)
    _pack(common, COMMON_SCALARS, &o[0], -1)
    _pack(scalars, _SCALAR_NAMES[algo], &o[FO_NCOMMON], algo)
    return out


DEF MAXBUF = 8           # FO_STATE + FO_MAXSTATE + 1
DEF ALIGN = 64           # chunk boundaries are multiples of this many elements
DEF BF16 = 2                 # _dtype_code of a bfloat16 array (storage only: arithmetic is float32)

include "_reduce.pxi"
_SCALAR_NAMES = [None] * (max(_s.id for _s in ALGORITHMS.values()) + 1)   # None: STREAM's id
for _s in ALGORITHMS.values():
    _SCALAR_NAMES[_s.id] = _s.scalars
del _s

# Below this many elements a call runs on one thread (no OpenMP fork/join).
cdef Py_ssize_t _grain = 1 << 16
cdef int _num_threads = 0   # 0: follow omp_get_max_threads() (OMP_NUM_THREADS, threadpoolctl)
cdef bint _pool_started = False   # this process ran one of our parallel regions (libgomp made its pool)
cdef bint _pool_lost = False      # forked from such a process: a parallel region here would hang


def set_num_threads(int n):
    """Use ``n`` threads for every step (``n <= 0`` restores the OpenMP default).

    A child made by ``fork`` runs on one thread (GNU OpenMP's threads do not survive
    fork; the README's "Guarantees and limits" explains).  In a child of a process that
    had run a parallel step, asking for more raises ``RuntimeError`` instead of hanging;
    use the ``spawn`` or ``forkserver`` start method for workers that need threads."""
    global _num_threads
    if _pool_lost and n != 1:
        raise RuntimeError(
            "this process was forked from one that had run fusedoptim with several OpenMP threads; "
            "GNU OpenMP can't run threads in it again (the first parallel region would hang), so it stays "
            "on one thread.  Start workers that need threads with the 'spawn' or 'forkserver' method.")
    _num_threads = n if n > 0 else 0


def _after_fork_in_child():
    # GNU OpenMP keeps its thread pool across fork() but not its threads: the first
    # parallel region in a child of a process that ran one waits forever.  A forked
    # child therefore runs single-threaded; see set_num_threads.
    global _num_threads, _pool_lost
    _num_threads = 1
    _pool_lost = _pool_lost or _pool_started


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_num_threads():
    """Threads a large step will use: the value set by ``set_num_threads``, else the
    OpenMP default (``OMP_NUM_THREADS``; follows ``threadpoolctl.threadpool_limits``)."""
    return _num_threads if _num_threads > 0 else omp_get_max_threads()


def simd_level():
    """The instruction set of the loop clones this CPU runs: ``"x86-64-v4"`` (AVX-512),
    ``"x86-64-v3"`` (AVX2/FMA), ``"x86-64"`` (SSE2), or ``"generic"`` for a build without
    multiversioning (not x86-64 Linux with GCC/Clang)."""
    return fo_simd_level().decode()


def set_grain_size(Py_ssize_t n):
    """Steps with fewer than ``n`` elements in total run on one thread."""
    global _grain
    if n < 1:
        raise ValueError(f"grain size must be >= 1, got {n}")
    _grain = n


def get_grain_size():
    return _grain


cdef Py_ssize_t _ITEMSIZE[3]
_ITEMSIZE[:] = [4, 8, 2]
# bfloat16 is ml_dtypes' NumPy type, a user-defined type number (>= NPY_USERDEF) known once
# ml_dtypes is imported.  Not imported here (it is slow to import): a bfloat16 array can
# only exist after its import, so the number is looked up when a user type first shows up.
cdef int _bf16_num = -1


cdef int _user_code(int t):
    global _bf16_num
    if _bf16_num < 0:
        mod = sys.modules.get("ml_dtypes")
        if mod is None:
            return -1
        _bf16_num = np.dtype(mod.bfloat16).num
    return BF16 if t == _bf16_num else -1


cdef inline int _dtype_code(cnp.ndarray a):
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_FLOAT32:
        return 0
    if t == cnp.NPY_FLOAT64:
        return 1
    if t >= 256:             # NPY_USERDEF: the first user-defined type number
        return _user_code(t)
    return -1


include "_checks.pxi"


cdef struct _LowP:
    # a low-precision call (storage code != 0): its loop, the key of its random bits, the
    # tensors' indices in the optimizer (the key's tensor part)
    fo_lp_fn fn
    fo_lp_ctx ctx
    const unsigned long long *tids


cdef void _run_chunk(fo_seg_fn fn, const double *hp, unsigned flags, char **table, const Py_ssize_t *starts,
                     Py_ssize_t ntens, int nbuf, const Py_ssize_t *itemsize, const double *tscale,
                     const _LowP *lowp, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # IN: global element range [lo, hi); starts[t] = first global index of tensor t;
    #     itemsize[k]: bytes per element of buffer slot k;
    #     tscale[t] (or NULL) multiplies the common block's gscale for tensor t;
    #     lowp (or NULL): run its loop instead of fn, with the segment's place in its tensor
    cdef char *bufs[MAXBUF]
    cdef fo_lp_ctx ctx
    cdef double hloc[FO_MAXSCALARS]
    cdef const double *h = hp
    if tscale != NULL:
        memcpy(hloc, hp, FO_MAXSCALARS * sizeof(double))
        h = hloc
    cdef Py_ssize_t a = 0, b = ntens, mid, t, off, n
    cdef int k
    if lo >= hi:
        return
    while b - a > 1:              # last tensor with starts[t] <= lo
        mid = (a + b) >> 1
        if starts[mid] <= lo:
            a = mid
        else:
            b = mid
    t = a
    while lo < hi and t < ntens:
        off = lo - starts[t]
        n = starts[t + 1] - lo
        if n > hi - lo:
            n = hi - lo
        if n > 0:
            for k in range(nbuf):
                bufs[k] = table[t * nbuf + k]
                if bufs[k] != NULL:       # an absent buffer (no EMA) stays NULL
                    bufs[k] += off * itemsize[k]
            if tscale != NULL:
                hloc[_GSCALE] = hp[_GSCALE] * tscale[t]
            if lowp != NULL:
                ctx = lowp.ctx
                ctx.tensor = lowp.tids[t]
                ctx.i0 = off
                lowp.fn(h, flags, bufs, n, &ctx)
            else:
                fn(h, flags, bufs, n)
            lo += n
        t += 1


cdef void _drive(fo_seg_fn fn, const double *hp, unsigned flags, char **table, const Py_ssize_t *starts,
                 Py_ssize_t ntens, int nbuf, const Py_ssize_t *itemsize, const double *tscale,
                 const _LowP *lowp, int nthreads) noexcept nogil:
    global _pool_started
    cdef Py_ssize_t total = starts[ntens]
    cdef Py_ssize_t per, c
    if nthreads <= 1 or total < _grain:
        _run_chunk(fn, hp, flags, table, starts, ntens, nbuf, itemsize, tscale, lowp, 0, total)
        return
    per = (total + nthreads - 1) // nthreads
    per = ((per + ALIGN - 1) // ALIGN) * ALIGN
    _pool_started = True
    for c in prange(nthreads, num_threads=nthreads, schedule='static'):
        _run_chunk(fn, hp, flags, table, starts, ntens, nbuf, itemsize, tscale, lowp,
                   c * per if c * per < total else total,
                   (c + 1) * per if (c + 1) * per < total else total)


def fused_step(int algo, dict common, dict scalars, unsigned flags, list params, list grads, list states,
               list emas=None, object tscale=None, object control=None, object rounding=None):
    """Run algorithm ``algo`` (an id of :data:`ALGORITHMS`) once over all tensors.

    ``common`` and ``scalars`` are the per-step scalars by name (every name of
    :data:`COMMON_SCALARS` and of the algorithm's ``scalars``, no other), ``flags`` its
    flag bits.  params[i] and grads[i] are ndarrays already checked by
    check_params/check_grads; ``states[k][i]`` is the k-th buffer of
    ``kept_buffers(algo, flags)`` for tensor i, with the parameter's dtype and size;
    ``emas[i]`` (optional) is an exponential moving average of params[i], updated in the
    same pass; ``tscale`` (optional, one float per tensor) multiplies the gradient scale
    ``gscale`` per tensor (per-parameter norm clipping).  ``control`` (a device control
    block) is the CUDA backend's and must be None here.

    Storage may be bfloat16 (``ml_dtypes.bfloat16`` arrays, float32 arithmetic): the
    state buffers, the gradients, or the parameters with their EMAs, each group all or
    nothing; the other arrays are then float32.  ``rounding`` = ``(seed, step,
    tensor_ids, stochastic)`` keys the random bits of stochastic rounding on the
    bfloat16 writes (``tensor_ids[i]``: tensor i's index in the optimizer, None: i;
    ``stochastic`` False: round to nearest even); None is ``(0, 0, None, True)``.
    """
    cdef double hbuf[FO_MAXSCALARS]
    cdef const fo_spec *s = _spec(algo, flags)
    if control is not None:
        raise ValueError("the CPU backend takes no device control block")
    memset(hbuf, 0, sizeof(hbuf))
    _pack(common, COMMON_SCALARS, hbuf, -1)
    _pack(scalars, <tuple>_SCALAR_NAMES[algo], hbuf + FO_NCOMMON, algo)
    cdef int nstate = _popcount(s.mask(flags))
    if len(states) != nstate:
        raise ValueError(f"{s.name.decode()} with flags {flags:#x} keeps {nstate} state buffer(s) "
                         f"{kept_buffers(algo, flags)}, got {len(states)}")
    if algo > STREAM:       # a reducing algorithm (_reduce.pxi)
        _reduce_run(algo, hbuf, flags, params, grads, states, emas, tscale, rounding)
        return
    _run(algo, hbuf, flags, params, grads, states, emas, tscale, rounding)


def stream(int k, list params, list grads, list states, double scale=0.0):
    """The roofline loop (cpu.h ``fo_stream``): reads param, grad and the ``k - 2`` state
    buffers, writes all but the gradient (``x += scale * sum``): the memory traffic of
    an optimizer with ``k - 2`` state buffers and no arithmetic to speak of."""
    cdef double hbuf[FO_MAXSCALARS]
    if not 2 <= k <= 6 or len(states) != k - 2:
        raise ValueError(f"stream: k must be in 2..6 with k - 2 state buffers, got k={k}, {len(states)}")
    memset(hbuf, 0, sizeof(hbuf))
    hbuf[0] = scale
    _run(STREAM, hbuf, k, params, grads, states, None, None, None)


cdef _run(int algo, double *hbuf, unsigned flags, list params, list grads, list states, list emas,
          object tscale, object rounding):
    cdef Py_ssize_t ntens = len(params), i, k
    cdef int nstate = len(states)
    cdef int nbuf = FO_STATE + nstate
    cdef int code
    cdef fo_seg_fn fn
    cdef char **table
    cdef Py_ssize_t *starts
    cdef cnp.ndarray a
    cdef Py_ssize_t size
    cdef int nthreads
    cdef double *ts = NULL
    cdef int gcode, scode, lpcode = 0
    cdef Py_ssize_t isz[MAXBUF]
    cdef _LowP lowp
    cdef const _LowP *lp = NULL
    cdef unsigned long long[::1] tids
    if ntens == 0:
        return
    if nbuf > MAXBUF:
        raise ValueError("too many state buffers for the native kernel")
    if len(grads) != ntens or (emas is not None and len(emas) != ntens):
        raise ValueError(f"expected {ntens} gradients (and EMA buffers)")
    if tscale is not None and len(tscale) != ntens:
        raise ValueError(f"expected {ntens} per-tensor scales, got {len(tscale)}")
    for k in range(nstate):
        if len(states[k]) != ntens:
            raise ValueError(f"state buffer {k}: expected {ntens} arrays, got {len(states[k])}")
    code = _dtype_code(<cnp.ndarray>params[0])
    gcode = _dtype_code(<cnp.ndarray>grads[0]) if isinstance(grads[0], cnp.ndarray) else code
    scode = _dtype_code(<cnp.ndarray>states[0][0]) if nstate and isinstance(states[0][0], cnp.ndarray) else code
    if code == BF16 or gcode == BF16 or scode == BF16:
        if algo == STREAM or not (code in (0, BF16) and gcode in (0, BF16) and scode in (0, BF16)):
            raise TypeError(f"bfloat16 storage goes with float32 arrays only: parameter {params[0].dtype}, "
                            f"gradient {grads[0].dtype}" + (f", state {states[0][0].dtype}" if nstate else ""))
        lpcode = (code == BF16) | ((gcode == BF16) << 1) | ((scode == BF16) << 2)
        lowp.fn = fo_cpu_seg_lp(algo, lpcode)
        seed, step, ids, stochastic = (0, 0, None, True) if rounding is None else rounding
        lowp.ctx.seed = <unsigned long long>seed
        lowp.ctx.step = <unsigned long long>step
        lowp.ctx.stochastic = 1 if stochastic else 0
        if ids is None:
            ids = np.arange(ntens, dtype=np.uint64)
        tids = np.ascontiguousarray(ids, dtype=np.uint64)
        if tids.shape[0] != ntens:
            raise ValueError(f"rounding: expected {ntens} tensor ids, got {tids.shape[0]}")
        lowp.tids = &tids[0]
        lp = &lowp
    else:
        gcode = scode = code
    fn = fo_cpu_seg(algo, 0 if code == BF16 else code)
    if fn == NULL or (lpcode and lowp.fn == NULL):
        raise ValueError(f"no native kernel for algorithm {algo} and dtype {params[0].dtype}")
    isz[0] = isz[2] = _ITEMSIZE[code]
    isz[1] = _ITEMSIZE[gcode]
    for k in range(FO_STATE, nbuf):
        isz[k] = _ITEMSIZE[scode]
    table = <char **>malloc(ntens * nbuf * sizeof(char *))
    starts = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
    if tscale is not None:
        ts = <double *>malloc(ntens * sizeof(double))
    if table == NULL or starts == NULL or (tscale is not None and ts == NULL):
        free(table)
        free(starts)
        free(ts)
        raise MemoryError()
    try:
        if ts != NULL:
            for i in range(ntens):
                ts[i] = tscale[i]
        starts[0] = 0
        for i in range(ntens):
            a = <cnp.ndarray>params[i]
            size = cnp.PyArray_SIZE(a)
            if _dtype_code(a) != code:
                raise TypeError("mixed dtypes in one native call")
            table[i * nbuf] = <char *>cnp.PyArray_DATA(a)
            table[i * nbuf + 1] = _data(grads[i], size, gcode, "gradient", i)
            if emas is None:
                table[i * nbuf + 2] = NULL
            else:
                table[i * nbuf + 2] = _data(emas[i], size, code, "EMA buffer", i)
            for k in range(nstate):
                table[i * nbuf + FO_STATE + k] = _data((<list>states[k])[i], size, scode, "state buffer", i)
            starts[i + 1] = starts[i] + size
        nthreads = get_num_threads()
        with nogil:
            _drive(fn, hbuf, flags, table, starts, ntens, nbuf, isz, ts, lp, nthreads)
    finally:
        free(table)
        free(starts)
        free(ts)


cdef inline char *_data(object o, Py_ssize_t size, int code, str what, Py_ssize_t i) except NULL:
    """The data pointer of a buffer that must match its parameter (size, dtype, layout):
    a few flag tests on the fast path, the messages only when one fails."""
    cdef cnp.ndarray a
    if isinstance(o, cnp.ndarray):
        a = <cnp.ndarray>o
        if (cnp.PyArray_SIZE(a) == size and _dtype_code(a) == code and cnp.PyArray_ISNOTSWAPPED(a)
                and (cnp.PyArray_FLAGS(a) & _NEED) == _NEED):
            return <char *>cnp.PyArray_DATA(a)
    _buffer_error(o, size, code, what, i)
    return NULL


cdef int _NEED = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED


cdef int _buffer_error(object o, Py_ssize_t size, int code, str what, Py_ssize_t i) except -1:
    if not isinstance(o, cnp.ndarray):
        raise TypeError(f"{what} of tensor {i}: expected a numpy.ndarray, got {type(o).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>o
    if cnp.PyArray_SIZE(a) != size or _dtype_code(a) != code:
        raise ValueError(f"{what} of tensor {i} does not match its parameter (size {cnp.PyArray_SIZE(a)}, "
                         f"dtype {a.dtype})")
    raise ValueError(f"{what} of tensor {i}: {_layout_problem(a)}")


include "_stats.pxi"


def accumulate(list accs, list grads, double scale=1.0):
    """accs[i] += scale * grads[i] for every pair, in one native multi-tensor pass.

    This is the SGD rule with lr = -1 and the gradient scale ``gscale = scale`` (p - (-1) *
    (scale * g) = p + scale * g, one rounding of the product), so it needs no kernel of
    its own; arrays must be checked by the caller (same shapes, dtype, C-contiguous).
    """
    common = ACCUMULATE_COMMON if scale == 1.0 else dict(ACCUMULATE_COMMON, gscale=scale)
    fused_step(ALGORITHMS["sgd"].id, common, ACCUMULATE_SCALARS, 0, accs, grads, [])


#: The scalars of :func:`accumulate` (also used by the CUDA backend): gradient scale 1, no
#: decay, no L1, no EMA, no clip value; SGD without momentum at lr = -1.
ACCUMULATE_COMMON = dict(gscale=1.0, weight_decay=0.0, l1=0.0, ema_weight=0.0, clip_value=float("inf"))
ACCUMULATE_SCALARS = dict(lr=-1.0, momentum=0.0, one_minus_dampening=1.0, nesterov=0.0, first=0.0, decay=1.0,
                          grad_coef=1.0)


def update_dicts(list dicts, dict values):
    """dict.update(d, values) for every d (plain dict semantics: subclass __setitem__
    hooks are not called).  Writes the per-parameter step counters after a step."""
    cdef object d
    for d in dicts:
        PyDict_Update(d, values)


include "_tensorwise.pxi"
include "_factored.pxi"
include "_q8.pxi"
