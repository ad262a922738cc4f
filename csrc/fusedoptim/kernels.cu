/* fusedoptim/kernels.cu -- the CUDA kernels: thin multi-tensor loops around rules.h.
 *
 * Every update kernel applies the element rule of rules.h (fo_<algo>_rule, with the
 * hyperparameters loaded by fo_common<T>::load and fo_<algo>_hp<T>::load) to all tensors
 * of a parameter bucket in ONE launch.  No formula lives here: a rule is written once,
 * tested on the CPU (cpu.h), and is the same code on the GPU.
 *
 * Loaded at run time by fusedoptim/_cuda.py through cupy.RawModule (NVRTC).  CuPy's
 * compile cache does not hash headers pulled in with -I, so _cuda.py passes the text of
 * rules.h followed by the text of this file as one `code` string; the guarded include
 * below is then skipped.  With nvcc: `nvcc -ptx -I csrc/fusedoptim kernels.cu`.
 *
 * Launch contract (the Python side reads the #defines below from this file)
 *  - hp: the per-step scalars by value, fo_hparams = 16 doubles: the common block then
 *    the algorithm block, exactly the tuple the CPU backend receives (rules.h).
 *  - meta: one device array of long long: starts[0..ntens] (prefix sum of the tensor
 *    sizes, starts[ntens] = total element count), then ntens rows of nbuf pointers with
 *    the segment layout of cpu.h: param, grad, EMA or 0, state buffers in the order of
 *    the Python class's _state_names().
 *  - The element range [0, total) is cut into FO_CHUNK-element chunks; block b handles
 *    chunks b, b + gridDim.x, ... (grid-stride over chunks), finds the first tensor of a
 *    chunk by binary search in starts[] and walks the tensors the chunk overlaps.  Any
 *    grid and block size give the same result (the update is element-wise).
 *  - Where every buffer of a tensor is 16-byte aligned, whole 16-byte packs are loaded and
 *    stored at once (float4 / double2 traffic); the unaligned head and tail of a segment
 *    run element by element.
 *  - ctrl (may be NULL): the control block written on device by fo_grad_control_kernel;
 *    ctrl[3] != 0 skips the step (non-finite guard), ctrl[2] multiplies the gradient
 *    scale h[0] (global-norm clipping).  No host synchronisation is needed.
 *  - Structural flags (momentum, amsgrad, centered, EMA) are decided once per launch,
 *    exactly as cpu.h decides them, and select a template instantiation: no mode branch
 *    runs inside an element loop.
 */
#ifndef FUSEDOPTIM_RULES_H
#include "rules.h"
#endif

#define FO_MAXHP 16         /* doubles in fo_hparams */
#define FO_MAXBUF 8         /* pointers per tensor row, at most */
#define FO_THREADS 256      /* threads per block of the update kernels (any size works) */
#define FO_CHUNK 8192       /* elements per block iteration of the update kernels */
#define FO_RED_THREADS 256  /* threads per block of the reductions (required: fixed blocking) */
#define FO_RED_CHUNK 4096   /* elements per partial sum of the reduction */
#define FO_CTRL 4           /* doubles in a control block */
#define FO_CLIP_EPS 1e-6    /* torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6) */

#ifndef FO_STATE
#define FO_STATE 3 /* same segment layout as cpu.h: param, grad, EMA|NULL, state... */
#endif

typedef long long fo_i64;

struct fo_hparams {
    double h[FO_MAXHP];
};

/* ---- the engine: chunks -> tensor segments -> elements / 16-byte packs ------------- */

template <typename T> struct alignas(16) fo_pack {
    T v[16 / sizeof(T)];
};

__device__ __forceinline__ fo_i64 fo_min64(fo_i64 a, fo_i64 b) { return a < b ? a : b; }
__device__ __forceinline__ fo_i64 fo_max64(fo_i64 a, fo_i64 b) { return a > b ? a : b; }

/* last tensor t with starts[t] <= i (i < starts[ntens]): skips empty tensors */
__device__ __forceinline__ int fo_find_tensor(const fo_i64 *starts, int ntens, fo_i64 i) {
    int a = 0, b = ntens;
    while (b - a > 1) {
        int mid = (a + b) >> 1;
        if (starts[mid] <= i) a = mid;
        else b = mid;
    }
    return a;
}

