/* fusedoptim/cpu.h -- contiguous CPU loops around the rules of rules.h.
 *
 * A "segment" is a run of n consecutive elements of one parameter tensor: bufs[0] is the
 * parameter, bufs[1] its gradient, bufs[2..] its state buffers, each already offset to
 * the segment start.  The Cython driver (_kernels.pyx) splits the total element count of
 * all tensors into per-thread chunks, cuts each chunk at tensor boundaries and calls one
 * segment function per piece.  The loops here are the whole of the CPU arithmetic.
 *
 * Each segment function is compiled for several instruction sets (GCC/Clang
 * target_clones) and the best one is picked when the library loads, so a wheel built for
 * generic x86-64 still runs AVX2/AVX-512 loops.  No fast-math: vectorised sqrt needs only
 * -fno-math-errno.
 */
#ifndef FUSEDOPTIM_CPU_H
#define FUSEDOPTIM_CPU_H

#include <stddef.h>
#include <string.h>
#include "rules.h"
#include "lowp.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(FO_NO_MULTIVERSION) && defined(__linux__)
#define FO_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FO_CLONES
#endif

/* Where the entry points are compiled.  Every header with entry points (this one,
 * cpu_reduce.h, tensorwise.h) declares them with FO_LINKAGE and gives a macro that
 * defines them, FO_<FAMILY>_DEFINE.  Without FO_SPLIT (a header included alone, as the
 * tests' object-code audits do) the header expands its DEFINE macros itself and the entry
 * points are static functions of the including translation unit.  The package build
 * (CMakeLists.txt, fo_split) defines FO_SPLIT everywhere: the Cython translation unit then
 * holds only declarations and the dispatch tables, and the entry points, with external
 * linkage (hidden), are compiled in generated translation units,
 * one per entry of a family's list (one algorithm of FO_ALGOS, ...), built in parallel. */
#if defined(FO_SPLIT) && defined(__GNUC__)
/* hidden on the declaration too: with target_clones, GCC gives the ifunc symbol the
 * visibility of the declaration, not of -fvisibility=hidden */
#define FO_LINKAGE __attribute__((visibility("hidden")))
#elif defined(FO_SPLIT)
#define FO_LINKAGE
#else
#define FO_LINKAGE static
#endif

/* The instruction set whose clone the loops run: the choice the target_clones resolver
 * makes at load time (the best arch level the CPU supports), or "generic" in a build
 * without multiversioning. */
static inline const char *fo_simd_level(void) {
#if defined(__GNUC__) && defined(__x86_64__) && !defined(FO_NO_MULTIVERSION) && defined(__linux__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
    return "x86-64";
#else
    return "generic";
#endif
}

#if defined(__GNUC__)
#define FO_RESTRICT __restrict__
/* Everything below a multiversioned entry point must inline into it, so that each clone
 * compiles the loop for its own instruction set. */
#define FO_INLINE inline __attribute__((always_inline))
#else
#define FO_RESTRICT
#define FO_INLINE inline
#endif

/* A segment function runs one algorithm over n consecutive elements of one tensor:
 * h is the named scalar block (fo_common_scalars, then the algorithm's scalars), flags
 * the algorithm's flag bits, bufs[0] the parameter, bufs[1] its gradient, bufs[2] its EMA
 * (NULL when the optimizer keeps none), bufs[3..] the buffers the flags keep (mask(flags),
 * in declaration order), each already offset to the segment start.                     */
typedef void (*fo_seg_fn)(const double *h, unsigned flags, char **bufs, ptrdiff_t n);

#define FO_STATE 3      /* bufs[FO_STATE + k]: the k-th kept state buffer */
#define FO_MAXSTATE 4   /* state buffers a descriptor may declare (the loop's restrict pointers) */
#define FO_BUF(T, i) ((T *FO_RESTRICT)bufs[i])

/* Loop modes (rules.h): without EMA, FO_PLAIN (no clip value / coupled decay / L1) and the
 * lerp form are fixed per segment, so the common configuration carries no dead selects;
 * with an EMA buffer (FO_EMA) everything is decided at run time.  Every mode gives
 * bit-identical results.                                                               */
#define FO_EMA 8

/* A segment's scalars h: the common block, then algorithm A's named block (spec.h's order),
 * copied out of the double array the driver packs; every CPU segment starts with this. */
template <class A> struct fo_blocks {
    fo_common_scalars cs;
    typename A::scalars as;
};
template <class A> static FO_INLINE fo_blocks<A> fo_load_blocks(const double *h) {
    fo_blocks<A> b;
    memcpy(&b.cs, h, sizeof b.cs);
    memcpy(&b.as, h + FO_NCOMMON, sizeof b.as);
    return b;
}

/* Which random words a loop draws (stochastic rounding SR only, and only for buffers
 * stored in low precision): word 0 rounds state buffers 0 and 1 (its low and high 16
 * bits), word 1 buffers 2 and 3, word 2 the parameter (and, high bits, its EMA).  fo_loop
 * and fo_lp_vloop both read it, so their bits agree by construction.                  */
