/* The evictor's device path (rkv/evictor.h) for pools whose memory is not the host's (CUDA, or
 * the emulated device of <rkv/buffer_emu.h>). A run, in stream order and without waiting:
 *   host    every queued sequence is checked (fresh blocks, protected prefix), cut to its
 *           protected prefix + budget (rkv_blockmgr_compact_uniform: tails freed now, shared
 *           leading blocks after the prefix replaced) and described (one descriptor per
 *           stream, the old and new rows from the first block after the protected prefix, so
 *           the kernels select among the tokens after it, as the CPU path does);
 *   upload  the descriptors of every sequence with the same parameters are packed into one
 *           pinned arena and copied up once;
 *   launch  one batched compression per parameter set scores the old rows, selects per stream
 *           (or per group of streams at a coarser granularity: every stream of a sequence is
 *           listed, so the launch aggregates the group's scores itself) and moves the kept
 *           tokens into the new rows (the CUDA kernels, or their host twin evictor_emu.c on the
 *           emulated device).
 * Stream order makes the early free safe: any later writer of a freed block is enqueued after
 * the launch. */
#include <stdint.h>
#include <string.h>

#include <rkv/buffer_emu.h>

#include "evict_internal.h"
#include "evictor_internal.h"
#include "qwindow_internal.h"

static rkv_status be_fail(rkv_evictor *ev, rkv_status st, const char *what) {
  return rkvi_fail(ev->err, st, "%s: %s (%s)", what, rkv_status_str(st),
                   rkv_backend_last_error(ev->be));
}

/* After the first cut every failure breaks the run: a device fault keeps the backend's
 * RKV_ERR_CUDA, anything else is RKV_ERR_INTERNAL (rkv/evictor.h: only those two mean that). */
static rkv_status broke(rkv_evictor *ev, rkv_status st, const char *what) {
  rkvi_fail(ev->err, st, "%s: %s (%s)", what, rkv_status_str(st), rkv_backend_last_error(ev->be));
  return st == RKV_ERR_CUDA ? st : RKV_ERR_INTERNAL;
}

/* Grows a host array to hold `need` elements (contents kept). */
static rkv_status hgrow(rkv_evictor *ev, void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return RKV_OK;
  size_t nc = *cap ? *cap : 64;
  while (nc < need) nc *= 2;
  void *n = rkvi_realloc(ev->al, *p, *cap * elem, nc * elem, 16);
  if (!n) return rkvi_fail(ev->err, RKV_ERR_NO_MEMORY, "run: host scratch of %zu bytes", nc * elem);
  *p = n;
  *cap = nc;
  return RKV_OK;
}

/* Grows a buffer to at least `need` bytes, to a power of two (growth waits for the stream: it
 * happens in the first runs only). */
static rkv_status bgrow(rkv_evictor *ev, rkv_buffer *b, size_t need, const char *what) {
  if (need <= rkv_buffer_size(b)) return RKV_OK;
  size_t n = 4096;
  while (n < need) n *= 2;
  const rkv_status st = rkv_buffer_reserve(b, n);
  return st == RKV_OK ? RKV_OK : be_fail(ev, st, what);
}

rkv_status rkvi_evdev_create(rkv_evictor *ev) {
  rkvi_evdev *d = rkvi_calloc(ev->al, sizeof *d, 16);
  if (!d) return rkvi_fail(ev->err, RKV_ERR_NO_MEMORY, "device state");
  ev->dev = d;
  d->launch_streams = RKVI_EVICT_CUDA_MAX_STREAMS;
  d->sim_len_max = RKVI_EVICT_CUDA_MAX_SIM_LEN;
  rkv_status st = rkv_buffer_create(ev->be, RKV_BUFFER_DEVICE, 0, &d->desc);
  if (st == RKV_OK) st = rkv_buffer_create(ev->be, RKV_BUFFER_DEVICE, 0, &d->ws);
  if (st == RKV_OK) st = rkv_buffer_create(ev->be, RKV_BUFFER_HOST_PINNED, 0, &d->stage);
  return st == RKV_OK ? RKV_OK : be_fail(ev, st, "device buffers");
}

