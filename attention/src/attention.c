/* Public attention entry points: argument validation, workspace sizing, the KV write, the
 * query-window push, and the dispatch between the CPU reference (attn_cpu.c) and the CUDA
 * launchers (attn_cuda.h) by the pool's backend kind.
 *
 * Everything is validated before anything is written, so a failing call leaves out, the pool
 * and its scores untouched (one exception: a query-window push that fails for sequence b
 * leaves sequences before b pushed); errors go to the pool backend's last-error text. On CPU
 * pools the whole table is checked (indptr, block ids, last_len, prefill lengths); on CUDA
 * pools the arrays are device memory, so only the scalar shape is checked here. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cpu.h"
#include "attn_cuda.h"
#include "backend_impl.h"
#include "qwindow_internal.h"

/* Streams with more tokens than this are refused (keeps int64 products far from overflow). */
#define MAX_STREAM_LEN ((int64_t)1 << 31)
/* Above this many slots, write_kv checks distinctness only in debug builds (needs a copy). */
#define WRITE_KV_QUADRATIC_CHECK 512u

static char *errbuf(const rkv_kv_pool *pool) {
  return pool->backend->err;
}

static bool is_cuda(const rkv_kv_pool *pool) {
  return rkv_backend_get_kind(rkv_kv_pool_backend(pool)) == RKV_BACKEND_CUDA;
}

rkv_status rkv_attn_cuda_supported(uint32_t head_dim, uint32_t block_size, rkv_dtype dt, char *err,
                                   size_t err_len) {
  const char *what = NULL;
  unsigned long val = 0;
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) {
    what = "head_dim (supported: 64, 128, 256)";
    val = head_dim;
  } else if (block_size != 16 && block_size != 32) {
    what = "block_size (supported: 16, 32)";
    val = block_size;
  } else if (dt != RKV_DTYPE_F32 && dt != RKV_DTYPE_F16 && dt != RKV_DTYPE_BF16) {
    what = "dtype (supported: f32, f16, bf16)";
    val = (unsigned long)dt;
  }
  if (!what) return RKV_OK;
  if (err && err_len) snprintf(err, err_len, "CUDA attention: unsupported %s: %lu", what, val);
  return RKV_ERR_UNSUPPORTED;
}

static rkv_status cuda_supported_pool(const rkv_kv_pool *pool) {
  const rkv_kv_layout *l = &pool->layout;
  return rkv_attn_cuda_supported(l->head_dim, l->block_size, l->dtype, errbuf(pool), RKV_ERRBUF);
}

static rkv_status check_group(const rkv_kv_pool *pool, uint32_t num_q_heads,
                              uint32_t num_kv_heads) {
  if (num_q_heads == 0 || num_kv_heads == 0 || num_q_heads % num_kv_heads != 0)
    return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG,
                     "attention: num_q_heads %u must be a positive multiple of num_kv_heads %u",
                     num_q_heads, num_kv_heads);
  return RKV_OK;
}

rkv_status rkv_attn_check_heads(rkv_kv_pool *pool, uint32_t num_q_heads, uint32_t num_kv_heads) {
  if (!pool) return RKV_ERR_INVALID_ARG;
  RKV_TRY(check_group(pool, num_q_heads, num_kv_heads));
  if (!is_cuda(pool)) return RKV_OK;
  RKV_TRY(cuda_supported_pool(pool));
  return rkvi_attn_cuda_check_heads(pool, num_q_heads, num_kv_heads, errbuf(pool));
}

/* Copies the caller's params (any struct_size from the first release on) into *out with the
 * scale resolved. */
static rkv_status load_params(const rkv_kv_pool *pool, const rkv_attn_params *p,
                              rkv_attn_params *out) {
  if (!p) return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG, "attention: params is NULL");
  if (p->struct_size < offsetof(rkv_attn_params, q_indptr) ||
      p->struct_size > sizeof(rkv_attn_params))
    return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG,
                     "attention: params struct_size %u (expected %zu; use RKV_ATTN_PARAMS_INIT)",
                     p->struct_size, sizeof(rkv_attn_params));
  rkv_attn_params def = RKV_ATTN_PARAMS_INIT;
  *out = def;
  memcpy(out, p, p->struct_size);
  out->struct_size = sizeof(rkv_attn_params);
  if (!isfinite(out->scale))
    return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG, "attention: scale is not finite");
  if (out->scale == 0.0f) out->scale = 1.0f / sqrtf((float)out->head_dim);
  return RKV_OK;
}

