/* Host side of the device query window (rkv/attention_cuda.h): the ring size helper, which
 * every build has, and the push entry point's stand-in for builds without CUDA (the real one
 * is in attn_cuda.cu). */
#include <rkv/attention_cuda.h>

#include "rkv_internal.h"

#ifndef RKV_HAVE_CUDA
#include "backend_impl.h"
#endif

rkv_status rkv_attn_cuda_qwindow_bytes(const rkv_cuda_qwindow *w, size_t *bytes) {
  if (!bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  if (!w || w->max_seqs == 0 || w->num_layers == 0 || w->num_q_heads == 0 || w->window == 0 ||
      w->head_dim == 0)
    return RKV_ERR_INVALID_ARG;
  size_t n = sizeof(float);
  const uint32_t dims[5] = {w->max_seqs, w->num_layers, w->num_q_heads, w->window, w->head_dim};
  for (int i = 0; i < 5; i++)
    if (rkvi_mul_size(n, dims[i], &n)) return RKV_ERR_INVALID_ARG;
  *bytes = n;
  return RKV_OK;
}

#ifndef RKV_HAVE_CUDA
rkv_status rkv_attn_cuda_qwindow_push(rkv_backend *backend, const rkv_cuda_qwindow *w,
                                      uint32_t layer, const float *q, const int32_t *q_indptr,
                                      const int32_t *seq_slots, const int64_t *pos,
                                      uint32_t num_seqs) {
  (void)w, (void)layer, (void)q, (void)q_indptr, (void)seq_slots, (void)pos, (void)num_seqs;
  if (backend)
    return rkvi_fail(backend->err, RKV_ERR_UNSUPPORTED,
                     "qwindow push: librkv was built without CUDA");
  return RKV_ERR_UNSUPPORTED;
}
#endif
