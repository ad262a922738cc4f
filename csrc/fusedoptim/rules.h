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
 *  - `p + c * a / b` mirrors torch's addcdiv (value * t1 / t2 evaluated left to right),
 *    `fo_lerp` mirrors torch.lerp, so float32 trajectories track torch.optim closely.
 *  - No fast-math: NaN and Inf propagate as IEEE says (fo_max keeps NaN like
 *    torch.maximum).
 */
#ifndef FUSEDOPTIM_RULES_H
#define FUSEDOPTIM_RULES_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FO_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#define FO_HD inline
#endif

/* ---- scalar helpers --------------------------------------------------------- */
FO_HD float fo_sqrt(float x) { return sqrtf(x); }
FO_HD double fo_sqrt(double x) { return sqrt(x); }
FO_HD float fo_abs(float x) { return fabsf(x); }
FO_HD double fo_abs(double x) { return fabs(x); }

/* max that propagates NaN from either side, like torch.maximum */
template <typename T> FO_HD T fo_max(T a, T b) { return (a > b || a != a) ? a : b; }

/* torch.lerp: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w) */
template <typename T> FO_HD T fo_lerp(T a, T b, T w, T one_minus_w, bool small_w) {
    return small_w ? a + w * (b - a) : b - (b - a) * one_minus_w;
}

/* Shared prologue: maximize flips the gradient (gsign = -1), coupled L2 decay adds
 * wd * p (skipped entirely when wd == 0, so an Inf parameter does not poison g). */
template <typename T> FO_HD T fo_grad(T g, T p, T gsign, T wd) {
    g = gsign * g;
    if (wd != T(0)) g = g + wd * p;
    return g;
}

/* ---- SGD (momentum, dampening, nesterov) -------------------------------------- */
/* h: lr, weight_decay, momentum, 1 - dampening, nesterov, gsign, first            */
template <typename T> struct fo_sgd_hp {
    T neg_lr, wd, momentum, one_minus_dampening, gsign;
    bool nesterov, first;
    FO_HD static fo_sgd_hp load(const double *h) {
        fo_sgd_hp s;
        s.neg_lr = (T)(-h[0]);
        s.wd = (T)h[1];
        s.momentum = (T)h[2];
        s.one_minus_dampening = (T)h[3];
        s.nesterov = h[4] != 0.0;
        s.gsign = (T)h[5];
        s.first = h[6] != 0.0;
        return s;
    }
};
template <typename T, bool MOMENTUM>
FO_HD void fo_sgd_rule(T &p, T g, T &buf, const fo_sgd_hp<T> &h) {
    T d = fo_grad(g, p, h.gsign, h.wd);
    if (MOMENTUM) {
        buf = h.first ? d : buf * h.momentum + h.one_minus_dampening * d;
        d = h.nesterov ? d + h.momentum * buf : buf;
    }
    p = p + h.neg_lr * d;
}

/* ---- Adam / AdamW / AMSGrad ----------------------------------------------------- */
/* h: gsign, weight_decay (coupled, 0 if decoupled), decay (1 - lr*wd if decoupled, else 1),
 *    1 - beta1, beta2, 1 - beta2, sqrt(1 - beta2^t), eps, -lr / (1 - beta1^t)          */
