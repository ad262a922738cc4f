/* bench/overlap_loop.cpp -- do the float32 element loops overlap their arithmetic with the
 * memory transfers?  Software prefetch and blocking variants of cpu.h's loop, two threads.
 *
 * Time of one step of Adam, Yogi, AdaBelief, Ftrl (power -0.5), ScheduleFreeAdamW and
 * Adan (the scalars of bench/rule_loop.cpp: FO_PLAIN, small lerp, no EMA) over n elements
 * split into two static halves (multiples of 64 elements, as _kernels.pyx's driver cuts
 * them), one OpenMP parallel region per step, against the STREAM loop (cpu.h
 * fo_stream_seg) with the same number of buffers k.  %roof = STREAM time / loop time, as
 * `python -m fusedoptim.bench` reports it.  Loop variants, all with the same rule and
 * therefore the same bits (checked here against the first, bit for bit):
 *   plain     cpu.h's fo_loop over the whole segment (the loop before fo_loop_mem)
 *   pfD       every 16 elements (one 64-byte line of each float32 buffer), __builtin_prefetch
 *             of every kept buffer D bytes ahead (written buffers with rw = 1), then cpu.h's
 *             fo_loop over those 16 elements
 *   pfwD      the same with PREFETCHW (inline asm) for the written buffers
 *   blkB      blocks of B elements: prefetch every line of the next block, then run the block
 *   align     the elements before the parameter's first 64-byte boundary, then plain from there
 *             (every buffer aligned when all share the parameter's offset in its page)
 *   alignpf1k align, then pf1024
 *   cpu.h     cpu.h's fo_seg as the extension runs it: fo_loop_mem, that is align from
 *             FO_ALIGN_MIN (1024) elements per segment on, alignpf1k from FO_PREFETCH_MIN (32768)
 * and two STREAM loops: cpu.h's (`stream`, with fo_loop_mem's structure) and `st_plain`
 * (fo_stream_body over the whole segment, the loop before fo_loop_mem).
 * The variants are generic (the kept-buffer mask of the descriptor, no per-rule code).
 * Time is each thread's CPU time (CLOCK_THREAD_CPUTIME_ID: stalls on memory count, time
 * descheduled does not), because the 2-core machine is shared: in one sample every thread
 * runs `reps` steps over its half after one warm-up step; a thread's figure is its best
 * sample of `trials`, the reported figure the mean of the two threads'.  The variants of
 * one algorithm are interleaved within every trial so that the machine's load hits them
 * alike.  Asserts nothing.
 *
 *   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -DFO_NO_MULTIVERSION \
 *       -march=x86-64-v3 -fopenmp -std=c++17 -I csrc bench/overlap_loop.cpp -o /tmp/overlap_loop
 *   OMP_PROC_BIND=close FO_OFFSET=16 /tmp/overlap_loop [trials] [n ...]   # default 15; 4096 1M 16M
 */
#include "fusedoptim/cpu.h"
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

/* ---- the loop variants --------------------------------------------------------------- */
template <int LOC, bool W> static FO_INLINE void pf(const void *q) {
    if (W && LOC < 0) {
        __asm__ volatile("prefetchw %0" ::"m"(*(const char *)q));
    } else {
        __builtin_prefetch(q, W ? 1 : 0, LOC < 0 ? 3 : LOC);
    }
}

/* prefetch one line D bytes ahead of element i of every kept buffer */
template <class A, unsigned F, int D, int LOC>
static FO_INLINE void pf_line(ptrdiff_t i, float *p, const float *g, float *e, float *b0, float *b1, float *b2,
                              float *b3) {
    constexpr unsigned K = A::mask(F);
    const ptrdiff_t j = i + D / (ptrdiff_t)sizeof(float);
    pf<LOC, true>(p + j);
    pf<LOC < 0 ? 3 : LOC, false>(g + j);
    if (e) pf<LOC, true>(e + j);
    if (K & 1u) pf<LOC, true>(b0 + j);
    if (K & 2u) pf<LOC, true>(b1 + j);
    if (K & 4u) pf<LOC, true>(b2 + j);
    if (K & 8u) pf<LOC, true>(b3 + j);
}

