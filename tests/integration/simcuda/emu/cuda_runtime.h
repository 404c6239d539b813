/* Stand-in for <cuda_runtime.h> used only by test_sim_cuda_emu and test_model_eval_emu (see
 * emu_shim.h): "device" memory is host memory and there is one in-order stream. Copies are queued,
 * as on a GPU, and run when the stream would reach them: at a stream sync, at a free, or before the
 * next (emulated) kernel reads device memory (emu_fake_flush, called by the shim's wrappers). A
 * source changed between enqueue and that moment is counted as a hazard (on a device the copy
 * may run at any moment in between). Fresh device buffers are filled with 0xFF bytes (NaN as f32,
 * -1 as int32) so a read of something never uploaded shows up in the comparison. Only what
 * sim_engine_cuda.c and model_cuda.c call. */
#ifndef RKV_TEST_FAKE_CUDA_RUNTIME_H
#define RKV_TEST_FAKE_CUDA_RUNTIME_H

#include <stdlib.h>
#include <string.h>

typedef int cudaError_t;
#define cudaSuccess 0
#define cudaErrorMemoryAllocation 2
typedef void *cudaStream_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3
};

/* the queue (emu_shim.c) */
void emu_fake_enqueue(void *dst, const void *src, size_t n);
void emu_fake_flush(void);

static inline const char *cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "fake cuda: out of memory";
}
static inline cudaError_t cudaMalloc(void **p, size_t n) {
  *p = malloc(n ? n : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  memset(*p, 0xFF, n);
  return cudaSuccess;
}
static inline cudaError_t cudaFree(void *p) {
  emu_fake_flush(); /* cudaFree waits for the device */
  free(p);
  return cudaSuccess;
}
static inline cudaError_t cudaMallocHost(void **p, size_t n) {
  return cudaMalloc(p, n);
}
static inline cudaError_t cudaFreeHost(void *p) {
  emu_fake_flush();
  free(p);
  return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n,
                                          enum cudaMemcpyKind kind, cudaStream_t s) {
  (void)kind, (void)s;
  if (n) emu_fake_enqueue(dst, src, n);
  return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
  (void)s;
  emu_fake_flush();
  memset(p, v, n);
  return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  emu_fake_flush();
  return cudaSuccess;
}

#endif /* RKV_TEST_FAKE_CUDA_RUNTIME_H */
