/* The evictor (rkv/evictor.h): one queue of compressions over a block manager and a KV pool of
 * any backend. This file holds the handle, the queue with its validation, and the host path
 * (CPU pools: rkv_evict_layer per layer, rkv_evict_seq at a coarser granularity); the device
 * path is evictor_device.c. Every check a compression can fail comes before its first change,
 * so a failed sequence stays as it was. */
#include <stdint.h>
#include <string.h>

#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>

#include "evictor_internal.h"
#include "qwindow_internal.h"

rkv_evict_policy_info rkvi_evictor_policy(rkv_evict_policy p) {
  rkv_evict_policy_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  (void)rkv_evict_policy_get_info(p, &info);
  return info;
}

static rkv_status cfg_err(char *err, size_t len, rkv_status st, const char *msg) {
  return rkvi_failn(err, len, st, "rkv_evictor_create: %s", msg);
}

/* A device pool's evictor ignores a window that is not on the pool's backend, as version 1
 * documented (its adds name their device windows, deprecated). */
static bool window_ignored(const rkv_qwindow *qw, const rkv_backend *be) {
  return qw && !rkv_backend_device_is_host(be) && rkvi_qwindow_backend(qw) != be;
}

/* The window must match the model and live where the pool's kernels read: host memory for a
 * host pool, the pool's own backend for a device pool. */
static rkv_status check_qwindow(const rkv_evictor_config *c, const rkv_blockmgr_config *bc,
                                const rkv_kv_pool *pool, char *err, size_t len) {
  const rkv_backend *be = rkv_kv_pool_backend(pool);
  if (!c->qwindow || window_ignored(c->qwindow, be)) return RKV_OK;
  if (!rkvi_qwindow_host(c->qwindow) && rkv_backend_device_is_host(be))
    return cfg_err(err, len, RKV_ERR_INVALID_ARG,
                   "a host pool's query window must live in host memory");
  const rkv_qwindow_config *qc = rkvi_qwindow_config(c->qwindow);
  if (qc->num_layers != bc->num_layers || qc->num_q_heads != c->num_q_heads ||
      qc->head_dim != bc->head_dim)
    return cfg_err(err, len, RKV_ERR_INVALID_ARG,
                   "the query window's layers, query heads or head_dim differ from the model's");
  return RKV_OK;
}

/* The device kernels' closed set (layout, window), asked of the kernels themselves. */
static rkv_status check_kernels(const rkv_evictor *ev, const rkv_evict_params *p, char *err,
                                size_t len) {
  if (!ev->device || ev->emu || !rkvi_evictor_policy(p->policy).evicts) return RKV_OK;
  size_t bytes = 0;
  const rkv_status st =
      rkvi_evict_cuda_workspace_size(p, ev->pool, 1, ev->Hq / ev->Hkv, p->budget + 1, &bytes);
  if (st == RKV_OK) return RKV_OK;
  return rkvi_failn(err, len, RKV_ERR_UNSUPPORTED,
                    "the %s pool's device kernels do not take this layout or window (head_dim "
                    "64/128/256, block 16/32, window <= 256): %s",
                    rkv_backend_name(ev->be), rkv_status_str(st));
}

static rkv_status check_config(const rkv_evictor_config *c, const rkv_blockmgr *m,
                               const rkv_kv_pool *pool, char *err, size_t len) {
  const rkv_blockmgr_config *bc = rkv_blockmgr_get_config(m);
  const rkv_kv_layout ml = rkv_blockmgr_kv_layout(m);
  const rkv_kv_layout *pl = rkv_kv_pool_layout(pool);
  if (pl->dtype != ml.dtype || pl->block_size != ml.block_size || pl->head_dim != ml.head_dim)
    return cfg_err(err, len, RKV_ERR_INVALID_ARG,
                   "the pool's layout (dtype, block size, head_dim) differs from the block "
                   "manager's");
  if (rkv_kv_pool_num_blocks(pool) < bc->num_blocks)
    return cfg_err(err, len, RKV_ERR_INVALID_ARG,
                   "the pool has fewer blocks than the block manager");
  if (c->num_q_heads == 0 || c->num_q_heads % bc->num_kv_heads)
    return cfg_err(err, len, RKV_ERR_INVALID_ARG,
                   "num_q_heads must be a positive multiple of the kv heads");
  if (c->max_seqs == 0 || c->max_seqs > (1u << 20))
    return cfg_err(err, len, RKV_ERR_INVALID_ARG, "max_seqs must be in [1, 2^20]");
  char e2[RKV_ERRBUF];
  if (rkv_evict_params_validate(&c->params, e2, sizeof e2) != RKV_OK)
    return rkvi_failn(err, len, RKV_ERR_INVALID_ARG, "rkv_evictor_create: params: %s", e2);
  if ((int)c->granularity < 0 || c->granularity >= RKV_EVICT_GRAN_COUNT_)
    return rkvi_failn(err, len, RKV_ERR_INVALID_ARG,
                      "rkv_evictor_create: unknown granularity %d (stream, layer, kvhead, "
                      "sequence)",
                      (int)c->granularity);
  return check_qwindow(c, bc, pool, err, len);
}

