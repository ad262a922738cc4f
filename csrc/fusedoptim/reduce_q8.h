/* fusedoptim/reduce_q8.h -- 8-bit block-wise state (q8.h) for the reducing algorithms
 * (reduce.h: LAMB, LARS, NovoGrad), driven by _reduce.pxi like their float32 and bfloat16
 * storage (cpu_reduce.h): stats pass, finish, apply pass, in one native call.
 *
 * The element buffers hold uint8 codes plus one float32 absmax per block of B elements
 * (q8.h); a per-tensor state (NovoGrad's grads_ema) stays float32 and finish() is the
 * float32 one.  The state is written once per step, by the apply pass:
 *
 *   stats(j, b0, b1)  stats blocks [b0, b1) (FO_RBLOCK elements, a multiple of B, so a
 *                     stats block holds whole 8-bit blocks): the blocks' codes decoded
 *                     into float32 scratch, chunk by chunk (FO_Q8_MAXBLOCK elements), then
 *                     cpu_reduce.h's block sum on the scratch (moments() updates the
 *                     scratch, never the codes); the chunk sums added in chunk order;
 *   apply(j, lo, hi)  global 8-bit blocks [lo, hi) (qblk): q8.h's block loop (decode,
 *                     float32 rule, new absmax, encode) with the rule moments() then
 *                     apply(), so the state the stats pass summed over (LAMB's new m, v,
 *                     float32, before encoding) is recomputed from the same stored codes
 *                     by the same float32 operations: the norms are those of the update
 *                     the apply pass makes, bit for bit, and the new state is encoded once.
 *
 * Both passes run loop mode 0 (fo_grad<0> and fo_grad<FO_PLAIN> agree when the common
 * block is plain, but one mode for both keeps the recomputation identical by
 * construction).  Threads split stats blocks and 8-bit blocks, never inside one: the bits
 * are the same for any thread count.  The random bits of stochastic code rounding (and of
 * bfloat16 parameter writes) are those of q8.h's element-wise loop: (seed, step, tensor,
 * element index), the buffer's subkey.
 *
 * Bytes per element (LAMB, float32 parameter and gradient): the stats pass reads p, g and
 * two code arrays (10), the apply pass reads p, g (moments() needs it again), two code
 * arrays and writes p and the codes (16): 26 plus the absmax arrays (8 bytes per block of
 * B), vs 40 with float32 state (24 + 16: the float32 stats pass writes m and v, its apply
 * pass reads no gradient).  LARS and NovoGrad read no state in the stats pass.
 *
 * Entry points are static functions of the including translation unit (the Cython one),
 * like q8.h's: they read q8.h's code tables, filled at import by fo_q8_init.
 */
#ifndef FUSEDOPTIM_REDUCE_Q8_H
#define FUSEDOPTIM_REDUCE_Q8_H

#include "q8.h"
#include "cpu_reduce.h"

#define FO_RQ8_CHUNK FO_Q8_MAXBLOCK   /* elements decoded at a time by the stats pass */

/* storage of the codes (fo_rbufs' element size) */
struct fo_rq8_codes {
    typedef unsigned char type;
};

