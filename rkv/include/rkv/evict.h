/* librkv eviction: R-KV (redundancy-aware) selection and its baselines (SnapKV, StreamingLLM,
 * H2O, full) behind one policy interface. Scoring reads keys block by block through the block
 * manager's per-stream tables straight from a KV pool; the result is a per-stream keep list
 * handed to the block manager's compaction, which frees whole tail blocks.
 * Semantics: docs/EVICTION.md, "The algorithm, exactly" (followed exactly). */
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
  RKV_EVICT_H2O = 4,       /* accumulated attention mass + newest (`window` of them) */
  RKV_EVICT_POLICY_COUNT_
} rkv_evict_policy;

RKV_API const char *rkv_evict_policy_name(rkv_evict_policy p);
RKV_API rkv_status rkv_evict_policy_parse(const char *name, rkv_evict_policy *out);

/* What a policy reads and where it runs: one row of the library's policy table
 * (docs/EVICTION.md, "Adding a policy"). Engines use it instead of testing policy ids. */
typedef struct rkv_evict_policy_info {
  uint32_t struct_size;      /* sizeof(rkv_evict_policy_info), set by the caller */
  const char *name;          /* rkv_evict_policy_name */
  bool evicts;               /* false: FULL, never compresses */
  bool needs_query_window;   /* scores read the last `window` queries (rkv_qwindow) */
  bool needs_attention_mass; /* scores read accumulated attention mass (the pool's scores) */
  bool positional;           /* keeps by position alone: no scores */
  bool device_variant;       /* the CUDA eviction kernels implement it */
} rkv_evict_policy_info;
/* RKV_ERR_INVALID_ARG for an unknown policy, NULL out or a bad struct_size. */
RKV_API rkv_status rkv_evict_policy_get_info(rkv_evict_policy p, rkv_evict_policy_info *out);

#define RKV_EVICT_PARAMS_VERSION 1
typedef struct rkv_evict_params {
  uint32_t struct_size; /* sizeof(rkv_evict_params) */
  rkv_evict_policy policy;
  int32_t budget;  /* B: tokens a stream keeps after compression (> window) */
  int32_t window;  /* alpha: newest tokens always kept; query window rows (8) */
  int32_t buffer;  /* tokens decoded between compressions (128) */
  int32_t kernel;  /* max-pool width, odd (7) */
  float lambda;    /* joint score weight, 0..1 (0.1) */
  float threshold; /* redundancy similarity threshold T (0.5) */
  int32_t sinks;   /* StreamingLLM attention sinks (4) */
} rkv_evict_params;
#define RKV_EVICT_PARAMS_INIT \
  { sizeof(rkv_evict_params), RKV_EVICT_RKV, 1024, 8, 128, 7, 0.1f, 0.5f, 4 }

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
  uint32_t blocks_freed; /* blocks returned to the free list (net of fresh CoW blocks) */
  uint32_t slot_moves;   /* K/V rows moved by compaction */
} rkv_evict_result;

/* Workspace bytes rkv_evict_layer needs for streams up to max_len tokens (caller-provided,
 * so the hot path never allocates). */
RKV_API rkv_status rkv_evict_workspace_size(const rkv_evict_params *p, uint32_t num_kv_heads,
                                            uint32_t num_q_heads, uint32_t head_dim,
                                            int32_t max_len, size_t *bytes);

/* Compresses every stream of (seq, layer) longer than the budget down to exactly `budget`
 * tokens. A protected prefix of P tokens (rkv_blockmgr_seq_protect) stays in place and out of
 * the count: a stream compresses when it holds more than P + budget tokens, and keeps the P
 * plus the best `budget` of the rest (the newest `window` among them), scored over the rest
 * only. Scores keys read block by block from `pool` through m's tables, selects per kv
 * head, compacts with rkv_blockmgr_compact and applies the move plan to the pool (K, V and
 * the per-slot scores). The query window comes from `qw` (R-KV, SnapKV; may be NULL for
 * streaming/h2o/full); H2O reads rkv_kv_pool_scores(pool). CPU pools only (a CUDA pool is
 * RKV_ERR_UNSUPPORTED here; the CUDA path has its own entry). num_q_heads must be a multiple
 * of the manager's kv heads. RKV_ERR_CAPACITY if ws_bytes is too small.
 * Also: RKV_ERR_INVALID_ARG (params, shapes, layer, query window shape), RKV_ERR_NOT_FOUND
 * (seq unknown to the manager or the window), RKV_ERR_STATE (the window holds fewer than
 * `window` rows), RKV_ERR_NO_BLOCKS (fresh blocks for shared leading blocks), all changing
 * nothing; RKV_ERR_INTERNAL if the pool rejects the move plan after the tables changed.
 * After compaction the per-slot scores of slots that hold no token any more are zeroed.
 * Streams of length <= budget are untouched; FULL returns at once. Not thread-safe on one
 * manager (it mutates it); thread-safe across managers with distinct workspaces.
 * Cost per compressed stream O(n^2 d / 2) (R-KV), O(G window n d) (SnapKV), O(n) otherwise.
 * rkv_evict_seq (below) compresses every layer of a sequence at once, at a granularity. */
