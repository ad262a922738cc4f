/* fusedoptim/cpu_reduce.h -- the CPU loops and spec table of the reducing algorithms
 * (reduce.h: LAMB, LARS, NovoGrad), driven by _reduce.pxi.
 *
 * Three entry points per algorithm and dtype:
 *   stats(h, flags, bufs, n, out)   one block (n <= FO_RBLOCK elements of one tensor):
 *                                   out[k] = sum k over the block; may write state buffers
 *   finish(h, flags, st, ndim, tstate, out)   one tensor: its sums st -> per-tensor scalars
 *   apply(h, flags, bufs, n, tsd)   one segment: the update with that tensor's scalars tsd
 * bufs is laid out as for the element-wise segments (cpu.h): param, grad, EMA or NULL,
 * then the kept element buffers.  Block sums: 16 lanes in T over 256-element sub-blocks,
 * each widened to double and added in a fixed order, then the elements past the last
 * full sub-block one by one in double -- the bits depend only on the data and the
 * block, never on the thread count or the SIMD clone (no FMA: -ffp-contract=off).
 */
#ifndef FUSEDOPTIM_CPU_REDUCE_H
#define FUSEDOPTIM_CPU_REDUCE_H

#include "spec.h"
#include "reduce.h"

#define FO_RBLOCK 16384   /* elements per stats block (fixed: results never depend on threads) */

template <class A, unsigned F> struct fo_rslots {
    /* declared buffer k -> its kept position in bufs (NULL when the flags drop it) */
    template <typename T> static FO_INLINE void get(char **bufs, T **slot) {
        constexpr unsigned K = A::mask(F);
        for (int k = 0, kept = 0; k < FO_MAXSTATE; k++)
            slot[k] = (k < A::MAXSTATE && ((K >> k) & 1u)) ? FO_BUF(T, FO_STATE + kept++) : (T *)0;
    }
};

/* One element of the stats pass: load the state it uses (K), call stats()
 * for its contributions v, store the state back. */
template <class A, typename T, unsigned F, int M, unsigned K>
static FO_INLINE void fo_rstats_elem(ptrdiff_t e, const T *FO_RESTRICT p, const T *FO_RESTRICT g,
                                     T *FO_RESTRICT b0, T *FO_RESTRICT b1, T *FO_RESTRICT b2, T *FO_RESTRICT b3,
                                     const fo_common<T> &c, const typename A::template hp<T> &h, T *v) {
    T s[FO_MAXSTATE] = {};
    if (K & 1u) s[0] = b0[e];
    if (K & 2u) s[1] = b1[e];
    if (K & 4u) s[2] = b2[e];
    if (K & 8u) s[3] = b3[e];
    A::template stats<T, F, M>(p[e], g[e], s, c, h, v);
    if (K & 1u) b0[e] = s[0];
    if (K & 2u) b1[e] = s[1];
    if (K & 4u) b2[e] = s[2];
    if (K & 8u) b3[e] = s[3];
}

template <class A, typename T, unsigned F, int M>
static FO_INLINE void fo_rstats_loop(ptrdiff_t n, const T *FO_RESTRICT p, const T *FO_RESTRICT g,
                                     T *FO_RESTRICT b0, T *FO_RESTRICT b1, T *FO_RESTRICT b2, T *FO_RESTRICT b3,
                                     const fo_common<T> c, const typename A::template hp<T> h, double *out) {
    constexpr unsigned K = A::mask(F) & A::STATS_USES;   /* only the state the stats pass touches */
    constexpr int NS = A::NSTATS;
    double tot[NS];
    for (int k = 0; k < NS; k++) tot[k] = 0.0;
    ptrdiff_t i = 0;
    for (; i + 256 <= n; i += 256) {
        T acc[NS][16];
        for (int k = 0; k < NS; k++)
            for (int l = 0; l < 16; l++) acc[k][l] = T(0);
        for (ptrdiff_t j = i; j < i + 256; j += 16) {
            for (int l = 0; l < 16; l++) {
                T v[NS];
                fo_rstats_elem<A, T, F, M, K>(j + l, p, g, b0, b1, b2, b3, c, h, v);
                for (int k = 0; k < NS; k++) acc[k][l] = acc[k][l] + v[k];
            }
        }
        for (int k = 0; k < NS; k++)
            for (int l = 0; l < 16; l++) tot[k] = tot[k] + (double)acc[k][l];
    }
    for (; i < n; i++) {
        T v[NS];
        fo_rstats_elem<A, T, F, M, K>(i, p, g, b0, b1, b2, b3, c, h, v);
        for (int k = 0; k < NS; k++) tot[k] = tot[k] + (double)v[k];
    }
    for (int k = 0; k < NS; k++) out[k] = tot[k];
}

