/* fusedoptim/factored.h -- Adafactor's factored second moments: per-row and per-column
 * statistics of g^2 over the last two dimensions of every tensor of >= 2 dims, a full
 * second moment for the others, and the update clipped by its own RMS.
 *
 * One native call (fo_af_run) steps every tensor of a list.  The work is cut into fixed
 * units that depend only on the shapes (never on the thread count):
 *  - a vector (ndim < 2): FO_AF_UNIT elements per unit;
 *  - a factored tensor of shape (B, R, C) (B = the product of the leading dims) whose
 *    matrices hold <= FO_AF_UNIT elements: whole matrices, max(1, FO_AF_UNIT / (R C)) per
 *    unit (a unit computes their row and column statistics completely);
 *  - a larger matrix ("split"): max(1, FO_AF_UNIT / C) whole rows per unit, each unit
 *    writing its partial column sums to its own slot, added in unit order afterwards.
 * Each unit writes its own partial sums (sum p^2, sum u^2) and the per-tensor totals add
 * them in unit order, so every thread count gives the same bits.
 *
 * Passes: (1) stats: g^2 row/column means -> row_var / col_var (lerp), or variance, and
 * sum p^2 (and sum u^2 for a vector); (2) per tensor: the split tensors' column sums and
 * the row factors r_i / max(mean_i r_i, clamp_r); (3) factored: sum u^2 with
 * u = g / sqrt(max(r_i c_j / mean r, clamp_v)); (4) per tensor: the step
 * -max(eps2, RMS(p)) rho / max(1, RMS(u) / d); (5) p <- p decay + step u (with optax's
 * momentum: m <- beta1 m - (1 - beta1) step u, p <- p decay - m), then the EMA.
 * Traffic per element: factored reads p, g; g; p, g and writes p (torch: g^2 twice, the
 * full V and U materialised); vector reads p, g, v and writes v; then p, g, v, writes p.
 */
#ifndef FUSEDOPTIM_FACTORED_H
#define FUSEDOPTIM_FACTORED_H

#include <math.h>
#include <stdlib.h>
#include "cpu.h"
#include "fo_omp.h"

#define FO_AF_UNIT 16384

/* per-step scalars (double, computed in Python) */
struct fo_af_scalars {
    double w;          /* lerp weight 1 - beta2_t = t^beta2_decay */
    double eps_add;    /* added to g^2 before the means (Keras's epsilon_1); torch: 0 */
    double clamp_r;    /* floor of the mean of the row statistic (torch: eps1); Keras: 0 */
    double clamp_v;    /* floor of V (torch: eps1^2); Keras: 0 */
    double decay;      /* decoupled weight decay factor 1 - lr wd */
    double rho;        /* relative step size min(lr, 1/sqrt(t)) */
    double eps2;       /* floor of RMS(p) */
    double inv_d;      /* 1 / d (clip threshold) */
    double rms_scale;  /* RMS(p) factor: |decay| when the RMS is taken after the decay (Keras), else 1;
                          0: no parameter scale (alpha = rho; optax's multiply_by_parameter_scale=False) */
    double beta1;      /* momentum of the scaled update (optax's momentum), used when a tensor has m */
    double one_minus_beta1;
};

struct fo_af_tensor {
    char *p, *g, *e;       /* parameter, gradient, EMA (or NULL) */
    char *v;               /* variance (vector) or NULL */
    char *m;               /* exp_avg: momentum of the scaled update (optax), or NULL */
    char *r, *c;           /* row_var (B R), col_var (B C) (factored) or NULL */
    ptrdiff_t n, B, R, C;  /* vector: B = R = 1, C = n */
    ptrdiff_t u0, nu;      /* first unit, number of units */
    ptrdiff_t per;         /* vector: elements per unit; whole: matrices per unit; split: rows per unit */
    int split;
    double gs;             /* gradient scale of this tensor (gscale x tscale) */
    double *rowfac;        /* factored: B R row factors r_i / max(mean r, clamp_r) */
    double *colpart;       /* split: nu C partial column sums */
    double step;           /* set by pass 4 */
};

