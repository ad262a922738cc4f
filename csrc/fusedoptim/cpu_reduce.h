/* fusedoptim/cpu_reduce.h -- the CPU loops and spec table of the reducing algorithms
 * (reduce.h: LAMB, LARS, NovoGrad), driven by _reduce.pxi.
 *
 * One native call (fo_rjob: the tables of all tensors of a bucket) runs three kinds of
 * ranges, each an entry point per algorithm and storage:
 *   stats(j, b0, b1)    stats blocks [b0, b1) (FO_RBLOCK elements, never crossing a tensor):
 *                       part[b] = the block's sums; may write state (LAMB's m and v)
 *   finish(j, t0, t1)   tensors [t0, t1): their block sums in block order -> per-tensor
 *                       scalars tsd[t] and per-tensor state
 *   apply(j, lo, hi)    global elements [lo, hi): the update with each tensor's scalars
 * The scalars are loaded once per range, not per tensor.  The driver cuts the tensors into
 * batches that fit in the cache and runs stats, finish and apply batch by batch, so the
 * apply pass of a batch finds its data in the cache the stats pass just left it in.
 *
 * Block sums: each run of FO_RSUB (256) elements is computed into a small array by a
 * plain element loop (vectorized like every rule loop), then summed in 16 lanes in T,
 * the lanes widened to double and added in a fixed order; a partial run (the block's
 * last, shorter than 256) adds its elements one by one in double.  The bits depend only
 * on the data and the block boundaries, never on the thread count, the batch or the SIMD
 * clone (no FMA: -ffp-contract=off).
 *
 * Storage (lowp.h): float32 arithmetic with the parameter (and its EMA), the gradient and
 * the state each float32 or bfloat16 (storage code bit 0, 1, 2), as cpu.h's fo_lp loops.
 * The random bits of a write come from the counter hash of (seed, step, tensor, element
 * index) with the subkey of the declared buffer (state slot k: subkey k / 2, half k % 2;
 * the parameter: subkey 2, low half; its EMA: high half); a per-tensor state value (NovoGrad's
 * grads_ema) is slot MAXSTATE + k at element index 0.  Each array is written once per step.
 * A state value the stats pass writes (LAMB's m, v) is read back as stored before its
 * contributions are summed, so the norms are those of the update the apply pass makes.
 */
#ifndef FUSEDOPTIM_CPU_REDUCE_H
#define FUSEDOPTIM_CPU_REDUCE_H

#include "spec.h"
#include "reduce.h"

#define FO_RBLOCK 16384   /* elements per stats block (fixed: results never depend on threads) */
#define FO_RSUB 256       /* elements per run of the block sum (16 lanes x 16) */

/* One native call: everything the three kinds of range read (built by _reduce.pxi). */
struct fo_rjob {
    const double *h;                  /* the named block: common scalars, then the algorithm's */
    unsigned flags;
    char *const *table;               /* ntens x nbuf: param, grad, EMA or NULL, kept element buffers */
    int nbuf;
    const ptrdiff_t *starts;          /* ntens + 1: first global element of tensor t */
    const ptrdiff_t *blk;             /* ntens + 1: first stats block of tensor t */
    const int *ndims;                 /* ntens */
    ptrdiff_t ntens;
    const double *tscale;             /* ntens multipliers of gscale, or NULL */
    char *const *tstate;              /* ntens x NTSTATE per-tensor state (one element each) */
    double *part;                     /* blocks x NSTATS */
    double *tsd;                      /* ntens x NTSCAL */
    unsigned long long seed, step;    /* bfloat16 writes: the key of the rounding bits */
    const unsigned long long *tids;   /* tensor t's index in the optimizer */
    int stochastic;
    /* 8-bit state (reduce_q8.h; NULL / 0 otherwise): the element buffers hold uint8 codes */
    float *const *amtab;              /* ntens x (nbuf - FO_STATE): each buffer's block absmax */
    const ptrdiff_t *qblk;            /* ntens + 1: first 8-bit block of tensor t (the apply pass's unit) */
    ptrdiff_t qblock;                 /* elements per 8-bit block */
};

