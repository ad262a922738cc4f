/* fusedoptim/rules.h -- the element-wise update rule of every optimizer, written once.
 *
 * Each rule updates ONE element in place.  The CPU loops (cpu.h, driven by Cython
 * prange) and the CUDA kernels (kernels.cu, loaded by CuPy/NVRTC) both include this
 * header, so a rule is tested once on the CPU and is the same code on the GPU.
 *
 * Conventions
 *  - T is float or double.  Arithmetic happens in T, like torch's CPU kernels; the
 *    per-step scalars are computed in double by the Python layer and rounded to T once,
 *    when a hyperparameter block is loaded (fo_<algo>_hp<T>::load).
 *  - A hyperparameter block arrives as `const double *h`; its entries are named
 *    (see "named per-step scalars" below), never read by index.
 *  - Structural flags that decide which buffers are touched (amsgrad, momentum,
 *    centered, ...) are template parameters, so no mode branch survives in a loop.
 *  - `p + c * a / b` follows torch's addcdiv (value * t1 / t2 evaluated left to right)
 *    and `fo_lerp` torch.lerp's two-sided formula, so float32 trajectories track
 *    torch.optim closely.  They are not bit-identical: torch 2.13's vectorized CPU
 *    add(alpha=)/addcmul/lerp use FMA (one rounding), while these rules round each
 *    operation (the build uses -ffp-contract=off so every SIMD clone and the GPU agree).
 *  - No fast-math: NaN and Inf propagate as IEEE says (fo_max keeps NaN like
 *    torch.maximum).
 */
#ifndef FUSEDOPTIM_RULES_H
#define FUSEDOPTIM_RULES_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FO_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#if defined(__GNUC__)
#define FO_HD inline __attribute__((always_inline))
#else
#define FO_HD inline
#endif
#endif

/* ---- scalar helpers --------------------------------------------------------- */
FO_HD float fo_sqrt(float x) { return sqrtf(x); }
FO_HD double fo_sqrt(double x) { return sqrt(x); }
FO_HD float fo_abs(float x) { return fabsf(x); }
FO_HD double fo_abs(double x) { return fabs(x); }

template <typename T> FO_HD T fo_inf() { return T(1) / T(0); }

/* max that propagates NaN from either side, like torch.maximum */
template <typename T> FO_HD T fo_max(T a, T b) { return (a > b || a != a) ? a : b; }

/* Compile-time modes a caller may fix for a whole loop (the CPU loops do; the default 0
 * decides at run time, per element, with the same results):
 *   FO_PLAIN       no clip value, no coupled weight decay, no L1 (the common case)
 *   FO_LERP_SMALL  every lerp weight w has |w| < 0.5;  FO_LERP_BIG  none has            */
#define FO_PLAIN 1
#define FO_LERP_SMALL 2
#define FO_LERP_BIG 4

/* torch.lerp: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w) */
template <int MODE = 0, typename T> FO_HD T fo_lerp(T a, T b, T w, T one_minus_w, bool small_w) {
    if (MODE & FO_LERP_SMALL) return a + w * (b - a);
    if (MODE & FO_LERP_BIG) return b - (b - a) * one_minus_w;
    return small_w ? a + w * (b - a) : b - (b - a) * one_minus_w;
}

/* a lerp weight w with 1 - w and its form (|w| < 0.5), derived once per segment */
template <typename T> struct fo_weight {
    T w, rest;
    bool small;
    FO_HD static fo_weight of(T w) {
        fo_weight x;
        x.w = w;
        x.rest = T(1) - w;
        x.small = fo_abs(w) < T(0.5);
        return x;
    }
};
template <int MODE = 0, typename T> FO_HD T fo_lerp(T a, T b, const fo_weight<T> &w) {
    return fo_lerp<MODE>(a, b, w.w, w.rest, w.small);
}

/* ---- named per-step scalars -----------------------------------------------------
 * Every per-step scalar travels by name.  Each algorithm lists its scalars, its flags and
 * its state buffers in three X-macros (FO_<ALGO>_SCALARS / _FLAGS / _BUFFERS: each buffer
 * with the flag condition that keeps it and its sign attribute); from them
 *  - FO_SCALAR_STRUCT makes a struct of doubles whose field order IS the packing order
 *    (the Python layer packs a dict by the names the extension exports: spec.h),
 *  - FO_DESCRIBE gives the descriptor (struct fo_<algo>) its flag bits, MAXSTATE and
 *    mask(flags): bit k set when buffer k is kept under these flags.
 * A block is the common scalars followed by the algorithm's: h = {fo_common_scalars,
 * fo_<algo>_scalars}, at most FO_MAXSCALARS doubles.                                   */
#define FO_MAXSCALARS 32
#define FO_FIELD_(n) double n;
#define FO_SCALAR_STRUCT(type, LIST) struct type { LIST(FO_FIELD_) };
#define FO_FLAG_ENUM_(n) n##_flag,
#define FO_PLUS_ONE_(n, cond, sign) +1
#define FO_FLAG_LOCAL_(n) const bool n = ((f >> n##_flag) & 1u) != 0; (void)n;
#define FO_BUF_BIT_(n, cond, sign) m |= ((cond) ? 1u : 0u) << k; k++;
#define FO_SIGN_BIT_(n, cond, sign) m |= (unsigned)(sign) << k; k++;
/* A buffer's sign attribute (third entry of its FO_<ALGO>_BUFFERS item) says which values
 * it can hold: FO_SIGNED (any sign: first moments, momenta) or FO_NONNEG (never negative:
 * second moments, accumulated squares, step sizes).  8-bit block-wise storage (q8.h)
 * quantizes a signed buffer with the signed code map, a non-negative one with the
 * unsigned map (twice the codes on [0, 1]).                                            */
