/* Host emulations of the GPU-only library entries for test_sim_cuda_emu and test_model_eval_emu
 * (emu_shim.h): a CUDA backend request becomes a CPU backend that reports itself as CUDA; the
 * device query-window push writes the documented ring layout ([slot][layer][q_head][window][d],
 * token t at row t % window) in host memory; the device eviction follows rkv/evict_cuda.h on a
 * CPU pool: per stream it gathers the old row's keys, reads the group's window rows from qwin +
 * qwin_offset (oldest first, as the host window hands them to rkv_evict_layer), selects with
 * rkv_evict_select_dense (the CPU path's code), gathers every stream's kept K/V/score rows before
 * scattering any (new rows may reuse old blocks of any stream), zeroes new-row slots past the
 * budget and the clear_blocks' scores. */
#define EMU_SHIM_IMPL
#include "emu_shim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* test-only state: one simulator run at a time */
static struct {
  rkv_kv_pool *pools[8];
  unsigned n_pools;
  int64_t *last; /* [max_seqs] newest pushed position per ring slot */
  uint32_t last_n;
  rkv_cuda_qwindow w;
  unsigned long pushes, compresses;
} E;

/* the fake stream's queued copies (emu/cuda_runtime.h) */
static struct {
  struct {
    void *dst;
    const void *src;
    void *snap; /* the source bytes when the copy was enqueued */
    size_t n;
  } * q;
  size_t n, cap;
  unsigned long hazards; /* sources changed while their copy was in flight */
} Q;

unsigned long emu_fake_hazards(void) {
  return Q.hazards;
}

void emu_fake_enqueue(void *dst, const void *src, size_t n) {
  if (Q.n == Q.cap) {
    size_t nc = Q.cap ? 2 * Q.cap : 64;
    void *nq = realloc(Q.q, nc * sizeof *Q.q);
    if (!nq) { /* cannot queue: copy now (only loses the ordering check) */
      memmove(dst, src, n);
      return;
    }
    Q.q = nq;
    Q.cap = nc;
  }
  void *snap = malloc(n);
  if (!snap) {
    memmove(dst, src, n);
    return;
  }
  memcpy(snap, src, n);
  Q.q[Q.n].dst = dst;
  Q.q[Q.n].src = src;
  Q.q[Q.n].snap = snap;
  Q.q[Q.n].n = n;
  Q.n++;
}

/* A GPU runs the copy at some moment between enqueue and the next sync, so a source that
 * changes in between makes the result depend on timing: counted as a hazard. */
void emu_fake_flush(void) {
  for (size_t i = 0; i < Q.n; i++) {
    if (memcmp(Q.q[i].snap, Q.q[i].src, Q.q[i].n) != 0) Q.hazards++;
    memmove(Q.q[i].dst, Q.q[i].src, Q.q[i].n);
    free(Q.q[i].snap);
  }
  Q.n = 0;
}

rkv_status emu_attn_write_kv(rkv_kv_pool *pool, const float *k, const float *v,
                             const int64_t *slots, uint32_t n_rows) {
  emu_fake_flush();
  return rkv_attn_write_kv(pool, k, v, slots, n_rows);
}

rkv_status emu_attn_decode(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                           size_t ws_bytes) {
  emu_fake_flush();
  return rkv_attn_decode(pool, p, workspace, ws_bytes);
}

rkv_status emu_attn_prefill(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                            size_t ws_bytes) {
  emu_fake_flush();
  return rkv_attn_prefill(pool, p, workspace, ws_bytes);
}

rkv_status emu_kv_pool_read_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n_ids, void *host) {
  emu_fake_flush();
  return rkv_kv_pool_read_blocks(p, ids, n_ids, host);
}

rkv_status emu_kv_pool_write_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n_ids,
                                    const void *host) {
  emu_fake_flush();
  return rkv_kv_pool_write_blocks(p, ids, n_ids, host);
}