template <unsigned K, class SP, class SS, bool SR> struct fo_rwords {
    static constexpr bool R0 = SR && SS::LOWP && (K & 3u), R1 = SR && SS::LOWP && (K & 12u), R2 = SR && SP::LOWP;
};

/* The one CPU loop: declared buffer k lives in s[k] (a register after inlining); the
 * buffers the flags drop stay scratch and are never loaded or stored.  Every buffer is a
 * restrict-qualified parameter and the scalar blocks come by value, so the compiler
 * knows nothing aliases and hoists every scalar: the body is the rule, then the EMA
 * epilogue when the optimizer keeps one.
 * Storage (lowp.h): SP, SG and SS say how the parameter (and its EMA), the gradient and
 * the state buffers are stored; each is widened to T on load and rounded on store, the
 * rule itself always runs in T.  The default (fo_same<T>) is plain T memory, and then no
 * random bits are drawn: the float32/float64 loops are exactly what they were.         */
template <class A, typename T, unsigned F, int M, class SP = fo_same<T>, class SG = fo_same<T>,
          class SS = fo_same<T>, bool SR = false>
static FO_INLINE void fo_loop(ptrdiff_t n, typename SP::type *FO_RESTRICT p, const typename SG::type *FO_RESTRICT g,
                              typename SP::type *FO_RESTRICT e, typename SS::type *FO_RESTRICT b0,
                              typename SS::type *FO_RESTRICT b1, typename SS::type *FO_RESTRICT b2,
                              typename SS::type *FO_RESTRICT b3, const fo_common<T> c,
                              const typename A::template hp<T> h, const fo_rng rng = fo_rng()) {
    constexpr unsigned K = A::mask(F);
    /* random bits only for stochastic rounding (SR), and only for the words that get them */
    typedef fo_rwords<K, SP, SS, SR> RW;
    constexpr bool R0 = RW::R0, R1 = RW::R1, R2 = RW::R2;
    unsigned idx = rng.i0;              /* a 32-bit counter of its own: the loop vectorizes it in 32-bit lanes */
    for (ptrdiff_t i = 0; i < n; i++, idx++) {
        T s[FO_MAXSTATE] = {};
        if (K & 1u) s[0] = SS::load(b0[i]);
        if (K & 2u) s[1] = SS::load(b1[i]);
        if (K & 4u) s[2] = SS::load(b2[i]);
        if (K & 8u) s[3] = SS::load(b3[i]);
        T pv = SP::load(p[i]);
        A::template rule<T, F, M>(pv, SG::load(g[i]), s, c, h);
        const unsigned r0 = R0 ? fo_hash32(idx ^ rng.k[0]) : 0u;
        const unsigned r1 = R1 ? fo_hash32(idx ^ rng.k[1]) : 0u;
        const unsigned r2 = R2 ? fo_hash32(idx ^ rng.k[2]) : 0u;
        if (K & 1u) b0[i] = SS::store(s[0], r0, SR);
        if (K & 2u) b1[i] = SS::store(s[1], r0 >> 16, SR);
        if (K & 4u) b2[i] = SS::store(s[2], r1, SR);
        if (K & 8u) b3[i] = SS::store(s[3], r1 >> 16, SR);
        p[i] = SP::store(pv, r2, SR);
        if (M & FO_EMA) {                   /* the average of the parameter as stored */
            T ev = SP::load(e[i]);
            fo_ema_rule(ev, SP::load(p[i]), c);
            e[i] = SP::store(ev, r2 >> 16, SR);
        }
    }
}

/* A large NumPy array starts 16 bytes into a page (glibc's mmap), so half of the 32-byte
 * AVX2 accesses would straddle two cache lines: a segment of FO_ALIGN_MIN elements or more
 * runs the elements before the parameter's first 64-byte boundary alone, then the rest
 * from there (every buffer that shares the parameter's offset is then aligned).
 * Element-wise work cut in two: the same bits.  fo_stream_loop (the roofline) does the same. */
#define FO_ALIGN_MIN 1024
template <typename T> static FO_INLINE ptrdiff_t fo_head(const void *p, ptrdiff_t n) {
    return n < FO_ALIGN_MIN ? 0 : (ptrdiff_t)((-(size_t)p & 63u) / sizeof(T));
}
template <class Q> static FO_INLINE Q *fo_at(Q *q, ptrdiff_t i) { return q ? q + i : q; }
template <class A, typename T, unsigned F, int M>
static FO_INLINE void fo_loop_aligned(ptrdiff_t n, T *p, const T *g, T *e, T *b0, T *b1, T *b2, T *b3,
                                      const fo_common<T> &c, const typename A::template hp<T> &h) {
    const ptrdiff_t i = fo_head<T>(p, n);
    if (i) fo_loop<A, T, F, M>(i, p, g, e, b0, b1, b2, b3, c, h);
    fo_loop<A, T, F, M>(n - i, p + i, g + i, fo_at(e, i), fo_at(b0, i), fo_at(b1, i), fo_at(b2, i),
                        fo_at(b3, i), c, h);
}