void rkvi_evictor_set_launch_streams(rkv_evictor *ev, uint32_t n) {
  if (ev && ev->dev)
    ev->dev->launch_streams =
        n && n < RKVI_EVICT_CUDA_MAX_STREAMS ? n : RKVI_EVICT_CUDA_MAX_STREAMS;
}

void rkvi_evictor_set_sim_len_max(rkv_evictor *ev, int32_t n) {
  if (ev && ev->dev)
    ev->dev->sim_len_max =
        n > 0 && n < RKVI_EVICT_CUDA_MAX_SIM_LEN ? n : RKVI_EVICT_CUDA_MAX_SIM_LEN;
}

void rkvi_evdev_destroy(rkv_evictor *ev) {
  rkvi_evdev *d = ev->dev;
  if (!d) return;
  const rkv_allocator *a = ev->al;
  rkv_buffer_destroy(d->desc);
  rkv_buffer_destroy(d->ws);
  rkv_buffer_destroy(d->stage);
  rkvi_free(a, d->maps, d->maps_cap * sizeof *d->maps);
  rkvi_free(a, d->streams, d->streams_cap * sizeof *d->streams);
  rkvi_free(a, d->oldest, d->oldest_cap * sizeof(int32_t));
  rkvi_free(a, d->old, d->old_cap * sizeof(int32_t));
  rkvi_free(a, d->newb, d->newb_cap * sizeof(int32_t));
  rkvi_free(a, d->freed, d->freed_cap * sizeof(int32_t));
  for (size_t i = 0; i < 7; i++) rkvi_free(a, d->escr[i], d->escr_cap[i]);
  rkvi_free(a, d, sizeof *d);
  ev->dev = NULL;
}

size_t rkvi_evdev_memory_bytes(const rkv_evictor *ev) {
  const rkvi_evdev *d = ev->dev;
  if (!d) return 0;
  size_t n = rkv_buffer_size(d->desc) + rkv_buffer_size(d->ws) + rkv_buffer_size(d->stage);
  n += d->maps_cap * sizeof *d->maps + d->streams_cap * sizeof *d->streams;
  n += (d->oldest_cap + d->old_cap + d->newb_cap + d->freed_cap) * sizeof(int32_t);
  for (size_t i = 0; i < 7; i++) n += d->escr_cap[i];
  return n;
}

/* ---- reserve: every allocation of a run before its first cut ----------------------------- */

typedef struct evsize {
  uint64_t streams, old, fresh;
  int32_t max_len;
} evsize;

/* The streams one queued compression puts in its launch: every layer's, or one layer's. */
static uint32_t entry_streams(const rkv_evictor *ev, const rkvi_evq *q) {
  return (q->layer < 0 ? ev->L : 1) * ev->Hkv;
}