void rkv_evictor_destroy(rkv_evictor *ev) {
  if (!ev) return;
  const rkv_allocator *a = ev->al;
  rkvi_evdev_destroy(ev);
  rkvi_free(a, ev->q, (size_t)ev->cfg.max_seqs * sizeof *ev->q);
  rkvi_free(a, ev->ws, ev->ws_cap);
  rkvi_free(a, ev->qbuf, ev->qbuf_cap);
  rkvi_free(a, ev, sizeof *ev);
}

rkv_status rkv_evictor_create(const rkv_evictor_config *cfg, rkv_blockmgr *bm, rkv_kv_pool *pool,
                              rkv_evictor **out, char *err, size_t err_len) {
  if (err && err_len) err[0] = '\0';
  if (!out) return cfg_err(err, err_len, RKV_ERR_INVALID_ARG, "out is NULL");
  *out = NULL;
  if (!cfg || !bm || !pool)
    return cfg_err(err, err_len, RKV_ERR_INVALID_ARG, "cfg, block manager and pool are required");
  if (cfg->struct_size != sizeof(rkv_evictor_config))
    return cfg_err(err, err_len, RKV_ERR_INVALID_ARG,
                   "struct_size is not a known version (use RKV_EVICTOR_CONFIG_INIT)");
  RKV_TRY(check_config(cfg, bm, pool, err, err_len));
  rkv_evictor *ev = rkvi_calloc(cfg->allocator, sizeof *ev, 16);
  if (!ev) return cfg_err(err, err_len, RKV_ERR_NO_MEMORY, "out of memory");
  ev->cfg = *cfg;
  if (cfg->allocator) {
    ev->alloc_copy = *cfg->allocator;
    ev->al = &ev->alloc_copy;
  }
  ev->cfg.allocator = ev->al;
  const rkv_blockmgr_config *bc = rkv_blockmgr_get_config(bm);
  ev->bm = bm;
  ev->pool = pool;
  ev->be = rkv_kv_pool_backend(pool);
  ev->L = bc->num_layers;
  ev->Hkv = bc->num_kv_heads;
  ev->Hq = cfg->num_q_heads;
  ev->d = bc->head_dim;
  ev->bs = bc->block_size;
  ev->device = !rkv_backend_device_is_host(ev->be);
  ev->emu = rkv_backend_is_emulated(ev->be);
  if (window_ignored(ev->cfg.qwindow, ev->be)) ev->cfg.qwindow = NULL;
  rkv_status st = check_kernels(ev, &cfg->params, err, err_len);
  if (st == RKV_OK) {
    ev->q = rkvi_alloc(ev->al, (size_t)cfg->max_seqs * sizeof *ev->q, 16);
    st = ev->q ? RKV_OK : RKV_ERR_NO_MEMORY;
    if (st == RKV_OK && ev->device) st = rkvi_evdev_create(ev);
    if (st != RKV_OK)
      rkvi_failn(err, err_len, st, "rkv_evictor_create: %s (%s)", rkv_status_str(st), ev->err);
  }
  if (st != RKV_OK) {
    rkv_evictor_destroy(ev);
    return st;
  }
  *out = ev;
  return RKV_OK;
}

const char *rkv_evictor_last_error(const rkv_evictor *ev) {
  return ev ? ev->err : "NULL evictor";
}

size_t rkv_evictor_memory_bytes(const rkv_evictor *ev) {
  if (!ev) return 0;
  return sizeof *ev + (size_t)ev->cfg.max_seqs * sizeof *ev->q + ev->ws_cap + ev->qbuf_cap +
         rkvi_evdev_memory_bytes(ev);
}

/* ---- the queue --------------------------------------------------------------------------- */

