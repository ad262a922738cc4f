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
 *  - bfloat16 state (fo_<algo>_kernel_lp4): the state buffers hold bfloat16 bits
 *    (unsigned short; CuPy has no bfloat16 dtype), widened on load and rounded on store by
 *    lowp.h; meta ends with one tensor id per tensor and (seed, step, stochastic) follow
 *    ctrl, so the random bits of stochastic rounding are the CPU loop's: a GPU step equals
 *    the CPU step bit for bit (up to -ftz, as for float32 storage).  A bfloat16 pack is 8
 *    bytes (four elements, as the float4 of the float32 buffers).
 */
#ifndef FUSEDOPTIM_RULES_H
#include "rules.h"
#endif
#ifndef FUSEDOPTIM_LOWP_H
#include "lowp.h"
#endif
#ifndef FUSEDOPTIM_Q8_H
#define FO_Q8_DEVICE 1 /* q8.h's table layout and per-element functions only */
#include "q8.h"
#endif

#define FO_THREADS 256      /* threads per block of the update kernels (any size works) */
#define FO_CHUNK 8192       /* elements per block iteration of the update kernels */
#define FO_RED_THREADS 256  /* threads per block of the reductions (required: fixed blocking) */
#define FO_RED_CHUNK 4096   /* elements per partial sum of the reduction */
#define FO_CTRL 4           /* doubles in a control block */
#define FO_CLIP_EPS 1e-6    /* torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6) */
#define FO_Q8_THREADS 256   /* most threads per block of the 8-bit kernels */
#define FO_Q8_PER 16        /* elements per thread of an 8-bit block, at most */

#ifndef FO_STATE
#define FO_STATE 3 /* same segment layout as cpu.h: param, grad, EMA|NULL, state... */
#endif

typedef long long fo_i64;

struct fo_hparams {
    double h[FO_MAXSCALARS];
};

/* ---- the engine: chunks -> tensor segments -> elements / 16-byte packs ------------- */

/* V consecutive elements of one buffer of storage type S (a float4 / double2 of float32 /
 * float64 storage, 8 bytes of bfloat16 bits), loaded and stored at once */
template <typename S, int V> struct alignas(V * sizeof(S)) fo_pack {
    S v[V];
};

/* The storage of a launch (lowp.h's policies, as cpu.h's fo_loop takes them): SP the
 * parameter and its EMA, SG the gradient, SS the state buffers; SR: stochastic rounding
 * on the low-precision writes.  fo_plain<T> is T everywhere: no conversion, no bits.   */
template <class SP_, class SG_, class SS_, bool SR_> struct fo_st {
    typedef SP_ SP;
    typedef SG_ SG;
    typedef SS_ SS;
    enum { SR = SR_ };
};
template <typename T> using fo_plain = fo_st<fo_same<T>, fo_same<T>, fo_same<T>, false>;

/* The random words of element idx (its index in its tensor, low 32 bits), exactly as
 * cpu.h's fo_loop draws them: w[0] for state buffers 0 and 1 (low, high 16 bits), w[1]
 * for 2 and 3, w[2] for the parameter and its EMA.  None without stochastic rounding. */
template <class St, unsigned K>
__device__ __forceinline__ void fo_draw(const fo_rng &r, unsigned idx, unsigned *w) {
    w[0] = (St::SR && St::SS::LOWP && (K & 3u)) ? fo_hash32(idx ^ r.k[0]) : 0u;
    w[1] = (St::SR && St::SS::LOWP && (K & 12u)) ? fo_hash32(idx ^ r.k[1]) : 0u;
    w[2] = (St::SR && St::SP::LOWP) ? fo_hash32(idx ^ r.k[2]) : 0u;
}
__device__ __forceinline__ unsigned fo_word(const unsigned *w, int k) { return w[k >> 1] >> (16 * (k & 1)); }

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

#define FO_PTR_(S, x) ((typename S::type *)(x))

/* One element: load (widen), rule, store (round), EMA epilogue on the parameter as
 * stored (as cpu.h's loops). */