template <typename T> struct fo_adam_hp {
    T gsign, wd, decay, w1, one_minus_w1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step;
    bool small_w1;
    FO_HD static fo_adam_hp load(const double *h) {
        fo_adam_hp s;
        s.gsign = (T)h[0];
        s.wd = (T)h[1];
        s.decay = (T)h[2];
        s.w1 = (T)h[3];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)h[4];
        s.one_minus_beta2 = (T)h[5];
        s.bc2_sqrt = (T)h[6];
        s.eps = (T)h[7];
        s.neg_step = (T)h[8];
        return s;
    }
};
template <typename T, bool AMSGRAD>
FO_HD void fo_adam_rule(T &p, T g, T &m, T &v, T &vmax, const fo_adam_hp<T> &h) {
    g = fo_grad(g, p, h.gsign, h.wd);
    p = p * h.decay;
    m = fo_lerp(m, g, h.w1, h.one_minus_w1, h.small_w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T s = v;
    if (AMSGRAD) { vmax = fo_max(vmax, v); s = vmax; }
    T denom = fo_sqrt(s) / h.bc2_sqrt + h.eps;
    p = p + h.neg_step * m / denom;
}

/* ---- Adagrad ---------------------------------------------------------------------- */
/* h: gsign, weight_decay, -lr / (1 + (t - 1) lr_decay), eps                            */
template <typename T> struct fo_adagrad_hp {
    T gsign, wd, neg_clr, eps;
    FO_HD static fo_adagrad_hp load(const double *h) {
        fo_adagrad_hp s;
        s.gsign = (T)h[0];
        s.wd = (T)h[1];
        s.neg_clr = (T)h[2];
        s.eps = (T)h[3];
        return s;
    }
};
template <typename T>
FO_HD void fo_adagrad_rule(T &p, T g, T &sum, const fo_adagrad_hp<T> &h) {
    g = fo_grad(g, p, h.gsign, h.wd);
    sum = sum + g * g;
    T std_ = fo_sqrt(sum) + h.eps;
    p = p + h.neg_clr * g / std_;
}

/* ---- RMSprop (centered, momentum) ------------------------------------------------- */
/* h: gsign, weight_decay, alpha, 1 - alpha, eps, momentum, -lr                          */
template <typename T> struct fo_rmsprop_hp {
    T gsign, wd, alpha, one_minus_alpha, w_avg_rest, eps, momentum, neg_lr;
    bool small_w;
    FO_HD static fo_rmsprop_hp load(const double *h) {
        fo_rmsprop_hp s;
        s.gsign = (T)h[0];
        s.wd = (T)h[1];
        s.alpha = (T)h[2];
        s.one_minus_alpha = (T)h[3];
        s.w_avg_rest = T(1) - s.one_minus_alpha;
        s.small_w = fo_abs(s.one_minus_alpha) < T(0.5);
        s.eps = (T)h[4];
        s.momentum = (T)h[5];
        s.neg_lr = (T)h[6];
        return s;
    }
};
template <typename T, bool CENTERED, bool MOMENTUM>
FO_HD void fo_rmsprop_rule(T &p, T g, T &square_avg, T &grad_avg, T &buf,
                           const fo_rmsprop_hp<T> &h) {
    g = fo_grad(g, p, h.gsign, h.wd);
    square_avg = square_avg * h.alpha + h.one_minus_alpha * g * g;
    T avg;
    if (CENTERED) {
        grad_avg = fo_lerp(grad_avg, g, h.one_minus_alpha, h.w_avg_rest, h.small_w);
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
/* h: gsign, weight_decay, 1 - beta1, beta2, eps, -lr / (1 - beta1^t)                   */
template <typename T> struct fo_adamax_hp {
    T gsign, wd, w1, one_minus_w1, beta2, eps, neg_clr;
    bool small_w1;
    FO_HD static fo_adamax_hp load(const double *h) {
        fo_adamax_hp s;
        s.gsign = (T)h[0];
        s.wd = (T)h[1];
        s.w1 = (T)h[2];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)h[3];
        s.eps = (T)h[4];
        s.neg_clr = (T)h[5];
        return s;
    }
};
template <typename T>
FO_HD void fo_adamax_rule(T &p, T g, T &m, T &u, const fo_adamax_hp<T> &h) {
    g = fo_grad(g, p, h.gsign, h.wd);
    m = fo_lerp(m, g, h.w1, h.one_minus_w1, h.small_w1);
    u = fo_max(u * h.beta2, fo_abs(g) + h.eps);
    p = p + h.neg_clr * m / u;
}

/* ---- NAdam -------------------------------------------------------------------------- */
/* h: gsign, weight_decay (coupled), decay (decoupled), 1 - beta1, beta2, 1 - beta2,
 *    1 - beta2^t, eps, -lr (1 - mu_t) / (1 - prod mu), -lr mu_{t+1} / (1 - prod mu * mu_{t+1}) */
template <typename T> struct fo_nadam_hp {
    T gsign, wd, decay, w1, one_minus_w1, beta2, one_minus_beta2, bc2, eps, c_grad, c_avg;
    bool small_w1;
    FO_HD static fo_nadam_hp load(const double *h) {
        fo_nadam_hp s;
        s.gsign = (T)h[0];
        s.wd = (T)h[1];
        s.decay = (T)h[2];
        s.w1 = (T)h[3];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)h[4];
        s.one_minus_beta2 = (T)h[5];
        s.bc2 = (T)h[6];
        s.eps = (T)h[7];
        s.c_grad = (T)h[8];
        s.c_avg = (T)h[9];
        return s;
    }
};
template <typename T>
FO_HD void fo_nadam_rule(T &p, T g, T &m, T &v, const fo_nadam_hp<T> &h) {
    g = fo_grad(g, p, h.gsign, h.wd);
    p = p * h.decay;
    m = fo_lerp(m, g, h.w1, h.one_minus_w1, h.small_w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T denom = fo_sqrt(v / h.bc2) + h.eps;
    p = p + h.c_grad * g / denom;
    p = p + h.c_avg * m / denom;
}

/* ---- RAdam -------------------------------------------------------------------------- */
/* h: gsign, weight_decay (coupled), decay (decoupled), 1 - beta1, beta2, 1 - beta2,
 *    1 - beta1^t, lr, rectified (rho_t > 5), sqrt(1 - beta2^t), eps, rect               */
template <typename T> struct fo_radam_hp {
    T gsign, wd, decay, w1, one_minus_w1, beta2, one_minus_beta2, bc1, lr, bc2_sqrt, eps, rect;
    bool small_w1, rectified;
    FO_HD static fo_radam_hp load(const double *h) {
        fo_radam_hp s;
        s.gsign = (T)h[0];
        s.wd = (T)h[1];
        s.decay = (T)h[2];
        s.w1 = (T)h[3];
        s.one_minus_w1 = T(1) - s.w1;
        s.small_w1 = fo_abs(s.w1) < T(0.5);
        s.beta2 = (T)h[4];
        s.one_minus_beta2 = (T)h[5];
        s.bc1 = (T)h[6];
        s.lr = (T)h[7];
        s.rectified = h[8] != 0.0;
        s.bc2_sqrt = (T)h[9];
        s.eps = (T)h[10];
        s.rect = (T)h[11];
        return s;
    }
};
template <typename T>
FO_HD void fo_radam_rule(T &p, T g, T &m, T &v, const fo_radam_hp<T> &h) {
    g = fo_grad(g, p, h.gsign, h.wd);
    p = p * h.decay;
    m = fo_lerp(m, g, h.w1, h.one_minus_w1, h.small_w1);
    v = v * h.beta2 + h.one_minus_beta2 * g * g;
    T step = (m / h.bc1) * h.lr;
    /* torch evaluates `float / tensor` as reciprocal(tensor) * float */
    if (h.rectified) step = step * ((T(1) / (fo_sqrt(v) + h.eps)) * h.bc2_sqrt) * h.rect;
    p = p + T(-1) * step;
}

/* ---- Adadelta ---------------------------------------------------------------------- */
/* h: gsign, weight_decay, rho, 1 - rho, eps, -lr                                        */
template <typename T> struct fo_adadelta_hp {
    T gsign, wd, rho, one_minus_rho, eps, neg_lr;
    FO_HD static fo_adadelta_hp load(const double *h) {
        fo_adadelta_hp s;
        s.gsign = (T)h[0];
        s.wd = (T)h[1];
        s.rho = (T)h[2];
        s.one_minus_rho = (T)h[3];
        s.eps = (T)h[4];
        s.neg_lr = (T)h[5];
        return s;
    }
};
template <typename T>
FO_HD void fo_adadelta_rule(T &p, T g, T &square_avg, T &acc_delta, const fo_adadelta_hp<T> &h) {
    g = fo_grad(g, p, h.gsign, h.wd);
    square_avg = square_avg * h.rho + h.one_minus_rho * g * g;
    T std_ = fo_sqrt(square_avg + h.eps);
    T delta = fo_sqrt(acc_delta + h.eps) / std_ * g;
    acc_delta = acc_delta * h.rho + h.one_minus_rho * delta * delta;
    p = p + h.neg_lr * delta;
}

#endif /* FUSEDOPTIM_RULES_H */
