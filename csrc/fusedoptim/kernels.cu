/* fusedoptim/kernels.cu -- the CUDA kernels: one generic multi-tensor loop around rules.h.
 *
 * Every update kernel applies the element rule of rules.h (the descriptor's rule(), with
 * the named scalars loaded by fo_common<T>::load and the descriptor's hp<T>::load) to all
 * tensors of a parameter bucket in ONE launch.  No formula lives here and nothing is
 * written per algorithm: the entry points fo_<algo>_kernel_f32/_f64 are instantiated
 * from rules.h's one list FO_ALGOS, as the CPU dispatch table of cpu.h is.
 *
 * Loaded at run time by fusedoptim/_cuda.py through cupy.RawModule (NVRTC).  CuPy's
 * compile cache does not hash headers pulled in with -I, so _cuda.py passes the text of
 * rules.h, then lowp.h, then the text of this file as one `code` string; the guarded
 * includes below are then skipped.  With nvcc: `nvcc -ptx -I csrc/fusedoptim kernels.cu`.
 *
 * Launch contract (the Python side reads the #defines below from this file)
 *  - hp: the per-step scalars by value, fo_hparams = FO_MAXSCALARS doubles: the named
 *    block of rules.h (fo_common_scalars, then the algorithm's scalars), packed by name by
 *    the extension (fusedoptim._kernels.pack_scalars) exactly as the CPU receives it.
 *  - flags: the algorithm's flag bits; they select the instantiation (no mode branch runs
 *    inside an element loop) and, through the descriptor's mask(), the kept buffers.
 *  - meta: one device array of long long: starts[0..ntens] (prefix sum of the tensor
 *    sizes, starts[ntens] = total element count), then ntens rows of nbuf pointers with
 *    the segment layout of cpu.h: param, grad, EMA or 0, then the kept state buffers in
 *    declaration order.
 *  - The element range [0, total) is cut into FO_CHUNK-element chunks; block b handles
 *    chunks b, b + gridDim.x, ... (grid-stride over chunks), finds the first tensor of a
 *    chunk by binary search in starts[] and walks the tensors the chunk overlaps.  Any
 *    grid and block size give the same result (the update is element-wise).
 *  - Where every buffer of a tensor is 16-byte aligned, whole 16-byte packs are loaded and
 *    stored at once (float4 / double2 traffic); the unaligned head and tail of a segment
 *    run element by element.
 *  - tscale (may be NULL): one double per tensor multiplying the common block's gscale
 *    for that tensor (per-parameter norm clipping; the CPU driver's tscale), e.g. written
 *    on device by fo_grad_control_kernel.
 *  - ctrl (may be NULL): the control block written on device by fo_grad_control_kernel;
 *    ctrl[3] != 0 skips the step (non-finite guard), ctrl[2] multiplies gscale (global-norm
 *    clipping).  No host synchronisation is needed.
 */
#ifndef FUSEDOPTIM_RULES_H
#include "rules.h"
#endif
#ifndef FUSEDOPTIM_LOWP_H
#include "lowp.h"
#endif

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
    double h[FO_MAXSCALARS];
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

/* the position of declared buffer k among the kept ones (bits of mask below k) */
FO_HD constexpr int fo_rank(unsigned mask, int k) {
    return k == 0 ? 0 : (int)(mask & 1u) + fo_rank(mask >> 1, k - 1);
}

/* The op of algorithm A under flags F: its loaded scalars and the rule call.  NS =
 * declared buffers; buffer k is kept when bit k of K is set (b[FO_STATE + k] is then its
 * pointer, else s[k] is a scratch register never loaded or stored).                    */
template <class A, typename T, unsigned F> struct fo_op {
    enum { NS = A::MAXSTATE, K = A::mask(F) };
    fo_common<T> c;
    typename A::template hp<T> h;
    __device__ fo_op(const fo_common_scalars &cs, const typename A::scalars &as)
        : c(fo_common<T>::load(cs)), h(A::template hp<T>::load(as)) {}
    __device__ void operator()(T &p, T g, T *s) const { A::template rule<T, F, 0>(p, g, s, c, h); }
};

/* One element: load, rule, EMA epilogue (as cpu.h's loop), store. */
template <typename T, bool EMA, typename Op>
__device__ __forceinline__ void fo_elem(const Op &op, T *const *b, fo_i64 i) {
    T s[Op::NS + 1] = {};
    T p = b[0][i];
    const T g = b[1][i];
#pragma unroll
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) s[k] = b[FO_STATE + k][i];
    op(p, g, s);
    b[0][i] = p;
#pragma unroll
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) b[FO_STATE + k][i] = s[k];
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
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) sp[k] = ((const fo_pack<T> *)b[FO_STATE + k])[j];
    if (EMA) ep = ((const fo_pack<T> *)b[2])[j];
#pragma unroll
    for (int l = 0; l < V; l++) {
        T s[Op::NS + 1] = {};
#pragma unroll
        for (int k = 0; k < Op::NS; k++)
            if ((Op::K >> k) & 1u) s[k] = sp[k].v[l];
        op(pp.v[l], gp.v[l], s);
#pragma unroll
        for (int k = 0; k < Op::NS; k++)
            if ((Op::K >> k) & 1u) sp[k].v[l] = s[k];
        if (EMA) fo_ema_rule(ep.v[l], pp.v[l], op.c);
    }
    ((fo_pack<T> *)b[0])[j] = pp;
#pragma unroll
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) ((fo_pack<T> *)b[FO_STATE + k])[j] = sp[k];
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