#define FO_SIGNED 1
#define FO_NONNEG 0
#define FO_DESCRIBE(P)                                                                  \
    enum { P##_FLAGS(FO_FLAG_ENUM_) NFLAGS };                                          \
    enum { MAXSTATE = 0 P##_BUFFERS(FO_PLUS_ONE_) };                                   \
    FO_HD static constexpr unsigned mask(unsigned f) {                                 \
        (void)f; P##_FLAGS(FO_FLAG_LOCAL_) unsigned m = 0, k = 0;                      \
        P##_BUFFERS(FO_BUF_BIT_) return m;                                             \
    }                                                                                  \
    /* bit k: declared buffer k is FO_SIGNED */                                        \
    FO_HD static constexpr unsigned signs() {                                          \
        unsigned m = 0, k = 0;                                                         \
        P##_BUFFERS(FO_SIGN_BIT_) return m;                                            \
    }
/* flag `name` of the descriptor D in the flag bits F (a compile-time bool) */
#define FO_FLAG(D, F, name) ((((F) >> D::name##_flag) & 1u) != 0)

/* The loaded form of an algorithm's scalars (its hp<T>): FO_HP_FIELDS(P) declares a T field
 * per name of P's scalar list and cast(), which rounds each double to T once; fo_hp_base
 * gives load(), which casts and then calls derive() for what the rule needs beyond the
 * casts (reciprocals computed in double, lerp weights, bools).                          */
#define FO_T_FIELD_(n) T n;
#define FO_T_CAST_(n) n = (T)a.n;
#define FO_HP_FIELDS(P)                                                                 \
    P##_SCALARS(FO_T_FIELD_)                                                           \
    template <class S> FO_HD void cast(const S &a) { P##_SCALARS(FO_T_CAST_) }
template <class H> struct fo_hp_base {
    template <class S> FO_HD static H load(const S &a) {
        H h;
        h.cast(a);
        h.derive(a);
        return h;
    }
    template <class S> FO_HD void derive(const S &) {}
};

/* A descriptor's rule(): the element rule called with declared buffer k as s[k] (a
 * scratch register when the flags F drop it); `...` is that call.                      */
#define FO_RULE(...)                                                                    \
    template <typename T, unsigned F, int M>                                           \
    FO_HD static void rule(T &p, T g, T *s, const fo_common<T> &c, const hp<T> &h) {   \
        __VA_ARGS__;                                                                   \
    }

/* What a descriptor has unless it says otherwise: its scalar struct S, its loaded form
 * HP<T>, no lerp (LERP = 0).  A descriptor adds FO_DESCRIBE and its rule().             */
template <class S, template <typename> class HP> struct fo_algo_base {
    typedef S scalars;
    template <typename T> using hp = HP<T>;
    enum { LERP = 0 };
    template <typename T> FO_HD static int lerp(unsigned, const HP<T> &) { return 0; }
};

/* ---- the common block, first in every block ------------------------------------
 * gscale      gradient multiplier = (-1 if maximize) * global-norm clip coefficient
 *             * loss-scale / accumulation factor (* per-tensor clip coefficient, by the driver)
 * weight_decay coupled L2, g += wd * p (skipped when 0, so an Inf p can't poison g)
 * l1          L1 penalty, g += l1 * sign(p) (skipped when 0)
 * ema_weight  1 - ema decay; with an EMA buffer, ema = lerp(ema, p_new, ema_weight)
 * clip_value  raw gradients are clamped to [-clip_value, clip_value] before the scale
 *             (Inf disables it; NaN gradients stay NaN, like torch.clamp)              */
#define FO_COMMON_SCALARS(X) X(gscale) X(weight_decay) X(l1) X(ema_weight) X(clip_value)
FO_SCALAR_STRUCT(fo_common_scalars, FO_COMMON_SCALARS)
enum { FO_NCOMMON = sizeof(fo_common_scalars) / sizeof(double) };
template <typename T> struct fo_common {
    T gscale, wd, l1, ema_w, ema_rest, clip;
    bool ema_small;
    /* true when the clip value, coupled decay and L1 are all off (FO_PLAIN applies) */
    FO_HD bool plain() const { return !(clip < fo_inf<T>()) && wd == T(0) && l1 == T(0); }
    FO_HD static fo_common load(const fo_common_scalars &a) {
        fo_common c;
        c.gscale = (T)a.gscale;
        c.wd = (T)a.weight_decay;
        c.l1 = (T)a.l1;
        c.ema_w = (T)a.ema_weight;
        c.ema_rest = T(1) - c.ema_w;
        c.ema_small = fo_abs(c.ema_w) < T(0.5);
        c.clip = (T)a.clip_value;
        return c;
    }
};
/* sign for the L1 term: -1, 0, +1, and 0 for NaN (a NaN p is NaN anyway) */
template <typename T> FO_HD T fo_sign(T x) { return (T)((x > T(0)) - (x < T(0))); }
/* sign of an update direction (Lion, Rprop): -1, +1, and x itself for +-0 and NaN, so 0
 * maps to 0 and NaN stays NaN, like np.sign and jnp.sign.  torch.sign maps NaN to 0, which
 * would let a NaN gradient vanish silently (no step); here it reaches the parameter, as
 * with every other rule.  (Returning x rather than testing x == x also keeps GCC from
 * threading the zero case into a branch, which stopped Rprop's loop from vectorizing.)  */
template <typename T> FO_HD T fo_signum(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x); }
FO_HD float fo_copysign(float x, float y) { return copysignf(x, y); }
FO_HD double fo_copysign(double x, double y) { return copysign(x, y); }
/* fo_signum(d) * t for t >= 0, bit for bit (NaN payloads aside): t with d's sign where d is
 * nonzero (a product with +-1 is exact), d itself where d is +-0 or NaN (+-0 * t is +-0
 * when t is finite there, as in Yogi: d = v - g^2 is +-0 only for a finite g^2).  One
 * compare, a sign copy and a select instead of two compares, two selects and a multiply:
 * Yogi's loop at sizes that fit the cache is bound by these vector operations.          */
template <typename T> FO_HD T fo_signum_times(T d, T t) {
    return (d < T(0) || d > T(0)) ? fo_copysign(t, d) : d;
}
template <int MODE = 0, typename T> FO_HD T fo_grad(T g, T p, const fo_common<T> &c) {
    if (MODE & FO_PLAIN) return c.gscale * g;
    g = g > c.clip ? c.clip : (g < -c.clip ? -c.clip : g);
    g = c.gscale * g;
    if (c.wd != T(0)) g = g + c.wd * p;
    if (c.l1 != T(0)) g = g + c.l1 * fo_sign(p);
    return g;
}
template <typename T> FO_HD void fo_ema_rule(T &ema, T p, const fo_common<T> &c) {
    ema = fo_lerp(ema, p, c.ema_w, c.ema_rest, c.ema_small);
}

/* ---- the algorithms ------------------------------------------------------------------
 * Each one: its scalar/flag/buffer lists, its scalars loaded into T (fo_<algo>_hp: a cast
 * field per scalar name plus what derive() adds), its element rule (fo_<algo>_rule, the
 * named-argument form the tests audit), and its descriptor struct fo_<algo> (defaults from
 * fo_algo_base), which every loop (cpu.h, kernels.cu) drives generically:
 *   scalars, hp<T>          the named block and its loaded form
 *   mask(flags), MAXSTATE   which of the declared buffers the flags keep
 *   LERP, lerp(flags, h)    whether the rule has a lerp; the form the loop may fix
 *                           for these scalars (FO_LERP_SMALL/BIG), 0: none
 *   rule<T, F, MODE>(p, g, s, c, h)   s[k] is declared buffer k (a scratch slot when off)
 * Buffer order (and names) are those of torch's state keys.                           */
#define FO_LERP(small) ((small) ? FO_LERP_SMALL : FO_LERP_BIG)

/* ---- SGD (momentum, dampening, nesterov) ----------------------------------------------
 * decay: 1 - lr*wd if decoupled, else 1; grad_coef: the gradient's coefficient in the
 * Nesterov step (1 for torch; -lr with the lr inside the buffer, Keras: then
 * one_minus_dampening = -lr and lr = -1, so b = mu b - lr g and p += b)                  */
#define FO_SGD_SCALARS(X) X(lr) X(momentum) X(one_minus_dampening) X(nesterov) X(first) X(decay) X(grad_coef)
#define FO_SGD_FLAGS(X) X(momentum)
#define FO_SGD_BUFFERS(X) X(momentum_buffer, momentum, FO_SIGNED)
FO_SCALAR_STRUCT(fo_sgd_scalars, FO_SGD_SCALARS)
template <typename T> struct fo_sgd_hp : fo_hp_base<fo_sgd_hp<T> > {
    FO_HP_FIELDS(FO_SGD)
    T neg_lr;
    bool nest, first_step;
    template <class S> FO_HD void derive(const S &a) {
        neg_lr = (T)(-a.lr);
        nest = a.nesterov != 0.0;
        first_step = a.first != 0.0;
    }
};
template <typename T, bool MOMENTUM, int MODE = 0>
FO_HD void fo_sgd_rule(T &p, T g, T &buf, const fo_common<T> &c, const fo_sgd_hp<T> &h) {
    T d = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    if (MOMENTUM) {
        buf = h.first_step ? d : buf * h.momentum + h.one_minus_dampening * d;
        d = h.nest ? h.grad_coef * d + h.momentum * buf : buf;
    }
    p = p + h.neg_lr * d;
}
struct fo_sgd : fo_algo_base<fo_sgd_scalars, fo_sgd_hp> {
    FO_DESCRIBE(FO_SGD)
    FO_RULE(fo_sgd_rule<T, FO_FLAG(fo_sgd, F, momentum), M>(p, g, s[0], c, h))
};

/* ---- Adam / AdamW / AMSGrad ------------------------------------------------------------
 * decay: 1 - lr*wd if decoupled, else 1; bc2_sqrt: sqrt(1 - beta2^t);
 * neg_step: -lr / (1 - beta1^t); eps_root: added under the root (optax's eps_root, in
 * units of the raw v: eps_root * (1 - beta2^t)); vmax_scale: v's factor before the AMSGrad
 * max (1: torch's raw maximum; 1 / (1 - beta2^t) with bc2_sqrt = 1: optax's maximum of the
 * bias-corrected v).  Keras's eps (added to the uncorrected root) is eps / bc2_sqrt.      */
#define FO_ADAM_SCALARS(X) \
    X(decay) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(bc2_sqrt) X(eps) X(neg_step) X(eps_root) X(vmax_scale)
#define FO_ADAM_FLAGS(X) X(amsgrad)
#define FO_ADAM_BUFFERS(X) \
    X(exp_avg, true, FO_SIGNED) X(exp_avg_sq, true, FO_NONNEG) X(max_exp_avg_sq, amsgrad, FO_NONNEG)
FO_SCALAR_STRUCT(fo_adam_scalars, FO_ADAM_SCALARS)
template <typename T> struct fo_adam_hp : fo_hp_base<fo_adam_hp<T> > {
    FO_HP_FIELDS(FO_ADAM)
    fo_weight<T> w1;
    T inv_bc2_sqrt;
    template <class S> FO_HD void derive(const S &a) {
        w1 = fo_weight<T>::of(one_minus_beta1);
        inv_bc2_sqrt = (T)(1.0 / a.bc2_sqrt);
    }
};
template <typename T, bool AMSGRAD, int MODE = 0>
FO_HD void fo_adam_rule(T &p, T g, T &m, T &v, T &vmax, const fo_common<T> &c,
                        const fo_adam_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T s = v;
    if (AMSGRAD) { vmax = fo_max(vmax, v * h.vmax_scale); s = vmax; }
    /* torch divides by sqrt(1 - beta2^t); multiplying by its reciprocal (exact in double,
     * rounded once) leaves one division per element: the loop stays memory-bound */
    T denom = fo_sqrt(s + h.eps_root) * h.inv_bc2_sqrt + h.eps;
    p = p + h.neg_step * m / denom;
}
struct fo_adam : fo_algo_base<fo_adam_scalars, fo_adam_hp> {
    FO_DESCRIBE(FO_ADAM)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.w1.small); }
    FO_RULE(fo_adam_rule<T, FO_FLAG(fo_adam, F, amsgrad), M>(p, g, s[0], s[1], s[2], c, h))
};

