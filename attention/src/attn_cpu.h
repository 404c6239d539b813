/* Private interface of the CPU reference attention (attn_cpu.c): the workspace plan and the
 * kernel run. attention.c validates the batch (every table entry, lengths, dims) and then
 * calls these, so the CPU code may assume a well-formed batch on a CPU pool. */
#ifndef RKV_ATTN_CPU_H
#define RKV_ATTN_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rkv/attention.h>

/* Query rows processed together per K/V row load in prefill (a tile of new tokens x the GQA
 * group); decode uses one row. */
#define RKVI_ATTN_TILE_ROWS 8u

/* One stream of a batch, whichever table form holds it. */
typedef struct rkvi_stream_ref {
  const int32_t *ids; /* block ids in cache order */
  int32_t nblk;
  int32_t last; /* tokens in the last block (0 for an empty stream) */
  int64_t len;
} rkvi_stream_ref;

/* Stream s (= b * num_kv_heads + h) of p, from the padded rows when given, else the CSR
 * table. Host arrays; no validation (attention.c validates first). */
static inline rkvi_stream_ref rkvi_attn_stream(const rkv_attn_params *p, uint32_t s, int32_t bs) {
  rkvi_stream_ref r;
  if (p->rows) {
    const rkv_block_rows *w = p->rows;
    const int64_t row =
        (int64_t)w->seq_row[s / p->num_kv_heads] + w->stream_offset + s % p->num_kv_heads;
    r.ids = w->rows + row * (int64_t)w->stride;
    r.len = w->seq_lens ? w->seq_lens[s / p->num_kv_heads] : w->lens[row];
    r.nblk = (int32_t)((r.len + bs - 1) / bs);
    r.last = r.nblk ? (int32_t)(r.len - (int64_t)(r.nblk - 1) * bs) : 0;
    return r;
  }
  const rkv_block_table *t = &p->table;
  r.ids = t->indices + t->indptr[s];
  r.nblk = t->indptr[s + 1] - t->indptr[s];
  r.last = t->last_len[s];
  r.len = r.nblk ? (int64_t)(r.nblk - 1) * bs + r.last : 0;
  return r;
}

/* Streams in the batch. */
static inline uint32_t rkvi_attn_num_streams(const rkv_attn_params *p) {
  return p->rows ? p->num_seqs * p->num_kv_heads : (uint32_t)p->table.num_streams;
}

/* Facts about a validated batch that size the workspace. */
typedef struct rkvi_attn_shape {
  uint32_t group;      /* G = num_q_heads / num_kv_heads */
  uint32_t tile_rows;  /* query rows per tile: 1 (decode) .. RKVI_ATTN_TILE_ROWS */
  uint32_t block_size; /* pool layout's (one block is converted to f32 at a time) */
  uint32_t num_items;  /* (sequence, kv head) pairs = streams */
  int64_t max_len;     /* longest stream, tokens */
  int64_t total_len;   /* sum of stream lengths (score accumulation region) */
  double work;         /* rough multiply-adds, to decide whether threads pay off */
  bool scores;         /* accumulate_scores requested */
} rkvi_attn_shape;

/* The workspace split for `workers` threads. */
typedef struct rkvi_attn_plan {
  uint32_t workers;
  size_t per_worker; /* bytes, multiple of 64 */
  size_t fixed;      /* bytes not per worker (score region + stream offsets), multiple of 64 */
  size_t total;      /* fixed + workers * per_worker + 64 (alignment slack) */
} rkvi_attn_plan;

/* Threads the pool's backend asks for (0 = online cores), clamped to [1, 256]. */
uint32_t rkvi_attn_cpu_threads(const rkv_kv_pool *pool);
/* Plans the workspace for `workers` threads (clamped to >= 1). RKV_ERR_INVALID_ARG when the
 * byte count overflows size_t. */
rkv_status rkvi_attn_cpu_plan(const rkvi_attn_shape *sh, uint32_t head_dim, uint32_t workers,
                              rkvi_attn_plan *out);
/* Threads worth using for this batch (1 for small work), at most rkvi_attn_cpu_threads. */
uint32_t rkvi_attn_cpu_workers(const rkv_kv_pool *pool, const rkvi_attn_shape *sh);

/* Runs decode (prefill = false: row b of q is sequence b's only new token) or prefill over a
 * validated batch. p->scale must be resolved (non-zero). Uses as many workers as the
 * workspace allows (at least one must fit: the caller checked). Writes p->out and, when
 * p->accumulate_scores, adds to the pool's scores. Never fails. */
void rkvi_attn_cpu_run(rkv_kv_pool *pool, const rkv_attn_params *p, const rkvi_attn_shape *sh,
                       bool prefill, void *ws, size_t ws_bytes);

#endif /* RKV_ATTN_CPU_H */
