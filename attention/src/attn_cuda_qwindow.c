/* The deprecated device query-window entry points of rkv/attention_cuda.h: the ring size
 * helper and the push, which now forwards to the query window's own kernel (the runtime's
 * rkvi_qwindow_cuda_push, the device half of rkv_qwindow_push_planned), so there is one push
 * and one ring layout. */
#include <rkv/attention_cuda.h>

#include "qwindow_internal.h"
#include "rkv_internal.h"

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

rkv_status rkv_attn_cuda_qwindow_push(rkv_backend *backend, const rkv_cuda_qwindow *w,
                                      uint32_t layer, const float *q, const int32_t *q_indptr,
                                      const int32_t *seq_slots, const int64_t *pos,
                                      uint32_t num_seqs) {
  if (!backend) return RKV_ERR_INVALID_ARG;
  if (!w)
    return rkvi_qwindow_cuda_push(backend, NULL, layer, q, q_indptr, seq_slots, pos, num_seqs);
  const rkvi_qwindow_ring r = {w->data,        w->max_seqs, w->num_layers,
                               w->num_q_heads, w->window,   w->head_dim};
  return rkvi_qwindow_cuda_push(backend, &r, layer, q, q_indptr, seq_slots, pos, num_seqs);
}
