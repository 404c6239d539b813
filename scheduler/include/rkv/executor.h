/* librkv executor: runs the scheduler's plans against a KV pool, so that an embedding engine
 * only produces each layer's Q/K/V (and samples tokens); everything the plan implies for the
 * KV cache happens here, the same calls on every backend.
 *
 * One step (FlashInfer-style plan once, run per layer):
 *
 *   rkv_sched_step(sched, &plan);
 *   rkv_exec_begin(x, plan);                   forks, drops, swaps, copy-on-write copies,
 *                                              query-window life cycle, table rows by deltas
 *   for each layer l:                          (the model computes Q/K/V for the plan's rows)
 *     rkv_exec_layer(x, l, q, k, v, out);      K/V write, paged attention (decode and prefill
 *                                              groups), query-window push, H2O scores
 *   (sample; outs[i].eos = the token ended sequence i)
 *   rkv_exec_finish(x, outs, plan->n_seqs);    flagged compressions; outs filled
 *   rkv_sched_report(sched, outs, plan->n_seqs);
 *
 * Rows: the plan's sequences in plan order, n_tokens rows each (decodes first, then prefill
 * chunks): rows = plan->n_batched_tokens. q and out are [rows][num_q_heads][head_dim], k and v
 * [rows][num_kv_heads][head_dim], f32, post-RoPE, token-major (what a QKV projection yields);
 * host pointers on a CPU pool, DEVICE pointers (rkv_buffer memory of the pool's backend) on a
 * device pool. An empty plan (n_seqs 0) is still begun and finished: it may carry finished ids,
 * forks and swaps.
 *
 * Device pools (CUDA, or the emulated device of <rkv/buffer_emu.h>; docs/ARCHITECTURE.md,
 * "The executor on a device"): the executor keeps the table mirror on the device too, brought
 * up to date by begin with uploads of only the entries that changed, plus one upload of the
 * step's metadata through a pinned arena; each layer enqueues the K/V write, paged attention,
 * the query-window push (an rkv_qwindow on the pool's backend) and H2O mass on the backend's
 * stream without
 * waiting; finish queues the flagged sequences on the executor's evictor (rkv/evictor.h), which
 * cuts them on the host and compresses all of them with one batched device launch per
 * parameter set, then synchronises the stream once. out is therefore readable by the device right
 * after rkv_exec_layer (stream order) and by the host after rkv_backend_sync or rkv_exec_finish.
 * With shared blocks (forks) a device compression takes fresh blocks for every shared leading block
 * (within the scheduler's reservation), so its freed-block counts may differ from a CPU pool's.
 *
 * Memory the executor owns (all allocated at create, through the config's allocator): the
 * table mirror [max_seqs][streams][max_blocks_per_stream] + lengths, the query window (when
 * the default policy scores with queries; rkv_exec_qwindow_bytes_per_seq per sequence, in the
 * memory of the pool's backend, growing by doubling up to the block manager's max_seqs), the
 * host swap pool (host_blocks blocks; on a device pool pinned memory of its backend, an
 * RKV_BUFFER_HOST_PINNED buffer, unless pinning fails), and step scratch that grows with the
 * largest plan seen.
 * On a device pool also rkv_buffers of the pool's backend: the device mirror, a pinned staging
 * arena and workspaces, grown in the first steps of a run.
 *
 * Errors: every call returns rkv_status with text in rkv_exec_last_error. A failed begin,
 * layer or finish call changes nothing (validation and every allocation come first: the
 * query windows a plan registers, the mirror, the attention workspace of both groups, the
 * scratch of every flagged compression), so RKV_ERR_NO_MEMORY may be retried; a compression is
 * atomic per sequence: its fresh blocks are checked for every layer before the first layer is
 * touched (the scheduler reserves them when it flags the compression). Calls out of order are
 * RKV_ERR_STATE. Not internally synchronised: one thread per executor. */
#ifndef RKV_EXECUTOR_H
#define RKV_EXECUTOR_H

#include <rkv/attention.h>
#include <rkv/blockmgr.h>
#include <rkv/evict.h>
#include <rkv/runtime.h>
#include <rkv/scheduler.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_exec rkv_exec;

