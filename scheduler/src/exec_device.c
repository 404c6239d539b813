/* The executor's device path (exec_device.h): the table mirror, the step metadata and the
 * workspaces live in rkv_buffer objects of the pool's backend, and every kernel reads device
 * memory. (The query window is the library's rkv_qwindow on the same backend: exec.c plans and
 * pushes it as on a CPU pool.)
 *
 * One step, in stream order, with one sync at its end:
 *   begin   the pinned arena gets the step metadata (per-sequence mirror row, lockstep
 *           lengths, row ranges) and the rows of the mirror
 *           entries the host rewrote (nothing else: a decode step between block boundaries
 *           uploads no row), then one copy per piece;
 *   layer   K/V write through the device rows, paged attention (decode group, prefill
 *           group; H2O mass rides on attention); exec.c then pushes the query window;
 *   finish  the executor's evictor (rkv/evictor.h) compresses the flagged sequences, one
 *           batched launch per parameter set reading the query window; then the sync that
 *           frees the arena for the next step.
 * On the emulated device (<rkv/buffer_emu.h>) the pool is a CPU pool: the kernels are the CPU
 * ones on the host bytes rkv_emu_view returns for each device range (the query window's push
 * and the batched compression have their twins in the window and the evictor). The host logic
 * is the same code on both. */
#include <string.h>

#include <rkv/attention_cuda.h>
#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>

#include "exec_device.h"
#include "qwindow_internal.h"
#include "rkv_internal.h"
#include "stage_fence.h"

#define XALIGN ((size_t)RKV_BUFFER_ALIGN)

struct rkvi_xdev {
  rkvi_xdev_config c;
  rkv_backend *be;
  bool emu; /* kernels are host twins over rkv_emu_view */
  /* device state */
  rkv_buffer *rows;  /* [nidx][S][stride] int32 */
  rkv_buffer *lens;  /* [nidx][S] int32 */
  rkv_buffer *meta;  /* the step metadata (layout: off_*) */
  rkv_buffer *ws;    /* attention workspace */
  rkv_buffer *stage; /* pinned arena: the step's uploads */
  rkvi_fence staged; /* the arena's last upload (stage_fence.h) */
  /* marked mirror entries */
  uint8_t *marked; /* [nidx] */
  int32_t *mlist;  /* [nidx] */
  uint32_t n_marked;
  /* the open step */
  const rkv_sched_plan *plan;
  uint32_t stride;
  bool lockstep, h2o;
  size_t off_seq_row, off_blen, off_all, off_qi, off_qw;
  char err[RKV_ERRBUF];
};

static size_t up(size_t x) {
  return (x + XALIGN - 1) & ~(XALIGN - 1);
}

static rkv_status be_fail(rkvi_xdev *d, rkv_status st, const char *what) {
  return rkvi_fail(d->err, st, "%s: %s (%s)", what, rkv_status_str(st),
                   rkv_backend_last_error(d->be));
}

bool rkvi_xdev_wanted(const rkv_kv_pool *pool) {
  return pool && !rkv_backend_device_is_host(rkv_kv_pool_backend(pool));
}

const char *rkvi_xdev_last_error(const rkvi_xdev *d) {
  return d ? d->err : "";
}

/* Grows a buffer to at least `need` bytes, to a power of two (growth waits for the stream:
 * it happens in the first steps of a run only). */
static rkv_status bgrow(rkvi_xdev *d, rkv_buffer *b, size_t need, const char *what) {
  if (need <= rkv_buffer_size(b)) return RKV_OK;
  size_t n = 4096;
  while (n < need) n *= 2;
  rkv_status st = rkv_buffer_reserve(b, n);
  return st == RKV_OK ? RKV_OK : be_fail(d, st, what);
}

/* The host address of device range [p, p + bytes) for a host twin of a kernel (the emulated
 * device), or p itself for a real kernel. */
static rkv_status dev_at(rkvi_xdev *d, const void *p, size_t bytes, void **out) {
  if (!d->emu || !p || !bytes) {
    *out = (void *)p;
    return RKV_OK;
  }
  rkv_status st = rkv_emu_view(d->be, p, bytes, out);
  return st == RKV_OK ? RKV_OK : be_fail(d, st, "device access");
}

/* ---- create / destroy -------------------------------------------------------------------- */

