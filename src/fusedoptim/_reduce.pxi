# fusedoptim/_reduce.pxi -- included by _kernels.pyx: the driver of the reducing algorithms
# (csrc/fusedoptim/reduce.h: LAMB, LARS, NovoGrad), whose update needs per-tensor
# statistics first.  One native call (fused_step) runs, for all tensors of a bucket:
#
#   1. the stats pass: every tensor cut into fixed blocks of FO_RBLOCK elements (a block
#      never crosses a tensor), the blocks shared among the threads; each block's sums go
#      to its own slot, so nothing depends on which thread ran it;
#   2. finish: per tensor, its block sums added in block order, then the descriptor's
#      finish() (in double) -> the per-tensor scalars (trust ratio, denominator) and the
#      per-tensor state (NovoGrad's grads_ema);
#   3. the apply pass: the element update with those scalars, chunked over threads like
#      every element-wise step (chunks cross tensor boundaries).
#
# The bits are identical for any thread count and SIMD clone.  Bytes moved per element
# (float32: 4 bytes per array access): LAMB reads p, g, m, v and writes m, v in the stats
# pass, reads p, m, v and writes p in the apply pass (10 accesses; Adam: 7); LARS reads
# p, g (stats), then p, g, buf and writes p, buf (7 with momentum; SGD with momentum: 5);
# NovoGrad reads g (stats), then p, g, m and writes p, m (6; 5 for an element-wise rule).

cdef extern from "fusedoptim/cpu_reduce.h" nogil:
    ctypedef void (*fo_rstats_fn)(const double *h, unsigned flags, char **bufs, Py_ssize_t n,
                                  double *out) noexcept nogil
    ctypedef void (*fo_rapply_fn)(const double *h, unsigned flags, char **bufs, Py_ssize_t n,
                                  const double *tsd) noexcept nogil
    ctypedef void (*fo_rfinish_fn)(const double *h, unsigned flags, const double *st, int ndim, char **tstate,
                                   double *out) noexcept nogil
    ctypedef struct fo_rkernels:
        fo_rstats_fn stats
        fo_rfinish_fn finish
        fo_rapply_fn apply
        int nstats, ntscal, ntstate, maxstate
    const fo_rkernels *fo_cpu_reduce(int k, int dtype)
    ctypedef struct fo_rspec:
        fo_spec base
        const char *const *stats
        const char *const *tscalars
        const char *const *tstate
        int nstats, ntscal, ntstate, nelem
    const fo_rspec *fo_cpu_reduce_spec(int k)
    enum:
        FO_NREDUCE
        FO_RBLOCK

DEF MAXSTATS = 16        # per-tensor sums a reducing descriptor may declare (finish's local array)

#: The first native id of the reducing algorithms (rules: reduce.h ``FO_REDUCE_ALGOS``);
#: they follow the element-wise ones and the roofline loop.
REDUCE_FIRST = FO_NALGO + 1
#: Elements per block of the stats pass (fixed: the sums never depend on the thread count).
REDUCE_BLOCK = FO_RBLOCK


cdef const fo_spec *_reduce_spec(int algo) noexcept:
    cdef const fo_rspec *r = fo_cpu_reduce_spec(algo - FO_NALGO - 1)
    if r == NULL:
        return NULL
    return &r.base


cdef _export_reduce_specs():
    cdef const fo_rspec *r
    for k in range(FO_NREDUCE):
        r = fo_cpu_reduce_spec(k)
        if r.nstats > MAXSTATS:
            raise ImportError(f"{r.base.name.decode()}: more than {MAXSTATS} per-tensor statistics")
        name = r.base.name.decode()
        ALGORITHMS[name] = NativeSpec(FO_NALGO + 1 + k, name, _names(r.base.scalars), _names(r.base.flags),
                                      _names(r.base.buffers), _names(r.stats), _names(r.tstate))


_export_reduce_specs()