/* the last tensor t with x[t] <= v < x[t + 1] (x nondecreasing, x[0] <= v < x[ntens]) */
static inline ptrdiff_t fo_rfind(const ptrdiff_t *x, ptrdiff_t ntens, ptrdiff_t v) {
    ptrdiff_t a = 0, b = ntens;
    while (b - a > 1) {
        const ptrdiff_t mid = (a + b) >> 1;
        if (x[mid] <= v) a = mid;
        else b = mid;
    }
    while (x[a + 1] <= v) a++;     /* skip empty tensors */
    return a;
}

/* the rounding bits of tensor t from element index i0 on (none for float storage) */
static inline fo_rng fo_rrng(const fo_rjob *j, ptrdiff_t t, ptrdiff_t i0) {
    fo_rng r;
    const unsigned long long key = fo_rng_key(j->seed, j->step, j->tids[t], (unsigned long long)i0 >> 32);
    for (int k = 0; k < 3; k++) r.k[k] = fo_rng_subkey(key, k);
    r.i0 = (unsigned)i0;
    r.stochastic = j->stochastic != 0;
    return r;
}

/* ---- the stats pass ----------------------------------------------------------------
 * m <= FO_RSUB elements: moments() updates the state the stats pass owns (K), which is
 * stored (rounded) and read back as stored; stats() gives the element's contributions,
 * written to v[k][i].                                                                   */
template <class A, typename T, unsigned F, int M, class SP, class SG, class SS>
static FO_INLINE void fo_rstats_run(ptrdiff_t m, const typename SP::type *FO_RESTRICT p,
                                    const typename SG::type *FO_RESTRICT g, typename SS::type *FO_RESTRICT b0,
                                    typename SS::type *FO_RESTRICT b1, typename SS::type *FO_RESTRICT b2,
                                    typename SS::type *FO_RESTRICT b3, const fo_common<T> c,
                                    const typename A::template hp<T> h, const fo_rng rng, T (*FO_RESTRICT v)[FO_RSUB]) {
    constexpr unsigned K = A::mask(F) & A::STATS_USES;   /* only the state the stats pass touches */
    constexpr bool R0 = SS::LOWP && (K & 3u), R1 = SS::LOWP && (K & 12u);
    for (ptrdiff_t i = 0; i < m; i++) {
        T s[FO_MAXSTATE] = {};
        if (K & 1u) s[0] = SS::load(b0[i]);
        if (K & 2u) s[1] = SS::load(b1[i]);
        if (K & 4u) s[2] = SS::load(b2[i]);
        if (K & 8u) s[3] = SS::load(b3[i]);
        const T pv = SP::load(p[i]), gv = SG::load(g[i]);
        if (K) {
            A::template moments<T, F, M>(pv, gv, s, c, h);
            const unsigned idx = rng.i0 + (unsigned)i;
            const unsigned r0 = R0 ? fo_hash32(idx ^ rng.k[0]) : 0u;
            const unsigned r1 = R1 ? fo_hash32(idx ^ rng.k[1]) : 0u;
#define FO_RSTORE_(k, q, r)                                                      \
    if (K & (1u << k)) {                                                         \
        const typename SS::type x = SS::store(s[k], r, rng.stochastic);          \
        q[i] = x;                                                                \
        s[k] = SS::load(x);                                                      \
    }
            FO_RSTORE_(0, b0, r0)
            FO_RSTORE_(1, b1, r0 >> 16)
            FO_RSTORE_(2, b2, r1)
            FO_RSTORE_(3, b3, r1 >> 16)
#undef FO_RSTORE_
        }
        T w[A::NSTATS];
        A::template stats<T, F, M>(pv, gv, s, c, h, w);
        for (int k = 0; k < A::NSTATS; k++) v[k][i] = w[k];
    }
}