void rkvi_xdev_destroy(rkvi_xdev *d) {
  if (!d) return;
  const rkv_allocator *a = d->c.al;
  rkv_buffer *bufs[] = {d->rows, d->lens, d->meta, d->ws, d->stage};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) rkv_buffer_destroy(bufs[i]);
  rkvi_free(a, d->marked, d->c.nidx);
  rkvi_free(a, d->mlist, d->c.nidx * sizeof(int32_t));
  rkvi_free(a, d, sizeof *d);
}

/* The kernels' closed set, checked once so that no step fails on a shape: the pool's layout
 * and the GQA group's threads and shared memory on this device (a smaller device than the one
 * the shapes were tuned on refuses here, not at the first step's first layer). */
static rkv_status check_cuda_shape(const rkvi_xdev_config *c, char *err, size_t len) {
  const rkv_status st = rkv_attn_check_heads(c->pool, c->Hq, c->Hkv);
  if (st != RKV_OK)
    return rkvi_failn(err, len, st, "rkv_exec_create: %s",
                      rkv_backend_last_error(rkv_kv_pool_backend(c->pool)));
  if (c->window > 256)
    return rkvi_failn(err, len, RKV_ERR_UNSUPPORTED,
                      "rkv_exec_create: query window %u > 256 (the CUDA eviction's limit)",
                      c->window);
  return RKV_OK;
}

static rkv_status make_buffers(rkvi_xdev *d) {
  rkv_buffer **dev[] = {&d->rows, &d->lens, &d->meta, &d->ws};
  for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
    RKV_TRY(rkv_buffer_create(d->be, RKV_BUFFER_DEVICE, 0, dev[i]));
  RKV_TRY(rkv_buffer_create(d->be, RKV_BUFFER_HOST_PINNED, 0, &d->stage));
  return rkv_buffer_reserve(d->lens, (size_t)d->c.nidx * d->c.S * sizeof(int32_t));
}

rkv_status rkvi_xdev_create(const rkvi_xdev_config *cfg, rkvi_xdev **out, char *err,
                            size_t err_len) {
  *out = NULL;
  const bool emu = rkv_backend_is_emulated(rkv_kv_pool_backend(cfg->pool));
  if (!emu) RKV_TRY(check_cuda_shape(cfg, err, err_len));
  rkvi_xdev *d = rkvi_calloc(cfg->al, sizeof *d, 16);
  if (!d) return rkvi_failn(err, err_len, RKV_ERR_NO_MEMORY, "rkv_exec_create: out of memory");
  d->c = *cfg;
  d->be = rkv_kv_pool_backend(cfg->pool);
  d->emu = emu;
  d->marked = rkvi_calloc(cfg->al, cfg->nidx, 16);
  d->mlist = rkvi_alloc(cfg->al, cfg->nidx * sizeof(int32_t), 16);
  rkv_status st = RKV_ERR_NO_MEMORY;
  if (d->marked && d->mlist) st = make_buffers(d);
  if (st != RKV_OK) {
    rkvi_failn(err, err_len, st, "rkv_exec_create: device state: %s (%s)", rkv_status_str(st),
               rkv_backend_last_error(d->be));
    rkvi_xdev_destroy(d);
    return st;
  }
  *out = d;
  return RKV_OK;
}

size_t rkvi_xdev_memory_bytes(const rkvi_xdev *d) {
  if (!d) return 0;
  const rkv_buffer *b[] = {d->rows, d->lens, d->meta, d->ws, d->stage};
  size_t n = 0;
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) n += b[i] ? rkv_buffer_size(b[i]) : 0;
  return n + (size_t)d->c.nidx * 5;
}

/* ---- begin: delta uploads and the step metadata ------------------------------------------ */

void rkvi_xdev_mark(rkvi_xdev *d, int32_t idx) {
  if (d->marked[idx]) return;
  d->marked[idx] = 1;
  d->mlist[d->n_marked++] = idx;
}

/* The arena's layout for a step of n sequences (np prefill chunks), `marked` mirror entries to
 * upload and, when `lens`, every sequence's lengths: metadata sections first (offsets in off[5]:
 * seq_row, blen, all, qi, the query window's plan), then one row group per marked entry, then
 * the lengths.
 * Returns the total; *rows_at and *lens_at are where the row groups and the lengths start. */
static size_t arena_size(const rkvi_xdev *d, size_t n, size_t np, size_t marked, uint32_t stride,
                         bool lens, size_t off[5], size_t *rows_at, size_t *lens_at) {
  off[0] = 0;
  off[1] = up(n * 4);
  off[2] = off[1] + up(n * 4);
  off[3] = off[2] + up((n + 1) * 4);
  off[4] = off[3] + up((np + 1) * 4);
  const size_t meta = off[4] + (d->c.qw ? up(rkvi_qwindow_meta_bytes((uint32_t)n)) : 0);
  *rows_at = meta;
  *lens_at = meta + marked * up((size_t)d->c.S * stride * 4);
  return *lens_at + (lens ? n * up((size_t)d->c.S * 4) : 0);
}

