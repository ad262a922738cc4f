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

#if defined(__GNUC__)
#define FO_RESTRICT __restrict__
#else
#define FO_RESTRICT
#endif

typedef void (*fo_seg_fn)(const double *h, char **bufs, ptrdiff_t n);

enum fo_algo {
    FO_SGD = 0, FO_ADAM, FO_ADAGRAD, FO_RMSPROP, FO_ADAMAX, FO_NADAM, FO_RADAM, FO_ADADELTA,
    FO_STREAM, FO_NALGO
};

#define FO_BUF(T, i) ((T *FO_RESTRICT)bufs[i])

/* Buffer layout of a segment: bufs[0] param, bufs[1] grad, bufs[2] EMA of the param
 * (NULL when the optimizer keeps none), bufs[3..] the algorithm's state buffers in the
 * order of its Python class's _state_names().                                          */
#define FO_STATE 3

/* The one loop: apply `rule` to every element, then the EMA epilogue when present. */
template <typename T, bool EMA, typename F>
static inline void fo_loop_ema(char **bufs, ptrdiff_t n, const fo_common<T> &c, F rule) {
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT e = FO_BUF(T, EMA ? 2 : 0);
    for (ptrdiff_t i = 0; i < n; i++) {
        rule(i, p[i], g[i]);
        if (EMA) fo_ema_rule(e[i], p[i], c);
    }
}
template <typename T, typename F>
static inline void fo_loop(char **bufs, ptrdiff_t n, const fo_common<T> &c, F rule) {
    if (bufs[2]) fo_loop_ema<T, true>(bufs, n, c, rule);
    else fo_loop_ema<T, false>(bufs, n, c, rule);
}

/* ---- one segment function per algorithm, templated on the element type ---------- */
template <typename T> static void fo_sgd_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_sgd_hp<T> h = fo_sgd_hp<T>::load(hd);
    if (hd[FO_HP_COMMON + 1] != 0.0) {
        T *FO_RESTRICT b = FO_BUF(T, FO_STATE);
        fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_sgd_rule<T, true>(p, g, b[i], c, h); });
    } else {
        fo_loop<T>(bufs, n, c, [&](ptrdiff_t, T &p, T g) { T u; fo_sgd_rule<T, false>(p, g, u, c, h); });
    }
}

template <typename T> static void fo_adam_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_adam_hp<T> h = fo_adam_hp<T>::load(hd);
    T *FO_RESTRICT m = FO_BUF(T, FO_STATE);
    T *FO_RESTRICT v = FO_BUF(T, FO_STATE + 1);
    if (h.amsgrad) {
        T *FO_RESTRICT vm = FO_BUF(T, FO_STATE + 2);
        fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_adam_rule<T, true>(p, g, m[i], v[i], vm[i], c, h); });
    } else {
        fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_adam_rule<T, false>(p, g, m[i], v[i], v[i], c, h); });
    }
}

template <typename T> static void fo_adagrad_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_adagrad_hp<T> h = fo_adagrad_hp<T>::load(hd);
    T *FO_RESTRICT s = FO_BUF(T, FO_STATE);
    fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_adagrad_rule<T>(p, g, s[i], c, h); });
}

/* RMSprop state: square_avg, then grad_avg if centered, then momentum_buffer if momentum. */
template <typename T, bool C, bool M>
static inline void fo_rmsprop_loop(const fo_common<T> &c, const fo_rmsprop_hp<T> &h, char **bufs, ptrdiff_t n) {
    T *FO_RESTRICT sq = FO_BUF(T, FO_STATE);
    T *FO_RESTRICT ga = FO_BUF(T, C ? FO_STATE + 1 : FO_STATE);
    T *FO_RESTRICT mb = FO_BUF(T, M ? (C ? FO_STATE + 2 : FO_STATE + 1) : FO_STATE);
    fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) {
        T ua, ub;
        fo_rmsprop_rule<T, C, M>(p, g, sq[i], C ? ga[i] : ua, M ? mb[i] : ub, c, h);
    });
}
template <typename T> static void fo_rmsprop_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_rmsprop_hp<T> h = fo_rmsprop_hp<T>::load(hd);
    if (h.centered && h.has_momentum) fo_rmsprop_loop<T, true, true>(c, h, bufs, n);
    else if (h.centered) fo_rmsprop_loop<T, true, false>(c, h, bufs, n);
    else if (h.has_momentum) fo_rmsprop_loop<T, false, true>(c, h, bufs, n);
    else fo_rmsprop_loop<T, false, false>(c, h, bufs, n);
}