/* ---- Adagrad ---------------------------------------------------------------------------
 * neg_clr: -lr / (1 + (t - 1) lr_decay); decay: 1 - lr*wd if decoupled, else 1;
 * eps_root: added under the root (Keras, optax), 0 for torch                                */
#define FO_ADAGRAD_SCALARS(X) X(neg_clr) X(eps) X(decay) X(eps_root)
#define FO_ADAGRAD_FLAGS(X)
#define FO_ADAGRAD_BUFFERS(X) X(sum, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_adagrad_scalars, FO_ADAGRAD_SCALARS)
template <typename T> struct fo_adagrad_hp : fo_hp_base<fo_adagrad_hp<T> > {
    FO_HP_FIELDS(FO_ADAGRAD)
};
template <typename T, int MODE = 0>
FO_HD void fo_adagrad_rule(T &p, T g, T &sum, const fo_common<T> &c, const fo_adagrad_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    sum = sum + g * g;
    T std_ = fo_sqrt(sum + h.eps_root) + h.eps;
    p = p + h.neg_clr * g / std_;
}
struct fo_adagrad : fo_algo_base<fo_adagrad_scalars, fo_adagrad_hp> {
    FO_DESCRIBE(FO_ADAGRAD)
    FO_RULE(fo_adagrad_rule<T, M>(p, g, s[0], c, h))
};