cdef void _rstats_block(const fo_rkernels *kr, const double *hp, unsigned flags, char **table,
                        const Py_ssize_t *starts, const Py_ssize_t *blk, Py_ssize_t ntens, int nbuf,
                        Py_ssize_t itemsize, const double *tscale, double *part, Py_ssize_t b) noexcept nogil:
    # IN: block b (blk[t] = first block of tensor t); OUT: part[b * nstats ..] its sums
    cdef char *bufs[MAXBUF]
    cdef double hloc[FO_MAXSCALARS]
    cdef const double *h = hp
    cdef Py_ssize_t lo = 0, hi = ntens, mid, off, n
    cdef int k
    while hi - lo > 1:                 # last tensor whose first block is <= b
        mid = (lo + hi) >> 1
        if blk[mid] <= b:
            lo = mid
        else:
            hi = mid
    while blk[lo + 1] <= b:            # skip tensors without blocks (size 0)
        lo += 1
    off = (b - blk[lo]) * FO_RBLOCK
    n = starts[lo + 1] - starts[lo] - off
    if n > FO_RBLOCK:
        n = FO_RBLOCK
    for k in range(nbuf):
        bufs[k] = table[lo * nbuf + k]
        if bufs[k] != NULL:
            bufs[k] += off * itemsize
    if tscale != NULL:
        memcpy(hloc, hp, FO_MAXSCALARS * sizeof(double))
        hloc[_GSCALE] = hp[_GSCALE] * tscale[lo]
        h = hloc
    kr.stats(h, flags, bufs, n, part + b * kr.nstats)


