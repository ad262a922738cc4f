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
 *  - A hyperparameter block arrives as `const double *h`; the order of its entries is
 *    the order of the load() lines below and of `_hyper()` in the Python class.
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

/* ---- the common block: h[0..4] of every hyperparameter block ---------------------
 * h[0] gscale: gradient multiplier = (-1 if maximize) * global-norm clip coefficient
 *      * loss-scale / accumulation factor (* per-tensor clip coefficient, by the driver)
 * h[1] weight_decay: coupled L2, g += wd * p (skipped when 0, so an Inf p can't poison g)
 * h[2] l1: L1 penalty, g += l1 * sign(p) (skipped when 0)
 * h[3] ema_weight: 1 - ema decay; with an EMA buffer, ema = lerp(ema, p_new, ema_weight)
 * h[4] clip_value: raw gradients are clamped to [-clip_value, clip_value] before the
 *      scale (Inf disables it; NaN gradients stay NaN, like torch.clamp)
 * Algorithm-specific entries follow at h[FO_HP_COMMON].                               */
#define FO_HP_COMMON 5
template <typename T> struct fo_common {
    T gscale, wd, l1, ema_w, ema_rest, clip;
    bool ema_small;
    /* true when the clip value, coupled decay and L1 are all off (FO_PLAIN applies) */
    FO_HD bool plain() const { return !(clip < fo_inf<T>()) && wd == T(0) && l1 == T(0); }
    FO_HD static fo_common load(const double *h) {
        fo_common c;
        c.gscale = (T)h[0];
        c.wd = (T)h[1];
        c.l1 = (T)h[2];
        c.ema_w = (T)h[3];
        c.ema_rest = T(1) - c.ema_w;
        c.ema_small = fo_abs(c.ema_w) < T(0.5);
        c.clip = (T)h[4];
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

/* ---- SGD (momentum, dampening, nesterov) -------------------------------------- */
/* a = h + FO_HP_COMMON: lr, momentum, 1 - dampening, nesterov, first                 */
template <typename T> struct fo_sgd_hp {
    T neg_lr, momentum, one_minus_dampening;
    bool nesterov, first;
    FO_HD static fo_sgd_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_sgd_hp s;
        s.neg_lr = (T)(-a[0]);
        s.momentum = (T)a[1];
        s.one_minus_dampening = (T)a[2];
        s.nesterov = a[3] != 0.0;
        s.first = a[4] != 0.0;
        return s;
    }
};
template <typename T, bool MOMENTUM, int MODE = 0>
FO_HD void fo_sgd_rule(T &p, T g, T &buf, const fo_common<T> &c, const fo_sgd_hp<T> &h) {
    T d = fo_grad<MODE>(g, p, c);
    if (MOMENTUM) {
        buf = h.first ? d : buf * h.momentum + h.one_minus_dampening * d;
        d = h.nesterov ? d + h.momentum * buf : buf;
    }
    p = p + h.neg_lr * d;
}

/* ---- Adam / AdamW / AMSGrad ----------------------------------------------------- */
/* a: decay (1 - lr*wd if decoupled, else 1), 1 - beta1, beta2, 1 - beta2,
 *    sqrt(1 - beta2^t), eps, -lr / (1 - beta1^t), amsgrad                              */
template <typename T> struct fo_adam_hp {
    T decay, w1, one_minus_w1, beta2, one_minus_beta2, inv_bc2_sqrt, eps, neg_step;
    bool small_w1, amsgrad;
    FO_HD static fo_adam_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_adam_hp s;
        s.decay = (T)a[0];
        s.w1 = (T)a[1];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)a[2];
        s.one_minus_beta2 = (T)a[3];
        s.inv_bc2_sqrt = (T)(1.0 / a[4]);
        s.eps = (T)a[5];
        s.neg_step = (T)a[6];
        s.amsgrad = a[7] != 0.0;
        return s;
    }
};
template <typename T, bool AMSGRAD, int MODE = 0>
FO_HD void fo_adam_rule(T &p, T g, T &m, T &v, T &vmax, const fo_common<T> &c,
                        const fo_adam_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1, h.one_minus_w1, h.small_w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T s = v;
    if (AMSGRAD) { vmax = fo_max(vmax, v); s = vmax; }
    /* torch divides by sqrt(1 - beta2^t); multiplying by its reciprocal (exact in double,
     * rounded once) leaves one division per element: the loop stays memory-bound */
    T denom = fo_sqrt(s) * h.inv_bc2_sqrt + h.eps;
    p = p + h.neg_step * m / denom;
}

