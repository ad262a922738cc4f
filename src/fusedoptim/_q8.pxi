# Included by _kernels.pyx: the driver of 8-bit block-wise state (csrc/fusedoptim/q8.h).
#
# A call takes every tensor of a bucket.  A tensor's state is either quantized (uint8 codes
# of its shape plus one float32 absmax per block of `block` elements) or float32 (tensors
# below the optimizer's min_8bit_size); both kinds go in one call.  The work is counted in
# blocks, not elements: the total block count of all tensors is split into one run of
# whole blocks per thread, so a block is never shared and the bits do not depend on the
# thread count.

cdef extern from "fusedoptim/q8.h" nogil:
    ctypedef struct fo_q8_ctx:
        unsigned long long seed, step, tensor
        Py_ssize_t i0
        Py_ssize_t block
        int stochastic
    ctypedef void (*fo_q8_fn)(const double *h, unsigned flags, char **bufs, float *const *absmax, Py_ssize_t n,
                              const fo_q8_ctx *x) noexcept nogil
    ctypedef struct fo_q8_table:
        float map[256]
        float mag[257]
        float mid[257]
        float gap[257]
        int nmag
    fo_q8_fn fo_cpu_seg_q8(int algo, int code)
    int fo_q8_init()
    const fo_q8_table *fo_q8_table_of(int sgn)
    size_t fo_q8_table_size()
    void fo_q8_quantize(int sgn, const float *v, Py_ssize_t n, Py_ssize_t block, unsigned char *q, float *amax,
                        int stochastic, unsigned kx, int shift)
    void fo_q8_dequantize(int sgn, const unsigned char *q, const float *amax, Py_ssize_t n, Py_ssize_t block,
                          float *out)
    enum:
        FO_Q8_MAXBLOCK
        FO_Q8_MINBLOCK

if fo_q8_init() != 0:
    raise ImportError("fusedoptim: the 8-bit code tables failed their self-check (q8.h fo_q8_init)")
if FO_RBLOCK % FO_Q8_MAXBLOCK:
    raise ImportError("reduce_q8.h expects the stats block (FO_RBLOCK) to hold whole 8-bit blocks")

#: the accepted block sizes of 8-bit state: powers of two in this range
Q8_BLOCK_RANGE = (FO_Q8_MINBLOCK, FO_Q8_MAXBLOCK)


def q8_signed_buffers(int algo):
    """The names of ``algo``'s state buffers declared ``FO_SIGNED`` (rules.h): they use the
    signed code map; the others (``FO_NONNEG``) the unsigned one."""
    cdef const fo_spec *s = _spec(algo, 0)
    return tuple(s.buffers[k].decode() for k in range(s.nbuffers) if (s.signs >> k) & 1u)


def q8_code_map(bint signed):
    """The 256 values a stored code means (``value = map[code] * absmax``), float32: the
    signed map (code 127 is 0) or the unsigned one (code 0 is 0)."""
    cdef const fo_q8_table *t = fo_q8_table_of(signed)
    return np.array([t.map[k] for k in range(256)], dtype=np.float32)


def q8_tables(bint signed):
    """The search tables of a code map (q8.h): ``mag`` (the non-negative values, ascending),
    ``mid`` (float32 midpoints between neighbours: nearest rounding), ``gap`` (neighbour
    distances: stochastic rounding)."""
    cdef const fo_q8_table *t = fo_q8_table_of(signed)
    n = t.nmag
    return {"mag": np.array([t.mag[k] for k in range(n)], dtype=np.float32),
            "mid": np.array([t.mid[k] for k in range(n - 1)], dtype=np.float32),
            "gap": np.array([t.gap[k] for k in range(n - 1)], dtype=np.float32)}


def q8_table_bytes():
    """The bytes of both code tables as the native code holds them (q8.h's two
    ``fo_q8_table``, unsigned then signed): the CUDA backend copies them to the device, so
    its kernels search the very tables of the CPU loops."""
    cdef size_t n = fo_q8_table_size()
    return (<const char *>fo_q8_table_of(0))[:n] + (<const char *>fo_q8_table_of(1))[:n]


cdef Py_ssize_t _nblocks(Py_ssize_t n, Py_ssize_t block) noexcept nogil:
    return (n + block - 1) // block


