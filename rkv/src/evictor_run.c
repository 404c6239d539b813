/* rkv_evictor_run and _check (rkv/evictor.h), and the host path of a run: each queued sequence
 * goes through rkv_evict_layer (every layer, STREAM granularity) or rkv_evict_seq (a coarser
 * one) on the CPU pool. Everything a sequence can fail on is checked before its first layer
 * changes, so a failed sequence stays as it was. */
#include <string.h>

#include "evictor_internal.h"
#include "qwindow_internal.h"

/* The longest stream of the queued compression (its layer, or every layer). */
static int32_t longest(const rkv_evictor *ev, const rkvi_evq *q) {
  const uint32_t l0 = q->layer < 0 ? 0 : (uint32_t)q->layer;
  const uint32_t l1 = q->layer < 0 ? ev->L : l0 + 1;
  int32_t most = 0;
  for (uint32_t l = l0; l < l1; l++)
    for (uint32_t h = 0; h < ev->Hkv; h++) {
      int32_t len = 0;
      (void)rkv_blockmgr_stream_len(ev->bm, q->seq, l, h, &len);
      if (len > most) most = len;
    }
  return most;
}

static rkv_status ws_size(const rkv_evictor *ev, const rkv_evict_params *p, int32_t len,
                          size_t *need) {
  if (ev->cfg.granularity == RKV_EVICT_GRAN_STREAM)
    return rkv_evict_workspace_size(p, ev->Hkv, ev->Hq, ev->d, len, need);
  return rkv_evict_seq_workspace_size(p, ev->cfg.granularity, ev->L, ev->Hkv, ev->Hq, ev->d, len,
                                      need);
}

/* Grows a scratch buffer (contents not kept) to at least `need` bytes. */
static rkv_status grow(rkv_evictor *ev, void **p, size_t *cap, size_t need, const char *what) {
  size_t tried = 0;
  if (rkvi_grow_scratch(ev->al, p, cap, need, &tried)) return RKV_OK;
  return rkvi_fail(ev->err, RKV_ERR_NO_MEMORY, "run: %s of %zu bytes", what, tried);
}

/* The workspace of the largest queued compression and one layer's window. */
static rkv_status host_reserve(rkv_evictor *ev) {
  size_t ws = 0;
  for (uint32_t i = 0; i < ev->n_q; i++) {
    const rkvi_evq *q = &ev->q[i];
    if (!rkvi_evictor_policy(q->params.policy).evicts) continue;
    size_t need = 0;
    if (ws_size(ev, &q->params, longest(ev, q), &need) != RKV_OK) continue; /* fails at run */
    if (need > ws) ws = need;
  }
  if (ws) RKV_TRY(grow(ev, &ev->ws, &ev->ws_cap, ws + 64, "eviction workspace"));
  if (!ev->cfg.qwindow) return RKV_OK;
  const size_t qb = (size_t)ev->Hq * rkvi_qwindow_config(ev->cfg.qwindow)->window * ev->d * 4;
  return grow(ev, (void **)&ev->qbuf, &ev->qbuf_cap, qb, "query-window scratch");
}

/* Every layer rkv_evict_layer will read holds `window` query rows: checked for all layers
 * before the first is compacted. */
static rkv_status host_windows(rkv_evictor *ev, const rkvi_evq *q) {
  const uint32_t l0 = q->layer < 0 ? 0 : (uint32_t)q->layer;
  const uint32_t l1 = q->layer < 0 ? ev->L : l0 + 1;
  if (!rkvi_qwindow_has(ev->cfg.qwindow, q->seq))
    return rkvi_fail(ev->err, RKV_ERR_NOT_FOUND, "compress %lld: no query window",
                     (long long)q->seq);
  for (uint32_t l = l0; l < l1; l++) {
    uint32_t count = 0;
    (void)rkv_qwindow_get(ev->cfg.qwindow, q->seq, l, ev->qbuf, &count);
    if (count < (uint32_t)q->params.window)
      return rkvi_fail(ev->err, RKV_ERR_STATE,
                       "compress %lld: query window of layer %u holds %u of %d rows",
                       (long long)q->seq, l, count, q->params.window);
  }
  return RKV_OK;
}

/* The fresh blocks shared leading blocks (a fork) need, for every layer at once: refused
 * with RKV_ERR_NO_BLOCKS before any change when they are not free (both backends). */
