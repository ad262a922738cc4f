/* bench/q8_stoch_check.cpp -- the vector stochastic-code quantizer (q8.h fo_q8_stoch32 /
 * fo_q8_stoch_block, the fo_q8_stabs estimate) against the scalar rule that defines the codes
 * (fo_q8_stoch_code, which the CUDA kernels run), on every float32 value in [0, 1] (and a
 * little above) of both signs and both code maps, each with several random words: the three
 * around the value's own threshold (r/2^16 next to (a - mag[kf]) / gap[kf], where the rounding
 * flips: -1, 0, +1) and the counter hash's bits through fo_q8_stoch_block; then above 1, Inf
 * and NaN with every 16-bit word; then random blocks through fo_q8_quant<SIGNED, true> (absmax,
 * 1/absmax, both bit halves, indices across 2^32, short last blocks).  Prints the mismatches
 * (there must be none) and exits nonzero on any.  A few minutes of CPU for the exhaustive
 * part; pass any argument to skip it.  Compile with the package's flags for one clone:
 *
 *   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -DFO_NO_MULTIVERSION \
 *       -march=x86-64-v3 -std=c++17 -I csrc bench/q8_stoch_check.cpp -o /tmp/q8scheck && /tmp/q8scheck
 *   (and -march=x86-64 for the baseline clone)
 */
#include "fusedoptim/q8.h"
#include <stdio.h>
#include <stdlib.h>
#include <vector>

static long shown = 0;
/* the word next to the threshold of a (pattern 0, 1, 2: -1, 0, +1) */
static unsigned near_word(float a, const fo_q8_table &t, int pat) {
    a = a < 1.0f ? a : 1.0f;
    int k = t.floor_[fo_q8_key(a)];
    k += a >= t.mag[k + 1];
    const double f = t.gap[k] > 0.0f ? ((double)a - t.mag[k]) / t.gap[k] : 0.0;
    long r = (long)(f * 65536.0) + pat - 1;
    return (unsigned)(r < 0 ? 0 : r > 65535 ? 65535 : r);
}
template <bool SG> static long check(const float *v, const unsigned char *q, const unsigned *r, ptrdiff_t m, float inv,
                                     const fo_q8_table &t) {
    long bad = 0;
    for (ptrdiff_t i = 0; i < m; i++) {
        const int c = fo_q8_stoch_code<SG>(v[i], inv, r[i], t.mag, t.gap, t.floor_);
        if (c != q[i]) {
            if (shown++ < 20) printf("SG %d x=%08x (%.9g) inv %g r %u got %d want %d\n", SG, fo_float_as_bits(v[i]), v[i], inv, r[i], q[i], c);
            bad++;
        }
    }
    return bad;
}
/* every float with bits lo .. hi - 1 (| sign), patterns 0..2 through fo_q8_stoch32, pattern 3
 * (the hash of the bits as the index) through fo_q8_stoch_block */