template <typename T, bool EMA, class St, typename Op>
__device__ __forceinline__ void fo_elem(const Op &op, void *const *b, fo_i64 i, const fo_rng &r) {
    typedef typename St::SP SP;
    typedef typename St::SG SG;
    typedef typename St::SS SS;
    T s[Op::NS + 1] = {};
    T p = SP::load(FO_PTR_(SP, b[0])[i]);
    const T g = SG::load(FO_PTR_(SG, b[1])[i]);
#pragma unroll
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) s[k] = SS::load(FO_PTR_(SS, b[FO_STATE + k])[i]);
    op(p, g, s);
    unsigned w[3];
    fo_draw<St, Op::K>(r, (unsigned)i, w);
    const typename SP::type ps = SP::store(p, w[2], St::SR);
    FO_PTR_(SP, b[0])[i] = ps;
#pragma unroll
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) FO_PTR_(SS, b[FO_STATE + k])[i] = SS::store(s[k], fo_word(w, k), St::SR);
    if (EMA) {
        T e = SP::load(FO_PTR_(SP, b[2])[i]);
        fo_ema_rule(e, SP::load(ps), op.c);
        FO_PTR_(SP, b[2])[i] = SP::store(e, w[2] >> 16, St::SR);
    }
}

/* One pack (pack index j: elements j*V .. j*V + V - 1) of every buffer. */
template <typename T, bool EMA, class St, typename Op>
__device__ __forceinline__ void fo_elem_pack(const Op &op, void *const *b, fo_i64 j, const fo_rng &r) {
    enum { V = 16 / sizeof(T) };
    typedef typename St::SP SP;
    typedef typename St::SG SG;
    typedef typename St::SS SS;
    typedef fo_pack<typename SP::type, V> PP;
    typedef fo_pack<typename SG::type, V> PG;
    typedef fo_pack<typename SS::type, V> PS;
    PP pp = ((const PP *)b[0])[j];
    const PG gp = ((const PG *)b[1])[j];
    PS sp[Op::NS + 1];
    PP ep;
#pragma unroll
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) sp[k] = ((const PS *)b[FO_STATE + k])[j];
    if (EMA) ep = ((const PP *)b[2])[j];
#pragma unroll
    for (int l = 0; l < V; l++) {
        T s[Op::NS + 1] = {};
#pragma unroll
        for (int k = 0; k < Op::NS; k++)
            if ((Op::K >> k) & 1u) s[k] = SS::load(sp[k].v[l]);
        T p = SP::load(pp.v[l]);
        op(p, SG::load(gp.v[l]), s);
        unsigned w[3];
        fo_draw<St, Op::K>(r, (unsigned)(j * V + l), w);
        pp.v[l] = SP::store(p, w[2], St::SR);
#pragma unroll
        for (int k = 0; k < Op::NS; k++)
            if ((Op::K >> k) & 1u) sp[k].v[l] = SS::store(s[k], fo_word(w, k), St::SR);
        if (EMA) {
            T e = SP::load(ep.v[l]);
            fo_ema_rule(e, SP::load(pp.v[l]), op.c);
            ep.v[l] = SP::store(e, w[2] >> 16, St::SR);
        }
    }
    ((PP *)b[0])[j] = pp;
#pragma unroll
    for (int k = 0; k < Op::NS; k++)
        if ((Op::K >> k) & 1u) ((PS *)b[FO_STATE + k])[j] = sp[k];
    if (EMA) ((PP *)b[2])[j] = ep;
}

/* Elements [lo, hi) of one tensor (buffer pointers b), strided over the block's threads.
 * Packs where every buffer is aligned to its pack (16 bytes of T; 8 of bfloat16). */
template <typename T, bool EMA, class St, typename Op>
__device__ __forceinline__ void fo_segment(const Op &op, void *const *b, fo_i64 lo, fo_i64 hi, const fo_rng &r) {
    enum { V = 16 / sizeof(T) };
    const unsigned long long ap = V * sizeof(typename St::SP::type) - 1, ag = V * sizeof(typename St::SG::type) - 1,
                             as = V * sizeof(typename St::SS::type) - 1;
    unsigned long long bits = ((unsigned long long)b[0] | (unsigned long long)b[2]) & ap;
    bits |= (unsigned long long)b[1] & ag;
#pragma unroll
    for (int k = 0; k < Op::NS; k++) bits |= (unsigned long long)b[FO_STATE + k] & as;
    fo_i64 vlo = hi, vhi = hi; /* pack range [vlo, vhi), in elements */
    if (bits == 0) {
        vlo = fo_min64(hi, (lo + V - 1) / V * V);
        vhi = fo_max64(vlo, hi / V * V);
    }
    for (fo_i64 i = lo + threadIdx.x; i < vlo; i += blockDim.x) fo_elem<T, EMA, St>(op, b, i, r);
    for (fo_i64 j = vlo / V + threadIdx.x; j < vhi / V; j += blockDim.x) fo_elem_pack<T, EMA, St>(op, b, j, r);
    for (fo_i64 i = vhi + threadIdx.x; i < hi; i += blockDim.x) fo_elem<T, EMA, St>(op, b, i, r);
}