def q8_check_block(block):
    """Raise unless ``block`` is a valid block size (a power of two in ``Q8_BLOCK_RANGE``)."""
    if not isinstance(block, (int, np.integer)) or isinstance(block, bool):
        raise TypeError(f"block_size must be an integer, got block_size={block!r}")
    b = int(block)
    if b < FO_Q8_MINBLOCK or b > FO_Q8_MAXBLOCK or (b & (b - 1)):
        raise ValueError(f"block_size must be a power of two from {FO_Q8_MINBLOCK} to {FO_Q8_MAXBLOCK}, got "
                         f"block_size={block!r}")
    return b


def q8_quantize(x, bint signed, Py_ssize_t block=256):
    """``(codes, absmax)`` of the float32 values ``x`` (any shape): uint8 codes of x's
    shape, float32 absmax of shape ``(ceil(x.size / block),)``, nearest rounding."""
    q8_check_block(block)
    a_obj = np.ascontiguousarray(x, dtype=np.float32)
    cdef cnp.ndarray a = a_obj
    codes = np.empty(a_obj.shape, dtype=np.uint8)
    cdef Py_ssize_t n = a_obj.size
    amax = np.empty(_nblocks(n, block), dtype=np.float32)
    cdef cnp.ndarray c = codes, m = amax
    if n:
        with nogil:
            fo_q8_quantize(signed, <const float *>cnp.PyArray_DATA(a), n, block,
                           <unsigned char *>cnp.PyArray_DATA(c), <float *>cnp.PyArray_DATA(m), 0, 0, 0)
    return codes, amax


def q8_dequantize(codes, absmax, bint signed, Py_ssize_t block=256):
    """The float32 values of ``(codes, absmax)`` (codes' shape)."""
    q8_check_block(block)
    c_obj = np.ascontiguousarray(codes, dtype=np.uint8)
    m_obj = np.ascontiguousarray(absmax, dtype=np.float32)
    cdef cnp.ndarray c = c_obj
    cdef cnp.ndarray m = m_obj
    cdef Py_ssize_t n = c_obj.size
    if m_obj.ndim != 1 or m_obj.shape[0] != _nblocks(n, block):
        raise ValueError(f"absmax: expected {_nblocks(n, block)} blocks for {n} codes in blocks of {block}, got shape "
                         f"{m_obj.shape}")
    out = np.empty(c_obj.shape, dtype=np.float32)
    cdef cnp.ndarray o = out
    if n:
        with nogil:
            fo_q8_dequantize(signed, <const unsigned char *>cnp.PyArray_DATA(c), <const float *>cnp.PyArray_DATA(m),
                             n, block, <float *>cnp.PyArray_DATA(o))
    return out


cdef struct _Q8Call:
    fo_q8_fn qfn             # quantized tensors
    fo_seg_fn ffn            # float32-state tensors, float32 parameter and gradient
    fo_lp_fn lfn             # float32-state tensors with a bfloat16 parameter or gradient (else NULL)
    fo_q8_ctx ctx
    fo_lp_ctx lctx
    const unsigned long long *tids
    char **table             # ntens x nbuf data pointers (param, grad, EMA or NULL, kept buffers)
    float **amtab            # ntens x nstate absmax pointers (NULL: float32 state)
    const Py_ssize_t *bstarts    # first global block of tensor t; bstarts[ntens] = total
    const Py_ssize_t *sizes
    const double *tscale
    Py_ssize_t ntens
    Py_ssize_t block
    int nbuf
    int nstate
    Py_ssize_t psz           # bytes per element of the parameter (and EMA)
    Py_ssize_t gsz           # of the gradient


