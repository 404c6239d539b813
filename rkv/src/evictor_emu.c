/* Host twin of the batched device compression (rkvi_evict_cuda_compress, evict_cuda.h) for the
 * emulated device (<rkv/buffer_emu.h>), whose pools are CPU pools: the evictor's device path
 * runs its host logic unchanged and only the launch is this. Per stream: gather the old row's
 * keys and H2O mass, read the group's window rows oldest first (as the host window hands them
 * to the CPU eviction, so the selection is the CPU path's bit for bit; the CUDA kernels do not
 * depend on the order), select with rkv_evict_select_dense (the CPU path's code), or per
 * sequence with rkv_evict_select_dense_multi at a coarser granularity; then scatter
 * every stream's kept tokens, gathered before any is written (new rows may reuse old blocks of
 * any stream), and zero the scores of new-row slots past the budget and of the freed blocks. */
#include <string.h>

#include <rkv/buffer_emu.h>

#include "evictor_internal.h"

typedef struct emu_scratch {
  float *keys, *qs, *acc, *ksc;
  int32_t *keep;
  unsigned char *kv;
  void *ws;
  size_t ws_bytes;
} emu_scratch;

/* Streams selected together: one at the stream granularity, a whole sequence otherwise. */
static size_t unit_streams(const rkv_evictor *ev, rkv_evict_granularity g) {
  return g == RKV_EVICT_GRAN_STREAM ? 1 : (size_t)ev->L * ev->Hkv;
}

rkv_status rkvi_evemu_sizes(const rkv_evictor *ev, const rkv_evict_params *p,
                            rkv_evict_granularity g, uint32_t ns, int32_t nmax, size_t sz[7]) {
  const size_t D = ev->d, B = (size_t)p->budget, U = unit_streams(ev, g);
  const size_t row = D * rkv_dtype_size(rkv_kv_pool_layout(ev->pool)->dtype);
  const size_t qrows = g == RKV_EVICT_GRAN_STREAM ? ev->Hq / ev->Hkv : (size_t)ev->L * ev->Hq;
  const int32_t n = nmax > p->budget ? nmax : p->budget + 1;
  size_t dws = 0;
  if (g == RKV_EVICT_GRAN_STREAM)
    RKV_TRY(rkv_evict_dense_workspace_size(p, (uint32_t)D, n, &dws));
  else
    RKV_TRY(rkv_evict_dense_multi_workspace_size(p, g, (uint32_t)D, n, &dws));
  sz[0] = U * (size_t)nmax * D * 4;
  sz[1] = qrows * (size_t)p->window * D * 4 + 4;
  sz[2] = U * (size_t)nmax * 4;
  sz[3] = ns * B * 4;
  sz[4] = U * B * 4;
  sz[5] = ns * B * 2 * row;
  sz[6] = dws + 64;
  return RKV_OK;
}

/* Grows the persistent scratch to `sz` (contents not kept); all or nothing per array. */
rkv_status rkvi_evemu_reserve(rkv_evictor *ev, const size_t sz[7]) {
  rkvi_evdev *d = ev->dev;
  for (size_t i = 0; i < 7; i++) {
    const size_t need = sz[i] ? sz[i] : 1;
    if (need <= d->escr_cap[i]) continue;
    void *n = rkvi_alloc(ev->al, need, 64);
    if (!n)
      return rkvi_fail(ev->err, RKV_ERR_NO_MEMORY, "emulated compression: scratch of %zu bytes",
                       need);
    rkvi_free(ev->al, d->escr[i], d->escr_cap[i]);
    d->escr[i] = n;
    d->escr_cap[i] = need;
  }
  return RKV_OK;
}

/* The scratch of one launch, out of the arrays rkvi_evdev_reserve sized. */
static rkv_status emu_alloc(const rkv_evictor *ev, const rkv_evict_params *p,
                            rkv_evict_granularity g, uint32_t ns, int32_t nmax, emu_scratch *s) {
  const rkvi_evdev *d = ev->dev;
  size_t sz[7];
  memset(s, 0, sizeof *s);
  RKV_TRY(rkvi_evemu_sizes(ev, p, g, ns, nmax, sz));
  for (size_t i = 0; i < 7; i++)
    if (sz[i] > d->escr_cap[i]) return RKV_ERR_INTERNAL; /* sized before the cuts */
  s->keys = d->escr[0];
  s->qs = d->escr[1];
  s->acc = d->escr[2];
  s->ksc = d->escr[3];
  s->keep = d->escr[4];
  s->kv = d->escr[5];
  s->ws = d->escr[6];
  s->ws_bytes = d->escr_cap[6];
  return RKV_OK;
}