#define RKV_EXEC_CONFIG_VERSION 2
typedef struct rkv_exec_config {
  uint32_t struct_size;           /* sizeof(rkv_exec_config) */
  uint32_t num_q_heads;           /* multiple of the block manager's kv heads */
  float scale;                    /* softmax scale; 0 = 1/sqrt(head_dim) */
  uint32_t max_seqs;              /* sequences per plan (the scheduler's max_seqs) */
  uint32_t max_stream_tokens;     /* expected longest stream: the table mirror's first row
                                   * capacity (0 = the default policy's B + buffer); doubled,
                                   * with a full re-sync, when a longer stream shows up */
  uint32_t host_blocks;           /* swap pool in blocks (the scheduler's host_blocks) */
  rkv_evict_params evict;         /* the default policy: its window sizes the query window */
  const rkv_allocator *allocator; /* NULL = libc */
  /* v2: which streams of a flagged sequence share one kept set (rkv_evict_granularity;
   * docs/EVICTION.md, "Selection granularity"). STREAM (the default, and what a version-1
   * struct gets) compresses layer by layer with rkv_evict_layer; the coarser units run
   * rkv_evict_seq on CPU pools (both through the executor's rkv_evictor). On a device pool (CUDA
   * or emulated) the evictor's batched launch aggregates each group's scores itself (every unit
   * since version 2 of rkv_evict_cuda_batch). Bookkeeping executors (pool NULL) cut uniformly:
   * no unit applies. */
  rkv_evict_granularity granularity;
} rkv_exec_config;
#define RKV_EXEC_CONFIG_INIT                                                  \
  {                                                                           \
    sizeof(rkv_exec_config), 0, 0.0f, 256, 0, 0, RKV_EVICT_PARAMS_INIT, NULL, \
        RKV_EVICT_GRAN_STREAM                                                 \
  }

/* Creates an executor over a pool and the block manager whose ids index it (both borrowed:
 * they must outlive the executor). pool NULL gives a bookkeeping executor: plans are applied
 * to the table mirror and slot mapping only (no bytes move, rkv_exec_layer is RKV_ERR_STATE
 * and not required), and a flagged compression cuts every stream to the budget with
 * rkv_blockmgr_compact_uniform: for simulators, capacity planning and host-cost benchmarks. Layers,
 * kv heads, head_dim, block size and dtype come from the block manager and must match the pool.
 * struct_size may be that of version 1 (up to allocator; granularity is then STREAM).
 * RKV_ERR_INVALID_ARG (text in err), RKV_ERR_NO_MEMORY, RKV_ERR_UNSUPPORTED (a CUDA pool whose
 * head_dim / block size / dtype lies outside the CUDA kernels' set, a query window over
 * 256 rows, or a granularity other than STREAM on a device pool), RKV_ERR_CUDA (device
 * memory). *out = NULL on failure. */
RKV_API rkv_status rkv_exec_create(const rkv_exec_config *cfg, rkv_blockmgr *m, rkv_kv_pool *pool,
                                   rkv_exec **out, char *err, size_t err_len);
/* Accepts NULL. */
RKV_API void rkv_exec_destroy(rkv_exec *x);
/* Text of the last failed call ("" if none). */
RKV_API const char *rkv_exec_last_error(const rkv_exec *x);