/* The longest of the streams one queued compression cuts (0 for an unknown sequence). */
static int32_t longest_stream(const rkv_evictor *ev, const rkvi_evq *q) {
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

/* What one queued compression adds to a run's arrays (an unknown sequence adds nothing: it
 * fails at run without a cut). */
static void size_one(const rkv_evictor *ev, const rkvi_evq *q, evsize *s) {
  uint32_t total = 0, excl = 0;
  if (rkv_blockmgr_seq_footprint(ev->bm, q->seq, &total, &excl) != RKV_OK) return;
  const int32_t len = longest_stream(ev, q);
  if (len > s->max_len) s->max_len = len;
  const uint64_t per = entry_streams(ev, q);
  s->streams += per;
  s->old += total;
  s->fresh += per * (((uint64_t)q->params.budget + ev->bs - 1) / ev->bs);
}

/* The launch's scratch: the CUDA workspace or the emulated kernel's arrays, for the largest
 * parameter set queued. */
static rkv_status reserve_kernel(rkv_evictor *ev, const evsize *s) {
  size_t ws = 0, esz[7] = {0};
  const uint32_t ns =
      s->streams < ev->dev->launch_streams ? (uint32_t)s->streams : ev->dev->launch_streams;
  for (uint32_t i = 0; i < ev->n_q; i++) {
    const rkv_evict_params *p = &ev->q[i].params;
    if (!rkvi_evictor_policy(p->policy).evicts) continue;
    if (ev->emu) {
      size_t sz[7];
      if (rkvi_evemu_sizes(ev, p, ev->cfg.granularity, ns, s->max_len, sz) != RKV_OK) continue;
      for (size_t k = 0; k < 7; k++) esz[k] = sz[k] > esz[k] ? sz[k] : esz[k];
    } else {
      size_t n = 0;
      if (rkvi_evict_cuda_workspace_size(p, ev->pool, ns, ev->Hq / ev->Hkv, s->max_len, &n) ==
              RKV_OK &&
          n > ws)
        ws = n;
    }
  }
  if (ev->emu) RKV_TRY(rkvi_evemu_reserve(ev, esz));
  return bgrow(ev, ev->dev->ws, ws + 64, "run: workspace");
}

static bool same_params(const rkv_evict_params *a, const rkv_evict_params *b);

/* Gives every queued entry that evicts the index of its parameter set's launch, sets in the
 * order they first appear (queued A, B, A: launches 0, 1, 0); returns how many. O(queue x
 * distinct sets). */
static uint32_t group_launches(rkv_evictor *ev) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < ev->n_q; i++) ev->q[i].launch = UINT32_MAX;
  for (uint32_t lead = 0; lead < ev->n_q; lead++) {
    const rkv_evict_params *p = &ev->q[lead].params;
    if (ev->q[lead].launch != UINT32_MAX || !rkvi_evictor_policy(p->policy).evicts) continue;
    for (uint32_t i = lead; i < ev->n_q; i++)
      if (ev->q[i].launch == UINT32_MAX && same_params(&ev->q[i].params, p)) ev->q[i].launch = n;
    n++;
  }
  return n;
}

rkv_status rkvi_evdev_reserve(rkv_evictor *ev) {
  rkvi_evdev *d = ev->dev;
  d->launches = group_launches(ev);
  evsize s = {0, 0, 0, 0};
  for (uint32_t i = 0; i < ev->n_q; i++)
    if (rkvi_evictor_policy(ev->q[i].params.policy).evicts) size_one(ev, &ev->q[i], &s);
  if (!s.streams) return RKV_OK;
  const uint32_t per = ev->L * ev->Hkv;
  if (per > d->launch_streams)
    return rkvi_fail(ev->err, RKV_ERR_UNSUPPORTED,
                     "run: a sequence of %u streams (layers x kv heads) exceeds one device "
                     "launch's %u",
                     per, d->launch_streams);
  if (s.streams + s.old + s.fresh > ((uint64_t)1 << 31))
    return rkvi_fail(ev->err, RKV_ERR_CAPACITY, "run: %llu streams of %llu blocks",
                     (unsigned long long)s.streams, (unsigned long long)s.old);
  RKV_TRY(hgrow(ev, (void **)&d->maps, &d->maps_cap, s.streams + per, sizeof *d->maps));
  RKV_TRY(hgrow(ev, (void **)&d->streams, &d->streams_cap, s.streams + per, sizeof *d->streams));
  RKV_TRY(hgrow(ev, (void **)&d->oldest, &d->oldest_cap, s.streams + per, sizeof(int32_t)));
  RKV_TRY(hgrow(ev, (void **)&d->old, &d->old_cap, s.old + per, sizeof(int32_t)));
  RKV_TRY(hgrow(ev, (void **)&d->newb, &d->newb_cap, s.fresh + 1, sizeof(int32_t)));
  RKV_TRY(hgrow(ev, (void **)&d->freed, &d->freed_cap, s.old + 1, sizeof(int32_t)));
  size_t bytes = 0;
  if (rkvi_evict_cuda_pack(d->streams, (uint32_t)s.streams, d->old, (uint32_t)s.old, d->newb,
                           (uint32_t)s.fresh, d->freed, (uint32_t)s.old, NULL, 0, NULL, NULL,
                           &bytes) != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "run: descriptor size");
  /* every launch packs at its own offset: per launch up to 4 sections' alignment and its
   * offset's (rkvi_evict_cuda_pack aligns sections to 256 bytes). A parameter set splits
   * where the next sequence would overfill a launch, so two consecutive launches of a set
   * hold more than launch_streams streams: at most 2 x streams / launch_streams + 1 each. */
  const uint64_t splits = 2 * s.streams / d->launch_streams;
  bytes += ((size_t)d->launches + (size_t)splits) * 5 * 256;
  RKV_TRY(bgrow(ev, d->stage, bytes, "run: staging arena"));
  RKV_TRY(bgrow(ev, d->desc, bytes, "run: descriptors"));
  return reserve_kernel(ev, &s);
}