/* V = 0: cpu.h's fo_loop; V = 1: prefetch D bytes ahead every 16 elements (LOC: locality,
 * -1 = PREFETCHW for written buffers); V = 2: blocks of D elements, the next one prefetched;
 * V = 3 / 4: the elements before the parameter's first 64-byte boundary first, then V = 0 / 1
 * from that boundary on (every buffer aligned when all share the parameter's offset) */
template <class A, unsigned F, int M, int V, int D, int LOC>
static FO_INLINE void loop_v(ptrdiff_t n, float *p, const float *g, float *e, float *b0, float *b1, float *b2,
                             float *b3, const fo_common<float> &c, const typename A::template hp<float> &h) {
    if constexpr (V == 0) {
        fo_loop<A, float, F, M>(n, p, g, e, b0, b1, b2, b3, c, h);
    } else if constexpr (V >= 3) {
        ptrdiff_t head = (ptrdiff_t)((-(size_t)p & 63u) / sizeof(float));
        if (head > n) head = n;
        fo_loop<A, float, F, M>(head, p, g, e, b0, b1, b2, b3, c, h);
        loop_v<A, F, M, V - 3, D, LOC>(n - head, p + head, g + head, fo_at(e, head), fo_at(b0, head),
                                        fo_at(b1, head), fo_at(b2, head), fo_at(b3, head), c, h);
    } else {
        ptrdiff_t i = 0;
        if (V == 1) {
            for (; i + 16 <= n; i += 16) {
                pf_line<A, F, D, LOC>(i, p, g, e, b0, b1, b2, b3);
                fo_loop<A, float, F, M>(16, p + i, g + i, fo_at(e, i), fo_at(b0, i), fo_at(b1, i), fo_at(b2, i),
                                        fo_at(b3, i), c, h);
            }
        } else {
            for (; i + D <= n; i += D) {
                if (i + 2 * D <= n)
                    for (ptrdiff_t l = 0; l < D; l += 16) pf_line<A, F, D * 4, LOC>(i + l, p, g, e, b0, b1, b2, b3);
                fo_loop<A, float, F, M>(D, p + i, g + i, fo_at(e, i), fo_at(b0, i), fo_at(b1, i), fo_at(b2, i),
                                        fo_at(b3, i), c, h);
            }
        }
        fo_loop<A, float, F, M>(n - i, p + i, g + i, fo_at(e, i), fo_at(b0, i), fo_at(b1, i), fo_at(b2, i),
                                fo_at(b3, i), c, h);
    }
}

/* fo_seg + fo_seg_flags of cpu.h for one fixed flag set, with loop_v in place of fo_loop */
template <class A, unsigned F, int V, int D, int LOC>
static void seg_v(const double *hd, unsigned, char **bufs, ptrdiff_t n) {
    fo_common_scalars cs;
    typename A::scalars as;
    memcpy(&cs, hd, sizeof cs);
    memcpy(&as, hd + FO_NCOMMON, sizeof as);
    const fo_common<float> c = fo_common<float>::load(cs);
    const typename A::template hp<float> h = A::template hp<float>::load(as);
    constexpr unsigned K = A::mask(F);
    float *slot[FO_MAXSTATE] = {};
    for (int k = 0, kept = 0; k < A::MAXSTATE; k++)
        if ((K >> k) & 1u) slot[k] = FO_BUF(float, FO_STATE + kept++);
    float *p = FO_BUF(float, 0), *g = FO_BUF(float, 1), *e = FO_BUF(float, 2);
    const int mode = e ? FO_EMA : ((c.plain() ? FO_PLAIN : 0) | A::lerp(F, h));
    if (mode == (FO_PLAIN | FO_LERP_SMALL) && A::LERP != 0)
        loop_v<A, F, FO_PLAIN | FO_LERP_SMALL, V, D, LOC>(n, p, g, e, slot[0], slot[1], slot[2], slot[3], c, h);
    else if (mode == FO_PLAIN)
        loop_v<A, F, FO_PLAIN, V, D, LOC>(n, p, g, e, slot[0], slot[1], slot[2], slot[3], c, h);
    else {
        fprintf(stderr, "seg_v: mode %d not built here\n", mode);
        exit(2);
    }
}

