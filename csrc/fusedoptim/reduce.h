/* fusedoptim/reduce.h -- optimizers with a reduction stage (per-tensor statistics).
 *
 * LAMB and LARS scale each tensor's update by a trust ratio (a ratio of norms), NovoGrad
 * divides each tensor's gradient by a running average of its squared norm.  Their update
 * is not element-wise: it needs statistics of the whole tensor first.  Each of them is
 * described here like an element-wise algorithm of rules.h (named scalars, flags, state
 * buffers, X-macro lists) plus four lists and three functions of its own:
 *
 *   FO_<ALGO>_STATS(X)     per-tensor sums the stats pass accumulates (in double)
 *   FO_<ALGO>_TSCALARS(X)  per-tensor scalars finish() derives for the apply pass
 *   FO_<ALGO>_TSTATE(X)    per-tensor state scalars kept across steps (one-element
 *                          arrays of the parameter's dtype, after the element buffers)
 *   FO_<ALGO>_STATS_USES   bit k: the stats pass reads and writes declared buffer k
 *                          (LAMB: m and v; the others read no state there)
 *   moments<T, F, M>(p, g, s, c, h)      one element: the state update of the stats pass
 *                                        (LAMB writes m and v here; the others: nothing)
 *   stats<T, F, M>(p, g, s, c, h, v)     one element: v[k] = its contribution to sum k,
 *                                        from the state as moments() left it and the loop
 *                                        stored it (rounded, for bfloat16 state)
 *   finish<T>(a, flags, st, ndim, tstate, out)   one tensor, in double: the sums st ->
 *                                        the per-tensor scalars out (and the new tstate)
 *   apply<T, F, M>(p, g, s, c, h, ts)    one element: the update with per-tensor ts
 *
 * The CPU driver (cpu_reduce.h, _reduce.pxi) runs, inside one native call for all tensors
 * of a bucket, batch by batch (consecutive tensors whose arrays fit in the cache): the
 * stats pass over fixed blocks (16384 elements, never crossing a tensor;
 * within a block 16 lanes over 256-element sub-blocks, widened to double in a fixed
 * order), then finish() per tensor (block sums added in block order), then the apply
 * pass.  The bits depend on the data and the block boundaries only, never on the thread
 * count, the batches or the SIMD clone.
 *
 * The list FO_REDUCE_ALGOS is separate from FO_ALGOS (the element-wise list): the CUDA
 * kernels are instantiated from FO_ALGOS only, and the CUDA backend rejects these.
 */
#ifndef FUSEDOPTIM_REDUCE_H
#define FUSEDOPTIM_REDUCE_H

#include "rules.h"

/* The per-tensor scalars in T: a field per name of P's TSCALARS list, loaded from the
 * double struct finish() wrote (rounded once).                                          */
#define FO_TS_CAST_(n) t.n = (T)a.n;
#define FO_TSCALAR_STRUCTS(name, P)                                                     \
    FO_SCALAR_STRUCT(name##_tsd, P##_TSCALARS)                                         \
    FO_SCALAR_STRUCT(name##_stats, P##_STATS)                                          \
    template <typename T> struct name##_ts {                                           \
        P##_TSCALARS(FO_T_FIELD_)                                                      \
        FO_HD static name##_ts load(const name##_tsd &a) {                             \
            name##_ts t;                                                               \
            P##_TSCALARS(FO_TS_CAST_) return t;                                        \
        }                                                                              \
    };
#define FO_PLUS1_(n) +1
/* What a reducing descriptor adds to FO_DESCRIBE: the stats / tscalars / tstate counts
 * and the struct names the driver uses.                                                 */
