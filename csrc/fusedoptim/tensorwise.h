/* fusedoptim/tensorwise.h -- the element-wise stages of the wrapper optimizers (Muon,
 * Lookahead), separate from the FO_ALGOS list because they are not whole optimizers:
 * Muon runs its Newton-Schulz matmuls (NumPy's BLAS) between two of these stages, and
 * Lookahead's synchronisation runs every k steps of another optimizer.
 *
 * Each is a segment function of the driver's type (cpu.h fo_seg_fn), so the Cython
 * driver's chunking and threads (_kernels.pyx _drive) run them like the optimizer loops:
 * one native call for every tensor of a group, bit-identical for any thread count
 * (element-wise).  The block h starts with the common block (fo_common_scalars; the
 * driver's per-tensor scale multiplies its gscale) followed by the stage's own scalars.
 * bufs[0] is the tensor updated in place, bufs[1] its second input, bufs[2] an EMA or
 * NULL, bufs[3..] further buffers (FO_STATE).
 */
#ifndef FUSEDOPTIM_TENSORWISE_H
#define FUSEDOPTIM_TENSORWISE_H

#include "cpu.h"

/* Muon, before Newton-Schulz (torch 2.13 _single_tensor_muon):
 *   g   <- fo_grad(g)  (clip value, gscale, coupled decay, L1: the common block)
 *   buf <- lerp(buf, g, 1 - momentum)
 *   out <- lerp(g, buf, momentum) if nesterov, else buf
 * bufs: [0] param (read), [1] grad, [3] momentum_buffer, [4] out.
 * h + FO_NCOMMON: {one_minus_momentum, momentum, nesterov}.                               */
struct fo_muon_momentum_scalars { double one_minus_momentum, momentum, nesterov; };
template <typename T>
static FO_INLINE void fo_muon_momentum_seg(const double *hd, unsigned, char **bufs, ptrdiff_t n) {
    fo_common_scalars cs;
    fo_muon_momentum_scalars ms;
    memcpy(&cs, hd, sizeof cs);
    memcpy(&ms, hd + FO_NCOMMON, sizeof ms);
    const fo_common<T> c = fo_common<T>::load(cs);
    const fo_weight<T> w1 = fo_weight<T>::of((T)ms.one_minus_momentum), w2 = fo_weight<T>::of((T)ms.momentum);
    const T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT g = FO_BUF(T, 1);
    T *FO_RESTRICT b = FO_BUF(T, FO_STATE);
    T *FO_RESTRICT o = FO_BUF(T, FO_STATE + 1);
    const bool plain = c.plain();
    if (ms.nesterov != 0.0) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const T gi = plain ? fo_grad<FO_PLAIN>(g[i], p[i], c) : fo_grad<0>(g[i], p[i], c);
            const T bi = fo_lerp(b[i], gi, w1);
            b[i] = bi;
            o[i] = fo_lerp(gi, bi, w2);
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) {
            const T gi = plain ? fo_grad<FO_PLAIN>(g[i], p[i], c) : fo_grad<0>(g[i], p[i], c);
            const T bi = fo_lerp(b[i], gi, w1);
            b[i] = bi;
            o[i] = bi;
        }
    }
}

/* Muon, after Newton-Schulz: p <- p * decay; p <- p + neg_lr * O; then the EMA epilogue.
 * neg_lr (= -lr * AdjustLR(shape), per tensor) arrives in the gscale slot of the common
 * block, which the driver multiplies by each tensor's scale; decay = 1 - lr * weight_decay.
 * bufs: [0] param, [1] O (orthogonalised update), [2] EMA or NULL.
 * h + FO_NCOMMON: {decay}.                                                                */
template <typename T>
static FO_INLINE void fo_muon_apply_seg(const double *hd, unsigned, char **bufs, ptrdiff_t n) {
    fo_common_scalars cs;
    memcpy(&cs, hd, sizeof cs);
    const fo_common<T> c = fo_common<T>::load(cs);
    const T neg_lr = (T)cs.gscale, decay = (T)hd[FO_NCOMMON];
    T *FO_RESTRICT p = FO_BUF(T, 0);
    const T *FO_RESTRICT u = FO_BUF(T, 1);
    T *FO_RESTRICT e = FO_BUF(T, 2);
    if (e) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const T pi = p[i] * decay;
            p[i] = pi + neg_lr * u[i];
            fo_ema_rule(e[i], p[i], c);
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) {
            const T pi = p[i] * decay;
            p[i] = pi + neg_lr * u[i];
        }
    }
}

/* Lookahead's synchronisation (pytorch-optimizer 4.1: _foreach_lerp_ then _foreach_copy_):
 *   fast <- lerp(fast, slow, 1 - alpha);  slow <- fast
 * bufs: [0] fast (a parameter, or a momentum buffer), [1] slow.  h + FO_NCOMMON: {weight}. */
template <typename T>
static FO_INLINE void fo_lookahead_seg(const double *hd, unsigned, char **bufs, ptrdiff_t n) {
    const fo_weight<T> w = fo_weight<T>::of((T)hd[FO_NCOMMON]);
    T *FO_RESTRICT f = FO_BUF(T, 0);
    T *FO_RESTRICT s = FO_BUF(T, 1);
    for (ptrdiff_t i = 0; i < n; i++) {
        const T x = fo_lerp(f[i], s[i], w);
        f[i] = x;
        s[i] = x;
    }
}

#define FO_TENSORWISE(X) X(muon_momentum) X(muon_apply) X(lookahead)
/* the entry points of stage a: declared here, compiled by FO_TW_DEFINE (cpu.h FO_SPLIT) */
#define FO_TW_DECLARE(a)                                                                       \
    FO_LINKAGE void fo_tw_##a##_f32(FO_SEG_ARGS_);                                             \
    FO_LINKAGE void fo_tw_##a##_f64(FO_SEG_ARGS_);
#define FO_TW_DEFINE(a)                                                                        \
    FO_CLONES FO_LINKAGE void fo_tw_##a##_f32(FO_SEG_ARGS_) { fo_##a##_seg<float>(h, f, b, n); } \
    FO_CLONES FO_LINKAGE void fo_tw_##a##_f64(FO_SEG_ARGS_) { fo_##a##_seg<double>(h, f, b, n); }
FO_TENSORWISE(FO_TW_DECLARE)
#if !defined(FO_SPLIT)
FO_TENSORWISE(FO_TW_DEFINE)
#endif

#define FO_TW_ID_(a) FO_TW_##a,
enum fo_tw_id { FO_TENSORWISE(FO_TW_ID_) FO_NTW };
#undef FO_TW_ID_

/* stage: an fo_tw_id; dtype: 0 = float32, 1 = float64 */
static fo_seg_fn fo_tw_seg(int stage, int dtype) {
#define FO_TW_ROW_(a) {fo_tw_##a##_f32, fo_tw_##a##_f64},
    static const fo_seg_fn table[FO_NTW][2] = {FO_TENSORWISE(FO_TW_ROW_)};
#undef FO_TW_ROW_
    if (stage < 0 || stage >= FO_NTW || dtype < 0 || dtype > 1) return NULL;
    return table[stage][dtype];
}

#endif /* FUSEDOPTIM_TENSORWISE_H */