/* the unit layout of one tensor (ndim, its shape) -> B, R, C, per, split, nu */
static inline void fo_af_layout(fo_af_tensor *t, int factored) {
    if (!factored) {
        t->B = 1; t->R = 1; t->C = t->n; t->split = 0; t->per = FO_AF_UNIT;
        t->nu = (t->n + FO_AF_UNIT - 1) / FO_AF_UNIT;
        return;
    }
    ptrdiff_t m = t->R * t->C;
    if (t->n == 0 || m == 0) { t->nu = 0; t->per = 1; t->split = 0; return; }
    if (m <= FO_AF_UNIT) {
        t->split = 0;
        t->per = FO_AF_UNIT / m;
        t->nu = (t->B + t->per - 1) / t->per;
    } else {
        t->split = 1;
        t->per = FO_AF_UNIT / t->C > 0 ? FO_AF_UNIT / t->C : 1;
        t->nu = t->B * ((t->R + t->per - 1) / t->per);
    }
}

template <typename T> static FO_INLINE fo_common<T> fo_af_common(const double *hc, double gs) {
    fo_common_scalars cs;
    memcpy(&cs, hc, sizeof cs);
    cs.gscale = gs;
    return fo_common<T>::load(cs);
}

/* rows [r0, r1) of matrix b: row statistics into row_var (lerp), column sums added to
 * col (double, C), sum p^2 returned through *p2 */
template <typename T>
static FO_INLINE void fo_af_rows(const fo_af_tensor *t, const fo_af_scalars *s, const fo_common<T> &c,
                                 ptrdiff_t b, ptrdiff_t r0, ptrdiff_t r1, double *col, double *p2) {
    const ptrdiff_t C = t->C;
    const T *p = (const T *)t->p + (b * t->R) * C;
    const T *g = (const T *)t->g + (b * t->R) * C;
    T *rv = (T *)t->r + b * t->R;
    const T ea = (T)s->eps_add;
    const fo_weight<T> w = fo_weight<T>::of((T)s->w);
    const double invC = 1.0 / (double)C;
    const bool plain = c.plain();
    double pp = 0.0;
    for (ptrdiff_t r = r0; r < r1; r++) {
        const T *pr = p + r * C, *gr = g + r * C;
        double rs = 0.0;
        for (ptrdiff_t j = 0; j < C; j++) {
            const T gi = plain ? fo_grad<FO_PLAIN>(gr[j], pr[j], c) : fo_grad<0>(gr[j], pr[j], c);
            const T q = gi * gi + ea;
            rs += (double)q;
            col[j] += (double)q;
            pp += (double)pr[j] * (double)pr[j];
        }
        rv[r] = fo_lerp(rv[r], (T)(rs * invC), w);
    }
    *p2 += pp;
}

/* matrix b's column statistics from its column sums, and its row factors */
template <typename T>
static FO_INLINE void fo_af_finish_matrix(const fo_af_tensor *t, const fo_af_scalars *s, ptrdiff_t b,
                                          const double *col) {
    const fo_weight<T> w = fo_weight<T>::of((T)s->w);
    T *cv = (T *)t->c + b * t->C;
    const double invR = 1.0 / (double)t->R;
    for (ptrdiff_t j = 0; j < t->C; j++) cv[j] = fo_lerp(cv[j], (T)(col[j] * invR), w);
    const T *rv = (const T *)t->r + b * t->R;
    double rm = 0.0;
    for (ptrdiff_t r = 0; r < t->R; r++) rm += (double)rv[r];
    T m = (T)(rm * invR);
    if (m < (T)s->clamp_r) m = (T)s->clamp_r;          /* torch: row_var.mean().clamp_(min=eps1) */
    double *f = t->rowfac + b * t->R;
    for (ptrdiff_t r = 0; r < t->R; r++) f[r] = (double)rv[r] / (double)m;
}

/* a vector's run of m <= FO_AF_RUN elements: v <- lerp(v, g^2 + eps_add), u = g / sqrt(max(v,
 * clamp_v)) into ub (the loop vectorizes; the sums are taken from ub afterwards) */