cdef void _q8_chunk(const _Q8Call *c, const double *hp, unsigned flags, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # IN: global block range [lo, hi)
    cdef char *bufs[MAXBUF]
    cdef float *am[MAXBUF]
    cdef double hloc[FO_MAXSCALARS]
    cdef const double *h = hp
    cdef fo_q8_ctx qx
    cdef fo_lp_ctx lx
    cdef Py_ssize_t a = 0, b = c.ntens, mid, t, b0, nb, e0, n, ssz
    cdef int k
    cdef bint quant
    if lo >= hi:
        return
    if c.tscale != NULL:
        memcpy(hloc, hp, FO_MAXSCALARS * sizeof(double))
        h = hloc
    while b - a > 1:              # last tensor with bstarts[t] <= lo
        mid = (a + b) >> 1
        if c.bstarts[mid] <= lo:
            a = mid
        else:
            b = mid
    t = a
    while lo < hi and t < c.ntens:
        b0 = lo - c.bstarts[t]
        nb = (c.bstarts[t + 1] if c.bstarts[t + 1] < hi else hi) - lo
        if nb > 0:
            e0 = b0 * c.block
            n = nb * c.block
            if n > c.sizes[t] - e0:
                n = c.sizes[t] - e0
            quant = c.nstate > 0 and c.amtab[t * c.nstate] != NULL
            ssz = 1 if quant else 4
            for k in range(c.nbuf):
                bufs[k] = c.table[t * c.nbuf + k]
                if bufs[k] != NULL:
                    bufs[k] += e0 * (c.psz if k == 0 or k == 2 else (c.gsz if k == 1 else ssz))
            if c.tscale != NULL:
                hloc[_GSCALE] = hp[_GSCALE] * c.tscale[t]
            if quant:
                for k in range(c.nstate):
                    am[k] = c.amtab[t * c.nstate + k] + b0
                qx = c.ctx
                qx.tensor = c.tids[t]
                qx.i0 = e0
                c.qfn(h, flags, bufs, am, n, &qx)
            elif c.lfn != NULL:
                lx = c.lctx
                lx.tensor = c.tids[t]
                lx.i0 = e0
                c.lfn(h, flags, bufs, n, &lx)
            else:
                c.ffn(h, flags, bufs, n)
            lo += nb
        t += 1


cdef void _q8_drive(const _Q8Call *c, const double *hp, unsigned flags, Py_ssize_t total_elems,
                    int nthreads) noexcept nogil:
    global _pool_started
    cdef Py_ssize_t total = c.bstarts[c.ntens]
    cdef Py_ssize_t per, i
    if nthreads <= 1 or total_elems < _grain or total < 2:
        _q8_chunk(c, hp, flags, 0, total)
        return
    per = (total + nthreads - 1) // nthreads
    _pool_started = True
    for i in prange(nthreads, num_threads=nthreads, schedule='static'):
        _q8_chunk(c, hp, flags, i * per if i * per < total else total,
                  (i + 1) * per if (i + 1) * per < total else total)


cdef char *_q8_data(object o, Py_ssize_t size, int npy, str what, Py_ssize_t i) except NULL:
    """The data pointer of a uint8 code array or a float32 array of ``size`` elements."""
    cdef cnp.ndarray a
    if isinstance(o, cnp.ndarray):
        a = <cnp.ndarray>o
        if (cnp.PyArray_SIZE(a) == size and cnp.PyArray_TYPE(a) == npy and cnp.PyArray_ISNOTSWAPPED(a)
                and (cnp.PyArray_FLAGS(a) & _NEED) == _NEED and cnp.PyArray_ISWRITEABLE(a)):
            return <char *>cnp.PyArray_DATA(a)
        raise ValueError(f"{what} of tensor {i}: expected a C-contiguous, aligned, writeable "
                         f"{np.dtype(np.uint8 if npy == cnp.NPY_UINT8 else np.float32)} array of {size} elements, got "
                         f"dtype {a.dtype}, size {a.size}")
    raise TypeError(f"{what} of tensor {i}: expected a numpy.ndarray, got {type(o).__name__}")


def fused_step_q8(int algo, dict common, dict scalars, unsigned flags, list params, list grads, list states,
                  list absmax, list emas=None, object tscale=None, object control=None, object rounding=None,
                  Py_ssize_t block=256):
    """:func:`fused_step` with 8-bit block-wise state (q8.h).

    ``states[k][i]`` is the k-th kept buffer of tensor i: its uint8 codes (parameter's
    size) when ``absmax[k][i]`` is its float32 absmax array (``ceil(size / block)``
    entries), or a float32 array when ``absmax[k][i]`` is None (float32 state: every
    buffer of a tensor one way or the other).  Parameters and gradients are float32 or
    bfloat16.  ``rounding`` = ``(seed, step, tensor_ids, stochastic)`` as for
    :func:`fused_step`; stochastic rounds the codes (and bfloat16 writes) stochastically."""
    cdef double hbuf[FO_MAXSCALARS]
    cdef const fo_spec *s = _spec(algo, flags)
    cdef _Q8Call c
    cdef Py_ssize_t ntens = len(params), i, k, size, nbk
    cdef int nstate, pcode, gcode, nthreads
    cdef cnp.ndarray a
    cdef unsigned long long[::1] tids
    cdef object am
    if control is not None:
        raise ValueError("the CPU backend takes no device control block")
    if algo == STREAM:
        raise ValueError(f"{s.name.decode()}: 8-bit state is for optimizers only")
    q8_check_block(block)
    memset(hbuf, 0, sizeof(hbuf))
    _pack(common, COMMON_SCALARS, hbuf, -1)
    _pack(scalars, <tuple>_SCALAR_NAMES[algo], hbuf + FO_NCOMMON, algo)
    nstate = _popcount(s.mask(flags))
    if len(states) != nstate or len(absmax) != nstate:
        raise ValueError(f"{s.name.decode()} with flags {flags:#x} keeps {nstate} state buffer(s) "
                         f"{kept_buffers(algo, flags)}, got {len(states)} code and {len(absmax)} absmax lists")
    if ntens == 0:
        return
    if algo > STREAM:       # a reducing algorithm: 8-bit element buffers, float32 per-tensor state
        _reduce_q8(algo, hbuf, flags, params, grads, states, absmax, emas, tscale, rounding, block)
        return
    if FO_STATE + nstate > MAXBUF:
        raise ValueError("too many state buffers for the native kernel")
    if len(grads) != ntens or (emas is not None and len(emas) != ntens):
        raise ValueError(f"expected {ntens} gradients (and EMA buffers)")
    if tscale is not None and len(tscale) != ntens:
        raise ValueError(f"expected {ntens} per-tensor scales, got {len(tscale)}")
    for k in range(nstate):
        if len(states[k]) != ntens or len(absmax[k]) != ntens:
            raise ValueError(f"state buffer {k}: expected {ntens} code and absmax entries")
    pcode = _dtype_code(<cnp.ndarray>params[0])
    gcode = _dtype_code(<cnp.ndarray>grads[0]) if isinstance(grads[0], cnp.ndarray) else -1
    if pcode not in (0, BF16) or gcode not in (0, BF16):
        raise TypeError(f"8-bit state goes with float32 or bfloat16 parameters and gradients, got parameter "
                        f"{params[0].dtype}, gradient {getattr(grads[0], 'dtype', type(grads[0]).__name__)}")
    c.qfn = fo_cpu_seg_q8(algo, (pcode == BF16) | ((gcode == BF16) << 1))
    c.ffn = fo_cpu_seg(algo, 0)
    c.lfn = fo_cpu_seg_lp(algo, (pcode == BF16) | ((gcode == BF16) << 1)) if (pcode == BF16 or gcode == BF16) \
        else NULL
    if c.qfn == NULL or c.ffn == NULL:
        raise ValueError(f"no native 8-bit kernel for algorithm {algo}")
    seed, step, ids, stochastic = (0, 0, None, False) if rounding is None else rounding
    c.ctx.seed = <unsigned long long>seed
    c.ctx.step = <unsigned long long>step
    c.ctx.stochastic = 1 if stochastic else 0
    c.ctx.block = block
    c.lctx.seed = c.ctx.seed
    c.lctx.step = c.ctx.step
    c.lctx.stochastic = c.ctx.stochastic
    if ids is None:
        ids = np.arange(ntens, dtype=np.uint64)
    tids = np.ascontiguousarray(ids, dtype=np.uint64)
    if tids.shape[0] != ntens:
        raise ValueError(f"rounding: expected {ntens} tensor ids, got {tids.shape[0]}")
    c.tids = &tids[0]
    c.ntens = ntens
    c.block = block
    c.nstate = nstate
    c.nbuf = FO_STATE + nstate
    c.psz = _ITEMSIZE[pcode]
    c.gsz = _ITEMSIZE[gcode]
    c.tscale = NULL
    c.table = <char **>malloc(ntens * c.nbuf * sizeof(char *))
    c.amtab = <float **>malloc((ntens * nstate + 1) * sizeof(float *))
    cdef Py_ssize_t *bstarts = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *sizes = <Py_ssize_t *>malloc((ntens + 1) * sizeof(Py_ssize_t))
    cdef double *ts = <double *>malloc((ntens + 1) * sizeof(double)) if tscale is not None else NULL
    cdef Py_ssize_t total = 0
    if c.table == NULL or c.amtab == NULL or bstarts == NULL or sizes == NULL or (tscale is not None and ts == NULL):
        free(c.table)
        free(c.amtab)
        free(bstarts)
        free(sizes)
        free(ts)
        raise MemoryError()
    try:
        if ts != NULL:
            for i in range(ntens):
                ts[i] = tscale[i]
            c.tscale = ts
        bstarts[0] = 0
        for i in range(ntens):
            a = <cnp.ndarray>params[i]
            size = cnp.PyArray_SIZE(a)
            if _dtype_code(a) != pcode:
                raise TypeError("mixed dtypes in one native call")
            c.table[i * c.nbuf] = <char *>cnp.PyArray_DATA(a)
            c.table[i * c.nbuf + 1] = _data(grads[i], size, gcode, "gradient", i)
            if emas is None:
                c.table[i * c.nbuf + 2] = NULL
            else:
                c.table[i * c.nbuf + 2] = _data(emas[i], size, pcode, "EMA buffer", i)
            nbk = _nblocks(size, block)
            for k in range(nstate):
                am = (<list>absmax[k])[i]
                if (am is None) != ((<list>absmax[0])[i] is None):
                    raise ValueError(f"tensor {i}: some state buffers are 8-bit, others float32")
                if am is None:
                    c.table[i * c.nbuf + FO_STATE + k] = _q8_data((<list>states[k])[i], size, cnp.NPY_FLOAT32,
                                                                  "state buffer", i)
                    c.amtab[i * nstate + k] = NULL
                else:
                    c.table[i * c.nbuf + FO_STATE + k] = _q8_data((<list>states[k])[i], size, cnp.NPY_UINT8,
                                                                  "state codes", i)
                    c.amtab[i * nstate + k] = <float *>_q8_data(am, nbk, cnp.NPY_FLOAT32, "state absmax", i)
            sizes[i] = size
            bstarts[i + 1] = bstarts[i] + nbk
            total += size
        c.bstarts = bstarts
        c.sizes = sizes
        nthreads = get_num_threads()
        with nogil:
            _q8_drive(&c, hbuf, flags, total, nthreads)
    finally:
        free(c.table)
        free(c.amtab)
        free(bstarts)
        free(sizes)
        free(ts)


cdef _reduce_q8(int algo, double *hbuf, unsigned flags, list params, list grads, list states, list absmax,
                list emas, object tscale, object rounding, Py_ssize_t block):
    """fused_step_q8 of a reducing algorithm (reduce_q8.h): the tensors whose element
    buffers are 8-bit in one native call, those with float32 state (below min_8bit_size) in
    another (their statistics are per tensor, so the split changes no result)."""
    cdef const fo_rspec *rs = fo_cpu_reduce_spec(algo - FO_NALGO - 1)
    cdef int nelem = _popcount(rs.base.mask(flags) & ((1u << rs.nelem) - 1u))
    cdef Py_ssize_t ntens = len(params), i
    for k in range(nelem, len(absmax)):
        if any(a is not None for a in absmax[k]):
            raise ValueError(f"state buffer {k}: a per-tensor state is never 8-bit")
    quant = [i for i in range(ntens) if nelem and (<list>absmax[0])[i] is not None]
    plain = [i for i in range(ntens) if not (nelem and (<list>absmax[0])[i] is not None)]
    seed, step, ids, stochastic = (0, 0, None, False) if rounding is None else rounding
    if ids is None:
        ids = np.arange(ntens, dtype=np.uint64)
    ids = np.ascontiguousarray(ids, dtype=np.uint64)
    if ids.shape[0] != ntens:
        raise ValueError(f"rounding: expected {ntens} tensor ids, got {ids.shape[0]}")
    for part, is_q8 in ((plain, False), (quant, True)):
        if not part:
            continue
        _reduce_run(algo, hbuf, flags, _take(params, part), _take(grads, part), [_take(x, part) for x in states],
                    None if emas is None else _take(emas, part),
                    None if tscale is None else _take(list(tscale), part),
                    (seed, step, ids[part], stochastic),
                    [_take(x, part) for x in absmax[:nelem]] if is_q8 else None, block)


cdef list _take(list xs, list idx):
    return xs if len(idx) == len(xs) else [xs[i] for i in idx]


# ---- writing float32 values into low-precision state, with the loops' rounding bits ----------
cdef extern from "fusedoptim/lowp.h" nogil:
    unsigned long long fo_rng_key(unsigned long long seed, unsigned long long step, unsigned long long tensor,
                                  unsigned long long index_hi)
    unsigned fo_rng_subkey(unsigned long long key, int j)
    unsigned fo_hash32(unsigned x)
    unsigned short fo_float_to_bf16(float x, unsigned r, bint stochastic)


def store_state(values, out, absmax=None, bint signed=False, Py_ssize_t block=256, object rounding=None,
                int slot=0):
    """Write the float32 ``values`` into the low-precision state buffer ``out`` (same size),
    as the native loops write declared buffer ``slot`` of a tensor: ``out`` bfloat16
    (``absmax`` None) or uint8 codes with their float32 ``absmax`` (blocks of ``block``,
    the signed or unsigned code map).  ``rounding`` = ``(seed, step, tensor, stochastic)``
    (lowp.h: the bits of element i are those of fo_hash32(i ^ subkey[slot / 2]), half
    slot % 2); None or stochastic False: nearest (bfloat16: ties to even).  For the
    stages that run in float32 outside the fused loops (Muon's momentum)."""
    v_obj = np.ascontiguousarray(values, dtype=np.float32)
    cdef cnp.ndarray v = v_obj
    cdef Py_ssize_t n = v_obj.size, lo, m
    cdef bint st = False
    cdef unsigned long long seed = 0, step = 0, tensor = 0
    cdef unsigned kx = 0
    cdef int shift = 16 * (slot & 1)
    cdef const float *x
    cdef unsigned short *o
    cdef Py_ssize_t i
    if not isinstance(out, cnp.ndarray) or out.size != n or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"store_state: out must be a writeable C-contiguous array of {n} elements")
    if slot < 0 or slot > 3:
        raise ValueError(f"store_state: slot must be 0..3, got {slot}")
    if rounding is not None:
        seed, step, tensor, st = rounding
    x = <const float *>cnp.PyArray_DATA(v)
    if absmax is None:
        if out.dtype.itemsize != 2 or out.dtype.name != "bfloat16":
            raise TypeError(f"store_state: out must be bfloat16 without absmax, got {out.dtype}")
        o = <unsigned short *>cnp.PyArray_DATA(<cnp.ndarray>out)
        with nogil:
            lo = 0
            while lo < n:            # a piece never crosses a multiple of 2^32 (the key takes the high bits)
                m = min(n - lo, <Py_ssize_t>1 << 32)
                if st:
                    kx = fo_rng_subkey(fo_rng_key(seed, step, tensor, <unsigned long long>lo >> 32), slot >> 1)
                    for i in range(m):
                        o[lo + i] = fo_float_to_bf16(x[lo + i], fo_hash32(<unsigned>i ^ kx) >> shift, True)
                else:
                    for i in range(m):
                        o[lo + i] = fo_float_to_bf16(x[lo + i], 0, False)
                lo += m
        return
    q8_check_block(block)
    _q8_data(out, n, cnp.NPY_UINT8, "state codes", 0)
    cdef float *am = <float *>_q8_data(absmax, _nblocks(n, block), cnp.NPY_FLOAT32, "state absmax", 0)
    cdef unsigned char *q = <unsigned char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        lo = 0
        while lo < n:
            m = min(n - lo, <Py_ssize_t>1 << 32)
            if st:
                kx = fo_rng_subkey(fo_rng_key(seed, step, tensor, <unsigned long long>lo >> 32), slot >> 1)
            fo_q8_quantize(signed, x + lo, m, block, q + lo, am + lo // block, st, kx, shift)
            lo += m