/* ---- RMSprop (centered, momentum) ---------------------------------------------------------
 * decay: 1 - lr*wd if decoupled, else 1; eps_root: added under the root (Keras, optax's
 * eps_in_sqrt), 0 for torch; vscale, mscale: bias corrections of square_avg and grad_avg
 * (optax's bias_correction), 1 for torch; grad_coef: the gradient's factor in the momentum
 * increment (1 for torch; lr with the lr inside the buffer, Keras and optax: then
 * neg_lr = -1); nesterov: 1 for optax's Nesterov step b' = inc + mu b                     */
#define FO_RMSPROP_SCALARS(X) \
    X(alpha) X(one_minus_alpha) X(eps) X(momentum) X(neg_lr) X(decay) X(eps_root) X(vscale) X(mscale) \
    X(grad_coef) X(nesterov)
#define FO_RMSPROP_FLAGS(X) X(centered) X(momentum)
#define FO_RMSPROP_BUFFERS(X) \
    X(square_avg, true, FO_NONNEG) X(grad_avg, centered, FO_SIGNED) X(momentum_buffer, momentum, FO_SIGNED)
FO_SCALAR_STRUCT(fo_rmsprop_scalars, FO_RMSPROP_SCALARS)
template <typename T> struct fo_rmsprop_hp : fo_hp_base<fo_rmsprop_hp<T> > {
    FO_HP_FIELDS(FO_RMSPROP)
    fo_weight<T> w;
    bool nest;
    template <class S> FO_HD void derive(const S &a) {
        w = fo_weight<T>::of(one_minus_alpha);
        nest = a.nesterov != 0.0;
    }
};
template <typename T, bool CENTERED, bool MOMENTUM, int MODE = 0>
FO_HD void fo_rmsprop_rule(T &p, T g, T &square_avg, T &grad_avg, T &buf,
                           const fo_common<T> &c, const fo_rmsprop_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    square_avg = square_avg * h.alpha + h.one_minus_alpha * g * g;
    T avg;
    if (CENTERED) {
        grad_avg = fo_lerp<MODE>(grad_avg, g, h.w);
        const T ga = grad_avg * h.mscale;
        avg = fo_sqrt(square_avg * h.vscale + T(-1) * ga * ga + h.eps_root);
    } else {
        avg = fo_sqrt(square_avg * h.vscale + h.eps_root);
    }
    avg = avg + h.eps;
    if (MOMENTUM) {
        const T inc = (h.grad_coef * g) / avg;
        buf = buf * h.momentum + inc;
        p = p + h.neg_lr * (h.nest ? inc + h.momentum * buf : buf);
    } else {
        p = p + h.neg_lr * g / avg;
    }
}
struct fo_rmsprop : fo_algo_base<fo_rmsprop_scalars, fo_rmsprop_hp> {
    FO_DESCRIBE(FO_RMSPROP)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned f, const hp<T> &h) {
        return FO_FLAG(fo_rmsprop, f, centered) ? FO_LERP(h.w.small) : 0;
    }
    FO_RULE(fo_rmsprop_rule<T, FO_FLAG(fo_rmsprop, F, centered), FO_FLAG(fo_rmsprop, F, momentum), M>(
        p, g, s[0], s[1], s[2], c, h))
};

/* ---- Adamax ------------------------------------------------------------------------------
 * neg_clr: -lr / (1 - beta1^t); decay: 1 - lr*wd if decoupled, else 1; eps: added to |g|
 * inside the max (torch, optax); eps_denom: added to u after it (Keras), 0 for torch       */
#define FO_ADAMAX_SCALARS(X) X(one_minus_beta1) X(beta2) X(eps) X(neg_clr) X(decay) X(eps_denom)
#define FO_ADAMAX_FLAGS(X)
#define FO_ADAMAX_BUFFERS(X) X(exp_avg, true, FO_SIGNED) X(exp_inf, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_adamax_scalars, FO_ADAMAX_SCALARS)
template <typename T> struct fo_adamax_hp : fo_hp_base<fo_adamax_hp<T> > {
    FO_HP_FIELDS(FO_ADAMAX)
    fo_weight<T> w1;
    template <class S> FO_HD void derive(const S &) { w1 = fo_weight<T>::of(one_minus_beta1); }
};
template <typename T, int MODE = 0>
FO_HD void fo_adamax_rule(T &p, T g, T &m, T &u, const fo_common<T> &c, const fo_adamax_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1);
    u = fo_max(u * h.beta2, fo_abs(g) + h.eps);
    p = p + h.neg_clr * m / (u + h.eps_denom);
}
struct fo_adamax : fo_algo_base<fo_adamax_scalars, fo_adamax_hp> {
    FO_DESCRIBE(FO_ADAMAX)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.w1.small); }
    FO_RULE(fo_adamax_rule<T, M>(p, g, s[0], s[1], c, h))
};

/* ---- NAdam -------------------------------------------------------------------------------
 * decay (decoupled); bc2: 1 - beta2^t; c_grad: -lr (1 - mu_t) / (1 - prod mu);
 * c_avg: -lr mu_{t+1} / (1 - prod mu * mu_{t+1})                                              */
#define FO_NADAM_SCALARS(X) X(decay) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(bc2) X(eps) X(c_grad) X(c_avg)
#define FO_NADAM_FLAGS(X)
#define FO_NADAM_BUFFERS(X) X(exp_avg, true, FO_SIGNED) X(exp_avg_sq, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_nadam_scalars, FO_NADAM_SCALARS)
template <typename T> struct fo_nadam_hp : fo_hp_base<fo_nadam_hp<T> > {
    FO_HP_FIELDS(FO_NADAM)
    fo_weight<T> w1;
    T inv_bc2;
    template <class S> FO_HD void derive(const S &a) {
        w1 = fo_weight<T>::of(one_minus_beta1);
        inv_bc2 = (T)(1.0 / a.bc2);
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_nadam_rule(T &p, T g, T &m, T &v, const fo_common<T> &c, const fo_nadam_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    /* one division per element instead of torch's three (v / bc2 and two addcdiv) */
    T r = T(1) / (fo_sqrt(v * h.inv_bc2) + h.eps);
    p = p + (h.c_grad * g) * r;
    p = p + (h.c_avg * m) * r;
}
struct fo_nadam : fo_algo_base<fo_nadam_scalars, fo_nadam_hp> {
    FO_DESCRIBE(FO_NADAM)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.w1.small); }
    FO_RULE(fo_nadam_rule<T, M>(p, g, s[0], s[1], c, h))
};

