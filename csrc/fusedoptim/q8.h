/* fusedoptim/q8.h -- 8-bit block-wise state (state_dtype="int8", issue 12).
 *
 * Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (2022), as bitsandbytes
 * stores it: every state buffer is split into blocks of B elements (B a power of two,
 * 64..4096, 256 by default; blocks start at element 0 of each tensor, the last one may be
 * short).  A block keeps one float32 absmax (the largest |value| in it) and one uint8 code
 * per element; the element's value is  map[code] * absmax,  map a non-linear 256-entry code
 * map on [-1, 1]:
 *
 *   - the unsigned map (buffers declared FO_NONNEG in rules.h: second moments, sums of
 *     squares, step sizes): 0, then for each decade i = 0..6 the 2^(i+1) midpoints of
 *     linspace(0.1, 1, 2^(i+1) + 1) times 10^(i-6), then 1: 256 values on [0, 1];
 *   - the signed map (FO_SIGNED buffers: first moments, momenta): the same with 2^i
 *     midpoints per decade, mirrored: 127 negative values, 0, 127 positive values and 1
 *     (no -1: the most negative code is -0.99297 * absmax, as in bitsandbytes).
 *
 * bitsandbytes' create_dynamic_map(signed) describes the same values (it computes them in
 * float32 then rounds to float32; here they are computed in double and rounded once).
 * Codes are stored as uint8 indices into the sorted map: signed code 127 is 0.
 *
 * One pass per block: dequantize every kept buffer into a float32 stack buffer, run the
 * same fo_loop as float32 state (the parameter may be bfloat16: fo_bf16s, lowp.h), take
 * the new absmax of each buffer, quantize.  Quantizing works on the magnitude a = |v| /
 * absmax (clamped to 1): the magnitude index k is
 *   nearest:     #{j : mid[j] < a}, mid[j] = (mag[j] + mag[j+1]) / 2 rounded to float
 *                (a tie goes to the smaller magnitude);
 *   stochastic:  kf = max{j : mag[j] <= a}, then kf + 1 when u * gap[kf] < a - mag[kf],
 *                u = r / 2^16 (r: 16 random bits, the same counter hash as bfloat16,
 *                lowp.h: buffer k takes bits 16 (k % 2) .. of fo_hash32(index ^ key[k / 2])),
 *                gap[j] = mag[j + 1] - mag[j]: up with probability (a - mag[kf]) / gap.
 * Signed: code = 127 + k for v >= 0, 127 - min(k, 127) for v < 0; unsigned: max(k, 1) for
 * v > 0, else 0: a positive second moment never reads back as 0 (its smallest code is
 * 3.25e-7 * absmax), or Adam's m / (sqrt(v) + eps) of an element whose gradient is ~1e-3.5
 * of its block's largest -- v below half that code, m still above the signed map's
 * smallest -- steps by ~lr * m / eps and training diverges (the quality benchmark,
 * python -m fusedoptim.bench.quality, showed it; bitsandbytes' CPU quantizer has a floor
 * too).  Both searches are one lookup in a table indexed by the top 16 bits of a's
 * float32 bits (exponent and 7 mantissa bits; below 2^-24 one bucket) plus one compare:
 * fo_q8_init checks that no bucket holds two midpoints or two code values.  These scalar
 * FO_HD functions define the codes (the CUDA kernels run them); with GCC the CPU computes
 * both roundings 8 lanes at a time (fo_q8_near_block, fo_q8_stoch_block: the exponent bits,
 * a linear estimate, the scalar function for the rare lanes the estimate cannot decide),
 * with the same codes: fo_q8_vec_init checks the estimates' bounds at import, and
 * bench/q8_vec_check.cpp and bench/q8_stoch_check.cpp compare every float in [0, 1].
 * The absmax of a block with a NaN is NaN (its values read back as NaN); a block of zeros
 * has absmax 0 and reads back zeros.
 *
 * A thread's piece of work is always a run of whole blocks (the driver, _q8.pxi, splits
 * the block count, not the element count), so results are identical for any thread count.
 */
#ifndef FUSEDOPTIM_Q8_H
#define FUSEDOPTIM_Q8_H

/* The device build (kernels.cu; NVRTC and nvcc define __CUDACC__, the host emulation of
 * the tests FO_Q8_DEVICE) takes only the table layout and the FO_HD per-element functions
 * below; the tables themselves are the host's, copied to the device by _cuda.py.       */
#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(FO_Q8_DEVICE)
#define FO_Q8_ELEMENTS_ONLY 1
#ifndef FUSEDOPTIM_RULES_H
#include "rules.h"
#endif
#ifndef FUSEDOPTIM_LOWP_H
#include "lowp.h"
#endif
#else
#include "cpu.h"
#endif

#define FO_Q8_MAXBLOCK 4096
#define FO_Q8_MINBLOCK 64
#define FO_Q8_MB 7                                     /* mantissa bits of the bucket key */
#define FO_Q8_ELO 24                                   /* magnitudes below 2^-24: bucket 0 */
#define FO_Q8_BASE ((127 - FO_Q8_ELO) << FO_Q8_MB)     /* key of 2^-24 */
#define FO_Q8_NKEY ((FO_Q8_ELO << FO_Q8_MB) + 1)       /* buckets up to and with 1.0 */

struct fo_q8_table {
    float map[256];           /* code -> value on [-1, 1] (what a stored code means) */
    float mag[257];           /* magnitude index -> value; mag[nmag] = 2 (never reached) */
    float mid[257];           /* (mag[j] + mag[j + 1]) / 2; +Inf at the top */
    float gap[257];           /* mag[j + 1] - mag[j]; 0 at the top */
    int near_[FO_Q8_NKEY];    /* bucket -> #{j : mid[j] < bucket start} */
    int floor_[FO_Q8_NKEY];   /* bucket -> max{j : mag[j] <= bucket start} */
    int nmag;                 /* 129 signed (0 .. 1), 256 unsigned */
    /* the decade groups, from which fo_q8_vec_init derives the vector quantizer's tables
     * (fo_q8_vtabs): group g
     * (0: the value 0, 1..7: decade g - 1; the value 1 folds into group 7) holds the
     * magnitudes with nb[g - 1] < a <= nb[g] (nb: the midpoints between groups); inside
     * it, u = a * S[g] - O[g] puts the decade's midpoints on the integers 1 .. cap[g],
     * so the count of midpoints below a is about floor(u), and J[g] is the group's first
     * magnitude index */
    float nb[8], S[8], O[8];
    int J[8], cap[8];
};
#define FO_Q8_EPS 1e-4f   /* |u - the exact count's position| is below 4e-5 (fo_q8_vec_init checks it) */
#ifndef FO_Q8_ELEMENTS_ONLY
/* [0] unsigned (FO_NONNEG), [1] signed (FO_SIGNED); one object in the library (an inline
 * variable), filled by fo_q8_init at import and read by every translation unit */