#define FO_AF_RUN 256
#define FO_AF_LANES 16
template <typename T, int MODE>
static FO_INLINE void fo_af_vec_run(ptrdiff_t m, const T *FO_RESTRICT p, const T *FO_RESTRICT g, T *FO_RESTRICT v,
                                    const fo_common<T> c, const T ea, const T cv, const fo_weight<T> w,
                                    T *FO_RESTRICT ub) {
    for (ptrdiff_t i = 0; i < m; i++) {
        const T gi = fo_grad<MODE>(g[i], p[i], c);
        const T vi = fo_lerp<MODE>(v[i], gi * gi + ea, w);
        v[i] = vi;
        ub[i] = gi / fo_sqrt(vi < cv ? cv : vi);
    }
}
/* the loop with its mode fixed: FO_PLAIN or not, the lerp form of w */
template <typename T>
static FO_INLINE void fo_af_vec_run_any(bool plain, ptrdiff_t m, const T *p, const T *g, T *v, const fo_common<T> &c,
                                        const T ea, const T cv, const fo_weight<T> &w, T *ub) {
    const int mode = (plain ? FO_PLAIN : 0) | (w.small ? FO_LERP_SMALL : FO_LERP_BIG);
    switch (mode) {
        case FO_PLAIN | FO_LERP_SMALL: fo_af_vec_run<T, FO_PLAIN | FO_LERP_SMALL>(m, p, g, v, c, ea, cv, w, ub); return;
        case FO_PLAIN | FO_LERP_BIG: fo_af_vec_run<T, FO_PLAIN | FO_LERP_BIG>(m, p, g, v, c, ea, cv, w, ub); return;
        case FO_LERP_SMALL: fo_af_vec_run<T, FO_LERP_SMALL>(m, p, g, v, c, ea, cv, w, ub); return;
        default: fo_af_vec_run<T, FO_LERP_BIG>(m, p, g, v, c, ea, cv, w, ub); return;
    }
}

/* a vector's elements [i0, i1): p <- p decay + step g / sqrt(max(v, clamp_v)), then the EMA */
template <typename T, int MODE, bool EMA>
static FO_INLINE void fo_af_vec_apply(ptrdiff_t i0, ptrdiff_t i1, T *FO_RESTRICT p, const T *FO_RESTRICT g,
                                      const T *FO_RESTRICT v, T *FO_RESTRICT e, const fo_common<T> c, const T clv,
                                      const T decay, const T st) {
    for (ptrdiff_t i = i0; i < i1; i++) {
        const T gi = fo_grad<MODE>(g[i], p[i], c);
        const T u = gi / fo_sqrt(v[i] < clv ? clv : v[i]);
        const T pi = p[i] * decay;
        p[i] = pi + st * u;
        if (EMA) fo_ema_rule(e[i], p[i], c);
    }
}

/* pass 1 on unit k of tensor t: out[0] += sum p^2, out[1] += sum u^2 (vectors) */
template <typename T>
static void fo_af_stats_unit(const double *hc, const fo_af_scalars *s, const fo_af_tensor *t, ptrdiff_t k,
                             double *out) {
    const fo_common<T> c = fo_af_common<T>(hc, t->gs);
    if (t->v != NULL) {
        const ptrdiff_t i0 = k * t->per, i1 = i0 + t->per < t->n ? i0 + t->per : t->n;
        const T *FO_RESTRICT p = (const T *)t->p;
        const T *FO_RESTRICT g = (const T *)t->g;
        T *FO_RESTRICT v = (T *)t->v;
        const T ea = (T)s->eps_add, cv = (T)s->clamp_v;
        const fo_weight<T> w = fo_weight<T>::of((T)s->w);
        const bool plain = c.plain();
        double pp = 0.0, uu = 0.0;
        /* runs of FO_AF_RUN elements: a vectorized element loop writes u to a small array,
         * then sum p^2 and sum u^2 accumulate in FO_AF_LANES double lanes, added in lane
         * order (a shorter last run adds its elements one by one); fixed by the unit */
        for (ptrdiff_t i = i0; i < i1; i += FO_AF_RUN) {
            const ptrdiff_t m = i1 - i < FO_AF_RUN ? i1 - i : FO_AF_RUN;
            T ub[FO_AF_RUN];
            fo_af_vec_run_any<T>(plain, m, p + i, g + i, v + i, c, ea, cv, w, ub);
            if (m == FO_AF_RUN) {
                double ap[FO_AF_LANES], au[FO_AF_LANES];
                for (int l = 0; l < FO_AF_LANES; l++) ap[l] = au[l] = 0.0;
                for (int q = 0; q < FO_AF_RUN; q += FO_AF_LANES)
                    for (int l = 0; l < FO_AF_LANES; l++) {
                        const double x = (double)p[i + q + l], y = (double)ub[q + l];
                        ap[l] = ap[l] + x * x;
                        au[l] = au[l] + y * y;
                    }
                for (int l = 0; l < FO_AF_LANES; l++) {
                    pp = pp + ap[l];
                    uu = uu + au[l];
                }
            } else {
                for (ptrdiff_t q = 0; q < m; q++) {
                    const double x = (double)p[i + q], y = (double)ub[q];
                    pp = pp + x * x;
                    uu = uu + y * y;
                }
            }
        }
        out[0] = pp;
        out[1] = uu;
        return;
    }
    double pp = 0.0;
    if (!t->split) {
        const ptrdiff_t b0 = k * t->per, b1 = b0 + t->per < t->B ? b0 + t->per : t->B;
        double stack[256];
        double *col = t->C <= 256 ? stack : (double *)malloc((size_t)t->C * sizeof(double));
        if (col == NULL) { out[0] = NAN; return; }
        for (ptrdiff_t b = b0; b < b1; b++) {
            for (ptrdiff_t j = 0; j < t->C; j++) col[j] = 0.0;
            fo_af_rows<T>(t, s, c, b, 0, t->R, col, &pp);
            fo_af_finish_matrix<T>(t, s, b, col);
        }
        if (col != stack) free(col);
    } else {
        const ptrdiff_t nrb = (t->R + t->per - 1) / t->per;
        const ptrdiff_t b = k / nrb, r0 = (k % nrb) * t->per;
        const ptrdiff_t r1 = r0 + t->per < t->R ? r0 + t->per : t->R;
        double *col = t->colpart + k * t->C;
        for (ptrdiff_t j = 0; j < t->C; j++) col[j] = 0.0;
        fo_af_rows<T>(t, s, c, b, r0, r1, col, &pp);
    }
    out[0] = pp;
    out[1] = 0.0;
}

