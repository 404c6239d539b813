/* librkv eviction: R-KV (redundancy-aware) selection and its baselines (SnapKV, StreamingLLM,
 * H2O, full) behind one policy interface. Scoring reads keys block by block through the block
 * manager's per-stream tables straight from a KV pool; the result is a per-stream keep list
 * handed to the block manager's compaction, which frees whole tail blocks.
 * Semantics: docs/RKV-ALGORITHM.md of the project (followed exactly). */
#ifndef RKV_EVICT_H
#define RKV_EVICT_H

#include <rkv/blockmgr.h>
#include <rkv/qwindow.h>
#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rkv_evict_policy {
  RKV_EVICT_FULL = 0,      /* never evicts */
  RKV_EVICT_RKV = 1,       /* importance - redundancy */
  RKV_EVICT_SNAPKV = 2,    /* importance only */
  RKV_EVICT_STREAMING = 3, /* sinks + newest */
  RKV_EVICT_H2O = 4,       /* accumulated attention mass + newest */
  RKV_EVICT_POLICY_COUNT_
} rkv_evict_policy;

RKV_API const char *rkv_evict_policy_name(rkv_evict_policy p);
RKV_API rkv_status rkv_evict_policy_parse(const char *name, rkv_evict_policy *out);

#define RKV_EVICT_PARAMS_VERSION 1
typedef struct rkv_evict_params {
  uint32_t struct_size;    /* sizeof(rkv_evict_params) */
  rkv_evict_policy policy;
  int32_t budget;          /* B: tokens a stream keeps after compression (> window) */
  int32_t window;          /* alpha: newest tokens always kept; query window rows (8) */
  int32_t buffer;          /* tokens decoded between compressions (128) */
  int32_t kernel;          /* max-pool width, odd (7) */
  float lambda;            /* joint score weight, 0..1 (0.1) */
  float threshold;         /* redundancy similarity threshold T (0.5) */
  int32_t sinks;           /* StreamingLLM attention sinks (4) */
} rkv_evict_params;
#define RKV_EVICT_PARAMS_INIT \
  {sizeof(rkv_evict_params), RKV_EVICT_RKV, 1024, 8, 128, 7, 0.1f, 0.5f, 4}

/* RKV_OK or RKV_ERR_INVALID_ARG with a message in err (when err_len > 0). */
RKV_API rkv_status rkv_evict_params_validate(const rkv_evict_params *p, char *err, size_t err_len);

/* True iff a stream of length `len` compresses now: after a decode step that brought it to
 * budget + buffer (or beyond), or (after_prefill) when the prompt filled it to >= budget.
 * Always false for RKV_EVICT_FULL. */
RKV_API bool rkv_evict_should_compress(const rkv_evict_params *p, int32_t len, bool after_prefill);

/* Outcome of compressing one (sequence, layer). */
typedef struct rkv_evict_result {
  uint32_t streams_compressed; /* streams that were over budget and got compacted */
  uint64_t tokens_evicted;
  uint32_t blocks_freed;       /* blocks returned to the free list (net of fresh CoW blocks) */
  uint32_t slot_moves;         /* K/V rows moved by compaction */
} rkv_evict_result;

/* Workspace bytes rkv_evict_layer needs for streams up to max_len tokens (caller-provided,
 * so the hot path never allocates). */
RKV_API rkv_status rkv_evict_workspace_size(const rkv_evict_params *p, uint32_t num_kv_heads,
                                            uint32_t num_q_heads, uint32_t head_dim,
                                            int32_t max_len, size_t *bytes);

/* Compresses every stream of (seq, layer) longer than the budget down to exactly `budget`
 * tokens: scores keys read block by block from `pool` through m's tables, selects per kv
 * head, compacts with rkv_blockmgr_compact and applies the move plan to the pool (K, V and
 * the per-slot scores). The query window comes from `qw` (R-KV, SnapKV; may be NULL for
 * streaming/h2o/full); H2O reads rkv_kv_pool_scores(pool). CPU pools only (a CUDA pool is
 * RKV_ERR_UNSUPPORTED here; the CUDA path has its own entry). num_q_heads must be a multiple
 * of the manager's kv heads. RKV_ERR_CAPACITY if ws_bytes is too small. */
RKV_API rkv_status rkv_evict_layer(const rkv_evict_params *p, rkv_blockmgr *m, rkv_kv_pool *pool,
                                   const rkv_qwindow *qw, uint32_t num_q_heads, int64_t seq,
                                   uint32_t layer, void *workspace, size_t ws_bytes,
                                   rkv_evict_result *res);

#ifdef __cplusplus
}
#endif
#endif /* RKV_EVICT_H */