/* Window rows of stream i's query group, oldest first, read from device memory. */
static rkv_status emu_queries(rkv_evictor *ev, const rkv_evict_params *p,
                              const rkv_evict_cuda_batch *b, uint32_t i, float *qs) {
  const size_t W = (size_t)p->window, D = ev->d, G = b->group;
  float *win = NULL;
  const rkv_status st = rkv_emu_view(ev->be, b->qwin + b->streams[i].qwin_offset,
                                     G * W * D * sizeof(float), (void **)&win);
  if (st != RKV_OK) return st;
  const size_t oldest = (size_t)ev->dev->oldest[i];
  for (size_t g = 0; g < G; g++)
    for (size_t k = 0; k < W; k++)
      memcpy(qs + (g * W + k) * D, win + (g * W + (oldest + k) % W) * D, D * sizeof(float));
  return RKV_OK;
}

/* Stream i's old keys and H2O masses into keys [n][D] and acc [n]. */
static void emu_load(const rkv_evictor *ev, const rkv_evict_cuda_batch *b, uint32_t i, float *keys,
                     float *acc) {
  const rkv_kv_layout *lay = rkv_kv_pool_layout(ev->pool);
  const size_t bs = lay->block_size, D = lay->head_dim, bb = rkv_kv_block_bytes(lay);
  const unsigned char *base = rkv_kv_pool_base(ev->pool);
  const float *scores = rkv_kv_pool_scores(ev->pool);
  const rkv_evict_cuda_stream *st = &b->streams[i];
  for (int32_t j = 0; j < st->old_len; j++) {
    const size_t blk = (size_t)b->old_blocks[st->old_offset + j / (int32_t)bs];
    const uint32_t off = (uint32_t)(j % (int32_t)bs);
    const unsigned char *k = base + blk * bb + rkv_kv_k_offset(lay, off);
    for (size_t t = 0; t < D; t++) keys[(size_t)j * D + t] = rkv_dtype_load(lay->dtype, k, t);
    acc[j] = scores[blk * bs + off];
  }
}

/* Stream i's kept tokens (positions keep[0..budget)) into its rows of the scratch copy. */
static void emu_take(const rkv_evictor *ev, const rkv_evict_params *p,
                     const rkv_evict_cuda_batch *b, uint32_t i, const int32_t *keep,
                     emu_scratch *s) {
  const rkv_kv_layout *lay = rkv_kv_pool_layout(ev->pool);
  const size_t bs = lay->block_size, bb = rkv_kv_block_bytes(lay);
  const size_t row = lay->head_dim * rkv_dtype_size(lay->dtype), B = (size_t)p->budget;
  const unsigned char *base = rkv_kv_pool_base(ev->pool);
  const float *scores = rkv_kv_pool_scores(ev->pool);
  const rkv_evict_cuda_stream *st = &b->streams[i];
  for (size_t t = 0; t < B; t++) {
    const int32_t j = keep[t];
    const size_t blk = (size_t)b->old_blocks[st->old_offset + j / (int32_t)bs];
    const uint32_t off = (uint32_t)(j % (int32_t)bs);
    unsigned char *dst = s->kv + ((size_t)i * B + t) * 2 * row;
    memcpy(dst, base + blk * bb + rkv_kv_k_offset(lay, off), row);
    memcpy(dst + row, base + blk * bb + rkv_kv_v_offset(lay, off), row);
    s->ksc[(size_t)i * B + t] = scores[blk * bs + off];
  }
}

/* Per stream: the CPU path's per-stream selection (rkv_evict_select_dense). */
static rkv_status emu_select_streams(rkv_evictor *ev, const rkv_evict_params *p,
                                     const rkv_evict_cuda_batch *b, emu_scratch *s) {
  const bool queries = rkvi_evictor_policy(p->policy).needs_query_window;
  for (uint32_t i = 0; i < b->num_streams; i++) {
    const int32_t n = b->streams[i].old_len;
    if (n <= p->budget) continue;
    emu_load(ev, b, i, s->keys, s->acc);
    if (queries) RKV_TRY(emu_queries(ev, p, b, i, s->qs));
    RKV_TRY(rkv_evict_select_dense(p, s->keys, s->qs, s->acc, 1, b->group, n, ev->d, s->keep, NULL,
                                   s->ws, s->ws_bytes, NULL, 0));
    emu_take(ev, p, b, i, s->keep, s);
  }
  return RKV_OK;
}

/* Per sequence (layers x kv heads consecutive streams of one length, the batch's rule for a
 * coarser granularity): the CPU path's aggregation (rkv_evict_select_dense_multi) over every
 * stream's keys and the sequence's windows [layers][q heads][window][d]. */