/* One element: load, rule, EMA epilogue (as cpu.h's fo_loop_ema), store.  s[Op::NS] is a
 * scratch slot that is never loaded or stored: a rule's unused buffer argument binds to it. */
template <typename T, bool EMA, typename Op>
__device__ __forceinline__ void fo_elem(const Op &op, T *const *b, fo_i64 i) {
    T s[Op::NS + 1];
    T p = b[0][i];
    const T g = b[1][i];
#pragma unroll
    for (int k = 0; k < Op::NS; k++) s[k] = b[FO_STATE + k][i];
    op(p, g, s);
    b[0][i] = p;
#pragma unroll
    for (int k = 0; k < Op::NS; k++) b[FO_STATE + k][i] = s[k];
    if (EMA) {
        T e = b[2][i];
        fo_ema_rule(e, p, op.c);
        b[2][i] = e;
    }
}

/* One 16-byte pack (pack index j) of every buffer. */
template <typename T, bool EMA, typename Op>
__device__ __forceinline__ void fo_elem_pack(const Op &op, T *const *b, fo_i64 j) {
    enum { V = 16 / sizeof(T) };
    fo_pack<T> pp = ((const fo_pack<T> *)b[0])[j];
    const fo_pack<T> gp = ((const fo_pack<T> *)b[1])[j];
    fo_pack<T> sp[Op::NS + 1];
    fo_pack<T> ep;
#pragma unroll
    for (int k = 0; k < Op::NS; k++) sp[k] = ((const fo_pack<T> *)b[FO_STATE + k])[j];
    if (EMA) ep = ((const fo_pack<T> *)b[2])[j];
#pragma unroll
    for (int l = 0; l < V; l++) {
        T s[Op::NS + 1];
#pragma unroll
        for (int k = 0; k < Op::NS; k++) s[k] = sp[k].v[l];
        op(pp.v[l], gp.v[l], s);
#pragma unroll
        for (int k = 0; k < Op::NS; k++) sp[k].v[l] = s[k];
        if (EMA) fo_ema_rule(ep.v[l], pp.v[l], op.c);
    }
    ((fo_pack<T> *)b[0])[j] = pp;
#pragma unroll
    for (int k = 0; k < Op::NS; k++) ((fo_pack<T> *)b[FO_STATE + k])[j] = sp[k];
    if (EMA) ((fo_pack<T> *)b[2])[j] = ep;
}

/* Elements [lo, hi) of one tensor (buffer pointers b), strided over the block's threads. */
template <typename T, bool EMA, typename Op>
__device__ __forceinline__ void fo_segment(const Op &op, T *const *b, fo_i64 lo, fo_i64 hi) {
    enum { V = 16 / sizeof(T), NB = FO_STATE + Op::NS };
    unsigned long long bits = 0;
#pragma unroll
    for (int k = 0; k < NB; k++) bits |= (unsigned long long)b[k];
    fo_i64 vlo = hi, vhi = hi; /* pack range [vlo, vhi), in elements */
    if ((bits & 15ull) == 0) {
        vlo = fo_min64(hi, (lo + V - 1) / V * V);
        vhi = fo_max64(vlo, hi / V * V);
    }
    for (fo_i64 i = lo + threadIdx.x; i < vlo; i += blockDim.x) fo_elem<T, EMA>(op, b, i);
    for (fo_i64 j = vlo / V + threadIdx.x; j < vhi / V; j += blockDim.x) fo_elem_pack<T, EMA>(op, b, j);
    for (fo_i64 i = vhi + threadIdx.x; i < hi; i += blockDim.x) fo_elem<T, EMA>(op, b, i);
}