/* pass 2, per split tensor: column sums in unit order, column statistics, row factors */
template <typename T>
static void fo_af_finish_split(const fo_af_scalars *s, const fo_af_tensor *t) {
    const ptrdiff_t nrb = (t->R + t->per - 1) / t->per, C = t->C;
    double *col = (double *)malloc((size_t)C * sizeof(double));
    if (col == NULL) return;
    for (ptrdiff_t b = 0; b < t->B; b++) {
        for (ptrdiff_t j = 0; j < C; j++) col[j] = 0.0;
        for (ptrdiff_t q = 0; q < nrb; q++) {
            const double *part = t->colpart + (b * nrb + q) * C;
            for (ptrdiff_t j = 0; j < C; j++) col[j] += part[j];
        }
        fo_af_finish_matrix<T>(t, s, b, col);
    }
    free(col);
}

/* the rows [r0, r1) of matrix b, as (first element, row factor, col_var row) */
#define FO_AF_FOR_ROWS(t, k, BODY)                                                            \
    do {                                                                                       \
        ptrdiff_t b0_, b1_, r0_, r1_;                                                          \
        if (!(t)->split) {                                                                     \
            b0_ = (k) * (t)->per;                                                              \
            b1_ = b0_ + (t)->per < (t)->B ? b0_ + (t)->per : (t)->B;                           \
            r0_ = 0;                                                                           \
            r1_ = (t)->R;                                                                      \
        } else {                                                                               \
            const ptrdiff_t nrb_ = ((t)->R + (t)->per - 1) / (t)->per;                         \
            b0_ = (k) / nrb_;                                                                  \
            b1_ = b0_ + 1;                                                                     \
            r0_ = ((k) % nrb_) * (t)->per;                                                     \
            r1_ = r0_ + (t)->per < (t)->R ? r0_ + (t)->per : (t)->R;                           \
        }                                                                                      \
        for (ptrdiff_t b_ = b0_; b_ < b1_; b_++) {                                             \
            const T *FO_RESTRICT cv = (const T *)(t)->c + b_ * (t)->C;                         \
            for (ptrdiff_t r_ = r0_; r_ < r1_; r_++) {                                         \
                const ptrdiff_t off = (b_ * (t)->R + r_) * (t)->C;                             \
                const T fr = (T)(t)->rowfac[b_ * (t)->R + r_];                                 \
                BODY                                                                           \
            }                                                                                  \
        }                                                                                      \
    } while (0)

