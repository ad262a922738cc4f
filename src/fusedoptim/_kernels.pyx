# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native multi-tensor driver.

One call updates every tensor of a parameter bucket: the total element count of all
tensors is split into one contiguous chunk per thread (chunks cross tensor boundaries),
each chunk is cut at tensor boundaries into segments, and every segment runs the
optimizer's contiguous loop from ``csrc/fusedoptim/cpu.h`` (which calls the element rule
of ``rules.h``).  Below ``GRAIN`` elements the call stays on one thread.

This module checks arrays, not hyperparameters: the Python classes validate those.
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from cpython.dict cimport PyDict_Update
from libc.stdint cimport uintptr_t

cnp.import_array()

cdef extern from "fusedoptim/fo_omp.h" nogil:
    int omp_get_max_threads()
    int FO_HAVE_OPENMP

cdef extern from "fusedoptim/cpu.h" nogil:
    ctypedef void (*fo_seg_fn)(const double *h, char **bufs, Py_ssize_t n) noexcept nogil
    fo_seg_fn fo_cpu_seg(int algo, int dtype)
    ctypedef void (*fo_stats_fn)(const void *x, Py_ssize_t n, double *sumsq, double *maxabs) noexcept nogil
    fo_stats_fn fo_cpu_stats(int dtype)
    const char *fo_simd_level()
    enum:
        FO_SGD, FO_ADAM, FO_ADAGRAD, FO_RMSPROP, FO_ADAMAX, FO_NADAM, FO_RADAM, FO_ADADELTA, FO_RPROP,
        FO_LION, FO_STREAM

SGD = FO_SGD
ADAM = FO_ADAM
ADAGRAD = FO_ADAGRAD
RMSPROP = FO_RMSPROP
ADAMAX = FO_ADAMAX
NADAM = FO_NADAM
RADAM = FO_RADAM
ADADELTA = FO_ADADELTA
RPROP = FO_RPROP
LION = FO_LION
STREAM = FO_STREAM
HAVE_OPENMP = bool(FO_HAVE_OPENMP)

DEF MAXBUF = 8
DEF MAXHP = 16
DEF ALIGN = 64           # chunk boundaries are multiples of this many elements

# Below this many elements a call runs on one thread (no OpenMP fork/join).
cdef Py_ssize_t _grain = 1 << 16
cdef int _num_threads = 0   # 0: follow omp_get_max_threads() (OMP_NUM_THREADS, threadpoolctl)


def set_num_threads(int n):
    """Use ``n`` threads for every step (``n <= 0`` restores the OpenMP default)."""
    global _num_threads
    _num_threads = n if n > 0 else 0


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


cdef inline int _dtype_code(cnp.ndarray a):
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_FLOAT32:
        return 0
    if t == cnp.NPY_FLOAT64:
        return 1
    return -1


cdef str _where(Py_ssize_t i, object labels):
    if labels is None:
        return f"params[{i}]"
    return labels[i]


def check_params(list params, object labels=None):
    """Raise unless every entry is a writeable, C-contiguous float32/float64 ndarray of
    one dtype.  ``labels[i]`` names entry i in messages (default ``params[i]``)."""
    cdef Py_ssize_t i, n = len(params)
    cdef int code, first = -1
    cdef object a
    for i in range(n):
        a = params[i]
        if not isinstance(a, cnp.ndarray):
            raise TypeError(f"{_where(i, labels)}: expected a numpy.ndarray, got {type(a).__name__}")
        code = _dtype_code(<cnp.ndarray>a)
        if code < 0:
            raise TypeError(f"{_where(i, labels)}: dtype {a.dtype} is not supported; use float32 or float64")
        if first < 0:
            first = code
        elif code != first:
            raise TypeError(f"{_where(i, labels)}: dtype {a.dtype} differs from {params[0].dtype} of the "
                            "first parameter; float32 and float64 can't be mixed in one optimizer")
        if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a):
            raise ValueError(f"{_where(i, labels)}: array is not C-contiguous; the optimizer updates it "
                             "in place, so pass a contiguous array (np.ascontiguousarray makes a copy)")
        if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a):
            raise ValueError(f"{_where(i, labels)}: array is read-only; the optimizer updates it in place")


cdef str _gname(Py_ssize_t i, object labels):
    if labels is None:
        return f"grads[{i}]"
    return "gradient of " + labels[i]


cdef bint _same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int k, nd = cnp.PyArray_NDIM(a)
    if cnp.PyArray_NDIM(b) != nd:
        return False
    for k in range(nd):
        if cnp.PyArray_DIM(a, k) != cnp.PyArray_DIM(b, k):
            return False
    return True