template <typename T, bool EMA, typename Op>
__device__ __forceinline__ void fo_chunks(const Op &op, const fo_i64 *meta, int ntens, int nbuf) {
    const fo_i64 *starts = meta;
    const fo_i64 *rows = meta + ntens + 1;
    const fo_i64 total = starts[ntens];
    for (fo_i64 lo = (fo_i64)blockIdx.x * FO_CHUNK; lo < total; lo += (fo_i64)gridDim.x * FO_CHUNK) {
        const fo_i64 hi = fo_min64(lo + FO_CHUNK, total);
        for (int t = fo_find_tensor(starts, ntens, lo); t < ntens && starts[t] < hi; t++) {
            const fo_i64 a = fo_max64(lo, starts[t]), z = fo_min64(hi, starts[t + 1]);
            if (a >= z) continue;
            T *b[FO_STATE + Op::NS];
#pragma unroll
            for (int k = 0; k < FO_STATE + Op::NS; k++) b[k] = (T *)rows[(fo_i64)t * nbuf + k];
            fo_segment<T, EMA>(op, b, a - starts[t], z - starts[t]);
        }
    }
}

template <typename T, typename Op>
__device__ __forceinline__ void fo_run(const Op &op, const fo_i64 *meta, int ntens, int nbuf, int ema) {
    if (ema) fo_chunks<T, true>(op, meta, ntens, nbuf);
    else fo_chunks<T, false>(op, meta, ntens, nbuf);
}

/* Copy the per-step scalars and apply the device-side control block: returns false when
 * the step is to be skipped; otherwise the clip scale joins h[0] (in double, as the CPU
 * path folds it into h[0] on the host). */
__device__ __forceinline__ bool fo_hparams_load(double *hd, const fo_hparams &hp, const double *ctrl) {
#pragma unroll
    for (int k = 0; k < FO_MAXHP; k++) hd[k] = hp.h[k];
    if (ctrl) {
        if (ctrl[3] != 0.0) return false;
        hd[0] = hd[0] * ctrl[2];
    }
    return true;
}

/* ---- one op per algorithm: the hyperparameter loads and the rule call, nothing else.
 * NS = number of state buffers; operator() gets the element's registers.               */