inline fo_q8_table fo_q8_tables[2];

static inline float fo_q8_key_start(int b) {  /* smallest magnitude of bucket b */
    return b == 0 ? 0.0f : fo_bits_as_float((unsigned)(b + FO_Q8_BASE) << (23 - FO_Q8_MB));
}
#endif

/* the bucket of a magnitude a in [0, 1] */
FO_HD int fo_q8_key(float a) {
    const int key = (int)(fo_float_as_bits(a) >> (23 - FO_Q8_MB)) - FO_Q8_BASE;
    return key > 0 ? key : 0;
}

/* the magnitude index of a in [0, 1], nearest rounding: #{j : mid[j] < a} */
FO_HD int fo_q8_near(float a, const fo_q8_table &t) {
    const int k = t.near_[fo_q8_key(a)];
    return k + (a > t.mid[k]);
}

/* the code of y = v / absmax for magnitude index k */
template <bool SIGNED> FO_HD int fo_q8_code(float y, int k) {
    return SIGNED ? (y < 0.0f ? 127 - (k < 127 ? k : 127) : 127 + k) : (y > 0.0f ? (k > 1 ? k : 1) : 0);
}

/* The per-element steps of a block, shared by the CPU loops and the CUDA kernels
 * (kernels.cu), so both give the same bits:
 *   fo_q8_value:      a stored code's value, map[q] * absmax;
 *   fo_q8_inv:        1 / absmax of a block (0 for a block of zeros, Inf or NaN);
 *   fo_q8_near_code:  the code of v, nearest rounding (the scalar path of fo_q8_quant);
 *   fo_q8_stoch_code: the code of v, stochastic rounding with 16 random bits r.        */
FO_HD float fo_q8_value(const float *map, unsigned q, float amax) { return map[q] * amax; }
FO_HD float fo_q8_inv(float mx) { return mx > 0.0f && mx < fo_inf<float>() ? 1.0f / mx : 0.0f; }
template <bool SIGNED> FO_HD int fo_q8_near_code(float v, float inv, const fo_q8_table &t) {
    const float y = v * inv;
    const float a = fo_abs(y);
    return fo_q8_code<SIGNED>(y, fo_q8_near(a < 1.0f ? a : 1.0f, t));
}
template <bool SIGNED>
FO_HD int fo_q8_stoch_code(float v, float inv, unsigned r, const float *mag, const float *gap, const int *floor_) {
    const float y = v * inv;
    float a = fo_abs(y);
    a = a < 1.0f ? a : 1.0f;                       /* NaN -> 1 (the block reads back NaN) */
    int k = floor_[fo_q8_key(a)];
    k += a >= mag[k + 1];
    k += (float)r * 0x1p-16f * gap[k] < a - mag[k];
    return fo_q8_code<SIGNED>(y, k);
}

#ifndef FO_Q8_ELEMENTS_ONLY
static int fo_q8_vec_init(void);
/* Build both tables; 0 on success, else the number of the failed check (called once, at
 * import, before any thread runs). */
