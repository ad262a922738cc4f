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
from libc.stdint cimport uintptr_t

cnp.import_array()

cdef extern from "fusedoptim/fo_omp.h" nogil:
    int omp_get_max_threads()
    int FO_HAVE_OPENMP

cdef extern from "fusedoptim/cpu.h" nogil:
    ctypedef void (*fo_seg_fn)(const double *h, char **bufs, Py_ssize_t n) noexcept nogil
    fo_seg_fn fo_cpu_seg(int algo, int dtype)
    enum:
        FO_SGD, FO_ADAM, FO_ADAGRAD, FO_RMSPROP, FO_ADAMAX, FO_NADAM, FO_RADAM, FO_ADADELTA, FO_STREAM

SGD = FO_SGD
ADAM = FO_ADAM
ADAGRAD = FO_ADAGRAD
RMSPROP = FO_RMSPROP
ADAMAX = FO_ADAMAX
NADAM = FO_NADAM
RADAM = FO_RADAM
ADADELTA = FO_ADADELTA
STREAM = FO_STREAM
HAVE_OPENMP = bool(FO_HAVE_OPENMP)

DEF MAXBUF = 8
DEF MAXHP = 16
DEF ALIGN = 64           # chunk boundaries are multiples of this many elements

# Below this many elements a call runs on one thread (no OpenMP fork/join).
cdef Py_ssize_t _grain = 1 << 15
cdef int _num_threads = 0   # 0: follow omp_get_max_threads() (OMP_NUM_THREADS, threadpoolctl)


def set_num_threads(int n):
    """Use ``n`` threads for every step (``n <= 0`` restores the OpenMP default)."""
    global _num_threads
    _num_threads = n if n > 0 else 0


def get_num_threads():
    """Threads a large step will use: the value set by ``set_num_threads``, else the
    OpenMP default (``OMP_NUM_THREADS``; follows ``threadpoolctl.threadpool_limits``)."""
    return _num_threads if _num_threads > 0 else omp_get_max_threads()


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


def check_grads(list params, list grads, object labels=None):
    """Raise unless grads[i] is None or matches params[i]: ndarray, same dtype and
    shape, C-contiguous, not overlapping the parameter.  Read-only grads are fine.
    Returns the number of None entries."""
    cdef Py_ssize_t i, n = len(params), nnone = 0
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
    return nnone


cdef void _run_chunk(fo_seg_fn fn, const double *hp, char **table, const Py_ssize_t *starts,
                     Py_ssize_t ntens, int nbuf, Py_ssize_t itemsize,
                     Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # IN: global element range [lo, hi); starts[t] = first global index of tensor t
    cdef char *bufs[MAXBUF]
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
            fn(hp, bufs, n)
            lo += n
        t += 1


cdef void _drive(fo_seg_fn fn, const double *hp, char **table, const Py_ssize_t *starts,
                 Py_ssize_t ntens, int nbuf, Py_ssize_t itemsize, int nthreads) noexcept nogil:
    cdef Py_ssize_t total = starts[ntens]
    cdef Py_ssize_t per, c
    if nthreads <= 1 or total < _grain:
        _run_chunk(fn, hp, table, starts, ntens, nbuf, itemsize, 0, total)
        return
    per = (total + nthreads - 1) // nthreads
    per = ((per + ALIGN - 1) // ALIGN) * ALIGN
    for c in prange(nthreads, num_threads=nthreads, schedule='static'):
        _run_chunk(fn, hp, table, starts, ntens, nbuf, itemsize,
                   c * per if c * per < total else total,
                   (c + 1) * per if (c + 1) * per < total else total)


def fused_step(int algo, tuple hp, list params, list grads, list states, list emas=None):
    """Run ``algo`` once over all tensors.

    params[i] and grads[i] are ndarrays already checked by check_params/check_grads;
    states is a list of buffer lists, states[k][i] being state buffer k of tensor i,
    each with the parameter's dtype and size; emas[i] (optional) is an exponential
    moving average of params[i], updated in the same pass.  hp holds the per-step
    scalars: the common block then the algorithm's block, as documented in rules.h.
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
    if ntens == 0:
        return
    if nbuf > MAXBUF or len(hp) > MAXHP:
        raise ValueError("too many buffers or hyperparameters for the native kernel")
    if len(grads) != ntens or (emas is not None and len(emas) != ntens):
        raise ValueError(f"expected {ntens} gradients (and EMA buffers)")
    for k in range(len(hp)):
        hbuf[k] = hp[k]
    code = _dtype_code(<cnp.ndarray>params[0])
    fn = fo_cpu_seg(algo, code)
    if fn == NULL:
        raise ValueError(f"no native kernel for algorithm {algo} and dtype {params[0].dtype}")
    table = <char **>malloc(ntens * nbuf * sizeof(char *))
    starts = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
    if table == NULL or starts == NULL:
        free(table)
        free(starts)
        raise MemoryError()
    try:
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
            _drive(fn, hbuf, table, starts, ntens, nbuf, 4 if code == 0 else 8, nthreads)
    finally:
        free(table)
        free(starts)
