/* librkv evictor: ONE entry point for compressing KV cache sequences on every backend.
 *
 * An evictor is bound to a block manager and a KV pool on any backend: a CPU pool, a CUDA pool,
 * or a pool of the emulated device (<rkv/buffer_emu.h>). The caller queues work, then runs it:
 *
 *   rkv_evictor_create(&cfg, bm, pool, &ev, err, sizeof err);
 *   for each sequence to compress:  rkv_evictor_add(ev, seq, RKV_EVICTOR_ALL_LAYERS, NULL, win);
 *   rkv_evictor_run(ev, results, cap, &n);    // one result per queued sequence, in add order
 *
 * On a host pool a run compresses sequence after sequence with the CPU code (rkv_evict_layer
 * per layer at stream granularity, rkv_evict_seq at a coarser one: the same results, byte for
 * byte). On a device pool the host cuts every queued sequence to its budget and the device
 * scores, selects and moves the kept tokens in ONE batched launch per distinct parameter set
 * (split between sequences past 65535 streams, the CUDA grids' limit), enqueued on the
 * backend's stream without waiting. The executor (rkv/executor.h) runs its
 * compressions through an evictor; engines that drive eviction themselves use this instead of
 * rkv_evict_layer / rkv_evict_seq / the deprecated calls of <rkv/evict_cuda.h>.
 *
 * Guarantees: every compression is all or nothing per sequence: a sequence whose compression
 * fails (its result's status) is left exactly as it was, and the others still run.
 * RKV_ERR_NO_BLOCKS (fresh blocks for shared leading blocks after a fork) is such a normal
 * status. RKV_EVICT_FULL, and streams at or under their budget, change nothing on every
 * backend. Bad input to add is refused with a message and queues nothing. Semantics of one
 * compression: docs/EVICTION.md ("The algorithm, exactly"; "Evictor"). */
#ifndef RKV_EVICTOR_H
#define RKV_EVICTOR_H

#include <rkv/blockmgr.h>
#include <rkv/evict.h>
#include <rkv/qwindow.h>
#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_evictor rkv_evictor;

#define RKV_EVICTOR_CONFIG_VERSION 1
typedef struct rkv_evictor_config {
  uint32_t struct_size;    /* sizeof(rkv_evictor_config) */
  uint32_t num_q_heads;    /* the model's query heads: a positive multiple of the kv heads
                            * (layers, kv heads and head_dim are the block manager's) */
  rkv_evict_params params; /* used by every add that passes no parameters of its own */
  /* Which streams share one kept set (rkv/evict.h). Every backend: on a device pool the
   * batched launch aggregates each group's scores on the device. Coarser than STREAM, adds
   * take whole sequences (RKV_EVICTOR_ALL_LAYERS) and a run needs their streams in
   * lockstep. */
  rkv_evict_granularity granularity;
  uint32_t max_seqs; /* sequences queued between two runs, >= 1 */
  /* The query windows R-KV and SnapKV read (NULL when no policy used needs one; an add whose
   * policy needs it is then refused). Host memory for a host pool; for a device pool a window
   * on the pool's own backend (rkv_qwindow_config.backend), read by the batched launch where it
   * lies (any other window is ignored there, as in version 1, whose device adds named their
   * windows). Borrowed for the evictor's lifetime. */
  const rkv_qwindow *qwindow;
  const rkv_allocator *allocator; /* NULL = malloc/free */
} rkv_evictor_config;
#define RKV_EVICTOR_CONFIG_INIT \
  { sizeof(rkv_evictor_config), 0, RKV_EVICT_PARAMS_INIT, RKV_EVICT_GRAN_STREAM, 1, NULL, NULL }

/* Creates an evictor over bm and pool (both borrowed; they must outlive it). The pool's layout
 * must be the block manager's (dtype, block size, head_dim) with at least its blocks. On a CUDA
 * pool the layout must be in the kernels' closed set (head_dim 64/128/256, block 16/32) and
 * window <= 256. RKV_ERR_INVALID_ARG (text in err: NULLs, struct_size, shapes, parameters,
 * granularity, max_seqs), RKV_ERR_UNSUPPORTED (a layout the device kernels do not take on a
 * device pool), RKV_ERR_NO_MEMORY. O(max_seqs). */
RKV_API rkv_status rkv_evictor_create(const rkv_evictor_config *cfg, rkv_blockmgr *bm,
                                      rkv_kv_pool *pool, rkv_evictor **out, char *err,
                                      size_t err_len);
/* Waits for nothing: call after the backend's stream has passed the last run's work
 * (rkv_backend_sync) on a device pool. NULL is a no-op. */
RKV_API void rkv_evictor_destroy(rkv_evictor *ev);
/* Text of the last failure of a call on ev ("" after none). */
RKV_API const char *rkv_evictor_last_error(const rkv_evictor *ev);

/* Every layer of the sequence (the layer argument of rkv_evictor_add). */
#define RKV_EVICTOR_ALL_LAYERS (-1)

/* Deprecated (the evictor's own query window replaces it; kept working in this release):
 * where a sequence's query window is on a device pool, for an add that names it itself. */