/* Flags fixed: map the kept buffers to their declared slots, pick the loop mode. */
template <class A, typename T, unsigned F>
static FO_INLINE void fo_seg_flags(const fo_common<T> &c, const typename A::template hp<T> &h, char **bufs,
                                   ptrdiff_t n) {
    static_assert(A::MAXSTATE <= FO_MAXSTATE, "a descriptor declares more state buffers than the loop has");
    constexpr unsigned K = A::mask(F);
    T *slot[FO_MAXSTATE] = {};
    for (int k = 0, kept = 0; k < A::MAXSTATE; k++)
        if ((K >> k) & 1u) slot[k] = FO_BUF(T, FO_STATE + kept++);
    T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1), *e = FO_BUF(T, 2);
    const int mode = e ? FO_EMA : ((c.plain() ? FO_PLAIN : 0) | A::lerp(F, h));
#define FO_RUN_(m) fo_loop_aligned<A, T, F, (m)>(n, p, g, e, slot[0], slot[1], slot[2], slot[3], c, h)
    switch (mode) {
        case FO_EMA: FO_RUN_(FO_EMA); return;
        case 0: FO_RUN_(0); return;
        case FO_PLAIN: FO_RUN_(FO_PLAIN); return;
    }
    if constexpr (A::LERP != 0) {   /* lerp modes: only reached when A::lerp returns one */
        switch (mode) {
            case FO_LERP_SMALL: FO_RUN_(FO_LERP_SMALL); return;
            case FO_LERP_BIG: FO_RUN_(FO_LERP_BIG); return;
            case FO_PLAIN | FO_LERP_BIG: FO_RUN_(FO_PLAIN | FO_LERP_BIG); return;
            default: FO_RUN_(FO_PLAIN | FO_LERP_SMALL); return;
        }
    }
#undef FO_RUN_
}

/* The run-time flag bits select the instantiation F (0 .. 2^NFLAGS - 1). */
template <class A, typename T, unsigned F = 0>
static FO_INLINE void fo_seg_dispatch(unsigned flags, const fo_common<T> &c, const typename A::template hp<T> &h,
                                      char **bufs, ptrdiff_t n) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_seg_dispatch<A, T, F + 1>(flags, c, h, bufs, n);
            return;
        }
    }
    fo_seg_flags<A, T, F>(c, h, bufs, n);
}

/* The segment of algorithm A: load the named block, dispatch on the flags. */
template <class A, typename T>
static FO_INLINE void fo_seg(const double *hd, unsigned flags, char **bufs, ptrdiff_t n) {
    const auto [cs, as] = fo_load_blocks<A>(hd);
    fo_seg_dispatch<A, T>(flags, fo_common<T>::load(cs), A::template hp<T>::load(as), bufs, n);
}

/* ---- low-precision storage (lowp.h): the same loop, with conversions ---------------
 * A storage code says which buffers are bfloat16: bit 0 the parameter (and its EMA),
 * bit 1 the gradient, bit 2 the state buffers (codes 1..7; 0 is the float32 loop above).
 * Arithmetic is float32.  The conversions cost more instructions than the rule (the loop
 * is compute-bound where float32 is memory-bound), so what is instantiated is chosen for
 * speed where it pays and for code size elsewhere (each loop is compiled three times):
 *   - stochastic and nearest rounding are separate loops (SR): nearest draws no bits;
 *   - the run-time mode 0 (the rules decide clip/decay/lerp per element, with the same
 *     results as the fixed modes) everywhere, plus FO_PLAIN with the lerp form fixed
 *     (fo_lp_fast) for the two common storages, bfloat16 state (code 4) and everything
 *     bfloat16 (code 7);
 *   - the EMA is not a loop mode here: a second short loop (fo_lp_ema, one per storage of
 *     the parameter, shared by every algorithm) runs over each block of FO_LP_BLOCK
 *     elements right after the update, while the block is still in cache, with the same
 *     arithmetic and random bits as the EMA epilogue of fo_loop.
 * x: the segment's place in its tensor and the key of the random bits (lowp.h).         */
struct fo_lp_ctx {
    unsigned long long seed, step, tensor; /* the key: optimizer seed, step, tensor index */
    ptrdiff_t i0;                          /* index in the tensor of the segment's first element */
    int stochastic;                        /* 1: stochastic rounding, 0: nearest-even */
};
typedef void (*fo_lp_fn)(const double *h, unsigned flags, char **bufs, ptrdiff_t n, const fo_lp_ctx *x);

#define FO_LP_BLOCK 2048   /* elements per update + EMA block (with an EMA buffer only) */

template <bool B, class X, class Y> struct fo_if { typedef X type; };
template <class X, class Y> struct fo_if<false, X, Y> { typedef Y type; };

/* the EMA of n parameters as stored: ema = lerp(ema, p), rounded with the high 16 bits
 * of the parameter's hash (fo_loop's epilogue, as a loop of its own) */