template <class A, typename T, unsigned F, int M>
static FO_INLINE void fo_rapply_loop(ptrdiff_t n, T *FO_RESTRICT p, const T *FO_RESTRICT g, T *FO_RESTRICT e,
                                     T *FO_RESTRICT b0, T *FO_RESTRICT b1, T *FO_RESTRICT b2, T *FO_RESTRICT b3,
                                     const fo_common<T> c, const typename A::template hp<T> h,
                                     const typename A::template ts<T> t) {
    constexpr unsigned K = A::mask(F);
    for (ptrdiff_t i = 0; i < n; i++) {
        T s[FO_MAXSTATE] = {};
        if (K & 1u) s[0] = b0[i];
        if (K & 2u) s[1] = b1[i];
        if (K & 4u) s[2] = b2[i];
        if (K & 8u) s[3] = b3[i];
        A::template apply<T, F, M>(p[i], g[i], s, c, h, t);
        if (K & 1u) b0[i] = s[0];
        if (K & 2u) b1[i] = s[1];
        if (K & 4u) b2[i] = s[2];
        if (K & 8u) b3[i] = s[3];
        if (M & FO_EMA) fo_ema_rule(e[i], p[i], c);
    }
}

/* flags fixed: the slots and the loop mode (FO_PLAIN when no clip value / coupled decay / L1) */
template <class A, typename T, unsigned F>
static FO_INLINE void fo_rstats_flags(const fo_common<T> &c, const typename A::template hp<T> &h, char **bufs,
                                      ptrdiff_t n, double *out) {
    static_assert(A::MAXSTATE <= FO_MAXSTATE, "too many state buffers");
    T *sl[FO_MAXSTATE];
    fo_rslots<A, F>::get(bufs, sl);
    const T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1);
    if (c.plain()) fo_rstats_loop<A, T, F, FO_PLAIN>(n, p, g, sl[0], sl[1], sl[2], sl[3], c, h, out);
    else fo_rstats_loop<A, T, F, 0>(n, p, g, sl[0], sl[1], sl[2], sl[3], c, h, out);
}
template <class A, typename T, unsigned F>
static FO_INLINE void fo_rapply_flags(const fo_common<T> &c, const typename A::template hp<T> &h, char **bufs,
                                      ptrdiff_t n, const typename A::template ts<T> &t) {
    T *sl[FO_MAXSTATE];
    fo_rslots<A, F>::get(bufs, sl);
    T *p = FO_BUF(T, 0), *g = FO_BUF(T, 1), *e = FO_BUF(T, 2);
    if (e) fo_rapply_loop<A, T, F, FO_EMA>(n, p, g, e, sl[0], sl[1], sl[2], sl[3], c, h, t);
    else if (c.plain()) fo_rapply_loop<A, T, F, FO_PLAIN>(n, p, g, e, sl[0], sl[1], sl[2], sl[3], c, h, t);
    else fo_rapply_loop<A, T, F, 0>(n, p, g, e, sl[0], sl[1], sl[2], sl[3], c, h, t);
}

