/* librkv eviction on the GPU: R-KV, SnapKV, StreamingLLM and H2O selection plus the compaction
 * moves, for a batch of streams whose keys stay in a CUDA KV pool.
 *
 * Deprecated: rkv_evictor (rkv/evictor.h) is the one eviction entry point on every backend;
 * on a device pool it runs this protocol itself (one batched launch per parameter set), and
 * the executor (rkv/executor.h) compresses through it. The functions below carry
 * RKV_DEPRECATED (a compiler warning at every use); they keep working in this release for
 * engines that drive them directly, and will become internal in the next one. The types stay.
 * rkv_blockmgr_compact_uniform (step 1) is a block-manager primitive with uses of its own
 * (replay, simulators) and is not deprecated. Semantics are those of the
 * CPU path (rkv/evict.h; docs/EVICTION.md, "The algorithm, exactly"); only where the numbers
 * are computed differs.
 *
 * Flow with a uniform budget (the serving path; no host round trip inside one compression):
 *   1. rkv_blockmgr_compact_uniform(m, seq, layer, budget, maps, ..., old_blocks, ...) cuts
 *      every over-budget stream to `budget` tokens on the host and reports the old rows;
 *   2. rkv_evict_cuda_describe() turns those maps into per-stream descriptors and the new rows
 *      (host arrays); the caller copies them to the device (cudaMemcpyAsync on the backend's
 *      stream, or a pinned staging buffer of its own);
 *   3. rkv_evict_cuda_compress() scores the old rows, selects per stream, and moves the kept
 *      tokens (K, V and the per-slot score) from the old rows into the new rows, in position
 *      order, through a scratch copy (so new rows may reuse any old block, of any stream).
 * Everything in step 3 is enqueued on the pool backend's stream: no allocation, no host
 * synchronisation, capturable in a CUDA graph. Without a CUDA build every function returns
 * RKV_ERR_UNSUPPORTED. */
#ifndef RKV_EVICT_CUDA_H
#define RKV_EVICT_CUDA_H

#include <stddef.h>

#include <rkv/blockmgr.h>
#include <rkv/evict.h>
#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RKV_EVICT_CUDA_DEPRECATED RKV_DEPRECATED("use rkv_evictor (rkv/evictor.h)")

/* One stream to compress (plain data, copied to the device by the caller). */
typedef struct rkv_evict_cuda_stream {
  int32_t old_len;     /* n: tokens before compression; a stream with n <= budget is skipped */
  int32_t old_offset;  /* index of the stream's first old block in the batch's old_blocks */
  int32_t new_offset;  /* index of its first new block in new_blocks (ceil(budget/bs) ids) */
  int32_t kv_head;     /* informational (the stream's kv head); kernels do not read it */
  int64_t qwin_offset; /* element offset in qwin of the group's window [group][window][d] */
} rkv_evict_cuda_stream;

#define RKV_EVICT_CUDA_BATCH_VERSION 2
/* A batch of streams compressed by one call. All pointers are DEVICE pointers borrowed for
 * the duration of the enqueued work (keep them alive until the stream passes it). */