/* Scalar checks shared by CPU and CUDA. Workspace sizing (data = false) needs no q, out or
 * query window. */
static rkv_status check_shape(const rkv_kv_pool *pool, const rkv_attn_params *p, bool prefill,
                              bool data) {
  char *e = errbuf(pool);
  const rkv_kv_layout *l = &pool->layout;
  RKV_TRY(check_group(pool, p->num_q_heads, p->num_kv_heads));
  if (p->head_dim != l->head_dim)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: head_dim %u != pool layout head_dim %u",
                     p->head_dim, l->head_dim);
  if (p->rows) {
    if (p->num_seqs &&
        (!p->rows->rows || !(p->rows->lens || p->rows->seq_lens) || !p->rows->seq_row))
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: block rows arrays must be non-NULL");
    if (p->rows->stride == 0)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: block rows stride is 0");
  } else {
    if ((int64_t)p->num_seqs * p->num_kv_heads != (int64_t)p->table.num_streams)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                       "attention: table has %d streams, expected num_seqs %u x num_kv_heads %u",
                       p->table.num_streams, p->num_seqs, p->num_kv_heads);
    if (p->table.block_size != (int32_t)l->block_size)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: table block_size %d != pool's %u",
                       p->table.block_size, l->block_size);
    if (p->num_seqs && (!p->table.indptr || !p->table.indices || !p->table.last_len))
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: table arrays must be non-NULL");
  }
  if (p->num_seqs == 0) return RKV_OK;
  if (prefill && !p->q_indptr)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention prefill: q_indptr must be non-NULL");
  if (!data) return RKV_OK;
  if (!p->q || !p->out)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: q and out must be non-NULL");
  if (p->qwindow) {
    const rkv_qwindow_config *qc = rkvi_qwindow_config(p->qwindow);
    if (!rkvi_qwindow_host(p->qwindow))
      return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                       "attention: the qwindow lives in device memory (push it with "
                       "rkv_qwindow_plan / rkv_qwindow_push_planned)");
    if (!p->seq_ids)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: qwindow given without seq_ids");
    if (qc->num_q_heads != p->num_q_heads || qc->head_dim != p->head_dim ||
        p->layer >= qc->num_layers)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                       "attention: qwindow shape (%u q heads, head_dim %u, %u layers) does not "
                       "fit the batch (%u q heads, head_dim %u, layer %u)",
                       qc->num_q_heads, qc->head_dim, qc->num_layers, p->num_q_heads, p->head_dim,
                       p->layer);
  }
  return RKV_OK;
}

/* Full host-side check of the table (CPU pools, or CUDA pools whose arrays the caller made
 * host-readable for workspace sizing), filling the shape facts. */
/* Validates one stream's row of either table form (the parts the kernels trust). */
static rkv_status check_stream(const rkv_kv_pool *pool, const rkv_attn_params *p, uint32_t s,
                               bool check_ids, int64_t *len) {
  char *e = errbuf(pool);
  const int32_t bs = (int32_t)pool->layout.block_size;
  if (p->rows) {
    const rkv_block_rows *w = p->rows;
    const int32_t sr = w->seq_row[s / p->num_kv_heads];
    if (sr < 0)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: seq_row[%u] = %d is negative",
                       s / p->num_kv_heads, sr);
    const int64_t n = w->seq_lens ? w->seq_lens[s / p->num_kv_heads]
                                  : w->lens[(int64_t)sr + w->stream_offset + s % p->num_kv_heads];
    if (n < 0 || n > (int64_t)w->stride * bs)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                       "attention: stream %u has length %lld, rows hold %u blocks of %d", s,
                       (long long)n, w->stride, bs);
  } else {
    const rkv_block_table *t = &p->table;
    const int32_t a = t->indptr[s], z = t->indptr[s + 1], ll = t->last_len[s];
    if (z < a)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: table indptr decreases at stream %u", s);
    if (z == a ? ll != 0 : (ll < 1 || ll > bs))
      return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                       "attention: stream %u has %d blocks and last_len %d (want %s)", s, z - a, ll,
                       z == a ? "0" : "1..block_size");
  }
  const rkvi_stream_ref r = rkvi_attn_stream(p, s, bs);
  if (check_ids)
    for (int32_t k = 0; k < r.nblk; k++)
      if (r.ids[k] < 0 || (uint32_t)r.ids[k] >= pool->num_blocks)
        return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                         "attention: stream %u block %d is id %d, outside the pool's %u blocks", s,
                         k, r.ids[k], pool->num_blocks);
  if (r.len > MAX_STREAM_LEN)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: stream %u has %lld tokens", s,
                     (long long)r.len);
  *len = r.len;
  return RKV_OK;
}

