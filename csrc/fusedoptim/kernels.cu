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
 *  - tscale (may be NULL): one double per tensor multiplying h[0] for that tensor
 *    (per-parameter norm clipping; the CPU driver's tscale), e.g. written on device by
 *    fo_grad_control_kernel.
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

/* The per-step scalars of one launch: a copy of hp with the device-side control block
 * applied.  Returns false when the step is to be skipped (ctrl[3] != 0); otherwise the
 * global clip coefficient ctrl[2] joins the gradient scale h[0], in double, as the CPU
 * path folds it into h[0] on the host. */
__device__ __forceinline__ bool fo_hparams_load(double *hd, const fo_hparams &hp, const double *ctrl) {
#pragma unroll
    for (int k = 0; k < FO_MAXHP; k++) hd[k] = hp.h[k];
    if (ctrl) {
        if (ctrl[3] != 0.0) return false;
        hd[0] = hd[0] * ctrl[2];
    }
    return true;
}

/* The scalars of tensor t: h[0] times its per-tensor scale (per-parameter norm clipping,
 * like the CPU driver's tscale), or unchanged. */
__device__ __forceinline__ void fo_hparams_tensor(double *ht, const double *hd, const double *tscale, int t) {
#pragma unroll
    for (int k = 0; k < FO_MAXHP; k++) ht[k] = hd[k];
    if (tscale) ht[0] = hd[0] * tscale[t];
}

template <typename T, bool EMA, typename Op>
__device__ __forceinline__ void fo_chunks(const double *hd, const fo_i64 *meta, int ntens, int nbuf,
                                          const double *tscale) {
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
            double ht[FO_MAXHP];
            fo_hparams_tensor(ht, hd, tscale, t);
            const Op op(ht);
            fo_segment<T, EMA>(op, b, a - starts[t], z - starts[t]);
        }
    }
}

/* Launch-wide dispatch on the EMA flag (as cpu.h does on bufs[2]). */
template <typename T, typename Op>
__device__ __forceinline__ void fo_run(const double *hd, const fo_i64 *meta, int ntens, int nbuf, int ema,
                                       const double *tscale) {
    if (ema) fo_chunks<T, true, Op>(hd, meta, ntens, nbuf, tscale);
    else fo_chunks<T, false, Op>(hd, meta, ntens, nbuf, tscale);
}

/* ---- one op per algorithm: the hyperparameter loads and the rule call, nothing else.
 * NS = number of state buffers; operator() gets the element's registers.  Each body
 * decides the structural flags once, from the same h[] entries cpu.h tests.           */
#define FO_ARGS const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, \
                const double *tscale, const double *ctrl
#define FO_PASS hd, meta, ntens, nbuf, ema, tscale

/* @algo sgd */
template <typename T, bool MOMENTUM> struct fo_sgd_op {
    enum { NS = MOMENTUM ? 1 : 0 };
    fo_common<T> c;
    fo_sgd_hp<T> h;
    __device__ fo_sgd_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_sgd_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_sgd_rule<T, MOMENTUM>(p, g, s[0], c, h); }
};
template <typename T> __device__ void fo_sgd_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    if (hd[FO_HP_COMMON + 1] != 0.0) fo_run<T, fo_sgd_op<T, true> >(FO_PASS);
    else fo_run<T, fo_sgd_op<T, false> >(FO_PASS);
}
/* @end */

/* @algo adam */
template <typename T, bool AMSGRAD> struct fo_adam_op {
    enum { NS = AMSGRAD ? 3 : 2 };
    fo_common<T> c;
    fo_adam_hp<T> h;
    __device__ fo_adam_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_adam_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const {
        fo_adam_rule<T, AMSGRAD>(p, g, s[0], s[1], s[AMSGRAD ? 2 : NS], c, h);
    }
};
template <typename T> __device__ void fo_adam_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    if (fo_adam_hp<T>::load(hd).amsgrad) fo_run<T, fo_adam_op<T, true> >(FO_PASS);
    else fo_run<T, fo_adam_op<T, false> >(FO_PASS);
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
template <typename T> __device__ void fo_adagrad_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T, fo_adagrad_op<T> >(FO_PASS);
}
/* @end */