/* one block (n <= FO_RBLOCK elements of one tensor): out[k] = sum k */
template <class A, typename T, unsigned F, int M, class SP, class SG, class SS>
static FO_INLINE void fo_rstats_block(ptrdiff_t n, const typename SP::type *p, const typename SG::type *g,
                                      typename SS::type *const *sl, const fo_common<T> &c,
                                      const typename A::template hp<T> &h, fo_rng rng, double *out) {
    constexpr int NS = A::NSTATS;
    double tot[NS];
    for (int k = 0; k < NS; k++) tot[k] = 0.0;
    const unsigned i0 = rng.i0;
    for (ptrdiff_t i = 0; i < n; i += FO_RSUB) {
        const ptrdiff_t m = n - i < FO_RSUB ? n - i : FO_RSUB;
        T v[NS][FO_RSUB];
        rng.i0 = i0 + (unsigned)i;
        fo_rstats_run<A, T, F, M, SP, SG, SS>(m, p + i, g + i, fo_at(sl[0], i), fo_at(sl[1], i), fo_at(sl[2], i),
                                              fo_at(sl[3], i), c, h, rng, v);
        if (m == FO_RSUB) {
            for (int k = 0; k < NS; k++) {
                T acc[16];
                for (int l = 0; l < 16; l++) acc[l] = T(0);
                for (int q = 0; q < FO_RSUB; q += 16)
                    for (int l = 0; l < 16; l++) acc[l] = acc[l] + v[k][q + l];
                for (int l = 0; l < 16; l++) tot[k] = tot[k] + (double)acc[l];
            }
        } else {
            for (ptrdiff_t q = 0; q < m; q++)
                for (int k = 0; k < NS; k++) tot[k] = tot[k] + (double)v[k][q];
        }
    }
    for (int k = 0; k < NS; k++) out[k] = tot[k];
}

/* declared buffer k -> its kept position in bufs (NULL when the flags drop it) */
template <class A, unsigned F, class S> static FO_INLINE void fo_rslots(char **bufs, S **slot) {
    constexpr unsigned K = A::mask(F);
    for (int k = 0, kept = 0; k < FO_MAXSTATE; k++)
        slot[k] = (k < A::MAXSTATE && ((K >> k) & 1u)) ? (S *)bufs[FO_STATE + kept++] : (S *)0;
}

/* the buffers of tensor t from element off on (param, grad, EMA, then the kept state) */
template <class SP, class SG, class SS>
static FO_INLINE void fo_rbufs(const fo_rjob *j, ptrdiff_t t, ptrdiff_t off, char **bufs) {
    for (int k = 0; k < j->nbuf; k++) {
        char *b = j->table[t * j->nbuf + k];
        const size_t sz = k == 1 ? sizeof(typename SG::type)
                                 : (k < FO_STATE ? sizeof(typename SP::type) : sizeof(typename SS::type));
        bufs[k] = b ? b + off * (ptrdiff_t)sz : b;
    }
}

/* the common block of tensor t (gscale times its tscale) */
template <typename T> static FO_INLINE fo_common<T> fo_rcommon(const fo_rjob *j, fo_common_scalars cs, ptrdiff_t t) {
    if (j->tscale) cs.gscale = cs.gscale * j->tscale[t];
    return fo_common<T>::load(cs);
}

#define FO_RLOWP (SP::LOWP || SG::LOWP || SS::LOWP)

/* flags fixed: the slots, then the loop mode (float storage: FO_PLAIN when no clip value /
 * coupled decay / L1; bfloat16 storage: the run-time mode only, as cpu.h's fo_lp loops) */