/* ---- RAdam -------------------------------------------------------------------------------
 * decay (decoupled); bc1: 1 - beta1^t; rectified: rho_t > 5 (1 or 0);
 * bc2_sqrt: sqrt(1 - beta2^t); rect: the rectification term r_t                              */
#define FO_RADAM_SCALARS(X) \
    X(decay) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(bc1) X(lr) X(rectified) X(bc2_sqrt) X(eps) X(rect)
#define FO_RADAM_FLAGS(X)
#define FO_RADAM_BUFFERS(X) X(exp_avg, true, FO_SIGNED) X(exp_avg_sq, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_radam_scalars, FO_RADAM_SCALARS)
template <typename T> struct fo_radam_hp : fo_hp_base<fo_radam_hp<T> > {
    FO_HP_FIELDS(FO_RADAM)
    fo_weight<T> w1;
    T inv_bc1;
    bool is_rectified;
    template <class S> FO_HD void derive(const S &a) {
        w1 = fo_weight<T>::of(one_minus_beta1);
        inv_bc1 = (T)(1.0 / a.bc1);
        is_rectified = a.rectified != 0.0;
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_radam_rule(T &p, T g, T &m, T &v, const fo_common<T> &c, const fo_radam_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T step = (m * h.inv_bc1) * h.lr;
    /* torch evaluates `float / tensor` as reciprocal(tensor) * float */
    if (h.is_rectified) step = step * ((T(1) / (fo_sqrt(v) + h.eps)) * h.bc2_sqrt) * h.rect;
    p = p + T(-1) * step;
}
struct fo_radam : fo_algo_base<fo_radam_scalars, fo_radam_hp> {
    FO_DESCRIBE(FO_RADAM)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.w1.small); }
    FO_RULE(fo_radam_rule<T, M>(p, g, s[0], s[1], c, h))
};

/* ---- Adadelta ------------------------------------------------------------------------------ */
/* decay: 1 - lr*wd if decoupled, else 1 */
#define FO_ADADELTA_SCALARS(X) X(rho) X(one_minus_rho) X(eps) X(neg_lr) X(decay)
#define FO_ADADELTA_FLAGS(X)
#define FO_ADADELTA_BUFFERS(X) X(square_avg, true, FO_NONNEG) X(acc_delta, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_adadelta_scalars, FO_ADADELTA_SCALARS)
template <typename T> struct fo_adadelta_hp : fo_hp_base<fo_adadelta_hp<T> > {
    FO_HP_FIELDS(FO_ADADELTA)
};
template <typename T, int MODE = 0>
FO_HD void fo_adadelta_rule(T &p, T g, T &square_avg, T &acc_delta, const fo_common<T> &c,
                            const fo_adadelta_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    square_avg = square_avg * h.rho + h.one_minus_rho * g * g;
    T std_sq = square_avg + h.eps;
    T delta = fo_sqrt((acc_delta + h.eps) / std_sq) * g;   /* one sqrt: sqrt(a) / sqrt(b) = sqrt(a / b) */
    acc_delta = acc_delta * h.rho + h.one_minus_rho * delta * delta;
    p = p + h.neg_lr * delta;
}
struct fo_adadelta : fo_algo_base<fo_adadelta_scalars, fo_adadelta_hp> {
    FO_DESCRIBE(FO_ADADELTA)
    FO_RULE(fo_adadelta_rule<T, M>(p, g, s[0], s[1], c, h))
};

/* ---- Rprop ----------------------------------------------------------------------------------- */
/* delayed: 1 for optax.rprop's order (move by the step size and sign of the step before,
 * keep the step size where there is no sign), 0 for torch's                                  */
#define FO_RPROP_SCALARS(X) X(etaminus) X(etaplus) X(step_size_min) X(step_size_max) X(delayed)
#define FO_RPROP_FLAGS(X)
#define FO_RPROP_BUFFERS(X) X(prev, true, FO_SIGNED) X(step_size, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_rprop_scalars, FO_RPROP_SCALARS)
template <typename T> struct fo_rprop_hp : fo_hp_base<fo_rprop_hp<T> > {
    FO_HP_FIELDS(FO_RPROP)
    bool optax;
    template <class S> FO_HD void derive(const S &a) { optax = a.delayed != 0.0; }
};
/* torch's _single_tensor_rprop, element by element: the sign of g * prev (the product, as
 * torch computes it, so an underflow to 0 counts as "no sign") picks the factor of the
 * step size, which is clamped like torch.clamp_ (NaN stays NaN; min > max gives max); the
 * gradient is zeroed where the sign flipped; every product is exact except step * eta, so
 * the bits equal torch's.  NaN: torch.sign(NaN) is 0, so torch skips a NaN gradient
 * element (step size and parameter unchanged, prev = NaN); here a NaN g * prev is itself
 * the factor and fo_signum keeps NaN, so the step size, the parameter and prev turn NaN,
 * as a NaN gradient does to every other optimizer (see Rprop's docstring).
 * optax (h.optax): prev holds g_{t-1} (0 after a sign change), so optax's prev_updates is
 * step_size * sign(prev); the parameter moves by that (0 where the sign flipped) before the
 * step size changes, and a step size with no sign (s == 0) is kept unclamped, as optax.    */
template <typename T, int MODE = 0>
FO_HD void fo_rprop_rule(T &p, T g, T &prev, T &step_size, const fo_common<T> &c,
                         const fo_rprop_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    const T s = g * prev;
    const T eta = s > T(0) ? h.etaplus : (s < T(0) ? h.etaminus : (s == T(0) ? T(1) : s));
    const T old = step_size;
    T st = old * eta;
    st = st < h.step_size_min ? h.step_size_min : st;
    st = st > h.step_size_max ? h.step_size_max : st;
    if (h.optax && s == T(0)) st = old;
    step_size = st;
    const T moved = h.optax ? (s < T(0) ? T(0) : fo_signum(prev) * old) : T(0);
    if (s < T(0)) g = T(0);
    p = p - (h.optax ? moved : fo_signum(g) * st);
    prev = g;
}
struct fo_rprop : fo_algo_base<fo_rprop_scalars, fo_rprop_hp> {
    FO_DESCRIBE(FO_RPROP)
    FO_RULE(fo_rprop_rule<T, M>(p, g, s[0], s[1], c, h))
};