typedef struct rkv_evict_cuda_batch {
  uint32_t struct_size;                 /* sizeof(rkv_evict_cuda_batch) */
  uint32_t num_streams;                 /* >= 1 */
  uint32_t group;                       /* G = num_q_heads / num_kv_heads (>= 1) */
  int32_t max_len;                      /* >= every stream's old_len; sizes grid, workspace */
  const rkv_evict_cuda_stream *streams; /* [num_streams] */
  const int32_t *old_blocks;            /* old rows (the blocks as they were before step 1) */
  const int32_t *new_blocks;            /* new rows (leading blocks after step 1) */
  /* Query windows, f32 (R-KV, SnapKV; may be NULL otherwise): stream s reads
   * qwin + streams[s].qwin_offset as [group][window][head_dim]; the order of the window rows
   * does not matter (a ring may be passed as is), but all `window` rows must be filled. */
  const float *qwin;
  /* Optional output [num_streams][budget]: the kept cache positions of each compressed
   * stream, ascending (rows of skipped streams are left untouched). NULL = not wanted. */
  int32_t *kept;
  /* Optional [n_clear]: blocks whose per-slot scores are zeroed (the blocks step 1 freed, from
   * rkv_evict_cuda_freed_blocks), so H2O mass never leaks into a reused slot. New-row slots
   * past the budget are always zeroed. NULL = none. */
  const int32_t *clear_blocks;
  uint32_t n_clear;
  uint32_t flags; /* RKV_EVICT_CUDA_* bits; 0 = defaults */
  /* Version 2. Selection granularity (rkv_evict_granularity; docs/EVICTION.md, "Selection
   * granularity"): RKV_EVICT_GRAN_STREAM (0) selects per stream. A coarser one keeps one set
   * per group: streams then come as whole sequences, `layers` x `kv_heads` consecutive
   * descriptors each in (layer, head) order, all of one old_len (the evictor's lockstep
   * rule), and every member of a group keeps the positions the group's aggregated score
   * picks. A caller built against version 1 (struct_size of the fields above) gets STREAM. */
  uint32_t granularity;
  uint32_t layers;
  uint32_t kv_heads;
} rkv_evict_cuda_batch;
#define RKV_EVICT_CUDA_BATCH_INIT \
  { sizeof(rkv_evict_cuda_batch), 0, 1, 0, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, 1, 1 }
/* struct_size of a version-1 batch (no granularity fields), which compress still accepts. */
#define RKV_EVICT_CUDA_BATCH_V1_SIZE offsetof(rkv_evict_cuda_batch, granularity)

/* R-KV similarity K^K^T on tensor cores as three TF32 products per value pair (hi*hi + hi*lo +
 * lo*hi): ~21-bit products instead of f32's 24, several times faster than the default f32
 * SIMT tiles. Selections can differ from the CPU's only where two scores agree to ~1e-9. */
#define RKV_EVICT_CUDA_TENSOR_CORES 1u

/* Device workspace bytes rkv_evict_cuda_compress needs for num_streams streams of up to
 * max_len tokens with query group `group`, under params p and the pool's layout.
 * RKV_ERR_INVALID_ARG (bad params or sizes, overflow), RKV_ERR_UNSUPPORTED (no CUDA build,
 * the layout is outside the closed set head_dim 64/128/256, block 16/32, f32/f16/bf16, window
 * > 256, or R-KV with max_len > 4,194,240 = 65535 similarity tiles of 64). Thread-safe. O(1). */
RKV_API RKV_EVICT_CUDA_DEPRECATED rkv_status
rkv_evict_cuda_workspace_size(const rkv_evict_params *p, const rkv_kv_pool *pool,
                              uint32_t num_streams, uint32_t group, int32_t max_len, size_t *bytes);

/* Scores, selects and compacts every stream of the batch with n > budget: afterwards the
 * first `budget` slots of its new row hold, in position order, the kept tokens: the
 * (budget - window) best candidates by the policy's score (ties: lower position) plus the
 * window newest (R-KV, SnapKV, H2O), or the `sinks` first plus the newest
 * (StreamingLLM). H2O ranks by rkv_kv_pool_scores(pool) of the old slots. Per-slot scores
 * travel with the tokens; see clear_blocks for the slots left behind. The score arithmetic is
 * f64 past the similarity tiles (f32, like the CPU path), so selections match the CPU's
 * except where two candidates' scores agree to ~1e-12. workspace: device memory of
 * rkv_evict_cuda_workspace_size bytes (contents need not be initialised; not shared with concurrent
 * calls). RKV_ERR_INVALID_ARG (NULL or malformed batch, policy needs qwin and it is NULL, params,
 * RKV_EVICT_FULL), RKV_ERR_UNSUPPORTED (no CUDA build, pool not on a CUDA backend, layout
 * outside the closed set, window > 256, R-KV max_len > 4,194,240), RKV_ERR_CAPACITY (ws_bytes too
 * small), RKV_ERR_CUDA (launch failed; text with file:line in rkv_backend_last_error). Validation
 * happens before anything is enqueued; device-side descriptors are trusted (a stream with n >
 * max_len is skipped). Enqueued on the backend's stream; returns without waiting. Not thread-safe
 * per backend. */