/* @algo sgd */
template <typename T, bool MOMENTUM> struct fo_sgd_op {
    enum { NS = MOMENTUM ? 1 : 0 };
    fo_common<T> c;
    fo_sgd_hp<T> h;
    __device__ fo_sgd_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_sgd_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_sgd_rule<T, MOMENTUM>(p, g, s[0], c, h); }
};
template <typename T> __device__ void fo_sgd_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    if (hd[FO_HP_COMMON + 1] != 0.0) fo_run<T>(fo_sgd_op<T, true>(hd), meta, ntens, nbuf, ema);
    else fo_run<T>(fo_sgd_op<T, false>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* @algo adam */
template <typename T, bool AMSGRAD> struct fo_adam_op {
    enum { NS = AMSGRAD ? 3 : 2 };
    fo_common<T> c;
    fo_adam_hp<T> h;
    __device__ fo_adam_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_adam_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const {
        fo_adam_rule<T, AMSGRAD>(p, g, s[0], s[1], s[AMSGRAD ? 2 : 1], c, h);
    }
};
template <typename T> __device__ void fo_adam_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    if (fo_adam_hp<T>::load(hd).amsgrad) fo_run<T>(fo_adam_op<T, true>(hd), meta, ntens, nbuf, ema);
    else fo_run<T>(fo_adam_op<T, false>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* @algo adagrad */
template <typename T> struct fo_adagrad_op {
    enum { NS = 1 };
    fo_common<T> c;
    fo_adagrad_hp<T> h;
    __device__ fo_adagrad_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_adagrad_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_adagrad_rule<T>(p, g, s[0], c, h); }
};
template <typename T> __device__ void fo_adagrad_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T>(fo_adagrad_op<T>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* @algo rmsprop -- state: square_avg, then grad_avg if centered, then momentum_buffer */
template <typename T, bool CENTERED, bool MOMENTUM> struct fo_rmsprop_op {
    enum { NS = 1 + (CENTERED ? 1 : 0) + (MOMENTUM ? 1 : 0) };
    fo_common<T> c;
    fo_rmsprop_hp<T> h;
    __device__ fo_rmsprop_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_rmsprop_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const {
        fo_rmsprop_rule<T, CENTERED, MOMENTUM>(p, g, s[0], s[CENTERED ? 1 : NS], s[MOMENTUM ? (CENTERED ? 2 : 1) : NS], c, h);
    }
};
template <typename T> __device__ void fo_rmsprop_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    const fo_rmsprop_hp<T> h = fo_rmsprop_hp<T>::load(hd);
    if (h.centered && h.has_momentum) fo_run<T>(fo_rmsprop_op<T, true, true>(hd), meta, ntens, nbuf, ema);
    else if (h.centered) fo_run<T>(fo_rmsprop_op<T, true, false>(hd), meta, ntens, nbuf, ema);
    else if (h.has_momentum) fo_run<T>(fo_rmsprop_op<T, false, true>(hd), meta, ntens, nbuf, ema);
    else fo_run<T>(fo_rmsprop_op<T, false, false>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* @algo adamax */
template <typename T> struct fo_adamax_op {
    enum { NS = 2 };
    fo_common<T> c;
    fo_adamax_hp<T> h;
    __device__ fo_adamax_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_adamax_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_adamax_rule<T>(p, g, s[0], s[1], c, h); }
};
template <typename T> __device__ void fo_adamax_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T>(fo_adamax_op<T>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* @algo nadam */
template <typename T> struct fo_nadam_op {
    enum { NS = 2 };
    fo_common<T> c;
    fo_nadam_hp<T> h;
    __device__ fo_nadam_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_nadam_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_nadam_rule<T>(p, g, s[0], s[1], c, h); }
};
template <typename T> __device__ void fo_nadam_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T>(fo_nadam_op<T>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* @algo radam */
template <typename T> struct fo_radam_op {
    enum { NS = 2 };
    fo_common<T> c;
    fo_radam_hp<T> h;
    __device__ fo_radam_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_radam_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_radam_rule<T>(p, g, s[0], s[1], c, h); }
};
template <typename T> __device__ void fo_radam_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T>(fo_radam_op<T>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* @algo adadelta */
template <typename T> struct fo_adadelta_op {
    enum { NS = 2 };
    fo_common<T> c;
    fo_adadelta_hp<T> h;
    __device__ fo_adadelta_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_adadelta_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_adadelta_rule<T>(p, g, s[0], s[1], c, h); }
};
template <typename T> __device__ void fo_adadelta_body(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, const double *ctrl) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T>(fo_adadelta_op<T>(hd), meta, ntens, nbuf, ema);
}
/* @end */

/* ---- the extern "C" entry points: fo_<algo>_kernel_f32 / _f64 ---------------------- */
#define FO_KERNEL(algo)                                                                          \
    extern "C" __global__ void fo_##algo##_kernel_f32(const fo_hparams hp, const fo_i64 *meta,    \
                                                      int ntens, int nbuf, int ema,               \
                                                      const double *ctrl) {                       \
        fo_##algo##_body<float>(hp, meta, ntens, nbuf, ema, ctrl);                                \
    }                                                                                            \
    extern "C" __global__ void fo_##algo##_kernel_f64(const fo_hparams hp, const fo_i64 *meta,    \
                                                      int ntens, int nbuf, int ema,               \
                                                      const double *ctrl) {                       \
        fo_##algo##_body<double>(hp, meta, ntens, nbuf, ema, ctrl);                               \
    }
FO_KERNEL(sgd)
FO_KERNEL(adam)
FO_KERNEL(adagrad)
FO_KERNEL(rmsprop)
FO_KERNEL(adamax)
FO_KERNEL(nadam)
FO_KERNEL(radam)
FO_KERNEL(adadelta)
#undef FO_KERNEL

/* ---- deterministic reductions: global gradient norm and the non-finite guard ---------
 * Stage 1 (fo_sumsq_kernel_f32/_f64): meta = starts[0..ntens] then one pointer per tensor
 * (the gradient).  The element range is cut into FO_RED_CHUNK-element chunks; chunk c is
 * summed by one block of exactly FO_RED_THREADS threads -- thread k adds, in double, the
 * squares of elements k, k + FO_RED_THREADS, ... of each tensor piece in order, then a
 * fixed shared-memory tree -- into partial[c]; partial[nchunks + c] = 1 if an element of
 * the chunk is NaN or Inf.  Which block takes which chunk does not change any sum, so the
 * result depends on the tensor sizes alone, never on the grid size.
 * Stage 2 (fo_grad_control_kernel): one block of FO_RED_THREADS threads sums the partials
 * the same fixed way and writes the control block
 *   ctrl[0] = sum of squares, ctrl[1] = 1 if any element is non-finite,
 *   ctrl[2] = clip scale min(1, max_norm / (sqrt(ctrl[0]) + 1e-6)) when clip != 0 else 1
 *             (NaN propagates, like torch's clamp), 
 *   ctrl[3] = 1 to skip the step (skip_nonfinite != 0 and ctrl[1] != 0).
 * The update kernels read ctrl on device.                                               */

