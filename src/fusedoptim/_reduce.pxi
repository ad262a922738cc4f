# fusedoptim/_reduce.pxi -- included by _kernels.pyx: the driver of the reducing algorithms
# (csrc/fusedoptim/reduce.h: LAMB, LARS, NovoGrad), whose update needs per-tensor
# statistics first.  One native call (fused_step) runs, for all tensors of a bucket, batch by
# batch (consecutive tensors whose arrays span at most set_reduce_batch bytes, so that the
# apply pass of a batch finds in the cache what its stats pass read):
#
#   1. the stats pass: every tensor cut into fixed blocks of FO_RBLOCK elements (a block
#      never crosses a tensor), the batch's blocks split among the threads; each block's
#      sums go to its own slot, so nothing depends on which thread ran it;
#   2. finish: per tensor, its block sums added in block order, then the descriptor's
#      finish() (in double) -> the per-tensor scalars (trust ratio, denominator) and the
#      per-tensor state (NovoGrad's grads_ema);
#   3. the apply pass: the element update with those scalars, the batch's elements split
#      among the threads like every element-wise step (chunks cross tensor boundaries).
#
# Each range is one call of the native entry point (cpu_reduce.h), which loads the scalars
# once.  Storage may be bfloat16 (state, parameters, gradients) as for fused_step.
# The bits are identical for any thread count, batch budget and SIMD clone.  Bytes moved per element
# (float32: 4 bytes per array access): LAMB reads p, g, m, v and writes m, v in the stats
# pass, reads p, m, v and writes p in the apply pass (10 accesses; Adam: 7); LARS reads
# p, g (stats), then p, g, buf and writes p, buf (7 with momentum; SGD with momentum: 5);
# NovoGrad reads g (stats), then p, g, m and writes p, m (6; 5 for an element-wise rule).

from cython.parallel cimport parallel

