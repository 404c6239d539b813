/* CPU-only builds: the CUDA attention launchers declared in attn_cuda.h, answering
 * RKV_ERR_UNSUPPORTED, so the dispatcher in attention.c links without nvcc. A CUDA pool cannot
 * exist in such a build (rkv_backend_create refuses CUDA), so these are a safety net. */
#include "attn_cuda.h"

#ifndef RKV_HAVE_CUDA

#include "rkv_internal.h"

rkv_status rkvi_attn_cuda_decode(rkv_kv_pool *pool, const rkv_attn_params *p, void *ws,
                                 size_t ws_bytes, char *err) {
  (void)pool, (void)p, (void)ws, (void)ws_bytes;
  return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention: librkv was built without CUDA");
}

rkv_status rkvi_attn_cuda_prefill(rkv_kv_pool *pool, const rkv_attn_params *p, void *ws,
                                  size_t ws_bytes, char *err) {
  (void)pool, (void)p, (void)ws, (void)ws_bytes;
  return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention: librkv was built without CUDA");
}

rkv_status rkvi_attn_cuda_write_kv(rkv_kv_pool *pool, const float *k, const float *v,
                                   const int64_t *slots, uint32_t n_rows, char *err) {
  (void)pool, (void)k, (void)v, (void)slots, (void)n_rows;
  return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention: librkv was built without CUDA");
}

rkv_status rkvi_attn_cuda_write_kv_rows(rkv_kv_pool *pool, const float *k, const float *v,
                                        uint32_t num_seqs, uint32_t num_kv_heads,
                                        const int32_t *q_indptr, const rkv_block_rows *rows,
                                        char *err) {
  (void)pool, (void)k, (void)v, (void)num_seqs, (void)num_kv_heads, (void)q_indptr, (void)rows;
  return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention: librkv was built without CUDA");
}

rkv_status rkvi_attn_cuda_check_heads(rkv_kv_pool *pool, uint32_t num_q_heads,
                                      uint32_t num_kv_heads, char *err) {
  (void)pool, (void)num_q_heads, (void)num_kv_heads;
  return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention: librkv was built without CUDA");
}

rkv_status rkvi_attn_cuda_workspace_bound(const rkv_kv_pool *pool, uint32_t max_seqs,
                                          uint32_t num_q_heads, uint32_t head_dim, int64_t max_len,
                                          size_t *bytes) {
  (void)pool, (void)max_seqs, (void)num_q_heads, (void)head_dim, (void)max_len;
  if (bytes) *bytes = 0;
  return RKV_ERR_UNSUPPORTED;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int rkvi_attn_cuda_stub_unused;
#endif