/* Full host-side check of the table (CPU pools, or CUDA pools whose arrays the caller made
 * host-readable for workspace sizing), filling the shape facts. */
static rkv_status check_table(const rkv_kv_pool *pool, const rkv_attn_params *p, bool prefill,
                              bool check_ids, rkvi_attn_shape *sh) {
  char *e = errbuf(pool);
  memset(sh, 0, sizeof *sh);
  sh->group = p->num_q_heads / p->num_kv_heads;
  sh->tile_rows = 1;
  sh->block_size = pool->layout.block_size;
  sh->num_items = rkvi_attn_num_streams(p);
  sh->scores = p->accumulate_scores;
  if (p->num_seqs == 0) return RKV_OK;
  if (prefill) {
    if (p->q_indptr[0] != 0)
      return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention prefill: q_indptr[0] = %d, must be 0",
                       p->q_indptr[0]);
    int32_t max_new = 0;
    for (uint32_t b = 0; b < p->num_seqs; b++) {
      if (p->q_indptr[b + 1] < p->q_indptr[b])
        return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                         "attention prefill: q_indptr decreases at sequence %u (%d -> %d)", b,
                         p->q_indptr[b], p->q_indptr[b + 1]);
      const int32_t n = p->q_indptr[b + 1] - p->q_indptr[b]; /* both >= 0: no overflow */
      if (n > max_new) max_new = n;
    }
    sh->tile_rows = max_new < (int32_t)RKVI_ATTN_TILE_ROWS ? (max_new > 0 ? (uint32_t)max_new : 1)
                                                           : RKVI_ATTN_TILE_ROWS;
  }
  if (!p->rows && p->table.indptr[0] < 0)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention: table indptr[0] = %d is negative",
                     p->table.indptr[0]);
  double work = 0.0;
  for (uint32_t s = 0; s < sh->num_items; s++) {
    int64_t len = 0;
    RKV_TRY(check_stream(pool, p, s, check_ids, &len));
    int64_t n_new = 1;
    if (prefill) {
      const uint32_t b = (uint32_t)s / p->num_kv_heads;
      n_new = p->q_indptr[b + 1] - p->q_indptr[b];
      if (len < n_new)
        return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                         "attention prefill: stream %u holds %lld tokens but sequence %u has %lld "
                         "new rows (write their K/V first)",
                         s, (long long)len, b, (long long)n_new);
    }
    if (len > sh->max_len) sh->max_len = len;
    sh->total_len += len;
    work += (double)len * (double)n_new * sh->group * p->head_dim * 2.0;
  }
  sh->work = work;
  return RKV_OK;
}

static rkv_status cpu_workspace_bytes(const rkv_kv_pool *pool, const rkv_attn_params *p,
                                      const rkvi_attn_shape *sh, size_t *bytes) {
  rkvi_attn_plan plan;
  if (rkvi_attn_cpu_plan(sh, p->head_dim, rkvi_attn_cpu_workers(pool, sh), &plan) != RKV_OK)
    return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG, "attention: workspace size overflows");
  *bytes = plan.total;
  return RKV_OK;
}