/* The device control block (fo_grad_control_kernel): false when it asks to skip the step,
 * else its global clip coefficient ctrl[2] joins gscale in double, as the CPU path folds
 * it in on the host.  And tensor t's common block: gscale times its tscale[t].          */
__device__ __forceinline__ bool fo_apply_ctrl(fo_common_scalars &cs, const double *ctrl) {
    if (!ctrl) return true;
    if (ctrl[3] != 0.0) return false;
    cs.gscale = cs.gscale * ctrl[2];
    return true;
}
__device__ __forceinline__ fo_common_scalars fo_tensor_common(const fo_common_scalars &cs, const double *tscale,
                                                               int t) {
    fo_common_scalars ct = cs;
    if (tscale) ct.gscale = cs.gscale * tscale[t];
    return ct;
}

/* The key of the random bits (low-precision launches): seed, step and, per tensor, its
 * index in the optimizer (tids, after the pointer rows of meta). */
struct fo_lowp_key {
    unsigned long long seed, step;
    const fo_i64 *tids;
};

template <class A, typename T, unsigned F, bool EMA, class St>
__device__ __forceinline__ void fo_chunks(const fo_common_scalars &cs, const typename A::scalars &as,
                                          const fo_i64 *meta, int ntens, int nbuf, const double *tscale,
                                          const fo_lowp_key &key) {
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
            void *b[FO_STATE + Op::NS];
#pragma unroll
            for (int k = 0; k < FO_STATE; k++) b[k] = (void *)row[k];
#pragma unroll
            for (int k = 0; k < Op::NS; k++) /* a dropped buffer aliases the parameter, never touched */
                b[FO_STATE + k] = (void *)row[((Op::K >> k) & 1u) ? FO_STATE + fo_rank(Op::K, k) : 0];
            const Op op(fo_tensor_common(cs, tscale, t), as);
            /* the hash takes the low 32 bits of the index in the tensor, the high ones go
             * into the key (lowp.h): a piece never crosses a multiple of 2^32            */
            for (fo_i64 i = a - starts[t], end = z - starts[t]; i < end;) {
                const fo_i64 e = fo_min64(end, ((i >> 32) + 1) << 32);
                fo_rng r = {};
                if (St::SR) {
                    const unsigned long long k64 = fo_rng_key(key.seed, key.step, (unsigned long long)key.tids[t],
                                                              (unsigned long long)i >> 32);
                    for (int j = 0; j < 3; j++) r.k[j] = fo_rng_subkey(k64, j);
                }
                fo_segment<T, EMA, St>(op, b, i, e, r);
                i = e;
            }
        }
    }
}

/* The run-time flag bits select the instantiation F (0 .. 2^NFLAGS - 1), then the EMA flag. */
template <class A, typename T, class St, unsigned F = 0>
__device__ void fo_dispatch(unsigned flags, const fo_common_scalars &cs, const typename A::scalars &as,
                            const fo_i64 *meta, int ntens, int nbuf, int ema, const double *tscale,
                            const fo_lowp_key &key) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_dispatch<A, T, St, F + 1>(flags, cs, as, meta, ntens, nbuf, ema, tscale, key);
            return;
        }
    }
    if (ema) fo_chunks<A, T, F, true, St>(cs, as, meta, ntens, nbuf, tscale, key);
    else fo_chunks<A, T, F, false, St>(cs, as, meta, ntens, nbuf, tscale, key);
}