uint32_t rkv_evictor_queued(const rkv_evictor *ev) {
  return ev ? ev->n_q : 0;
}

void rkv_evictor_clear(rkv_evictor *ev) {
  if (ev) ev->n_q = 0;
}

static rkv_status check_window(rkv_evictor *ev, int64_t seq, const rkv_evict_params *p,
                               const rkv_evictor_window *win) {
  /* deprecated: a device window named by the caller instead of read from the evictor's */
  if (ev->device && win && win->rows) {
    if (win->oldest < 0 || win->oldest >= p->window)
      return rkvi_fail(ev->err, RKV_ERR_INVALID_ARG, "add %lld: window row %d not in [0, %d)",
                       (long long)seq, win->oldest, p->window);
    return RKV_OK;
  }
  const rkv_qwindow *qw = ev->cfg.qwindow;
  if (!qw || rkvi_qwindow_config(qw)->window != (uint32_t)p->window)
    return rkvi_fail(ev->err, RKV_ERR_INVALID_ARG,
                     "add %lld: policy %s reads a query window of %d rows and the evictor has %s",
                     (long long)seq, rkv_evict_policy_name(p->policy), p->window,
                     qw ? "one of another size" : "none (give it one, rkv_evictor_config.qwindow)");
  if (!rkvi_qwindow_has(qw, seq))
    return rkvi_fail(ev->err, RKV_ERR_NOT_FOUND, "add %lld: no query window for the sequence",
                     (long long)seq);
  return RKV_OK;
}

rkv_status rkv_evictor_add(rkv_evictor *ev, int64_t seq, int32_t layer,
                           const rkv_evict_params *params, const rkv_evictor_window *win) {
  if (!ev) return RKV_ERR_INVALID_ARG;
  const rkv_evict_params *p = params ? params : &ev->cfg.params;
  char e2[RKV_ERRBUF];
  if (rkv_evict_params_validate(p, e2, sizeof e2) != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_INVALID_ARG, "add %lld: params: %s", (long long)seq, e2);
  if (layer != RKV_EVICTOR_ALL_LAYERS && (layer < 0 || (uint32_t)layer >= ev->L))
    return rkvi_fail(ev->err, RKV_ERR_INVALID_ARG, "add %lld: layer %d not in [0, %u) or -1 (all)",
                     (long long)seq, layer, ev->L);
  if (layer != RKV_EVICTOR_ALL_LAYERS && ev->cfg.granularity != RKV_EVICT_GRAN_STREAM)
    return rkvi_fail(ev->err, RKV_ERR_INVALID_ARG,
                     "add %lld: one layer at granularity %s (its groups span every layer)",
                     (long long)seq, rkv_evict_granularity_name(ev->cfg.granularity));
  if (!rkv_blockmgr_seq_exists(ev->bm, seq))
    return rkvi_fail(ev->err, RKV_ERR_NOT_FOUND, "add %lld: unknown sequence", (long long)seq);
  for (uint32_t i = 0; i < ev->n_q; i++)
    if (ev->q[i].seq == seq)
      return rkvi_fail(ev->err, RKV_ERR_EXISTS, "add %lld: already queued", (long long)seq);
  if (ev->n_q == ev->cfg.max_seqs)
    return rkvi_fail(ev->err, RKV_ERR_CAPACITY, "add %lld: %u sequences queued (max_seqs)",
                     (long long)seq, ev->n_q);
  const rkv_evict_policy_info info = rkvi_evictor_policy(p->policy);
  if (info.evicts && ev->device && !info.device_variant)
    return rkvi_fail(ev->err, RKV_ERR_UNSUPPORTED,
                     "add %lld: policy %s has no device variant (the policy table's device "
                     "column)",
                     (long long)seq, rkv_evict_policy_name(p->policy));
  if (info.evicts && info.needs_query_window) RKV_TRY(check_window(ev, seq, p, win));
  if (check_kernels(ev, p, e2, sizeof e2) != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_UNSUPPORTED, "add %lld: %s", (long long)seq, e2);
  rkvi_evq *q = &ev->q[ev->n_q++];
  memset(q, 0, sizeof *q);
  q->seq = seq;
  q->layer = layer;
  q->params = *p;
  if (ev->device && info.evicts && info.needs_query_window) {
    if (win && win->rows)
      q->win = *win;
    else
      q->from_window = true; /* found in the evictor's window when it runs */
  }
  return RKV_OK;
}