rkv_status rkv_attn_workspace_size(const rkv_kv_pool *pool, const rkv_attn_params *params,
                                   size_t *bytes) {
  if (!pool || !bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  rkv_attn_params p;
  rkvi_attn_shape sh;
  RKV_TRY(load_params(pool, params, &p));
  const bool prefill = p.q_indptr != NULL;
  RKV_TRY(check_shape(pool, &p, prefill, false));
  if (is_cuda(pool)) {
    RKV_TRY(cuda_supported_pool(pool));
    /* Lengths from a host-readable table (documented); block ids are not needed here. */
    RKV_TRY(check_table(pool, &p, false, false, &sh));
    return rkvi_attn_cuda_workspace_bound(pool, p.num_seqs, p.num_q_heads, p.head_dim, sh.max_len,
                                          bytes);
  }
  RKV_TRY(check_table(pool, &p, prefill, true, &sh));
  return cpu_workspace_bytes(pool, &p, &sh, bytes);
}

rkv_status rkv_attn_workspace_bound(const rkv_kv_pool *pool, uint32_t max_seqs,
                                    uint32_t num_q_heads, uint32_t head_dim, int64_t max_len,
                                    size_t *bytes) {
  if (!pool || !bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  char *e = errbuf(pool);
  if (num_q_heads == 0 || max_len < 0 || max_len > MAX_STREAM_LEN)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                     "attention bound: num_q_heads %u must be > 0 and max_len %lld in [0, 2^31]",
                     num_q_heads, (long long)max_len);
  if (head_dim != pool->layout.head_dim)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention bound: head_dim %u != pool's %u", head_dim,
                     pool->layout.head_dim);
  if (is_cuda(pool)) {
    RKV_TRY(cuda_supported_pool(pool));
    return rkvi_attn_cuda_workspace_bound(pool, max_seqs, num_q_heads, head_dim, max_len, bytes);
  }
  /* Worst case over every GQA split and prefill tile: G <= num_q_heads, streams <=
   * max_seqs x num_q_heads, each up to max_len tokens, all threads busy. */
  rkvi_attn_shape sh;
  memset(&sh, 0, sizeof sh);
  sh.group = num_q_heads;
  sh.tile_rows = RKVI_ATTN_TILE_ROWS;
  sh.block_size = pool->layout.block_size;
  sh.num_items = max_seqs * num_q_heads;
  if (max_seqs && sh.num_items / max_seqs != num_q_heads)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention bound: max_seqs x heads overflows");
  sh.max_len = max_len;
  sh.total_len = (int64_t)sh.num_items * max_len;
  sh.scores = true;
  rkvi_attn_plan plan;
  uint32_t threads = rkvi_attn_cpu_threads(pool);
  if (sh.num_items && threads > sh.num_items) threads = sh.num_items;
  if (rkvi_attn_cpu_plan(&sh, head_dim, threads, &plan) != RKV_OK)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attention bound: workspace size overflows");
  *bytes = plan.total;
  return RKV_OK;
}

/* Pushes the batch's query rows into the window, sequence by sequence. Runs before any
 * output is written: a failure (typically an unregistered sequence) leaves out and scores
 * untouched, but sequences before the failing one have been pushed. */
static rkv_status push_qwindow(const rkv_kv_pool *pool, const rkv_attn_params *p, bool prefill) {
  for (uint32_t b = 0; b < p->num_seqs; b++) {
    const int32_t r0 = prefill ? p->q_indptr[b] : (int32_t)b;
    const int32_t n = prefill ? p->q_indptr[b + 1] - r0 : 1;
    if (n == 0) continue;
    rkv_status s = rkv_qwindow_push(p->qwindow, p->seq_ids[b], p->layer,
                                    p->q + (size_t)r0 * p->num_q_heads * p->head_dim, (uint32_t)n);
    if (s != RKV_OK)
      return rkvi_fail(errbuf(pool), s, "attention: qwindow push of sequence %lld layer %u: %s",
                       (long long)p->seq_ids[b], p->layer, rkv_qwindow_last_error(p->qwindow));
  }
  return RKV_OK;
}