rkv_status emu_kv_pool_copy_blocks(rkv_kv_pool *p, const rkv_block_copy *ops, size_t n) {
  emu_fake_flush();
  return rkv_kv_pool_copy_blocks(p, ops, n);
}

void emu_reset(void) {
  emu_fake_flush();
  free(Q.q);
  memset(&Q, 0, sizeof Q);
  free(E.last);
  memset(&E, 0, sizeof E);
}

rkv_kv_pool *emu_pool(unsigned i) {
  return i < E.n_pools ? E.pools[i] : NULL;
}

unsigned long emu_compress_calls(void) {
  return E.compresses;
}

unsigned long emu_push_calls(void) {
  return E.pushes;
}

/* the live backends created for a CUDA request (emu_backend_get_kind) */
static struct {
  const rkv_backend *be[16];
  unsigned n;
} BE;

rkv_status emu_backend_create(const rkv_backend_config *cfg, rkv_backend **out) {
  rkv_backend_config c = *cfg;
  const bool cuda = c.kind == RKV_BACKEND_CUDA;
  if (cuda) {
    c.kind = RKV_BACKEND_CPU;
    c.num_threads = 1;
  }
  rkv_status st = rkv_backend_create(&c, out);
  if (st != RKV_OK || !cuda) return st;
  if (BE.n == sizeof BE.be / sizeof BE.be[0]) {
    rkv_backend_destroy(*out);
    *out = NULL;
    return RKV_ERR_CAPACITY;
  }
  BE.be[BE.n++] = *out;
  return RKV_OK;
}

rkv_backend_kind emu_backend_get_kind(const rkv_backend *b) {
  for (unsigned i = 0; b && i < BE.n; i++)
    if (BE.be[i] == b) return RKV_BACKEND_CUDA;
  return rkv_backend_get_kind(b);
}

void emu_backend_destroy(rkv_backend *b) {
  for (unsigned i = 0; b && i < BE.n; i++)
    if (BE.be[i] == b) { /* forgotten first: a later backend may get the same address */
      BE.be[i] = BE.be[--BE.n];
      break;
    }
  rkv_backend_destroy(b);
}

rkv_status emu_kv_pool_create(rkv_backend *b, const rkv_kv_layout *layout, uint32_t num_blocks,
                              rkv_kv_pool **out) {
  rkv_status st = rkv_kv_pool_create(b, layout, num_blocks, out);
  if (st == RKV_OK && E.n_pools < 8) E.pools[E.n_pools++] = *out;
  return st;
}

rkv_status emu_attn_cuda_qwindow_push(rkv_backend *backend, const rkv_cuda_qwindow *w,
                                      uint32_t layer, const float *q, const int32_t *q_indptr,
                                      const int32_t *seq_slots, const int64_t *pos,
                                      uint32_t num_seqs) {
  (void)backend;
  emu_fake_flush();
  if (!w || !w->data || !q || !seq_slots || !pos || layer >= w->num_layers || !w->window)
    return RKV_ERR_INVALID_ARG;
  if (E.last_n != w->max_seqs) {
    free(E.last);
    E.last = malloc(sizeof(int64_t) * w->max_seqs);
    if (!E.last) return RKV_ERR_NO_MEMORY;
    for (uint32_t i = 0; i < w->max_seqs; i++) E.last[i] = -1;
    E.last_n = w->max_seqs;
  }
  E.w = *w;
  const size_t d = w->head_dim, W = w->window, Hq = w->num_q_heads;
  for (uint32_t b = 0; b < num_seqs; b++) {
    const int32_t r0 = q_indptr ? q_indptr[b] : (int32_t)b;
    const int32_t n = q_indptr ? q_indptr[b + 1] - r0 : 1;
    const int32_t s = seq_slots[b];
    if (s < 0 || (uint32_t)s >= w->max_seqs || n <= 0) continue;
    for (int32_t r = n > (int32_t)W ? n - (int32_t)W : 0; r < n; r++) {
      const size_t row = (size_t)((pos[b] + r) % (int64_t)W);
      for (size_t j = 0; j < Hq; j++)
        memcpy(w->data + ((((size_t)s * w->num_layers + layer) * Hq + j) * W + row) * d,
               q + (((size_t)r0 + (size_t)r) * Hq + j) * d, d * sizeof(float));
    }
    E.last[s] = pos[b] + n - 1;
  }
  E.pushes++;
  return RKV_OK;
}