static int fo_q8_init(void) {
    static const double p10[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    for (int sg = 0; sg < 2; sg++) {
        fo_q8_table &t = fo_q8_tables[sg];
        double v[257];
        int n = 0;
        v[n++] = 0.0;
        for (int i = 0; i < 7; i++) {
            const int cnt = sg ? 1 << i : 1 << (i + 1);
            const double step = 0.9 / cnt;
            for (int k = 0; k < cnt; k++) v[n++] = p10[i] * (0.1 + (k + 0.5) * step);
        }
        v[n++] = 1.0;
        if (n != (sg ? 129 : 256)) return 1;
        t.nmag = n;
        for (int j = 0; j < n; j++) {
            t.mag[j] = (float)v[j];
            if (j && !(t.mag[j] > t.mag[j - 1])) return 2;
        }
        t.mag[n] = 2.0f;
        for (int j = 0; j < n - 1; j++) {
            t.mid[j] = (float)(((double)t.mag[j] + (double)t.mag[j + 1]) * 0.5);
            t.gap[j] = t.mag[j + 1] - t.mag[j];
        }
        t.mid[n - 1] = fo_inf<float>();
        t.gap[n - 1] = 0.0f;
        t.mid[n] = fo_inf<float>();
        t.gap[n] = 0.0f;
        if (sg) {
            for (int k = 0; k < 128; k++) t.map[127 - k] = -t.mag[k];
            for (int k = 0; k < 129; k++) t.map[127 + k] = t.mag[k];
        } else {
            for (int k = 0; k < 256; k++) t.map[k] = t.mag[k];
        }
        for (int b = 0; b < FO_Q8_NKEY; b++) {
            const float lo = fo_q8_key_start(b);
            const float hi = b + 1 < FO_Q8_NKEY ? fo_q8_key_start(b + 1) : fo_inf<float>();
            int cnt = 0, inside = 0, fl = 0, vin = 0;
            for (int j = 0; j < n - 1; j++) {
                cnt += t.mid[j] < lo;
                inside += t.mid[j] >= lo && t.mid[j] < hi;
            }
            for (int j = 0; j < n; j++) {
                if (t.mag[j] <= lo) fl = j;
                vin += t.mag[j] > lo && t.mag[j] < hi;
            }
            if (inside > 1 || vin > 1) return 3;   /* one compare would not be enough */
            t.near_[b] = cnt;
            t.floor_[b] = fl;
        }
        t.S[0] = t.O[0] = 0.0f;
        t.J[0] = t.cap[0] = 0;
        for (int i = 0, j = 1; i < 7; i++) {
            const int cnt = sg ? 1 << i : 1 << (i + 1);
            const double step = 0.9 / cnt;
            t.J[i + 1] = j;
            t.cap[i + 1] = cnt - 1;
            t.S[i + 1] = (float)(1.0 / (p10[i] * step));
            t.O[i + 1] = (float)(0.1 / step);
            t.nb[i] = t.mid[j - 1];
            j += cnt;
        }
        t.nb[7] = t.mid[n - 2];
    }
    return fo_q8_vec_init();
}

/* codes -> values of one block */
static FO_INLINE void fo_q8_dequant(const unsigned char *FO_RESTRICT q, float amax, const float *FO_RESTRICT map,
                                    float *FO_RESTRICT out, ptrdiff_t m) {
    for (ptrdiff_t i = 0; i < m; i++) out[i] = fo_q8_value(map, q[i], amax);
}

/* max |v| over a block, NaN if any element is NaN.  On the bits: |v| is v's bits without
 * the sign, and non-negative floats (Inf, then the NaNs, above every finite value) order
 * as their bits do, so this is an unsigned integer max, which every clone vectorizes (a
 * float max with a NaN flag in GCC vector types was scalarized on AVX2: 2 ns/element). */
static FO_INLINE float fo_q8_absmax(const float *FO_RESTRICT v, ptrdiff_t m) {
    unsigned r = 0;
    for (ptrdiff_t i = 0; i < m; i++) {
        const unsigned a = fo_float_as_bits(v[i]) & 0x7FFFFFFFu;
        r = a > r ? a : r;
    }
    return fo_bits_as_float(r > 0x7F800000u ? 0x7FC00000u : r);
}

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define FO_Q8_VEC 1
typedef float fo_q8_v8f __attribute__((vector_size(32)));
typedef int fo_q8_v8i __attribute__((vector_size(32)));
typedef short fo_q8_v16s __attribute__((vector_size(32)));
typedef unsigned char fo_q8_v32b __attribute__((vector_size(32)));
/* Nearest codes, 8 lanes at a time, in GCC vector types (every clone compiles them; the
 * 8-entry tables are one vpermps each on AVX2).  The groups g = 1..8 are those of
 * fo_q8_table (g = #{i : nb[i] < a}; the value 0's group 0 joins group 1; group 8 is
 * (nb[7], 1], the value 1).  A binade [2^E, 2^(E+1)) holds at most one group boundary, so
 * the group is g0 = (E * gm + gd) >> 8 from the exponent bits (one integer multiply; E of
 * max(a, 2^-22)) plus one compare: g = g0 + (a > nb[g0]).  Inside group g, u = a * S - O
 * puts the midpoints on the integers J + 1 .. J + cap (group 1: mid[0] on 1 and 0 on
 * [0, 1)), clamped to J + cap + 1/2 (above its last midpoint a group reaches past
 * J + cap + 1); group 8 has S = 0, u = nmag - 1/2.  The signed tables add 127 to u, so
 * floor(u) is the code of a positive value.  The index (or code) is floor(u) where
 * floor(u - eps) == floor(u + eps); a lane where they differ (about 2e-4 of them) takes
 * fo_q8_near.  fo_q8_vec_init fills the tables and checks all of it: the group on both
 * ends of every binade, the bracket next to every midpoint and at both ends of a group. */
struct fo_q8_vtab {
    float nbg[8];      /* [g0 - 1] = nb[g0], g0 = 1..7 */
    float S[8], O[8];  /* [g - 1], g = 1..8 */
    float U[8];        /* [g - 1]: the clamp of u */
    int gm, gd;        /* g0 - 1 = (E * gm + gd) >> 8, E the biased exponent of max(a, 2^-22) */
};
inline fo_q8_vtab fo_q8_vtabs[2];
#define FO_Q8_GLO 0x1p-22f

/* the scalar twin of fo_q8_vcodes' estimate (same operations): floor(u -/+ eps) */
static inline void fo_q8_vest(float a, const fo_q8_vtab &w, int *el, int *eh) {
    const float a2 = a > FO_Q8_GLO ? a : FO_Q8_GLO;
    const int gi = ((int)(fo_float_as_bits(a2) >> 23) * w.gm + w.gd) >> 8;
    const int g = gi + (a > w.nbg[gi & 7]);
    float u = a * w.S[g & 7] - w.O[g & 7];
    u = u > w.U[g & 7] ? w.U[g & 7] : u;
    *el = (int)(u - FO_Q8_EPS);
    *eh = (int)(u + FO_Q8_EPS);
}

/* Stochastic codes, 8 lanes at a time (fo_q8_stoch_block), the same codes as
 * fo_q8_stoch_code: kf = max{j : mag[j] <= a}, then kf + 1 when u * gap[kf] < a - mag[kf].
 * The floor groups g = 1..8 split [0, 1] at the last magnitude of every decade: group g is
 * [mag[J - 1], mag[J + cap]) (J, cap: fo_q8_table's, group 8: J = nmag - 1, cap = 0, with
 * 1.0), so its first interval [mag[J - 1], mag[J]) crosses from the decade below (group 1's:
 * from 0) and the others, [mag[J], mag[J + cap]), are the decade's evenly spaced magnitudes.
 * The group comes from the exponent bits as the nearest groups do (gi = g - 1 =
 * (E * gm + gd) >> 8, then + (a >= nbg[gi]); a binade holds at most one group start).  In the
 * first interval (a < MJ[gi] = mag[J], an exact compare) kf is KF[gi] = J - 1 and the rule is
 * evaluated exactly with its mag M and gap G.  In the others u = a * S - O puts mag[j] on
 * the integer j (+127 signed, as fo_q8_vcodes), so kf = floor(u) where floor(u -/+ eps)
 * agree and (a - mag[kf]) / gap[kf] is about f = u - kf; the rule's compare is then
 * r / 2^16 < f, decided unless |r / 2^16 - f| < eps.  The undecided lanes (about 4e-4 of
 * those in the evenly spaced intervals; more where values sit on a code, as a state that
 * barely changed since it was decoded: ~10% in bench/q8_loop.cpp's constant gradient) take
 * fo_q8_stoch_code.  a = 1 (and NaN, clamped to
 * 1) is in group 8's first interval, where the rule always rounds up to nmag - 1, which is
 * fo_q8_stoch_code's kf there.  fo_q8_svec_init fills the tables and checks the group on both
 * ends of every binade and |u - (kf + (a - mag[kf]) / gap[kf])| below eps, with the rounding
 * of u's two operations bounded, at both ends of every evenly spaced interval (the error
 * without rounding is linear in a inside one).                                             */
struct fo_q8_stab {
    float nbg[8];        /* [gi]: the start of group gi + 2 (+Inf for gi = 7) */
    float S[8], O[8];    /* [gi]: u = a * S - O in the evenly spaced intervals */
    float MJ[8];         /* [gi]: mag[J], the end of the first interval (+Inf in group 8) */
    float M[8], G[8];    /* [gi]: mag[J - 1], gap[J - 1] (the first interval's) */
    int KF[8];           /* [gi]: J - 1 (+127 signed) */
    int gm, gd;
};
inline fo_q8_stab fo_q8_stabs[2];

/* the scalar twin of fo_q8_vstoch's estimate (same operations): group index and u */
static inline float fo_q8_sest(float a, const fo_q8_stab &w, int *gi) {
    const float a2 = a > FO_Q8_GLO ? a : FO_Q8_GLO;
    int g = ((int)(fo_float_as_bits(a2) >> 23) * w.gm + w.gd) >> 8;
    g += a >= w.nbg[g & 7];
    *gi = g;
    return a * w.S[g & 7] - w.O[g & 7];
}

static int fo_q8_svec_init(int sg) {
    static const double p10[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    const fo_q8_table &t = fo_q8_tables[sg];
    fo_q8_stab &w = fo_q8_stabs[sg];
    const int n = t.nmag, off = sg ? 127 : 0;
    int J[9], cap[9];
    for (int g = 1; g < 8; g++) J[g] = t.J[g], cap[g] = t.cap[g];
    J[8] = n - 1;
    cap[8] = 0;
    w.gm = 73;
    w.gd = -7609;
    for (int gi = 0; gi < 8; gi++) {
        const int g = gi + 1;
        w.nbg[gi] = g < 8 ? t.mag[J[g + 1] - 1] : fo_inf<float>();
        w.MJ[gi] = g < 8 ? t.mag[J[g]] : fo_inf<float>();
        w.M[gi] = t.mag[J[g] - 1];
        w.G[gi] = t.gap[J[g] - 1];
        w.KF[gi] = J[g] - 1 + off;
        w.S[gi] = w.O[gi] = 0.0f;
        if (g < 8) {   /* mag[J + j] = p10 * (0.1 + (j + 1/2) * step) -> J + j */
            const double step = 0.9 / (cap[g] + 1), S = 1.0 / (p10[g - 1] * step);
            w.S[gi] = (float)S;
            w.O[gi] = (float)(0.1 / step + 0.5 - J[g] - off);
        }
    }
    /* the group: the true group of a on both ends of every binade */
    for (int e = 0; e <= 22; e++) {
        const float lo = e == 22 ? 0.0f : fo_bits_as_float((unsigned)(127 - e) << 23);
        const float hi = e == 0 ? 1.0f : fo_bits_as_float(((unsigned)(128 - e) << 23) - 1u);
        for (int s = 0; s < 2; s++) {
            const float a = s ? hi : lo;
            int g = 0, gi;
            for (int k = 2; k <= 8; k++) g += a >= t.mag[J[k] - 1];
            const float a2 = a > FO_Q8_GLO ? a : FO_Q8_GLO;
            const int g0 = ((int)(fo_float_as_bits(a2) >> 23) * w.gm + w.gd) >> 8;
            fo_q8_sest(a, w, &gi);
            if (g0 < 0 || g0 > 7 || gi != g) return 21;
        }
    }
    /* |u - position| at both ends of every evenly spaced interval [mag[k], mag[k + 1]),
     * plus the rounding of a * S and of the subtraction anywhere inside */
    for (int g = 1; g < 8; g++)
        for (int k = J[g]; k < J[g] + cap[g]; k++) {
            const double rnd = 0x1p-24 * ((double)t.mag[k + 1] * w.S[g - 1] + (k + 1 + off));
            const float ends[2] = {t.mag[k], fo_bits_as_float(fo_float_as_bits(t.mag[k + 1]) - 1u)};
            for (int s = 0; s < 2; s++) {
                int gi;
                const float u = fo_q8_sest(ends[s], w, &gi);
                const double pos = k + off + ((double)ends[s] - t.mag[k]) / t.gap[k];
                if (gi != g - 1 || !(ends[s] >= w.MJ[gi])) return 22;
                if (!(fabs((double)u - pos) + 2.0 * rnd + 1e-6 < (double)FO_Q8_EPS)) return 23;
            }
        }
    return 0;
}

static int fo_q8_vec_init(void) {
    for (int sg = 0; sg < 2; sg++) {
        const fo_q8_table &t = fo_q8_tables[sg];
        fo_q8_vtab &w = fo_q8_vtabs[sg];
        const int n = t.nmag, off = sg ? 127 : 0;
        w.gm = 73;
        w.gd = -7353 - 256;
        for (int g = 1; g < 8; g++) {
            w.nbg[g - 1] = t.nb[g];
            double S = t.S[g], O = (double)t.O[g] - t.J[g];
            if (g == 1) {   /* mid[0] -> 1, mid[1] -> 2 (or 0 -> 1/2 when mid[0] is the only one) */
                S = t.cap[1] ? 1.0 / ((double)t.mid[1] - t.mid[0]) : 0.5 / t.mid[0];
                O = t.mid[0] * S - 1.0;
            }
            w.S[g - 1] = (float)S;
            w.O[g - 1] = (float)(O - off);
            w.U[g - 1] = (float)(t.J[g] + t.cap[g] + off) + 0.5f;
        }
        w.nbg[7] = fo_inf<float>();
        w.S[7] = 0.0f;
        w.O[7] = -(float)(n - 1 + off) - 0.5f;
        w.U[7] = (float)(n - 1 + off) + 0.5f;
        /* the group: the true group of a (at least 1) on both ends of every binade */
        for (int e = 0; e <= 22; e++) {
            const float lo = e == 22 ? 0.0f : fo_bits_as_float((unsigned)(127 - e) << 23);
            const float hi = e == 0 ? 1.0f : fo_bits_as_float(((unsigned)(128 - e) << 23) - 1u);
            for (int s = 0; s < 2; s++) {
                const float a = s ? hi : lo;
                int g = 0;
                for (int i = 0; i < 8; i++) g += a > t.nb[i];
                g = g > 1 ? g : 1;
                const float a2 = a > FO_Q8_GLO ? a : FO_Q8_GLO;
                const int gi = ((int)(fo_float_as_bits(a2) >> 23) * w.gm + w.gd) >> 8;
                if (gi < 0 || gi > 6 || gi + (a > w.nbg[gi]) + 1 != g) return 11;
            }
        }
        /* the bracket el <= off + #{j : mid[j] < a} <= eh (monotone in a inside a group) */
        int el, eh;
        for (int g = 1; g <= 8; g++) {
            const int j0 = g < 8 ? t.J[g] : n - 1, cap = g < 8 ? t.cap[g] : 0;
            const float lo = g == 1 ? 0.0f : fo_bits_as_float(fo_float_as_bits(t.nb[g - 1]) + 1u);
            const float hi = g < 8 ? t.nb[g] : 1.0f;
            const int clo = (g == 1 ? 0 : j0) + off;
            fo_q8_vest(lo, w, &el, &eh);
            if (eh < clo || el > clo) return 12;
            fo_q8_vest(hi, w, &el, &eh);
            if (el > j0 + cap + off || eh < j0 + cap + off) return 13;
            for (int m = g == 1 ? 0 : 1; m <= cap; m++) {
                const float md = t.mid[j0 + m - 1];
                fo_q8_vest(md, w, &el, &eh);
                if (el > j0 + m - 1 + off) return 14;
                fo_q8_vest(fo_bits_as_float(fo_float_as_bits(md) + 1u), w, &el, &eh);
                if (eh < j0 + m + off) return 15;
            }
        }
        const int rs = fo_q8_svec_init(sg);
        if (rs) return rs;
    }
    return 0;
}

/* min(|x * inv|, 1) with NaN -> 1 (on the bits: non-negative floats order as their bits,
 * NaN above 1.0), and its group estimate before the boundary test: (E * gm + gd) >> 8, E the
 * biased exponent of max(a, 2^-22) -- shared by the nearest and the stochastic codes */
static FO_INLINE fo_q8_v8i fo_q8_vgroup(fo_q8_v8f x, float inv, int gm, int gd, fo_q8_v8f *a) {
    const fo_q8_v8f y = x * inv;
    fo_q8_v8i ab;
    memcpy(&ab, &y, sizeof ab);
    ab &= 0x7FFFFFFF;
    ab = ab > 0x3F800000 ? 0x3F800000 : ab;
    memcpy(a, &ab, sizeof *a);
    const fo_q8_v8i e = ab > 0x34800000 ? ab : 0x34800000;
    return ((e >> 23) * gm + gd) >> 8;
}

/* codes of 8 values (lanes where floor(u -/+ eps) differ: set in *amb) */
template <bool SIGNED>
static FO_INLINE fo_q8_v8i fo_q8_vcodes(fo_q8_v8f x, float inv, const fo_q8_vtab &w, const fo_q8_v8f &nbg,
                                        const fo_q8_v8f &S, const fo_q8_v8f &O, const fo_q8_v8f &U, fo_q8_v8i *amb) {
    const fo_q8_v8f y = x * inv;
    fo_q8_v8f a;   /* a NaN reads back NaN from the block's absmax */
    fo_q8_v8i gi = fo_q8_vgroup(x, inv, w.gm, w.gd, &a);
    gi -= a > __builtin_shuffle(nbg, gi);
    fo_q8_v8f u = a * __builtin_shuffle(S, gi) - __builtin_shuffle(O, gi);
    const fo_q8_v8f ut = __builtin_shuffle(U, gi);
    u = u > ut ? ut : u;
    const fo_q8_v8i el = __builtin_convertvector(u - FO_Q8_EPS, fo_q8_v8i);
    const fo_q8_v8i eh = __builtin_convertvector(u + FO_Q8_EPS, fo_q8_v8i);
    *amb |= el ^ eh;
    /* signed: el = 127 + k; unsigned: el = k */
    if (SIGNED) return y < 0.0f ? 254 - (el > 254 ? 254 : el) : el;
    return (y > 0.0f) & (el > 1 ? el : 1);
}

/* 4 x 8 ints in 0..255 -> 32 bytes (vpackusdw, vpackuswb, vpermq) */
static FO_INLINE void fo_q8_pack32(const fo_q8_v8i *c, unsigned char *q) {
    const fo_q8_v16s h0 = __builtin_shufflevector((fo_q8_v16s)c[0], (fo_q8_v16s)c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16,
                                                  18, 20, 22, 24, 26, 28, 30);
    const fo_q8_v16s h1 = __builtin_shufflevector((fo_q8_v16s)c[2], (fo_q8_v16s)c[3], 0, 2, 4, 6, 8, 10, 12, 14, 16,
                                                  18, 20, 22, 24, 26, 28, 30);
    const fo_q8_v32b bq = __builtin_shufflevector((fo_q8_v32b)h0, (fo_q8_v32b)h1, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18,
                                                  20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52,
                                                  54, 56, 58, 60, 62);
    memcpy(q, &bq, sizeof bq);
}

/* nearest codes of a block, m32 = a multiple of 32 elements; returns nonzero when a lane
 * was ambiguous (its byte is then wrong: fo_q8_quant redoes those lanes) */
template <bool SIGNED>
static FO_INLINE int fo_q8_near_block(const float *FO_RESTRICT v, ptrdiff_t m32, float inv, const fo_q8_vtab &w,
                                      unsigned char *FO_RESTRICT q) {
    fo_q8_v8f nbg, S, O, U;
    memcpy(&nbg, w.nbg, sizeof nbg);
    memcpy(&S, w.S, sizeof S);
    memcpy(&O, w.O, sizeof O);
    memcpy(&U, w.U, sizeof U);
    fo_q8_v8i amb = {};
    for (ptrdiff_t i = 0; i < m32; i += 32) {
        fo_q8_v8i c[4];
        for (int r = 0; r < 4; r++) {
            fo_q8_v8f x;
            memcpy(&x, v + i + 8 * r, sizeof x);
            c[r] = fo_q8_vcodes<SIGNED>(x, inv, w, nbg, S, O, U, &amb);
        }
        fo_q8_pack32(c, q + i);
    }
    int an = 0;
    for (int l = 0; l < 8; l++) an |= amb[l];
    return an;
}

/* the lanes of fo_q8_near_block that were ambiguous, redone with fo_q8_near */
template <bool SIGNED>
static void fo_q8_near_fix(const float *FO_RESTRICT v, ptrdiff_t m32, float inv, const fo_q8_vtab &w,
                           const fo_q8_table &t, unsigned char *FO_RESTRICT q) {
    fo_q8_v8f nbg, S, O, U;
    memcpy(&nbg, w.nbg, sizeof nbg);
    memcpy(&S, w.S, sizeof S);
    memcpy(&O, w.O, sizeof O);
    memcpy(&U, w.U, sizeof U);
    for (ptrdiff_t i = 0; i < m32; i += 8) {
        fo_q8_v8f x;
        memcpy(&x, v + i, sizeof x);
        fo_q8_v8i amb = {};
        fo_q8_vcodes<SIGNED>(x, inv, w, nbg, S, O, U, &amb);
        for (int l = 0; l < 8; l++)
            if (amb[l]) {
                const float y = v[i + l] * inv;
                const float a = fo_abs(y);
                q[i + l] = (unsigned char)fo_q8_code<SIGNED>(y, fo_q8_near(a < 1.0f ? a : 1.0f, t));
            }
    }
}
typedef unsigned fo_q8_v8u __attribute__((vector_size(32)));
/* the tables of fo_q8_stab as vectors */
struct fo_q8_svt {
    fo_q8_v8f nbg, S, O, MJ, M, G;
    fo_q8_v8i KF;
};
static FO_INLINE fo_q8_svt fo_q8_svt_load(const fo_q8_stab &w) {
    fo_q8_svt T;
    memcpy(&T.nbg, w.nbg, sizeof T.nbg);
    memcpy(&T.S, w.S, sizeof T.S);
    memcpy(&T.O, w.O, sizeof T.O);
    memcpy(&T.MJ, w.MJ, sizeof T.MJ);
    memcpy(&T.M, w.M, sizeof T.M);
    memcpy(&T.G, w.G, sizeof T.G);
    memcpy(&T.KF, w.KF, sizeof T.KF);
    return T;
}

/* the random bits of 8 elements at indices idx: 16 bits of fo_hash32(idx ^ kx) >> shift */
static FO_INLINE fo_q8_v8u fo_q8_vbits(fo_q8_v8u idx, unsigned kx, int shift) {
    fo_q8_v8u h = idx ^ kx;
    h ^= h >> 16;
    h *= 0x7feb352dU;
    h ^= h >> 15;
    h *= 0x846ca68bU;
    h ^= h >> 16;
    return (h >> shift) & 0xFFFFu;
}

/* stochastic codes of 8 values with random bits r (lanes the estimate cannot decide: set
 * in *amb, their codes are then wrong) */
template <bool SIGNED>
static FO_INLINE fo_q8_v8i fo_q8_vstoch(fo_q8_v8f x, float inv, fo_q8_v8u r, const fo_q8_stab &w,
                                        const fo_q8_svt &T, fo_q8_v8i *amb) {
    const fo_q8_v8f y = x * inv;
    fo_q8_v8f a;
    fo_q8_v8i gi = fo_q8_vgroup(x, inv, w.gm, w.gd, &a);
    gi -= a >= __builtin_shuffle(T.nbg, gi);
    const fo_q8_v8f R = __builtin_convertvector((fo_q8_v8i)r, fo_q8_v8f) * 0x1p-16f;
    /* the evenly spaced intervals: kf = floor(u), up when R < u - kf (d < 0) */
    const fo_q8_v8f u = a * __builtin_shuffle(T.S, gi) - __builtin_shuffle(T.O, gi);
    const fo_q8_v8i el = __builtin_convertvector(u - FO_Q8_EPS, fo_q8_v8i);
    const fo_q8_v8i eh = __builtin_convertvector(u + FO_Q8_EPS, fo_q8_v8i);
    const fo_q8_v8f d = R - (u - __builtin_convertvector(el, fo_q8_v8f));
    fo_q8_v8i db;
    memcpy(&db, &d, sizeof db);
    db &= 0x7FFFFFFF;
    fo_q8_v8f ad;
    memcpy(&ad, &db, sizeof ad);
    /* the first interval of the group, exactly as fo_q8_stoch_code */
    const fo_q8_v8i first = a < __builtin_shuffle(T.MJ, gi);
    const fo_q8_v8i upf = R * __builtin_shuffle(T.G, gi) < a - __builtin_shuffle(T.M, gi);
    *amb |= ~first & ((el ^ eh) | (ad < FO_Q8_EPS));   /* nonzero: undecided */
    /* k = kf + up (signed: + 127); the compares are masks, true = -1 */
    const fo_q8_v8i k = first ? __builtin_shuffle(T.KF, gi) - upf : el - (d < 0.0f);
    if (SIGNED) return y < 0.0f ? 254 - (k > 254 ? 254 : k) : k;
    return (y > 0.0f) & (k > 1 ? k : 1);
}

/* 32 stochastic codes with random bits r[0..3]; the lanes fo_q8_vstoch cannot decide are
 * redone with fo_q8_stoch_code */
template <bool SIGNED>
static FO_INLINE void fo_q8_stoch32(const float *FO_RESTRICT v, float inv, const fo_q8_v8u *r, const fo_q8_stab &w,
                                    const fo_q8_svt &T, const fo_q8_table &t, unsigned char *FO_RESTRICT q) {
    fo_q8_v8i c[4], amb[4] = {};
    for (int j = 0; j < 4; j++) {
        fo_q8_v8f x;
        memcpy(&x, v + 8 * j, sizeof x);
        c[j] = fo_q8_vstoch<SIGNED>(x, inv, r[j], w, T, &amb[j]);
    }
    fo_q8_pack32(c, q);
    const fo_q8_v8i any = amb[0] | amb[1] | amb[2] | amb[3];
    unsigned long long an[4];
    memcpy(an, &any, sizeof an);
    if (__builtin_expect((an[0] | an[1] | an[2] | an[3]) != 0, 0)) {
        /* one byte per lane, 1 where undecided: visit the set ones only */
        unsigned char bm[32];
        for (int j = 0; j < 4; j++) amb[j] = (amb[j] != 0) & 1;
        fo_q8_pack32(amb, bm);
        memcpy(an, bm, sizeof an);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (int j = 0; j < 4; j++) an[j] = __builtin_bswap64(an[j]);   /* byte k at bits 8k */
#endif
        for (int j = 0; j < 4; j++)
            for (unsigned long long b = an[j]; b; b &= b - 1) {
                const int l = 8 * j + (__builtin_ctzll(b) >> 3);
                q[l] = (unsigned char)fo_q8_stoch_code<SIGNED>(v[l], inv, r[l >> 3][l & 7], t.mag, t.gap, t.floor_);
            }
    }
}

/* stochastic codes of a block, m32 = a multiple of 32 elements, with the bits of
 * fo_hash32((i0 + i) ^ kx) >> shift (fo_q8_quant's) */
template <bool SIGNED>
static FO_INLINE void fo_q8_stoch_block(const float *FO_RESTRICT v, ptrdiff_t m32, float inv, unsigned kx,
                                        unsigned i0, int shift, const fo_q8_stab &w, const fo_q8_table &t,
                                        unsigned char *FO_RESTRICT q) {
    const fo_q8_svt T = fo_q8_svt_load(w);
    const fo_q8_v8u lane = {0, 1, 2, 3, 4, 5, 6, 7};
    for (ptrdiff_t i = 0; i < m32; i += 32) {
        fo_q8_v8u r[4];
        for (int j = 0; j < 4; j++) r[j] = fo_q8_vbits(lane + (i0 + (unsigned)(i + 8 * j)), kx, shift);
        fo_q8_stoch32<SIGNED>(v + i, inv, r, w, T, t, q + i);
    }
}
#else
static int fo_q8_vec_init(void) { return 0; }
#endif

/* values -> absmax and codes of one block (SIGNED: the signed map; STOCH: stochastic, with
 * the bits of fo_hash32((i0 + i) ^ kx) >> shift) */
template <bool SIGNED, bool STOCH>
static FO_INLINE void fo_q8_quant(const float *FO_RESTRICT v, ptrdiff_t m, const fo_q8_table &t,
                                  unsigned char *FO_RESTRICT q, float *amax, unsigned kx, unsigned i0, int shift) {
    const float mx = fo_q8_absmax(v, m);
    *amax = mx;
    const float inv = fo_q8_inv(mx);
    if (!STOCH) {
#if defined(FO_Q8_VEC)
        /* the vector codes, the exact search where they are ambiguous, the tail */
        const ptrdiff_t m32 = m & ~(ptrdiff_t)31;
        if (fo_q8_near_block<SIGNED>(v, m32, inv, fo_q8_vtabs[SIGNED], q))
            fo_q8_near_fix<SIGNED>(v, m32, inv, fo_q8_vtabs[SIGNED], t, q);
        for (ptrdiff_t i = m32; i < m; i++) q[i] = (unsigned char)fo_q8_near_code<SIGNED>(v[i], inv, t);
#else
        for (ptrdiff_t i = 0; i < m; i++) q[i] = (unsigned char)fo_q8_near_code<SIGNED>(v[i], inv, t);
#endif
        return;
    }
    const float *FO_RESTRICT mag = t.mag;
    const float *FO_RESTRICT gap = t.gap;
    const int *FO_RESTRICT floor_ = t.floor_;
    ptrdiff_t i = 0;
#if defined(FO_Q8_VEC)
    /* the vector codes (the exact rule where they cannot decide), then the tail */
    i = m & ~(ptrdiff_t)31;
    fo_q8_stoch_block<SIGNED>(v, i, inv, kx, i0, shift, fo_q8_stabs[SIGNED], t, q);
#endif
    for (; i < m; i++) {
        const unsigned r = (fo_hash32((i0 + (unsigned)i) ^ kx) >> shift) & 0xFFFFu;
        q[i] = (unsigned char)fo_q8_stoch_code<SIGNED>(v[i], inv, r, mag, gap, floor_);
    }
}

/* One block of either map, either rounding: compiled once per clone (FO_Q8_MISC_DEFINE, its
 * own translation unit), not inside every algorithm's loop; the loops call it per block. */
FO_LINKAGE void fo_q8_quant_blk(int sgn, int stochastic, const float *v, ptrdiff_t m, unsigned char *q, float *amax,
                                unsigned kx, unsigned i0, int shift);
#define FO_Q8_MISC_DEFINE()                                                                                         \
    FO_CLONES FO_LINKAGE void fo_q8_quant_blk(int sgn, int stochastic, const float *v, ptrdiff_t m, unsigned char *q, \
                                              float *amax, unsigned kx, unsigned i0, int shift) {                     \
        if (stochastic) {                                                                                           \
            if (sgn) fo_q8_quant<true, true>(v, m, fo_q8_tables[1], q, amax, kx, i0, shift);                         \
            else fo_q8_quant<false, true>(v, m, fo_q8_tables[0], q, amax, kx, i0, shift);                            \
        } else {                                                                                                    \
            if (sgn) fo_q8_quant<true, false>(v, m, fo_q8_tables[1], q, amax, 0u, 0u, 0);                            \
            else fo_q8_quant<false, false>(v, m, fo_q8_tables[0], q, amax, 0u, 0u, 0);                               \
        }                                                                                                           \
    }
#if !defined(FO_SPLIT)
FO_Q8_MISC_DEFINE()
#endif

template <bool STOCH>
static FO_INLINE void fo_q8_quant_any(bool sgn, const float *v, ptrdiff_t m, unsigned char *q, float *amax, unsigned kx,
                                      unsigned i0, int shift) {
    fo_q8_quant_blk(sgn, STOCH, v, m, q, amax, kx, i0, shift);
}

/* One segment of an 8-bit step: n elements of one tensor starting at a block boundary
 * (i0 = the index in its tensor of the first element, a multiple of block). */
struct fo_q8_ctx {
    unsigned long long seed, step, tensor; /* the key of the random bits (lowp.h) */
    ptrdiff_t i0;                          /* index in the tensor of the segment's first element */
    ptrdiff_t block;                       /* elements per block (a power of two, 64..4096) */
    int stochastic;                        /* 1: stochastic rounding (state codes and bfloat16 writes) */
};
/* bufs as fo_seg_fn's (bufs[FO_STATE + j]: the codes of the j-th kept buffer); absmax[j]:
 * its absmax array, at the segment's first block */
typedef void (*fo_q8_fn)(const double *h, unsigned flags, char **bufs, float *const *absmax, ptrdiff_t n,
                         const fo_q8_ctx *x);

template <class A, unsigned F, class SP, class SG>
static FO_INLINE void fo_q8_flags(const fo_common<float> &c, const typename A::template hp<float> &h, char **bufs,
                                  float *const *absmax, ptrdiff_t n, const fo_q8_ctx *x) {
    constexpr unsigned K = A::mask(F), SIGNS = A::signs();
    unsigned char *code[FO_MAXSTATE] = {};
    float *am[FO_MAXSTATE] = {};
    for (int k = 0, kept = 0; k < A::MAXSTATE; k++)
        if ((K >> k) & 1u) {
            code[k] = (unsigned char *)bufs[FO_STATE + kept];
            am[k] = absmax[kept++];
        }
    typename SP::type *p = (typename SP::type *)bufs[0], *e = (typename SP::type *)bufs[2];
    const typename SG::type *g = (const typename SG::type *)bufs[1];
    alignas(64) float s[FO_MAXSTATE][FO_Q8_MAXBLOCK];
    const ptrdiff_t B = x->block;
    const bool st = x->stochastic != 0;
    for (ptrdiff_t j = 0, b = 0; j < n; j += B, b++) {
        const ptrdiff_t m = n - j < B ? n - j : B;
        for (int k = 0; k < FO_MAXSTATE; k++)
            if ((K >> k) & 1u) fo_q8_dequant(code[k] + j, am[k][b], fo_q8_tables[(SIGNS >> k) & 1u].map, s[k], m);
        /* blocks are powers of two <= 2^12, so a block never crosses a multiple of 2^32;
         * nearest rounding draws no bits, so it skips the key (a few 64-bit mixes a block) */
        const unsigned long long gi = (unsigned long long)(x->i0 + j);
        fo_rng r = {};
        if (st) {
            const unsigned long long key = fo_rng_key(x->seed, x->step, x->tensor, gi >> 32);
            for (int q = 0; q < 3; q++) r.k[q] = fo_rng_subkey(key, q);
        }
        r.i0 = (unsigned)gi;
        r.stochastic = st;
        /* stochastic rounding of a bfloat16 parameter is fo_loop's template choice (SR) */
        if (SP::LOWP && st) {
            if (e) fo_loop<A, float, F, FO_EMA, SP, SG, fo_same<float>, SP::LOWP != 0>(
                       m, p + j, g + j, e + j, s[0], s[1], s[2], s[3], c, h, r);
            else fo_loop<A, float, F, 0, SP, SG, fo_same<float>, SP::LOWP != 0>(m, p + j, g + j, e, s[0], s[1], s[2],
                                                                                s[3], c, h, r);
        } else if (e) {
            fo_loop<A, float, F, FO_EMA, SP, SG, fo_same<float>, false>(m, p + j, g + j, e + j, s[0], s[1], s[2], s[3],
                                                                        c, h, r);
        } else {
            fo_loop<A, float, F, 0, SP, SG, fo_same<float>, false>(m, p + j, g + j, e, s[0], s[1], s[2], s[3], c, h, r);
        }
        for (int k = 0; k < FO_MAXSTATE; k++)
            if ((K >> k) & 1u)
                fo_q8_quant_blk((SIGNS >> k) & 1u, st, s[k], m, code[k] + j, am[k] + b, st ? r.k[k >> 1] : 0u,
                                st ? r.i0 : 0u, st ? 16 * (k & 1) : 0);
    }
}

template <class A, class SP, class SG, unsigned F = 0>
static FO_INLINE void fo_q8_dispatch(unsigned flags, const fo_common<float> &c, const typename A::template hp<float> &h,
                                     char **bufs, float *const *absmax, ptrdiff_t n, const fo_q8_ctx *x) {
    if constexpr (F + 1 < (1u << A::NFLAGS)) {
        if (flags != F) {
            fo_q8_dispatch<A, SP, SG, F + 1>(flags, c, h, bufs, absmax, n, x);
            return;
        }
    }
    fo_q8_flags<A, F, SP, SG>(c, h, bufs, absmax, n, x);
}

/* CODE: bit 0 a bfloat16 parameter (and EMA), bit 1 a bfloat16 gradient */
template <class A, int CODE>
static FO_INLINE void fo_q8_seg(const double *hd, unsigned flags, char **bufs, float *const *absmax, ptrdiff_t n,
                                const fo_q8_ctx *x) {
    const auto [cs, as] = fo_load_blocks<A>(hd);
    typedef typename fo_if<(CODE & 1) != 0, fo_bf16s, fo_same<float> >::type SP;
    typedef typename fo_if<(CODE & 2) != 0, fo_bf16s, fo_same<float> >::type SG;
    fo_q8_dispatch<A, SP, SG>(flags, fo_common<float>::load(cs), A::template hp<float>::load(as), bufs, absmax, n, x);
}

/* The entry points fo_<algo>_q8_0 .. _3, one clone set each: declared here, compiled by
 * FO_Q8_DEFINE (with FO_SPLIT: one generated translation unit per algorithm, fo_split in
 * CMakeLists.txt, so the Cython translation unit compiles none of them). */
#define FO_Q8_ARGS_ const double *h, unsigned f, char **b, float *const *am, ptrdiff_t n, const fo_q8_ctx *x
#define FO_Q8_DECLARE(a, P)                                                                                     \
    FO_LINKAGE void fo_##a##_q8_0(FO_Q8_ARGS_);                                                                 \
    FO_LINKAGE void fo_##a##_q8_1(FO_Q8_ARGS_);                                                                 \
    FO_LINKAGE void fo_##a##_q8_2(FO_Q8_ARGS_);                                                                 \
    FO_LINKAGE void fo_##a##_q8_3(FO_Q8_ARGS_);
#define FO_Q8_ONE_(a, code) \
    FO_CLONES FO_LINKAGE void fo_##a##_q8_##code(FO_Q8_ARGS_) { fo_q8_seg<fo_##a, code>(h, f, b, am, n, x); }
#define FO_Q8_DEFINE(a, P) FO_Q8_ONE_(a, 0) FO_Q8_ONE_(a, 1) FO_Q8_ONE_(a, 2) FO_Q8_ONE_(a, 3)
FO_ALGOS(FO_Q8_DECLARE)
#if !defined(FO_SPLIT)
FO_ALGOS(FO_Q8_DEFINE)
#endif

/* the 8-bit loop of algorithm algo for storage code 0..3 (fo_q8_seg) */
static fo_q8_fn fo_cpu_seg_q8(int algo, int code) {
#define FO_Q8_ROW_(a, P) {fo_##a##_q8_0, fo_##a##_q8_1, fo_##a##_q8_2, fo_##a##_q8_3},
    static const fo_q8_fn table[FO_NALGO][4] = {FO_ALGOS(FO_Q8_ROW_)};
#undef FO_Q8_ROW_
    if (algo < 0 || algo >= FO_NALGO || code < 0 || code > 3) return NULL;
    return table[algo][code];
}

/* Quantize / dequantize whole arrays (new state, conversions, tests): n elements in blocks
 * of `block`, nearest rounding (stochastic with the bits of key kx, buffer slot `slot`). */
static void fo_q8_quantize(int sgn, const float *v, ptrdiff_t n, ptrdiff_t block, unsigned char *q, float *amax,
                           int stochastic, unsigned kx, int shift) {
    for (ptrdiff_t j = 0, b = 0; j < n; j += block, b++) {
        const ptrdiff_t m = n - j < block ? n - j : block;
        if (stochastic) fo_q8_quant_any<true>(sgn != 0, v + j, m, q + j, amax + b, kx, (unsigned)j, shift);
        else fo_q8_quant_any<false>(sgn != 0, v + j, m, q + j, amax + b, 0u, 0u, 0);
    }
}
static void fo_q8_dequantize(int sgn, const unsigned char *q, const float *amax, ptrdiff_t n, ptrdiff_t block,
                             float *out) {
    for (ptrdiff_t j = 0, b = 0; j < n; j += block, b++) {
        const ptrdiff_t m = n - j < block ? n - j : block;
        fo_q8_dequant(q + j, amax[b], fo_q8_tables[sgn != 0].map, out + j, m);
    }
}
static const fo_q8_table *fo_q8_table_of(int sgn) { return &fo_q8_tables[sgn != 0]; }
static size_t fo_q8_table_size(void) { return sizeof(fo_q8_table); }

#endif /* !FO_Q8_ELEMENTS_ONLY */
#endif /* FUSEDOPTIM_Q8_H */
