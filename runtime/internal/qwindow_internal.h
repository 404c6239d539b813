/* Private accessors of the query window for other librkv modules (eviction checks the shape
 * of a window before reading it and finds a device window's rows, the executor which
 * sequences hold one) and the device push the deprecated rkv_attn_cuda_qwindow_push shares.
 * Not installed. */
#ifndef RKV_QWINDOW_INTERNAL_H
#define RKV_QWINDOW_INTERNAL_H

#include <rkv/qwindow.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The configuration in force (max_seqs default filled in). */
const rkv_qwindow_config *rkvi_qwindow_config(const rkv_qwindow *w);
/* Whether seq has a window, and how many sequences have one (the executor's plan checks). */
bool rkvi_qwindow_has(const rkv_qwindow *w, int64_t seq);
uint32_t rkvi_qwindow_live(const rkv_qwindow *w);
/* The backend whose memory holds the rings (NULL: host memory). */
rkv_backend *rkvi_qwindow_backend(const rkv_qwindow *w);
/* True when the host may read the rings (no backend, or one whose DEVICE memory is the
 * host's). */
bool rkvi_qwindow_host(const rkv_qwindow *w);
/* Where seq's rings are in the window's memory (a DEVICE pointer on a device backend):
 * [num_layers][num_q_heads][window][head_dim], query row t of a ring at row t % window; the
 * row of its oldest query once the ring is full (layer 0's; the executor pushes every layer
 * each step); and the fewest rows pushed into any of its layers (a ring holds the last
 * `window` of them). Valid until the next registration or reserve. False when seq has none. */
bool rkvi_qwindow_rows(const rkv_qwindow *w, int64_t seq, const float **rows, int32_t *oldest,
                       int64_t *pushed);

/* For an engine that uploads its own step metadata in one copy (the executor's device path):
 * rkv_qwindow_plan, except that on a device the plan's metadata (rkvi_qwindow_meta_bytes(n)
 * bytes, RKV_BUFFER_ALIGN-aligned) is written to host_stage instead of uploaded, and the
 * pushes read it at dev_meta, where the caller's upload of host_stage must have put it (in
 * stream order before the first push). Host windows ignore both. */
size_t rkvi_qwindow_meta_bytes(uint32_t n);
rkv_status rkvi_qwindow_plan_staged(rkv_qwindow *w, const int64_t *seqs, const int32_t *indptr,
                                    uint32_t n, void *host_stage, const void *dev_meta);

/* The CUDA push kernel (qwindow_cuda.cu): for each of n sequences, the last `window` of its
 * rows [indptr[b], indptr[b+1]) of q (one row per sequence when indptr is NULL) go to ring
 * row (pos[b] + r) % window of slot slots[b] (slots outside [0, nslots) and negative
 * positions are skipped). Every pointer is a DEVICE pointer; ring is
 * [nslots][layers][hq][window][d]. RKV_ERR_UNSUPPORTED on a build without CUDA or a backend
 * that is not CUDA; RKV_ERR_CUDA (text in the backend's last error). */
typedef struct rkvi_qwindow_ring {
  float *data;
  uint32_t nslots, layers, hq, window, d;
} rkvi_qwindow_ring;
rkv_status rkvi_qwindow_cuda_push(rkv_backend *be, const rkvi_qwindow_ring *ring, uint32_t layer,
                                  const float *q, const int32_t *indptr, const int32_t *slots,
                                  const int64_t *pos, uint32_t n);

#ifdef __cplusplus
}
#endif

#endif /* RKV_QWINDOW_INTERNAL_H */
