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

typedef void (*fo_seg_fn)(const double *h, char **bufs, ptrdiff_t n);

enum fo_algo {
    FO_SGD = 0, FO_ADAM, FO_ADAGRAD, FO_RMSPROP, FO_ADAMAX, FO_NADAM, FO_RADAM, FO_ADADELTA,
    FO_RPROP, FO_LION, FO_STREAM, FO_NALGO
};

#define FO_BUF(T, i) ((T *FO_RESTRICT)bufs[i])

/* Buffer layout of a segment: bufs[0] param, bufs[1] grad, bufs[2] EMA of the param
 * (NULL when the optimizer keeps none), bufs[3..] the algorithm's state buffers in the
 * order of its Python class's _state_names().                                          */
#define FO_STATE 3

/* Every loop takes its buffers as restrict-qualified parameters and the scalar blocks
 * by value, so the compiler knows nothing aliases and hoists every scalar: each loop
 * body is the element rule, then the EMA epilogue when the optimizer keeps one.
 *
 * A loop is compiled for a MODE fixed per segment (rules.h): without EMA, FO_PLAIN
 * (no clip value / coupled decay / L1) and the lerp form are compile-time, so the common
 * configuration carries no dead selects; with an EMA buffer (FO_EMA) everything is decided
 * at run time.  Every mode gives bit-identical results.                                */
#define FO_EMA 8
#define FO_PG T *FO_RESTRICT p, const T *FO_RESTRICT g, T *FO_RESTRICT e
#define FO_FOR(...)                                                                    \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        __VA_ARGS__;                                                                   \
        if (M & FO_EMA) fo_ema_rule(e[i], p[i], c);                                    \
    }
static FO_INLINE int fo_mode(const void *ema, bool plain, int lerp) {
    return ema ? FO_EMA : ((plain ? FO_PLAIN : 0) | lerp);
}
/* CALL is evaluated with the constexpr int M equal to `mode`. */
#define FO_CASE(m, CALL)                                                               \
    case (m): {                                                                        \
        constexpr int M = (m);                                                         \
        CALL;                                                                          \
    } break;
#define FO_WITH_MODE3(mode, CALL) /* rules without a lerp */                            \
    switch (mode) { FO_CASE(FO_EMA, CALL) FO_CASE(0, CALL) default: FO_CASE(FO_PLAIN, CALL) }
#define FO_WITH_MODE5(mode, CALL) /* rules with a lerp */                               \
    switch (mode) {                                                                    \
        FO_CASE(FO_EMA, CALL)                                                          \
        FO_CASE(FO_LERP_SMALL, CALL)                                                   \
        FO_CASE(FO_LERP_BIG, CALL)                                                     \
        FO_CASE(FO_PLAIN | FO_LERP_BIG, CALL)                                          \
        default: FO_CASE(FO_PLAIN | FO_LERP_SMALL, CALL)                               \
    }
#define FO_LERP(small) ((small) ? FO_LERP_SMALL : FO_LERP_BIG)

/* ---- SGD ------------------------------------------------------------------------- */
template <typename T, int M, bool MOM>
static FO_INLINE void fo_sgd_loop(ptrdiff_t n, FO_PG, T *FO_RESTRICT b, const fo_common<T> c,
                                  const fo_sgd_hp<T> h) {
    T unused;
    FO_FOR(fo_sgd_rule<T, MOM, M>(p[i], g[i], MOM ? b[i] : unused, c, h))
}
template <typename T> static FO_INLINE void fo_sgd_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_sgd_hp<T> h = fo_sgd_hp<T>::load(hd);
    T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1), *e = FO_BUF(T, 2), *b = FO_BUF(T, FO_STATE);
    const int mode = fo_mode(e, c.plain(), 0);
    if (hd[FO_HP_COMMON + 1] != 0.0) FO_WITH_MODE3(mode, (fo_sgd_loop<T, M, true>(n, p, g, e, b, c, h)))
    else FO_WITH_MODE3(mode, (fo_sgd_loop<T, M, false>(n, p, g, e, nullptr, c, h)))
}