template <typename T> static void fo_adamax_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_adamax_hp<T> h = fo_adamax_hp<T>::load(hd);
    T *FO_RESTRICT m = FO_BUF(T, FO_STATE);
    T *FO_RESTRICT u = FO_BUF(T, FO_STATE + 1);
    fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_adamax_rule<T>(p, g, m[i], u[i], c, h); });
}

template <typename T> static void fo_nadam_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_nadam_hp<T> h = fo_nadam_hp<T>::load(hd);
    T *FO_RESTRICT m = FO_BUF(T, FO_STATE);
    T *FO_RESTRICT v = FO_BUF(T, FO_STATE + 1);
    fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_nadam_rule<T>(p, g, m[i], v[i], c, h); });
}

template <typename T> static void fo_radam_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_radam_hp<T> h = fo_radam_hp<T>::load(hd);
    T *FO_RESTRICT m = FO_BUF(T, FO_STATE);
    T *FO_RESTRICT v = FO_BUF(T, FO_STATE + 1);
    fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_radam_rule<T>(p, g, m[i], v[i], c, h); });
}

template <typename T> static void fo_adadelta_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_common<T> c = fo_common<T>::load(hd);
    const fo_adadelta_hp<T> h = fo_adadelta_hp<T>::load(hd);
    T *FO_RESTRICT s = FO_BUF(T, FO_STATE);
    T *FO_RESTRICT a = FO_BUF(T, FO_STATE + 1);
    fo_loop<T>(bufs, n, c, [&](ptrdiff_t i, T &p, T g) { fo_adadelta_rule<T>(p, g, s[i], a[i], c, h); });
}

/* ---- the roofline: a plain streaming loop with the same bytes per element ---------
 * h[0] = number of buffers k (2..6: param, grad and k - 2 state buffers at bufs[3..]),
 * h[1] = a multiplier (0 in the benchmark).  Reads all k buffers and writes all but the
 * gradient: exactly the traffic of an optimizer with k - 2 state buffers.               */
template <typename T, int K>
static inline void fo_stream_loop(T c, char **bufs, ptrdiff_t n) {
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
template <typename T> static void fo_stream_seg(const double *hd, char **bufs, ptrdiff_t n) {
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
FO_ENTRY(fo_stream)
#undef FO_ENTRY

/* dtype: 0 = float32, 1 = float64 */
static fo_seg_fn fo_cpu_seg(int algo, int dtype) {
    static const fo_seg_fn table[FO_NALGO][2] = {
        {fo_sgd_f32, fo_sgd_f64},         {fo_adam_f32, fo_adam_f64},
        {fo_adagrad_f32, fo_adagrad_f64}, {fo_rmsprop_f32, fo_rmsprop_f64},
        {fo_adamax_f32, fo_adamax_f64},   {fo_nadam_f32, fo_nadam_f64},
        {fo_radam_f32, fo_radam_f64},     {fo_adadelta_f32, fo_adadelta_f64},
        {fo_stream_f32, fo_stream_f64},
    };
    if (algo < 0 || algo >= FO_NALGO || dtype < 0 || dtype > 1) return NULL;
    return table[algo][dtype];
}

#endif /* FUSEDOPTIM_CPU_H */
