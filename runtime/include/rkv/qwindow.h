/* librkv query window: per (sequence, layer), a ring of the last `window` post-RoPE query
 * vectors of every query head — what R-KV and SnapKV score importance with. One design for
 * every backend: the rings live in the memory of the window's backend (host memory when it has
 * none, device memory on CUDA), the window owns its sequence id -> ring map, and one batched
 * push per layer (rkv_qwindow_plan, rkv_qwindow_push_planned) fills it on CPU and CUDA alike;
 * the executor (rkv/executor.h) drives it. Storage f32. Not internally synchronised: one
 * thread at a time, like the backend. */
#ifndef RKV_QWINDOW_H
#define RKV_QWINDOW_H

#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_qwindow rkv_qwindow;

#define RKV_QWINDOW_CONFIG_VERSION 2
typedef struct rkv_qwindow_config {
  uint32_t struct_size; /* sizeof(rkv_qwindow_config), or RKV_QWINDOW_CONFIG_V1_SIZE */
  uint32_t num_layers;
  uint32_t num_q_heads;
  uint32_t head_dim;
  uint32_t window;   /* alpha, rows kept per (sequence, layer); default 8 */
  uint32_t max_seqs; /* 0 = 4096 */
  const rkv_allocator *allocator;
  /* Version 2. Where the rings live: NULL = host memory (version 1's behaviour); a backend =
   * its DEVICE memory (rkv/buffer.h), e.g. the KV pool's backend, so device kernels read
   * them. Borrowed: it must outlive the window. */
  rkv_backend *backend;
} rkv_qwindow_config;
#define RKV_QWINDOW_CONFIG_INIT \
  { sizeof(rkv_qwindow_config), 1, 1, 128, 8, 0, NULL, NULL }
/* The size of the version-1 struct (no backend field): still accepted, as host memory. */
#define RKV_QWINDOW_CONFIG_V1_SIZE (offsetof(rkv_qwindow_config, allocator) + sizeof(void *))

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
/* Pushes n query rows of one sequence for one layer: q [n][num_q_heads][head_dim] in host
 * memory (token-major, the layout a QKV projection produces). Only the last `window` rows are
 * retained. O(n*q_heads*d). Windows in host memory only (RKV_ERR_UNSUPPORTED on a device
 * backend: use the batched push below, which every backend has). */
RKV_API rkv_status rkv_qwindow_push(rkv_qwindow *w, int64_t seq, uint32_t layer, const float *q,
                                    uint32_t n);
/* The batched push, the same two calls on every backend. Plan once per step: the n
 * sequences (each holding a window, none twice) whose new query rows are rows
 * [indptr[b], indptr[b+1]) of each layer's q array; host arrays, read during the call. On a
 * device backend the plan uploads its metadata (one copy, into the window's own memory). A
 * registration (seq_add, seq_remove, seq_fork) ends the plan, and so does the next plan call,
 * even a refused one. RKV_ERR_NOT_FOUND (a sequence without a window), RKV_ERR_INVALID_ARG (a
 * repeat, a decreasing indptr): no window changes, and no plan is left. */
RKV_API rkv_status rkv_qwindow_plan(rkv_qwindow *w, const int64_t *seqs, const int32_t *indptr,
                                    uint32_t n);
/* Pushes the planned rows of one layer: q [indptr[n]][num_q_heads][head_dim] in the memory of
 * the window's backend (a DEVICE pointer on CUDA; host memory for a host window). Sequence b's
 * rows continue its own ring (only its last `window` rows are kept). One kernel launch on a
 * device, enqueued on the backend's stream. Each layer once per plan: RKV_ERR_STATE for a
 * second push, no plan, or a sequence whose layer was pushed apart from the plan since. */
RKV_API rkv_status rkv_qwindow_push_planned(rkv_qwindow *w, uint32_t layer, const float *q);
/* Reads the ring oldest -> newest as out [num_q_heads][window][head_dim]; *count = rows
 * filled (< window early in a sequence: then only the first *count rows of each head are
 * written). On a device backend it downloads and syncs the backend (for tests and checks,
 * not for a step's hot path). */
RKV_API rkv_status rkv_qwindow_get(const rkv_qwindow *w, int64_t seq, uint32_t layer, float *out,
                                   uint32_t *count);
RKV_API rkv_status rkv_qwindow_check(const rkv_qwindow *w);

#ifdef __cplusplus
}
#endif
#endif /* RKV_QWINDOW_H */