/* ---- run --------------------------------------------------------------------------------- */

/* A launch being built: every queued sequence with the same parameters. */
typedef struct evbatch {
  const rkv_evict_params *p;
  uint32_t n_streams, n_old, n_new;
  int32_t max_len;
  uintptr_t qbase; /* the lowest window address of the run: descriptors are offsets from it */
} evbatch;

/* An empty launch of parameter set p (NULL: the set's first sequence names it). */
static void batch_start(evbatch *x, const rkv_evict_params *p, uintptr_t qbase) {
  memset(x, 0, sizeof *x);
  x->p = p;
  x->qbase = qbase;
}

/* R-KV's kernels take streams of at most sim_len_max tokens after the prefix: the launch
 * would refuse a longer one after the cut, so it is refused here, before anything moves. */
static rkv_status sim_len_check(rkv_evictor *ev, const rkvi_evq *q, int32_t protect) {
  if (q->params.policy != RKV_EVICT_RKV) return RKV_OK;
  const int32_t n = longest_stream(ev, q) - protect;
  if (n > ev->dev->sim_len_max)
    return rkvi_fail(ev->err, RKV_ERR_UNSUPPORTED,
                     "compress %lld: a stream of %d tokens after its protected prefix is longer "
                     "than the device R-KV kernels take (%d)",
                     (long long)q->seq, n, ev->dev->sim_len_max);
  return RKV_OK;
}

/* Refusals before the cut: the sequence stays as it is. *protect: its protected prefix. */
static rkv_status precheck(rkv_evictor *ev, const rkvi_evq *q, int32_t *protect) {
  if (!rkv_blockmgr_seq_exists(ev->bm, q->seq))
    return rkvi_fail(ev->err, RKV_ERR_NOT_FOUND,
                     "compress %lld: the sequence left the block manager", (long long)q->seq);
  if (q->from_window && !q->win.rows)
    return rkvi_fail(ev->err, RKV_ERR_NOT_FOUND,
                     "compress %lld: the sequence left the query window", (long long)q->seq);
  /* as on a CPU pool: scores read all `window` rows, so all must have been pushed */
  if (q->from_window && q->win_pushed < q->params.window)
    return rkvi_fail(ev->err, RKV_ERR_STATE,
                     "compress %lld: its query window holds %lld of %d rows", (long long)q->seq,
                     (long long)q->win_pushed, q->params.window);
  /* The kernels see each stream from its first unprotected block on (describe): a prefix
   * that ends inside a block would leave that block's tail to them. Prefix caching protects
   * whole blocks. */
  const int32_t P = *protect = rkv_blockmgr_seq_protected(ev->bm, q->seq);
  if (P % (int32_t)ev->bs != 0)
    return rkvi_fail(ev->err, RKV_ERR_UNSUPPORTED,
                     "compress %lld: a protected prefix of %d tokens is not whole %u-token "
                     "blocks (the device eviction protects whole blocks, as prefix caching does)",
                     (long long)q->seq, P, ev->bs);
  RKV_TRY(sim_len_check(ev, q, P));
  /* A shared selection needs every stream listed, all of one length (the batch's rule) */
  int32_t len = 0;
  if (ev->cfg.granularity != RKV_EVICT_GRAN_STREAM &&
      rkvi_lockstep_len(ev->bm, q->seq, ev->L, ev->Hkv, &len, ev->err, sizeof ev->err) != RKV_OK)
    return RKV_ERR_STATE;
  return rkvi_evictor_fresh_check(ev, q);
}

