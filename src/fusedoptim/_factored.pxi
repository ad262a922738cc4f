# Adafactor's factored second moments (csrc/fusedoptim/factored.h): one native call steps
# every tensor of a list -- row/column statistics of g^2 over the last two dims (or a full
# variance for tensors of < 2 dims), the RMS of the parameter and of the update, the step.
# Fixed units (a function of the shapes only), partial sums added in unit order: the same
# bits for any thread count.  Arrays are checked by the caller (fusedoptim.optim.adafactor);
# the driver verifies each buffer's size, dtype and layout.

cdef extern from "fusedoptim/factored.h" nogil:
    ctypedef struct fo_af_scalars:
        double w
        double eps_add
        double clamp_r
        double clamp_v
        double decay
        double rho
        double eps2
        double inv_d
        double rms_scale
        double beta1
        double one_minus_beta1
    ctypedef struct fo_af_tensor:
        char *p
        char *g
        char *e
        char *v
        char *m
        char *r
        char *c
        Py_ssize_t n, B, R, C, u0, nu, per
        int split
        double gs
        double *rowfac
        double *colpart
        double step
    void fo_af_layout(fo_af_tensor *t, int factored)
    int fo_af_run(const double *hc, const fo_af_scalars *s, fo_af_tensor *ts, Py_ssize_t ntens,
                  const Py_ssize_t *ut, Py_ssize_t nunits, double *part, int dtype, int nthreads)

AF_SCALARS = ("w", "eps_add", "clamp_r", "clamp_v", "decay", "rho", "eps2", "inv_d", "rms_scale", "beta1",
              "one_minus_beta1")


