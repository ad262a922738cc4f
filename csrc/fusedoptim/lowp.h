/* fusedoptim/lowp.h -- storage conversions for low-precision state and parameters (issue 12).
 *
 * Storage is not arithmetic: a bfloat16 buffer is widened to float32 when the loop loads
 * it, the rule runs in float32 exactly as for float32 storage, and the result is rounded
 * back to bfloat16 when the loop stores it.  Host and device share these functions (FO_HD).
 *
 * bfloat16 is the top half of a float32 (1 sign, 8 exponent, 7 mantissa bits), so widening
 * is a shift and narrowing is a rounding of the low 16 bits:
 *   - round to nearest, ties to even: bits + 0x7FFF + (bit 16), then truncate;
 *   - stochastic: bits + r (r uniform in [0, 2^16)), then truncate, so x rounds up to the
 *     next bfloat16 with probability (x - down) / (up - down): E[round(x)] = x.
 * Both act on the magnitude (sign-magnitude encoding), so they are symmetric in the sign;
 * a value past the largest finite bfloat16 rounds to Inf as IEEE rounding does; Inf
 * stays Inf; NaN stays a (quiet) NaN with its sign.
 *
 * The random bits come from a counter-based hash of (seed, step, tensor, element index in
 * the tensor, buffer): no generator state, so the bits depend on nothing else -- not on
 * the thread count, not on where a thread's chunk starts, and a run resumed from a
 * checkpoint (same seed, step and parameter order) draws the same bits.
 */
#ifndef FUSEDOPTIM_LOWP_H
#define FUSEDOPTIM_LOWP_H

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include <string.h>
#endif

typedef unsigned short fo_bf16_bits;

FO_HD unsigned fo_float_as_bits(float x) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    return __float_as_uint(x);
#else
    unsigned u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}
FO_HD float fo_bits_as_float(unsigned u) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

FO_HD float fo_bf16_to_float(fo_bf16_bits b) { return fo_bits_as_float((unsigned)b << 16); }

/* float32 -> bfloat16 bits: stochastic with the low 16 bits of r, else nearest-even */
FO_HD fo_bf16_bits fo_float_to_bf16(float x, unsigned r, bool stochastic) {
    const unsigned u = fo_float_as_bits(x);
    const unsigned add = stochastic ? (r & 0xFFFFu) : 0x7FFFu + ((u >> 16) & 1u);
    /* NaN: no rounding increment (it could carry into the exponent or the sign) but the
     * quiet bit set, so it stays a NaN with its sign and the top of its payload.  Written
     * as a select on one float compare, after the increment's 32-bit arithmetic: the loop
     * vectorizes it as vcmpunordps + vpblendvb on 32-bit lanes and narrows once (a mask
     * on the bit pattern cost GCC a second narrowing and ~20 more instructions per 16). */
    const unsigned w = x != x ? (u | 0x400000u) : u + add;
    return (fo_bf16_bits)(w >> 16);
}

/* lowbias32 (C. Wellons' hash-prospector): a bijective 32-bit mixer with two multiplies,
 * which vectorize on every SIMD level (64-bit multiplies don't before AVX-512).  U: unsigned,
 * or a GCC vector of them (fo_hash32_v8 below: the same hash lane by lane). */
template <class U> FO_HD U fo_hash32_of(U x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}
FO_HD unsigned fo_hash32(unsigned x) { return fo_hash32_of(x); }
/* splitmix64's finalizer: mixes the per-segment key (seed, step, tensor, high index bits) */
FO_HD unsigned long long fo_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* The 64-bit key of one tensor at one step: every element draws from fo_hash32(index_lo ^
 * key_j), j = 0 (state buffers 0 and 1: low and high 16 bits), 1 (buffers 2, 3), 2 (the
 * parameter, low 16 bits; its EMA, high 16 bits).  index_hi (the element index >> 32) is
 * folded into the key, so tensors past 2^32 elements do not repeat.                      */
FO_HD unsigned long long fo_rng_key(unsigned long long seed, unsigned long long step, unsigned long long tensor,
                                    unsigned long long index_hi) {
    return fo_mix64(fo_mix64(fo_mix64(fo_mix64(seed) ^ step) ^ tensor) ^ index_hi);
}
FO_HD unsigned fo_rng_subkey(unsigned long long key, int j) {
    return (unsigned)fo_mix64(key + 0x9e3779b97f4a7c15ULL * (unsigned long long)(j + 1));
}