/* Lays out the arena of this step (rkvi_xdev_step). */
static size_t arena_layout(rkvi_xdev *d, const rkvi_xdev_step *st, size_t *rows_at,
                           size_t *lens_at) {
  const rkv_sched_plan *p = st->plan;
  size_t off[5];
  const size_t total = arena_size(d, p->n_seqs, p->n_seqs - p->n_decode, d->n_marked, st->stride,
                                  !st->blen, off, rows_at, lens_at);
  d->off_seq_row = off[0];
  d->off_blen = off[1];
  d->off_all = off[2];
  d->off_qi = off[3];
  d->off_qw = off[4];
  return total;
}

rkv_status rkvi_xdev_prepare(rkvi_xdev *d, const rkv_sched_plan *p, uint32_t stride,
                             int64_t longest) {
  /* a step that did not reach its finish may have left copies from the arena in flight */
  rkv_status e = rkvi_fence_wait(&d->staged, d->be);
  if (e != RKV_OK) return be_fail(d, e, "begin: sync");
  /* sync_seq marks at most one entry per scheduled sequence */
  size_t marked = (size_t)d->n_marked + p->n_seqs, off[5], rows_at = 0, lens_at = 0;
  if (marked > d->c.nidx) marked = d->c.nidx;
  const size_t total = arena_size(d, p->n_seqs, p->n_seqs - p->n_decode, marked, stride, true, off,
                                  &rows_at, &lens_at);
  size_t ws = 0;
  const uint32_t most = p->n_seqs > p->n_decode ? p->n_seqs : p->n_decode;
  if (p->n_seqs &&
      (e = rkv_attn_workspace_bound(d->c.pool, most, d->c.Hq, d->c.d, longest, &ws)) != RKV_OK)
    return be_fail(d, e, "begin: attention workspace");
  RKV_TRY(bgrow(d, d->stage, total, "begin: staging arena"));
  RKV_TRY(bgrow(d, d->meta, lens_at, "begin: step metadata"));
  RKV_TRY(bgrow(d, d->ws, ws + 64, "begin: attention workspace"));
  const size_t mirror = (size_t)d->c.nidx * d->c.S * stride * 4;
  if (mirror > rkv_buffer_size(d->rows) &&
      (e = rkv_buffer_reserve(d->rows, mirror)) != RKV_OK) /* exact: the mirror doubles itself */
    return be_fail(d, e, "begin: device table mirror");
  return RKV_OK;
}

/* The step metadata into the arena, with the query window's plan (validate_plan made sure
 * every sequence holds a window, so the plan cannot fail). */
static rkv_status fill_meta(rkvi_xdev *d, const rkvi_xdev_step *st, unsigned char *h) {
  const rkv_sched_plan *p = st->plan;
  const size_t n = p->n_seqs;
  memcpy(h + d->off_seq_row, st->seq_row, n * 4);
  if (st->blen) memcpy(h + d->off_blen, st->blen, n * 4);
  memcpy(h + d->off_all, st->all_indptr, (n + 1) * 4);
  memcpy(h + d->off_qi, st->q_indptr, (n - p->n_decode + 1) * 4);
  if (!d->c.qw) return RKV_OK;
  const rkv_status s =
      rkvi_qwindow_plan_staged(d->c.qw, st->ids, st->all_indptr, p->n_seqs, h + d->off_qw,
                               (unsigned char *)rkv_buffer_ptr(d->meta) + d->off_qw);
  return s == RKV_OK ? RKV_OK
                     : rkvi_fail(d->err, s, "begin: query-window plan: %s",
                                 rkv_qwindow_last_error(d->c.qw));
}