RKV_API RKV_EVICT_CUDA_DEPRECATED rkv_status
rkv_evict_cuda_compress(const rkv_evict_params *p, rkv_kv_pool *pool,
                        const rkv_evict_cuda_batch *batch, void *workspace, size_t ws_bytes);

/* Host helper for step 2: from the maps and old rows that rkv_blockmgr_compact_uniform just
 * returned for `seq`, writes one descriptor per map into streams[] and the new rows (read
 * from m) back to back into new_blocks[]. Query windows are addressed as a per-sequence array
 * [num_layers][num_q_heads][window][head_dim] starting at element qwin_seq_offset (the layout
 * of a device rkv_qwindow's entries and of the ring pushed by rkv_attn_cuda_qwindow_push: pass
 * seq_slot * layers * q_heads * window * d). Descriptors' old_offset is maps[i].old_offset +
 * old_base and new_offset is new_base + blocks written before it, so several sequences can share
 * one batch. RKV_ERR_CAPACITY (*n_new = blocks needed), RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG,
 * RKV_ERR_UNSUPPORTED for a sequence with a protected prefix (rkv_blockmgr_seq_protect: this
 * protocol would rank and rewrite it; rkv_evictor compresses such sequences on a device).
 * O(maps + new blocks). Available without CUDA (plain host code). */
RKV_API RKV_EVICT_CUDA_DEPRECATED rkv_status rkv_evict_cuda_describe(
    const rkv_blockmgr *m, int64_t seq, const rkv_compact_map *maps, uint32_t n_maps,
    uint32_t num_q_heads, int32_t window, int64_t qwin_seq_offset, int32_t old_base,
    int32_t new_base, rkv_evict_cuda_stream *streams, int32_t *new_blocks, uint32_t new_cap,
    uint32_t *n_new);

/* Host helper: writes into out[] the ids among old_blocks[0..n_old) that are free now (ref 0
 * in m), each id once: the blocks step 1 returned to the free list; pass them as the batch's
 * clear_blocks. RKV_ERR_CAPACITY when cap is smaller than the count (*n_out = count),
 * RKV_ERR_INVALID_ARG (NULL, bad id). O(n_old) plus a scan of the output per freed id (old
 * rows of one compression hold each id once, so the scan only guards against misuse).
 * Available without CUDA. */
RKV_API RKV_EVICT_CUDA_DEPRECATED rkv_status rkv_evict_cuda_freed_blocks(const rkv_blockmgr *m,
                                                                         const int32_t *old_blocks,
                                                                         uint32_t n_old,
                                                                         int32_t *out, uint32_t cap,
                                                                         uint32_t *n_out);

/* Host helper for the single upload a compression needs: lays the four host arrays
 * (descriptors, old rows, new rows, freed blocks) back to back into `host`, each section
 * 256-byte aligned, and points *batch's streams, old_blocks, new_blocks and clear_blocks
 * (NULL when n_freed is 0) at the same offsets from `device`, the buffer the caller then
 * copies `host` into (*bytes bytes, on the backend's stream). Also sets num_streams and
 * n_clear; group, max_len, qwin, kept, flags and the granularity fields are the caller's. With host
 * == NULL only *bytes is computed (size the buffers). RKV_ERR_CAPACITY when host_cap < *bytes,
 * RKV_ERR_INVALID_ARG (NULL arrays with nonzero counts, no streams, no device pointer).
 * O(bytes). Available without CUDA. */
RKV_API RKV_EVICT_CUDA_DEPRECATED rkv_status
rkv_evict_cuda_pack(const rkv_evict_cuda_stream *streams, uint32_t n_streams,
                    const int32_t *old_blocks, uint32_t n_old, const int32_t *new_blocks,
                    uint32_t n_new, const int32_t *freed, uint32_t n_freed, void *host,
                    size_t host_cap, void *device, rkv_evict_cuda_batch *batch, size_t *bytes);

#ifdef __cplusplus
}
#endif
#endif /* RKV_EVICT_CUDA_H */