RKV_API rkv_status rkv_evict_layer(const rkv_evict_params *p, rkv_blockmgr *m, rkv_kv_pool *pool,
                                   const rkv_qwindow *qw, uint32_t num_q_heads, int64_t seq,
                                   uint32_t layer, void *workspace, size_t ws_bytes,
                                   rkv_evict_result *res);

/* Like rkv_evict_layer, with the reason of a failure written into err (when err_len > 0):
 * rkv_evict_layer has no handle to keep error text in. */
RKV_API rkv_status rkv_evict_layer_ex(const rkv_evict_params *p, rkv_blockmgr *m, rkv_kv_pool *pool,
                                      const rkv_qwindow *qw, uint32_t num_q_heads, int64_t seq,
                                      uint32_t layer, void *workspace, size_t ws_bytes,
                                      rkv_evict_result *res, char *err, size_t err_len);

/* ---- Dense entry (tools, tests, references) -------------------------------------------- */

/* Tokens a stream of length n holds after one compression step: n for RKV_EVICT_FULL or
 * n <= budget, else budget. 0 for invalid parameters or n < 0. */
RKV_API int32_t rkv_evict_kept_count(const rkv_evict_params *p, int32_t n);

/* Optional per-head score dumps of rkv_evict_select_dense, each [num_kv_heads][n - window]
 * f32 (candidates only): importance I (after pooling; R-KV and SnapKV), redundancy R (after
 * the softmax over n; R-KV), joint Z (the selection key of every scored policy: Z of R-KV,
 * I of SnapKV, the accumulated mass of H2O). Any pointer may be NULL. Rows of heads that do
 * not compress (n <= budget, streaming, full) are left untouched. */
typedef struct rkv_evict_scores {
  float *importance;
  float *redundancy;
  float *joint;
} rkv_evict_scores;

/* Workspace bytes rkv_evict_select_dense needs for n tokens of head_dim. RKV_ERR_INVALID_ARG
 * for invalid parameters or sizes. */
RKV_API rkv_status rkv_evict_dense_workspace_size(const rkv_evict_params *p, uint32_t head_dim,
                                                  int32_t n, size_t *bytes);

/* One compression step on dense f32 inputs, per kv head, exactly as rkv_evict_layer scores
 * and selects (same code), without a block manager:
 *  keys    [num_kv_heads][n][head_dim] post-RoPE keys in cache order (NULL allowed for
 *          streaming / full / h2o);
 *  queries [num_q_heads][window][head_dim] the window queries, oldest first (R-KV, SnapKV);
 *  acc     [num_kv_heads][n] accumulated attention mass (H2O only, else ignored);
 *  keep    [num_kv_heads][rkv_evict_kept_count(p, n)] receives each head's kept positions,
 *          ascending;
 *  dump    optional score dumps (see rkv_evict_scores), NULL = none.
 * num_q_heads must be a positive multiple of num_kv_heads (query head q belongs to kv head
 * q / (num_q_heads / num_kv_heads)). All pointers are borrowed for the call only.
 * RKV_ERR_INVALID_ARG (text in err), RKV_ERR_CAPACITY (ws_bytes too small). Thread-safe on
 * distinct workspaces. Cost O(n^2 d) per kv head for R-KV (the similarity), else O(n d G). */
RKV_API rkv_status rkv_evict_select_dense(const rkv_evict_params *p, const float *keys,
                                          const float *queries, const float *acc,
                                          uint32_t num_kv_heads, uint32_t num_q_heads, int32_t n,
                                          uint32_t head_dim, int32_t *keep,
                                          const rkv_evict_scores *dump, void *workspace,
                                          size_t ws_bytes, char *err, size_t err_len);