/* Host half for one sequence: the checks, the cut, its descriptors. */
static rkv_status plan_one(rkv_evictor *ev, const rkvi_evq *q, evbatch *b, rkv_evictor_result *r) {
  rkvi_evdev *d = ev->dev;
  int32_t P = 0;
  RKV_TRY(precheck(ev, q, &P));
  uint32_t nm = 0, no = 0, nn = 0;
  rkv_status st =
      rkv_blockmgr_compact_uniform(ev->bm, q->seq, q->layer, P + q->params.budget,
                                   d->maps + b->n_streams, (uint32_t)(d->maps_cap - b->n_streams),
                                   &nm, d->old + b->n_old, (uint32_t)(d->old_cap - b->n_old), &no);
  if (st != RKV_OK) /* RKV_ERR_CAPACITY: the reservation was short */
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "compress %lld: %s", (long long)q->seq,
                     rkv_blockmgr_last_error(ev->bm));
  /* cut: from here on a failure is the evictor's bug, not the caller's */
  const rkv_compact_map *mp = d->maps + b->n_streams;
  for (uint32_t i = 0; i < nm; i++) {
    r->tokens_evicted += (uint64_t)(mp[i].old_len - mp[i].new_len);
    r->streams_compressed += mp[i].old_len > mp[i].new_len;
    if (mp[i].old_len - P > b->max_len) b->max_len = mp[i].old_len - P;
  }
  const int64_t qoff =
      q->win.rows ? (int64_t)(((uintptr_t)q->win.rows - b->qbase) / sizeof(float)) : 0;
  st = rkvi_evict_cuda_describe(ev->bm, q->seq, P, mp, nm, ev->Hq, q->params.window, qoff,
                                (int32_t)b->n_old, (int32_t)b->n_new, d->streams + b->n_streams,
                                d->newb + b->n_new, (uint32_t)(d->newb_cap - b->n_new), &nn);
  if (st != RKV_OK)
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "compress %lld: describe: %s", (long long)q->seq,
                     rkv_status_str(st));
  for (uint32_t i = 0; i < nm; i++) d->oldest[b->n_streams + i] = q->win.oldest;
  b->n_streams += nm;
  b->n_old += no;
  b->n_new += nn;
  return RKV_OK;
}

/* Device half: one upload and one launch over every stream planned so far. */
static rkv_status flush(rkv_evictor *ev, evbatch *x) {
  rkvi_evdev *d = ev->dev;
  if (!x->n_streams) return RKV_OK;
  uint32_t nf = 0;
  rkv_status st =
      rkvi_evict_cuda_freed_blocks(ev->bm, d->old, x->n_old, d->freed, (uint32_t)d->freed_cap, &nf);
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  size_t bytes = 0;
  if (st == RKV_OK)
    st = rkvi_evict_cuda_pack(d->streams, x->n_streams, d->old, x->n_old, d->newb, x->n_new,
                              d->freed, nf, NULL, 0, NULL, NULL, &bytes);
  const size_t at = (d->arena_used + 255) / 256 * 256;
  if (st != RKV_OK || at + bytes > rkv_buffer_size(d->stage) ||
      at + bytes > rkv_buffer_size(d->desc))
    return rkvi_fail(ev->err, RKV_ERR_INTERNAL, "run: descriptors: %s", rkv_status_str(st));
  /* A run's first launch reuses the arena from 0: the last run's upload may still read it,
   * unless the backend synced since (an engine's end-of-step sync usually has). */
  if (at == 0 && (st = rkvi_fence_wait(&d->staged, ev->be)) != RKV_OK)
    return broke(ev, st, "run: sync before reusing the arena");
  unsigned char *stage = rkv_buffer_ptr(d->stage), *desc = rkv_buffer_ptr(d->desc);
  st = rkvi_evict_cuda_pack(d->streams, x->n_streams, d->old, x->n_old, d->newb, x->n_new, d->freed,
                            nf, stage + at, rkv_buffer_size(d->stage) - at, desc + at, &b, &bytes);
  if (st == RKV_OK) st = rkv_buffer_copy(d->desc, at, d->stage, at, bytes);
  if (st != RKV_OK) return broke(ev, st, "run: upload");
  rkvi_fence_arm(&d->staged, ev->be);
  d->arena_used = at + bytes;
  b.group = ev->Hq / ev->Hkv;
  b.max_len = x->max_len;
  b.granularity = (uint32_t)ev->cfg.granularity;
  b.layers = ev->L;
  b.kv_heads = ev->Hkv;
  b.qwin = rkvi_evictor_policy(x->p->policy).needs_query_window ? (const float *)x->qbase : NULL;
  if (ev->emu) return rkvi_evemu_compress(ev, x->p, &b, at + bytes);
  st = rkvi_evict_cuda_compress(x->p, ev->pool, &b, rkv_buffer_ptr(d->ws), rkv_buffer_size(d->ws));
  return st == RKV_OK ? RKV_OK : broke(ev, st, "run: launch");
}

