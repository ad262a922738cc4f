/* bench/lowp_loop.cpp -- the cost of the bfloat16 storage loops, without the Python layer.
 *
 * Measures the CPU time per element of one Adam segment (cpu.h fo_lp_seg, bfloat16 state,
 * float32 parameters and gradients, run-time dispatch as the extension does it) against
 * the float32 segment, on 2048 elements that stay in cache: the loop's compute cost alone,
 * which is what decides whether a step can run at the memory roofline.  Thread CPU time
 * (CLOCK_THREAD_CPUTIME_ID), best of 5, so other processes on a busy machine matter less.
 * Asserts nothing; compile it with the package's flags for the AVX2 clone and run:
 *
 *   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -DFO_NO_MULTIVERSION \
 *       -march=x86-64-v3 -std=c++17 -I csrc bench/lowp_loop.cpp -o /tmp/lowp_loop
 *   /tmp/lowp_loop 1; /tmp/lowp_loop 0        # stochastic, nearest rounding
 *   objdump -d --no-show-raw-insn /tmp/lowp_loop | less   # the loop of adam_lp
 */
#include "fusedoptim/cpu.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <vector>

extern "C" __attribute__((noinline)) void adam_lp(const double *h, unsigned f, char **b, ptrdiff_t n,
                                                 const fo_lp_ctx *x) {
    fo_lp_seg<fo_adam, 4>(h, f, b, n, x);
}
extern "C" __attribute__((noinline)) void adam_f32(const double *h, unsigned f, char **b, ptrdiff_t n) {
    fo_seg<fo_adam, float>(h, f, b, n);
}
static double cpu_ns() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}
int main(int argc, char **argv) {
    const int stochastic = argc > 1 ? atoi(argv[1]) : 1;
    const int reps = argc > 2 ? atoi(argv[2]) : 20000;
    const ptrdiff_t n = argc > 3 ? atoi(argv[3]) : 2048;
    std::vector<float> p(n), g(n), m(n), v(n);
    std::vector<unsigned short> mb(n), vb(n);
    for (ptrdiff_t i = 0; i < n; i++) {
        p[i] = 0.01f * (float)(i % 97);
        g[i] = 0.001f * (float)((i * 7) % 31) - 0.015f;
    }
    /* the common block (gscale, weight_decay, l1, ema_weight, clip_value), then Adam's
     * (decay, 1-beta1, beta2, 1-beta2, bc2_sqrt, eps, neg_step, eps_root, vmax_scale) */
    double h[FO_NCOMMON + 9] = {1, 0, 0, 0, INFINITY, 1, 0.1, 0.999, 0.001, 0.03, 1e-8, -1e-3, 0, 1};
    double best[2] = {1e30, 1e30};
    for (int trial = 0; trial < 5; trial++)
        for (int which = 0; which < 2; which++) {
            const double t0 = cpu_ns();
            for (int rep = 0; rep < reps; rep++) {
                fo_lp_ctx x = {7, (unsigned long long)rep + 1, 0, 0, stochastic};
                if (which == 0) {
                    char *b[5] = {(char *)p.data(), (char *)g.data(), NULL, (char *)mb.data(), (char *)vb.data()};
                    adam_lp(h, 0, b, n, &x);
                } else {
                    char *b[5] = {(char *)p.data(), (char *)g.data(), NULL, (char *)m.data(), (char *)v.data()};
                    adam_f32(h, 0, b, n);
                }
            }
            const double t = (cpu_ns() - t0) / ((double)reps * (double)n);
            best[which] = t < best[which] ? t : best[which];
        }
    printf("ns per element, in cache: Adam bfloat16 state (%s rounding) %.3f, float32 state %.3f\n",
           stochastic ? "stochastic" : "nearest", best[0], best[1]);
    return 0;
}