/* ---- Lion ------------------------------------------------------------------------------------
 * decay: 1 - lr * weight_decay                                                                   */
#define FO_LION_SCALARS(X) X(decay) X(beta1) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(neg_lr)
#define FO_LION_FLAGS(X)
#define FO_LION_BUFFERS(X) X(exp_avg, true, FO_SIGNED)
FO_SCALAR_STRUCT(fo_lion_scalars, FO_LION_SCALARS)
template <typename T> struct fo_lion_hp : fo_hp_base<fo_lion_hp<T> > {
    FO_HP_FIELDS(FO_LION)
};
/* optax.lion / lion-pytorch: decoupled decay, then the sign of the beta1 interpolation
 * (beta1 m + (1 - beta1) g, a multiply-add like both references, not torch.lerp), then the
 * beta2 momentum.  A NaN in c makes the parameter NaN (fo_signum), as jnp.sign does.      */
template <typename T, int MODE = 0>
FO_HD void fo_lion_rule(T &p, T g, T &m, const fo_common<T> &c, const fo_lion_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    const T u = m * h.beta1 + h.one_minus_beta1 * g;
    p = p + h.neg_lr * fo_signum(u);
    m = m * h.beta2 + h.one_minus_beta2 * g;
}
struct fo_lion : fo_algo_base<fo_lion_scalars, fo_lion_hp> {
    FO_DESCRIBE(FO_LION)
    FO_RULE(fo_lion_rule<T, M>(p, g, s[0], c, h))
};

/* ---- ASGD (averaged SGD) ---------------------------------------------------------------------
 * decay: 1 - lambd * eta_t; neg_eta: -eta_t; mu: mu_t; copy: 1 when mu_t == 1 (ax = p, as
 * torch copies instead of averaging)                                                              */
#define FO_ASGD_SCALARS(X) X(decay) X(neg_eta) X(mu) X(copy)
#define FO_ASGD_FLAGS(X)
#define FO_ASGD_BUFFERS(X) X(ax, true, FO_SIGNED)
FO_SCALAR_STRUCT(fo_asgd_scalars, FO_ASGD_SCALARS)
template <typename T> struct fo_asgd_hp : fo_hp_base<fo_asgd_hp<T> > {
    FO_HP_FIELDS(FO_ASGD)
    bool copies;
    template <class S> FO_HD void derive(const S &a) { copies = a.copy != 0.0; }
};
/* torch's _single_tensor_asgd: decay, the SGD step with the decayed eta, then the average */
template <typename T, int MODE = 0>
FO_HD void fo_asgd_rule(T &p, T g, T &ax, const fo_common<T> &c, const fo_asgd_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    p = p + h.neg_eta * g;
    ax = h.copies ? p : ax + (p - ax) * h.mu;
}
struct fo_asgd : fo_algo_base<fo_asgd_scalars, fo_asgd_hp> {
    FO_DESCRIBE(FO_ASGD)
    FO_RULE(fo_asgd_rule<T, M>(p, g, s[0], c, h))
};

/* ---- AdaBelief (pytorch_optimizer.AdaBelief) --------------------------------------------
 * decay: 1 - lr*wd (or 1 - wd, fixed_decay) when decoupled, else 1; bc2_sqrt: sqrt(1 - beta2^t)
 * (1 when rectified: the rectified step has no second bias correction); neg_step: -lr r_t /
 * (1 - beta1^t) (r_t = 1 unless rectify; 0 when rectify skips the step); adaptive: 1 divides
 * by the denominator, 0 takes the SGD step (rectify below the n_sma threshold)             */
#define FO_ADABELIEF_SCALARS(X) \
    X(decay) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(eps) X(bc2_sqrt) X(neg_step) X(adaptive)
#define FO_ADABELIEF_FLAGS(X) X(ams_bound)
#define FO_ADABELIEF_BUFFERS(X) \
    X(exp_avg, true, FO_SIGNED) X(exp_avg_var, true, FO_NONNEG) X(max_exp_avg_var, ams_bound, FO_NONNEG)
FO_SCALAR_STRUCT(fo_adabelief_scalars, FO_ADABELIEF_SCALARS)
template <typename T> struct fo_adabelief_hp : fo_hp_base<fo_adabelief_hp<T> > {
    FO_HP_FIELDS(FO_ADABELIEF)
    fo_weight<T> w1;
    T inv_bc2_sqrt;
    bool divides;
    template <class S> FO_HD void derive(const S &a) {
        w1 = fo_weight<T>::of(one_minus_beta1);
        inv_bc2_sqrt = (T)(1.0 / a.bc2_sqrt);
        divides = a.adaptive != 0.0;
    }
};
/* pytorch_optimizer's _step_per_param: the belief s = EMA of (g - m)^2, plus eps (added to
 * the state, as there), the AMSBound maximum, then eps again on the corrected root     */
template <typename T, bool AMS, int MODE = 0>
FO_HD void fo_adabelief_rule(T &p, T g, T &m, T &v, T &vmax, const fo_common<T> &c,
                             const fo_adabelief_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1);
    const T r = g - m;
    v = v * h.beta2 + h.one_minus_beta2 * r * r;
    v = v + h.eps;
    T s = v;
    if (AMS) { vmax = fo_max(vmax, v); s = vmax; }
    if (h.divides) {
        T denom = fo_sqrt(s) * h.inv_bc2_sqrt + h.eps;
        p = p + h.neg_step * m / denom;
    } else {
        p = p + h.neg_step * m;
    }
}
struct fo_adabelief : fo_algo_base<fo_adabelief_scalars, fo_adabelief_hp> {
    FO_DESCRIBE(FO_ADABELIEF)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.w1.small); }
    FO_RULE(fo_adabelief_rule<T, FO_FLAG(fo_adabelief, F, ams_bound), M>(p, g, s[0], s[1], s[2], c, h))
};

/* ---- Yogi (pytorch_optimizer.Yogi) ------------------------------------------------------
 * decay as AdaBelief; bc2_sqrt: sqrt(1 - beta2^t);
 * neg_step: -lr / (1 - beta1^t)                                                             */