static rkv_status run(rkv_kv_pool *pool, const rkv_attn_params *params, void *ws, size_t ws_bytes,
                      bool prefill) {
  if (!pool) return RKV_ERR_INVALID_ARG;
  rkv_attn_params p;
  RKV_TRY(load_params(pool, params, &p));
  RKV_TRY(check_shape(pool, &p, prefill, true));
  if (is_cuda(pool)) {
    RKV_TRY(cuda_supported_pool(pool));
    if (p.qwindow)
      return rkvi_fail(errbuf(pool), RKV_ERR_UNSUPPORTED,
                       "attention: the host query window needs a CPU pool (CUDA keeps a device "
                       "window)");
    if (p.num_seqs == 0) return RKV_OK;
    return prefill ? rkvi_attn_cuda_prefill(pool, &p, ws, ws_bytes, errbuf(pool))
                   : rkvi_attn_cuda_decode(pool, &p, ws, ws_bytes, errbuf(pool));
  }
  rkvi_attn_shape sh;
  RKV_TRY(check_table(pool, &p, prefill, true, &sh));
  if (p.num_seqs == 0) return RKV_OK;
  rkvi_attn_plan one;
  if (rkvi_attn_cpu_plan(&sh, p.head_dim, 1, &one) != RKV_OK)
    return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG, "attention: workspace size overflows");
  if (!ws || ws_bytes < one.total)
    return rkvi_fail(errbuf(pool), RKV_ERR_CAPACITY,
                     "attention: workspace of %zu bytes%s, this batch needs at least %zu "
                     "(rkv_attn_workspace_size)",
                     ws ? ws_bytes : (size_t)0, ws ? "" : " (NULL)", one.total);
  if (p.qwindow) RKV_TRY(push_qwindow(pool, &p, prefill));
  rkvi_attn_cpu_run(pool, &p, &sh, prefill, ws, ws_bytes);
  return RKV_OK;
}

rkv_status rkv_attn_decode(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                           size_t ws_bytes) {
  return run(pool, p, workspace, ws_bytes, false);
}

rkv_status rkv_attn_prefill(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                            size_t ws_bytes) {
  return run(pool, p, workspace, ws_bytes, true);
}

/* ---- KV write -------------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static rkv_status check_distinct(const rkv_kv_pool *pool, const int64_t *slots, uint32_t n) {
  if (n <= WRITE_KV_QUADRATIC_CHECK) {
    for (uint32_t i = 1; i < n; i++)
      for (uint32_t k = 0; k < i; k++)
        if (slots[i] == slots[k])
          return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG,
                           "attn write_kv: slot %lld appears at rows %u and %u",
                           (long long)slots[i], k, i);
    return RKV_OK;
  }
  if (RKV_DEBUG < 2) return RKV_OK; /* too costly without a copy: debug builds only */
  const rkv_allocator *a = rkvi_backend_allocator(pool->backend);
  int64_t *c = rkvi_alloc(a, (size_t)n * sizeof *c, 0);
  if (!c) return rkvi_fail(errbuf(pool), RKV_ERR_NO_MEMORY, "attn write_kv: duplicate check");
  memcpy(c, slots, (size_t)n * sizeof *c);
  qsort(c, n, sizeof *c, cmp_i64);
  rkv_status s = RKV_OK;
  for (uint32_t i = 1; i < n && s == RKV_OK; i++)
    if (c[i] == c[i - 1])
      s = rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG, "attn write_kv: slot %lld appears twice",
                    (long long)c[i]);
  rkvi_free(a, c, (size_t)n * sizeof *c);
  return s;
}

/* Stores one token's K and V rows at a global slot (converted to the pool's dtype); the slot's
 * H2O mass restarts at zero, since the slot may be recycled. The caller validated the slot. */
static void store_row(const rkv_kv_pool *pool, int64_t slot, const float *k, const float *v) {
  const rkv_kv_layout *l = &pool->layout;
  const uint32_t d = l->head_dim, bs = l->block_size;
  const size_t esz = rkv_dtype_size(l->dtype);
  uint8_t *blk = (uint8_t *)pool->base + (size_t)(slot / bs) * pool->block_bytes;
  const uint32_t o = (uint32_t)(slot % bs);
  void *kd = blk + (size_t)o * d * esz, *vd = blk + ((size_t)bs + o) * d * esz;
  switch (l->dtype) {
    case RKV_DTYPE_F32:
      memcpy(kd, k, (size_t)d * sizeof(float));
      memcpy(vd, v, (size_t)d * sizeof(float));
      break;
    case RKV_DTYPE_F16:
      for (uint32_t j = 0; j < d; j++) {
        ((uint16_t *)kd)[j] = rkv_f32_to_f16(k[j]);
        ((uint16_t *)vd)[j] = rkv_f32_to_f16(v[j]);
      }
      break;
    default:
      for (uint32_t j = 0; j < d; j++) {
        ((uint16_t *)kd)[j] = rkv_f32_to_bf16(k[j]);
        ((uint16_t *)vd)[j] = rkv_f32_to_bf16(v[j]);
      }
      break;
  }
  pool->scores[slot] = 0.0f;
}