/* A launch: the named block (with the device control block applied), then the dispatch.
 * Returns at once when ctrl asks to skip the step; the global clip coefficient ctrl[2]
 * joins gscale in double, as the CPU path folds it in on the host.  St: the storage.   */
template <class A, typename T, class St>
__device__ void fo_update(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, unsigned flags,
                          const double *tscale, const double *ctrl, const fo_lowp_key &key) {
    fo_common_scalars cs;
    typename A::scalars as;
    memcpy(&cs, hp.h, sizeof cs);
    memcpy(&as, hp.h + FO_NCOMMON, sizeof as);
    if (!fo_apply_ctrl(cs, ctrl)) return;
    fo_dispatch<A, T, St>(flags, cs, as, meta, ntens, nbuf, ema, tscale, key);
}

/* Low-precision storage code (cpu.h's fo_lp_ctx): bit 0 the parameter and its EMA, bit 1
 * the gradient, bit 2 the state buffers are bfloat16 bits; float32 arithmetic. */
template <bool B> struct fo_lp_pick { typedef fo_bf16s type; };
template <> struct fo_lp_pick<false> { typedef fo_same<float> type; };
template <int CODE, bool SR>
using fo_lp_st = fo_st<typename fo_lp_pick<(CODE & 1) != 0>::type, typename fo_lp_pick<(CODE & 2) != 0>::type,
                       typename fo_lp_pick<(CODE & 4) != 0>::type, SR>;

template <class A, int CODE>
__device__ void fo_update_lp(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, unsigned flags,
                             const double *tscale, const double *ctrl, unsigned long long seed,
                             unsigned long long step, int stochastic) {
    const fo_lowp_key key = {seed, step, meta + ntens + 1 + (fo_i64)ntens * nbuf};
    if (stochastic) fo_update<A, float, fo_lp_st<CODE, true> >(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, key);
    else fo_update<A, float, fo_lp_st<CODE, false> >(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, key);
}

/* ---- 8-bit block-wise state on the device (q8.h) ----------------------------------
 * One CUDA block per quantization block of B elements (grid-stride over the blocks of all
 * tensors of the launch), as the CPU loop of q8.h does one block at a time: thread k takes
 * elements k, k + blockDim.x, ... (at most FO_Q8_PER of them: the launch gives blockDim.x
 * <= FO_Q8_THREADS threads with blockDim.x * FO_Q8_PER >= B); it dequantizes them
 * (fo_q8_value), runs the rule and the EMA epilogue (fo_op, as fo_elem) and keeps the new
 * state values in registers; the block's new absmax of each kept buffer is a max over
 * the bits |v| (a shared-memory tree: max is order-independent, NaN above everything,
 * as fo_q8_absmax); then every thread writes its codes with q8.h's fo_q8_near_code or
 * fo_q8_stoch_code and the random bits of the CPU loop (lowp.h's key of (seed, step,
 * tensor id, index >> 32); state buffer k takes the 16 bits 16 (k % 2) .. of
 * fo_hash32(index ^ subkey[k / 2])).  A tensor whose state is float32 (below
 * min_8bit_size) runs in the same launch, block by block, without codes.
 *
 * qmeta (int64): bstarts[0..ntens] (prefix sum of the blocks per tensor), ntens rows of
 * nbuf pointers (param, grad, EMA or 0, the kept state buffers: uint8 codes or float32),
 * ntens rows of nbuf - FO_STATE absmax pointers (0: float32 state), the ntens element
 * counts, the ntens tensor ids.  tables: the host's two fo_q8_table (q8.h: [0] unsigned,
 * [1] signed), copied byte for byte.                                                    */

/* max over the block of the NS values mine[k] (unsigned bits) into sred[k * FO_Q8_THREADS]:
 * a fixed tree for any blockDim.x <= FO_Q8_THREADS. */
template <int NS>
__device__ __forceinline__ void fo_q8_block_max(unsigned *sred, const unsigned *mine) {
    const int k = threadIdx.x, n = blockDim.x;
    __syncthreads(); /* every thread is done reading the previous result */
#pragma unroll
    for (int j = 0; j < NS; j++) sred[j * FO_Q8_THREADS + k] = mine[j];
    __syncthreads();
    int w = 1;
    while (w < n) w <<= 1;
    for (w >>= 1; w > 0; w >>= 1) {
        if (k < w && k + w < n)
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const unsigned a = sred[j * FO_Q8_THREADS + k], b = sred[j * FO_Q8_THREADS + k + w];
                sred[j * FO_Q8_THREADS + k] = a > b ? a : b;
            }
        __syncthreads();
    }
}