/* ---- Adagrad ---------------------------------------------------------------------- */
/* a: -lr / (1 + (t - 1) lr_decay), eps                                                 */
template <typename T> struct fo_adagrad_hp {
    T neg_clr, eps;
    FO_HD static fo_adagrad_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_adagrad_hp s;
        s.neg_clr = (T)a[0];
        s.eps = (T)a[1];
        return s;
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_adagrad_rule(T &p, T g, T &sum, const fo_common<T> &c, const fo_adagrad_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    sum = sum + g * g;
    T std_ = fo_sqrt(sum) + h.eps;
    p = p + h.neg_clr * g / std_;
}

/* ---- RMSprop (centered, momentum) ------------------------------------------------- */
/* a: alpha, 1 - alpha, eps, momentum, -lr, centered, has momentum                       */
template <typename T> struct fo_rmsprop_hp {
    T alpha, one_minus_alpha, w_rest, eps, momentum, neg_lr;
    bool small_w, centered, has_momentum;
    FO_HD static fo_rmsprop_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_rmsprop_hp s;
        s.alpha = (T)a[0];
        s.one_minus_alpha = (T)a[1];
        s.w_rest = T(1) - s.one_minus_alpha;
        s.small_w = fo_abs(s.one_minus_alpha) < T(0.5);
        s.eps = (T)a[2];
        s.momentum = (T)a[3];
        s.neg_lr = (T)a[4];
        s.centered = a[5] != 0.0;
        s.has_momentum = a[6] != 0.0;
        return s;
    }
};
template <typename T, bool CENTERED, bool MOMENTUM, int MODE = 0>
FO_HD void fo_rmsprop_rule(T &p, T g, T &square_avg, T &grad_avg, T &buf,
                           const fo_common<T> &c, const fo_rmsprop_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    square_avg = square_avg * h.alpha + h.one_minus_alpha * g * g;
    T avg;
    if (CENTERED) {
        grad_avg = fo_lerp<MODE>(grad_avg, g, h.one_minus_alpha, h.w_rest, h.small_w);
        avg = fo_sqrt(square_avg + T(-1) * grad_avg * grad_avg);
    } else {
        avg = fo_sqrt(square_avg);
    }
    avg = avg + h.eps;
    if (MOMENTUM) {
        buf = buf * h.momentum + g / avg;
        p = p + h.neg_lr * buf;
    } else {
        p = p + h.neg_lr * g / avg;
    }
}

/* ---- Adamax ------------------------------------------------------------------------ */
/* a: 1 - beta1, beta2, eps, -lr / (1 - beta1^t)                                        */
template <typename T> struct fo_adamax_hp {
    T w1, one_minus_w1, beta2, eps, neg_clr;
    bool small_w1;
    FO_HD static fo_adamax_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_adamax_hp s;
        s.w1 = (T)a[0];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)a[1];
        s.eps = (T)a[2];
        s.neg_clr = (T)a[3];
        return s;
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_adamax_rule(T &p, T g, T &m, T &u, const fo_common<T> &c, const fo_adamax_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    m = fo_lerp<MODE>(m, g, h.w1, h.one_minus_w1, h.small_w1);
    u = fo_max(u * h.beta2, fo_abs(g) + h.eps);
    p = p + h.neg_clr * m / u;
}

/* ---- NAdam -------------------------------------------------------------------------- */
/* a: decay (decoupled), 1 - beta1, beta2, 1 - beta2, 1 - beta2^t, eps,
 *    -lr (1 - mu_t) / (1 - prod mu), -lr mu_{t+1} / (1 - prod mu * mu_{t+1})           */
template <typename T> struct fo_nadam_hp {
    T decay, w1, one_minus_w1, beta2, one_minus_beta2, inv_bc2, eps, c_grad, c_avg;
    bool small_w1;
    FO_HD static fo_nadam_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_nadam_hp s;
        s.decay = (T)a[0];
        s.w1 = (T)a[1];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)a[2];
        s.one_minus_beta2 = (T)a[3];
        s.inv_bc2 = (T)(1.0 / a[4]);
        s.eps = (T)a[5];
        s.c_grad = (T)a[6];
        s.c_avg = (T)a[7];
        return s;
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_nadam_rule(T &p, T g, T &m, T &v, const fo_common<T> &c, const fo_nadam_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1, h.one_minus_w1, h.small_w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    /* one division per element instead of torch's three (v / bc2 and two addcdiv) */
    T r = T(1) / (fo_sqrt(v * h.inv_bc2) + h.eps);
    p = p + (h.c_grad * g) * r;
    p = p + (h.c_avg * m) * r;
}

/* ---- RAdam -------------------------------------------------------------------------- */
/* a: decay (decoupled), 1 - beta1, beta2, 1 - beta2, 1 - beta1^t, lr,
 *    rectified (rho_t > 5), sqrt(1 - beta2^t), eps, rect                                */