/* run-time flag bits -> instantiation F */
template <class A, typename T, unsigned F = 0>
static FO_INLINE void fo_rstats_dispatch(unsigned flags, const fo_common<T> &c, const typename A::template hp<T> &h,
                                         char **bufs, ptrdiff_t n, double *out) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_rstats_dispatch<A, T, F + 1>(flags, c, h, bufs, n, out);
            return;
        }
    }
    fo_rstats_flags<A, T, F>(c, h, bufs, n, out);
}
template <class A, typename T, unsigned F = 0>
static FO_INLINE void fo_rapply_dispatch(unsigned flags, const fo_common<T> &c, const typename A::template hp<T> &h,
                                         char **bufs, ptrdiff_t n, const typename A::template ts<T> &t) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_rapply_dispatch<A, T, F + 1>(flags, c, h, bufs, n, t);
            return;
        }
    }
    fo_rapply_flags<A, T, F>(c, h, bufs, n, t);
}

template <class A, typename T>
static FO_INLINE void fo_rstats_seg(const double *hd, unsigned flags, char **bufs, ptrdiff_t n, double *out) {
    fo_common_scalars cs;
    typename A::scalars as;
    memcpy(&cs, hd, sizeof cs);
    memcpy(&as, hd + FO_NCOMMON, sizeof as);
    fo_rstats_dispatch<A, T>(flags, fo_common<T>::load(cs), A::template hp<T>::load(as), bufs, n, out);
}
template <class A, typename T>
static FO_INLINE void fo_rapply_seg(const double *hd, unsigned flags, char **bufs, ptrdiff_t n, const double *tsd) {
    fo_common_scalars cs;
    typename A::scalars as;
    typename A::tsd td;
    memcpy(&cs, hd, sizeof cs);
    memcpy(&as, hd + FO_NCOMMON, sizeof as);
    memcpy(&td, tsd, sizeof td);
    fo_rapply_dispatch<A, T>(flags, fo_common<T>::load(cs), A::template hp<T>::load(as), bufs, n,
                             A::template ts<T>::load(td));
}
template <class A, typename T>
static void fo_rfinish(const double *hd, unsigned flags, const double *st, int ndim, char **tstate, double *out) {
    typename A::scalars as;
    typename A::stats_t s;
    typename A::tsd td;
    memcpy(&as, hd + FO_NCOMMON, sizeof as);
    memcpy(&s, st, sizeof s);
    A::template finish<T>(as, flags, s, ndim, (T **)tstate, td);
    memcpy(out, &td, sizeof td);
}

typedef void (*fo_rstats_fn)(const double *h, unsigned flags, char **bufs, ptrdiff_t n, double *out);
typedef void (*fo_rapply_fn)(const double *h, unsigned flags, char **bufs, ptrdiff_t n, const double *tsd);
typedef void (*fo_rfinish_fn)(const double *h, unsigned flags, const double *st, int ndim, char **tstate,
                              double *out);
struct fo_rkernels {
    fo_rstats_fn stats;
    fo_rfinish_fn finish;
    fo_rapply_fn apply;
    int nstats, ntscal, ntstate, maxstate;
};

#define FO_RENTRY_(a, P)                                                                          \
    FO_CLONES static void fo_##a##_stats_f32(const double *h, unsigned f, char **b, ptrdiff_t n, double *o) { \
        fo_rstats_seg<fo_##a, float>(h, f, b, n, o);                                            \
    }                                                                                            \
    FO_CLONES static void fo_##a##_stats_f64(const double *h, unsigned f, char **b, ptrdiff_t n, double *o) { \
        fo_rstats_seg<fo_##a, double>(h, f, b, n, o);                                           \
    }                                                                                            \
    FO_CLONES static void fo_##a##_apply_f32(const double *h, unsigned f, char **b, ptrdiff_t n,             \
                                             const double *t) {                                  \
        fo_rapply_seg<fo_##a, float>(h, f, b, n, t);                                            \
    }                                                                                            \
    FO_CLONES static void fo_##a##_apply_f64(const double *h, unsigned f, char **b, ptrdiff_t n,             \
                                             const double *t) {                                  \
        fo_rapply_seg<fo_##a, double>(h, f, b, n, t);                                           \
    }
FO_REDUCE_ALGOS(FO_RENTRY_)
#undef FO_RENTRY_

#define FO_RID_(a, P) FO_RID_##a,
enum fo_reduce_id { FO_REDUCE_ALGOS(FO_RID_) FO_NREDUCE };
#undef FO_RID_

