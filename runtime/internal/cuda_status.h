/* CUDA runtime errors as rkv_status, for every .cu file of the library (pool kernels,
 * attention, eviction): one place decides which errors are sticky (a kernel fault: the context
 * is unusable from then on) and marks the backend poisoned, so a fault first seen by any
 * module's launch check makes every later call fail fast and say why. CUDA builds only. */
#ifndef RKV_CUDA_STATUS_H
#define RKV_CUDA_STATUS_H

#include "backend_impl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* True for the cudaError_t values after which the CUDA context cannot be used again. */
bool rkvi_cuda_error_sticky(int cuda_error);

/* RKV_ERR_CUDA with "what: <CUDA message> (file:line)" in err (b->err when err is NULL); a
 * sticky error also sets b->poisoned and says "[context poisoned]"; any other error is cleared
 * from the thread's last-error slot, so a later launch check does not report it again. */
rkv_status rkvi_cuda_fail(rkv_backend *b, char *err, int cuda_error, const char *what,
                          const char *file, int line);

#ifdef __cplusplus
}
#endif

/* Returns rkvi_cuda_fail(b, NULL, ...) from the calling function when the CUDA call expr fails
 * (the backend's own error text). */
#define RKVI_CUDA_TRY(b, expr)                                                                   \
  do {                                                                                           \
    const cudaError_t e_ = (expr);                                                               \
    if (e_ != cudaSuccess) return rkvi_cuda_fail((b), NULL, (int)e_, #expr, __FILE__, __LINE__); \
  } while (0)

#endif /* RKV_CUDA_STATUS_H */