template <class A, typename T, unsigned F, class SP, class SG, class SS>
static FO_INLINE void fo_rstats_flags(const fo_common<T> &c, const typename A::template hp<T> &h, char **bufs,
                                      ptrdiff_t n, const fo_rng &rng, double *out) {
    static_assert(A::MAXSTATE <= FO_MAXSTATE, "too many state buffers");
    typename SS::type *sl[FO_MAXSTATE];
    fo_rslots<A, F>(bufs, sl);
    const typename SP::type *p = (const typename SP::type *)bufs[0];
    const typename SG::type *g = (const typename SG::type *)bufs[1];
    if (!FO_RLOWP && c.plain()) fo_rstats_block<A, T, F, FO_PLAIN, SP, SG, SS>(n, p, g, sl, c, h, rng, out);
    else fo_rstats_block<A, T, F, 0, SP, SG, SS>(n, p, g, sl, c, h, rng, out);
}

template <class A, typename T, class SP, class SG, class SS, unsigned F = 0>
static FO_INLINE void fo_rstats_dispatch(unsigned flags, const fo_common<T> &c, const typename A::template hp<T> &h,
                                         char **bufs, ptrdiff_t n, const fo_rng &rng, double *out) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_rstats_dispatch<A, T, SP, SG, SS, F + 1>(flags, c, h, bufs, n, rng, out);
            return;
        }
    }
    fo_rstats_flags<A, T, F, SP, SG, SS>(c, h, bufs, n, rng, out);
}

template <class A, typename T, class SP, class SG, class SS>
static FO_INLINE void fo_rstats_range(const fo_rjob *j, ptrdiff_t b0, ptrdiff_t b1) {
    if (b0 >= b1) return;
    const auto [cs, as] = fo_load_blocks<A>(j->h);
    const typename A::template hp<T> h = A::template hp<T>::load(as);
    ptrdiff_t t = fo_rfind(j->blk, j->ntens, b0);
    fo_common<T> c = fo_rcommon<T>(j, cs, t);
    char *bufs[FO_STATE + FO_MAXSTATE + 1];
    for (ptrdiff_t b = b0; b < b1; b++) {
        if (j->blk[t + 1] <= b) {
            while (j->blk[t + 1] <= b) t++;
            c = fo_rcommon<T>(j, cs, t);
        }
        const ptrdiff_t off = (b - j->blk[t]) * FO_RBLOCK, size = j->starts[t + 1] - j->starts[t];
        const ptrdiff_t n = size - off < FO_RBLOCK ? size - off : FO_RBLOCK;
        fo_rbufs<SP, SG, SS>(j, t, off, bufs);
        /* a block never crosses a multiple of 2^32 elements (FO_RBLOCK divides it) */
        const fo_rng rng = FO_RLOWP ? fo_rrng(j, t, off) : fo_rng();
        fo_rstats_dispatch<A, T, SP, SG, SS>(j->flags, c, h, bufs, n, rng, j->part + b * A::NSTATS);
    }
}

/* ---- finish: one tensor's sums -> its scalars (and per-tensor state) ------------------ */
template <class A, typename T, class SS>
static FO_INLINE void fo_rfinish_range(const fo_rjob *j, ptrdiff_t t0, ptrdiff_t t1) {
    const typename A::scalars as = fo_load_blocks<A>(j->h).as;
    constexpr int NS = A::NSTATS, NT = A::NTSTATE;
    for (ptrdiff_t t = t0; t < t1; t++) {
        double st[NS > 0 ? NS : 1];
        for (int k = 0; k < NS; k++) st[k] = 0.0;
        for (ptrdiff_t b = j->blk[t]; b < j->blk[t + 1]; b++)
            for (int k = 0; k < NS; k++) st[k] = st[k] + j->part[b * NS + k];
        typename A::stats_t s;
        typename A::tsd td;
        memcpy(&s, st, sizeof s);
        T tv[NT > 0 ? NT : 1];
        T *tp[NT > 0 ? NT : 1];
        typename SS::type *q[NT > 0 ? NT : 1];
        for (int k = 0; k < NT; k++) {
            q[k] = (typename SS::type *)j->tstate[t * NT + k];
            tv[k] = SS::load(*q[k]);
            tp[k] = &tv[k];
        }
        A::template finish<T>(as, j->flags, s, j->ndims[t], tp, td);
        if (NT > 0) {
            fo_rng r = SS::LOWP ? fo_rrng(j, t, 0) : fo_rng();
            for (int k = 0; k < NT; k++) {
                const int slot = A::MAXSTATE + k;   /* element index 0 of the slot after the buffers */
                const unsigned bits = SS::LOWP ? fo_hash32(0u ^ r.k[slot / 2]) >> (16 * (slot % 2)) : 0u;
                *q[k] = SS::store(tv[k], bits, r.stochastic);
            }
        }
        memcpy(j->tsd + t * A::NTSCAL, &td, sizeof td);
    }
}

