/* bench/lowp_vec_check.cpp -- lowp.h's 8-lane bfloat16 conversions against the per-element
 * definitions, on every input.
 *
 * fo_bf16_round_v8 + fo_bf16_store_v16 (the rounding cpu.h's fo_lp_vloop stores) against
 * fo_float_to_bf16 for all 2^32 float bit patterns (NaN, Inf, denormals included), round to
 * nearest, and stochastic with random words that put the low 16 bits just below, at and above
 * every carry (0x0000, 0x0001, 0x7FFF, 0x8000, 0xFFFF, and the pattern's own complement), and
 * fo_bf16_load_v8 against fo_bf16_to_float for all 65536 bfloat16 patterns; fo_hash32_v8
 * against fo_hash32 on 2^28 counters.  Prints the mismatches (0 expected) and exits 1 on any.
 * Compile it with the package's flags for the clone to check, e.g. AVX2 and the baseline:
 *
 *   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -DFO_NO_MULTIVERSION \
 *       -march=x86-64-v3 -std=c++17 -Wno-psabi -I csrc bench/lowp_vec_check.cpp -o /tmp/lvc && /tmp/lvc
 *   (the same with -march=x86-64 for the baseline clone, -march=x86-64-v4 on an AVX-512 machine)
 */
#include "fusedoptim/cpu.h"
#include <stdio.h>
#include <string.h>

int main() {
#ifndef FO_LP_VEC
    printf("FO_LP_VEC is not defined for this compiler: nothing to check\n");
    return 0;
#else
    unsigned long long bad = 0, checked = 0;
    const unsigned fixed[5] = {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0xFFFFu};
    fo_bf16_bits out[16];
    for (unsigned long long base = 0; base < (1ULL << 32); base += 16) {
        float x[16];
        unsigned u[16];
        for (int l = 0; l < 16; l++) {
            u[l] = (unsigned)(base + (unsigned long long)l);
            memcpy(&x[l], &u[l], 4);
        }
        fo_lp_v8f a, b;
        memcpy(&a, x, 32);
        memcpy(&b, x + 8, 32);
        for (int mode = 0; mode < 7; mode++) {
            fo_lp_v8u ra, rb;
            unsigned r[16];
            for (int l = 0; l < 16; l++) r[l] = mode < 5 ? fixed[mode] : (mode == 5 ? ~u[l] : u[l] * 0x9E3779B9u);
            memcpy(&ra, r, 32);
            memcpy(&rb, r + 8, 32);
            if (mode == 0) {
                fo_bf16_store_v16(out, fo_bf16_round_v8<false>(a, ra), fo_bf16_round_v8<false>(b, rb));
                for (int l = 0; l < 16; l++) bad += out[l] != fo_float_to_bf16(x[l], 0u, false);
            }
            fo_bf16_store_v16(out, fo_bf16_round_v8<true>(a, ra), fo_bf16_round_v8<true>(b, rb));
            for (int l = 0; l < 16; l++) bad += out[l] != fo_float_to_bf16(x[l], r[l], true);
        }
        checked += 16;
    }
    printf("rounding: %llu float patterns x (nearest + 7 stochastic words): %llu mismatches\n", checked, bad);
    unsigned long long bad_w = 0;
    for (unsigned base = 0; base < 65536u; base += 8) {
        fo_bf16_bits q[8];
        for (int l = 0; l < 8; l++) q[l] = (fo_bf16_bits)(base + (unsigned)l);
        const fo_lp_v8f v = fo_bf16_load_v8(q);
        for (int l = 0; l < 8; l++) {
            const float s = fo_bf16_to_float(q[l]);
            bad_w += memcmp(&s, &v[l], 4) != 0;
        }
    }
    printf("widening: 65536 bfloat16 patterns: %llu mismatches\n", bad_w);
    unsigned long long bad_h = 0;
    const fo_lp_v8u lane = {0u, 1u, 2u, 3u, 4u, 5u, 6u, 7u};
    for (unsigned i = 0; i < (1u << 28); i += 8) {
        const fo_lp_v8u h = fo_hash32_v8((i + lane) ^ 0x5bd1e995u);
        for (int l = 0; l < 8; l++) bad_h += h[l] != fo_hash32((i + (unsigned)l) ^ 0x5bd1e995u);
    }
    printf("hash: 2^28 counters: %llu mismatches\n", bad_h);
    return bad || bad_w || bad_h ? 1 : 0;
#endif
}