def adafactor_step(dict common, dict scalars, list params, list grads, list row_vars, list col_vars,
                   list variances, list emas=None, object tscale=None, list exp_avgs=None):
    """Adafactor's step over every tensor, in one native call (factored.h).

    ``params[i]`` with ``variances[i]`` None (>= 2 dims) uses ``row_vars[i]`` (``B R``
    elements: the last dim reduced) and ``col_vars[i]`` (``B C``: the second-to-last
    reduced); any other uses ``variances[i]`` (its size), ``row_vars[i]`` and
    ``col_vars[i]`` None.  ``exp_avgs[i]`` (its size, or None): the momentum of the scaled
    update (optax's ``momentum``, the scalars ``beta1`` / ``one_minus_beta1``).
    ``common``: the common block by name (gscale, clip value, coupled decay, L1, EMA
    weight); ``scalars``: :data:`AF_SCALARS` by name; ``tscale``: per-tensor gradient
    scales.  Returns nothing; updates params, statistics and EMAs in place."""
    cdef Py_ssize_t ntens = len(params), i, size, nunits = 0, nrows = 0, ncolp = 0, u, k
    cdef double hbuf[FO_MAXSCALARS]
    cdef fo_af_scalars sc
    cdef fo_af_tensor *ts = NULL
    cdef Py_ssize_t *ut = NULL
    cdef double *part = NULL
    cdef double *rowfac = NULL
    cdef double *colpart = NULL
    cdef cnp.ndarray a
    cdef int code, nthreads, nd
    global _pool_started
    if ntens == 0:
        return
    for lst, what in ((grads, "grads"), (row_vars, "row_vars"), (col_vars, "col_vars"),
                      (variances, "variances")):
        if len(lst) != ntens:
            raise ValueError(f"{what}: expected {ntens} entries, got {len(lst)}")
    if exp_avgs is not None and len(exp_avgs) != ntens:
        raise ValueError(f"exp_avgs: expected {ntens} entries, got {len(exp_avgs)}")
    if emas is not None and len(emas) != ntens:
        raise ValueError(f"emas: expected {ntens} arrays, got {len(emas)}")
    if tscale is not None and len(tscale) != ntens:
        raise ValueError(f"expected {ntens} per-tensor scales, got {len(tscale)}")
    if set(scalars) != set(AF_SCALARS):
        raise ValueError(f"adafactor scalars: expected {AF_SCALARS}, got {tuple(scalars)}")
    memset(hbuf, 0, sizeof(hbuf))
    _pack(common, COMMON_SCALARS, hbuf, -1)
    sc.w = scalars["w"]
    sc.eps_add = scalars["eps_add"]
    sc.clamp_r = scalars["clamp_r"]
    sc.clamp_v = scalars["clamp_v"]
    sc.decay = scalars["decay"]
    sc.rho = scalars["rho"]
    sc.eps2 = scalars["eps2"]
    sc.inv_d = scalars["inv_d"]
    sc.rms_scale = scalars["rms_scale"]
    sc.beta1 = scalars["beta1"]
    sc.one_minus_beta1 = scalars["one_minus_beta1"]
    if not isinstance(params[0], cnp.ndarray):
        raise TypeError(f"expected numpy arrays, got {type(params[0]).__name__}")
    code = _dtype_code(<cnp.ndarray>params[0])
    if code not in (0, 1):
        raise TypeError(f"Adafactor runs on float32 and float64 arrays, got {params[0].dtype}")
    ts = <fo_af_tensor *>calloc(ntens, sizeof(fo_af_tensor))
    if ts == NULL:
        raise MemoryError()
    try:
        for i in range(ntens):
            if not isinstance(params[i], cnp.ndarray):
                raise TypeError(f"tensor {i}: expected a numpy.ndarray, got {type(params[i]).__name__}")
            a = <cnp.ndarray>params[i]
            if _dtype_code(a) != code:
                raise TypeError("mixed dtypes in one native call")
            size = cnp.PyArray_SIZE(a)
            nd = cnp.PyArray_NDIM(a)
            ts[i].p = _data(a, size, code, "parameter", i)
            ts[i].g = _data(grads[i], size, code, "gradient", i)
            if emas is not None:
                ts[i].e = _data(emas[i], size, code, "EMA buffer", i)
            if exp_avgs is not None and exp_avgs[i] is not None:
                ts[i].m = _data(exp_avgs[i], size, code, "exp_avg", i)
            ts[i].n = size
            ts[i].gs = common["gscale"] * (1.0 if tscale is None else float(tscale[i]))
            if nd >= 2 and variances[i] is None:
                ts[i].R = a.shape[nd - 2]
                ts[i].C = a.shape[nd - 1]
                ts[i].B = 1
                for k in range(nd - 2):
                    ts[i].B *= a.shape[k]
                ts[i].r = _data(row_vars[i], ts[i].B * ts[i].R, code, "row_var", i)
                ts[i].c = _data(col_vars[i], ts[i].B * ts[i].C, code, "col_var", i)
                fo_af_layout(&ts[i], 1)
                nrows += ts[i].B * ts[i].R
                if ts[i].split:
                    ncolp += ts[i].nu * ts[i].C
            else:
                if row_vars[i] is not None or col_vars[i] is not None:
                    raise ValueError(f"tensor {i}: a tensor kept whole has variance, not row_var/col_var")
                ts[i].v = _data(variances[i], size, code, "variance", i)
                fo_af_layout(&ts[i], 0)
            ts[i].u0 = nunits
            nunits += ts[i].nu
        ut = <Py_ssize_t *>malloc((nunits + 1) * sizeof(Py_ssize_t))
        part = <double *>malloc((2 * nunits + 1) * sizeof(double))
        rowfac = <double *>malloc((nrows + 1) * sizeof(double))
        colpart = <double *>malloc((ncolp + 1) * sizeof(double))
        if ut == NULL or part == NULL or rowfac == NULL or colpart == NULL:
            raise MemoryError()
        nrows = 0
        ncolp = 0
        for i in range(ntens):
            for u in range(ts[i].u0, ts[i].u0 + ts[i].nu):
                ut[u] = i
            if ts[i].v == NULL:
                ts[i].rowfac = rowfac + nrows
                nrows += ts[i].B * ts[i].R
                if ts[i].split:
                    ts[i].colpart = colpart + ncolp
                    ncolp += ts[i].nu * ts[i].C
        nthreads = get_num_threads()
        if nthreads > 1 and nunits > 1 and (<Py_ssize_t>params_total(ts, ntens)) >= _grain:
            _pool_started = True
        else:
            nthreads = 1
        with nogil:
            fo_af_run(hbuf, &sc, ts, ntens, ut, nunits, part, code, nthreads)
    finally:
        free(ts)
        free(ut)
        free(part)
        free(rowfac)
        free(colpart)


cdef Py_ssize_t params_total(fo_af_tensor *ts, Py_ssize_t ntens) noexcept:
    cdef Py_ssize_t i, n = 0
    for i in range(ntens):
        n += ts[i].n
    return n