/* the absmax of the bits max r of |v| (fo_q8_absmax: a NaN gives the quiet NaN) */
__device__ __forceinline__ float fo_q8_amax_of(unsigned r) { return fo_bits_as_float(r > 0x7F800000u ? 0x7FC00000u : r); }

template <class A, unsigned F, bool EMA, bool SR>
__device__ void fo_q8_blocks(const fo_common_scalars &cs, const typename A::scalars &as, const fo_i64 *meta,
                             int ntens, int nbuf, const double *tscale, unsigned long long seed,
                             unsigned long long step, fo_i64 B, const fo_q8_table *tabs) {
    typedef fo_op<A, float, F> Op;
    enum { NS = Op::NS, K = Op::K, SIGNS = A::signs(), NR = Op::NS > 0 ? Op::NS : 1 };
    __shared__ unsigned sred[NR * FO_Q8_THREADS];
    const int nst = nbuf - FO_STATE;
    const fo_i64 *bst = meta;
    const fo_i64 *rows = meta + ntens + 1;
    const fo_i64 *amrows = rows + (fo_i64)ntens * nbuf;
    const fo_i64 *sizes = amrows + (fo_i64)ntens * nst;
    const fo_i64 *tids = sizes + ntens;
    const fo_i64 nblk = bst[ntens];
    for (fo_i64 b = blockIdx.x; b < nblk; b += gridDim.x) {
        int t = fo_find_tensor(bst, ntens, b);
        while (bst[t + 1] <= b) t++; /* skip tensors without blocks */
        const fo_i64 blk = b - bst[t], j0 = blk * B;
        const int m = (int)fo_min64(B, sizes[t] - j0);
        const fo_i64 *row = rows + (fo_i64)t * nbuf;
        float *p = (float *)row[0] + j0;
        const float *g = (const float *)row[1] + j0;
        float *e = EMA ? (float *)row[2] + j0 : (float *)0;
        const bool quant = nst > 0 && amrows[(fo_i64)t * nst] != 0;
        unsigned char *code[NR] = {};
        float *fs[NR] = {};
        float *am[NR] = {};
        float amax[NR] = {};
#pragma unroll
        for (int k = 0; k < NS; k++)
            if ((K >> k) & 1u) {
                const int c = fo_rank(K, k);
                if (quant) {
                    code[k] = (unsigned char *)row[FO_STATE + c] + j0;
                    am[k] = (float *)amrows[(fo_i64)t * nst + c] + blk;
                    amax[k] = *am[k];
                } else {
                    fs[k] = (float *)row[FO_STATE + c] + j0;
                }
            }
        const Op op(fo_tensor_common(cs, tscale, t), as);
        float v[NR][FO_Q8_PER];
        unsigned mx[NR] = {};
#pragma unroll 1 /* one rule body per instantiation (the values wait in v[][]) */
        for (int l = 0; l < FO_Q8_PER; l++) {
            const int i = (int)threadIdx.x + l * (int)blockDim.x;
            if (i >= m) break;
            float s[NS + 1] = {};
#pragma unroll
            for (int k = 0; k < NS; k++)
                if ((K >> k) & 1u)
                    s[k] = quant ? fo_q8_value(tabs[(SIGNS >> k) & 1u].map, code[k][i], amax[k]) : fs[k][i];
            float pv = p[i];
            op(pv, g[i], s);
            p[i] = pv;
            if (EMA) {
                float ev = e[i];
                fo_ema_rule(ev, pv, op.c);
                e[i] = ev;
            }
#pragma unroll
            for (int k = 0; k < NS; k++)
                if ((K >> k) & 1u) {
                    if (quant) {
                        v[k][l] = s[k];
                        const unsigned a = fo_float_as_bits(s[k]) & 0x7FFFFFFFu;
                        mx[k] = a > mx[k] ? a : mx[k];
                    } else {
                        fs[k][i] = s[k];
                    }
                }
        }
        if (!quant || NS == 0) continue; /* quant is the same for every thread of the block */
        fo_q8_block_max<NR>(sred, mx);
        float inv[NR];
#pragma unroll
        for (int k = 0; k < NS; k++)
            if ((K >> k) & 1u) {
                const float a = fo_q8_amax_of(sred[k * FO_Q8_THREADS]);
                inv[k] = fo_q8_inv(a);
                if (threadIdx.x == 0) *am[k] = a;
            }
        unsigned kx[2] = {0u, 0u};
        if (SR) {
            const unsigned long long key = fo_rng_key(seed, step, (unsigned long long)tids[t], (unsigned long long)j0 >> 32);
            kx[0] = fo_rng_subkey(key, 0);
            kx[1] = fo_rng_subkey(key, 1);
        }
#pragma unroll 1
        for (int l = 0; l < FO_Q8_PER; l++) {
            const int i = (int)threadIdx.x + l * (int)blockDim.x;
            if (i >= m) break;
#pragma unroll
            for (int k = 0; k < NS; k++)
                if ((K >> k) & 1u) {
                    const fo_q8_table &tb = tabs[(SIGNS >> k) & 1u];
                    int q;
                    if (SR) {
                        const unsigned r = (fo_hash32((unsigned)(j0 + i) ^ kx[k >> 1]) >> (16 * (k & 1))) & 0xFFFFu;
                        q = ((SIGNS >> k) & 1u) ? fo_q8_stoch_code<true>(v[k][l], inv[k], r, tb.mag, tb.gap, tb.floor_)
                                                : fo_q8_stoch_code<false>(v[k][l], inv[k], r, tb.mag, tb.gap, tb.floor_);
                    } else {
                        q = ((SIGNS >> k) & 1u) ? fo_q8_near_code<true>(v[k][l], inv[k], tb)
                                                : fo_q8_near_code<false>(v[k][l], inv[k], tb);
                    }
                    code[k][i] = (unsigned char)q;
                }
        }
    }
}

