/* Helpers shared by the GPU tests (tests/cuda/test_*.c): the skip that keeps host-check
 * failures visible, and, in CUDA builds, checked device allocation and upload. Include after
 * rkv_test.h. */
#ifndef RKV_CUDA_TEST_UTIL_H
#define RKV_CUDA_TEST_UTIL_H

#include "rkv_test.h"

/* Skips (77) for want of a GPU, unless a check that ran before (host_checks: every build) has
 * already failed: then the binary fails (1), so ctest shows the failure instead of a skip. */
static inline int cuda_test_skip(const char *why) {
  const int rc = rkv_test_skip_no_gpu(why);
  return rkv_test_failed_ ? 1 : rc;
}

/* RKV_CUDA_TEST_EVERY=N (N > 1) runs only every N-th case of a test's case list (the first,
 * the (N+1)-th, ...): a spread over dtypes and head sizes that stays short under
 * compute-sanitizer (tools/bench/cuda_gpu_check.sh). Unset, 0 or 1: every case. Call once per
 * case, first thing in the case function. */
static inline bool cuda_test_case_selected(void) {
  static long every = -1, seen = 0;
  if (every < 0) {
    const char *e = getenv("RKV_CUDA_TEST_EVERY");
    every = e ? strtol(e, NULL, 10) : 1;
    if (every < 1) every = 1;
    if (every > 1)
      fprintf(stderr, "  RKV_CUDA_TEST_EVERY=%ld: every %ld-th case only\n", every, every);
  }
  return seen++ % every == 0;
}

#ifdef RKV_HAVE_CUDA
#include <cuda_runtime.h>

/* A failed CUDA runtime call ends the test (later results would be meaningless). */
#define CK(expr)                                               \
  do {                                                         \
    cudaError_t e_ = (expr);                                   \
    if (e_ != cudaSuccess) {                                   \
      RKV_TEST_FAIL_("%s: %s", #expr, cudaGetErrorString(e_)); \
      rkv_test_finish();                                       \
      exit(1);                                                 \
    }                                                          \
  } while (0)

/* The library works on its backend's stream, which is non-blocking: the legacy default stream
 * of cudaMemset / cudaMemcpy is not ordered with it (a memset may still be running, a
 * pageable upload still in flight, when the call returns). A test's own transfer therefore
 * waits for the whole device before (the library's work it reads or overwrites is done) and
 * after (it has landed before the library's next launch). */
#define CK_DEV(expr)             \
  do {                           \
    CK(cudaDeviceSynchronize()); \
    CK(expr);                    \
    CK(cudaDeviceSynchronize()); \
  } while (0)

static inline void *dalloc(size_t bytes) {
  void *p = NULL;
  CK(cudaMalloc(&p, bytes ? bytes : 16));
  return p;
}
static inline void *dup_to_dev(const void *h, size_t bytes) {
  void *d = dalloc(bytes);
  if (bytes) CK_DEV(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
  return d;
}
static inline float frand(uint64_t *s) {
  return (float)(rkv_test_uniform(s) * 2.0 - 1.0);
}
#endif /* RKV_HAVE_CUDA */

#endif /* RKV_CUDA_TEST_UTIL_H */
