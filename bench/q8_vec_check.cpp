/* bench/q8_vec_check.cpp -- the vector nearest-code quantizer (q8.h fo_q8_near_block, the
 * fo_q8_vtabs estimate) against the exact table search (fo_q8_near), on every float32 value
 * in [0, 1] of both signs, values above 1, Inf and NaN, both code maps, then on random blocks
 * through fo_q8_quant (absmax, 1/absmax, short last blocks).  Prints the mismatches (there
 * must be none) and exits nonzero on any.  ~1-2 min of CPU for the exhaustive part; pass any
 * argument to skip it.  Compile with the package's flags for one clone:
 *
 *   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -DFO_NO_MULTIVERSION \
 *       -march=x86-64-v3 -std=c++17 -I csrc bench/q8_vec_check.cpp -o /tmp/q8check && /tmp/q8check
 *   (and -march=x86-64 for the baseline clone)
 */
#include "fusedoptim/q8.h"
#include <stdio.h>
#include <stdlib.h>
#include <vector>
template <bool SG> long run(const fo_q8_table &t, const fo_q8_vtab &w, unsigned lo, unsigned hi, unsigned sign) {
    const ptrdiff_t N = 1 << 16;
    std::vector<float> v(N); std::vector<unsigned char> q(N);
    long bad = 0;
    for (unsigned long long b0 = lo; b0 < hi; b0 += N) {
        ptrdiff_t m = (ptrdiff_t)((hi - b0) < (unsigned long long)N ? hi - b0 : N) & ~(ptrdiff_t)31;
        if (!m) break;
        for (ptrdiff_t i = 0; i < m; i++) v[i] = fo_bits_as_float((unsigned)(b0 + i) | sign);
        if (fo_q8_near_block<SG>(v.data(), m, 1.0f, w, q.data())) fo_q8_near_fix<SG>(v.data(), m, 1.0f, w, t, q.data());
        for (ptrdiff_t i = 0; i < m; i++) {
            const float y = v[i]; const float a = fo_abs(y);
            const int c = fo_q8_code<SG>(y, fo_q8_near(a < 1.0f ? a : 1.0f, t));
            if (c != q[i]) { if (bad < 10) printf("SG %d x=%08x (%g) got %d want %d\n", SG, (unsigned)(b0+i)|sign, y, q[i], c); bad++; }
        }
    }
    return bad;
}
int main(int argc, char **argv) {
    int r = fo_q8_init(); printf("init %d\n", r); fflush(stdout); if (r) return 1;
    long bad = 0;
    for (int sgi = argc > 1 ? 2 : 0; sgi < 2; sgi++) { const unsigned sign = sgi ? 0x80000000u : 0u;
        bad += run<true>(fo_q8_tables[1], fo_q8_vtabs[1], 0, 0x3F800100u, sign);
        bad += run<false>(fo_q8_tables[0], fo_q8_vtabs[0], 0, 0x3F800100u, sign);
        printf("sign %x bad %ld\n", sign, bad); fflush(stdout);
    }
    /* specials: above 1, Inf, NaN, both signs */
    const unsigned sp[] = {0x3F800001u, 0x40000000u, 0x7F7FFFFFu, 0x7F800000u, 0x7F800001u, 0x7FC00000u, 0x7FFFFFFFu};
    for (int sgi = 0; sgi < 2; sgi++) for (unsigned sign = sgi ? 0x80000000u : 0u, once = 1; once; once = 0)
        for (unsigned x : sp) { bad += run<true>(fo_q8_tables[1], fo_q8_vtabs[1], x, x + 64, sign); bad += run<false>(fo_q8_tables[0], fo_q8_vtabs[0], x, x + 64, sign); }
    printf("bad %ld\n", bad); fflush(stdout);
    /* random blocks through fo_q8_quant (absmax, inv != 1) */
    srand(1); long bad2 = 0, amb = 0;
    std::vector<float> v(256); std::vector<unsigned char> q(256), q2(256); float am;
    for (int it = 0; it < 20000; it++) {
        int m = it % 7 == 0 ? 1 + rand() % 256 : 256;
        float sc = powf(10.f, (float)(rand() % 20 - 10));
        for (int i = 0; i < m; i++) { float z = ((float)rand() / RAND_MAX - 0.5f); v[i] = z * z * z * sc * (rand() % 5 ? 1.f : 1e-5f); if (rand()%50==0) v[i]=0; }
        for (int sg = 0; sg < 2; sg++) {
            if (sg == 0) for (int i = 0; i < m; i++) v[i] = fabsf(v[i]);
            if (sg) fo_q8_quant<true, false>(v.data(), m, fo_q8_tables[1], q.data(), &am, 0, 0, 0);
            else fo_q8_quant<false, false>(v.data(), m, fo_q8_tables[0], q.data(), &am, 0, 0, 0);
            const float inv = am > 0.0f && am < fo_inf<float>() ? 1.0f / am : 0.0f;
            for (int i = 0; i < m; i++) {
                const float y = v[i] * inv; const float a = fo_abs(y);
                const int c = sg ? fo_q8_code<true>(y, fo_q8_near(a < 1.0f ? a : 1.0f, fo_q8_tables[1])) : fo_q8_code<false>(y, fo_q8_near(a < 1.0f ? a : 1.0f, fo_q8_tables[0]));
                bad2 += c != q[i];
            }
        }
    }
    printf("bad2 %ld\n", bad2);
    return bad || bad2;
}