template <typename T> struct fo_radam_hp {
    T decay, w1, one_minus_w1, beta2, one_minus_beta2, inv_bc1, lr, bc2_sqrt, eps, rect;
    bool small_w1, rectified;
    FO_HD static fo_radam_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_radam_hp s;
        s.decay = (T)a[0];
        s.w1 = (T)a[1];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)a[2];
        s.one_minus_beta2 = (T)a[3];
        s.inv_bc1 = (T)(1.0 / a[4]);
        s.lr = (T)a[5];
        s.rectified = a[6] != 0.0;
        s.bc2_sqrt = (T)a[7];
        s.eps = (T)a[8];
        s.rect = (T)a[9];
        return s;
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_radam_rule(T &p, T g, T &m, T &v, const fo_common<T> &c, const fo_radam_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    p = p * h.decay;
    m = fo_lerp<MODE>(m, g, h.w1, h.one_minus_w1, h.small_w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T step = (m * h.inv_bc1) * h.lr;
    /* torch evaluates `float / tensor` as reciprocal(tensor) * float */
    if (h.rectified) step = step * ((T(1) / (fo_sqrt(v) + h.eps)) * h.bc2_sqrt) * h.rect;
    p = p + T(-1) * step;
}

/* ---- Adadelta ---------------------------------------------------------------------- */
/* a: rho, 1 - rho, eps, -lr                                                             */
template <typename T> struct fo_adadelta_hp {
    T rho, one_minus_rho, eps, neg_lr;
    FO_HD static fo_adadelta_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_adadelta_hp s;
        s.rho = (T)a[0];
        s.one_minus_rho = (T)a[1];
        s.eps = (T)a[2];
        s.neg_lr = (T)a[3];
        return s;
    }
};
template <typename T, int MODE = 0>
FO_HD void fo_adadelta_rule(T &p, T g, T &square_avg, T &acc_delta, const fo_common<T> &c,
                            const fo_adadelta_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    square_avg = square_avg * h.rho + h.one_minus_rho * g * g;
    T std_sq = square_avg + h.eps;
    T delta = fo_sqrt((acc_delta + h.eps) / std_sq) * g;   /* one sqrt: sqrt(a) / sqrt(b) = sqrt(a / b) */
    acc_delta = acc_delta * h.rho + h.one_minus_rho * delta * delta;
    p = p + h.neg_lr * delta;
}

/* ---- Rprop ---------------------------------------------------------------------------- */
/* a: etaminus, etaplus, step_size_min, step_size_max                                      */
template <typename T> struct fo_rprop_hp {
    T etaminus, etaplus, step_min, step_max;
    FO_HD static fo_rprop_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_rprop_hp s;
        s.etaminus = (T)a[0];
        s.etaplus = (T)a[1];
        s.step_min = (T)a[2];
        s.step_max = (T)a[3];
        return s;
    }
};
/* torch's _single_tensor_rprop, element by element: the sign of g * prev (the product, as
 * torch computes it, so an underflow to 0 counts as "no sign") picks the factor of the
 * step size, which is clamped like torch.clamp_ (NaN stays NaN; min > max gives max); the
 * gradient is zeroed where the sign flipped; every product is exact except step * eta, so
 * the bits equal torch's.  NaN: torch.sign(NaN) is 0, so torch skips a NaN gradient
 * element (step size and parameter unchanged, prev = NaN); here a NaN g * prev is itself
 * the factor and fo_signum keeps NaN, so the step size, the parameter and prev turn NaN,
 * as a NaN gradient does to every other optimizer (see Rprop's docstring).                 */
template <typename T, int MODE = 0>
FO_HD void fo_rprop_rule(T &p, T g, T &prev, T &step_size, const fo_common<T> &c,
                         const fo_rprop_hp<T> &h) {
    g = fo_grad<MODE>(g, p, c);
    const T s = g * prev;
    const T eta = s > T(0) ? h.etaplus : (s < T(0) ? h.etaminus : (s == T(0) ? T(1) : s));
    T st = step_size * eta;
    st = st < h.step_min ? h.step_min : st;
    st = st > h.step_max ? h.step_max : st;
    step_size = st;
    if (s < T(0)) g = T(0);
    p = p - fo_signum(g) * st;
    prev = g;
}

/* ---- Lion ------------------------------------------------------------------------------ */
/* a: decay (1 - lr * weight_decay), beta1, 1 - beta1, beta2, 1 - beta2, -lr                */
template <typename T> struct fo_lion_hp {
    T decay, beta1, one_minus_beta1, beta2, one_minus_beta2, neg_lr;
    FO_HD static fo_lion_hp load(const double *h) {
        const double *a = h + FO_HP_COMMON;
        fo_lion_hp s;
        s.decay = (T)a[0];
        s.beta1 = (T)a[1];
        s.one_minus_beta1 = (T)a[2];
        s.beta2 = (T)a[3];
        s.one_minus_beta2 = (T)a[4];
        s.neg_lr = (T)a[5];
        return s;
    }
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

#endif /* FUSEDOPTIM_RULES_H */