/* pass 3 on unit k of a factored tensor: sum u^2 */
template <typename T>
static double fo_af_usq_unit(const double *hc, const fo_af_scalars *s, const fo_af_tensor *t, ptrdiff_t k) {
    const fo_common<T> c = fo_af_common<T>(hc, t->gs);
    const bool plain = c.plain();
    const T clv = (T)s->clamp_v;
    double uu = 0.0;
    FO_AF_FOR_ROWS(t, k, {
        const T *FO_RESTRICT p = (const T *)t->p + off;
        const T *FO_RESTRICT g = (const T *)t->g + off;
        for (ptrdiff_t j = 0; j < t->C; j++) {
            const T gi = plain ? fo_grad<FO_PLAIN>(g[j], p[j], c) : fo_grad<0>(g[j], p[j], c);
            const T x = fr * cv[j];
            const T u = gi / (T)sqrt(x < clv ? clv : x);
            uu += (double)u * (double)u;
        }
    });
    return uu;
}

/* pass 5 on unit k: p <- p decay + step u, then the EMA */
template <typename T>
static void fo_af_apply_unit(const double *hc, const fo_af_scalars *s, const fo_af_tensor *t, ptrdiff_t k) {
    const fo_common<T> c = fo_af_common<T>(hc, t->gs);
    const bool plain = c.plain();
    const T clv = (T)s->clamp_v, decay = (T)s->decay, st = (T)t->step, ast = (T)-t->step;
    const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;
    if (t->v != NULL) {
        const ptrdiff_t i0 = k * t->per, i1 = i0 + t->per < t->n ? i0 + t->per : t->n;
        T *FO_RESTRICT p = (T *)t->p;
        const T *FO_RESTRICT g = (const T *)t->g;
        const T *FO_RESTRICT v = (const T *)t->v;
        T *FO_RESTRICT e = (T *)t->e;
        T *FO_RESTRICT m = (T *)t->m;
        if (m) {   // optax's momentum (rare): the scalar loop
            for (ptrdiff_t i = i0; i < i1; i++) {
                const T gi = plain ? fo_grad<FO_PLAIN>(g[i], p[i], c) : fo_grad<0>(g[i], p[i], c);
                const T u = gi / (T)sqrt(v[i] < clv ? clv : v[i]);
                const T pi = p[i] * decay;
                m[i] = b1 * m[i] + omb1 * (ast * u);
                p[i] = pi - m[i];
                if (e) fo_ema_rule(e[i], p[i], c);
            }
        }
        else if (e) fo_af_vec_apply<T, 0, true>(i0, i1, p, g, v, e, c, clv, decay, st);
        else if (plain) fo_af_vec_apply<T, FO_PLAIN, false>(i0, i1, p, g, v, e, c, clv, decay, st);
        else fo_af_vec_apply<T, 0, false>(i0, i1, p, g, v, e, c, clv, decay, st);
        return;
    }
    FO_AF_FOR_ROWS(t, k, {
        T *FO_RESTRICT p = (T *)t->p + off;
        const T *FO_RESTRICT g = (const T *)t->g + off;
        T *FO_RESTRICT e = t->e ? (T *)t->e + off : NULL;
        T *FO_RESTRICT m = t->m ? (T *)t->m + off : NULL;
        if (m) {
            for (ptrdiff_t j = 0; j < t->C; j++) {
                const T gi = plain ? fo_grad<FO_PLAIN>(g[j], p[j], c) : fo_grad<0>(g[j], p[j], c);
                const T x = fr * cv[j];
                const T u = gi / (T)sqrt(x < clv ? clv : x);
                const T pj = p[j] * decay;
                m[j] = b1 * m[j] + omb1 * (ast * u);
                p[j] = pj - m[j];
            }
        } else {
            for (ptrdiff_t j = 0; j < t->C; j++) {
                const T gi = plain ? fo_grad<FO_PLAIN>(g[j], p[j], c) : fo_grad<0>(g[j], p[j], c);
                const T x = fr * cv[j];
                const T u = gi / (T)sqrt(x < clv ? clv : x);
                const T pj = p[j] * decay;
                p[j] = pj + st * u;
            }
        }
        if (e)
            for (ptrdiff_t j = 0; j < t->C; j++) fo_ema_rule(e[j], p[j], c);
    });
}