rkv_status rkvi_evictor_fresh_check(rkv_evictor *ev, const rkvi_evq *q) {
  uint32_t fresh = 0;
  const int32_t keep = rkv_blockmgr_seq_protected(ev->bm, q->seq) + q->params.budget;
  if (rkv_blockmgr_compact_fresh_bound(ev->bm, q->seq, q->layer, keep, &fresh) != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "compress %lld: %s", (long long)q->seq,
                     rkv_blockmgr_last_error(ev->bm));
  const uint32_t free0 = rkv_blockmgr_free_blocks(ev->bm);
  if (fresh > free0)
    return rkvi_fail(ev->err, RKV_ERR_NO_BLOCKS,
                     "compress %lld: its shared blocks need %u fresh blocks, %u free",
                     (long long)q->seq, fresh, free0);
  return RKV_OK;
}

static void add_result(rkv_evictor_result *r, const rkv_evict_result *e) {
  r->streams_compressed += e->streams_compressed;
  r->tokens_evicted += e->tokens_evicted;
}

/* One queued compression on the CPU pool; the sequence changes only when it succeeds. */
static rkv_status host_one(rkv_evictor *ev, const rkvi_evq *q, rkv_evictor_result *r) {
  const rkv_evict_params *p = &q->params;
  const rkv_evict_policy_info info = rkvi_evictor_policy(p->policy);
  if (!info.evicts) return RKV_OK;
  if (!rkv_blockmgr_seq_exists(ev->bm, q->seq))
    return rkvi_fail(ev->err, RKV_ERR_NOT_FOUND,
                     "compress %lld: the sequence left the block "
                     "manager",
                     (long long)q->seq);
  const rkv_qwindow *qw = info.needs_query_window ? ev->cfg.qwindow : NULL;
  if (qw) RKV_TRY(host_windows(ev, q));
  RKV_TRY(rkvi_evictor_fresh_check(ev, q));
  size_t need = 0;
  const rkv_status sz = ws_size(ev, p, longest(ev, q), &need);
  if (sz != RKV_OK)
    return rkvi_fail(ev->err, sz, "compress %lld: no workspace size for its streams",
                     (long long)q->seq);
  if (need > ev->ws_cap)
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "compress %lld: workspace not reserved",
                     (long long)q->seq);
  char e2[RKV_ERRBUF] = "";
  rkv_evict_result res;
  memset(&res, 0, sizeof res);
  if (ev->cfg.granularity != RKV_EVICT_GRAN_STREAM) {
    const rkv_status st = rkv_evict_seq(p, ev->cfg.granularity, ev->bm, ev->pool, qw, ev->Hq,
                                        q->seq, ev->ws, ev->ws_cap, &res, e2, sizeof e2);
    if (st != RKV_OK)
      return rkvi_fail(ev->err, st, "compress %lld (%s): %s", (long long)q->seq,
                       rkv_evict_granularity_name(ev->cfg.granularity), e2);
    add_result(r, &res);
    return RKV_OK;
  }
  const uint32_t l0 = q->layer < 0 ? 0 : (uint32_t)q->layer;
  const uint32_t l1 = q->layer < 0 ? ev->L : l0 + 1;
  /* One layer per call: the copies of cached blocks are decided once for all of them, as the
   * device path's one cut decides them */
  uint32_t copies = 0;
  const int32_t keep = rkv_blockmgr_seq_protected(ev->bm, q->seq) + p->budget;
  if (l1 - l0 > 1 &&
      rkv_blockmgr_compact_prepare(ev->bm, q->seq, q->layer, keep, &copies) != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "compress %lld: %s", (long long)q->seq,
                     rkv_blockmgr_last_error(ev->bm));
  for (uint32_t l = l0; l < l1; l++) {
    memset(&res, 0, sizeof res);
    const rkv_status st = rkv_evict_layer_ex(p, ev->bm, ev->pool, qw, ev->Hq, q->seq, l, ev->ws,
                                             ev->ws_cap, &res, e2, sizeof e2);
    /* everything rkv_evict_layer refuses was checked above: past the first layer it is a bug */
    if (st != RKV_OK)
      return rkvi_fail(ev->err, l > l0 ? RKV_ERR_INTERNAL : st, "compress %lld layer %u: %s",
                       (long long)q->seq, l, e2);
    add_result(r, &res);
  }
  return RKV_OK;
}

static rkv_status host_run(rkv_evictor *ev, rkv_evictor_result *res) {
  rkv_status ret = RKV_OK;
  char first[RKV_ERRBUF] = "";
  for (uint32_t i = 0; i < ev->n_q; i++) {
    const uint32_t free0 = rkv_blockmgr_free_blocks(ev->bm);
    res[i].status = host_one(ev, &ev->q[i], &res[i]);
    const uint32_t free1 = rkv_blockmgr_free_blocks(ev->bm);
    if (res[i].status == RKV_OK) {
      res[i].compressed = rkvi_evictor_policy(ev->q[i].params.policy).evicts;
      res[i].blocks_freed = free1 > free0 ? free1 - free0 : 0;
    } else {
      res[i].streams_compressed = 0;
      res[i].tokens_evicted = 0;
      if (ret == RKV_OK) {
        ret = res[i].status;
        memcpy(first, ev->err, sizeof first);
      }
      if (res[i].status == RKV_ERR_INTERNAL) break; /* part-way: the state is undefined */
    }
  }
  if (ret != RKV_OK) memcpy(ev->err, first, sizeof first);
  return ret;
}

