/* GPU eviction entry points in a build without CUDA: they exist so every build exports the
 * same API (rkv/evict_cuda.h), and say RKV_ERR_UNSUPPORTED. The real ones are in
 * evict_cuda.cu, compiled only when nvcc is found. */
#include "evict_cuda_internal.h"

#include "backend_impl.h"

#ifndef RKV_HAVE_CUDA

rkv_status rkvi_evict_cuda_workspace_size(const rkv_evict_params *p, const rkv_kv_pool *pool,
                                          uint32_t num_streams, uint32_t group, int32_t max_len,
                                          size_t *bytes) {
  (void)p, (void)pool, (void)num_streams, (void)group, (void)max_len;
  if (bytes) *bytes = 0;
  return RKV_ERR_UNSUPPORTED;
}

rkv_status rkvi_evict_cuda_compress(const rkv_evict_params *p, rkv_kv_pool *pool,
                                    const rkv_evict_cuda_batch *batch, void *workspace,
                                    size_t ws_bytes) {
  (void)p, (void)batch, (void)workspace, (void)ws_bytes;
  if (pool && pool->backend)
    return rkvi_fail(pool->backend->err, RKV_ERR_UNSUPPORTED,
                     "evict cuda: librkv was built without CUDA");
  return RKV_ERR_UNSUPPORTED;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int rkvi_evict_cuda_stub_unused;
#endif
