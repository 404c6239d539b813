/* The executor's device path (exec_device.c), used when the pool's backend keeps DEVICE memory
 * apart from the host (CUDA, or the emulated device of <rkv/buffer_emu.h>): exec.c keeps the
 * host table mirror and the plan bookkeeping; this half keeps the device copies in rkv_buffer
 * objects of the pool's backend (table mirror updated by deltas, step metadata, workspaces)
 * and launches the kernels; the query window is the library's, on the same backend. On the emulated
 * device the kernels are the CPU ones reading device memory through rkv_emu_view, so the host logic
 * of the CUDA path (staging, delta uploads, stream order, the syncs) runs in tests without a GPU.
 * Private to the scheduler module. */
#ifndef RKV_EXEC_DEVICE_H
#define RKV_EXEC_DEVICE_H

#include <rkv/evictor.h>
#include <rkv/executor.h>

#include "policy_info.h"

typedef struct rkvi_xdev rkvi_xdev;

typedef struct rkvi_xdev_config {
  rkv_blockmgr *bm;
  rkv_kv_pool *pool;
  const rkv_allocator *al;
  uint32_t L, Hq, Hkv, d, S, bs;
  uint32_t nidx;     /* mirror entries (the block manager's max_seqs) */
  uint32_t max_seqs; /* sequences per plan */
  uint32_t window;   /* query-window rows (the CUDA eviction's limit is checked); 0 = none */
  rkv_qwindow *qw;   /* the executor's query window on the pool's backend, or NULL: its plan
                      * rides in the step's one metadata upload */
  float scale;
} rkvi_xdev_config;

/* The host state of one step that the device half needs (borrowed for the call). */
typedef struct rkvi_xdev_step {
  const rkv_sched_plan *plan;
  const int32_t *rows, *lens; /* the host mirror: [nidx][S][stride], [nidx][S] */
  uint32_t stride;
  const int32_t *seq_row;    /* [n_seqs] entry * S */
  const int64_t *ids;        /* [n_seqs] sequence ids, plan order */
  const int32_t *blen;       /* [n_seqs] lockstep lengths, or NULL: per-stream lens */
  const int32_t *all_indptr; /* [n_seqs + 1] */
  const int32_t *q_indptr;   /* [prefill seqs + 1], relative to the first prefill row */
  bool h2o;
} rkvi_xdev_step;

/* True when the pool's backend needs the device path. */
bool rkvi_xdev_wanted(const rkv_kv_pool *pool);
rkv_status rkvi_xdev_create(const rkvi_xdev_config *cfg, rkvi_xdev **out, char *err,
                            size_t err_len);
void rkvi_xdev_destroy(rkvi_xdev *d);
size_t rkvi_xdev_memory_bytes(const rkvi_xdev *d);
/* Text of the last failure (the executor copies it into its own). */
const char *rkvi_xdev_last_error(const rkvi_xdev *d);

/* Takes, before the begin of plan p changes anything, everything its rkvi_xdev_begin will
 * need: the wait for the last step's copies from the arena, the staging arena, metadata and
 * attention workspace for p
 * (`longest` = its longest kv_len), and a device mirror of `stride` blocks per row. Capacity
 * only: nothing observable changes, whether it succeeds or not. */
rkv_status rkvi_xdev_prepare(rkvi_xdev *d, const rkv_sched_plan *p, uint32_t stride,
                             int64_t longest);
/* Mirror entry `idx` was rewritten on the host: its rows go up with the next begin. */
void rkvi_xdev_mark(rkvi_xdev *d, int32_t idx);
/* Stages and enqueues the step's uploads: the marked entries' rows, per-stream lengths when
 * the batch is not lockstep, and the step metadata (one copy). */
rkv_status rkvi_xdev_begin(rkvi_xdev *d, const rkvi_xdev_step *st);
/* One layer: q/k/v/out are DEVICE pointers of the pool's backend. */
rkv_status rkvi_xdev_layer(rkvi_xdev *d, uint32_t layer, const float *q, const float *k,
                           const float *v, float *out);
/* Ends the step: the one sync, after which the staging arena is free again. */
rkv_status rkvi_xdev_finish(rkvi_xdev *d);
/* Compares every owned, current entry of the device mirror with the host one (downloads the
 * mirror and syncs: for rkv_exec_check). */
rkv_status rkvi_xdev_check(rkvi_xdev *d, const int32_t *rows, uint32_t stride, const int64_t *owner,
                           const uint8_t *stale);

#endif /* RKV_EXEC_DEVICE_H */