static rkv_status enqueue_uploads(rkvi_xdev *d, const rkvi_xdev_step *st, size_t meta,
                                  size_t rows_at, size_t lens_at) {
  rkv_status e = rkv_buffer_copy(d->meta, 0, d->stage, 0, meta);
  const size_t entry = (size_t)d->c.S * st->stride * 4, stage_entry = up(entry);
  for (uint32_t i = 0; e == RKV_OK && i < d->n_marked; i++)
    e = rkv_buffer_copy(d->rows, (size_t)d->mlist[i] * entry, d->stage, rows_at + i * stage_entry,
                        entry);
  const size_t le = (size_t)d->c.S * 4;
  for (uint32_t i = 0; e == RKV_OK && !st->blen && i < st->plan->n_seqs; i++) {
    const size_t idx = (size_t)st->seq_row[i] / d->c.S;
    e = rkv_buffer_copy(d->lens, idx * le, d->stage, lens_at + i * up(le), le);
  }
  return e == RKV_OK ? RKV_OK : be_fail(d, e, "begin: upload");
}

rkv_status rkvi_xdev_begin(rkvi_xdev *d, const rkvi_xdev_step *st) {
  const rkv_sched_plan *p = st->plan;
  size_t rows_at = 0, lens_at = 0;
  /* rkvi_xdev_prepare waited for the arena and sized every buffer for this plan */
  const size_t total = arena_layout(d, st, &rows_at, &lens_at);
  if (total > rkv_buffer_size(d->stage) || lens_at > rkv_buffer_size(d->meta))
    return rkvi_fail(d->err, RKV_ERR_INTERNAL, "begin: the arena was not prepared for this plan");
  unsigned char *h = rkv_buffer_ptr(d->stage);
  RKV_TRY(fill_meta(d, st, h));
  const size_t entry = (size_t)d->c.S * st->stride * 4;
  for (uint32_t i = 0; i < d->n_marked; i++)
    memcpy(h + rows_at + i * up(entry), st->rows + (size_t)d->mlist[i] * d->c.S * st->stride,
           entry);
  for (uint32_t i = 0; !st->blen && i < p->n_seqs; i++)
    memcpy(h + lens_at + i * up((size_t)d->c.S * 4), st->lens + st->seq_row[i], (size_t)d->c.S * 4);
  const rkv_status e = enqueue_uploads(d, st, rows_at, rows_at, lens_at);
  rkvi_fence_arm(&d->staged, d->be); /* part of the upload may be queued even on failure */
  /* a failed upload keeps its marks: the next begin uploads those entries again */
  if (e != RKV_OK) return e;
  for (uint32_t i = 0; i < d->n_marked; i++) d->marked[d->mlist[i]] = 0;
  d->n_marked = 0;
  d->plan = p;
  d->stride = st->stride;
  d->lockstep = st->blen != NULL;
  d->h2o = st->h2o;
  return RKV_OK;
}

/* ---- layer ------------------------------------------------------------------------------- */

/* Pointers of the step's device state as the kernels see them. */
typedef struct xview {
  int32_t *rows, *lens, *seq_row, *blen, *all, *qi;
  void *ws;
  size_t ws_bytes;
} xview;

static rkv_status view_state(rkvi_xdev *d, xview *v) {
  unsigned char *m = NULL;
  const size_t meta = d->off_qi + up(((size_t)d->plan->n_seqs - d->plan->n_decode + 1) * 4);
  RKV_TRY(dev_at(d, rkv_buffer_ptr(d->meta), meta, (void **)&m));
  RKV_TRY(dev_at(d, rkv_buffer_ptr(d->rows), (size_t)d->c.nidx * d->c.S * d->stride * 4,
                 (void **)&v->rows));
  RKV_TRY(dev_at(d, rkv_buffer_ptr(d->lens), (size_t)d->c.nidx * d->c.S * 4, (void **)&v->lens));
  v->ws_bytes = rkv_buffer_size(d->ws);
  RKV_TRY(dev_at(d, rkv_buffer_ptr(d->ws), v->ws_bytes, &v->ws));
  v->seq_row = (int32_t *)(m + d->off_seq_row);
  v->blen = d->lockstep ? (int32_t *)(m + d->off_blen) : NULL;
  v->all = (int32_t *)(m + d->off_all);
  v->qi = (int32_t *)(m + d->off_qi);
  return RKV_OK;
}