static rkv_status emu_select_groups(rkv_evictor *ev, const rkv_evict_params *p,
                                    const rkv_evict_cuda_batch *b, emu_scratch *s) {
  const uint32_t U = b->layers * b->kv_heads, G = b->group;
  const size_t D = ev->d, B = (size_t)p->budget, W = (size_t)p->window;
  const bool queries = rkvi_evictor_policy(p->policy).needs_query_window;
  for (uint32_t first = 0; first + U <= b->num_streams; first += U) {
    const int32_t n = b->streams[first].old_len;
    if (n <= p->budget) continue;
    for (uint32_t u = 0; u < U; u++) {
      if (b->streams[first + u].old_len != n) return RKV_ERR_INTERNAL; /* lockstep rule */
      emu_load(ev, b, first + u, s->keys + (size_t)u * (size_t)n * D, s->acc + (size_t)u * n);
      const size_t l = u / b->kv_heads, h = u % b->kv_heads;
      if (queries) RKV_TRY(emu_queries(ev, p, b, first + u, s->qs + (l * ev->Hq + h * G) * W * D));
    }
    RKV_TRY(rkv_evict_select_dense_multi(p, (rkv_evict_granularity)b->granularity, s->keys, s->qs,
                                         s->acc, b->layers, b->kv_heads, ev->Hq, n, ev->d, s->keep,
                                         NULL, s->ws, s->ws_bytes, NULL, 0));
    for (uint32_t u = 0; u < U; u++) emu_take(ev, p, b, first + u, s->keep + u * B, s);
  }
  return RKV_OK;
}

static void emu_scatter(const rkv_evictor *ev, const rkv_evict_params *p,
                        const rkv_evict_cuda_batch *b, const emu_scratch *s) {
  const rkv_kv_layout *lay = rkv_kv_pool_layout(ev->pool);
  const size_t bs = lay->block_size, bb = rkv_kv_block_bytes(lay);
  const size_t row = lay->head_dim * rkv_dtype_size(lay->dtype), B = (size_t)p->budget;
  unsigned char *base = rkv_kv_pool_base(ev->pool);
  float *scores = rkv_kv_pool_scores(ev->pool);
  const size_t nb = (B + bs - 1) / bs;
  for (uint32_t i = 0; i < b->num_streams; i++) {
    const rkv_evict_cuda_stream *st = &b->streams[i];
    if (st->old_len <= p->budget) continue;
    for (size_t t = 0; t < nb * bs; t++) {
      const size_t blk = (size_t)b->new_blocks[st->new_offset + (int32_t)(t / bs)];
      const uint32_t off = (uint32_t)(t % bs);
      float *sc = &scores[blk * bs + off];
      if (t >= B) {
        *sc = 0.0f;
        continue;
      }
      const unsigned char *src = s->kv + ((size_t)i * B + t) * 2 * row;
      memcpy(base + blk * bb + rkv_kv_k_offset(lay, off), src, row);
      memcpy(base + blk * bb + rkv_kv_v_offset(lay, off), src + row, row);
      *sc = s->ksc[(size_t)i * B + t];
    }
  }
  for (uint32_t i = 0; i < b->n_clear; i++)
    memset(&scores[(size_t)b->clear_blocks[i] * bs], 0, bs * sizeof(float));
}

/* The launch: descriptors are read where the GPU would read them, in the device buffer the
 * arena was copied into (its first `end` bytes; this launch's part is at an offset). */
rkv_status rkvi_evemu_compress(rkv_evictor *ev, const rkv_evict_params *p,
                               const rkv_evict_cuda_batch *db, size_t end) {
  unsigned char *h = NULL;
  const unsigned char *dev = rkv_buffer_ptr(ev->dev->desc);
  rkv_status st = rkv_emu_view(ev->be, dev, end, (void **)&h);
  if (st != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "emulated compression: descriptors: %s",
                     rkv_status_str(st));
  if (db->num_streams > ev->dev->launch_streams) /* the CUDA grids' limit, kept here too */
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "emulated compression: %u streams > %u",
                     db->num_streams, ev->dev->launch_streams);
  rkv_evict_cuda_batch b = *db;
  b.streams = (const rkv_evict_cuda_stream *)(h + ((const unsigned char *)db->streams - dev));
  b.old_blocks = (const int32_t *)(h + ((const unsigned char *)db->old_blocks - dev));
  b.new_blocks = (const int32_t *)(h + ((const unsigned char *)db->new_blocks - dev));
  if (db->clear_blocks)
    b.clear_blocks = (const int32_t *)(h + ((const unsigned char *)db->clear_blocks - dev));
  const rkv_evict_granularity g = (rkv_evict_granularity)b.granularity;
  emu_scratch s;
  st = emu_alloc(ev, p, g, b.num_streams, b.max_len, &s);
  if (st == RKV_OK)
    st = g == RKV_EVICT_GRAN_STREAM ? emu_select_streams(ev, p, &b, &s)
                                    : emu_select_groups(ev, p, &b, &s);
  if (st == RKV_OK) emu_scatter(ev, p, &b, &s);
  return st == RKV_OK
             ? RKV_OK
             : rkvi_fail(ev->err, RKV_ERR_INTERNAL, "emulated compression: %s", rkv_status_str(st));
}
