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

/* ---- one segment function per algorithm, templated on the element type ---------- */
template <typename T> static void fo_sgd_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_sgd_hp<T> h = fo_sgd_hp<T>::load(hd);
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    if (hd[2] != 0.0) {
        T *FO_RESTRICT b = FO_BUF(T, 2);
        for (ptrdiff_t i = 0; i < n; i++) fo_sgd_rule<T, true>(p[i], g[i], b[i], h);
    } else {
        T unused = T(0);
        for (ptrdiff_t i = 0; i < n; i++) fo_sgd_rule<T, false>(p[i], g[i], unused, h);
    }
}

/* h[9] of the Adam block is the amsgrad flag (not part of the rule's scalars). */
template <typename T> static void fo_adam_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_adam_hp<T> h = fo_adam_hp<T>::load(hd);
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT m = FO_BUF(T, 2);
    T *FO_RESTRICT v = FO_BUF(T, 3);
    if (hd[9] != 0.0) {
        T *FO_RESTRICT vm = FO_BUF(T, 4);
        for (ptrdiff_t i = 0; i < n; i++) fo_adam_rule<T, true>(p[i], g[i], m[i], v[i], vm[i], h);
    } else {
        for (ptrdiff_t i = 0; i < n; i++) fo_adam_rule<T, false>(p[i], g[i], m[i], v[i], v[i], h);
    }
}

template <typename T> static void fo_adagrad_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_adagrad_hp<T> h = fo_adagrad_hp<T>::load(hd);
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT s = FO_BUF(T, 2);
    for (ptrdiff_t i = 0; i < n; i++) fo_adagrad_rule<T>(p[i], g[i], s[i], h);
}

/* h[7], h[8] of the RMSprop block: centered flag, momentum flag.  Buffers after the
 * gradient: square_avg, then grad_avg if centered, then momentum_buffer if momentum. */
template <typename T, bool C, bool M>
static inline void fo_rmsprop_loop(const fo_rmsprop_hp<T> &h, char **bufs, ptrdiff_t n) {
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT sq = FO_BUF(T, 2);
    T *FO_RESTRICT ga = C ? FO_BUF(T, 3) : sq;
    T *FO_RESTRICT mb = M ? FO_BUF(T, C ? 4 : 3) : sq;
    for (ptrdiff_t i = 0; i < n; i++) {
        T unused_a, unused_b;
        fo_rmsprop_rule<T, C, M>(p[i], g[i], sq[i], C ? ga[i] : unused_a, M ? mb[i] : unused_b, h);
    }
}
template <typename T> static void fo_rmsprop_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_rmsprop_hp<T> h = fo_rmsprop_hp<T>::load(hd);
    const bool c = hd[7] != 0.0, m = hd[8] != 0.0;
    if (c && m) fo_rmsprop_loop<T, true, true>(h, bufs, n);
    else if (c) fo_rmsprop_loop<T, true, false>(h, bufs, n);
    else if (m) fo_rmsprop_loop<T, false, true>(h, bufs, n);
    else fo_rmsprop_loop<T, false, false>(h, bufs, n);
}

template <typename T> static void fo_adamax_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_adamax_hp<T> h = fo_adamax_hp<T>::load(hd);
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT m = FO_BUF(T, 2);
    T *FO_RESTRICT u = FO_BUF(T, 3);
    for (ptrdiff_t i = 0; i < n; i++) fo_adamax_rule<T>(p[i], g[i], m[i], u[i], h);
}

template <typename T> static void fo_nadam_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_nadam_hp<T> h = fo_nadam_hp<T>::load(hd);
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT m = FO_BUF(T, 2);
    T *FO_RESTRICT v = FO_BUF(T, 3);
    for (ptrdiff_t i = 0; i < n; i++) fo_nadam_rule<T>(p[i], g[i], m[i], v[i], h);
}

template <typename T> static void fo_radam_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_radam_hp<T> h = fo_radam_hp<T>::load(hd);
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT m = FO_BUF(T, 2);
    T *FO_RESTRICT v = FO_BUF(T, 3);
    for (ptrdiff_t i = 0; i < n; i++) fo_radam_rule<T>(p[i], g[i], m[i], v[i], h);
}

template <typename T> static void fo_adadelta_seg(const double *hd, char **bufs, ptrdiff_t n) {
    const fo_adadelta_hp<T> h = fo_adadelta_hp<T>::load(hd);
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT s = FO_BUF(T, 2);
    T *FO_RESTRICT a = FO_BUF(T, 3);
    for (ptrdiff_t i = 0; i < n; i++) fo_adadelta_rule<T>(p[i], g[i], s[i], a[i], h);
}

/* ---- the roofline: a plain streaming loop with the same bytes per element ---------
 * h[0] = number of buffers k (2..6).  Reads all k buffers, writes all but bufs[1]
 * (the gradient), exactly the traffic of an optimizer with k - 2 state buffers.       */
template <typename T, int K>
static inline void fo_stream_loop(T c, char **bufs, ptrdiff_t n) {
    T *FO_RESTRICT b0 = FO_BUF(T, 0);
    const T *FO_RESTRICT b1 = FO_BUF(T, 1);
    T *FO_RESTRICT b2 = FO_BUF(T, K > 2 ? 2 : 0);
    T *FO_RESTRICT b3 = FO_BUF(T, K > 3 ? 3 : 0);
    T *FO_RESTRICT b4 = FO_BUF(T, K > 4 ? 4 : 0);
    T *FO_RESTRICT b5 = FO_BUF(T, K > 5 ? 5 : 0);
    for (ptrdiff_t i = 0; i < n; i++) {
        T s = b0[i] + b1[i];
        if (K > 2) { s = s + b2[i]; }
        if (K > 3) { s = s + b3[i]; }
        if (K > 4) { s = s + b4[i]; }
        if (K > 5) { s = s + b5[i]; }
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