/* ---- Adam ------------------------------------------------------------------------ */
template <typename T, int M, bool AMS>
static FO_INLINE void fo_adam_loop(ptrdiff_t n, FO_PG, T *FO_RESTRICT m, T *FO_RESTRICT v,
                                   T *FO_RESTRICT vm, const fo_common<T> c, const fo_adam_hp<T> h) {
    T unused;
    FO_FOR(fo_adam_rule<T, AMS, M>(p[i], g[i], m[i], v[i], AMS ? vm[i] : unused, c, h))
}
template <typename T> static FO_INLINE void fo_adam_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_adam_hp<T> h = fo_adam_hp<T>::load(hd);
    T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1), *e = FO_BUF(T, 2);
    T *m = FO_BUF(T, FO_STATE), *v = FO_BUF(T, FO_STATE + 1);
    const int mode = fo_mode(e, c.plain(), FO_LERP(h.small_w1));
    if (h.amsgrad) {
        T *vm = FO_BUF(T, FO_STATE + 2);
        FO_WITH_MODE5(mode, (fo_adam_loop<T, M, true>(n, p, g, e, m, v, vm, c, h)))
    } else {
        FO_WITH_MODE5(mode, (fo_adam_loop<T, M, false>(n, p, g, e, m, v, nullptr, c, h)))
    }
}

/* ---- Adagrad and Lion: one state buffer each, no lerp ------------------------------- */
#define FO_ONE_STATE(algo)                                                                \
    template <typename T, int M>                                                         \
    static FO_INLINE void fo_##algo##_loop(ptrdiff_t n, FO_PG, T *FO_RESTRICT s0,         \
                                           const fo_common<T> c, const fo_##algo##_hp<T> h) { \
        FO_FOR(fo_##algo##_rule<T, M>(p[i], g[i], s0[i], c, h))                          \
    }                                                                                    \
    template <typename T>                                                                \
    static FO_INLINE void fo_##algo##_seg(const double *hd, char **bufs, ptrdiff_t n) {  \
        const fo_common<T> c = fo_common<T>::load(hd);                                   \
        const fo_##algo##_hp<T> h = fo_##algo##_hp<T>::load(hd);                         \
        T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1), *e = FO_BUF(T, 2), *s0 = FO_BUF(T, FO_STATE); \
        FO_WITH_MODE3(fo_mode(e, c.plain(), 0), (fo_##algo##_loop<T, M>(n, p, g, e, s0, c, h))) \
    }
FO_ONE_STATE(adagrad)
FO_ONE_STATE(lion)
#undef FO_ONE_STATE

/* ---- RMSprop: state square_avg, then grad_avg if centered, then momentum_buffer ---- */
template <typename T, int M, bool C, bool MOM>
static FO_INLINE void fo_rmsprop_loop(ptrdiff_t n, FO_PG, T *FO_RESTRICT sq, T *FO_RESTRICT ga,
                                      T *FO_RESTRICT mb, const fo_common<T> c,
                                      const fo_rmsprop_hp<T> h) {
    T ua, ub;
    FO_FOR(fo_rmsprop_rule<T, C, MOM, M>(p[i], g[i], sq[i], C ? ga[i] : ua, MOM ? mb[i] : ub, c, h))
}
template <typename T, bool C, bool MOM>
static FO_INLINE void fo_rmsprop_flags(ptrdiff_t n, char **bufs, const fo_common<T> &c,
                                       const fo_rmsprop_hp<T> &h) {
    T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1), *e = FO_BUF(T, 2), *sq = FO_BUF(T, FO_STATE);
    T *ga = C ? FO_BUF(T, FO_STATE + 1) : nullptr;
    T *mb = MOM ? FO_BUF(T, C ? FO_STATE + 2 : FO_STATE + 1) : nullptr;
    if (C) {
        FO_WITH_MODE5(fo_mode(e, c.plain(), FO_LERP(h.small_w)),
                      (fo_rmsprop_loop<T, M, C, MOM>(n, p, g, e, sq, ga, mb, c, h)))
    } else {
        FO_WITH_MODE3(fo_mode(e, c.plain(), 0), (fo_rmsprop_loop<T, M, C, MOM>(n, p, g, e, sq, ga, mb, c, h)))
    }
}
template <typename T> static FO_INLINE void fo_rmsprop_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_rmsprop_hp<T> h = fo_rmsprop_hp<T>::load(hd);
    if (h.centered && h.has_momentum) fo_rmsprop_flags<T, true, true>(n, bufs, c, h);
    else if (h.centered) fo_rmsprop_flags<T, true, false>(n, bufs, c, h);
    else if (h.has_momentum) fo_rmsprop_flags<T, false, true>(n, bufs, c, h);
    else fo_rmsprop_flags<T, false, false>(n, bufs, c, h);
}