/* @algo rmsprop -- state: square_avg, then grad_avg if centered, then momentum_buffer */
template <typename T, bool CENTERED, bool MOMENTUM> struct fo_rmsprop_op {
    enum { NS = 1 + (CENTERED ? 1 : 0) + (MOMENTUM ? 1 : 0) };
    fo_common<T> c;
    fo_rmsprop_hp<T> h;
    __device__ fo_rmsprop_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_rmsprop_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const {
        fo_rmsprop_rule<T, CENTERED, MOMENTUM>(p, g, s[0], s[CENTERED ? 1 : NS],
                                               s[MOMENTUM ? (CENTERED ? 2 : 1) : NS], c, h);
    }
};
template <typename T> __device__ void fo_rmsprop_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    const fo_rmsprop_hp<T> h = fo_rmsprop_hp<T>::load(hd);
    if (h.centered && h.has_momentum) fo_run<T, fo_rmsprop_op<T, true, true> >(FO_PASS);
    else if (h.centered) fo_run<T, fo_rmsprop_op<T, true, false> >(FO_PASS);
    else if (h.has_momentum) fo_run<T, fo_rmsprop_op<T, false, true> >(FO_PASS);
    else fo_run<T, fo_rmsprop_op<T, false, false> >(FO_PASS);
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
template <typename T> __device__ void fo_adamax_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T, fo_adamax_op<T> >(FO_PASS);
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
template <typename T> __device__ void fo_nadam_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T, fo_nadam_op<T> >(FO_PASS);
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
template <typename T> __device__ void fo_radam_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T, fo_radam_op<T> >(FO_PASS);
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
template <typename T> __device__ void fo_adadelta_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T, fo_adadelta_op<T> >(FO_PASS);
}
/* @end */

/* @algo rprop -- state: prev, step_size */
template <typename T> struct fo_rprop_op {
    enum { NS = 2 };
    fo_common<T> c;
    fo_rprop_hp<T> h;
    __device__ fo_rprop_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_rprop_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_rprop_rule<T>(p, g, s[0], s[1], c, h); }
};
template <typename T> __device__ void fo_rprop_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T, fo_rprop_op<T> >(FO_PASS);
}
/* @end */

/* @algo lion -- state: exp_avg */
template <typename T> struct fo_lion_op {
    enum { NS = 1 };
    fo_common<T> c;
    fo_lion_hp<T> h;
    __device__ fo_lion_op(const double *hd) : c(fo_common<T>::load(hd)), h(fo_lion_hp<T>::load(hd)) {}
    __device__ void operator()(T &p, T g, T *s) const { fo_lion_rule<T>(p, g, s[0], c, h); }
};
template <typename T> __device__ void fo_lion_body(FO_ARGS) {
    double hd[FO_MAXHP];
    if (!fo_hparams_load(hd, hp, ctrl)) return;
    fo_run<T, fo_lion_op<T> >(FO_PASS);
}
/* @end */

/* ---- the extern "C" entry points: fo_<algo>_kernel_f32 / _f64 ----------------------
 * (hp, meta, ntens, nbuf, ema, tscale, ctrl): tscale (NULL or one double per tensor)
 * and ctrl (NULL or a control block) are device pointers.                              */
#define FO_KERNEL(algo)                                                                         \
    extern "C" __global__ void fo_##algo##_kernel_f32(const fo_hparams hp, const fo_i64 *meta,   \
                                                      int ntens, int nbuf, int ema,              \
                                                      const double *tscale, const double *ctrl) { \
        fo_##algo##_body<float>(hp, meta, ntens, nbuf, ema, tscale, ctrl);                       \
    }                                                                                           \
    extern "C" __global__ void fo_##algo##_kernel_f64(const fo_hparams hp, const fo_i64 *meta,   \
                                                      int ntens, int nbuf, int ema,              \
                                                      const double *tscale, const double *ctrl) { \
        fo_##algo##_body<double>(hp, meta, ntens, nbuf, ema, tscale, ctrl);                      \
    }
FO_KERNEL(sgd)
FO_KERNEL(adam)
FO_KERNEL(adagrad)
FO_KERNEL(rmsprop)
FO_KERNEL(adamax)
FO_KERNEL(nadam)
FO_KERNEL(radam)
FO_KERNEL(adadelta)
FO_KERNEL(rprop)
FO_KERNEL(lion)
#undef FO_KERNEL
#undef FO_ARGS
#undef FO_PASS

/* ---- deterministic reductions: gradient norms and the non-finite guard ---------------
 * rmeta = starts[0..n] (prefix sum of the sizes), blk[0..n] (prefix sum of the blocks
 * per tensor, ceil(size / FO_RED_CHUNK)), then one gradient pointer per tensor (0 for an
 * absent gradient of size 0).  Blocks never straddle tensors, so per-tensor norms fall
 * out of the same pass.
 *
 * Stage 1, fo_sumsq_kernel_f32/_f64 (blocks of exactly FO_RED_THREADS threads, any grid):
 * block b of tensor t is summed by one CUDA block -- thread k adds, in double, the squares
 * of elements k, k + FO_RED_THREADS, ... in order, then a fixed shared-memory tree -- into
 * partial[b]; partial[nblk + b] = 1 if an element of the block is NaN or Inf.  Which CUDA
 * block takes which block changes no sum: the bits depend on the data and the sizes only.
 *
 * Stage 2, fo_grad_control_kernel (one block of FO_RED_THREADS threads): thread k sums the
 * blocks of tensors k, k + FO_RED_THREADS, ... in order (per-tensor sums, written to
 * per[t] when per != NULL), then the same fixed tree gives the total.  It writes
 *   ctrl[0] = sum of squares of every element, ctrl[1] = 1 if any element is non-finite,
 *   ctrl[2] = global clip coefficient, ctrl[3] = 1 to skip the step,
 * and with pclip > 0 the per-tensor coefficients tscale[t].  The clip coefficient is
 * Keras' clip_by_norm factor c / max(norm, c) (the CPU Optimizer's _clip_coef) with
 * norm = sqrt(sumsq) * gscale, NaN when the norm is not finite.                          */