template <class SP, bool SR>
static FO_INLINE void fo_lp_ema(ptrdiff_t n, const typename SP::type *FO_RESTRICT p, typename SP::type *FO_RESTRICT e,
                                const fo_common<float> c, const fo_rng rng) {
    unsigned idx = rng.i0;
    for (ptrdiff_t i = 0; i < n; i++, idx++) {
        float ev = SP::load(e[i]);
        fo_ema_rule(ev, SP::load(p[i]), c);
        e[i] = SP::store(ev, (SR && SP::LOWP) ? fo_hash32(idx ^ rng.k[2]) >> 16 : 0u, SR);
    }
}

/* fo_loop with bfloat16 storage, FO_LP_VW elements at a time (GCC): the bfloat16 buffers
 * are widened 8 lanes at a time (lowp.h) into float32 arrays on the stack, fo_loop runs the
 * rule on those as plain float memory (the float32 instantiation, unrolled), and the
 * results are rounded back 8 lanes at a time with the same random bits, lane by lane, as
 * fo_loop's own epilogue (state pair (0, 1) and (2, 3) the halves of one hash, the
 * parameter its own): the same bits.  The last n % FO_LP_VW elements take fo_loop.     */
#ifdef FO_LP_VEC
#define FO_LP_VW 16
template <class S> static FO_INLINE float *fo_lp_vin(typename S::type *q, float *t) {
    if constexpr (S::LOWP) {
        for (int v = 0; v < FO_LP_VW; v += 8) {
            const fo_lp_v8f x = fo_bf16_load_v8(q + v);
            memcpy(t + v, &x, sizeof x);
        }
        return t;
    } else {
        return (float *)q;
    }
}
template <class A, unsigned F, int M, class SP, class SG, class SS, bool SR>
static FO_INLINE void fo_lp_vloop(ptrdiff_t n, typename SP::type *p, const typename SG::type *g,
                                  typename SS::type *const *slot, ptrdiff_t j0, const fo_common<float> &c,
                                  const typename A::template hp<float> &h, const fo_rng &r) {
    constexpr unsigned K = A::mask(F);
    typedef fo_rwords<K, SP, SS, SR> RW;
    constexpr bool R0 = RW::R0, R1 = RW::R1, R2 = RW::R2;
    typename SS::type *b[FO_MAXSTATE];
    for (int k = 0; k < FO_MAXSTATE; k++) b[k] = fo_at(slot[k], j0);
    const fo_lp_v8u lane = {0u, 1u, 2u, 3u, 4u, 5u, 6u, 7u};
    ptrdiff_t i = 0;
    for (; i + FO_LP_VW <= n; i += FO_LP_VW) {
        alignas(32) float tp[FO_LP_VW], tg[FO_LP_VW], ts[FO_MAXSTATE][FO_LP_VW];
        float *P = fo_lp_vin<SP>(p + i, tp);
        const float *G = fo_lp_vin<SG>((typename SG::type *)(g + i), tg);
        float *S[FO_MAXSTATE] = {};
#define FO_LP_VIN_(k) \
    if constexpr (((K >> k) & 1u) != 0) S[k] = fo_lp_vin<SS>(b[k] + i, ts[k]);
        FO_LP_VIN_(0) FO_LP_VIN_(1) FO_LP_VIN_(2) FO_LP_VIN_(3)
#undef FO_LP_VIN_
        fo_loop<A, float, F, M>(FO_LP_VW, P, G, NULL, S[0], S[1], S[2], S[3], c, h);
        fo_lp_v8u w[2][FO_MAXSTATE + 1];   /* rounded bits: state k, then the parameter */
        for (int v = 0; v < 2; v++) {
            const fo_lp_v8u idx = (r.i0 + (unsigned)(i + 8 * v)) + lane;
            const fo_lp_v8u r0 = R0 ? fo_hash32_v8(idx ^ r.k[0]) : fo_lp_v8u{};
            const fo_lp_v8u r1 = R1 ? fo_hash32_v8(idx ^ r.k[1]) : fo_lp_v8u{};
            const fo_lp_v8u r2 = R2 ? fo_hash32_v8(idx ^ r.k[2]) : fo_lp_v8u{};
            fo_lp_v8f x;
#define FO_LP_VROUND_(k, rk)                                  \
    if constexpr (SS::LOWP && ((K >> k) & 1u) != 0) {         \
        memcpy(&x, ts[k] + 8 * v, sizeof x);                  \
        w[v][k] = fo_bf16_round_v8<SR>(x, rk);                \
    }
            FO_LP_VROUND_(0, r0) FO_LP_VROUND_(1, r0 >> 16) FO_LP_VROUND_(2, r1) FO_LP_VROUND_(3, r1 >> 16)
#undef FO_LP_VROUND_
            if constexpr (SP::LOWP) {
                memcpy(&x, tp + 8 * v, sizeof x);
                w[v][FO_MAXSTATE] = fo_bf16_round_v8<SR>(x, r2);
            }
        }
#define FO_LP_VOUT_(k) \
    if constexpr (SS::LOWP && ((K >> k) & 1u) != 0) fo_bf16_store_v16(b[k] + i, w[0][k], w[1][k]);
        FO_LP_VOUT_(0) FO_LP_VOUT_(1) FO_LP_VOUT_(2) FO_LP_VOUT_(3)
#undef FO_LP_VOUT_
        if constexpr (SP::LOWP) fo_bf16_store_v16(p + i, w[0][FO_MAXSTATE], w[1][FO_MAXSTATE]);
    }
    if (i < n) {
        fo_rng rt = r;
        rt.i0 = r.i0 + (unsigned)i;
        fo_loop<A, float, F, M, SP, SG, SS, SR>(n - i, p + i, g + i, NULL, fo_at(b[0], i), fo_at(b[1], i),
                                                fo_at(b[2], i), fo_at(b[3], i), c, h, rt);
    }
}
#endif