rkv_status rkv_evictor_run(rkv_evictor *ev, rkv_evictor_result *results, uint32_t cap,
                           uint32_t *n_results) {
  if (!ev) return RKV_ERR_INVALID_ARG;
  if (!results || !n_results)
    return rkvi_fail(ev->err, RKV_ERR_INVALID_ARG, "run: results and n_results are required");
  if (!ev->n_q) return rkvi_fail(ev->err, RKV_ERR_STATE, "run: nothing queued");
  if (cap < ev->n_q)
    return rkvi_fail(ev->err, RKV_ERR_CAPACITY, "run: %u results for %u queued", cap, ev->n_q);
  RKV_TRY(ev->device ? rkvi_evdev_reserve(ev) : host_reserve(ev));
  memset(results, 0, (size_t)ev->n_q * sizeof *results);
  for (uint32_t i = 0; i < ev->n_q; i++) results[i].seq = ev->q[i].seq;
  ev->err[0] = '\0';
  const rkv_status ret = ev->device ? rkvi_evdev_run(ev, results) : host_run(ev, results);
  /* past a cut something broke (a bug, a device fault): no result may read as a success */
  const bool broken = ret == RKV_ERR_INTERNAL || ret == RKV_ERR_CUDA;
  for (uint32_t i = 0; broken && i < ev->n_q; i++)
    if (results[i].status == RKV_OK) results[i].status = ret;
  *n_results = ev->n_q;
  ev->n_q = 0;
  return ret;
}

/* ---- check ------------------------------------------------------------------------------- */

static rkv_status check_item(const rkv_evictor *ev, uint32_t i, char *why, size_t len) {
  const rkvi_evq *q = &ev->q[i];
  char e2[RKV_ERRBUF];
  if (rkv_evict_params_validate(&q->params, e2, sizeof e2) != RKV_OK)
    return rkvi_failn(why, len, RKV_ERR_CORRUPT, "queued %lld: params: %s", (long long)q->seq, e2);
  if (q->layer != RKV_EVICTOR_ALL_LAYERS &&
      (q->layer < 0 || (uint32_t)q->layer >= ev->L || ev->cfg.granularity != RKV_EVICT_GRAN_STREAM))
    return rkvi_failn(why, len, RKV_ERR_CORRUPT, "queued %lld: layer %d", (long long)q->seq,
                      q->layer);
  for (uint32_t k = 0; k < i; k++)
    if (ev->q[k].seq == q->seq)
      return rkvi_failn(why, len, RKV_ERR_CORRUPT, "sequence %lld queued twice", (long long)q->seq);
  const rkv_evict_policy_info info = rkvi_evictor_policy(q->params.policy);
  if (ev->device && info.evicts && info.needs_query_window && !q->win.rows && !q->from_window)
    return rkvi_failn(why, len, RKV_ERR_CORRUPT, "queued %lld: no device window",
                      (long long)q->seq);
  return RKV_OK;
}

rkv_status rkv_evictor_check(const rkv_evictor *evc) {
  if (!evc) return RKV_ERR_INVALID_ARG;
  rkv_evictor *ev = (rkv_evictor *)evc; /* only the error text changes */
  if (ev->n_q > ev->cfg.max_seqs)
    return rkvi_fail(ev->err, RKV_ERR_CORRUPT, "check: %u queued > max_seqs %u", ev->n_q,
                     ev->cfg.max_seqs);
  char why[RKV_ERRBUF];
  for (uint32_t i = 0; i < ev->n_q; i++)
    if (check_item(ev, i, why, sizeof why) != RKV_OK)
      return rkvi_fail(ev->err, RKV_ERR_CORRUPT, "check: %s", why);
  if (ev->device != !rkv_backend_device_is_host(ev->be) || (ev->device && !ev->dev))
    return rkvi_fail(ev->err, RKV_ERR_CORRUPT, "check: device state does not match the pool");
  if (ev->cfg.qwindow && rkv_qwindow_check(ev->cfg.qwindow) != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_CORRUPT, "check: query window: %s",
                     rkv_qwindow_last_error(ev->cfg.qwindow));
  return RKV_OK;
}