cdef extern from "fusedoptim/cpu_reduce.h" nogil:
    ctypedef struct fo_rjob:
        const double *h
        unsigned flags
        char **table
        int nbuf
        const Py_ssize_t *starts
        const Py_ssize_t *blk
        const int *ndims
        Py_ssize_t ntens
        const double *tscale
        char **tstate
        double *part
        double *tsd
        unsigned long long seed, step
        const unsigned long long *tids
        int stochastic
        float **amtab
        const Py_ssize_t *qblk
        Py_ssize_t qblock
    ctypedef void (*fo_rrange_fn)(const fo_rjob *j, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    ctypedef struct fo_rkernels:
        fo_rrange_fn stats, finish, apply
        int nstats, ntscal, ntstate, maxstate
    const fo_rkernels *fo_cpu_reduce(int k, int code)
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

cdef extern from "fusedoptim/reduce_q8.h" nogil:
    const fo_rkernels *fo_cpu_reduce_q8(int k, int code)

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


#: Bytes of parameter, gradient, EMA and state a batch of the reducing driver spans at most
#: (tensors larger than this are a batch of their own): the apply pass of a batch reads
#: what its stats pass just read, from the cache.  Changes no result (see set_reduce_batch).
cdef Py_ssize_t _rbatch = 8 << 20


def set_reduce_batch(Py_ssize_t nbytes):
    """The cache budget of the reducing optimizers' batches (bytes, >= 1; default 8 MiB):
    consecutive tensors whose arrays span at most ``nbytes`` run their stats and apply
    passes back to back.  The results are the same bits for any value."""
    global _rbatch
    if nbytes < 1:
        raise ValueError(f"the batch budget must be >= 1 byte, got {nbytes}")
    _rbatch = nbytes


def get_reduce_batch():
    return _rbatch


cdef inline Py_ssize_t _part(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t c, Py_ssize_t n) noexcept nogil:
    # the start of part c of n of [lo, hi) (c = n: hi)
    return lo + (hi - lo) * c // n


cdef void _reduce_drive(const fo_rkernels *kr, fo_rjob *j, const Py_ssize_t *qt, Py_ssize_t nq,
                        int nthreads) noexcept nogil:
    # IN: batches q = tensors [qt[q], qt[q + 1]); per batch the stats pass (its blocks), finish
    # (its tensors), the apply pass (its elements; with 8-bit state its 8-bit blocks, j.qblk),
    # each split evenly among the threads; the implicit barrier of each prange orders them
    global _pool_started
    cdef Py_ssize_t total = j.starts[j.ntens], q, c, t0, t1, e0, per
    if nthreads <= 1 or total < _grain:
        for q in range(nq):
            t0 = qt[q]
            t1 = qt[q + 1]
            kr.stats(j, j.blk[t0], j.blk[t1])
            kr.finish(j, t0, t1)
            if j.qblk != NULL:
                kr.apply(j, j.qblk[t0], j.qblk[t1])
            else:
                kr.apply(j, j.starts[t0], j.starts[t1])
        return
    _pool_started = True
    with parallel(num_threads=nthreads):
        for q in range(nq):
            t0 = qt[q]
            t1 = qt[q + 1]
            e0 = j.starts[t0]
            per = (j.starts[t1] - e0 + nthreads - 1) // nthreads
            per = ((per + ALIGN - 1) // ALIGN) * ALIGN
            for c in prange(nthreads, schedule='static'):
                kr.stats(j, _part(j.blk[t0], j.blk[t1], c, nthreads), _part(j.blk[t0], j.blk[t1], c + 1, nthreads))
            for c in prange(nthreads, schedule='static'):
                kr.finish(j, _part(t0, t1, c, nthreads), _part(t0, t1, c + 1, nthreads))
            if j.qblk != NULL:       # 8-bit state: whole blocks per thread
                for c in prange(nthreads, schedule='static'):
                    kr.apply(j, _part(j.qblk[t0], j.qblk[t1], c, nthreads),
                             _part(j.qblk[t0], j.qblk[t1], c + 1, nthreads))
            else:
                for c in prange(nthreads, schedule='static'):
                    kr.apply(j, min(e0 + c * per, j.starts[t1]), min(e0 + (c + 1) * per, j.starts[t1]))


cdef _reduce_run(int algo, double *hbuf, unsigned flags, list params, list grads, list states, list emas,
                 object tscale, object rounding, list absmax=None, Py_ssize_t block=0):
    """fused_step of a reducing algorithm: ``states`` holds the kept element buffers, then
    the per-tensor state (one-element arrays of the state's dtype); ``rounding`` as for
    fused_step (bfloat16 writes).  With ``absmax`` (one list per element buffer) every
    tensor's element buffers are 8-bit (reduce_q8.h): uint8 codes and float32 absmax in
    blocks of ``block``, the per-tensor state float32, parameters and gradients float32 or
    bfloat16; ``rounding`` then keys the stochastic code rounding."""
    cdef Py_ssize_t ntens = len(params), i, k, size, nq = 0, cur = 0, per_el
    cdef const fo_rspec *rs = fo_cpu_reduce_spec(algo - FO_NALGO - 1)
    cdef int nelem = _popcount(rs.base.mask(flags) & ((1u << rs.nelem) - 1u))
    cdef int ntst = rs.ntstate
    cdef int nbuf = FO_STATE + nelem
    cdef int code, gcode, scode, lpcode = 0, nthreads
    cdef const fo_rkernels *kr
    cdef cnp.ndarray a
    cdef fo_rjob job
    cdef char **table = NULL
    cdef char **tst = NULL
    cdef Py_ssize_t *starts = NULL
    cdef Py_ssize_t *blk = NULL
    cdef Py_ssize_t *qt = NULL
    cdef Py_ssize_t *qblk = NULL
    cdef float **amtab = NULL
    cdef bint q8 = absmax is not None
    cdef int *ndims = NULL
    cdef double *ts = NULL
    cdef double *tsd = NULL
    cdef double *part = NULL
    cdef unsigned long long[::1] tids
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
    gcode = _dtype_code(<cnp.ndarray>grads[0]) if isinstance(grads[0], cnp.ndarray) else code
    scode = code
    if q8:
        if len(absmax) != nelem or nelem == 0:
            raise ValueError(f"8-bit state: expected {nelem} absmax lists, got {len(absmax)}")
        if code not in (0, BF16) or gcode not in (0, BF16):
            raise TypeError(f"8-bit state goes with float32 or bfloat16 parameters and gradients, got parameter "
                            f"{params[0].dtype}, gradient {getattr(grads[0], 'dtype', type(grads[0]).__name__)}")
        lpcode = (code == BF16) | ((gcode == BF16) << 1)
        scode = 0            # the per-tensor state
        kr = fo_cpu_reduce_q8(algo - FO_NALGO - 1, lpcode)
    elif nelem + ntst and isinstance(states[0][0], cnp.ndarray):
        scode = _dtype_code(<cnp.ndarray>states[0][0])
    if code == BF16 or gcode == BF16 or scode == BF16:
        if not (code in (0, BF16) and gcode in (0, BF16) and scode in (0, BF16)):
            raise TypeError(f"bfloat16 storage goes with float32 arrays only: parameter {params[0].dtype}, "
                            f"gradient {grads[0].dtype}" + (f", state {states[0][0].dtype}" if nelem + ntst else ""))
        lpcode = (code == BF16) | ((gcode == BF16) << 1) | ((scode == BF16) << 2)
    else:
        gcode = scode = code
    if not q8:    # kernel table: 0 float32, 1 float64, 1 + storage code for bfloat16 storage
        kr = fo_cpu_reduce(algo - FO_NALGO - 1, 1 + lpcode if lpcode else code)
    if kr == NULL:
        raise ValueError(f"no native kernel for algorithm {algo} and dtype {params[0].dtype}")
    memset(&job, 0, sizeof(job))
    if lpcode or q8:
        seed, step, ids, stochastic = (0, 0, None, not q8) if rounding is None else rounding
        job.seed = <unsigned long long>seed
        job.step = <unsigned long long>step
        job.stochastic = 1 if stochastic else 0
        if ids is None:
            ids = np.arange(ntens, dtype=np.uint64)
        tids = np.ascontiguousarray(ids, dtype=np.uint64)
        if tids.shape[0] != ntens:
            raise ValueError(f"rounding: expected {ntens} tensor ids, got {tids.shape[0]}")
        job.tids = &tids[0]
    # bytes of one element over the arrays a batch touches
    per_el = (_ITEMSIZE[code] * (2 if emas is not None else 1) + _ITEMSIZE[gcode]
              + (1 if q8 else _ITEMSIZE[scode]) * nelem)
    try:
        table = <char **>malloc(ntens * nbuf * sizeof(char *))
        tst = <char **>malloc((ntens * ntst + 1) * sizeof(char *))
        starts = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
        blk = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
        qt = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
        ndims = <int *>malloc(ntens * sizeof(int))
        tsd = <double *>malloc((ntens * kr.ntscal + 1) * sizeof(double))
        if q8:
            qblk = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
            amtab = <float **>malloc((ntens * nelem + 1) * sizeof(float *))
            if qblk == NULL or amtab == NULL:
                raise MemoryError()
            qblk[0] = 0
        if tscale is not None:
            ts = <double *>malloc(ntens * sizeof(double))
        if (table == NULL or tst == NULL or starts == NULL or blk == NULL or qt == NULL or ndims == NULL
                or tsd == NULL or (tscale is not None and ts == NULL)):
            raise MemoryError()
        if ts != NULL:
            for i in range(ntens):
                ts[i] = tscale[i]
        starts[0] = 0
        blk[0] = 0
        qt[0] = 0
        for i in range(ntens):
            a = <cnp.ndarray>params[i]
            size = cnp.PyArray_SIZE(a)
            if _dtype_code(a) != code:
                raise TypeError("mixed dtypes in one native call")
            ndims[i] = cnp.PyArray_NDIM(a)
            table[i * nbuf] = <char *>cnp.PyArray_DATA(a)
            table[i * nbuf + 1] = _data(grads[i], size, gcode, "gradient", i)
            table[i * nbuf + 2] = NULL
            if emas is not None:
                table[i * nbuf + 2] = _data(emas[i], size, code, "EMA buffer", i)
            if q8:
                for k in range(nelem):
                    if (<list>absmax[k])[i] is None:
                        raise ValueError(f"tensor {i}: some state buffers are 8-bit, others float32")
                    table[i * nbuf + FO_STATE + k] = _q8_data((<list>states[k])[i], size, cnp.NPY_UINT8,
                                                              "state codes", i)
                    amtab[i * nelem + k] = <float *>_q8_data((<list>absmax[k])[i], (size + block - 1) // block,
                                                             cnp.NPY_FLOAT32, "state absmax", i)
                qblk[i + 1] = qblk[i] + (size + block - 1) // block
            else:
                for k in range(nelem):
                    table[i * nbuf + FO_STATE + k] = _data((<list>states[k])[i], size, scode, "state buffer", i)
            for k in range(ntst):
                tst[i * ntst + k] = _data((<list>states[nelem + k])[i], 1, scode, "per-tensor state", i)
            starts[i + 1] = starts[i] + size
            blk[i + 1] = blk[i] + (size + FO_RBLOCK - 1) // FO_RBLOCK
            if cur > 0 and cur + size * per_el > _rbatch:     # tensor i starts a new batch
                nq += 1
                qt[nq] = i
                cur = 0
            cur += size * per_el
        nq += 1
        qt[nq] = ntens
        part = <double *>malloc((blk[ntens] * kr.nstats + 1) * sizeof(double))
        if part == NULL:
            raise MemoryError()
        job.h = hbuf
        job.flags = flags
        job.table = table
        job.nbuf = nbuf
        job.starts = starts
        job.blk = blk
        job.ndims = ndims
        job.ntens = ntens
        job.tscale = ts
        job.tstate = tst
        job.part = part
        job.tsd = tsd
        if q8:
            job.amtab = amtab
            job.qblk = qblk
            job.qblock = block
        nthreads = get_num_threads()
        with nogil:
            _reduce_drive(kr, &job, qt, nq, nthreads)
    finally:
        free(table)
        free(tst)
        free(starts)
        free(blk)
        free(qt)
        free(qblk)
        free(amtab)
        free(ndims)
        free(ts)
        free(tsd)
        free(part)