/* ---- 8 lanes at a time, in GCC vector types (cpu.h's fo_lp_vloop; every clone compiles
 * them): the same bits as fo_bf16_to_float, fo_float_to_bf16 and fo_hash32, lane by lane.
 * GCC's own vectorization of the per-element forms inside the rule's loop cost about twice
 * the instructions (an extract per widening, a mask per narrowing, spills), and a bfloat16
 * loop ran at twice the float32 loop's time in cache (bench/lowp_loop.cpp).               */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define FO_LP_VEC 1
typedef float fo_lp_v8f __attribute__((vector_size(32)));
typedef unsigned fo_lp_v8u __attribute__((vector_size(32)));
typedef unsigned short fo_lp_v8h __attribute__((vector_size(16)));
typedef unsigned short fo_lp_v16h __attribute__((vector_size(32)));
static inline fo_lp_v8u fo_hash32_v8(fo_lp_v8u x) { return fo_hash32_of(x); }
/* 8 bfloat16 -> float, each 16-bit word shifted to the top of its 32-bit lane.  Written as
 * a loop over the lanes, which GCC turns into one vpmovzxwd from memory and a shift on
 * AVX2 (its __builtin_convertvector took two half-width widenings and an insert, and a
 * shuffle with zeros three shuffles: a stand-alone bfloat16-state Adam loop took 0.71-0.89
 * ns/element with those, 0.63 with this form, as with AVX2 intrinsics) */
static inline fo_lp_v8f fo_bf16_load_v8(const fo_bf16_bits *q) {
    fo_lp_v8u r;
    for (int l = 0; l < 8; l++) r[l] = (unsigned)q[l] << 16;
    return (fo_lp_v8f)r;
}
/* the rounded bits of 8 floats, bfloat16 in the top half of each lane (fo_float_to_bf16) */
template <bool SR> static inline fo_lp_v8u fo_bf16_round_v8(fo_lp_v8f x, fo_lp_v8u r) {
    const fo_lp_v8u u = (fo_lp_v8u)x;
    const fo_lp_v8u add = SR ? (r & 0xFFFFu) : 0x7FFFu + ((u >> 16) & 1u);
    return x != x ? (u | 0x400000u) : u + add;
}
/* 16 results (two rounded vectors) -> 16 bfloat16: the top halves, in order */
static inline void fo_bf16_store_v16(fo_bf16_bits *q, fo_lp_v8u a, fo_lp_v8u b) {
    const fo_lp_v16h r = __builtin_shufflevector((fo_lp_v16h)a, (fo_lp_v16h)b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19,
                                                 21, 23, 25, 27, 29, 31);
    memcpy(q, &r, sizeof r);
}
#endif

/* ---- storage policies: how the loop loads and stores one buffer ------------------
 * fo_same<T>: the arithmetic type itself (float32/float64 buffers, the default);
 * fo_bf16s:   bfloat16 bits, widened to float on load, rounded on store.            */
template <typename T> struct fo_same {
    typedef T type;
    enum { LOWP = 0 };
    FO_HD static T load(T v) { return v; }
    FO_HD static T store(T v, unsigned, bool) { return v; }
};
struct fo_bf16s {
    typedef fo_bf16_bits type;
    enum { LOWP = 1 };
    FO_HD static float load(fo_bf16_bits v) { return fo_bf16_to_float(v); }
    FO_HD static fo_bf16_bits store(float v, unsigned r, bool stochastic) { return fo_float_to_bf16(v, r, stochastic); }
};

/* Where the random bits of one segment come from: subkeys k[0..2] (fo_rng_subkey) and the
 * index in the tensor of the segment's first element (low 32 bits).  Stochastic or not is
 * a template argument of the loop (cpu.h), so nearest rounding draws no bits at all.   */
struct fo_rng {
    unsigned k[3];
    unsigned i0;
    bool stochastic;   /* read by the loops that pick SR at run time (cpu_reduce.h, q8.h); fo_loop itself takes SR */
};

#endif /* FUSEDOPTIM_LOWP_H */
