/* librkv query window: per (sequence, layer), a ring of the last `window` post-RoPE query
 * vectors of every query head — what R-KV and SnapKV score importance with. Owned by the
 * library, filled by the attention path (or by rkv_qwindow_push until an engine does).
 * Storage f32. Not internally synchronised. */
#ifndef RKV_QWINDOW_H
#define RKV_QWINDOW_H

#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_qwindow rkv_qwindow;

#define RKV_QWINDOW_CONFIG_VERSION 1
typedef struct rkv_qwindow_config {
  uint32_t struct_size; /* sizeof(rkv_qwindow_config) */
  uint32_t num_layers;
  uint32_t num_q_heads;
  uint32_t head_dim;
  uint32_t window;   /* alpha, rows kept per (sequence, layer); default 8 */
  uint32_t max_seqs; /* 0 = 4096 */
  const rkv_allocator *allocator;
} rkv_qwindow_config;
#define RKV_QWINDOW_CONFIG_INIT \
  { sizeof(rkv_qwindow_config), 1, 1, 128, 8, 0, NULL }

RKV_API rkv_status rkv_qwindow_create(const rkv_qwindow_config *cfg, rkv_qwindow **out);
RKV_API void rkv_qwindow_destroy(rkv_qwindow *w);
RKV_API const char *rkv_qwindow_last_error(const rkv_qwindow *w);
/* Registers / drops a sequence (ring empty). RKV_ERR_EXISTS, RKV_ERR_NOT_FOUND,
 * RKV_ERR_CAPACITY. */
RKV_API rkv_status rkv_qwindow_seq_add(rkv_qwindow *w, int64_t seq);
RKV_API rkv_status rkv_qwindow_seq_remove(rkv_qwindow *w, int64_t seq);
/* Copies the ring of parent into child (fork). RKV_ERR_NO_MEMORY (nothing changes). */
RKV_API rkv_status rkv_qwindow_seq_fork(rkv_qwindow *w, int64_t parent, int64_t child);
/* Allocates now the rings the next n registrations (seq_add, seq_fork) would allocate, so a
 * caller that registers several sequences in one all-or-nothing operation fails, if at all,
 * before the first. Registrations interleaved with removals stay covered: a removed entry
 * keeps its rings. Capacity only (nothing observable changes). At most the free entries are
 * prepared. RKV_ERR_NO_MEMORY (entries prepared so far stay prepared). */
RKV_API rkv_status rkv_qwindow_reserve(rkv_qwindow *w, uint32_t n);
/* Pushes n query rows for one layer: q [n][num_q_heads][head_dim] (token-major, the layout
 * a QKV projection produces). Only the last `window` rows are retained. O(n*q_heads*d). */
RKV_API rkv_status rkv_qwindow_push(rkv_qwindow *w, int64_t seq, uint32_t layer, const float *q,
                                    uint32_t n);
/* Reads the ring oldest -> newest as out [num_q_heads][window][head_dim]; *count = rows
 * filled (< window early in a sequence: then only the first *count rows of each head are
 * written). */
RKV_API rkv_status rkv_qwindow_get(const rkv_qwindow *w, int64_t seq, uint32_t layer, float *out,
                                   uint32_t *count);
RKV_API rkv_status rkv_qwindow_check(const rkv_qwindow *w);

#ifdef __cplusplus
}
#endif
#endif /* RKV_QWINDOW_H */