/* ---- Adamax, NAdam, RAdam (lerp), Adadelta and Rprop (none): two state buffers each - */
#define FO_TWO_STATE(algo, MODE_SWITCH, LERP)                                             \
    template <typename T, int M>                                                         \
    static FO_INLINE void fo_##algo##_loop(ptrdiff_t n, FO_PG, T *FO_RESTRICT s0,         \
                                           T *FO_RESTRICT s1, const fo_common<T> c,      \
                                           const fo_##algo##_hp<T> h) {                  \
        FO_FOR(fo_##algo##_rule<T, M>(p[i], g[i], s0[i], s1[i], c, h))                   \
    }                                                                                    \
    template <typename T>                                                                \
    static FO_INLINE void fo_##algo##_seg(const double *hd, char **bufs, ptrdiff_t n) {  \
        const fo_common<T> c = fo_common<T>::load(hd);                                   \
        const fo_##algo##_hp<T> h = fo_##algo##_hp<T>::load(hd);                         \
        T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1), *e = FO_BUF(T, 2);                       \
        T *s0 = FO_BUF(T, FO_STATE), *s1 = FO_BUF(T, FO_STATE + 1);                      \
        MODE_SWITCH(fo_mode(e, c.plain(), LERP), (fo_##algo##_loop<T, M>(n, p, g, e, s0, s1, c, h))) \
    }
FO_TWO_STATE(adamax, FO_WITH_MODE5, FO_LERP(h.small_w1))
FO_TWO_STATE(nadam, FO_WITH_MODE5, FO_LERP(h.small_w1))
FO_TWO_STATE(radam, FO_WITH_MODE5, FO_LERP(h.small_w1))
FO_TWO_STATE(adadelta, FO_WITH_MODE3, 0)
FO_TWO_STATE(rprop, FO_WITH_MODE3, 0)
#undef FO_TWO_STATE

/* ---- the roofline: a plain streaming loop with the same bytes per element ---------
 * h[0] = number of buffers k (2..6: param, grad and k - 2 state buffers at bufs[3..]),
 * h[1] = a multiplier (0 in the benchmark).  Reads all k buffers and writes all but the
 * gradient: exactly the traffic of an optimizer with k - 2 state buffers.               */
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
template <typename T> static FO_INLINE void fo_stream_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const T c = (T)hd[1];
    switch ((int)hd[0]) {
        case 2: fo_stream_loop<T, 2>(c, bufs, n); break;
        case 3: fo_stream_loop<T, 3>(c, bufs, n); break;
        case 4: fo_stream_loop<T, 4>(c, bufs, n); break;
        case 5: fo_stream_loop<T, 5>(c, bufs, n); break;
        default: fo_stream_loop<T, 6>(c, bufs, n); break;
    }
}

/* ---- multiversioned entry points and the dispatch table --------------------------- */
#define FO_ENTRY(algo)                                                                   \
    FO_CLONES static void algo##_f32(const double *h, char **b, ptrdiff_t n) {           \
        algo##_seg<float>(h, b, n);                                                      \
    }                                                                                    \
    FO_CLONES static void algo##_f64(const double *h, char **b, ptrdiff_t n) {           \
        algo##_seg<double>(h, b, n);                                                     \
    }
FO_ENTRY(fo_sgd)
FO_ENTRY(fo_adam)
FO_ENTRY(fo_adagrad)
FO_ENTRY(fo_rmsprop)
FO_ENTRY(fo_adamax)
FO_ENTRY(fo_nadam)
FO_ENTRY(fo_radam)
FO_ENTRY(fo_adadelta)
FO_ENTRY(fo_rprop)
FO_ENTRY(fo_lion)
FO_ENTRY(fo_stream)
#undef FO_ENTRY

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

/* dtype: 0 = float32, 1 = float64 */
static fo_seg_fn fo_cpu_seg(int algo, int dtype) {
    static const fo_seg_fn table[FO_NALGO][2] = {
        {fo_sgd_f32, fo_sgd_f64},         {fo_adam_f32, fo_adam_f64},
        {fo_adagrad_f32, fo_adagrad_f64}, {fo_rmsprop_f32, fo_rmsprop_f64},
        {fo_adamax_f32, fo_adamax_f64},   {fo_nadam_f32, fo_nadam_f64},
        {fo_radam_f32, fo_radam_f64},     {fo_adadelta_f32, fo_adadelta_f64},
        {fo_rprop_f32, fo_rprop_f64},     {fo_lion_f32, fo_lion_f64},
        {fo_stream_f32, fo_stream_f64},
    };
    if (algo < 0 || algo >= FO_NALGO || dtype < 0 || dtype > 1) return NULL;
    return table[algo][dtype];
}

#endif /* FUSEDOPTIM_CPU_H */
