/* OpenMP shim: the extension builds (single-threaded) where OpenMP is missing. */
#ifndef FUSEDOPTIM_FO_OMP_H
#define FUSEDOPTIM_FO_OMP_H
#ifdef _OPENMP
#include <omp.h>
#define FO_HAVE_OPENMP 1
#else
#define FO_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
#endif
#endif
