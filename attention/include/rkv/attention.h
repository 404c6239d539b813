/* librkv attention: paged decode and prefill/extend attention reading per-stream block
 * tables (one row per (sequence, kv head) of a layer, CSR form), GQA (query head q reads kv
 * head q / G), KV in f32/f16/bf16 with f32 accumulation; plus the KV write (scatter new K/V
 * into the slots the block manager handed out), the query-window push R-KV needs, and the
 * optional per-slot accumulation of attention mass for H2O.
 *
 * One interface, two implementations chosen by the pool's backend at run time: the CPU
 * reference (host pointers) and CUDA kernels (device pointers, enqueued on the backend's
 * stream, capturable in a CUDA graph; no host synchronisation). Plan/run split: query the
 * workspace size for a batch shape once, then run with a caller workspace. */
#ifndef RKV_ATTENTION_H
#define RKV_ATTENTION_H

#include <rkv/qwindow.h>
#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Padded per-stream block tables, the second table form (vLLM's block_tables, one row per
 * stream): row r holds its stream's block ids in cache order at rows[r * stride ...] and its
 * length in lens[r]. Stream (b, h) of a batch is row seq_row[b] + stream_offset + h. A caller
 * that keeps one row group per sequence slot ([slots][streams_per_seq][stride], stream =
 * layer * kv_heads + head) passes seq_row[b] = slot * streams_per_seq and stream_offset =
 * layer * kv_heads, and only ever rewrites the entries that changed (rkv_blockmgr_sync_rows):
 * no per-step table export. All pointers borrowed (device pointers on CUDA). */
typedef struct rkv_block_rows {
  const int32_t *rows;    /* [..][stride] */
  const int32_t *lens;    /* [..] tokens per row (unused when seq_lens is given) */
  const int32_t *seq_row; /* [num_seqs] */
  uint32_t stride;        /* entries per row (>= 1) */
  uint32_t stream_offset;
  /* [num_seqs] or NULL: every stream of batch sequence b holds seq_lens[b] tokens. Streams of a
   * sequence grow in lockstep, so a decode step's length update is one int per sequence. */
  const int32_t *seq_lens;
} rkv_block_rows;

#define RKV_ATTN_PARAMS_VERSION 2
/* One layer, a batch of sequences. Q and O are f32, token-major:
 * [rows][num_q_heads][head_dim] where rows = num_seqs (decode) or q_indptr[num_seqs]
 * (prefill). The table has num_seqs * num_kv_heads streams, batch-major (stream = b *
 * num_kv_heads + h) and already contains the new tokens (write K/V first). */
typedef struct rkv_attn_params {
  uint32_t struct_size; /* sizeof(rkv_attn_params) */
  uint32_t num_seqs;
  uint32_t num_q_heads;
  uint32_t num_kv_heads; /* num_q_heads % num_kv_heads == 0 */
  uint32_t head_dim;     /* must equal the pool layout's head_dim */
  float scale;           /* softmax scale; 0 = 1/sqrt(head_dim) */
  const float *q;        /* [rows][num_q_heads][head_dim] */
  float *out;            /* [rows][num_q_heads][head_dim] */
  rkv_block_table table; /* per-stream CSR over the pool's blocks */
  /* Prefill/extend only: new query rows of sequence b are q_indptr[b] .. q_indptr[b+1]; they
   * are the LAST (q_indptr[b+1]-q_indptr[b]) tokens of each of b's streams, causally masked
   * (new token t sees stream positions <= len - n_new + t). NULL for decode. */
  const int32_t *q_indptr; /* [num_seqs + 1] */
  /* H2O: when true, add each slot's softmax probability, summed over the group's query
   * heads, to rkv_kv_pool_scores(pool)[slot]. */
  bool accumulate_scores;
  /* Query window push (R-KV / SnapKV): when qwindow != NULL, the batch's query rows are
   * pushed into qwindow for (seq_ids[b], layer). A window in host memory only (one in
   * device memory is pushed with rkv_qwindow_plan / rkv_qwindow_push_planned). */
  rkv_qwindow *qwindow;
  const int64_t *seq_ids; /* [num_seqs] */
  uint32_t layer;
  /* Version 2: when non-NULL the streams are read from these padded rows and `table` is
   * ignored (its num_streams and block_size need not be set). On CUDA the lengths must be
   * host-readable only for rkv_attn_workspace_size (use rkv_attn_workspace_bound instead). */
  const rkv_block_rows *rows;
} rkv_attn_params;
#define RKV_ATTN_PARAMS_INIT                                                                      \
  {                                                                                               \
    sizeof(rkv_attn_params), 0, 0, 0, 0, 0.0f, NULL, NULL, {0, 0, NULL, NULL, NULL}, NULL, false, \
        NULL, NULL, 0, NULL                                                                       \
  }