static rkv_status attend(rkvi_xdev *d, const xview *v, uint32_t layer, const float *q, float *out,
                         uint32_t first, uint32_t count, bool prefill) {
  if (!count) return RKV_OK;
  const size_t row0 = prefill ? d->plan->n_decode : 0, qrow = (size_t)d->c.Hq * d->c.d;
  const rkv_block_rows br = {v->rows,   v->lens,          v->seq_row + first,
                             d->stride, layer * d->c.Hkv, v->blen ? v->blen + first : NULL};
  rkv_attn_params ap = RKV_ATTN_PARAMS_INIT;
  ap.num_seqs = count;
  ap.num_q_heads = d->c.Hq;
  ap.num_kv_heads = d->c.Hkv;
  ap.head_dim = d->c.d;
  ap.scale = d->c.scale;
  ap.q = q + row0 * qrow;
  ap.out = out + row0 * qrow;
  ap.rows = &br;
  ap.q_indptr = prefill ? v->qi : NULL;
  ap.accumulate_scores = d->h2o;
  ap.layer = layer;
  rkv_status st = prefill ? rkv_attn_prefill(d->c.pool, &ap, v->ws, v->ws_bytes)
                          : rkv_attn_decode(d->c.pool, &ap, v->ws, v->ws_bytes);
  if (st != RKV_OK)
    return rkvi_fail(d->err, st, "layer %u %s attention: %s", layer, prefill ? "prefill" : "decode",
                     rkv_backend_last_error(d->be));
  return RKV_OK;
}

rkv_status rkvi_xdev_layer(rkvi_xdev *d, uint32_t layer, const float *q, const float *k,
                           const float *v, float *out) {
  const rkv_sched_plan *p = d->plan;
  const size_t rows = p->n_batched_tokens;
  if (!rows) return RKV_OK;
  const size_t qb = rows * d->c.Hq * d->c.d * 4, kb = rows * d->c.Hkv * d->c.d * 4;
  xview xv;
  float *hq = NULL, *hk = NULL, *hv = NULL, *ho = NULL;
  RKV_TRY(dev_at(d, q, qb, (void **)&hq));
  RKV_TRY(dev_at(d, k, kb, (void **)&hk));
  RKV_TRY(dev_at(d, v, kb, (void **)&hv));
  RKV_TRY(dev_at(d, out, qb, (void **)&ho));
  RKV_TRY(view_state(d, &xv));
  const rkv_block_rows br = {xv.rows, xv.lens, xv.seq_row, d->stride, layer * d->c.Hkv, xv.blen};
  rkv_status st = rkv_attn_write_kv_rows(d->c.pool, hk, hv, p->n_seqs, d->c.Hkv, xv.all, &br);
  if (st != RKV_OK)
    return rkvi_fail(d->err, st, "layer %u K/V write: %s", layer, rkv_backend_last_error(d->be));
  RKV_TRY(attend(d, &xv, layer, hq, ho, 0, p->n_decode, false));
  return attend(d, &xv, layer, hq, ho, p->n_decode, p->n_seqs - p->n_decode, true);
}

/* ---- finish ------------------------------------------------------------------------------ */

rkv_status rkvi_xdev_finish(rkvi_xdev *d) {
  /* The step's one sync: the arena is free again and every kernel's fault surfaces here. */
  rkv_status st = rkv_backend_sync(d->be);
  d->plan = NULL;
  return st == RKV_OK ? RKV_OK : be_fail(d, st, "finish: sync");
}

rkv_status rkvi_xdev_check(rkvi_xdev *d, const int32_t *rows, uint32_t stride, const int64_t *owner,
                           const uint8_t *stale) {
  const size_t entry = (size_t)d->c.S * stride, bytes = (size_t)d->c.nidx * entry * 4;
  /* after the mirror doubled no entry is owned until the next begin re-syncs it */
  if (rkv_buffer_size(d->rows) < bytes) return RKV_OK;
  int32_t *h = rkvi_alloc(d->c.al, bytes ? bytes : 1, 64);
  if (!h) return rkvi_fail(d->err, RKV_ERR_NO_MEMORY, "check: %zu bytes", bytes);
  rkv_status st = rkv_buffer_download(d->rows, 0, h, bytes);
  if (st == RKV_OK) st = rkv_backend_sync(d->be);
  if (st != RKV_OK) {
    rkvi_free(d->c.al, h, bytes ? bytes : 1);
    return be_fail(d, st, "check: device mirror download");
  }
  for (uint32_t i = 0; i < d->c.nidx && st == RKV_OK; i++) {
    /* an entry rewritten on the host but not yet uploaded differs until the next begin */
    if (owner[i] < 0 || stale[i] || d->marked[i]) continue;
    if (memcmp(h + i * entry, rows + i * entry, entry * 4) != 0)
      st = rkvi_fail(d->err, RKV_ERR_CORRUPT,
                     "check: device mirror entry %u (sequence %lld) differs from the host's", i,
                     (long long)owner[i]);
  }
  rkvi_free(d->c.al, h, bytes ? bytes : 1);
  return st;
}