#define FO_YOGI_SCALARS(X) X(decay) X(one_minus_beta1) X(one_minus_beta2) X(bc2_sqrt) X(eps) X(neg_step)
#define FO_YOGI_FLAGS(X)
#define FO_YOGI_BUFFERS(X) X(exp_avg, true, FO_SIGNED) X(exp_avg_sq, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_yogi_scalars, FO_YOGI_SCALARS)
template <typename T> struct fo_yogi_hp : fo_hp_base<fo_yogi_hp<T> > {
    FO_HP_FIELDS(FO_YOGI)
    fo_weight<T> w1;
    T inv_bc2_sqrt;
    template <class S> FO_HD void derive(const S &a) {
        w1 = fo_weight<T>::of(one_minus_beta1);
        inv_bc2_sqrt = (T)(1.0 / a.bc2_sqrt);
    }
};
/* v <- v - (1 - beta2) sign(v - g^2) g^2: the bits of pytorch_optimizer's addcmul with value
 * -(1 - beta2) (negating a product is exact), computed as sign(v - g^2) ((1 - beta2) g^2)
 * (the same bits: the sign factor is +-1, +-0 or NaN) by fo_signum_times, which keeps a NaN */
template <typename T, int MODE = 0>
FO_HD void fo_yogi_rule(T &p, T g, T &m, T &v, const fo_common<T> &c, const fo_yogi_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1);
    const T g2 = g * g;
    v = v - fo_signum_times(v - g2, h.one_minus_beta2 * g2);
    T denom = fo_sqrt(v) * h.inv_bc2_sqrt + h.eps;
    p = p + h.neg_step * m / denom;
}
struct fo_yogi : fo_algo_base<fo_yogi_scalars, fo_yogi_hp> {
    FO_DESCRIBE(FO_YOGI)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.w1.small); }
    FO_RULE(fo_yogi_rule<T, M>(p, g, s[0], s[1], c, h))
};

/* ---- Adan (pytorch_optimizer.Adan) ------------------------------------------------------
 * decay: 1 - lr*wd when decoupled, else 1; post: 1 + lr*wd when not decoupled (the
 * parameter is divided by it after the step), else 1; bc3_sqrt: sqrt(1 - beta3^t);
 * neg_step: -lr / (1 - beta1^t); neg_diff_step: -lr beta2 / (1 - beta2^t); first: 1 on
 * the step that creates previous_grad (the difference is 0 then); eps_root: added under the
 * root (optax's eps_root, in units of the raw v: eps_root * (1 - beta3^t)), 0 otherwise.
 * Flag proximal: the division by post happens (coupled decay); without it post is 1 and
 * the loop skips the divide, which is 1 of its 4 sqrt/div per element (bench/README.md) */
#define FO_ADAN_SCALARS(X) \
    X(decay) X(post) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(beta3) X(one_minus_beta3) X(bc3_sqrt) \
    X(eps) X(neg_step) X(neg_diff_step) X(first) X(eps_root)
#define FO_ADAN_FLAGS(X) X(proximal)
#define FO_ADAN_BUFFERS(X) \
    X(exp_avg, true, FO_SIGNED) X(exp_avg_sq, true, FO_NONNEG) X(exp_avg_diff, true, FO_SIGNED) X(previous_grad, true, FO_SIGNED)
FO_SCALAR_STRUCT(fo_adan_scalars, FO_ADAN_SCALARS)
template <typename T> struct fo_adan_hp : fo_hp_base<fo_adan_hp<T> > {
    FO_HP_FIELDS(FO_ADAN)
    fo_weight<T> w1, w2;
    T inv_bc3_sqrt;
    bool first_step;
    template <class S> FO_HD void derive(const S &a) {
        w1 = fo_weight<T>::of(one_minus_beta1);
        w2 = fo_weight<T>::of(one_minus_beta2);
        inv_bc3_sqrt = (T)(1.0 / a.bc3_sqrt);
        first_step = a.first != 0.0;
    }
};
/* previous_grad holds -g_{t-1}, as pytorch_optimizer keeps it, so d = previous_grad + g */
template <typename T, bool PROXIMAL, int MODE = 0>
FO_HD void fo_adan_rule(T &p, T g, T &m, T &v, T &n, T &prev, const fo_common<T> &c, const fo_adan_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    T d = h.first_step ? T(0) : prev + g;
    m = fo_lerp<MODE>(m, g, h.w1);
    n = fo_lerp<MODE>(n, d, h.w2);
    d = d * h.beta2 + g;
    v = v * h.beta3 + h.one_minus_beta3 * d * d;
    const T denom = fo_sqrt(v + h.eps_root) * h.inv_bc3_sqrt + h.eps;
    p = p * h.decay;
    p = p + h.neg_step * m / denom;
    p = p + h.neg_diff_step * n / denom;
    if (PROXIMAL) p = p / h.post;
    prev = -g;
}
struct fo_adan : fo_algo_base<fo_adan_scalars, fo_adan_hp> {
    FO_DESCRIBE(FO_ADAN)
    enum { LERP = 1 };
    /* one loop form for both lerps only when their weights fall on the same side of 0.5 */
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) {
        return h.w1.small == h.w2.small ? FO_LERP(h.w1.small) : 0;
    }
    FO_RULE(fo_adan_rule<T, FO_FLAG(fo_adan, F, proximal), M>(p, g, s[0], s[1], s[2], s[3], c, h))
};

/* ---- FTRL-Proximal (keras.optimizers.Ftrl) -----------------------------------------------
 * decay: 1 - lr*wd (Keras's decoupled weight_decay); shrink2: 2 * l2_shrinkage; neg_power:
 * -learning_rate_power; lr; two_l2: 2 (l2 + beta / (2 lr)); l1_strength: l1.
 * Flag half_power: learning_rate_power == -0.5, the powers are square roots               */
#define FO_FTRL_SCALARS(X) X(decay) X(shrink2) X(neg_power) X(lr) X(two_l2) X(l1_strength)
#define FO_FTRL_FLAGS(X) X(half_power)
#define FO_FTRL_BUFFERS(X) X(accumulator, true, FO_NONNEG) X(linear, true, FO_SIGNED)
FO_SCALAR_STRUCT(fo_ftrl_scalars, FO_FTRL_SCALARS)
template <typename T> struct fo_ftrl_hp : fo_hp_base<fo_ftrl_hp<T> > {
    FO_HP_FIELDS(FO_FTRL)
};
FO_HD float fo_pow(float x, float y) { return powf(x, y); }
FO_HD double fo_pow(double x, double y) { return pow(x, y); }
/* Keras's update_step, element by element, its operations in its order (the divisions by lr
 * stay divisions: z accumulates differences of large terms, which float32 makes sensitive) */
