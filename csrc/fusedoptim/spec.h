/* fusedoptim/spec.h -- every algorithm's spec as the Python layer sees it (host only).
 *
 * Built from the lists of rules.h (FO_ALGOS and each algorithm's FO_<ALGO>_SCALARS /
 * _FLAGS / _BUFFERS), so the names, their order and the buffer masks exported to Python
 * are the ones the loops were compiled with.  The Python specs (fusedoptim/_spec.py) are
 * checked against this table when fusedoptim is imported; scalars are then packed by
 * name in this order.
 */
#ifndef FUSEDOPTIM_SPEC_H
#define FUSEDOPTIM_SPEC_H

#include "cpu.h"

struct fo_spec {
    const char *name;
    const char *const *scalars; /* NULL-terminated, in packing order (after the common block) */
    const char *const *flags;   /* NULL-terminated, flag k is bit k */
    const char *const *buffers; /* NULL-terminated, declaration order */
    int nscalars, nflags, nbuffers;
    unsigned (*mask)(unsigned flags); /* bit k: buffer k is kept under these flags */
    unsigned signs;                   /* bit k: buffer k is FO_SIGNED (rules.h; q8.h's code maps) */
};

#define FO_STR_(n) #n,
#define FO_BUFSTR_(n, cond, sign) #n,
static const char *const fo_common_names[] = {FO_COMMON_SCALARS(FO_STR_) NULL};

#define FO_SPEC_NAMES_(a, P)                                                              \
    static const char *const fo_##a##_scalar_names[] = {P##_SCALARS(FO_STR_) NULL};        \
    static const char *const fo_##a##_flag_names[] = {P##_FLAGS(FO_STR_) NULL};            \
    static const char *const fo_##a##_buffer_names[] = {P##_BUFFERS(FO_BUFSTR_) NULL};     \
    static_assert(FO_NCOMMON + sizeof(fo_##a##_scalars) / sizeof(double) <= FO_MAXSCALARS, \
                  #a ": more scalars than a block holds");
FO_ALGOS(FO_SPEC_NAMES_)
#undef FO_SPEC_NAMES_

template <class A> static unsigned fo_spec_mask(unsigned flags) { return A::mask(flags); }

static const fo_spec *fo_cpu_spec(int algo) {
#define FO_SPEC_ROW_(a, P)                                                                      \
    {#a, fo_##a##_scalar_names, fo_##a##_flag_names, fo_##a##_buffer_names,                      \
     (int)(sizeof(fo_##a##_scalars) / sizeof(double)), fo_##a::NFLAGS, fo_##a::MAXSTATE,         \
     fo_spec_mask<fo_##a>, fo_##a::signs()},
    static const fo_spec table[FO_NALGO] = {FO_ALGOS(FO_SPEC_ROW_)};
#undef FO_SPEC_ROW_
    return (algo >= 0 && algo < FO_NALGO) ? &table[algo] : NULL;
}

#endif /* FUSEDOPTIM_SPEC_H */
