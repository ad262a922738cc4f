/* bench/rule_loop.cpp -- the compute cost of the float32 element loops, without the Python layer.
 *
 * Thread CPU time (CLOCK_THREAD_CPUTIME_ID) per element of one segment (cpu.h fo_seg, the
 * extension's run-time dispatch, FO_PLAIN with the small-lerp form, no EMA) of Adam, Yogi,
 * AdaBelief, Ftrl (power -0.5), ScheduleFreeAdamW, ASGD and Adan, against the STREAM loop with the same
 * number of buffers (fo_stream_seg), at n elements (default 4096: every buffer in L1/L2,
 * so what is left is the loop's own cost), best of 25 trials.  A rule that costs more per
 * element in cache than STREAM does can't reach the STREAM figure at sizes where the data
 * comes from L3 (1M elements) unless the core overlaps it with the transfers.  The last line
 * is the floor of the 1 sqrt + 1 div rules: a loop of x / sqrt(z) and nothing else.
 * Asserts nothing; compile it with the package's flags for the AVX2 clone and run:
 *
 *   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -DFO_NO_MULTIVERSION \
 *       -march=x86-64-v3 -std=c++17 -I csrc bench/rule_loop.cpp -o /tmp/rule_loop
 *   /tmp/rule_loop [n] [reps]
 *   objdump -d --no-show-raw-insn /tmp/rule_loop | awk '/<yogi_f32>:/,/ret/'   # a loop's asm
 */
#include "fusedoptim/cpu.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <vector>

#define FO_ENTRY_(a)                                                                                   \
    extern "C" __attribute__((noinline)) void a##_f32(const double *h, unsigned f, char **b, ptrdiff_t n) { \
        fo_seg<fo_##a, float>(h, f, b, n);                                                             \
    }
FO_ENTRY_(adam)
FO_ENTRY_(yogi)
FO_ENTRY_(adabelief)
FO_ENTRY_(ftrl)
FO_ENTRY_(sf_adamw)
FO_ENTRY_(asgd)
FO_ENTRY_(adan)
/* the floor of every rule with one square root and one division per element: those two
 * IEEE operations (one vsqrtps and one vdivps per 8 elements) and nothing else */
extern "C" __attribute__((noinline)) void sqrt_div_f32(float *FO_RESTRICT y, const float *FO_RESTRICT x,
                                                       const float *FO_RESTRICT z, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] / sqrtf(z[i]);
}
extern "C" __attribute__((noinline)) void stream_f32(const double *h, unsigned k, char **b, ptrdiff_t n) {
    fo_stream_seg<float>(h, k, b, n);
}

static double cpu_ns() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

struct Case {
    const char *name;
    void (*fn)(const double *, unsigned, char **, ptrdiff_t);
    unsigned flags;
    int k;                      /* buffers: param, grad, state */
    std::vector<double> scalars; /* the algorithm's block after the common one */
};

