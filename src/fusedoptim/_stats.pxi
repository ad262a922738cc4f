# fusedoptim/_stats.pxi -- included by _kernels.pyx: the deterministic gradient statistics
# (sum of squares, max |x|) over fixed blocks, for clipping and the non-finite guard.

DEF STATS_BLOCK = 16384   # elements per reduction block (fixed: results never depend on threads)


def grad_stats(list arrays, bint per_tensor=False, bint want_max=False):
    """Sum of squares (float64) and, with ``want_max``, max |x| over every array (None
    entries skipped), computed natively in fixed blocks so the bits do not depend on
    the thread count.

    Returns ``(sumsq, maxabs, per)``: ``maxabs`` is None unless asked for; ``per`` is
    None or, with ``per_tensor``, a float64 array of each entry's sum of squares (0 for
    None entries).  Any NaN or Inf element makes ``sumsq`` non-finite.
    """
    global _pool_started
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
            if codes[i] < 0:
                raise TypeError(f"arrays[{i}]: expected a float32/float64/bfloat16 array, got dtype {a.dtype}")
            if _layout_problem(a) is not None:
                raise ValueError(f"arrays[{i}]: {_layout_problem(a)}")
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
                _pool_started = True
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
    fo_cpu_stats(codes[lo])(data[lo] + off * _ITEMSIZE[codes[lo]], n, &bs[b],
                            &bm[b] if bm != NULL else NULL)
