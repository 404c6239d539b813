/* librkv attention, CUDA-only extras: a caller-owned device query-window ring.
 *
 * Deprecated: rkv_qwindow (rkv/qwindow.h) with a backend keeps its rings in that backend's
 * device memory, owns the sequence -> slot map, and pushes a batch with one launch of the
 * same kernel (rkv_qwindow_plan, rkv_qwindow_push_planned); the executor uses it. These calls
 * keep working in this release (the push forwards to that kernel) and will be removed in the
 * next one.
 *
 * The ring is caller-owned device memory, f32, laid out
 *   [max_seqs][num_layers][num_q_heads][window][head_dim]
 * and indexed by a caller-chosen sequence slot (the scheduler's batch slot). Row order inside
 * one (slot, layer, head) is a ring: token position t lives at row t % window. The CUDA eviction
 * does not care about the order (it reads all `window` rows), so no head pointer is kept.
 * The ring of (slot, layer) starts at element ((slot * num_layers + layer) * num_q_heads) *
 * window * head_dim: a sequence's window for rkv_evictor_add (rkv/evictor.h) is the ring's
 * address plus slot * num_layers * num_q_heads * window * head_dim elements, with `oldest` =
 * (newest position + 1) % window. Without a CUDA build the push returns
 * RKV_ERR_UNSUPPORTED. */
#ifndef RKV_ATTENTION_CUDA_H
#define RKV_ATTENTION_CUDA_H

#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Geometry of a device query-window ring (plain data; data is a DEVICE pointer). */
typedef struct rkv_cuda_qwindow {
  float *data; /* [max_seqs][num_layers][num_q_heads][window][head_dim] */
  uint32_t max_seqs;
  uint32_t num_layers;
  uint32_t num_q_heads;
  uint32_t window; /* alpha */
  uint32_t head_dim;
} rkv_cuda_qwindow;

/* Bytes of the ring described by w (for cudaMalloc). RKV_ERR_INVALID_ARG on NULL, a zero size
 * or overflow. Plain host arithmetic: works in every build. */
RKV_API rkv_status rkv_attn_cuda_qwindow_bytes(const rkv_cuda_qwindow *w, size_t *bytes);

/* Appends the post-RoPE query rows of a batch for one layer into the ring, on the backend's
 * stream (no host synchronisation; capturable). All arrays are DEVICE pointers:
 *  q         [rows][num_q_heads][head_dim] f32, the same rows the attention call reads;
 *  q_indptr  [num_seqs + 1] row ranges per sequence (prefill), or NULL for decode (row b is
 *            sequence b's single new token);
 *  seq_slots [num_seqs] ring slot of each sequence (slots outside [0, max_seqs) are skipped);
 *  pos       [num_seqs] cache position of each sequence's first new row (so row r of sequence
 *            b is token pos[b] + r and lands at ring row (pos[b] + r) % window). Only the last
 *            `window` rows of a sequence are written.
 * Slots must be distinct within one call. RKV_ERR_INVALID_ARG (NULL, layer out of range, zero
 * sizes), RKV_ERR_UNSUPPORTED (not a CUDA backend, or no CUDA build), RKV_ERR_CUDA (launch
 * failed; details in rkv_backend_last_error). O(num_seqs * q_heads * min(rows, window) * d). */
RKV_API rkv_status rkv_attn_cuda_qwindow_push(rkv_backend *backend, const rkv_cuda_qwindow *w,
                                              uint32_t layer, const float *q,
                                              const int32_t *q_indptr, const int32_t *seq_slots,
                                              const int64_t *pos, uint32_t num_seqs);

#ifdef __cplusplus
}
#endif
#endif /* RKV_ATTENTION_CUDA_H */