#define FO_AF_ENTRY_(sfx, T)                                                                          \
    FO_CLONES static void fo_af_stats_##sfx(const double *hc, const fo_af_scalars *s, const fo_af_tensor *t, \
                                            ptrdiff_t k, double *out) {                               \
        fo_af_stats_unit<T>(hc, s, t, k, out);                                                        \
    }                                                                                                 \
    FO_CLONES static double fo_af_usq_##sfx(const double *hc, const fo_af_scalars *s, const fo_af_tensor *t, \
                                            ptrdiff_t k) {                                            \
        return fo_af_usq_unit<T>(hc, s, t, k);                                                        \
    }                                                                                                 \
    FO_CLONES static void fo_af_apply_##sfx(const double *hc, const fo_af_scalars *s, const fo_af_tensor *t, \
                                            ptrdiff_t k) {                                            \
        fo_af_apply_unit<T>(hc, s, t, k);                                                             \
    }
FO_AF_ENTRY_(f32, float)
FO_AF_ENTRY_(f64, double)
#undef FO_AF_ENTRY_

/* Step every tensor: ts[0..ntens), units ut (ut[u] = tensor of unit u, nunits in all),
 * part: 2 nunits doubles of scratch.  hc: the common block (fo_common_scalars).  dtype:
 * 0 float32, 1 float64.  nthreads <= 1: serial.  Returns 0, or -1 when out of memory. */
static int fo_af_run(const double *hc, const fo_af_scalars *s, fo_af_tensor *ts, ptrdiff_t ntens,
                     const ptrdiff_t *ut, ptrdiff_t nunits, double *part, int dtype, int nthreads) {
    typedef void (*stats_fn)(const double *, const fo_af_scalars *, const fo_af_tensor *, ptrdiff_t, double *);
    typedef double (*usq_fn)(const double *, const fo_af_scalars *, const fo_af_tensor *, ptrdiff_t);
    typedef void (*apply_fn)(const double *, const fo_af_scalars *, const fo_af_tensor *, ptrdiff_t);
    const stats_fn sf = dtype ? fo_af_stats_f64 : fo_af_stats_f32;
    const usq_fn uf = dtype ? fo_af_usq_f64 : fo_af_usq_f32;
    const apply_fn af = dtype ? fo_af_apply_f64 : fo_af_apply_f32;
    if (nthreads < 1) nthreads = 1;
    (void)nthreads;
    /* 1. stats */
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (ptrdiff_t u = 0; u < nunits; u++) {
        const fo_af_tensor *t = ts + ut[u];
        sf(hc, s, t, u - t->u0, part + 2 * u);
    }
    /* 2. split tensors: column statistics and row factors */
    for (ptrdiff_t i = 0; i < ntens; i++) {
        if (ts[i].v == NULL && ts[i].split) {
            if (dtype) fo_af_finish_split<double>(s, ts + i);
            else fo_af_finish_split<float>(s, ts + i);
        }
    }
    /* 3. factored: sum u^2 */
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (ptrdiff_t u = 0; u < nunits; u++) {
        const fo_af_tensor *t = ts + ut[u];
        if (t->v == NULL) part[2 * u + 1] = uf(hc, s, t, u - t->u0);
    }
    /* 4. per tensor: the step */
    for (ptrdiff_t i = 0; i < ntens; i++) {
        fo_af_tensor *t = ts + i;
        double pp = 0.0, uu = 0.0;
        for (ptrdiff_t u = t->u0; u < t->u0 + t->nu; u++) {
            pp += part[2 * u];
            uu += part[2 * u + 1];
        }
        const double nn = t->n > 0 ? (double)t->n : 1.0;
        double rms_p = sqrt(pp / nn) * s->rms_scale;
        double alpha = (rms_p > s->eps2 ? rms_p : s->eps2) * s->rho;
        if (rms_p != rms_p) alpha = rms_p;                 /* NaN parameters stay NaN */
        if (s->rms_scale == 0.0) alpha = s->rho;           /* no parameter scale */
        double q = sqrt(uu / nn) * s->inv_d;
        double denom = q > 1.0 ? q : 1.0;
        if (q != q) denom = q;
        t->step = -alpha / denom;
    }
    /* 5. apply */
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (ptrdiff_t u = 0; u < nunits; u++) {
        const fo_af_tensor *t = ts + ut[u];
        af(hc, s, t, u - t->u0);
    }
    return 0;
}

#endif /* FUSEDOPTIM_FACTORED_H */