template <class A, typename T, unsigned F, bool EMA>
__device__ __forceinline__ void fo_chunks(const fo_common_scalars &cs, const typename A::scalars &as,
                                          const fo_i64 *meta, int ntens, int nbuf, const double *tscale) {
    typedef fo_op<A, T, F> Op;
    const fo_i64 *starts = meta;
    const fo_i64 *rows = meta + ntens + 1;
    const fo_i64 total = starts[ntens];
    for (fo_i64 lo = (fo_i64)blockIdx.x * FO_CHUNK; lo < total; lo += (fo_i64)gridDim.x * FO_CHUNK) {
        const fo_i64 hi = fo_min64(lo + FO_CHUNK, total);
        for (int t = fo_find_tensor(starts, ntens, lo); t < ntens && starts[t] < hi; t++) {
            const fo_i64 a = fo_max64(lo, starts[t]), z = fo_min64(hi, starts[t + 1]);
            if (a >= z) continue;
            const fo_i64 *row = rows + (fo_i64)t * nbuf;
            T *b[FO_STATE + Op::NS];
#pragma unroll
            for (int k = 0; k < FO_STATE; k++) b[k] = (T *)row[k];
#pragma unroll
            for (int k = 0; k < Op::NS; k++) /* a dropped buffer aliases the parameter, never touched */
                b[FO_STATE + k] = (T *)row[((Op::K >> k) & 1u) ? FO_STATE + fo_rank(Op::K, k) : 0];
            fo_common_scalars ct = cs;
            if (tscale) ct.gscale = cs.gscale * tscale[t];
            const Op op(ct, as);
            fo_segment<T, EMA>(op, b, a - starts[t], z - starts[t]);
        }
    }
}

/* The run-time flag bits select the instantiation F (0 .. 2^NFLAGS - 1), then the EMA flag. */
template <class A, typename T, unsigned F = 0>
__device__ void fo_dispatch(unsigned flags, const fo_common_scalars &cs, const typename A::scalars &as,
                            const fo_i64 *meta, int ntens, int nbuf, int ema, const double *tscale) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_dispatch<A, T, F + 1>(flags, cs, as, meta, ntens, nbuf, ema, tscale);
            return;
        }
    }
    if (ema) fo_chunks<A, T, F, true>(cs, as, meta, ntens, nbuf, tscale);
    else fo_chunks<A, T, F, false>(cs, as, meta, ntens, nbuf, tscale);
}

/* A launch: the named block (with the device control block applied), then the dispatch.
 * Returns at once when ctrl asks to skip the step; the global clip coefficient ctrl[2]
 * joins gscale in double, as the CPU path folds it in on the host.                      */
template <class A, typename T>
__device__ void fo_update(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, unsigned flags,
                          const double *tscale, const double *ctrl) {
    fo_common_scalars cs;
    typename A::scalars as;
    memcpy(&cs, hp.h, sizeof cs);
    memcpy(&as, hp.h + FO_NCOMMON, sizeof as);
    if (ctrl) {
        if (ctrl[3] != 0.0) return;
        cs.gscale = cs.gscale * ctrl[2];
    }
    fo_dispatch<A, T>(flags, cs, as, meta, ntens, nbuf, ema, tscale);
}

/* ---- the extern "C" entry points, from the one list: fo_<algo>_kernel_f32 / _f64 ------
 * (hp, meta, ntens, nbuf, ema, flags, tscale, ctrl): tscale (NULL or one double per
 * tensor) and ctrl (NULL or a control block) are device pointers.                       */
#define FO_KERNEL_(a, P)                                                                          \
    extern "C" __global__ void fo_##a##_kernel_f32(const fo_hparams hp, const fo_i64 *meta, int ntens, \
                                                   int nbuf, int ema, unsigned flags,               \
                                                   const double *tscale, const double *ctrl) {      \
        fo_update<fo_##a, float>(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl);                 \
    }                                                                                             \
    extern "C" __global__ void fo_##a##_kernel_f64(const fo_hparams hp, const fo_i64 *meta, int ntens, \
                                                   int nbuf, int ema, unsigned flags,               \
                                                   const double *tscale, const double *ctrl) {      \
        fo_update<fo_##a, double>(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl);                \
    }
FO_ALGOS(FO_KERNEL_)
#undef FO_KERNEL_

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

/* ---- bfloat16 storage on the device (lowp.h) ------------------------------------------
 * The CUDA update kernels keep float32/float64 state (the CUDA backend refuses
 * state_dtype="bfloat16" and bfloat16 parameters); the storage rules of lowp.h are
 * compiled for the device here, in the one conversion a bfloat16 kernel would do on
 * every store: float32 -> bfloat16 bits of element i of one tensor, nearest-even or
 * stochastic with the random bits the CPU loop draws for state buffer `buffer` (0..3) at
 * (seed, step, tensor): bit-identical to the CPU rounding.                             */
extern "C" __global__ void fo_bf16_round_kernel(const float *x, fo_bf16_bits *out, fo_i64 n, unsigned long long seed,
                                                unsigned long long step, unsigned long long tensor, int buffer,
                                                int stochastic) {
    for (fo_i64 i = (fo_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (fo_i64)gridDim.x * blockDim.x) {
        unsigned r = 0u;
        if (stochastic) {
            const unsigned k = fo_rng_subkey(fo_rng_key(seed, step, tensor, (unsigned long long)i >> 32), buffer >> 1);
            r = fo_hash32((unsigned)i ^ k) >> (16 * (buffer & 1));
        }
        out[i] = stochastic ? fo_bf16s::store(x[i], r, true) : fo_bf16s::store(x[i], 0u, false);
    }
}
