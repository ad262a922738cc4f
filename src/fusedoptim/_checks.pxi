# fusedoptim/_checks.pxi -- included by _kernels.pyx: the array checks every entry point
# runs before anything is written (dtype, byte order, alignment, layout, shapes, aliasing).

cdef str _layout_problem(cnp.ndarray a):
    """Why the loops can't use ``a`` in place (None when they can): they read memory as
    native-endian, aligned float32/float64 in C order."""
    if not cnp.PyArray_ISNOTSWAPPED(a):
        return (f"dtype {a.dtype.str} is not in this machine's byte order; the optimizer would read "
                f"garbage (a.astype(a.dtype.newbyteorder('=')) converts it)")
    if not cnp.PyArray_ISALIGNED(a):
        return ("array is not aligned to its itemsize (a view into raw bytes at an odd offset?); "
                "np.require(a, requirements='A') makes an aligned copy")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        return ("array is not C-contiguous; the optimizer works in place on contiguous memory "
                "(np.ascontiguousarray makes a copy)")
    return None


cdef str _not_ndarray(object o):
    """Why ``o`` is refused.  Optimizer entry points turn DLPack and buffer-protocol arrays
    (torch CPU tensors) into NumPy views before these checks (fusedoptim._arrays)."""
    return f"expected a numpy.ndarray, got {type(o).__name__}"


cdef str _where(Py_ssize_t i, object labels):
    if labels is None:
        return f"params[{i}]"
    return labels[i]


def check_params(list params, object labels=None):
    """Raise unless every entry is a writeable, C-contiguous float32/float64/bfloat16
    (``ml_dtypes``) ndarray of one dtype.  ``labels[i]`` names entry i in messages
    (default ``params[i]``)."""
    cdef Py_ssize_t i, n = len(params)
    cdef int code, first = -1
    cdef object a
    cdef str problem
    for i in range(n):
        a = params[i]
        if not isinstance(a, cnp.ndarray):
            raise TypeError(f"{_where(i, labels)}: {_not_ndarray(a)}")
        code = _dtype_code(<cnp.ndarray>a)
        if code < 0:
            raise TypeError(f"{_where(i, labels)}: dtype {a.dtype} is not supported; use float32, float64 or "
                            "bfloat16 (ml_dtypes.bfloat16)")
        if first < 0:
            first = code
        elif code != first:
            raise TypeError(f"{_where(i, labels)}: dtype {a.dtype} differs from {params[0].dtype} of the "
                            "first parameter; float32 and float64 can't be mixed in one optimizer")
        problem = _layout_problem(<cnp.ndarray>a)
        if problem is not None:
            raise ValueError(f"{_where(i, labels)}: {problem}")
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
    cdef Py_ssize_t i, k = 0, n = len(params), nb
    rows = np.empty((n, 3), dtype=np.int64)
    cdef long long[:, ::1] r = rows
    cdef cnp.ndarray a
    for i in range(n):
        a = <cnp.ndarray>params[i]
        nb = cnp.PyArray_NBYTES(a)
        if nb > 0:
            r[k, 0] = <long long><Py_ssize_t>cnp.PyArray_DATA(a)
            r[k, 1] = r[k, 0] + nb
            r[k, 2] = i
            k += 1
    rows = rows[:k]
    return np.ascontiguousarray(rows[np.argsort(rows[:, 0], kind="stable")])


def check_grads(list params, list grads, object labels=None, object spans=None):
    """Raise unless grads[i] is None or matches params[i]: ndarray, same dtype and
    shape, C-contiguous, not overlapping the parameter (nor, given ``spans`` from
    param_spans, any other parameter: a write race under threads).  Read-only grads
    are fine.  Float32 and bfloat16 mix: bfloat16 gradients for float32 parameters,
    float32 ones for bfloat16 parameters, all gradients of a call of one dtype.
    Returns the number of None entries."""
    cdef int gfirst = -1, gc, pc
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
    cdef str problem
    if len(grads) != n:
        raise ValueError(f"expected {n} gradients, one per parameter, got {len(grads)}")
    for i in range(n):
        go = grads[i]
        if go is None:
            nnone += 1
            continue
        p = <cnp.ndarray>params[i]
        if not isinstance(go, cnp.ndarray):
            raise TypeError(f"{_gname(i, labels)}: {_not_ndarray(go)}")
        g = <cnp.ndarray>go
        if cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(p):
            gc = _dtype_code(g)
            pc = _dtype_code(p)
            if not ((gc == 0 or gc == BF16) and (pc == 0 or pc == BF16)):
                raise TypeError(f"{_gname(i, labels)}: dtype {go.dtype} does not match the parameter's "
                                f"{params[i].dtype}")
        gc = cnp.PyArray_TYPE(g)
        if gfirst < 0:
            gfirst = gc
        elif gc != gfirst:
            raise TypeError(f"{_gname(i, labels)}: dtype {go.dtype} differs from the other gradients'; the "
                            "gradients of one step have one dtype")
        if not _same_shape(p, g):
            raise ValueError(f"{_gname(i, labels)}: shape {go.shape} does not match the parameter's shape {params[i].shape}")
        problem = _layout_problem(g)
        if problem is not None:
            raise ValueError(f"{_gname(i, labels)}: {problem}")
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