/* the fixed mode of the fast loop for these scalars, or -1 (then the run-time mode 0) */
template <class A>
static FO_INLINE int fo_lp_fast(const fo_common<float> &c, unsigned F, const typename A::template hp<float> &h) {
    if (!c.plain()) return -1;
    if (A::LERP == 0) return FO_PLAIN;
    return A::lerp(F, h) == FO_LERP_SMALL ? FO_PLAIN | FO_LERP_SMALL : -1;
}

template <class A, unsigned F, class SP, class SG, class SS, bool SR, bool FAST>
static FO_INLINE void fo_lp_run(const fo_common<float> &c, const typename A::template hp<float> &h, ptrdiff_t m,
                                typename SP::type *p, const typename SG::type *g, typename SP::type *e,
                                typename SS::type *const *slot, const fo_rng &r) {
    constexpr int FM = A::LERP == 0 ? FO_PLAIN : FO_PLAIN | FO_LERP_SMALL;
    const bool fast = FAST && fo_lp_fast<A>(c, F, h) == FM;
    const ptrdiff_t blk = e ? FO_LP_BLOCK : m;
    for (ptrdiff_t j = 0; j < m; j += blk) {
        const ptrdiff_t b = m - j < blk ? m - j : blk;
        fo_rng rb = r;
        rb.i0 = r.i0 + (unsigned)j;
        if (FAST && fast)
#ifdef FO_LP_VEC
            fo_lp_vloop<A, F, FM, SP, SG, SS, SR>(b, p + j, g + j, slot, j, c, h, rb);
#else
            fo_loop<A, float, F, FM, SP, SG, SS, SR>(b, p + j, g + j, NULL, fo_at(slot[0], j), fo_at(slot[1], j),
                                                     fo_at(slot[2], j), fo_at(slot[3], j), c, h, rb);
#endif
        else
            fo_loop<A, float, F, 0, SP, SG, SS, SR>(b, p + j, g + j, NULL, fo_at(slot[0], j), fo_at(slot[1], j),
                                                    fo_at(slot[2], j), fo_at(slot[3], j), c, h, rb);
        if (e) fo_lp_ema<SP, SR>(b, p + j, e + j, c, rb);
    }
}

template <class A, unsigned F, class SP, class SG, class SS, bool FAST>
static FO_INLINE void fo_lp_flags(const fo_common<float> &c, const typename A::template hp<float> &h, char **bufs,
                                  ptrdiff_t n, const fo_lp_ctx *x) {
    constexpr unsigned K = A::mask(F);
    typedef typename SS::type S;
    S *slot[FO_MAXSTATE] = {};
    for (int k = 0, kept = 0; k < A::MAXSTATE; k++)
        if ((K >> k) & 1u) slot[k] = (S *)bufs[FO_STATE + kept++];
    typename SP::type *p = (typename SP::type *)bufs[0], *e = (typename SP::type *)bufs[2];
    const typename SG::type *g = (const typename SG::type *)bufs[1];
    /* nothing is rounded when only the gradient is bfloat16: one loop */
    constexpr bool ROUNDS = SP::LOWP || SS::LOWP;
    /* the hash takes the low 32 bits of the index; the high ones go into the key, so a
     * piece never crosses a multiple of 2^32 (only tensors that large are split here) */
    for (ptrdiff_t i = 0; i < n;) {
        const unsigned long long gi = (unsigned long long)(x->i0 + i);
        const unsigned long long room = (((gi >> 32) + 1ULL) << 32) - gi;
        const ptrdiff_t m = (unsigned long long)(n - i) < room ? n - i : (ptrdiff_t)room;
        fo_rng r;
        r.i0 = (unsigned)gi;
        S *sl[FO_MAXSTATE];
        for (int k = 0; k < FO_MAXSTATE; k++) sl[k] = fo_at(slot[k], i);
        if (ROUNDS && x->stochastic) {
            const unsigned long long key = fo_rng_key(x->seed, x->step, x->tensor, gi >> 32);
            for (int j = 0; j < 3; j++) r.k[j] = fo_rng_subkey(key, j);
            fo_lp_run<A, F, SP, SG, SS, ROUNDS, FAST>(c, h, m, p + i, g + i, fo_at(e, i), sl, r);
        } else {
            r.k[0] = r.k[1] = r.k[2] = 0u;
            fo_lp_run<A, F, SP, SG, SS, false, FAST>(c, h, m, p + i, g + i, fo_at(e, i), sl, r);
        }
        i += m;
    }
}