#define FO_DESCRIBE_REDUCE(name, P)                                                     \
    FO_DESCRIBE(P)                                                                     \
    enum { STATS_USES = P##_STATS_USES };                                              \
    typedef name##_stats stats_t;                                                      \
    typedef name##_tsd tsd;                                                            \
    template <typename T> using ts = name##_ts<T>;                                     \
    enum { NSTATS = 0 P##_STATS(FO_PLUS1_), NTSCAL = 0 P##_TSCALARS(FO_PLUS1_),         \
           NTSTATE = 0 P##_TSTATE(FO_PLUS1_) };

/* ---- LAMB (pytorch_optimizer.Lamb, its default non-rectified update) ----------------------
 * decay: 1 - lr*wd (1 - wd if fixed_decay) when decoupled, else 1; beta3: 1 - beta1 with
 * grad_averaging, else 1; wd_update: wd when coupled (added to the update, not the
 * gradient), else 0; neg_step: -lr / (1 - beta1^t); clamp: the weight-norm clamp (10);
 * adam: 1 for a trust ratio of 1; ratio_eps: added to |u| in the ratio (eps; 0 for the plain ratio
 * of Keras and optax); fallback_ratio: the ratio when a norm is 0 or with adam (1; with the
 * bias corrections of Keras/optax, sqrt(1 - beta2^t) / (1 - beta1^t), the scale of their u
 * relative to this one, whose eps is then eps sqrt(1 - beta2^t)).  Two passes: the stats pass updates m and v and sums
 * |theta'|^2 and |u|^2; the apply pass reads m, v again and writes theta.               */
#define FO_LAMB_SCALARS(X) X(decay) X(beta1) X(beta3) X(beta2) X(one_minus_beta2) X(eps) X(wd_update) \
    X(neg_step) X(clamp) X(adam) X(ratio_eps) X(fallback_ratio)
#define FO_LAMB_FLAGS(X)
#define FO_LAMB_BUFFERS(X) X(exp_avg, true, FO_SIGNED) X(exp_avg_sq, true, FO_NONNEG)
#define FO_LAMB_STATS(X) X(param_sumsq) X(update_sumsq)
#define FO_LAMB_TSCALARS(X) X(neg_ratio_step)
#define FO_LAMB_TSTATE(X)
#define FO_LAMB_STATS_USES 3u      /* the declared buffers stats() reads and writes (bit k: buffer k) */
FO_SCALAR_STRUCT(fo_lamb_scalars, FO_LAMB_SCALARS)
FO_TSCALAR_STRUCTS(fo_lamb, FO_LAMB)
template <typename T> struct fo_lamb_hp : fo_hp_base<fo_lamb_hp<T> > {
    FO_HP_FIELDS(FO_LAMB)
};
/* the update direction u = m / (sqrt(v) + eps) (+ wd * theta' when coupled) */
template <typename T> FO_HD T fo_lamb_dir(T pd, T m, T v, const fo_lamb_hp<T> &h) {
    T u = m / (fo_sqrt(v) + h.eps);
    if (h.wd_update != T(0)) u = u + h.wd_update * pd;
    return u;
}
struct fo_lamb : fo_algo_base<fo_lamb_scalars, fo_lamb_hp> {
    FO_DESCRIBE_REDUCE(fo_lamb, FO_LAMB)
    template <typename T, unsigned F, int M>
    FO_HD static void moments(T p, T g, T *s, const fo_common<T> &c, const hp<T> &h) {
        g = fo_grad<M>(g, p, c);
        s[0] = s[0] * h.beta1 + h.beta3 * g;
        s[1] = s[1] * h.beta2 + h.one_minus_beta2 * g * g;
    }
    template <typename T, unsigned F, int M>
    FO_HD static void stats(T p, T, T *s, const fo_common<T> &, const hp<T> &h, T *v) {
        const T pd = p * h.decay;
        const T u = fo_lamb_dir(pd, s[0], s[1], h);
        v[0] = pd * pd;
        v[1] = u * u;
    }
    template <typename T>
    static void finish(const scalars &a, unsigned, const stats_t &st, int, T **, tsd &out) {
        double wn = sqrt(st.param_sumsq), un = sqrt(st.update_sumsq);
        wn = wn > a.clamp ? a.clamp : wn;               /* torch: norm.clamp_(0, clamp) */
        double r = (wn == 0.0 || un == 0.0) ? a.fallback_ratio : wn / (un + a.ratio_eps);
        if (a.adam != 0.0) r = a.fallback_ratio;
        out.neg_ratio_step = a.neg_step * r;
    }
    template <typename T, unsigned F, int M>
    FO_HD static void apply(T &p, T, T *s, const fo_common<T> &, const hp<T> &h, const ts<T> &t) {
        const T pd = p * h.decay;
        p = pd + t.neg_ratio_step * fo_lamb_dir(pd, s[0], s[1], h);
    }
};

/* ---- LARS (pytorch_optimizer.LARS) ----------------------------------------------------------
 * Tensors with ndim > 1: g <- (g + wd theta) * ratio, ratio = tc |theta| / (|g| + wd |theta|)
 * (1 when |theta| = 0 or the denominator is 0); tensors with ndim <= 1: plain SGD step.
 * The momentum buffer starts at zero (no first-step copy, unlike torch.optim.SGD).
 * optax.lars's ratio is a choice of scalars: norm_wd (wd: |g| becomes |g + wd theta|), den_wd
 * (0 there; wd for pytorch_optimizer's |g| + wd |theta|), trust_eps (added to the
 * denominator), all_tensors (1: every tensor is scaled and decayed, not only ndim > 1).   */
#define FO_LARS_SCALARS(X) X(weight_decay) X(momentum) X(one_minus_dampening) X(trust_coefficient) \
    X(nesterov) X(neg_lr) X(norm_wd) X(den_wd) X(trust_eps) X(all_tensors)
#define FO_LARS_FLAGS(X) X(momentum)
#define FO_LARS_BUFFERS(X) X(momentum_buffer, momentum, FO_SIGNED)
#define FO_LARS_STATS(X) X(param_sumsq) X(grad_sumsq)
#define FO_LARS_TSCALARS(X) X(scaled) X(ratio)
#define FO_LARS_TSTATE(X)
#define FO_LARS_STATS_USES 0u
FO_SCALAR_STRUCT(fo_lars_scalars, FO_LARS_SCALARS)
FO_TSCALAR_STRUCTS(fo_lars, FO_LARS)
template <typename T> struct fo_lars_hp : fo_hp_base<fo_lars_hp<T> > {
    FO_HP_FIELDS(FO_LARS)
    bool nest;
    template <class S> FO_HD void derive(const S &a) { nest = a.nesterov != 0.0; }
};
struct fo_lars : fo_algo_base<fo_lars_scalars, fo_lars_hp> {
    FO_DESCRIBE_REDUCE(fo_lars, FO_LARS)
    template <typename T, unsigned F, int M>
    FO_HD static void moments(T, T, T *, const fo_common<T> &, const hp<T> &) {}
    template <typename T, unsigned F, int M>
    FO_HD static void stats(T p, T g, T *, const fo_common<T> &c, const hp<T> &h, T *v) {
        g = fo_grad<M>(g, p, c) + h.norm_wd * p;
        v[0] = p * p;
        v[1] = g * g;
    }
    template <typename T>
    static void finish(const scalars &a, unsigned, const stats_t &st, int ndim, T **, tsd &out) {
        const bool scaled = ndim > 1 || a.all_tensors != 0.0;
        out.scaled = scaled ? 1.0 : 0.0;
        out.ratio = 1.0;
        if (scaled) {
            const double pn = sqrt(st.param_sumsq), gn = sqrt(st.grad_sumsq);
            const double den = gn + a.den_wd * pn;
            if (pn > 0.0 && den > 0.0) out.ratio = a.trust_coefficient * pn / (den + a.trust_eps);  /* NaN: 1 */
        }
    }
    template <typename T, unsigned F, int M>
    FO_HD static void apply(T &p, T g, T *s, const fo_common<T> &c, const hp<T> &h, const ts<T> &t) {
        g = fo_grad<M>(g, p, c);
        if (t.scaled != T(0)) g = (g + h.weight_decay * p) * t.ratio;
        if (FO_FLAG(fo_lars, F, momentum)) {
            s[0] = s[0] * h.momentum + h.one_minus_dampening * g;
            g = h.nest ? g + h.momentum * s[0] : s[0];
        }
        p = p + h.neg_lr * g;
    }
};

/* ---- NovoGrad (pytorch_optimizer.NovoGrad) ------------------------------------------------
 * grads_ema (per tensor) <- |g|^2 on a tensor's first step, else lerp(grads_ema, |g|^2,
 * 1 - beta2); g <- g / (sqrt(grads_ema) + eps); decoupled: theta <- theta * decay, coupled:
 * g <- g + wd theta; m <- g on the first step, else beta1 m + beta3 g; theta <- theta - lr m.
 * first: 1 on a tensor's first step (its buffers were created for this step).              */
#define FO_NOVOGRAD_SCALARS(X) X(beta1) X(beta3) X(one_minus_beta2) X(eps) X(decay) X(wd_coupled) \
    X(neg_lr) X(first)
#define FO_NOVOGRAD_FLAGS(X)
#define FO_NOVOGRAD_BUFFERS(X) X(moments, true, FO_SIGNED)
#define FO_NOVOGRAD_STATS(X) X(grad_sumsq)
#define FO_NOVOGRAD_TSCALARS(X) X(denom)
#define FO_NOVOGRAD_TSTATE(X) X(grads_ema)
#define FO_NOVOGRAD_STATS_USES 0u
FO_SCALAR_STRUCT(fo_novograd_scalars, FO_NOVOGRAD_SCALARS)
FO_TSCALAR_STRUCTS(fo_novograd, FO_NOVOGRAD)
template <typename T> struct fo_novograd_hp : fo_hp_base<fo_novograd_hp<T> > {
    FO_HP_FIELDS(FO_NOVOGRAD)
    bool first_step;
    template <class S> FO_HD void derive(const S &a) { first_step = a.first != 0.0; }
};
struct fo_novograd : fo_algo_base<fo_novograd_scalars, fo_novograd_hp> {
    FO_DESCRIBE_REDUCE(fo_novograd, FO_NOVOGRAD)
    template <typename T, unsigned F, int M>
    FO_HD static void moments(T, T, T *, const fo_common<T> &, const hp<T> &) {}
    template <typename T, unsigned F, int M>
    FO_HD static void stats(T p, T g, T *, const fo_common<T> &c, const hp<T> &, T *v) {
        g = fo_grad<M>(g, p, c);
        v[0] = g * g;
    }
    /* in T, like torch's float32 state: grads_ema.lerp_(|g|^2, 1 - beta2) */
    template <typename T>
    static void finish(const scalars &a, unsigned, const stats_t &st, int, T **tstate, tsd &out) {
        const T sq = (T)st.grad_sumsq;
        T &ema = *tstate[0];
        const T w = (T)a.one_minus_beta2;
        ema = a.first != 0.0 ? sq : fo_lerp(ema, sq, w, T(1) - w, fo_abs(w) < T(0.5));
        out.denom = (double)(fo_sqrt(ema) + (T)a.eps);
    }
    template <typename T, unsigned F, int M>
    FO_HD static void apply(T &p, T g, T *s, const fo_common<T> &c, const hp<T> &h, const ts<T> &t) {
        g = fo_grad<M>(g, p, c) / t.denom;
        p = p * h.decay;
        if (h.wd_coupled != T(0)) g = g + h.wd_coupled * p;
        s[0] = h.first_step ? g : s[0] * h.beta1 + h.beta3 * g;
        p = p + h.neg_lr * s[0];
    }
};

/* ---- the list of reducing algorithms ----------------------------------------------------------
 * Native ids follow the element-wise ones and the roofline loop: FO_NALGO + 1 + position.   */
#define FO_REDUCE_ALGOS(X) X(lamb, FO_LAMB) X(lars, FO_LARS) X(novograd, FO_NOVOGRAD)

#endif /* FUSEDOPTIM_REDUCE_H */
