# The element-wise stages of the wrapper optimizers (csrc/fusedoptim/tensorwise.h): Muon's
# momentum and apply passes and Lookahead's synchronisation.  Each is one native call over
# every tensor of a list, driven by the same chunking and threads as fused_step (_drive).
# Arrays are checked by the caller (fusedoptim.optim.muon / fusedoptim.lookahead); the
# driver only verifies that each buffer matches its first-list array (size, dtype, layout).

cdef extern from "fusedoptim/tensorwise.h" nogil:
    fo_seg_fn fo_tw_seg(int stage, int dtype)
    enum:
        FO_TW_muon_momentum
        FO_TW_muon_apply
        FO_TW_lookahead

if _GSCALE != 0:      # the stages read the per-tensor value in the common block's first slot
    raise ImportError("tensorwise.h expects gscale first in the common block")


cdef _tw_run(int stage, double *hbuf, list slots, object tscale):
    """slots[k]: the list of arrays for bufs[k] (None: NULL for every tensor); slots[0]
    fixes the tensor count, sizes and dtype."""
    cdef list first = slots[0]
    cdef Py_ssize_t ntens = len(first), i, size
    cdef int nbuf = len(slots), k, code, nthreads
    cdef fo_seg_fn fn
    cdef char **table
    cdef Py_ssize_t *starts
    cdef double *ts = NULL
    cdef cnp.ndarray a
    cdef Py_ssize_t isz[MAXBUF]
    if ntens == 0:
        return
    if nbuf > MAXBUF:
        raise ValueError("too many buffers for the native stage")
    for k in range(1, nbuf):
        if slots[k] is not None and len(slots[k]) != ntens:
            raise ValueError(f"buffer list {k}: expected {ntens} arrays, got {len(slots[k])}")
    if tscale is not None and len(tscale) != ntens:
        raise ValueError(f"expected {ntens} per-tensor values, got {len(tscale)}")
    if not isinstance(first[0], cnp.ndarray):
        raise TypeError(f"expected numpy arrays, got {type(first[0]).__name__}")
    code = _dtype_code(<cnp.ndarray>first[0])
    fn = fo_tw_seg(stage, code) if code in (0, 1) else NULL
    if fn == NULL:
        raise TypeError(f"the wrapper stages run on float32 and float64 arrays, got {first[0].dtype}")
    for k in range(nbuf):
        isz[k] = _ITEMSIZE[code]
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
            if not isinstance(first[i], cnp.ndarray):
                raise TypeError(f"tensor {i}: expected a numpy.ndarray, got {type(first[i]).__name__}")
            a = <cnp.ndarray>first[i]
            size = cnp.PyArray_SIZE(a)
            if _dtype_code(a) != code:
                raise TypeError("mixed dtypes in one native call")
            table[i * nbuf] = _data(a, size, code, "tensor", i)
            for k in range(1, nbuf):
                if slots[k] is None:
                    table[i * nbuf + k] = NULL
                else:
                    table[i * nbuf + k] = _data((<list>slots[k])[i], size, code, f"buffer {k}", i)
            starts[i + 1] = starts[i] + size
        nthreads = get_num_threads()
        with nogil:
            _drive(fn, hbuf, 0, table, starts, ntens, nbuf, isz, ts, NULL, nthreads)
    finally:
        free(table)
        free(starts)
        free(ts)


def muon_momentum(dict common, double momentum, bint nesterov, list params, list grads, list bufs, list outs,
                  object tscale=None, object nesterov_weight=None):
    """Muon's first stage over every tensor, in one native call (tensorwise.h):
    ``g = fo_grad(g)`` (the common block: clip value, gscale times ``tscale[i]``, coupled
    decay, L1), ``bufs[i] = lerp(bufs[i], g, 1 - momentum)``, ``outs[i] = lerp(g, bufs[i],
    w)`` if ``nesterov`` else ``bufs[i]``, with ``w = nesterov_weight`` (default:
    ``momentum``).  ``params[i]`` is only read."""
    cdef double hbuf[FO_MAXSCALARS]
    memset(hbuf, 0, sizeof(hbuf))
    _pack(common, COMMON_SCALARS, hbuf, -1)
    hbuf[FO_NCOMMON] = 1.0 - momentum
    hbuf[FO_NCOMMON + 1] = momentum if nesterov_weight is None else float(nesterov_weight)
    hbuf[FO_NCOMMON + 2] = 1.0 if nesterov else 0.0
    _tw_run(FO_TW_muon_momentum, hbuf, [params, grads, None, bufs, outs], tscale)


def muon_apply(double ema_weight, double decay, list params, list updates, list emas, list neg_lrs):
    """Muon's last stage over every tensor, in one native call: ``p = p * decay``, then
    ``p = p + neg_lrs[i] * updates[i]``, then ``emas[i] = lerp(emas[i], p, ema_weight)``
    when ``emas`` is given."""
    cdef double hbuf[FO_MAXSCALARS]
    memset(hbuf, 0, sizeof(hbuf))
    _pack(dict(ACCUMULATE_COMMON, ema_weight=ema_weight), COMMON_SCALARS, hbuf, -1)
    hbuf[FO_NCOMMON] = decay
    _tw_run(FO_TW_muon_apply, hbuf, [params, updates, emas], neg_lrs)


def lookahead_sync(double weight, list fast, list slow):
    """Lookahead's synchronisation over every pair, in one native call:
    ``fast[i] = lerp(fast[i], slow[i], weight)`` (torch.lerp's formula), then
    ``slow[i] = fast[i]``."""
    cdef double hbuf[FO_MAXSCALARS]
    memset(hbuf, 0, sizeof(hbuf))
    _pack(ACCUMULATE_COMMON, COMMON_SCALARS, hbuf, -1)
    hbuf[FO_NCOMMON] = weight
    _tw_run(FO_TW_lookahead, hbuf, [fast, slow], None)