template <class A, class SP, class SG, class SS, bool FAST, unsigned F = 0>
static FO_INLINE void fo_lp_dispatch(unsigned flags, const fo_common<float> &c, const typename A::template hp<float> &h,
                                     char **bufs, ptrdiff_t n, const fo_lp_ctx *x) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_lp_dispatch<A, SP, SG, SS, FAST, F + 1>(flags, c, h, bufs, n, x);
            return;
        }
    }
    fo_lp_flags<A, F, SP, SG, SS, FAST>(c, h, bufs, n, x);
}

template <class A, int CODE>
static FO_INLINE void fo_lp_seg(const double *hd, unsigned flags, char **bufs, ptrdiff_t n, const fo_lp_ctx *x) {
    const auto [cs, as] = fo_load_blocks<A>(hd);
    typedef typename fo_if<(CODE & 1) != 0, fo_bf16s, fo_same<float> >::type SP;
    typedef typename fo_if<(CODE & 2) != 0, fo_bf16s, fo_same<float> >::type SG;
    typedef typename fo_if<(CODE & 4) != 0, fo_bf16s, fo_same<float> >::type SS;
    fo_lp_dispatch<A, SP, SG, SS, CODE == 4 || CODE == 7>(flags, fo_common<float>::load(cs),
                                                          A::template hp<float>::load(as), bufs, n, x);
}

/* ---- the roofline: a plain streaming loop with the same bytes per element ---------
 * Not an optimizer (no rule, no spec): flags = number of buffers k (2..6: param, grad and
 * k - 2 state buffers at bufs[3..]), h[0] = a multiplier (0 in the benchmark).  Reads all
 * k buffers and writes all but the gradient: exactly the traffic of an optimizer with
 * k - 2 state buffers.                                                                   */
/* The pointers are restrict-qualified parameters: GCC honours those, but not restrict on
 * local variables, and with six buffers the run-time alias checks it would need exceed its
 * limit (--param vect-max-version-for-alias-checks=10), so a K = 6 loop with local
 * pointers stayed scalar and the roofline of the 6-buffer optimizers read far too low. */
template <typename T, int K>
static FO_INLINE void fo_stream_body(T c, ptrdiff_t n, T *FO_RESTRICT b0, const T *FO_RESTRICT b1, T *FO_RESTRICT b2,
                                     T *FO_RESTRICT b3, T *FO_RESTRICT b4, T *FO_RESTRICT b5) {
    for (ptrdiff_t i = 0; i < n; i++) {
        T s = b0[i] + b1[i];
        if (K > 2) s = s + b2[i];
        if (K > 3) s = s + b3[i];
        if (K > 4) s = s + b4[i];
        if (K > 5) s = s + b5[i];
        b0[i] = b0[i] + c * s;
        if (K > 2) b2[i] = b2[i] + c * s;
        if (K > 3) b3[i] = b3[i] + c * s;
        if (K > 4) b4[i] = b4[i] + c * s;
        if (K > 5) b5[i] = b5[i] + c * s;
    }
}
template <typename T, int K>
static FO_INLINE void fo_stream_loop(T c, char **bufs, ptrdiff_t n) {
    T *b0 = (T *)bufs[0], *b2 = K > 2 ? (T *)bufs[FO_STATE] : NULL, *b3 = K > 3 ? (T *)bufs[FO_STATE + 1] : NULL;
    T *b4 = K > 4 ? (T *)bufs[FO_STATE + 2] : NULL, *b5 = K > 5 ? (T *)bufs[FO_STATE + 3] : NULL;
    const T *b1 = (const T *)bufs[1];
    const ptrdiff_t i = fo_head<T>(b0, n);   /* as fo_loop_aligned */
    if (i) fo_stream_body<T, K>(c, i, b0, b1, b2, b3, b4, b5);
    fo_stream_body<T, K>(c, n - i, b0 + i, b1 + i, fo_at(b2, i), fo_at(b3, i), fo_at(b4, i), fo_at(b5, i));
}
template <typename T> static FO_INLINE void fo_stream_seg(const double *hd, unsigned k, char **bufs, ptrdiff_t n) {
    const T c = (T)hd[0];
    switch (k) {
        case 2: fo_stream_loop<T, 2>(c, bufs, n); break;
        case 3: fo_stream_loop<T, 3>(c, bufs, n); break;
        case 4: fo_stream_loop<T, 4>(c, bufs, n); break;
        case 5: fo_stream_loop<T, 5>(c, bufs, n); break;
        default: fo_stream_loop<T, 6>(c, bufs, n); break;
    }
}

/* ---- multiversioned entry points and the dispatch table ---------------------------
 * One set of entry points per algorithm of FO_ALGOS (rules.h), each a clone set, so
 * every loop is compiled for every instruction set; the ids are the list's order:
 * fo_<algo>_f32 / _f64 (fo_seg_fn) and fo_<algo>_lp1 .. _lp7 (fo_lp_fn, storage codes).
 * FO_CPU_DECLARE declares them, FO_CPU_DEFINE compiles them (see FO_SPLIT above).       */