__device__ __forceinline__ bool fo_finite(double x) { return x - x == 0.0; }

/* Keras' c / max(norm, c); NaN for a non-finite norm (optimizer.py: _clip_coef). */
__device__ __forceinline__ double fo_clip_coef(double norm, double c) {
    if (!fo_finite(norm)) return norm - norm; /* NaN */
    return c / (c > norm ? c : norm);
}

/* ssum[0] = fixed-order tree sum of acc over the block, sbad[0] = OR of bad. */
__device__ __forceinline__ void fo_block_sum(double *ssum, int *sbad, double acc, int bad) {
    const int k = threadIdx.x;
    __syncthreads(); /* every thread is done reading the previous result */
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
__device__ __forceinline__ void fo_sumsq_body(const fo_i64 *rmeta, int ntens, double *partial) {
    __shared__ double ssum[FO_RED_THREADS];
    __shared__ int sbad[FO_RED_THREADS];
    const fo_i64 *starts = rmeta;
    const fo_i64 *blk = rmeta + ntens + 1;
    const fo_i64 *rows = rmeta + 2 * (ntens + 1);
    const fo_i64 nblk = blk[ntens];
    for (fo_i64 b = blockIdx.x; b < nblk; b += gridDim.x) {
        int t = fo_find_tensor(blk, ntens, b);
        while (blk[t + 1] <= b) t++; /* skip tensors without blocks */
        const fo_i64 off = (b - blk[t]) * FO_RED_CHUNK;
        const fo_i64 n = fo_min64(FO_RED_CHUNK, starts[t + 1] - starts[t] - off);
        const T *g = (const T *)rows[t] + off;
        double acc = 0.0;
        int bad = 0;
        for (fo_i64 i = threadIdx.x; i < n; i += FO_RED_THREADS) {
            const double x = (double)g[i];
            acc = acc + x * x;
            bad = bad | (fo_finite(x) ? 0 : 1);
        }
        fo_block_sum(ssum, sbad, acc, bad);
        if (threadIdx.x == 0) {
            partial[b] = ssum[0];
            partial[nblk + b] = sbad[0] ? 1.0 : 0.0;
        }
    }
}

extern "C" __global__ void fo_sumsq_kernel_f32(const fo_i64 *rmeta, int ntens, double *partial) {
    fo_sumsq_body<float>(rmeta, ntens, partial);
}
extern "C" __global__ void fo_sumsq_kernel_f64(const fo_i64 *rmeta, int ntens, double *partial) {
    fo_sumsq_body<double>(rmeta, ntens, partial);
}

/* gscale: the gradient multiplier the norms are measured at (1 / loss scale); gclip > 0:
 * global clip norm; pclip > 0: per-tensor clip norm (writes tscale); skip: skip the step
 * on a non-finite gradient.  per (NULL or ntens doubles) receives per-tensor sums.      */
extern "C" __global__ void fo_grad_control_kernel(const fo_i64 *rmeta, int ntens, const double *partial,
                                                  double gscale, double gclip, double pclip, int skip,
                                                  double *ctrl, double *tscale, double *per) {
    __shared__ double ssum[FO_RED_THREADS];
    __shared__ int sbad[FO_RED_THREADS];
    const fo_i64 *blk = rmeta + ntens + 1;
    const fo_i64 nblk = blk[ntens];
    double acc = 0.0;
    int bad = 0;
    for (int t = threadIdx.x; t < ntens; t += FO_RED_THREADS) {
        double st = 0.0;
        int bt = 0;
        for (fo_i64 b = blk[t]; b < blk[t + 1]; b++) {
            st = st + partial[b];
            bt = bt | (partial[nblk + b] != 0.0 ? 1 : 0);
        }
        if (per) per[t] = st;
        if (pclip > 0.0) tscale[t] = fo_clip_coef(sqrt(st) * gscale, pclip);
        acc = acc + st;
        bad = bad | bt;
    }
    fo_block_sum(ssum, sbad, acc, bad);
    if (threadIdx.x == 0) {
        const double sumsq = ssum[0];
        ctrl[0] = sumsq;
        ctrl[1] = sbad[0] ? 1.0 : 0.0;
        double coef = 1.0;
        if (gclip > 0.0) { /* optimizer.py: gc / max(norm, gc) if finite else NaN */
            const double norm = sqrt(sumsq) * gscale;
            coef = sbad[0] ? norm - norm : gclip / (gclip > norm ? gclip : norm);
        }
        ctrl[2] = coef;
        ctrl[3] = (skip && sbad[0]) ? 1.0 : 0.0;
    }
}
