// CUDA side of runtime buffers (rkv/buffer.h): device memory from cudaMalloc, pinned host
// memory from cudaHostAlloc, and transfers enqueued on the backend's stream. buffer.c has
// checked every argument; errors go through rkvi_cuda_fail, which poisons the backend on a
// sticky one. Compiled only when nvcc is found.
#include <cuda_runtime.h>

#include "buffer_impl.h"
#include "cuda_device.cuh"
#include "cuda_status.h"

namespace {

cudaStream_t stream_of(const rkv_backend *b) {
  return static_cast<cudaStream_t>(b->stream);
}

// rkvi_cuda_fail also clears a non-sticky error from the thread's last-error slot.
rkv_status fail(rkv_backend *b, cudaError_t e, const char *what, int line) {
  return rkvi_cuda_fail(b, nullptr, (int)e, what, __FILE__, line);
}

rkv_status poisoned(rkv_backend *b) {
  return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
}

}  // namespace

extern "C" {

rkv_status rkvi_cuda_buffer_alloc(rkv_backend *b, rkv_buffer_kind kind, size_t bytes, void **out) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return poisoned(b);
  void *p = nullptr;
  if (kind == RKV_BUFFER_DEVICE) {
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) return fail(b, e, "cudaMalloc", __LINE__);
  } else {
    cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (e != cudaSuccess) return fail(b, e, "cudaHostAlloc", __LINE__);
  }
  *out = p;
  return RKV_OK;
}

// The caller has synced the stream (rkv_buffer_destroy, rkv_buffer_reserve).
void rkvi_cuda_buffer_free(rkv_backend *b, rkv_buffer_kind kind, void *p) {
  rkvi_cuda::DeviceScope dev_scope(b);
  cudaError_t e = kind == RKV_BUFFER_DEVICE ? cudaFree(p) : cudaFreeHost(p);
  if (e != cudaSuccess) (void)cudaGetLastError();  // nothing to report to: destroy is void
}

rkv_status rkvi_cuda_buffer_memcpy(rkv_backend *b, void *dst, const void *src, size_t bytes,
                                   rkvi_copy_dir dir) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return poisoned(b);
  const cudaMemcpyKind k = dir == RKVI_COPY_H2D   ? cudaMemcpyHostToDevice
                           : dir == RKVI_COPY_D2H ? cudaMemcpyDeviceToHost
                                                  : cudaMemcpyDefault;
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, k, stream_of(b));
  if (e != cudaSuccess) return fail(b, e, "cudaMemcpyAsync", __LINE__);
  return RKV_OK;
}

rkv_status rkvi_cuda_buffer_fill(rkv_backend *b, void *dst, uint8_t value, size_t bytes) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return poisoned(b);
  cudaError_t e = cudaMemsetAsync(dst, value, bytes, stream_of(b));
  if (e != cudaSuccess) return fail(b, e, "cudaMemsetAsync", __LINE__);
  return RKV_OK;
}

}  // extern "C"