typedef struct rkv_evictor_window {
  /* DEVICE pointer (of the pool's backend) to the sequence's window, f32
   * [layers][num_q_heads][window][head_dim], e.g. one slot of a ring pushed by
   * rkv_attn_cuda_qwindow_push. The windows of one run must lie in one allocation. Borrowed
   * until the run's work has passed on the stream. */
  const float *rows;
  /* The ring row that holds the oldest query (rows are then oldest, oldest + 1, ... modulo
   * window); 0 when they are stored oldest first. The CUDA kernels do not depend on the
   * order; the emulated device reads them oldest first, as the host window does. */
  int32_t oldest;
} rkv_evictor_window;

/* Queues one compression of `seq`: every layer (RKV_EVICTOR_ALL_LAYERS) or one layer (only at
 * STREAM granularity). params: this compression's parameters (copied), NULL = the config's.
 * win: NULL: the window is the sequence's in the evictor's query window, on every backend.
 * Deprecated: a device window named by the caller (read instead of the evictor's when
 * win->rows is set on a device pool; ignored otherwise). Nothing happens until rkv_evictor_run.
 * Refused, queueing nothing (text in rkv_evictor_last_error): RKV_ERR_INVALID_ARG (NULL ev,
 * layer out of range or a single layer at a coarser granularity, invalid params, a policy that
 * needs a query window the evictor has none for, a malformed win),
 * RKV_ERR_NOT_FOUND (seq unknown to the block manager, or to the query window),
 * RKV_ERR_EXISTS (seq already queued), RKV_ERR_CAPACITY (max_seqs queued), RKV_ERR_UNSUPPORTED
 * (on a device pool: a policy without a device variant). O(queued). */
RKV_API rkv_status rkv_evictor_add(rkv_evictor *ev, int64_t seq, int32_t layer,
                                   const rkv_evict_params *params, const rkv_evictor_window *win);
/* Drops everything queued (no compression runs). */
RKV_API void rkv_evictor_clear(rkv_evictor *ev);
/* Sequences queued now. */
RKV_API uint32_t rkv_evictor_queued(const rkv_evictor *ev);

/* What one queued compression did. */
typedef struct rkv_evictor_result {
  int64_t seq;
  /* RKV_OK, or why this sequence was left exactly as it was: RKV_ERR_NO_BLOCKS (fresh blocks
   * for shared leading blocks), RKV_ERR_NOT_FOUND (it left the block manager or the window
   * since add), RKV_ERR_STATE (a window with fewer than `window` rows; streams out of
   * lockstep at a coarser granularity), RKV_ERR_UNSUPPORTED (device pool: a protected prefix,
   * rkv_blockmgr_seq_protect, that ends inside a block), RKV_ERR_INVALID_ARG (its streams too long
   * to size). Only RKV_ERR_INTERNAL and RKV_ERR_CUDA mean otherwise: the run broke (see
   * rkv_evictor_run). */
  rkv_status status;
  bool compressed;             /* the compression ran (false for FULL and on failure) */
  uint32_t streams_compressed; /* streams over their budget that were compacted */
  uint64_t tokens_evicted;
  uint32_t blocks_freed; /* blocks returned to the free list, net of fresh ones */
} rkv_evictor_result;

/* Runs everything queued and empties the queue; results[i] is the i-th add's outcome
 * (*n_results = sequences run). Every allocation the run needs is made before the first
 * sequence changes: RKV_ERR_NO_MEMORY then changes nothing and keeps the queue (retry or
 * clear). Returns RKV_OK when every sequence's status is RKV_OK, else the first failing
 * sequence's status with its text in rkv_evictor_last_error (the others ran). Also, changing
 * nothing and keeping the queue: RKV_ERR_INVALID_ARG (NULL results or n_results),
 * RKV_ERR_STATE (nothing queued), RKV_ERR_CAPACITY (cap < queued). RKV_ERR_INTERNAL or
 * RKV_ERR_CUDA (and only these) when something failed after a sequence was cut: a bug or a
 * device fault; the state is then undefined and every result that did not fail on its own
 * carries that status. On a device pool the work is enqueued on
 * the backend's stream and the call returns without waiting for it; the staging memory it
 * used is reused by the next run after it waits for the stream. Cost: the compressions
 * (docs/EVICTION.md, "Cost") plus O(queued) host work. */
RKV_API rkv_status rkv_evictor_run(rkv_evictor *ev, rkv_evictor_result *results, uint32_t cap,
                                   uint32_t *n_results);

/* Checks the evictor's own invariants (queue within max_seqs, no sequence twice, every queued
 * layer and parameter set valid, a device window for every queued device compression that
 * reads queries, device state matching the pool's backend) and the query window it borrows:
 * RKV_ERR_CORRUPT with the text in rkv_evictor_last_error. The block manager has its own
 * rkv_blockmgr_check. O(queued^2 + the query-window check). */
RKV_API rkv_status rkv_evictor_check(const rkv_evictor *ev);
/* Host and device bytes the evictor holds (its scratch grows to the largest run seen). */
RKV_API size_t rkv_evictor_memory_bytes(const rkv_evictor *ev);

#ifdef __cplusplus
}
#endif
#endif /* RKV_EVICTOR_H */
