// OpenMP's thread count and index, or 1 and 0 in a build without OpenMP (library-internal).
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ada {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace ada
