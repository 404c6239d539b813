/* A kernel fault poisons the CUDA backend, whichever module first sees it. The fault is made
 * on purpose (a block id far outside the pool in a device-side table, which the library
 * cannot check), the stream is then waited on directly (not through rkv_backend_sync), so the
 * next attention call's own checks are the first librkv code to meet the sticky error: they
 * must mark the backend poisoned, and every later call (attention, eviction, sync) must fail
 * fast and say so. A fault ruins the process's CUDA context, hence a binary of its own.
 * Without a GPU only the sticky-error classification is checked (CUDA builds). */
/* Drives the deprecated device calls directly to provoke their failures. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <rkv/attention.h>
#include <rkv/evict_cuda.h>

#include "cuda_test_util.h"
#include "rkv_test.h"

#ifndef RKV_HAVE_CUDA
int main(void) {
  return cuda_test_skip("librkv built without CUDA");
}
#else
/* Private (runtime/internal/cuda_status.h); declared here because tests see public headers only. */
bool rkvi_cuda_error_sticky(int cuda_error);

static void host_checks(void) {
  EXPECT(rkvi_cuda_error_sticky(cudaErrorIllegalAddress));
  EXPECT(rkvi_cuda_error_sticky(cudaErrorLaunchFailure));
  EXPECT(rkvi_cuda_error_sticky(cudaErrorMisalignedAddress));
  EXPECT(rkvi_cuda_error_sticky(cudaErrorAssert));
  EXPECT(!rkvi_cuda_error_sticky(cudaSuccess));
  EXPECT(!rkvi_cuda_error_sticky(cudaErrorInvalidConfiguration));
  EXPECT(!rkvi_cuda_error_sticky(cudaErrorMemoryAllocation));
  EXPECT(!rkvi_cuda_error_sticky(cudaErrorInvalidValue));
}

int main(void) {
  host_checks();
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA;
  rkv_backend *gb = NULL;
  if (rkv_backend_create(&cfg, &gb) != RKV_OK) return cuda_test_skip("no usable CUDA device");
  const uint32_t d = 128, bs = 16;
  rkv_kv_layout lay = {RKV_DTYPE_BF16, bs, d};
  rkv_kv_pool *pool = NULL;
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, 8, &pool));
  if (!pool) return rkv_test_finish();

  /* One sequence, one kv head, one full block: first with a wild block id, then a good one. */
  const int32_t indptr[2] = {0, 1}, bad[1] = {1 << 28}, good[1] = {3}, last[1] = {16};
  int32_t *d_indptr = dup_to_dev(indptr, sizeof indptr), *d_bad = dup_to_dev(bad, sizeof bad),
          *d_good = dup_to_dev(good, sizeof good), *d_last = dup_to_dev(last, sizeof last);
  float *d_q = dalloc(d * sizeof(float)), *d_out = dalloc(d * sizeof(float));
  CK_DEV(cudaMemset(d_q, 0, d * sizeof(float)));
  rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
  p.num_seqs = 1;
  p.num_q_heads = 1;
  p.num_kv_heads = 1;
  p.head_dim = d;
  p.q = d_q;
  p.out = d_out;
  p.table.num_streams = 1;
  p.table.block_size = (int32_t)bs;
  p.table.indptr = d_indptr;
  p.table.indices = d_bad;
  p.table.last_len = d_last;
  EXPECT_OK(rkv_attn_decode(pool, &p, NULL, 0)); /* the launch itself is fine */
  cudaStream_t cs = (cudaStream_t)rkv_backend_stream(gb);
  const cudaError_t e = cudaStreamSynchronize(cs);
  EXPECT(e != cudaSuccess);
  if (e == cudaSuccess || !rkvi_cuda_error_sticky(e)) {
    fprintf(stderr, "  the wild block id did not fault (%s): nothing to test\n",
            cudaGetErrorString(e));
    return rkv_test_finish();
  }
  /* The next call meets the sticky error in its own checks: poisoned from there on. */
  p.table.indices = d_good;
  EXPECT_STATUS(rkv_attn_decode(pool, &p, NULL, 0), RKV_ERR_CUDA);
  EXPECT(strstr(rkv_backend_last_error(gb), "poisoned") != NULL);
  fprintf(stderr, "  after the fault: %s\n", rkv_backend_last_error(gb));
  EXPECT_STATUS(rkv_attn_decode(pool, &p, NULL, 0), RKV_ERR_CUDA);
  EXPECT(strstr(rkv_backend_last_error(gb), "poisoned earlier") != NULL);
  int64_t slot = 0;
  EXPECT_STATUS(rkv_attn_write_kv(pool, d_q, d_q, &slot, 1), RKV_ERR_CUDA);
  rkv_evict_params ep = RKV_EVICT_PARAMS_INIT;
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  EXPECT_STATUS(rkv_evict_cuda_compress(&ep, pool, &b, NULL, 0), RKV_ERR_CUDA);
  EXPECT(strstr(rkv_backend_last_error(gb), "poisoned") != NULL);
  EXPECT_STATUS(rkv_backend_sync(gb), RKV_ERR_CUDA);
  /* Teardown on a dead context must not crash (its CUDA calls fail quietly). */
  cudaFree(d_indptr), cudaFree(d_bad), cudaFree(d_good), cudaFree(d_last);
  cudaFree(d_q), cudaFree(d_out);
  rkv_kv_pool_destroy(pool);
  rkv_backend_destroy(gb);
  return rkv_test_finish();
}
#endif