/* Workspace bytes rkv_attn_decode / rkv_attn_prefill need for this batch shape (split-KV
 * partials on CUDA; small on CPU). Depends on num_seqs, heads, head_dim and the longest
 * stream, read from the table (host copy of indptr required on CUDA: pass table arrays that
 * are host-readable here, or use rkv_attn_workspace_bound). */
RKV_API rkv_status rkv_attn_workspace_size(const rkv_kv_pool *pool, const rkv_attn_params *p,
                                           size_t *bytes);
/* Upper bound independent of lengths, for CUDA-graph capture: max_seqs x heads x max_len. */
RKV_API rkv_status rkv_attn_workspace_bound(const rkv_kv_pool *pool, uint32_t max_seqs,
                                            uint32_t num_q_heads, uint32_t head_dim,
                                            int64_t max_len, size_t *bytes);

/* Whether paged attention on this pool runs with these head counts, checked once before
 * serving rather than at a step's first layer: num_q_heads a positive multiple of num_kv_heads
 * (RKV_ERR_INVALID_ARG), and on a CUDA pool the kernels' closed set (rkv_attn_cuda_supported)
 * and what one GQA group needs of the device, in threads and shared memory, for decode and for
 * prefill (RKV_ERR_UNSUPPORTED: e.g. f32 at head_dim 256 with block 32 on a device with less
 * shared memory per block than an H100). The CPU reference runs every such shape. Reason in
 * rkv_backend_last_error of the pool's backend; NULL pool: RKV_ERR_INVALID_ARG. */
RKV_API rkv_status rkv_attn_check_heads(rkv_kv_pool *pool, uint32_t num_q_heads,
                                        uint32_t num_kv_heads);

/* Decode: one query row per sequence attends over its streams' whole cache. */
RKV_API rkv_status rkv_attn_decode(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                                   size_t ws_bytes);
/* Prefill / extend: several new rows per sequence with a causal mask against the prefix. */
RKV_API rkv_status rkv_attn_prefill(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                                    size_t ws_bytes);

/* Writes K/V rows into pool slots: row i of k and v ([n_rows][head_dim] f32) goes to global
 * slot slots[i] (converted to the pool dtype). Slots must be distinct and in range. */
RKV_API rkv_status rkv_attn_write_kv(rkv_kv_pool *pool, const float *k, const float *v,
                                     const int64_t *slots, uint32_t n_rows);

/* Writes the K/V rows of a batch into the positions its streams just grew by, finding each
 * slot through padded block rows instead of a slot mapping: row r of sequence b (rows
 * q_indptr[b] .. q_indptr[b+1], or row b when q_indptr is NULL) and kv head h go to position
 * len - n_b + t of stream (b, h), where len is the stream's length in `rows` (the new tokens
 * already appended) and n_b the sequence's row count. k and v are [n_rows][num_kv_heads]
 * [head_dim] f32, the layout a QKV projection yields. Each stream's last blocks must be its
 * own (appends guarantee it). CPU pools: every length and block id is validated first;
 * RKV_ERR_INVALID_ARG (a stream shorter than its new rows, an id outside the pool). CUDA: the
 * arrays are device pointers, enqueued on the backend's stream. O(n_rows x kv_heads x d). */
RKV_API rkv_status rkv_attn_write_kv_rows(rkv_kv_pool *pool, const float *k, const float *v,
                                          uint32_t num_seqs, uint32_t num_kv_heads,
                                          const int32_t *q_indptr, const rkv_block_rows *rows);

/* Closed dispatch of the CUDA kernels: RKV_OK if (head_dim, block_size, dtype) is supported
 * by CUDA (head_dim 64/128/256, block 16/32, f16/bf16/f32), else RKV_ERR_UNSUPPORTED with the
 * value in err. The CPU reference accepts any shape. */
RKV_API rkv_status rkv_attn_cuda_supported(uint32_t head_dim, uint32_t block_size, rkv_dtype dt,
                                           char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif /* RKV_ATTENTION_H */