/* Applies everything of the plan that precedes the forward pass, in this order: forks (query
 * windows), dropped ids, swap-outs, swap-ins, copy-on-write copies, started ids, then brings
 * the table mirror of every scheduled sequence up to date (only rows that changed) and lays
 * out the slot mapping. The plan must stay valid until rkv_exec_finish (it does until the next
 * rkv_sched_step). RKV_ERR_STATE (a step is open), RKV_ERR_CAPACITY (more than max_seqs
 * sequences, a table mirror over 2^32 entries, or more host query windows live at once, running
 * and swapped out, than the block manager's max_seqs), RKV_ERR_NO_MEMORY (scratch, query
 * windows, device buffers or mirror growth), RKV_ERR_INVALID_ARG for a plan this scheduler did
 * not make for this block manager and executor, with a message naming the field and value.
 * Every refusal comes before anything changes (query windows, pool bytes, the mirror); a plan
 * that passes cannot make a later stage fail (on a device, a failed transfer of the backend
 * still can: RKV_ERR_CUDA). Checked, in O(the plan's lists + scheduled sequences):
 *  - arrays with a non-zero count are not NULL; n_seqs <= max_seqs; n_decode <= n_seqs;
 *  - seqs: ids held by the block manager, none twice; the first n_decode are RKV_SCHED_DECODE
 *    with n_tokens 1, the rest RKV_SCHED_PREFILL with n_tokens >= 1; n_tokens <= kv_len;
 *    pos >= kv_len - n_tokens (== for a started id); evict, when given, names a policy (and
 *    validates when compress is set), and a policy that reads queries uses the executor's
 *    window size; n_batched_tokens is the sum of n_tokens; slot_layer_stride >=
 *    n_batched_tokens x kv heads when slots are given;
 *  - kv_len against the block manager: a sequence whose table rows re-sync holds kv_len
 *    tokens there; one that was scheduled before (its mirror entry knows its lengths, after a
 *    compression too) held exactly kv_len - n_tokens before the step, and with rows_changed 0
 *    no stream takes a block (a boundary needs rows_changed 1). For a sequence new to its
 *    mirror entry (admitted, forked, swapped in, or every one after the mirror grew) n_tokens
 *    is only bounded as above;
 *  - started and swapped_in ids are scheduled sequences, each listed once; dropped ids are not
 *    live in the block manager unless started again;
 *  - with query windows (a pool whose default policy reads queries): a fork's parent has a
 *    window (or is an earlier fork's child) and its child none; a started id has none once the
 *    drops ran; every scheduled sequence has one afterwards (started, forked or kept);
 *  - copies: src and dst distinct block ids of the block manager's pool; with a pool, swaps:
 *    device ids in the pool, host ids below host_blocks, no host block written twice by one
 *    swap-out. */
RKV_API rkv_status rkv_exec_begin(rkv_exec *x, const rkv_sched_plan *plan);

/* One layer of the open step: writes the rows' K/V into their slots, runs paged attention
 * over the per-head tables (decode group, then prefill group) into out, pushes the queries
 * into the query window and, for H2O, accumulates attention mass. Layers may come in any
 * order, each once. RKV_ERR_STATE (no open step, layer already run), RKV_ERR_INVALID_ARG. */
RKV_API rkv_status rkv_exec_layer(rkv_exec *x, uint32_t layer, const float *q, const float *k,
                                  const float *v, float *out);

/* Runs the plan's flagged compressions (every layer of the sequence, atomically per
 * sequence) and fills outs[i] for the plan's seqs[i]: id, compressed, tokens_evicted,
 * blocks_freed. outs[i].eos is read and kept: set it from the sampled token first (or zero the
 * array); a sequence that ends now is not compressed (its blocks are freed at the report; a
 * caller may also set eos for a sequence that reaches its length limit). n must equal the
 * plan's n_seqs. Closes the step. RKV_ERR_STATE (no open step or a layer not run),
 * RKV_ERR_INVALID_ARG, RKV_ERR_NO_BLOCKS (a compression whose fresh blocks were not reserved: that
 * sequence is left uncompressed, reported compressed = false, and the step still closes; the
 * scheduler never causes it). */
RKV_API rkv_status rkv_exec_finish(rkv_exec *x, rkv_sched_output *outs, uint32_t n);

/* Bytes of query window the executor keeps per live sequence (0 when the default policy
 * needs none): num_layers x num_q_heads x window x head_dim x 4. Memory planners count it
 * against the device (R-KV's serving ports lost gigabytes to a static query buffer). */
RKV_API size_t rkv_exec_qwindow_bytes_per_seq(const rkv_exec *x);
/* Total bytes the executor allocated (mirror, windows, swap pool, scratch). */
RKV_API size_t rkv_exec_memory_bytes(const rkv_exec *x);

/* Walks the executor's invariants: every mirror slot belongs to one live sequence of the
 * block manager and its rows/lengths equal the manager's tables (for sequences synced since
 * their last change), the slot map matches, the query window passes its own check. Call it
 * right after begin, or between steps while no plan has been made since the last finish: a
 * plan appends to the block manager, and the mirror catches up only at its begin (with
 * overlap scheduling the next plan exists from before the finish on). RKV_OK or
 * RKV_ERR_CORRUPT with the first violation in the last error. O(mirror). */
RKV_API rkv_status rkv_exec_check(const rkv_exec *x);

#ifdef __cplusplus
}
#endif
#endif /* RKV_EXECUTOR_H */
