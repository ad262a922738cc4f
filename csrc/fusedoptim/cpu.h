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

#if defined(__GNUC__) && defined(__x86_64__) && !defined(FO_NO_MULTIVERSION) && defined(__linux__)
#define FO_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FO_CLONES
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

/* The one CPU loop: declared buffer k lives in s[k] (a register after inlining); the
 * buffers the flags drop stay scratch and are never loaded or stored.  Every buffer is a
 * restrict-qualified parameter and the scalar blocks come by value, so the compiler
 * knows nothing aliases and hoists every scalar: the body is the rule, then the EMA
 * epilogue when the optimizer keeps one.                                               */
template <class A, typename T, unsigned F, int M>
static FO_INLINE void fo_loop(ptrdiff_t n, T *FO_RESTRICT p, const T *FO_RESTRICT g, T *FO_RESTRICT e,
                              T *FO_RESTRICT b0, T *FO_RESTRICT b1, T *FO_RESTRICT b2, T *FO_RESTRICT b3,
                              const fo_common<T> c, const typename A::template hp<T> h) {
    constexpr unsigned K = A::mask(F);
    for (ptrdiff_t i = 0; i < n; i++) {
        T s[FO_MAXSTATE] = {};
        if (K & 1u) s[0] = b0[i];
        if (K & 2u) s[1] = b1[i];
        if (K & 4u) s[2] = b2[i];
        if (K & 8u) s[3] = b3[i];
        A::template rule<T, F, M>(p[i], g[i], s, c, h);
        if (K & 1u) b0[i] = s[0];
        if (K & 2u) b1[i] = s[1];
        if (K & 4u) b2[i] = s[2];
        if (K & 8u) b3[i] = s[3];
        if (M & FO_EMA) fo_ema_rule(e[i], p[i], c);
    }
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
#define FO_RUN_(m) fo_loop<A, T, F, (m)>(n, p, g, e, slot[0], slot[1], slot[2], slot[3], c, h)
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
    fo_common_scalars cs;
    typename A::scalars as;
    memcpy(&cs, hd, sizeof cs);
    memcpy(&as, hd + FO_NCOMMON, sizeof as);
    fo_seg_dispatch<A, T>(flags, fo_common<T>::load(cs), A::template hp<T>::load(as), bufs, n);
}

/* ---- the roofline: a plain streaming loop with the same bytes per element ---------
 * Not an optimizer (no rule, no spec): flags = number of buffers k (2..6: param, grad and
 * k - 2 state buffers at bufs[3..]), h[0] = a multiplier (0 in the benchmark).  Reads all
 * k buffers and writes all but the gradient: exactly the traffic of an optimizer with
 * k - 2 state buffers.                                                                   */
template <typename T, int K>
static FO_INLINE void fo_stream_loop(T c, char **bufs, ptrdiff_t n) {
    T *FO_RESTRICT b0 = FO_BUF(T, 0);
    const T *FO_RESTRICT b1 = FO_BUF(T, 1);
    T *FO_RESTRICT b2 = FO_BUF(T, K > 2 ? FO_STATE : 0);
    T *FO_RESTRICT b3 = FO_BUF(T, K > 3 ? FO_STATE + 1 : 0);
    T *FO_RESTRICT b4 = FO_BUF(T, K > 4 ? FO_STATE + 2 : 0);
    T *FO_RESTRICT b5 = FO_BUF(T, K > 5 ? FO_STATE + 3 : 0);
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
 * One pair of entry points per algorithm of FO_ALGOS (rules.h), each a clone set, so
 * every loop is compiled for every instruction set; the ids are the list's order.       */
#define FO_ENTRY_(a, P)                                                                   \
    FO_CLONES static void fo_##a##_f32(const double *h, unsigned f, char **b, ptrdiff_t n) { \
        fo_seg<fo_##a, float>(h, f, b, n);                                              \
    }                                                                                    \
    FO_CLONES static void fo_##a##_f64(const double *h, unsigned f, char **b, ptrdiff_t n) { \
        fo_seg<fo_##a, double>(h, f, b, n);                                             \
    }
FO_ALGOS(FO_ENTRY_)
#undef FO_ENTRY_
FO_CLONES static void fo_stream_f32(const double *h, unsigned k, char **b, ptrdiff_t n) {
    fo_stream_seg<float>(h, k, b, n);
}
FO_CLONES static void fo_stream_f64(const double *h, unsigned k, char **b, ptrdiff_t n) {
    fo_stream_seg<double>(h, k, b, n);
}

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

/* ---- gradient statistics for clipping and the non-finite guard -------------------
 * Sum of squares and (optionally) max |x| of one block.  Squares are summed in T over
 * sub-blocks of 256 elements in 16 fixed lanes, then widened to double and added in a
 * fixed order: the bits depend only on the data and the block boundaries, never on
 * the thread count or the SIMD clone.  NaN and Inf propagate into the sum, which is
 * how the caller detects non-finite gradients.                                          */
#if defined(__GNUC__)
template <typename T>
static FO_INLINE void fo_stats(const T *x, ptrdiff_t n, double *sumsq, double *maxabs) {
    typedef T V __attribute__((vector_size(16 * sizeof(T))));
    const V zero = {};
    V m = zero;
    double s = 0.0;
    ptrdiff_t i = 0;
    for (; i + 256 <= n; i += 256) {
        V acc = zero;
        for (ptrdiff_t j = i; j < i + 256; j += 16) {
            V v;
            __builtin_memcpy(&v, x + j, sizeof(V));
            acc = acc + v * v;
            if (maxabs) {
                V a = v < 0 ? -v : v;
                m = m > a ? m : a;
            }
        }
        for (int k = 0; k < 16; k++) s = s + (double)acc[k];
    }
    T mm = T(0);
    for (int k = 0; k < 16; k++) mm = mm > m[k] ? mm : m[k];
    for (; i < n; i++) {
        s = s + (double)x[i] * (double)x[i];
        T a = x[i] < 0 ? -x[i] : x[i];
        mm = mm > a ? mm : a;
    }
    *sumsq = s;
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
FO_CLONES static void fo_stats_f32(const void *x, ptrdiff_t n, double *s, double *m) {
    fo_stats<float>((const float *)x, n, s, m);
}
FO_CLONES static void fo_stats_f64(const void *x, ptrdiff_t n, double *s, double *m) {
    fo_stats<double>((const double *)x, n, s, m);
}
typedef void (*fo_stats_fn)(const void *x, ptrdiff_t n, double *sumsq, double *maxabs);
static fo_stats_fn fo_cpu_stats(int dtype) { return dtype == 0 ? fo_stats_f32 : fo_stats_f64; }

#endif /* FUSEDOPTIM_CPU_H */