typedef void (*seg_fn)(const double *, unsigned, char **, ptrdiff_t);

struct Variant {
    const char *name;
    int v, d, loc;
};
/* the list of variants: name, kind, distance / block, locality */
static const Variant VARIANTS[] = {
    {"plain", 0, 0, 0},      {"pf512", 1, 512, 3},    {"pf1024", 1, 1024, 3}, {"pf2048", 1, 2048, 3},
    {"pfw1024", 1, 1024, -1}, {"blk2048", 2, 2048, 3}, {"align", 3, 0, 0},     {"alignpf1k", 4, 1024, 3},
    {"cpu.h", -1, 0, 0},
};
#define NVAR (int)(sizeof VARIANTS / sizeof VARIANTS[0])

template <class A, unsigned F> struct Table {
    seg_fn fn[NVAR];
    Table() {
        fn[0] = seg_v<A, F, 0, 0, 0>;
        fn[1] = seg_v<A, F, 1, 512, 3>;
        fn[2] = seg_v<A, F, 1, 1024, 3>;
        fn[3] = seg_v<A, F, 1, 2048, 3>;
        fn[4] = seg_v<A, F, 1, 1024, -1>;
        fn[5] = seg_v<A, F, 2, 2048, 3>;
        fn[6] = seg_v<A, F, 3, 0, 0>;
        fn[7] = seg_v<A, F, 4, 1024, 3>;
        fn[8] = [](const double *h, unsigned f, char **b, ptrdiff_t n) { fo_seg<A, float>(h, f, b, n); };
    }
};

static void stream_f32(const double *h, unsigned k, char **b, ptrdiff_t n) { fo_stream_seg<float>(h, k, b, n); }
/* the STREAM loop without the memory side: fo_stream_body over the whole segment (cpu.h
 * before fo_loop_mem), for the comparison */
template <int K> static void stream_plain_k(float c, char **b, ptrdiff_t n) {
    fo_stream_body<float, K>(c, n, (float *)b[0], (const float *)b[1], K > 2 ? (float *)b[FO_STATE] : NULL,
                             K > 3 ? (float *)b[FO_STATE + 1] : NULL, K > 4 ? (float *)b[FO_STATE + 2] : NULL,
                             K > 5 ? (float *)b[FO_STATE + 3] : NULL);
}
static void stream_plain_f32(const double *h, unsigned k, char **b, ptrdiff_t n) {
    if (k == 4) stream_plain_k<4>((float)h[0], b, n);
    else stream_plain_k<6>((float)h[0], b, n);
}

struct Case {
    const char *name;
    const seg_fn *fns;
    unsigned flags;
    int k;
    std::vector<double> scalars;
};

/* one step over n elements, two static halves cut at multiples of 64 elements */
static void chunk(int t, int nthreads, ptrdiff_t n, ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t per = (n + nthreads - 1) / nthreads;
    per = (per + 63) / 64 * 64;
    *lo = t * per < n ? t * per : n;
    *hi = (t + 1) * per < n ? (t + 1) * per : n;
}
static void run_chunk(seg_fn fn, const double *h, unsigned flags, char **b, int nb, ptrdiff_t lo, ptrdiff_t hi) {
    char *bb[FO_STATE + FO_MAXSTATE];
    for (int k = 0; k < nb; k++) bb[k] = b[k] ? b[k] + lo * (ptrdiff_t)sizeof(float) : NULL;
    fn(h, flags, bb, hi - lo);
}
static void step(seg_fn fn, const double *h, unsigned flags, char **b, int nb, ptrdiff_t n, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        ptrdiff_t lo, hi;
        chunk(omp_get_thread_num(), nthreads, n, &lo, &hi);
        if (lo < hi) run_chunk(fn, h, flags, b, nb, lo, hi);
    }
}
static double cpu_ns() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}
/* one sample: every thread runs `reps` steps over its own half (no barrier between
 * steps) and measures them in its own CPU time, which a machine shared with other jobs
 * inflates far less than wall time (a descheduled thread's time is not counted; the
 * stalls on memory are).  ns per element of each thread, into out[t]. */