rkv_status emu_evict_cuda_workspace_size(const rkv_evict_params *p, const rkv_kv_pool *pool,
                                         uint32_t num_streams, uint32_t group, int32_t max_len,
                                         size_t *bytes) {
  if (!p || !pool || !bytes || !num_streams || !group || max_len <= 0) return RKV_ERR_INVALID_ARG;
  *bytes = 64; /* the emulation allocates its own scratch */
  return RKV_OK;
}

static bool scored(rkv_evict_policy p) {
  return p == RKV_EVICT_RKV || p == RKV_EVICT_SNAPKV;
}

rkv_status emu_evict_cuda_compress(const rkv_evict_params *p, rkv_kv_pool *pool,
                                   const rkv_evict_cuda_batch *batch, void *workspace,
                                   size_t ws_bytes) {
  emu_fake_flush();
  if (!p || !pool || !batch || !workspace || ws_bytes < 64 || p->policy == RKV_EVICT_FULL ||
      batch->struct_size != sizeof *batch || !batch->num_streams || !batch->streams ||
      !batch->old_blocks || !batch->new_blocks || batch->max_len <= 0)
    return RKV_ERR_INVALID_ARG;
  if (scored(p->policy) && (!batch->qwin || batch->qwin != E.w.data)) return RKV_ERR_INVALID_ARG;
  const rkv_kv_layout *lay = rkv_kv_pool_layout(pool);
  const size_t bs = lay->block_size, d = lay->head_dim, bb = rkv_kv_block_bytes(lay);
  const size_t row = d * rkv_dtype_size(lay->dtype);
  unsigned char *base = rkv_kv_pool_base(pool);
  float *scores = rkv_kv_pool_scores(pool);
  const uint32_t G = batch->group, W = (uint32_t)p->window, ns = batch->num_streams;
  const int32_t B = p->budget, nmax = batch->max_len;
  size_t dws = 0;
  if (rkv_evict_dense_workspace_size(p, (uint32_t)d, nmax, &dws) != RKV_OK)
    return RKV_ERR_INVALID_ARG;
  float *keys = malloc(sizeof(float) * (size_t)nmax * d);
  float *qs = malloc(sizeof(float) * (size_t)G * W * d + 1);
  float *acc = malloc(sizeof(float) * (size_t)nmax);
  int32_t *keep = malloc(sizeof(int32_t) * (size_t)B);
  unsigned char *kv = malloc((size_t)ns * (size_t)B * 2 * row);
  float *ksc = malloc(sizeof(float) * (size_t)ns * (size_t)B);
  void *ws = malloc(dws + 64);
  rkv_status ret = RKV_ERR_NO_MEMORY;
  if (!keys || !qs || !acc || !keep || !kv || !ksc || !ws) goto done;
  ret = RKV_ERR_INVALID_ARG;
  for (uint32_t s = 0; s < ns; s++) { /* gather (no writes to the pool) */
    const rkv_evict_cuda_stream *st = &batch->streams[s];
    const int32_t n = st->old_len;
    if (n <= B) continue;
    if (n > nmax || st->old_offset < 0 || st->new_offset < 0) goto done;
    for (int32_t j = 0; j < n; j++) {
      const int32_t blk = batch->old_blocks[st->old_offset + j / (int32_t)bs];
      const uint32_t off = (uint32_t)(j % (int32_t)bs);
      if (blk < 0 || (uint32_t)blk >= rkv_kv_pool_num_blocks(pool)) goto done;
      const unsigned char *k = base + (size_t)blk * bb + rkv_kv_k_offset(lay, off);
      for (size_t t = 0; t < d; t++) keys[(size_t)j * d + t] = rkv_dtype_load(lay->dtype, k, t);
      acc[j] = scores[(size_t)blk * bs + off];
    }
    if (scored(p->policy)) {
      const size_t slot_elems = (size_t)E.w.num_layers * E.w.num_q_heads * W * d;
      if (E.w.window != W || E.w.head_dim != d || st->qwin_offset < 0) goto done;
      const size_t slot = (size_t)st->qwin_offset / slot_elems;
      if (slot >= E.last_n || E.last[slot] < (int64_t)W - 1) goto done; /* ring not filled */
      const int64_t oldest = E.last[slot] - (int64_t)W + 1;
      for (uint32_t g = 0; g < G; g++)
        for (uint32_t i = 0; i < W; i++) {
          const size_t r = (size_t)((oldest + i) % (int64_t)W);
          memcpy(qs + ((size_t)g * W + i) * d,
                 batch->qwin + st->qwin_offset + ((size_t)g * W + r) * d, d * sizeof(float));
        }
    }
    char err[256] = "";
    if (rkv_evict_select_dense(p, keys, qs, acc, 1, G, n, (uint32_t)d, keep, NULL, ws, dws + 64,
                               err, sizeof err) != RKV_OK) {
      fprintf(stderr, "emu compress: select_dense: %s\n", err);
      goto done;
    }
    for (int32_t i = 0; i < B; i++) {
      const int32_t j = keep[i];
      const int32_t blk = batch->old_blocks[st->old_offset + j / (int32_t)bs];
      const uint32_t off = (uint32_t)(j % (int32_t)bs);
      unsigned char *dst = kv + ((size_t)s * (size_t)B + (size_t)i) * 2 * row;
      memcpy(dst, base + (size_t)blk * bb + rkv_kv_k_offset(lay, off), row);
      memcpy(dst + row, base + (size_t)blk * bb + rkv_kv_v_offset(lay, off), row);
      ksc[(size_t)s * (size_t)B + (size_t)i] = scores[(size_t)blk * bs + off];
      if (batch->kept) batch->kept[(size_t)s * (size_t)B + (size_t)i] = j;
    }
  }
  for (uint32_t s = 0; s < ns; s++) { /* scatter into the new rows */
    const rkv_evict_cuda_stream *st = &batch->streams[s];
    if (st->old_len <= B) continue;
    const int32_t nb = (B + (int32_t)bs - 1) / (int32_t)bs;
    for (int32_t i = 0; i < nb * (int32_t)bs; i++) {
      const int32_t blk = batch->new_blocks[st->new_offset + i / (int32_t)bs];
      const uint32_t off = (uint32_t)(i % (int32_t)bs);
      if (blk < 0 || (uint32_t)blk >= rkv_kv_pool_num_blocks(pool)) goto done;
      if (i >= B) {
        scores[(size_t)blk * bs + off] = 0.0f;
        continue;
      }
      const unsigned char *src = kv + ((size_t)s * (size_t)B + (size_t)i) * 2 * row;
      memcpy(base + (size_t)blk * bb + rkv_kv_k_offset(lay, off), src, row);
      memcpy(base + (size_t)blk * bb + rkv_kv_v_offset(lay, off), src + row, row);
      scores[(size_t)blk * bs + off] = ksc[(size_t)s * (size_t)B + (size_t)i];
    }
  }
  for (uint32_t i = 0; i < batch->n_clear; i++)
    for (size_t off = 0; off < bs; off++) scores[(size_t)batch->clear_blocks[i] * bs + off] = 0.0f;
  E.compresses++;
  ret = RKV_OK;
done:
  free(keys);
  free(qs);
  free(acc);
  free(keep);
  free(kv);
  free(ksc);
  free(ws);
  return ret;
}