template <typename T, bool HALF, int MODE = 0>
FO_HD void fo_ftrl_rule(T &p, T g, T &acc, T &lin, const fo_common<T> &c, const fo_ftrl_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    const T gs = g + h.shrink2 * p;
    const T na = acc + g * g;
    const T pn = HALF ? fo_sqrt(na) : fo_pow(na, h.neg_power);
    const T po = HALF ? fo_sqrt(acc) : fo_pow(acc, h.neg_power);
    lin = lin + (gs - (pn - po) / h.lr * p);
    const T quad = pn / h.lr + h.two_l2;
    const T lc = lin > h.l1_strength ? h.l1_strength : (lin < -h.l1_strength ? -h.l1_strength : lin);
    p = (lc - lin) / quad;
    acc = na;
}
struct fo_ftrl : fo_algo_base<fo_ftrl_scalars, fo_ftrl_hp> {
    FO_DESCRIBE(FO_FTRL)
    FO_RULE(fo_ftrl_rule<T, FO_FLAG(fo_ftrl, F, half_power), M>(p, g, s[0], s[1], c, h))
};

/* ---- Schedule-free AdamW (schedulefree.AdamWScheduleFree) ---------------------------------
 * The parameter holds y (train mode).  bc2: 1 - beta2^t; wd: weight decay on y, added to
 * the normalized gradient; ckp1: c_{t+1} = w_t / sum w; c_y: lr (beta1 (1 - ckp1) - 1);
 * neg_lr: -lr (lr with warmup)                                                                */
#define FO_SF_ADAMW_SCALARS(X) X(beta2) X(one_minus_beta2) X(bc2) X(eps) X(wd) X(ckp1) X(c_y) X(neg_lr)
#define FO_SF_ADAMW_FLAGS(X)
#define FO_SF_ADAMW_BUFFERS(X) X(z, true, FO_SIGNED) X(exp_avg_sq, true, FO_NONNEG)
FO_SCALAR_STRUCT(fo_sf_adamw_scalars, FO_SF_ADAMW_SCALARS)
template <typename T> struct fo_sf_adamw_hp : fo_hp_base<fo_sf_adamw_hp<T> > {
    FO_HP_FIELDS(FO_SF_ADAMW)
    fo_weight<T> wc;
    T inv_bc2;
    template <class S> FO_HD void derive(const S &a) {
        wc = fo_weight<T>::of(ckp1);
        inv_bc2 = (T)(1.0 / a.bc2);
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_sf_adamw_rule(T &y, T g, T &z, T &v, const fo_common<T> &c, const fo_sf_adamw_hp<T> &h) {
    g = fo_grad<MODE>(g, y, c);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T gn = g / (fo_sqrt(v * h.inv_bc2) + h.eps);
    if (h.wd != T(0)) gn = gn + h.wd * y;
    y = fo_lerp<MODE>(y, z, h.wc);
    y = y + h.c_y * gn;
    z = z + h.neg_lr * gn;
}
struct fo_sf_adamw : fo_algo_base<fo_sf_adamw_scalars, fo_sf_adamw_hp> {
    FO_DESCRIBE(FO_SF_ADAMW)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.wc.small); }
    FO_RULE(fo_sf_adamw_rule<T, M>(p, g, s[0], s[1], c, h))
};

/* ---- Schedule-free SGD (schedulefree.SGDScheduleFree) ---------------------------------------
 * ckp1, neg_lr as above; c_y: lr (momentum (1 - ckp1) - 1); weight decay is the common
 * coupled one (g + wd y, as there)                                                             */
#define FO_SF_SGD_SCALARS(X) X(ckp1) X(c_y) X(neg_lr)
#define FO_SF_SGD_FLAGS(X)
#define FO_SF_SGD_BUFFERS(X) X(z, true, FO_SIGNED)
FO_SCALAR_STRUCT(fo_sf_sgd_scalars, FO_SF_SGD_SCALARS)
template <typename T> struct fo_sf_sgd_hp : fo_hp_base<fo_sf_sgd_hp<T> > {
    FO_HP_FIELDS(FO_SF_SGD)
    fo_weight<T> wc;
    template <class S> FO_HD void derive(const S &) { wc = fo_weight<T>::of(ckp1); }
};
template <typename T, int MODE = 0>
FO_HD void fo_sf_sgd_rule(T &y, T g, T &z, const fo_common<T> &c, const fo_sf_sgd_hp<T> &h) {
    g = fo_grad<MODE>(g, y, c);
    y = fo_lerp<MODE>(y, z, h.wc);
    y = y + h.c_y * g;
    z = z + h.neg_lr * g;
}
struct fo_sf_sgd : fo_algo_base<fo_sf_sgd_scalars, fo_sf_sgd_hp> {
    FO_DESCRIBE(FO_SF_SGD)
    enum { LERP = 1 };
    template <typename T> FO_HD static int lerp(unsigned, const hp<T> &h) { return FO_LERP(h.wc.small); }
    FO_RULE(fo_sf_sgd_rule<T, M>(p, g, s[0], c, h))
};

/* ---- the one algorithm list ------------------------------------------------------------
 * FO_ALGOS(X) calls X(name, LISTS) for every algorithm, in the order of the native ids
 * (LISTS is the prefix of its FO_<ALGO>_SCALARS / _FLAGS / _BUFFERS lists).  cpu.h
 * builds the CPU dispatch table from it, kernels.cu the CUDA entry points, spec.h the
 * names the Python layer checks its specs against.  Adding an element-wise optimizer:
 * its section above (lists, hp, rule, descriptor) and its name here.                     */
#define FO_ALGOS(X)                                                                       \
    X(sgd, FO_SGD) X(adam, FO_ADAM) X(adagrad, FO_ADAGRAD) X(rmsprop, FO_RMSPROP)           \
    X(adamax, FO_ADAMAX) X(nadam, FO_NADAM) X(radam, FO_RADAM) X(adadelta, FO_ADADELTA)      \
    X(rprop, FO_RPROP) X(lion, FO_LION) X(asgd, FO_ASGD)                                 \
    X(adabelief, FO_ADABELIEF) X(yogi, FO_YOGI) X(adan, FO_ADAN) X(ftrl, FO_FTRL) X(sf_adamw, FO_SF_ADAMW) \
    X(sf_sgd, FO_SF_SGD)

#endif /* FUSEDOPTIM_RULES_H */