/* ---- Selection granularity (dense entry) ------------------------------------------------ */

/* Which streams share one kept set. A stream is one (layer, kv head) of a sequence; the
 * per-stream step above is RKV_EVICT_GRAN_STREAM. The coarser units rank the candidates of
 * every member stream by an aggregate of the members' per-stream joint scores Z (the key
 * rkv_evict_scores.joint dumps), then give every member the same kept positions:
 *  STREAM   one set per (layer, kv head): Z itself;
 *  LAYER    one set per layer: the mean over the layer's kv heads of Z;
 *  KVHEAD   one set per kv head index, shared by all layers: the sum over layers of Z;
 *  SEQUENCE one set for all layers and heads: the sum over layers of the mean over kv heads.
 * See docs/EVICTION.md, "Selection granularity". */
typedef enum rkv_evict_granularity {
  RKV_EVICT_GRAN_STREAM = 0,
  RKV_EVICT_GRAN_LAYER = 1,
  RKV_EVICT_GRAN_KVHEAD = 2,
  RKV_EVICT_GRAN_SEQUENCE = 3,
  RKV_EVICT_GRAN_COUNT_
} rkv_evict_granularity;

/* "stream", "layer", "kvhead", "sequence" ("invalid" out of range). */
RKV_API const char *rkv_evict_granularity_name(rkv_evict_granularity g);
/* Parses the names above; RKV_ERR_INVALID_ARG (out untouched) for anything else. */
RKV_API rkv_status rkv_evict_granularity_parse(const char *name, rkv_evict_granularity *out);

/* Workspace bytes rkv_evict_select_dense_multi needs for n tokens of head_dim (for
 * RKV_EVICT_GRAN_STREAM exactly rkv_evict_dense_workspace_size; the coarser units add two
 * score vectors of n doubles). RKV_ERR_INVALID_ARG for invalid parameters, granularity or
 * sizes. */
RKV_API rkv_status rkv_evict_dense_multi_workspace_size(const rkv_evict_params *p,
                                                        rkv_evict_granularity g, uint32_t head_dim,
                                                        int32_t n, size_t *bytes);

/* One compression step of every layer of one sequence at granularity g, on dense f32 inputs
 * (all streams hold the same n tokens):
 *  keys    [num_layers][num_kv_heads][n][head_dim] (NULL allowed for streaming / full / h2o);
 *  queries [num_layers][num_q_heads][window][head_dim] (R-KV, SnapKV);
 *  acc     [num_layers][num_kv_heads][n] accumulated attention mass (H2O only);
 *  keep    [num_layers][num_kv_heads][rkv_evict_kept_count(p, n)] receives each stream's
 *          kept positions, ascending; all streams of one group get the same positions;
 *  dump    optional per-stream (not aggregated) scores, each [num_layers][num_kv_heads]
 *          [n - window], as rkv_evict_select_dense writes them per layer.
 * Every group keeps the window and the best budget - window candidates by the aggregated
 * score (ties: the lower position; NaN ranks last). RKV_EVICT_GRAN_STREAM gives exactly
 * rkv_evict_select_dense of each layer; streaming, full and n <= budget give the same set
 * at every granularity. Scores each stream once with the per-stream code, so the cost is
 * num_layers times that of rkv_evict_select_dense plus O(num_layers * num_kv_heads * n).
 * RKV_ERR_INVALID_ARG (text in err: parameters, granularity, shapes, missing inputs),
 * RKV_ERR_CAPACITY (ws_bytes too small); nothing is written on failure. Thread-safe on
 * distinct workspaces. */
RKV_API rkv_status rkv_evict_select_dense_multi(const rkv_evict_params *p, rkv_evict_granularity g,
                                                const float *keys, const float *queries,
                                                const float *acc, uint32_t num_layers,
                                                uint32_t num_kv_heads, uint32_t num_q_heads,
                                                int32_t n, uint32_t head_dim, int32_t *keep,
                                                const rkv_evict_scores *dump, void *workspace,
                                                size_t ws_bytes, char *err, size_t err_len);

/* ---- Selection granularity (paged entry) ------------------------------------------------ */