/* ---- the stats pass ------------------------------------------------------------------ */
template <class A, unsigned F, class SP, class SG>
static FO_INLINE void fo_rq8_stats_flags(const fo_common<float> &c, const typename A::template hp<float> &h,
                                         char **bufs, float *const *am, ptrdiff_t n, ptrdiff_t B, double *out) {
    constexpr unsigned KEPT = A::mask(F), K = KEPT & A::STATS_USES, SIGNS = A::signs();
    constexpr int NS = A::NSTATS;
    const unsigned char *code[FO_MAXSTATE] = {};
    const float *amx[FO_MAXSTATE] = {};
    for (int k = 0, kept = 0; k < A::MAXSTATE; k++)
        if ((KEPT >> k) & 1u) {
            code[k] = (const unsigned char *)bufs[FO_STATE + kept];
            amx[k] = am[kept++];
        }
    alignas(64) float s[FO_MAXSTATE][K ? FO_RQ8_CHUNK : 1];
    float *sl[FO_MAXSTATE];
    for (int k = 0; k < FO_MAXSTATE; k++) sl[k] = ((K >> k) & 1u) ? s[k] : (float *)0;
    const typename SP::type *p = (const typename SP::type *)bufs[0];
    const typename SG::type *g = (const typename SG::type *)bufs[1];
    double tot[NS];
    for (int k = 0; k < NS; k++) tot[k] = 0.0;
    for (ptrdiff_t i = 0; i < n; i += FO_RQ8_CHUNK) {
        const ptrdiff_t m = n - i < FO_RQ8_CHUNK ? n - i : FO_RQ8_CHUNK;
        for (int k = 0; k < FO_MAXSTATE; k++)
            if ((K >> k) & 1u)
                for (ptrdiff_t q = 0; q < m; q += B)
                    fo_q8_dequant(code[k] + i + q, amx[k][(i + q) / B], fo_q8_tables[(SIGNS >> k) & 1u].map,
                                  s[k] + q, m - q < B ? m - q : B);
        double part[NS];
        fo_rstats_block<A, float, F, 0, SP, SG, fo_same<float> >(m, p + i, g + i, sl, c, h, fo_rng(), part);
        for (int k = 0; k < NS; k++) tot[k] = tot[k] + part[k];
    }
    for (int k = 0; k < NS; k++) out[k] = tot[k];
}

template <class A, class SP, class SG, unsigned F = 0>
static FO_INLINE void fo_rq8_stats_dispatch(unsigned flags, const fo_common<float> &c,
                                            const typename A::template hp<float> &h, char **bufs, float *const *am,
                                            ptrdiff_t n, ptrdiff_t B, double *out) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_rq8_stats_dispatch<A, SP, SG, F + 1>(flags, c, h, bufs, am, n, B, out);
            return;
        }
    }
    fo_rq8_stats_flags<A, F, SP, SG>(c, h, bufs, am, n, B, out);
}

template <class A, class SP, class SG>
static FO_INLINE void fo_rq8_stats_range(const fo_rjob *j, ptrdiff_t b0, ptrdiff_t b1) {
    if (b0 >= b1) return;
    const auto [cs, as] = fo_load_blocks<A>(j->h);
    const typename A::template hp<float> h = A::template hp<float>::load(as);
    const int ne = j->nbuf - FO_STATE;
    ptrdiff_t t = fo_rfind(j->blk, j->ntens, b0);
    fo_common<float> c = fo_rcommon<float>(j, cs, t);
    char *bufs[FO_STATE + FO_MAXSTATE + 1];
    float *am[FO_MAXSTATE + 1];
    for (ptrdiff_t b = b0; b < b1; b++) {
        if (j->blk[t + 1] <= b) {
            while (j->blk[t + 1] <= b) t++;
            c = fo_rcommon<float>(j, cs, t);
        }
        const ptrdiff_t off = (b - j->blk[t]) * FO_RBLOCK, size = j->starts[t + 1] - j->starts[t];
        const ptrdiff_t n = size - off < FO_RBLOCK ? size - off : FO_RBLOCK;
        fo_rbufs<SP, SG, fo_rq8_codes>(j, t, off, bufs);
        for (int k = 0; k < ne; k++) am[k] = j->amtab[t * ne + k] + off / j->qblock;
        fo_rq8_stats_dispatch<A, SP, SG>(j->flags, c, h, bufs, am, n, j->qblock, j->part + b * A::NSTATS);
    }
}

/* ---- the apply pass: q8.h's block loop with the rule moments() (the state the stats pass
 * owns), then apply() with the tensor's scalars ----------------------------------------- */
template <class A> struct fo_rq8_rule : fo_rapply_rule<A> {
    enum { NFLAGS = A::NFLAGS };
    FO_HD static constexpr unsigned signs() { return A::signs(); }
    template <typename T, unsigned F, int M>
    FO_HD static void rule(T &p, T g, T *s, const fo_common<T> &c, const fo_rapply_hp<A, T> &x) {
        if constexpr ((A::mask(F) & A::STATS_USES) != 0u) A::template moments<T, F, M>(p, g, s, c, x.h);
        A::template apply<T, F, M>(p, g, s, c, x.h, x.t);
    }
};