/* ---- the apply pass: cpu.h's fo_loop with the per-tensor scalars ---------------------
 * The rule fo_loop calls is A::apply with the tensor's scalars: the same loads, stores,
 * rounding bits and EMA epilogue as every element-wise optimizer.                        */
template <class A, typename T> struct fo_rapply_hp {
    typename A::template hp<T> h;
    typename A::template ts<T> t;
};
template <class A> struct fo_rapply_rule {
    enum { MAXSTATE = A::MAXSTATE };
    FO_HD static constexpr unsigned mask(unsigned f) { return A::mask(f); }
    template <typename T> using hp = fo_rapply_hp<A, T>;
    template <typename T, unsigned F, int M>
    FO_HD static void rule(T &p, T g, T *s, const fo_common<T> &c, const hp<T> &x) {
        A::template apply<T, F, M>(p, g, s, c, x.h, x.t);
    }
};

template <class A, typename T, unsigned F, class SP, class SG, class SS>
static FO_INLINE void fo_rapply_flags(const fo_common<T> &c, const fo_rapply_hp<A, T> &x, char **bufs, ptrdiff_t n,
                                      const fo_rng &rng) {
    typedef fo_rapply_rule<A> R;
    typename SS::type *sl[FO_MAXSTATE];
    fo_rslots<A, F>(bufs, sl);
    typename SP::type *p = (typename SP::type *)bufs[0], *e = (typename SP::type *)bufs[2];
    const typename SG::type *g = (const typename SG::type *)bufs[1];
    /* stochastic rounding is a template choice of fo_loop (SR): only storage that rounds gets both */
#define FO_RRUN_(m)                                                                                        \
    do {                                                                                                   \
        if constexpr (SP::LOWP || SS::LOWP) {                                                              \
            if (rng.stochastic) {                                                                          \
                fo_loop<R, T, F, (m), SP, SG, SS, true>(n, p, g, e, sl[0], sl[1], sl[2], sl[3], c, x, rng); \
                break;                                                                                     \
            }                                                                                              \
        }                                                                                                  \
        fo_loop<R, T, F, (m), SP, SG, SS, false>(n, p, g, e, sl[0], sl[1], sl[2], sl[3], c, x, rng);        \
    } while (0)
    if (e) FO_RRUN_(FO_EMA);
    else if (!FO_RLOWP && c.plain()) FO_RRUN_(FO_PLAIN);
    else FO_RRUN_(0);
#undef FO_RRUN_
}

template <class A, typename T, class SP, class SG, class SS, unsigned F = 0>
static FO_INLINE void fo_rapply_dispatch(unsigned flags, const fo_common<T> &c, const fo_rapply_hp<A, T> &x,
                                         char **bufs, ptrdiff_t n, const fo_rng &rng) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_rapply_dispatch<A, T, SP, SG, SS, F + 1>(flags, c, x, bufs, n, rng);
            return;
        }
    }
    fo_rapply_flags<A, T, F, SP, SG, SS>(c, x, bufs, n, rng);
}