/* k: position in FO_REDUCE_ALGOS; dtype 0 = float32, 1 = float64 */
static const fo_rkernels *fo_cpu_reduce(int k, int dtype) {
#define FO_RROW_(a, P)                                                                             \
    {{fo_##a##_stats_f32, fo_rfinish<fo_##a, float>, fo_##a##_apply_f32, fo_##a::NSTATS, fo_##a::NTSCAL,  \
      fo_##a::NTSTATE, fo_##a::MAXSTATE},                                                          \
     {fo_##a##_stats_f64, fo_rfinish<fo_##a, double>, fo_##a##_apply_f64, fo_##a::NSTATS, fo_##a::NTSCAL, \
      fo_##a::NTSTATE, fo_##a::MAXSTATE}},
    static const fo_rkernels table[FO_NREDUCE][2] = {FO_REDUCE_ALGOS(FO_RROW_)};
#undef FO_RROW_
    if (k < 0 || k >= FO_NREDUCE || dtype < 0 || dtype > 1) return NULL;
    return &table[k][dtype];
}

/* ---- the spec as Python sees it (host only) ------------------------------------------
 * base: as spec.h's, with the per-tensor state names after the element buffers (always
 * kept: mask bits MAXSTATE..); plus the names of the stats, per-tensor scalars and state. */
struct fo_rspec {
    fo_spec base;
    const char *const *stats;
    const char *const *tscalars;
    const char *const *tstate;
    int nstats, ntscal, ntstate, nelem;
};
template <class A> static unsigned fo_rspec_mask(unsigned flags) {
    return A::mask(flags) | (((1u << A::NTSTATE) - 1u) << A::MAXSTATE);
}
#define FO_RSPEC_NAMES_(a, P)                                                                     \
    static const char *const fo_##a##_scalar_names[] = {P##_SCALARS(FO_STR_) NULL};               \
    static const char *const fo_##a##_flag_names[] = {P##_FLAGS(FO_STR_) NULL};                   \
    static const char *const fo_##a##_buffer_names[] = {P##_BUFFERS(FO_BUFSTR_) P##_TSTATE(FO_STR_) NULL}; \
    static const char *const fo_##a##_stats_names[] = {P##_STATS(FO_STR_) NULL};                  \
    static const char *const fo_##a##_tscalar_names[] = {P##_TSCALARS(FO_STR_) NULL};             \
    static const char *const fo_##a##_tstate_names[] = {P##_TSTATE(FO_STR_) NULL};                \
    static_assert(FO_NCOMMON + sizeof(fo_##a##_scalars) / sizeof(double) <= FO_MAXSCALARS,        \
                  #a ": more scalars than a block holds");                                        \
    static_assert(fo_##a::MAXSTATE + fo_##a::NTSTATE <= 8, #a ": too many buffers");
FO_REDUCE_ALGOS(FO_RSPEC_NAMES_)
#undef FO_RSPEC_NAMES_

static const fo_rspec *fo_cpu_reduce_spec(int k) {
#define FO_RSPEC_ROW_(a, P)                                                                        \
    {{#a, fo_##a##_scalar_names, fo_##a##_flag_names, fo_##a##_buffer_names,                       \
      (int)(sizeof(fo_##a##_scalars) / sizeof(double)), fo_##a::NFLAGS, fo_##a::MAXSTATE + fo_##a::NTSTATE, \
      fo_rspec_mask<fo_##a>, fo_##a::signs()},                                                     \
     fo_##a##_stats_names, fo_##a##_tscalar_names, fo_##a##_tstate_names,                         \
     fo_##a::NSTATS, fo_##a::NTSCAL, fo_##a::NTSTATE, fo_##a::MAXSTATE},
    static const fo_rspec table[FO_NREDUCE] = {FO_REDUCE_ALGOS(FO_RSPEC_ROW_)};
#undef FO_RSPEC_ROW_
    return (k >= 0 && k < FO_NREDUCE) ? &table[k] : NULL;
}

#endif /* FUSEDOPTIM_CPU_REDUCE_H */