#define FO_SEG_ARGS_ const double *h, unsigned f, char **b, ptrdiff_t n
#define FO_LP_ARGS_ const double *h, unsigned f, char **b, ptrdiff_t n, const fo_lp_ctx *x
#define FO_CPU_DECLARE(a, P)                                                                      \
    FO_LINKAGE void fo_##a##_f32(FO_SEG_ARGS_);                                                   \
    FO_LINKAGE void fo_##a##_f64(FO_SEG_ARGS_);                                                   \
    FO_LINKAGE void fo_##a##_lp1(FO_LP_ARGS_);                                                    \
    FO_LINKAGE void fo_##a##_lp2(FO_LP_ARGS_);                                                    \
    FO_LINKAGE void fo_##a##_lp3(FO_LP_ARGS_);                                                    \
    FO_LINKAGE void fo_##a##_lp4(FO_LP_ARGS_);                                                    \
    FO_LINKAGE void fo_##a##_lp5(FO_LP_ARGS_);                                                    \
    FO_LINKAGE void fo_##a##_lp6(FO_LP_ARGS_);                                                    \
    FO_LINKAGE void fo_##a##_lp7(FO_LP_ARGS_);
#define FO_LP_ONE_(a, code)                                                                       \
    FO_CLONES FO_LINKAGE void fo_##a##_lp##code(FO_LP_ARGS_) { fo_lp_seg<fo_##a, code>(h, f, b, n, x); }
#define FO_CPU_DEFINE(a, P)                                                                       \
    FO_CLONES FO_LINKAGE void fo_##a##_f32(FO_SEG_ARGS_) { fo_seg<fo_##a, float>(h, f, b, n); }    \
    FO_CLONES FO_LINKAGE void fo_##a##_f64(FO_SEG_ARGS_) { fo_seg<fo_##a, double>(h, f, b, n); }   \
    FO_LP_ONE_(a, 1) FO_LP_ONE_(a, 2) FO_LP_ONE_(a, 3) FO_LP_ONE_(a, 4) FO_LP_ONE_(a, 5)          \
    FO_LP_ONE_(a, 6) FO_LP_ONE_(a, 7)
FO_ALGOS(FO_CPU_DECLARE)
/* the roofline loop and the block statistics (below): FO_CPU_MISC_DEFINE() compiles them */
FO_LINKAGE void fo_stream_f32(FO_SEG_ARGS_);
FO_LINKAGE void fo_stream_f64(FO_SEG_ARGS_);
FO_LINKAGE void fo_stats_f32(const void *x, ptrdiff_t n, double *s, double *m);
FO_LINKAGE void fo_stats_f64(const void *x, ptrdiff_t n, double *s, double *m);
FO_LINKAGE void fo_stats_bf16(const void *x, ptrdiff_t n, double *s, double *m);
#if !defined(FO_SPLIT)
FO_ALGOS(FO_CPU_DEFINE)
#endif

#define FO_ID_(a, P) FO_ID_##a,
enum fo_algo_id { FO_ALGOS(FO_ID_) FO_NALGO };
#undef FO_ID_

/* dtype: 0 = float32, 1 = float64; algo FO_NALGO is the roofline loop */
static fo_seg_fn fo_cpu_seg(int algo, int dtype) {
#define FO_ROW_(a, P) {fo_##a##_f32, fo_##a##_f64},
    static const fo_seg_fn table[FO_NALGO + 1][2] = {FO_ALGOS(FO_ROW_){fo_stream_f32, fo_stream_f64}};
#undef FO_ROW_
    if (algo < 0 || algo > FO_NALGO || dtype < 0 || dtype > 1) return NULL;
    return table[algo][dtype];
}

/* the low-precision loop of algorithm algo for storage code 1..7 (see fo_lp_ctx) */
static fo_lp_fn fo_cpu_seg_lp(int algo, int code) {
#define FO_LP_ROW_(a, P) {NULL, fo_##a##_lp1, fo_##a##_lp2, fo_##a##_lp3, fo_##a##_lp4, fo_##a##_lp5, fo_##a##_lp6, fo_##a##_lp7},
    static const fo_lp_fn table[FO_NALGO][8] = {FO_ALGOS(FO_LP_ROW_)};
#undef FO_LP_ROW_
    if (algo < 0 || algo >= FO_NALGO || code < 1 || code > 7) return NULL;
    return table[algo][code];
}

/* ---- gradient statistics for clipping and the non-finite guard -------------------
 * Sum of squares and (optionally) max |x| of one block.  Squares are summed in T over
 * sub-blocks of 256 elements in 16 fixed lanes, then widened to double and added in a
 * fixed order: the bits depend only on the data and the block boundaries, never on
 * the thread count or the SIMD clone.  NaN and Inf propagate into the sum, which is
 * how the caller detects non-finite gradients.                                          */