template <class A, bool SR, unsigned F = 0>
__device__ void fo_q8_dispatch(unsigned flags, const fo_common_scalars &cs, const typename A::scalars &as,
                               const fo_i64 *meta, int ntens, int nbuf, int ema, const double *tscale,
                               unsigned long long seed, unsigned long long step, fo_i64 B,
                               const fo_q8_table *tabs) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_q8_dispatch<A, SR, F + 1>(flags, cs, as, meta, ntens, nbuf, ema, tscale, seed, step, B, tabs);
            return;
        }
    }
    if (ema) fo_q8_blocks<A, F, true, SR>(cs, as, meta, ntens, nbuf, tscale, seed, step, B, tabs);
    else fo_q8_blocks<A, F, false, SR>(cs, as, meta, ntens, nbuf, tscale, seed, step, B, tabs);
}

template <class A>
__device__ void fo_update_q8(const fo_hparams &hp, const fo_i64 *meta, int ntens, int nbuf, int ema, unsigned flags,
                             const double *tscale, const double *ctrl, unsigned long long seed,
                             unsigned long long step, int stochastic, fo_i64 B, const fo_q8_table *tabs) {
    fo_common_scalars cs;
    typename A::scalars as;
    memcpy(&cs, hp.h, sizeof cs);
    memcpy(&as, hp.h + FO_NCOMMON, sizeof as);
    if (!fo_apply_ctrl(cs, ctrl)) return;
    if (stochastic) fo_q8_dispatch<A, true>(flags, cs, as, meta, ntens, nbuf, ema, tscale, seed, step, B, tabs);
    else fo_q8_dispatch<A, false>(flags, cs, as, meta, ntens, nbuf, ema, tscale, seed, step, B, tabs);
}