static void sample(seg_fn fn, const double *h, unsigned flags, char **b, int nb, ptrdiff_t n, int nthreads, long reps,
                   double *out) {
#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num();
        ptrdiff_t lo, hi;
        chunk(t, nthreads, n, &lo, &hi);
        run_chunk(fn, h, flags, b, nb, lo, hi); /* warm-up */
#pragma omp barrier
        const double t0 = cpu_ns();
        for (long r = 0; r < reps; r++) run_chunk(fn, h, flags, b, nb, lo, hi);
        out[t] = (cpu_ns() - t0) / ((double)reps * (double)(hi - lo));
    }
}

int main(int argc, char **argv) {
    const int trials = argc > 1 ? atoi(argv[1]) : 15;
    std::vector<ptrdiff_t> sizes;
    for (int a = 2; a < argc; a++) sizes.push_back(atol(argv[a]));
    if (sizes.empty()) sizes = {4096, 1 << 20, 1 << 24};
    const int nthreads = 2;
    /* every buffer starts this many bytes past a page boundary: 16 is where glibc's mmap
     * puts a large NumPy array (the bench's 1x1M and 1x16M arrays), FO_OFFSET=0 aligned */
    const size_t offset = getenv("FO_OFFSET") ? (size_t)atol(getenv("FO_OFFSET")) : 16;
    const double common[FO_NCOMMON] = {1, 0, 0, 0, INFINITY};
    const double b1 = 0.9, b2 = 0.999, t = 10, bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    static Table<fo_adam, 0> t_adam;
    static Table<fo_yogi, 0> t_yogi;
    static Table<fo_adabelief, 0> t_adabelief;
    static Table<fo_ftrl, 1> t_ftrl;
    static Table<fo_sf_adamw, 0> t_sf;
    static Table<fo_adan, 0> t_adan;
    std::vector<Case> cases = {
        {"adam", t_adam.fn, 0, 4, {1, 1 - b1, b2, 1 - b2, sqrt(bc2), 1e-8, -1e-3 / bc1, 0, 1}},
        {"yogi", t_yogi.fn, 0, 4, {1, 1 - b1, 1 - b2, sqrt(bc2), 1e-3, -1e-3 / bc1}},
        {"adabelief", t_adabelief.fn, 0, 4, {1, 1 - b1, b2, 1 - b2, 1e-16, sqrt(bc2), -1e-3 / bc1, 1}},
        {"ftrl", t_ftrl.fn, 1, 4, {1, 0, 0.5, 1e-3, 0, 0}},
        {"sf_adamw", t_sf.fn, 0, 4, {b2, 1 - b2, bc2, 1e-8, 0, 0.1, -1e-3 * (0.9 * 0.9 - 1), -1e-3}},
        {"adan", t_adan.fn, 0, 6,
         {1, 1, 0.02, 0.92, 0.08, 0.99, 0.01, sqrt(1 - pow(0.99, t)), 1e-8, -1e-3 / (1 - pow(0.98, t)),
          -1e-3 * 0.92 / (1 - pow(0.92, t)), 0, 0}},
    };
    double la[3] = {0, 0, 0};
    if (getloadavg(la, 3) < 0) la[0] = -1;
    printf("ns/element (thread CPU time, each thread's best of %d samples, mean of the 2 threads); "
           "%%roof = STREAM / loop; "
           "buffers at page + %zu bytes; OMP_PROC_BIND=%s; load average at start %.2f %.2f %.2f\n",
           trials, offset, getenv("OMP_PROC_BIND") ? getenv("OMP_PROC_BIND") : "(unset)", la[0], la[1], la[2]);
    for (ptrdiff_t n : sizes) {
        /* 6 buffers, each at page + offset */
        std::vector<float *> buf(6), raw(6);
        for (int k = 0; k < 6; k++) {
            raw[k] = (float *)aligned_alloc(4096, ((size_t)n * 4 + 4096 + 4095) / 4096 * 4096);
            buf[k] = (float *)((char *)raw[k] + offset);
        }
        std::vector<float> ref0((size_t)n), ref1((size_t)n);
        auto fill = [&]() {
#pragma omp parallel for num_threads(nthreads) schedule(static)
            for (ptrdiff_t i = 0; i < n; i++) {
                buf[0][i] = 0.01f * (float)(i % 97) - 0.4f;
                buf[1][i] = 0.001f * (float)((i * 7) % 31) - 0.0155f;
                for (int k = 2; k < 6; k++) buf[k][i] = k == 3 ? 1e-6f * (float)(1 + i % 13) : 0.001f * (float)(i % 11);
            }
        };
        const long reps = n >= (1 << 24) ? 1 : (long)(4e6 / (double)n) + 1;
        printf("\nn = %td, %ld steps per sample\n%-10s %7s %9s", n, reps, "", "stream", "st_plain");
        for (int v = 0; v < NVAR; v++) printf(" %10s", VARIANTS[v].name);
        printf("   (ns/element; then %%roof)\n");
        for (const Case &cs : cases) {
            std::vector<double> h(common, common + FO_NCOMMON);
            h.insert(h.end(), cs.scalars.begin(), cs.scalars.end());
            double hs[1] = {0.0};
            char *b[FO_STATE + FO_MAXSTATE] = {(char *)buf[0], (char *)buf[1], NULL};
            for (int k = 2; k < cs.k; k++) b[FO_STATE + k - 2] = (char *)buf[k];
            const int nb = FO_STATE + cs.k - 2;
            /* bits: three steps of every variant against the baseline, from the same start */
            bool same[NVAR];
            for (int v = 0; v < NVAR; v++) {
                fill();
                for (int r = 0; r < 3; r++) step(cs.fns[v], h.data(), cs.flags, b, nb, n, nthreads);
                if (v == 0) {   /* plain: the loop as it was */
                    memcpy(ref0.data(), buf[0], n * 4);
                    memcpy(ref1.data(), buf[2], n * 4);
                }
                same[v] = !memcmp(ref0.data(), buf[0], n * 4) && !memcmp(ref1.data(), buf[2], n * 4);
            }
            double best[NVAR + 2], bt[2][NVAR + 2];
            for (int v = 0; v <= NVAR + 1; v++) bt[0][v] = bt[1][v] = 1e30;
            for (int trial = 0; trial < trials; trial++) {
                for (int v = 0; v <= NVAR + 1; v++) {  /* v == NVAR: cpu.h's STREAM, NVAR + 1: without the memory side */
                    fill();
                    double per[2];
                    if (v < NVAR) sample(cs.fns[v], h.data(), cs.flags, b, nb, n, nthreads, reps, per);
                    else sample(v == NVAR ? stream_f32 : stream_plain_f32, hs, (unsigned)cs.k, b, nb, n, nthreads, reps, per);
                    for (int th = 0; th < nthreads; th++) bt[th][v] = per[th] < bt[th][v] ? per[th] : bt[th][v];
                }
            }
            for (int v = 0; v <= NVAR + 1; v++) best[v] = 0.5 * (bt[0][v] + bt[1][v]);
            printf("%-10s k=%d %5.3f %9.3f", cs.name, cs.k, best[NVAR], best[NVAR + 1]);
            for (int v = 0; v < NVAR; v++) printf(" %9.3f%s", best[v], same[v] ? " " : "!");
            printf("\n%-10s %21s", "", "%roof of stream");
            for (int v = 0; v < NVAR; v++) printf(" %10.0f", 100.0 * best[NVAR] / best[v]);
            printf("\n%-10s %21s", "", "%roof of st_plain");
            for (int v = 0; v < NVAR; v++) printf(" %10.0f", 100.0 * best[NVAR + 1] / best[v]);
            printf("\n");
            fflush(stdout);
        }
        for (int k = 0; k < 6; k++) free(raw[k]);
    }
    printf("\n(! after a figure: that variant's bits differ from the baseline's)\n");
    return 0;
}