template <bool SG> static long run(unsigned lo, unsigned hi, unsigned sign, int npat) {
    const fo_q8_table &t = fo_q8_tables[SG];
    const fo_q8_stab &w = fo_q8_stabs[SG];
    const fo_q8_svt T = fo_q8_svt_load(w);
    const ptrdiff_t N = 1 << 16;
    std::vector<float> v(N);
    std::vector<unsigned char> q(N);
    std::vector<unsigned> r(N);
    long bad = 0;
    for (unsigned long long b0 = lo; b0 < hi; b0 += N) {
        const ptrdiff_t m = (ptrdiff_t)((hi - b0) < (unsigned long long)N ? hi - b0 : N) & ~(ptrdiff_t)31;
        if (!m) break;
        for (ptrdiff_t i = 0; i < m; i++) v[i] = fo_bits_as_float((unsigned)(b0 + i) | sign);
        for (int pat = 0; pat < npat; pat++) {
            if (pat < 3) {
                for (ptrdiff_t i = 0; i < m; i++) r[i] = near_word(fo_abs(v[i]), t, pat);
                for (ptrdiff_t i = 0; i < m; i += 32) {
                    fo_q8_v8u rv[4];
                    memcpy(rv, &r[i], sizeof rv);
                    fo_q8_stoch32<SG>(&v[i], 1.0f, rv, w, T, t, &q[i]);
                }
            } else {
                const unsigned kx = 0x9e3779b9u * (unsigned)pat, sh = 16 * (pat & 1);
                for (ptrdiff_t i = 0; i < m; i++) r[i] = (fo_hash32(((unsigned)b0 + (unsigned)i) ^ kx) >> sh) & 0xFFFFu;
                fo_q8_stoch_block<SG>(v.data(), m, 1.0f, kx, (unsigned)b0, sh, w, t, q.data());
            }
            bad += check<SG>(v.data(), q.data(), r.data(), m, 1.0f, t);
        }
    }
    return bad;
}
int main(int argc, char **argv) {
    const int rc = fo_q8_init();
    printf("init %d\n", rc);
    fflush(stdout);
    if (rc) return 1;
    long bad = 0;
    if (argc < 2)
        for (int sgi = 0; sgi < 2; sgi++) {
            const unsigned sign = sgi ? 0x80000000u : 0u;
            const int npat = sgi ? 4 : 5;   /* negative values: the words -1 and 0 skipped */
            bad += run<true>(0, 0x3F800100u, sign, npat);
            bad += run<false>(0, 0x3F800100u, sign, npat);
            printf("sign %x bad %ld\n", sign, bad);
            fflush(stdout);
        }
    /* above 1, Inf, NaN (both signs) with every 16-bit word */
    {
        const unsigned sp[] = {0x3F800000u, 0x3F800001u, 0x40000000u, 0x7F7FFFFFu, 0x7F800000u, 0x7F800001u, 0x7FC00000u, 0x7FFFFFFFu};
        const ptrdiff_t N = 65536;
        std::vector<float> v(N);
        std::vector<unsigned char> q(N);
        std::vector<unsigned> r(N);
        for (unsigned x : sp)
            for (unsigned sign = 0; sign < 2; sign++)
                for (int sg = 0; sg < 2; sg++) {
                    for (ptrdiff_t i = 0; i < N; i++) v[i] = fo_bits_as_float(x | (sign << 31)), r[i] = (unsigned)i;
                    for (ptrdiff_t i = 0; i < N; i += 32) {
                        fo_q8_v8u rv[4];
                        memcpy(rv, &r[i], sizeof rv);
                        if (sg) fo_q8_stoch32<true>(&v[i], 1.0f, rv, fo_q8_stabs[1], fo_q8_svt_load(fo_q8_stabs[1]), fo_q8_tables[1], &q[i]);
                        else fo_q8_stoch32<false>(&v[i], 1.0f, rv, fo_q8_stabs[0], fo_q8_svt_load(fo_q8_stabs[0]), fo_q8_tables[0], &q[i]);
                    }
                    bad += sg ? check<true>(v.data(), q.data(), r.data(), N, 1.0f, fo_q8_tables[1])
                              : check<false>(v.data(), q.data(), r.data(), N, 1.0f, fo_q8_tables[0]);
                }
    }
    printf("specials: bad %ld\n", bad);
    fflush(stdout);
    /* random blocks through fo_q8_quant (absmax, inv != 1, both halves of the word, indices
     * across 2^32, short blocks) */
    srand(1);
    long bad2 = 0;
    std::vector<float> v(4096);
    std::vector<unsigned char> q(4096);
    std::vector<unsigned> r(4096);
    float am;
    for (int it = 0; it < 20000; it++) {
        const int B = 64 << (it % 7);
        const int m = it % 5 == 0 ? 1 + rand() % B : B;
        const float sc = powf(10.f, (float)(rand() % 20 - 10));
        for (int i = 0; i < m; i++) {
            const float z = (float)rand() / RAND_MAX - 0.5f;
            v[i] = z * z * z * sc * (rand() % 5 ? 1.f : 1e-5f);
            if (rand() % 50 == 0) v[i] = 0;
        }
        if (it % 97 == 0) v[rand() % m] = it % 2 ? NAN : INFINITY;
        const unsigned kx = (unsigned)rand() * 2654435761u, i0 = it % 3 == 0 ? 0u - (unsigned)(rand() % 8192) : (unsigned)rand() * 64u;
        const int sh = 16 * (it & 1);
        for (int sg = 0; sg < 2; sg++) {
            if (sg == 0) for (int i = 0; i < m; i++) v[i] = fabsf(v[i]);
            if (sg) fo_q8_quant<true, true>(v.data(), m, fo_q8_tables[1], q.data(), &am, kx, i0, sh);
            else fo_q8_quant<false, true>(v.data(), m, fo_q8_tables[0], q.data(), &am, kx, i0, sh);
            const float inv = fo_q8_inv(am);
            for (int i = 0; i < m; i++) r[i] = (fo_hash32((i0 + (unsigned)i) ^ kx) >> sh) & 0xFFFFu;
            bad2 += sg ? check<true>(v.data(), q.data(), r.data(), m, inv, fo_q8_tables[1])
                       : check<false>(v.data(), q.data(), r.data(), m, inv, fo_q8_tables[0]);
        }
    }
    printf("random blocks: bad %ld\n", bad2);
    return bad || bad2;
}