template <class A, typename T, class SP, class SG, class SS>
static FO_INLINE void fo_rapply_range(const fo_rjob *j, ptrdiff_t lo, ptrdiff_t hi) {
    if (lo >= hi) return;
    const auto [cs, as] = fo_load_blocks<A>(j->h);
    fo_rapply_hp<A, T> x;
    x.h = A::template hp<T>::load(as);
    char *bufs[FO_STATE + FO_MAXSTATE + 1];
    for (ptrdiff_t t = fo_rfind(j->starts, j->ntens, lo); lo < hi; t++) {
        const ptrdiff_t end = j->starts[t + 1] < hi ? j->starts[t + 1] : hi;
        if (end <= lo) continue;
        const fo_common<T> c = fo_rcommon<T>(j, cs, t);
        typename A::tsd td;
        memcpy(&td, j->tsd + t * A::NTSCAL, sizeof td);
        x.t = A::template ts<T>::load(td);
        for (ptrdiff_t off = lo - j->starts[t], stop = end - j->starts[t]; off < stop;) {
            /* bfloat16 writes: a piece never crosses a multiple of 2^32 (the hash takes the
             * low 32 bits of the index; the high ones are in the key) */
            ptrdiff_t m = stop - off;
            if (FO_RLOWP) {
                const unsigned long long room = ((((unsigned long long)off >> 32) + 1ULL) << 32) - (unsigned long long)off;
                if ((unsigned long long)m > room) m = (ptrdiff_t)room;
            }
            fo_rbufs<SP, SG, SS>(j, t, off, bufs);
            const fo_rng rng = FO_RLOWP ? fo_rrng(j, t, off) : fo_rng();
            fo_rapply_dispatch<A, T, SP, SG, SS>(j->flags, c, x, bufs, m, rng);
            off += m;
        }
        lo = end;
    }
}

/* ---- entry points: per algorithm, float64, float32 and the storage codes 1..7 ----------- */
typedef void (*fo_rrange_fn)(const fo_rjob *j, ptrdiff_t lo, ptrdiff_t hi);
struct fo_rkernels {
    fo_rrange_fn stats, finish, apply;
    int nstats, ntscal, ntstate, maxstate;
};

/* storage code: bit 0 the parameter (and EMA), bit 1 the gradient, bit 2 the state are bfloat16.
 * The entry points of algorithm a: declared here (FO_REDUCE_DECLARE), compiled by
 * FO_REDUCE_DEFINE (one generated translation unit per algorithm: cpu.h FO_SPLIT).       */
#define FO_RSP_(code) fo_if<((code) & 1) != 0, fo_bf16s, fo_same<float> >::type
#define FO_RSG_(code) fo_if<((code) & 2) != 0, fo_bf16s, fo_same<float> >::type
#define FO_RSS_(code) fo_if<((code) & 4) != 0, fo_bf16s, fo_same<float> >::type
#define FO_RJOB_ARGS_ const fo_rjob *j, ptrdiff_t lo, ptrdiff_t hi
#define FO_RDECL_ONE_(a, sfx)                                                                               \
    FO_LINKAGE void fo_##a##_rstats_##sfx(FO_RJOB_ARGS_);                                                   \
    FO_LINKAGE void fo_##a##_rfinish_##sfx(FO_RJOB_ARGS_);                                                  \
    FO_LINKAGE void fo_##a##_rapply_##sfx(FO_RJOB_ARGS_);
#define FO_REDUCE_DECLARE(a, P)                                                                             \
    FO_RDECL_ONE_(a, lp0) FO_RDECL_ONE_(a, lp1) FO_RDECL_ONE_(a, lp2) FO_RDECL_ONE_(a, lp3)                 \
    FO_RDECL_ONE_(a, lp4) FO_RDECL_ONE_(a, lp5) FO_RDECL_ONE_(a, lp6) FO_RDECL_ONE_(a, lp7)                 \
    FO_RDECL_ONE_(a, f64)