def param_spans(list params):
    """The memory spans of the parameters, for check_grads: an int64 array of rows
    (start address, end address, index), sorted by start, zero-size arrays left out."""
    rows = sorted((<Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>p),
                   <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>p) + cnp.PyArray_NBYTES(<cnp.ndarray>p), i)
                  for i, p in enumerate(params) if cnp.PyArray_NBYTES(<cnp.ndarray>p) > 0)
    return np.ascontiguousarray(np.array(rows, dtype=np.int64).reshape(-1, 3))


def check_grads(list params, list grads, object labels=None, object spans=None):
    """Raise unless grads[i] is None or matches params[i]: ndarray, same dtype and
    shape, C-contiguous, not overlapping the parameter (nor, given ``spans`` from
    param_spans, any other parameter: a write race under threads).  Read-only grads
    are fine.  Returns the number of None entries."""
    cdef Py_ssize_t i, n = len(params), nnone = 0, lo, hi, mid, nsp = 0
    cdef const long long *sp = NULL      # rows of (start, end, index), see param_spans
    if spans is not None:
        sp = <const long long *>cnp.PyArray_DATA(<cnp.ndarray>spans)
        nsp = cnp.PyArray_DIM(<cnp.ndarray>spans, 0)
    cdef cnp.ndarray p, g
    cdef char *pb
    cdef char *gb
    cdef Py_ssize_t pn, gn
    cdef object go
    if len(grads) != n:
        raise ValueError(f"expected {n} gradients, one per parameter, got {len(grads)}")
    for i in range(n):
        go = grads[i]
        if go is None:
            nnone += 1
            continue
        p = <cnp.ndarray>params[i]
        if not isinstance(go, cnp.ndarray):
            raise TypeError(f"{_gname(i, labels)}: expected a numpy.ndarray, got {type(go).__name__}")
        g = <cnp.ndarray>go
        if cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(p):
            raise TypeError(f"{_gname(i, labels)}: dtype {go.dtype} does not match the parameter's {params[i].dtype}")
        if not _same_shape(p, g):
            raise ValueError(f"{_gname(i, labels)}: shape {go.shape} does not match the parameter's shape {params[i].shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(g):
            raise ValueError(f"{_gname(i, labels)}: array is not C-contiguous (np.ascontiguousarray makes a copy)")
        pb = <char *>cnp.PyArray_DATA(p)
        gb = <char *>cnp.PyArray_DATA(g)
        pn = cnp.PyArray_NBYTES(p)
        gn = cnp.PyArray_NBYTES(g)
        if pn > 0 and gn > 0 and pb < gb + gn and gb < pb + pn:
            raise ValueError(f"{_gname(i, labels)}: the gradient shares memory with its parameter")
        if nsp > 0 and gn > 0:
            # spans are disjoint and sorted: only the last one starting before the
            # gradient's end can overlap it
            lo = 0
            hi = nsp
            while lo < hi:
                mid = (lo + hi) >> 1
                if sp[3 * mid] < <long long>(gb + gn):
                    lo = mid + 1
                else:
                    hi = mid
            if lo > 0 and sp[3 * (lo - 1) + 1] > <long long>gb:
                raise ValueError(f"{_gname(i, labels)}: the gradient shares memory with "
                                 f"{_where(sp[3 * (lo - 1) + 2], labels)}, another parameter")
    return nnone


cdef void _run_chunk(fo_seg_fn fn, const double *hp, char **table, const Py_ssize_t *starts,
                     Py_ssize_t ntens, int nbuf, Py_ssize_t itemsize, const double *tscale,
                     Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # IN: global element range [lo, hi); starts[t] = first global index of tensor t;
    #     tscale[t] (or NULL) multiplies the gradient scale hp[0] of tensor t
    cdef char *bufs[MAXBUF]
    cdef double hloc[MAXHP]
    cdef const double *h = hp
    if tscale != NULL:
        memcpy(hloc, hp, MAXHP * sizeof(double))
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
                    bufs[k] += off * itemsize
            if tscale != NULL:
                hloc[0] = hp[0] * tscale[t]
            fn(h, bufs, n)
            lo += n
        t += 1


cdef void _drive(fo_seg_fn fn, const double *hp, char **table, const Py_ssize_t *starts,
                 Py_ssize_t ntens, int nbuf, Py_ssize_t itemsize, const double *tscale,
                 int nthreads) noexcept nogil:
    cdef Py_ssize_t total = starts[ntens]
    cdef Py_ssize_t per, c
    if nthreads <= 1 or total < _grain:
        _run_chunk(fn, hp, table, starts, ntens, nbuf, itemsize, tscale, 0, total)
        return
    per = (total + nthreads - 1) // nthreads
    per = ((per + ALIGN - 1) // ALIGN) * ALIGN
    for c in prange(nthreads, num_threads=nthreads, schedule='static'):
        _run_chunk(fn, hp, table, starts, ntens, nbuf, itemsize, tscale,
                   c * per if c * per < total else total,
                   (c + 1) * per if (c + 1) * per < total else total)


def fused_step(int algo, tuple hp, list params, list grads, list states, list emas=None,
               object tscale=None):
    """Run ``algo`` once over all tensors.

    params[i] and grads[i] are ndarrays already checked by check_params/check_grads;
    states is a list of buffer lists, states[k][i] being state buffer k of tensor i,
    each with the parameter's dtype and size; emas[i] (optional) is an exponential
    moving average of params[i], updated in the same pass.  hp holds the per-step
    scalars: the common block then the algorithm's block, as documented in rules.h.
    tscale (optional, one float per tensor) multiplies the gradient scale hp[0] per
    tensor (per-parameter norm clipping).
    """
    cdef Py_ssize_t ntens = len(params), i, k
    cdef int nstate = len(states)
    cdef int nbuf = 3 + nstate
    cdef double hbuf[MAXHP]
    cdef int code
    cdef fo_seg_fn fn
    cdef char **table
    cdef Py_ssize_t *starts
    cdef cnp.ndarray a
    cdef Py_ssize_t size
    cdef int nthreads
    cdef double *ts = NULL
    if ntens == 0:
        return
    if nbuf > MAXBUF or len(hp) > MAXHP:
        raise ValueError("too many buffers or hyperparameters for the native kernel")
    if len(grads) != ntens or (emas is not None and len(emas) != ntens):
        raise ValueError(f"expected {ntens} gradients (and EMA buffers)")
    for k in range(MAXHP):
        hbuf[k] = hp[k] if k < len(hp) else 0.0
    if tscale is not None and len(tscale) != ntens:
        raise ValueError(f"expected {ntens} per-tensor scales, got {len(tscale)}")
    code = _dtype_code(<cnp.ndarray>params[0])
    fn = fo_cpu_seg(algo, code)
    if fn == NULL:
        raise ValueError(f"no native kernel for algorithm {algo} and dtype {params[0].dtype}")
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
            a = <cnp.ndarray>grads[i]
            if cnp.PyArray_SIZE(a) != size or _dtype_code(a) != code:
                raise ValueError(f"gradient {i} does not match its parameter")
            table[i * nbuf + 1] = <char *>cnp.PyArray_DATA(a)
            if emas is None:
                table[i * nbuf + 2] = NULL
            else:
                a = <cnp.ndarray>emas[i]
                if cnp.PyArray_SIZE(a) != size or _dtype_code(a) != code:
                    raise ValueError(f"EMA buffer of tensor {i} does not match its parameter")
                table[i * nbuf + 2] = <char *>cnp.PyArray_DATA(a)
            for k in range(nstate):
                a = <cnp.ndarray>(<list>states[k])[i]
                if cnp.PyArray_SIZE(a) != size or _dtype_code(a) != code:
                    raise ValueError(f"state buffer {k} of tensor {i} does not match its parameter")
                table[i * nbuf + 3 + k] = <char *>cnp.PyArray_DATA(a)
            starts[i + 1] = starts[i] + size
        nthreads = get_num_threads()
        with nogil:
            _drive(fn, hbuf, table, starts, ntens, nbuf, 4 if code == 0 else 8, ts, nthreads)
    finally:
        free(table)
        free(starts)
        free(ts)


DEF STATS_BLOCK = 16384   # elements per reduction block (fixed: results never depend on threads)


def grad_stats(list arrays, bint per_tensor=False, bint want_max=False):
    """Sum of squares (float64) and, with ``want_max``, max |x| over every array (None
    entries skipped), computed natively in fixed blocks so the bits do not depend on
    the thread count.

    Returns ``(sumsq, maxabs, per)``: ``maxabs`` is None unless asked for; ``per`` is
    None or, with ``per_tensor``, a float64 array of each entry's sum of squares (0 for
    None entries).  Any NaN or Inf element makes ``sumsq`` non-finite.
    """
    cdef Py_ssize_t ntens = len(arrays), i, b, nblk = 0, nb, t
    cdef Py_ssize_t *blk_start      # first block of tensor t
    cdef char **data
    cdef Py_ssize_t *sizes
    cdef int *codes
    cdef double *bs
    cdef double *bm
    cdef double s, m, st
    cdef cnp.ndarray a
    cdef Py_ssize_t total = 0
    cdef int nthreads = get_num_threads()
    cdef cnp.ndarray per = None
    cdef double[::1] perv
    if per_tensor:
        per = np.zeros(ntens, dtype=np.float64)
        perv = per
    blk_start = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
    data = <char **>malloc((ntens + 1) * sizeof(char *))
    sizes = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
    codes = <int *>malloc((ntens + 1) * sizeof(int))
    bs = NULL
    bm = NULL
    try:
        if blk_start == NULL or data == NULL or sizes == NULL or codes == NULL:
            raise MemoryError()
        for i in range(ntens):
            blk_start[i] = nblk
            if arrays[i] is None:
                sizes[i] = 0
                data[i] = NULL
                codes[i] = 0
                continue
            a = <cnp.ndarray>arrays[i]
            codes[i] = _dtype_code(a)
            if codes[i] < 0 or not cnp.PyArray_IS_C_CONTIGUOUS(a):
                raise TypeError(f"arrays[{i}]: expected a C-contiguous float32/float64 array")
            sizes[i] = cnp.PyArray_SIZE(a)
            data[i] = <char *>cnp.PyArray_DATA(a)
            nblk += (sizes[i] + STATS_BLOCK - 1) // STATS_BLOCK
            total += sizes[i]
        blk_start[ntens] = nblk
        bs = <double *>malloc((nblk + 1) * sizeof(double))
        bm = <double *>malloc((nblk + 1) * sizeof(double))
        if bs == NULL or bm == NULL:
            raise MemoryError()
        with nogil:
            if nthreads <= 1 or total < _grain:
                for b in range(nblk):
                    _stats_block(b, ntens, blk_start, data, sizes, codes, bs, bm if want_max else NULL)
            else:
                for b in prange(nblk, num_threads=nthreads, schedule='static'):
                    _stats_block(b, ntens, blk_start, data, sizes, codes, bs, bm if want_max else NULL)
        s = 0.0
        m = 0.0
        for t in range(ntens):
            st = 0.0
            for b in range(blk_start[t], blk_start[t + 1]):
                st = st + bs[b]
                if want_max:
                    m = _nanmax(m, bm[b])
            if per_tensor:
                perv[t] = st
            s = s + st
        return s, (m if want_max else None), per
    finally:
        free(blk_start)
        free(data)
        free(sizes)
        free(codes)
        free(bs)
        free(bm)


cdef inline double _nanmax(double a, double b) noexcept nogil:
    """max that keeps NaN from either side (like fo_max in rules.h)"""
    if a != a or b != b:
        return a if a != a else b
    return a if a > b else b


cdef void _stats_block(Py_ssize_t b, Py_ssize_t ntens, const Py_ssize_t *blk_start, char **data,
                       const Py_ssize_t *sizes, const int *codes, double *bs, double *bm) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = ntens, mid, off, n
    while hi - lo > 1:                 # last tensor whose first block is <= b
        mid = (lo + hi) >> 1
        if blk_start[mid] <= b:
            lo = mid
        else:
            hi = mid
    while blk_start[lo + 1] <= b:      # skip tensors without blocks
        lo += 1
    off = (b - blk_start[lo]) * STATS_BLOCK
    n = sizes[lo] - off
    if n > STATS_BLOCK:
        n = STATS_BLOCK
    fo_cpu_stats(codes[lo])(data[lo] + off * (4 if codes[lo] == 0 else 8), n, &bs[b],
                            &bm[b] if bm != NULL else NULL)


def accumulate(list accs, list grads):
    """accs[i] += grads[i] for every pair, in one native multi-tensor pass.

    This is the SGD rule with lr = -1 and no decay (p + 1 * g), so it needs no kernel of
    its own; arrays must be checked by the caller (same shapes, dtype, C-contiguous).
    """
    fused_step(FO_SGD, (1.0, 0.0, 0.0, 0.0, float("inf"), -1.0, 0.0, 0.0, 0.0, 0.0), accs, grads, [])


def update_dicts(list dicts, dict values):
    """dict.update(d, values) for every d (plain dict semantics: subclass __setitem__
    hooks are not called).  Writes the per-parameter step counters after a step."""
    cdef object d
    for d in dicts:
        PyDict_Update(d, values)