int main(int argc, char **argv) {
    const ptrdiff_t n = argc > 1 ? atol(argv[1]) : 4096;
    const long reps = argc > 2 ? atol(argv[2]) : (long)(1e7 / (double)n) + 1;
    const double common[FO_NCOMMON] = {1, 0, 0, 0, INFINITY};
    /* per-step scalars of step 10 with the defaults (lr 1e-3, betas 0.9/0.999, eps 1e-8) */
    const double b1 = 0.9, b2 = 0.999, t = 10, bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    std::vector<Case> cases = {
        {"adam", adam_f32, 0, 4, {1, 1 - b1, b2, 1 - b2, sqrt(bc2), 1e-8, -1e-3 / bc1, 0, 1}},
        {"yogi", yogi_f32, 0, 4, {1, 1 - b1, 1 - b2, sqrt(bc2), 1e-3, -1e-3 / bc1}},
        {"adabelief", adabelief_f32, 0, 4, {1, 1 - b1, b2, 1 - b2, 1e-16, sqrt(bc2), -1e-3 / bc1, 1}},
        /* Keras Ftrl defaults: lr 1e-3, power -0.5, l1 = l2 = 0, beta 0 -> two_l2 = 0 */
        {"ftrl", ftrl_f32, 1, 4, {1, 0, 0.5, 1e-3, 0, 0}},
        {"sf_adamw", sf_adamw_f32, 0, 4, {b2, 1 - b2, bc2, 1e-8, 0, 0.1, -1e-3 * (0.9 * 0.9 - 1), -1e-3}},
        {"asgd", asgd_f32, 0, 3, {1 - 1e-4 * 1e-2, -1e-2, 1, 0}},
        {"adan", adan_f32, 0, 6,
         {1, 1, 0.02, 0.92, 0.08, 0.99, 0.01, sqrt(1 - pow(0.99, t)), 1e-8, -1e-3 / (1 - pow(0.98, t)),
          -1e-3 * 0.92 / (1 - pow(0.92, t)), 0, 0}},
    };
    /* buf[1] and buf[6]: two gradients, used on alternate calls (a constant gradient drives
     * some states towards 0, into float32 denormals, whose arithmetic is slow) */
    std::vector<std::vector<float> > buf(7, std::vector<float>(n));
    auto fill = [&]() {
        for (ptrdiff_t i = 0; i < n; i++) {
            buf[0][i] = 0.01f * (float)(i % 97) - 0.4f;
            buf[1][i] = 0.001f * (float)((i * 7) % 31) - 0.0155f;
            buf[6][i] = 0.002f * (float)((i * 5) % 29) - 0.0285f;
            for (int k = 2; k < 6; k++) buf[k][i] = k == 3 ? 1e-6f * (float)(1 + i % 13) : 0.001f * (float)(i % 11);
        }
    };
    printf("ns per element (thread CPU time, best of 25), n = %td, %ld reps; rule / STREAM with the same k\n", n, reps);
    for (const Case &cs : cases) {
        std::vector<double> h(common, common + FO_NCOMMON);
        h.insert(h.end(), cs.scalars.begin(), cs.scalars.end());
        double hs[1] = {0.0};
        char *b[FO_STATE + FO_MAXSTATE] = {(char *)buf[0].data(), (char *)buf[1].data(), NULL};
        for (int k = 2; k < cs.k; k++) b[FO_STATE + k - 2] = (char *)buf[k].data();
        double best[2] = {1e30, 1e30};
        for (int trial = 0; trial < 25; trial++) {
            for (int which = 0; which < 2; which++) {
                fill();
                const double t0 = cpu_ns();
                for (long r = 0; r < reps; r++) {
                    b[1] = (char *)buf[r & 1 ? 6 : 1].data();
                    if (which == 0) cs.fn(h.data(), cs.flags, b, n);
                    else stream_f32(hs, (unsigned)cs.k, b, n);
                }
                const double dt = (cpu_ns() - t0) / ((double)reps * (double)n);
                best[which] = dt < best[which] ? dt : best[which];
            }
        }
        printf("%-10s k=%d  rule %.3f  stream %.3f  ratio %.2f\n", cs.name, cs.k, best[0], best[1], best[0] / best[1]);
    }
    double floor_ns = 1e30;
    for (int trial = 0; trial < 25; trial++) {
        const double t0 = cpu_ns();
        for (long r = 0; r < reps; r++) sqrt_div_f32(buf[4].data(), buf[r & 1 ? 0 : 5].data(), buf[3].data(), n);
        const double dt = (cpu_ns() - t0) / ((double)reps * (double)n);
        floor_ns = dt < floor_ns ? dt : floor_ns;
    }
    printf("%-10s      x / sqrt(z) alone %.3f: the floor of a rule with 1 sqrt + 1 div per element\n", "sqrt+div", floor_ns);
    return 0;
}