template <class A, class SP, class SG>
static FO_INLINE void fo_rq8_apply_range(const fo_rjob *j, ptrdiff_t lo, ptrdiff_t hi) {
    if (lo >= hi) return;
    const auto [cs, as] = fo_load_blocks<A>(j->h);
    fo_rapply_hp<A, float> x;
    x.h = A::template hp<float>::load(as);
    const ptrdiff_t B = j->qblock;
    const int ne = j->nbuf - FO_STATE;
    char *bufs[FO_STATE + FO_MAXSTATE + 1];
    float *am[FO_MAXSTATE + 1];
    for (ptrdiff_t t = fo_rfind(j->qblk, j->ntens, lo); lo < hi; t++) {
        const ptrdiff_t end = j->qblk[t + 1] < hi ? j->qblk[t + 1] : hi;
        if (end <= lo) continue;
        const fo_common<float> c = fo_rcommon<float>(j, cs, t);
        typename A::tsd td;
        memcpy(&td, j->tsd + t * A::NTSCAL, sizeof td);
        x.t = A::template ts<float>::load(td);
        const ptrdiff_t qb = lo - j->qblk[t], off = qb * B, size = j->starts[t + 1] - j->starts[t];
        ptrdiff_t n = (end - lo) * B;
        if (n > size - off) n = size - off;
        fo_rbufs<SP, SG, fo_rq8_codes>(j, t, off, bufs);
        for (int k = 0; k < ne; k++) am[k] = j->amtab[t * ne + k] + qb;
        fo_q8_ctx q;
        q.seed = j->seed;
        q.step = j->step;
        q.tensor = j->tids[t];
        q.i0 = off;
        q.block = B;
        q.stochastic = j->stochastic;
        fo_q8_dispatch<fo_rq8_rule<A>, SP, SG>(j->flags, c, x, bufs, am, n, &q);
        lo = end;
    }
}

/* ---- entry points: per algorithm and storage code 0..3 (bit 0 a bfloat16 parameter and
 * EMA, bit 1 a bfloat16 gradient); finish is the float32 one ------------------------------ */
#define FO_RQ8_ONE_(a, code)                                                                                  \
    FO_CLONES static void fo_##a##_rq8stats_##code(FO_RJOB_ARGS_) {                                           \
        fo_rq8_stats_range<fo_##a, FO_RSP_(code), FO_RSG_(code)>(j, lo, hi);                                 \
    }                                                                                                     \
    FO_CLONES static void fo_##a##_rq8apply_##code(FO_RJOB_ARGS_) {                                           \
        fo_rq8_apply_range<fo_##a, FO_RSP_(code), FO_RSG_(code)>(j, lo, hi);                                 \
    }
#define FO_RQ8_ENTRY_(a, P) FO_RQ8_ONE_(a, 0) FO_RQ8_ONE_(a, 1) FO_RQ8_ONE_(a, 2) FO_RQ8_ONE_(a, 3)
FO_REDUCE_ALGOS(FO_RQ8_ENTRY_)
#undef FO_RQ8_ENTRY_
#undef FO_RQ8_ONE_

/* k: position in FO_REDUCE_ALGOS; code: 0..3 as above */
static const fo_rkernels *fo_cpu_reduce_q8(int k, int code) {
#define FO_RQ8K_(a, c) {fo_##a##_rq8stats_##c, fo_##a##_rfinish_lp0, fo_##a##_rq8apply_##c, fo_##a::NSTATS, \
                        fo_##a::NTSCAL, fo_##a::NTSTATE, fo_##a::MAXSTATE}
#define FO_RQ8ROW_(a, P) {FO_RQ8K_(a, 0), FO_RQ8K_(a, 1), FO_RQ8K_(a, 2), FO_RQ8K_(a, 3)},
    static const fo_rkernels table[FO_NREDUCE][4] = {FO_REDUCE_ALGOS(FO_RQ8ROW_)};
#undef FO_RQ8ROW_
#undef FO_RQ8K_
    if (k < 0 || k >= FO_NREDUCE || code < 0 || code > 3) return NULL;
    return &table[k][code];
}

#endif /* FUSEDOPTIM_REDUCE_Q8_H */