/* ---- the extern "C" entry points, from the one list -----------------------------------
 * fo_<algo>_kernel_f32 / _f64 (hp, meta, ntens, nbuf, ema, flags, tscale, ctrl): tscale
 * (NULL or one double per tensor) and ctrl (NULL or a control block) are device pointers.
 * fo_<algo>_kernel_lp4: float32 parameters and gradients, bfloat16 state (storage code 4
 * of cpu.h), with (seed, step, stochastic) and meta followed by ntens tensor ids (the
 * tensor part of the key): the CPU loop's bits.
 * fo_<algo>_kernel_q8: float32 parameters and gradients, 8-bit block-wise state (q8.h),
 * with (seed, step, stochastic), the block size and the code tables; meta is the qmeta
 * above, blocks of blockDim.x <= FO_Q8_THREADS threads, blockDim.x * FO_Q8_PER >= block.  The CUDA backend takes no bfloat16
 * parameters or gradients (CuPy has no bfloat16 dtype), so codes 1-3 and 5-7 are not
 * instantiated; fo_update_lp<A, CODE> compiles any of them.                            */
#define FO_KERNEL_ARGS_ const fo_hparams hp, const fo_i64 *meta, int ntens, int nbuf, int ema, unsigned flags, \
                        const double *tscale, const double *ctrl
#define FO_KERNEL_(a, P)                                                                          \
    extern "C" __global__ void fo_##a##_kernel_f32(FO_KERNEL_ARGS_) {                              \
        fo_update<fo_##a, float, fo_plain<float> >(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, \
                                                   fo_lowp_key());                                \
    }                                                                                             \
    extern "C" __global__ void fo_##a##_kernel_f64(FO_KERNEL_ARGS_) {                              \
        fo_update<fo_##a, double, fo_plain<double> >(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, \
                                                     fo_lowp_key());                              \
    }                                                                                             \
    extern "C" __global__ void fo_##a##_kernel_lp4(FO_KERNEL_ARGS_, unsigned long long seed,        \
                                                   unsigned long long step, int stochastic) {       \
        fo_update_lp<fo_##a, 4>(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, seed, step, stochastic); \
    }                                                                                             \
    extern "C" __global__ void fo_##a##_kernel_q8(FO_KERNEL_ARGS_, unsigned long long seed,         \
                                                  unsigned long long step, int stochastic, fo_i64 block, \
                                                  const fo_q8_table *tables) {                     \
        fo_update_q8<fo_##a>(hp, meta, ntens, nbuf, ema, flags, tscale, ctrl, seed, step, stochastic, block, \
                             tables);                                                             \
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
 * The conversion the _lp4 kernels do on every store, alone: float32 -> bfloat16 bits of
 * element i of one tensor, nearest-even or stochastic with the random bits the CPU loop
 * draws for state buffer `buffer` (0..3) at (seed, step, tensor): bit-identical to the
 * CPU rounding.  The CUDA backend rounds new state buffers with it (nearest-even, as the
 * CPU path's astype(bfloat16)).                                                        */
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


/* ---- 8-bit state: quantizing a new buffer -------------------------------------------
 * n float32 values x -> codes and one absmax per block of B (the CPU's q8_quantize:
 * nearest rounding, the signed map when sgn), one CUDA block per quantization block
 * (blockDim.x <= FO_Q8_THREADS, blockDim.x * FO_Q8_PER >= B).                          */
extern "C" __global__ void fo_q8_quantize_kernel(const float *x, unsigned char *codes, float *amax, fo_i64 n,
                                                 fo_i64 block, int sgn, const fo_q8_table *tables) {
    __shared__ unsigned sred[FO_Q8_THREADS];
    const fo_q8_table &tb = tables[sgn ? 1 : 0];
    const fo_i64 nblk = (n + block - 1) / block;
    for (fo_i64 b = blockIdx.x; b < nblk; b += gridDim.x) {
        const fo_i64 j0 = b * block;
        const int m = (int)fo_min64(block, n - j0);
        unsigned mx = 0u;
        for (int i = (int)threadIdx.x; i < m; i += (int)blockDim.x) {
            const unsigned a = fo_float_as_bits(x[j0 + i]) & 0x7FFFFFFFu;
            mx = a > mx ? a : mx;
        }
        fo_q8_block_max<1>(sred, &mx);
        const float a = fo_q8_amax_of(sred[0]);
        const float inv = fo_q8_inv(a);
        if (threadIdx.x == 0) amax[b] = a;
        for (int i = (int)threadIdx.x; i < m; i += (int)blockDim.x)
            codes[j0 + i] = (unsigned char)(sgn ? fo_q8_near_code<true>(x[j0 + i], inv, tb)
                                                : fo_q8_near_code<false>(x[j0 + i], inv, tb));
    }
}
