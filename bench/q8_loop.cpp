/* bench/q8_loop.cpp -- the cost of the 8-bit state loops (q8.h), without the Python layer.
 *
 * Measures the CPU time per element of one Adam segment with int8 state (fo_q8_seg: dequantize
 * both moments into the stack buffers, fo_loop, absmax and requantize), nearest and stochastic
 * rounding, and of its pieces -- dequantizing one buffer (the 256-entry table read), quantizing
 * one buffer (absmax and codes) of either map with either rounding -- against the float32 Adam
 * segment.  Thread CPU time
 * (CLOCK_THREAD_CPUTIME_ID), best of 5, so other processes on a busy machine matter less.
 * At the 16M STREAM rate an int8 Adam step moves 16.06 B/element; on the 2-core Zen 3 VM
 * (~25.8 GB/s) that is ~0.62 ns/element wall, ~1.2 ns of CPU per thread: the whole segment
 * has to fit in that to run at the roofline.  Asserts nothing; compile it with the package's
 * flags for the AVX2 clone and run (repetitions, elements, block):
 *
 *   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -DFO_NO_MULTIVERSION \
 *       -march=x86-64-v3 -std=c++17 -I csrc bench/q8_loop.cpp -o /tmp/q8loop
 *   /tmp/q8loop 2000 65536 256
 *   objdump -d --no-show-raw-insn -C /tmp/q8loop | less   # fo_q8_quant_blk, adam_q8
 */
#include "fusedoptim/q8.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <vector>
extern "C" __attribute__((noinline)) void adam_q8(const double *h, unsigned f, char **b, float *const *am, ptrdiff_t n, const fo_q8_ctx *x) {
    fo_q8_seg<fo_adam, 0>(h, f, b, am, n, x);
}
extern "C" __attribute__((noinline)) void deq(const unsigned char *q, float a, const float *map, float *out, ptrdiff_t m) { fo_q8_dequant(q, a, map, out, m); }
extern "C" __attribute__((noinline)) void quant(int s, int st, const float *v, ptrdiff_t m, unsigned char *q, float *am, unsigned i0) { fo_q8_quant_blk(s, st, v, m, q, am, 0x9e3779b9u, i0, 16 * st); }
extern "C" __attribute__((noinline)) void adam_f32(const double *h, unsigned f, char **b, ptrdiff_t n) { fo_seg<fo_adam, float>(h, f, b, n); }
static double cpu_ns() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    if (fo_q8_init()) return 1;
    const int reps = argc > 1 ? atoi(argv[1]) : 2000;
    const ptrdiff_t n = argc > 2 ? atoi(argv[2]) : 65536;
    std::vector<float> p(n), g(n), m(n), v(n), am(n / 256 + 1), av(n / 256 + 1);
    std::vector<unsigned char> mq(n), vq(n);
    for (ptrdiff_t i = 0; i < n; i++) { p[i] = 0.01f * (float)(i % 97); g[i] = 0.001f * (float)((i * 7) % 31) - 0.015f; }
    double h[FO_NCOMMON + 9] = {1, 0, 0, 0, INFINITY, 1, 0.1, 0.999, 0.001, 0.03, 1e-8, -1e-3, 0, 1};
    const ptrdiff_t blk = argc > 3 ? atoi(argv[3]) : 256;
    fo_q8_ctx x = {7, 1, 0, 0, blk, 0};
    float *ams[2] = {am.data(), av.data()};
    char *b[5] = {(char *)p.data(), (char *)g.data(), NULL, (char *)mq.data(), (char *)vq.data()};
    for (int w = 0; w < 3; w++) adam_q8(h, 0, b, ams, n, &x);
    fo_q8_ctx xs = x;
    xs.stochastic = 1;
    double best[8] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
    std::vector<float> ga(n);
    for (ptrdiff_t i = 0; i < n; i++) ga[i] = g[i] * g[i];
    std::vector<float> tmp(256);
    for (int trial = 0; trial < 5; trial++) {
        double t0 = cpu_ns();
        for (int r = 0; r < reps; r++) adam_q8(h, 0, b, ams, n, &x);
        double t = (cpu_ns() - t0) / ((double)reps * n); best[0] = t < best[0] ? t : best[0];
        t0 = cpu_ns();
        for (int r = 0; r < reps; r++) for (ptrdiff_t j = 0; j < n; j += 256) deq(mq.data() + j, am[j / 256], fo_q8_tables[1].map, tmp.data(), 256);
        t = (cpu_ns() - t0) / ((double)reps * n); best[1] = t < best[1] ? t : best[1];
        for (int k = 0; k < 4; k++) {  /* quant: signed near, signed stoch, unsigned near, unsigned stoch */
            const int sg = k < 2, st = k & 1;
            const float *src = sg ? g.data() : ga.data();
            t0 = cpu_ns();
            for (int r = 0; r < reps; r++) for (ptrdiff_t j = 0; j < n; j += 256) quant(sg, st, src + j, 256, mq.data() + j, am.data() + j / 256, (unsigned)j);
            t = (cpu_ns() - t0) / ((double)reps * n); best[4 + k] = t < best[4 + k] ? t : best[4 + k];
        }
        t0 = cpu_ns();
        for (int r = 0; r < reps; r++) adam_q8(h, 0, b, ams, n, &xs);
        t = (cpu_ns() - t0) / ((double)reps * n); best[2] = t < best[2] ? t : best[2];
        char *bf[5] = {(char *)p.data(), (char *)g.data(), NULL, (char *)m.data(), (char *)v.data()};
        t0 = cpu_ns();
        for (int r = 0; r < reps; r++) adam_f32(h, 0, bf, n);
        t = (cpu_ns() - t0) / ((double)reps * n); best[3] = t < best[3] ? t : best[3];
    }
    printf("ns/el n=%td: adam_q8 nearest %.3f stochastic %.3f  dequant(1 buf) %.3f  adam_f32 %.3f\n", n, best[0], best[2], best[1], best[3]);
    printf("  quant(1 buf): signed nearest %.3f stochastic %.3f  unsigned nearest %.3f stochastic %.3f\n", best[4], best[5], best[6], best[7]);
}