#define FO_RDEF_ONE_(a, code)                                                                               \
    FO_CLONES FO_LINKAGE void fo_##a##_rstats_lp##code(FO_RJOB_ARGS_) {                                     \
        fo_rstats_range<fo_##a, float, FO_RSP_(code), FO_RSG_(code), FO_RSS_(code)>(j, lo, hi);          \
    }                                                                                                   \
    FO_LINKAGE void fo_##a##_rfinish_lp##code(FO_RJOB_ARGS_) {                                              \
        fo_rfinish_range<fo_##a, float, FO_RSS_(code)>(j, lo, hi);                                      \
    }                                                                                                   \
    FO_CLONES FO_LINKAGE void fo_##a##_rapply_lp##code(FO_RJOB_ARGS_) {                                     \
        fo_rapply_range<fo_##a, float, FO_RSP_(code), FO_RSG_(code), FO_RSS_(code)>(j, lo, hi);          \
    }
#define FO_REDUCE_DEFINE(a, P)                                                                              \
    FO_RDEF_ONE_(a, 0) FO_RDEF_ONE_(a, 1) FO_RDEF_ONE_(a, 2) FO_RDEF_ONE_(a, 3)                            \
    FO_RDEF_ONE_(a, 4) FO_RDEF_ONE_(a, 5) FO_RDEF_ONE_(a, 6) FO_RDEF_ONE_(a, 7)                            \
    FO_CLONES FO_LINKAGE void fo_##a##_rstats_f64(FO_RJOB_ARGS_) {                                          \
        fo_rstats_range<fo_##a, double, fo_same<double>, fo_same<double>, fo_same<double> >(j, lo, hi);    \
    }                                                                                                   \
    FO_LINKAGE void fo_##a##_rfinish_f64(FO_RJOB_ARGS_) {                                                   \
        fo_rfinish_range<fo_##a, double, fo_same<double> >(j, lo, hi);                                  \
    }                                                                                                   \
    FO_CLONES FO_LINKAGE void fo_##a##_rapply_f64(FO_RJOB_ARGS_) {                                          \
        fo_rapply_range<fo_##a, double, fo_same<double>, fo_same<double>, fo_same<double> >(j, lo, hi);    \
    }
FO_REDUCE_ALGOS(FO_REDUCE_DECLARE)
#if !defined(FO_SPLIT)
FO_REDUCE_ALGOS(FO_REDUCE_DEFINE)
#endif

#define FO_RID_(a, P) FO_RID_##a,
enum fo_reduce_id { FO_REDUCE_ALGOS(FO_RID_) FO_NREDUCE };
#undef FO_RID_

/* k: position in FO_REDUCE_ALGOS; code: 0 = float32, 1 = float64, 2..8 = float32 arithmetic
 * with the bfloat16 storage code 1..7 (code - 1: bit 0 parameter, bit 1 gradient, bit 2 state) */
static const fo_rkernels *fo_cpu_reduce(int k, int code) {
#define FO_RK_(a, sfx) {fo_##a##_rstats_##sfx, fo_##a##_rfinish_##sfx, fo_##a##_rapply_##sfx, fo_##a::NSTATS, \
                        fo_##a::NTSCAL, fo_##a::NTSTATE, fo_##a::MAXSTATE}
#define FO_RROW_(a, P)                                                                                 \
    {FO_RK_(a, lp0), FO_RK_(a, f64), FO_RK_(a, lp1), FO_RK_(a, lp2), FO_RK_(a, lp3), FO_RK_(a, lp4),   \
     FO_RK_(a, lp5), FO_RK_(a, lp6), FO_RK_(a, lp7)},
    static const fo_rkernels table[FO_NREDUCE][9] = {FO_REDUCE_ALGOS(FO_RROW_)};
#undef FO_RROW_
#undef FO_RK_
    if (k < 0 || k >= FO_NREDUCE || code < 0 || code > 8) return NULL;
    return &table[k][code];
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
    static_assert(fo_##a::MAXSTATE + fo_##a::NTSTATE <= 4, #a ": too many buffers (the rounding bits of two subkeys)");
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