cdef void _rapply_chunk(const fo_rkernels *kr, const double *hp, unsigned flags, char **table,
                        const Py_ssize_t *starts, Py_ssize_t ntens, int nbuf, Py_ssize_t itemsize,
                        const double *tscale, const double *tsd, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # IN: global element range [lo, hi); tsd[t * ntscal ..] the per-tensor scalars of tensor t
    cdef char *bufs[MAXBUF]
    cdef double hloc[FO_MAXSCALARS]
    cdef const double *h = hp
    if tscale != NULL:
        memcpy(hloc, hp, FO_MAXSCALARS * sizeof(double))
        h = hloc
    cdef Py_ssize_t a = 0, b = ntens, mid, t, off, n
    cdef int k
    if lo >= hi:
        return
    while b - a > 1:
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
                if bufs[k] != NULL:
                    bufs[k] += off * itemsize
            if tscale != NULL:
                hloc[_GSCALE] = hp[_GSCALE] * tscale[t]
            kr.apply(h, flags, bufs, n, tsd + t * kr.ntscal)
            lo += n
        t += 1


cdef void _reduce_drive(const fo_rkernels *kr, const double *hp, unsigned flags, char **table, char **tst,
                        const Py_ssize_t *starts, const Py_ssize_t *blk, const int *ndims, Py_ssize_t ntens,
                        int nbuf, Py_ssize_t itemsize, const double *tscale, double *part, double *tsd,
                        int nthreads) noexcept nogil:
    global _pool_started
    cdef Py_ssize_t total = starts[ntens], nblk = blk[ntens], b, t, per, c
    cdef int k, ns = kr.nstats
    cdef double st[MAXSTATS]
    cdef bint parallel = nthreads > 1 and total >= _grain
    # 1. the stats pass, one slot per block
    if parallel:
        _pool_started = True
        for b in prange(nblk, num_threads=nthreads, schedule='static'):
            _rstats_block(kr, hp, flags, table, starts, blk, ntens, nbuf, itemsize, tscale, part, b)
    else:
        for b in range(nblk):
            _rstats_block(kr, hp, flags, table, starts, blk, ntens, nbuf, itemsize, tscale, part, b)
    # 2. finish: each tensor's block sums in block order, then its scalars
    for t in range(ntens):
        for k in range(ns):
            st[k] = 0.0
        for b in range(blk[t], blk[t + 1]):
            for k in range(ns):
                st[k] = st[k] + part[b * ns + k]
        kr.finish(hp, flags, st, ndims[t], tst + t * kr.ntstate, tsd + t * kr.ntscal)
    # 3. the apply pass, chunked like every element-wise step
    if not parallel:
        _rapply_chunk(kr, hp, flags, table, starts, ntens, nbuf, itemsize, tscale, tsd, 0, total)
        return
    per = (total + nthreads - 1) // nthreads
    per = ((per + ALIGN - 1) // ALIGN) * ALIGN
    for c in prange(nthreads, num_threads=nthreads, schedule='static'):
        _rapply_chunk(kr, hp, flags, table, starts, ntens, nbuf, itemsize, tscale, tsd,
                      c * per if c * per < total else total,
                      (c + 1) * per if (c + 1) * per < total else total)


cdef _reduce_run(int algo, double *hbuf, unsigned flags, list params, list grads, list states, list emas,
                 object tscale):
    """fused_step of a reducing algorithm: ``states`` holds the kept element buffers, then
    the per-tensor state (one-element arrays of the parameter's dtype)."""
    cdef Py_ssize_t ntens = len(params), i, k, size
    cdef const fo_rspec *rs = fo_cpu_reduce_spec(algo - FO_NALGO - 1)
    cdef int nelem = _popcount(rs.base.mask(flags) & ((1u << rs.nelem) - 1u))
    cdef int ntst = rs.ntstate
    cdef int nbuf = FO_STATE + nelem
    cdef int code, nthreads
    cdef const fo_rkernels *kr
    cdef cnp.ndarray a
    cdef char **table = NULL
    cdef char **tst = NULL
    cdef Py_ssize_t *starts = NULL
    cdef Py_ssize_t *blk = NULL
    cdef int *ndims = NULL
    cdef double *ts = NULL
    cdef double *tsd = NULL
    cdef double *part = NULL
    if ntens == 0:
        return
    if len(grads) != ntens or (emas is not None and len(emas) != ntens):
        raise ValueError(f"expected {ntens} gradients (and EMA buffers)")
    if tscale is not None and len(tscale) != ntens:
        raise ValueError(f"expected {ntens} per-tensor scales, got {len(tscale)}")
    for k in range(nelem + ntst):
        if len(states[k]) != ntens:
            raise ValueError(f"state buffer {k}: expected {ntens} arrays, got {len(states[k])}")
    code = _dtype_code(<cnp.ndarray>params[0])
    kr = fo_cpu_reduce(algo - FO_NALGO - 1, code)
    if kr == NULL:
        raise ValueError(f"no native kernel for algorithm {algo} and dtype {params[0].dtype}")
    try:
        table = <char **>malloc(ntens * nbuf * sizeof(char *))
        tst = <char **>malloc((ntens * ntst + 1) * sizeof(char *))
        starts = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
        blk = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
        ndims = <int *>malloc(ntens * sizeof(int))
        tsd = <double *>malloc((ntens * kr.ntscal + 1) * sizeof(double))
        if tscale is not None:
            ts = <double *>malloc(ntens * sizeof(double))
        if (table == NULL or tst == NULL or starts == NULL or blk == NULL or ndims == NULL or tsd == NULL
                or (tscale is not None and ts == NULL)):
            raise MemoryError()
        if ts != NULL:
            for i in range(ntens):
                ts[i] = tscale[i]
        starts[0] = 0
        blk[0] = 0
        for i in range(ntens):
            a = <cnp.ndarray>params[i]
            size = cnp.PyArray_SIZE(a)
            if _dtype_code(a) != code:
                raise TypeError("mixed dtypes in one native call")
            ndims[i] = cnp.PyArray_NDIM(a)
            table[i * nbuf] = <char *>cnp.PyArray_DATA(a)
            table[i * nbuf + 1] = _data(grads[i], size, code, "gradient", i)
            table[i * nbuf + 2] = NULL
            if emas is not None:
                table[i * nbuf + 2] = _data(emas[i], size, code, "EMA buffer", i)
            for k in range(nelem):
                table[i * nbuf + FO_STATE + k] = _data((<list>states[k])[i], size, code, "state buffer", i)
            for k in range(ntst):
                tst[i * ntst + k] = _data((<list>states[nelem + k])[i], 1, code, "per-tensor state", i)
            starts[i + 1] = starts[i] + size
            blk[i + 1] = blk[i] + (size + FO_RBLOCK - 1) // FO_RBLOCK
        part = <double *>malloc((blk[ntens] * kr.nstats + 1) * sizeof(double))
        if part == NULL:
            raise MemoryError()
        nthreads = get_num_threads()
        with nogil:
            _reduce_drive(kr, hbuf, flags, table, tst, starts, blk, ndims, ntens, nbuf, 4 if code == 0 else 8, ts,
                          part, tsd, nthreads)
    finally:
        free(table)
        free(tst)
        free(starts)
        free(blk)
        free(ndims)
        free(ts)
        free(tsd)
        free(part)