/* Workspace bytes rkv_evict_seq needs for a sequence of num_layers x num_kv_heads streams of
 * up to max_len tokens each (about num_layers x num_kv_heads x max_len x 20 bytes on top of
 * rkv_evict_workspace_size's scratch: every stream's keep list and moves are held until the
 * one compaction). RKV_ERR_INVALID_ARG for invalid parameters, granularity or sizes (also
 * when layers x kv heads x max_len exceeds 2^32). */
RKV_API rkv_status rkv_evict_seq_workspace_size(const rkv_evict_params *p, rkv_evict_granularity g,
                                                uint32_t num_layers, uint32_t num_kv_heads,
                                                uint32_t num_q_heads, uint32_t head_dim,
                                                int32_t max_len, size_t *bytes);

/* One compression step of every layer of sequence seq at granularity g, over a CPU pool:
 * rkv_evict_layer for all layers at once, with groups of streams sharing one kept set as
 * rkv_evict_select_dense_multi defines them (docs/EVICTION.md, "Selection granularity").
 * Every stream (positions after the protected prefix P, rkv_blockmgr_seq_protect) is gathered
 * from the pool and scored by the per-stream scorer rkv_evict_layer uses; the scores are
 * aggregated by the dense multi entry's code; each stream then keeps its P protected tokens
 * in place plus its group's `budget` positions, and all streams are compacted by one
 * rkv_blockmgr_compact call and the move plan applied (K, V, per-slot scores; the scores of
 * slots that hold no token any more are zeroed). RKV_EVICT_GRAN_STREAM keeps exactly what
 * rkv_evict_layer keeps, layer by layer.
 * The streams must be in lockstep (all of seq's streams hold the same number of tokens, as in
 * an engine that appends to every stream each step): RKV_ERR_STATE otherwise. A sequence
 * compresses when its streams hold more than P + budget tokens, else nothing happens (as does
 * nothing for FULL). The sequence compresses whole or not at all: every check, including the
 * fresh blocks that shared leading blocks (forks) need in every layer, comes before the first
 * change. res sums over all streams. Errors (text in err): RKV_ERR_INVALID_ARG (params,
 * granularity, shapes, query window shape), RKV_ERR_UNSUPPORTED (not a CPU pool),
 * RKV_ERR_NOT_FOUND (seq unknown to the manager or the window), RKV_ERR_STATE (streams not in
 * lockstep, a window with fewer than `window` rows in some layer), RKV_ERR_CAPACITY (ws_bytes
 * < rkv_evict_seq_workspace_size for the streams' length), RKV_ERR_NO_BLOCKS (fresh blocks),
 * all changing nothing; RKV_ERR_INTERNAL if the pool rejects the move plan after the tables
 * changed. Not thread-safe on one manager. Cost: num_layers x rkv_evict_layer's scoring plus
 * O(num_layers x num_kv_heads x len) for the sums, copies and compaction. */
RKV_API rkv_status rkv_evict_seq(const rkv_evict_params *p, rkv_evict_granularity g,
                                 rkv_blockmgr *m, rkv_kv_pool *pool, const rkv_qwindow *qw,
                                 uint32_t num_q_heads, int64_t seq, void *workspace,
                                 size_t ws_bytes, rkv_evict_result *res, char *err, size_t err_len);

/* ---- H2O score accumulation (standalone CPU path) -------------------------------------- */

/* Adds one decode step's attention probabilities to the per-slot score buffer
 * (rkv_kv_pool_scores(pool)) of every stream of (seq, layer): for kv head h and each query
 * head q of its group, softmax over the stream's n keys of q . k / sqrt(d), added to the
 * slot of each key (summed over the group). q [num_q_heads][head_dim] f32, borrowed.
 * Reads keys block by block; no workspace, no allocation (two passes, online softmax).
 * CPU pools only (RKV_ERR_UNSUPPORTED otherwise); RKV_ERR_INVALID_ARG (shapes, layer),
 * RKV_ERR_NOT_FOUND (seq). O(n * d * num_q_heads).
 * Serving paths do not need it: rkv_attn_decode / rkv_attn_prefill with accumulate_scores add
 * the same mass while they attend (CPU and CUDA pools). This is the standalone path for
 * callers that run their own attention over a CPU pool, and for the tests. */
RKV_API rkv_status rkv_evict_h2o_accumulate(const rkv_blockmgr *m, rkv_kv_pool *pool, int64_t seq,
                                            uint32_t layer, const float *q, uint32_t num_q_heads);

#ifdef __cplusplus
}
#endif
#endif /* RKV_EVICT_H */