#if defined(__GNUC__)
/* max |x| runs on the bits: |x| is x's bits without the sign, and non-negative floats
 * order as their bits do as signed integers (Inf and the NaNs above every finite value),
 * so it is an integer max, which every clone vectorizes; a float max with ?: on these
 * 16-lane vector types was scalarized on AVX2 (1.1 ns/element against 0.09 for the sum
 * alone).  A NaN makes the sum NaN, and the sum is what the caller reports then. */
template <typename T>
static FO_INLINE void fo_stats(const T *x, ptrdiff_t n, double *sumsq, double *maxabs) {
    typedef T V __attribute__((vector_size(16 * sizeof(T))));
    typedef typename fo_if<sizeof(T) == 4, int, long long>::type I;
    typedef I VI __attribute__((vector_size(16 * sizeof(T))));
    const I absmask = (I)(~(I)0 & ~((I)1 << (8 * sizeof(T) - 1)));
    const V zero = {};
    VI mb = {};
    double s = 0.0;
    ptrdiff_t i = 0;
    for (; i + 256 <= n; i += 256) {
        V acc = zero;
        for (ptrdiff_t j = i; j < i + 256; j += 16) {
            V v;
            __builtin_memcpy(&v, x + j, sizeof(V));
            acc = acc + v * v;
            if (maxabs) {
                VI b;
                __builtin_memcpy(&b, &v, sizeof(VI));
                b &= absmask;
                mb = mb > b ? mb : b;
            }
        }
        for (int k = 0; k < 16; k++) s = s + (double)acc[k];
    }
    I mi = 0;
    for (int k = 0; k < 16; k++) mi = mi > mb[k] ? mi : mb[k];
    for (; i < n; i++) {
        s = s + (double)x[i] * (double)x[i];
        I b;
        __builtin_memcpy(&b, x + i, sizeof(I));
        b &= absmask;
        mi = mi > b ? mi : b;
    }
    *sumsq = s;
    T mm;
    __builtin_memcpy(&mm, &mi, sizeof(T));
    if (maxabs) *maxabs = (s != s) ? s : (double)mm;   /* a NaN anywhere makes max NaN too */
}
#else
template <typename T>
static FO_INLINE void fo_stats(const T *x, ptrdiff_t n, double *sumsq, double *maxabs) {
    double s = 0.0, mm = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = (double)x[i];
        s = s + v * v;
        double a = v < 0 ? -v : v;
        mm = mm > a ? mm : a;
    }
    *sumsq = s;
    if (maxabs) *maxabs = (s != s) ? s : mm;
}
#endif
/* bfloat16 (gradients): each run of 256 elements widened to float32 and reduced as above,
 * the runs added in order, so the bits depend only on the data and the block boundaries */
static FO_INLINE void fo_stats_bf16_seg(const void *x, ptrdiff_t n, double *s, double *m) {
    const fo_bf16_bits *b = (const fo_bf16_bits *)x;
    float tmp[256];
    double ss = 0.0, mm = 0.0, s1, m1;
    for (ptrdiff_t i = 0; i < n; i += 256) {
        const ptrdiff_t k = n - i < 256 ? n - i : 256;
        for (ptrdiff_t j = 0; j < k; j++) tmp[j] = fo_bf16_to_float(b[i + j]);
        fo_stats<float>(tmp, k, &s1, m ? &m1 : NULL);
        ss = ss + s1;
        if (m) mm = (mm != mm || m1 != m1) ? (mm != mm ? mm : m1) : (mm > m1 ? mm : m1);
    }
    *s = ss;
    if (m) *m = (ss != ss) ? ss : mm;
}
#define FO_STATS_ARGS_ const void *x, ptrdiff_t n, double *s, double *m
#define FO_CPU_MISC_DEFINE()                                                                      \
    FO_CLONES FO_LINKAGE void fo_stream_f32(FO_SEG_ARGS_) { fo_stream_seg<float>(h, f, b, n); }    \
    FO_CLONES FO_LINKAGE void fo_stream_f64(FO_SEG_ARGS_) { fo_stream_seg<double>(h, f, b, n); }   \
    FO_CLONES FO_LINKAGE void fo_stats_f32(FO_STATS_ARGS_) { fo_stats<float>((const float *)x, n, s, m); } \
    FO_CLONES FO_LINKAGE void fo_stats_f64(FO_STATS_ARGS_) { fo_stats<double>((const double *)x, n, s, m); } \
    FO_CLONES FO_LINKAGE void fo_stats_bf16(FO_STATS_ARGS_) { fo_stats_bf16_seg(x, n, s, m); }
#if !defined(FO_SPLIT)
FO_CPU_MISC_DEFINE()
#endif
typedef void (*fo_stats_fn)(const void *x, ptrdiff_t n, double *sumsq, double *maxabs);
/* dtype: 0 = float32, 1 = float64, 2 = bfloat16 */
static fo_stats_fn fo_cpu_stats(int dtype) { return dtype == 0 ? fo_stats_f32 : (dtype == 1 ? fo_stats_f64 : fo_stats_bf16); }

#endif /* FUSEDOPTIM_CPU_H */