rkv_status rkv_attn_write_kv(rkv_kv_pool *pool, const float *k, const float *v,
                             const int64_t *slots, uint32_t n_rows) {
  if (!pool) return RKV_ERR_INVALID_ARG;
  if (n_rows == 0) return RKV_OK;
  if (!k || !v || !slots)
    return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG,
                     "attn write_kv: k, v, slots must be non-NULL");
  if (is_cuda(pool)) return rkvi_attn_cuda_write_kv(pool, k, v, slots, n_rows, errbuf(pool));
  const rkv_kv_layout *l = &pool->layout;
  const int64_t nslots = (int64_t)pool->num_blocks * l->block_size;
  for (uint32_t i = 0; i < n_rows; i++)
    if (slots[i] < 0 || slots[i] >= nslots)
      return rkvi_fail(errbuf(pool), RKV_ERR_INVALID_ARG,
                       "attn write_kv: row %u slot %lld outside [0, %lld)", i, (long long)slots[i],
                       (long long)nslots);
  RKV_TRY(check_distinct(pool, slots, n_rows));
  const size_t d = l->head_dim;
  for (uint32_t i = 0; i < n_rows; i++) store_row(pool, slots[i], k + i * d, v + i * d);
  return RKV_OK;
}

/* ---- KV write through block rows -------------------------------------------------------- */

rkv_status rkv_attn_write_kv_rows(rkv_kv_pool *pool, const float *k, const float *v,
                                  uint32_t num_seqs, uint32_t num_kv_heads, const int32_t *q_indptr,
                                  const rkv_block_rows *rows) {
  if (!pool) return RKV_ERR_INVALID_ARG;
  if (num_seqs == 0) return RKV_OK;
  char *e = errbuf(pool);
  if (!k || !v || !rows || !rows->rows || !rows->seq_row || !(rows->lens || rows->seq_lens) ||
      !num_kv_heads)
    return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                     "attn write_kv_rows: k, v, rows (rows, seq_row, lens or seq_lens) and "
                     "num_kv_heads are required");
  if (is_cuda(pool))
    return rkvi_attn_cuda_write_kv_rows(pool, k, v, num_seqs, num_kv_heads, q_indptr, rows, e);
  /* Only the stream view of rkv_attn_params is used: rows, num_kv_heads. */
  rkv_attn_params ap = RKV_ATTN_PARAMS_INIT;
  ap.num_seqs = num_seqs;
  ap.num_kv_heads = num_kv_heads;
  ap.rows = rows;
  const int32_t bs = (int32_t)pool->layout.block_size;
  const size_t d = pool->layout.head_dim;
  for (int pass = 0; pass < 2; pass++) /* validate every stream, then write */
    for (uint32_t b = 0; b < num_seqs; b++) {
      const int32_t r0 = q_indptr ? q_indptr[b] : (int32_t)b;
      const int32_t n = q_indptr ? q_indptr[b + 1] - r0 : 1;
      if (r0 < 0 || n < 0)
        return rkvi_fail(e, RKV_ERR_INVALID_ARG, "attn write_kv_rows: q_indptr at %u", b);
      for (uint32_t h = 0; h < num_kv_heads; h++) {
        const rkvi_stream_ref sr = rkvi_attn_stream(&ap, b * num_kv_heads + h, bs);
        const int64_t first = sr.len - n; /* position of the sequence's first new row */
        if (!pass) {
          if (first < 0)
            return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                             "attn write_kv_rows: sequence %u head %u holds %lld tokens, fewer "
                             "than its %d new rows",
                             b, h, (long long)sr.len, n);
          for (int64_t j = n ? first / bs : 0; n && j < sr.nblk; j++)
            if (sr.ids[j] < 0 || (uint32_t)sr.ids[j] >= pool->num_blocks)
              return rkvi_fail(e, RKV_ERR_INVALID_ARG,
                               "attn write_kv_rows: sequence %u head %u block %lld is id %d, "
                               "outside the pool's %u blocks",
                               b, h, (long long)j, sr.ids[j], pool->num_blocks);
          continue;
        }
        for (int32_t t = 0; t < n; t++) {
          const int64_t pos = first + t;
          const size_t row = ((size_t)(r0 + t) * num_kv_heads + h) * d;
          store_row(pool, (int64_t)sr.ids[pos / bs] * bs + pos % bs, k + row, v + row);
        }
      }
    }
  return RKV_OK;
}