__device__ __forceinline__ bool fo_finite(double x) { return x - x == 0.0; }

__device__ __forceinline__ void fo_block_sum(double *ssum, int *sbad, double acc, int bad) {
    const int k = threadIdx.x;
    __syncthreads(); /* the previous use of ssum/sbad is over */
    ssum[k] = acc;
    sbad[k] = bad;
    __syncthreads();
#pragma unroll
    for (int w = FO_RED_THREADS / 2; w > 0; w >>= 1) {
        if (k < w) {
            ssum[k] = ssum[k] + ssum[k + w];
            sbad[k] = sbad[k] | sbad[k + w];
        }
        __syncthreads();
    }
}

template <typename T>
__device__ __forceinline__ void fo_sumsq_body(const fo_i64 *meta, int ntens, double *partial) {
    __shared__ double ssum[FO_RED_THREADS];
    __shared__ int sbad[FO_RED_THREADS];
    const fo_i64 *starts = meta;
    const fo_i64 *rows = meta + ntens + 1;
    const fo_i64 total = starts[ntens];
    const fo_i64 nchunks = (total + FO_RED_CHUNK - 1) / FO_RED_CHUNK;
    for (fo_i64 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const fo_i64 lo = c * FO_RED_CHUNK, hi = fo_min64(lo + FO_RED_CHUNK, total);
        double acc = 0.0;
        int bad = 0;
        for (int t = fo_find_tensor(starts, ntens, lo); t < ntens && starts[t] < hi; t++) {
            const fo_i64 a = fo_max64(lo, starts[t]), z = fo_min64(hi, starts[t + 1]);
            const T *g = (const T *)rows[t];
            for (fo_i64 i = a + threadIdx.x; i < z; i += FO_RED_THREADS) {
                const double x = (double)g[i - starts[t]];
                acc = acc + x * x;
                bad = bad | (fo_finite(x) ? 0 : 1);
            }
        }
        fo_block_sum(ssum, sbad, acc, bad);
        if (threadIdx.x == 0) {
            partial[c] = ssum[0];
            partial[nchunks + c] = sbad[0] ? 1.0 : 0.0;
        }
    }
}

extern "C" __global__ void fo_sumsq_kernel_f32(const fo_i64 *meta, int ntens, double *partial) {
    fo_sumsq_body<float>(meta, ntens, partial);
}
extern "C" __global__ void fo_sumsq_kernel_f64(const fo_i64 *meta, int ntens, double *partial) {
    fo_sumsq_body<double>(meta, ntens, partial);
}

extern "C" __global__ void fo_grad_control_kernel(const double *partial, fo_i64 nchunks, int clip,
                                                  double max_norm, int skip_nonfinite, double *ctrl) {
    __shared__ double ssum[FO_RED_THREADS];
    __shared__ int sbad[FO_RED_THREADS];
    double acc = 0.0;
    int bad = 0;
    for (fo_i64 c = threadIdx.x; c < nchunks; c += FO_RED_THREADS) {
        acc = acc + partial[c];
        bad = bad | (partial[nchunks + c] != 0.0 ? 1 : 0);
    }
    fo_block_sum(ssum, sbad, acc, bad);
    if (threadIdx.x == 0) {
        const double sumsq = ssum[0];
        double scale = 1.0;
        if (clip) {
            const double coef = max_norm / (sqrt(sumsq) + FO_CLIP_EPS);
            scale = (coef < 1.0 || coef != coef) ? coef : 1.0;
        }
        ctrl[0] = sumsq;
        ctrl[1] = sbad[0] ? 1.0 : 0.0;
        ctrl[2] = scale;
        ctrl[3] = (skip_nonfinite && sbad[0]) ? 1.0 : 0.0;
    }
}