static bool same_params(const rkv_evict_params *a, const rkv_evict_params *b) {
  return a->policy == b->policy && a->budget == b->budget && a->window == b->window &&
         a->buffer == b->buffer && a->kernel == b->kernel && a->lambda == b->lambda &&
         a->threshold == b->threshold && a->sinks == b->sinks;
}

/* Where the windows read from the evictor's query window are now (registrations since the add
 * may have moved its storage). One that left the window keeps no rows, and its compression
 * fails as not found. */
static void resolve_windows(rkv_evictor *ev) {
  for (uint32_t i = 0; i < ev->n_q; i++) {
    rkvi_evq *q = &ev->q[i];
    if (!q->from_window) continue;
    q->win.rows = NULL;
    q->win.oldest = 0;
    q->win_pushed = 0;
    if (ev->cfg.qwindow)
      (void)rkvi_qwindow_rows(ev->cfg.qwindow, q->seq, &q->win.rows, &q->win.oldest,
                              &q->win_pushed);
  }
}

/* The lowest window address of the run (offsets from it are never negative). */
static uintptr_t window_base(const rkv_evictor *ev) {
  uintptr_t base = UINTPTR_MAX;
  for (uint32_t i = 0; i < ev->n_q; i++)
    if (ev->q[i].win.rows && (uintptr_t)ev->q[i].win.rows < base)
      base = (uintptr_t)ev->q[i].win.rows;
  return base == UINTPTR_MAX ? 0 : base;
}

/* One launch per distinct parameter set (rkvi_evdev_reserve grouped them): queued A, B, A
 * makes two, the sets in the order they first appear and each set's sequences in queue
 * order; a set of more than launch_streams streams continues in a further launch.
 * O(queue x launches). */
rkv_status rkvi_evdev_run(rkv_evictor *ev, rkv_evictor_result *res) {
  resolve_windows(ev);
  const uintptr_t qbase = window_base(ev);
  rkv_status ret = RKV_OK;
  char first[RKV_ERRBUF] = "";
  ev->dev->arena_used = 0;
  for (uint32_t k = 0; k < ev->dev->launches; k++) {
    evbatch x;
    batch_start(&x, NULL, qbase);
    for (uint32_t i = 0; i < ev->n_q; i++) {
      const rkvi_evq *q = &ev->q[i];
      if (q->launch != k) continue;
      if (!x.p) x.p = &q->params;
      if (x.n_streams + entry_streams(ev, q) > ev->dev->launch_streams) {
        /* this launch is full: it goes now, and the set continues in a fresh one */
        RKV_TRY(flush(ev, &x));
        batch_start(&x, x.p, qbase);
      }
      const uint32_t free0 = rkv_blockmgr_free_blocks(ev->bm);
      res[i].status = plan_one(ev, q, &x, &res[i]);
      if (res[i].status == RKV_ERR_INTERNAL) return RKV_ERR_INTERNAL;
      if (res[i].status != RKV_OK) { /* refused before the cut: this one stays as it is */
        if (ret == RKV_OK) {
          ret = res[i].status;
          memcpy(first, ev->err, sizeof first);
        }
        continue;
      }
      const uint32_t free1 = rkv_blockmgr_free_blocks(ev->bm);
      res[i].blocks_freed = free1 > free0 ? free1 - free0 : 0;
      res[i].compressed = true;
    }
    RKV_TRY(flush(ev, &x));
  }
  if (ret != RKV_OK) memcpy(ev->err, first, sizeof first);
  return ret;
}
