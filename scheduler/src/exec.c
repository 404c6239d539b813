/* The plan executor (rkv/executor.h): applies a scheduler plan to a KV pool — swaps,
 * copy-on-write copies, query-window life cycle, the per-head table mirror kept current by
 * deltas — then runs each layer's K/V write and paged attention and, at the end of the step,
 * the flagged compressions. Engines only bring Q/K/V.
 *
 * The table mirror is indexed by the block manager's dense sequence index
 * (rkv_blockmgr_seq_index): rows [index][stream][stride] and lengths [index][stream], read by
 * attention through rkv_block_rows. A mirror entry remembers which id it was synced for;
 * between syncs a decode step only adds its tokens to the lengths, and a full or delta sync
 * (rkv_blockmgr_sync_rows) runs only when the plan says the rows changed or this executor
 * compacted the sequence. */
#include <stddef.h>
#include <string.h>

#include <rkv/buffer.h>
#include <rkv/evictor.h>
#include <rkv/executor.h>

#include "exec_device.h"
#include "qwindow_internal.h"
#include "rkv_internal.h"

struct rkv_exec {
  rkv_exec_config cfg;
  rkv_allocator alloc_copy;
  const rkv_allocator *al;
  rkv_blockmgr *bm;
  rkv_kv_pool *pool;
  uint32_t L, Hq, Hkv, d, S, bs;
  int32_t bs_shift; /* log2(bs) when bs is a power of two, else -1 (blocks_of) */
  float scale;
  size_t block_bytes;

  /* table mirror */
  uint32_t nidx;   /* the block manager's max_seqs */
  uint32_t stride; /* blocks per row */
  int32_t *rows;   /* [nidx][S][stride] */
  int32_t *lens;   /* [nidx][S] */
  int64_t *owner;  /* [nidx] id the entry was synced for, -1 = none */
  uint8_t *stale;  /* [nidx] compacted since the last sync */
  /* [nidx] every stream of the entry has xlen[] tokens (lockstep): lens[] is then not kept
   * current, and a step's length update is one add */
  uint8_t *uniform;
  int32_t *xlen;

  rkv_qwindow *qw;          /* NULL when the default policy scores without queries; on the pool's
                             * backend (device memory on a device pool) */
  rkvi_xdev *dev;           /* device-side state when the pool's memory is not the host's */
  rkv_evictor *evr;         /* runs the compressions on the pool (any backend); NULL without one */
  rkv_evictor_result *eres; /* [max_seqs] the last run's results */
  uint32_t *eidx;           /* [max_seqs] plan index of each queued compression */
  unsigned char *host;      /* swap pool [host_blocks][block_bytes] */
  rkv_buffer *host_buf;     /* the swap pool's pinned memory on a device backend, or NULL */
  float *host_scores;       /* [host_blocks][block_size] the swapped slots' attention mass: a
                             * swap restores H2O's ranking with the KV */

  /* the open step */
  bool open;
  const rkv_sched_plan *plan;
  uint8_t *layer_done; /* [L] */
  bool h2o;
  bool mass[RKV_EVICT_POLICY_COUNT_]; /* the policy table's needs_attention_mass, per id */
  int32_t *seq_row;                   /* [max_seqs] index * S */
  int32_t *blen;                      /* [max_seqs] the step's uniform lengths, plan order */
  int32_t *all_indptr;                /* [max_seqs + 1] rows of every plan sequence */
  bool all_uniform;                   /* every scheduled sequence's streams share one length */
  int64_t *ids;                       /* [max_seqs] */
  int32_t *q_indptr;                  /* [max_seqs + 1] prefill group rows, relative */
  const int64_t *slots; /* the plan's slot mapping (layer l at slots + l * stride), or NULL:
                         * K/V writes then find their slots through the mirror */
  size_t slot_layer_stride;
  void *ws; /* plan, attention scratch */
  size_t ws_cap;
  size_t bytes; /* allocated at create */

  char err[RKV_ERRBUF];
};

static rkv_status cfg_err(char *err, size_t len, const char *msg) {
  return rkvi_failn(err, len, RKV_ERR_INVALID_ARG, "rkv_exec_create: %s", msg);
}

/* Grows a scratch buffer (contents not kept) to at least `need` bytes. */
static rkv_status grow(rkv_exec *x, void **p, size_t *cap, size_t need, const char *what) {
  size_t tried = 0;
  if (rkvi_grow_scratch(x->al, p, cap, need, &tried)) return RKV_OK;
  return rkvi_fail(x->err, RKV_ERR_NO_MEMORY, "executor: %s of %zu bytes", what, tried);
}

/* The swap pool: pinned memory of a device pool's backend (a swap then moves at the link's
 * full speed, and the transfer's copies need no staging by the driver), else, or when pinning
 * fails, host memory from the caller's allocator. */
static unsigned char *host_pool(rkv_exec *x, rkv_kv_pool *pool, size_t bytes) {
  rkv_backend *be = rkv_kv_pool_backend(pool);
  if (!rkv_backend_device_is_host(be) &&
      rkv_buffer_create(be, RKV_BUFFER_HOST_PINNED, bytes, &x->host_buf) == RKV_OK)
    return rkv_buffer_ptr(x->host_buf);
  return rkvi_alloc(x->al, bytes, 64);
}

void rkv_exec_destroy(rkv_exec *x) {
  if (!x) return;
  const rkv_allocator *a = x->al;
  const size_t n = x->nidx, ms = x->cfg.max_seqs;
  rkvi_free(a, x->rows, n * x->S * x->stride * sizeof(int32_t));
  rkvi_free(a, x->lens, n * x->S * sizeof(int32_t));
  rkvi_free(a, x->owner, n * sizeof(int64_t));
  rkvi_free(a, x->stale, n);
  if (x->host_buf)
    rkv_buffer_destroy(x->host_buf);
  else
    rkvi_free(a, x->host, (size_t)x->cfg.host_blocks * x->block_bytes);
  rkvi_free(a, x->host_scores, (size_t)x->cfg.host_blocks * x->bs * sizeof(float));
  rkvi_free(a, x->layer_done, x->L);
  rkvi_free(a, x->seq_row, ms * sizeof(int32_t));
  rkvi_free(a, x->ids, ms * sizeof(int64_t));
  rkvi_free(a, x->q_indptr, (ms + 1) * sizeof(int32_t));
  rkvi_free(a, x->uniform, n);
  rkvi_free(a, x->xlen, n * sizeof(int32_t));
  rkvi_free(a, x->blen, ms * sizeof(int32_t));
  rkvi_free(a, x->all_indptr, (ms + 1) * sizeof(int32_t));
  rkvi_free(a, x->ws, x->ws_cap);
  rkvi_free(a, x->eres, ms * sizeof *x->eres);
  rkvi_free(a, x->eidx, ms * sizeof *x->eidx);
  rkv_evictor_destroy(x->evr);
  rkv_qwindow_destroy(x->qw);
  rkvi_xdev_destroy(x->dev);
  rkvi_free(a, x, sizeof *x);
}

static rkv_status check_config(const rkv_exec_config *c, const rkv_blockmgr *m,
                               const rkv_kv_pool *pool, char *err, size_t len) {
  const rkv_blockmgr_config *bc = rkv_blockmgr_get_config(m);
  const rkv_kv_layout ml = rkv_blockmgr_kv_layout(m);
  if (pool) {
    const rkv_kv_layout *pl = rkv_kv_pool_layout(pool);
    if (pl->dtype != ml.dtype || pl->block_size != ml.block_size || pl->head_dim != ml.head_dim)
      return cfg_err(err, len,
                     "the pool's layout (dtype, block size, head_dim) differs from the "
                     "block manager's");
    if (rkv_kv_pool_num_blocks(pool) < bc->num_blocks)
      return cfg_err(err, len, "the pool has fewer blocks than the block manager");
  }
  if (c->num_q_heads == 0 || c->num_q_heads % bc->num_kv_heads)
    return cfg_err(err, len, "num_q_heads must be a positive multiple of the kv heads");
  if (c->max_seqs == 0 || c->max_seqs > (1u << 20))
    return cfg_err(err, len, "max_seqs must be in [1, 2^20]");
  if (!(c->scale >= 0.0f) || c->scale > 1e30f)
    return cfg_err(err, len, "scale must be finite and >= 0");
  char e2[RKV_ERRBUF];
  if (rkv_evict_params_validate(&c->evict, e2, sizeof e2) != RKV_OK)
    return rkvi_failn(err, len, RKV_ERR_INVALID_ARG, "rkv_exec_create: default policy: %s", e2);
  if ((int)c->granularity < 0 || c->granularity >= RKV_EVICT_GRAN_COUNT_)
    return rkvi_failn(err, len, RKV_ERR_INVALID_ARG,
                      "rkv_exec_create: unknown granularity %d (stream, layer, kvhead, sequence)",
                      (int)c->granularity);
  return RKV_OK;
}

/* The device half (exec_device.c) for a pool whose memory the host cannot read. */
static rkv_status make_device(rkv_exec *x, char *err, size_t err_len) {
  rkvi_xdev_config dc;
  memset(&dc, 0, sizeof dc);
  dc.bm = x->bm;
  dc.pool = x->pool;
  dc.al = x->al;
  dc.L = x->L;
  dc.Hq = x->Hq;
  dc.Hkv = x->Hkv;
  dc.d = x->d;
  dc.S = x->S;
  dc.bs = x->bs;
  dc.nidx = x->nidx;
  dc.max_seqs = x->cfg.max_seqs;
  dc.window = rkvi_needs_queries(x->cfg.evict.policy) ? (uint32_t)x->cfg.evict.window : 0;
  dc.scale = x->scale;
  dc.qw = x->qw;
  return rkvi_xdev_create(&dc, &x->dev, err, err_len);
}

/* The query window, in the memory of the pool's backend when that is a device's. Its plan
 * arrays are taken now (an empty plan), so no step's plan allocates on the host. */
static rkv_status make_window(rkv_exec *x, char *err, size_t err_len) {
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = x->L;
  qc.num_q_heads = x->Hq;
  qc.head_dim = x->d;
  qc.window = (uint32_t)x->cfg.evict.window;
  qc.max_seqs = x->nidx;
  qc.allocator = x->al;
  qc.backend = rkvi_xdev_wanted(x->pool) ? rkv_kv_pool_backend(x->pool) : NULL;
  rkv_status st = rkv_qwindow_create(&qc, &x->qw);
  if (st == RKV_OK) st = rkv_qwindow_plan(x->qw, NULL, NULL, 0);
  if (st != RKV_OK)
    return rkvi_failn(err, err_len, st, "rkv_exec_create: query window: %s (%s)",
                      rkv_status_str(st), x->qw ? rkv_qwindow_last_error(x->qw) : "");
  return RKV_OK;
}

/* The evictor every compression on the pool goes through (CPU and device pools alike). */
static rkv_status make_evictor(rkv_exec *x, char *err, size_t err_len) {
  rkv_evictor_config ec = RKV_EVICTOR_CONFIG_INIT;
  ec.num_q_heads = x->Hq;
  ec.params = x->cfg.evict;
  ec.granularity = x->cfg.granularity;
  ec.max_seqs = x->cfg.max_seqs;
  ec.qwindow = x->qw;
  ec.allocator = x->al;
  const size_t ms = x->cfg.max_seqs;
  x->eres = rkvi_alloc(x->al, ms * sizeof *x->eres, 16);
  x->eidx = rkvi_alloc(x->al, ms * sizeof *x->eidx, 16);
  if (!x->eres || !x->eidx)
    return rkvi_failn(err, err_len, RKV_ERR_NO_MEMORY, "rkv_exec_create: out of memory");
  char e2[RKV_ERRBUF] = "";
  const rkv_status st = rkv_evictor_create(&ec, x->bm, x->pool, &x->evr, e2, sizeof e2);
  return st == RKV_OK ? RKV_OK : rkvi_failn(err, err_len, st, "rkv_exec_create: evictor: %s", e2);
}

rkv_status rkv_exec_create(const rkv_exec_config *cfg, rkv_blockmgr *m, rkv_kv_pool *pool,
                           rkv_exec **out, char *err, size_t err_len) {
  if (err && err_len) err[0] = '\0';
  if (!out) return cfg_err(err, err_len, "out is NULL");
  *out = NULL;
  if (!cfg || !m) return cfg_err(err, err_len, "cfg and block manager are required");
  /* version 1 ended at allocator; its callers get version 2's defaults after it */
  if (cfg->struct_size != offsetof(rkv_exec_config, granularity) &&
      cfg->struct_size != sizeof(rkv_exec_config))
    return cfg_err(err, err_len, "struct_size is not a known version (use RKV_EXEC_CONFIG_INIT)");
  rkv_exec_config full = RKV_EXEC_CONFIG_INIT;
  memcpy(&full, cfg, cfg->struct_size);
  full.struct_size = sizeof(rkv_exec_config);
  cfg = &full;
  RKV_TRY(check_config(cfg, m, pool, err, err_len));
  const rkv_blockmgr_config *bc = rkv_blockmgr_get_config(m);
  rkv_allocator ac = {0};
  if (cfg->allocator) ac = *cfg->allocator;
  rkv_exec *x = rkvi_calloc(cfg->allocator ? &ac : NULL, sizeof *x, 16);
  if (!x) return rkvi_failn(err, err_len, RKV_ERR_NO_MEMORY, "rkv_exec_create: out of memory");
  x->cfg = *cfg;
  for (int i = 0; i < RKV_EVICT_POLICY_COUNT_; i++)
    x->mass[i] = rkvi_policy_info((rkv_evict_policy)i).needs_attention_mass;
  if (cfg->allocator) {
    x->alloc_copy = *cfg->allocator;
    x->al = &x->alloc_copy;
  }
  x->cfg.allocator = x->al;
  x->bm = m;
  x->pool = pool;
  x->L = bc->num_layers;
  x->Hkv = bc->num_kv_heads;
  x->Hq = cfg->num_q_heads;
  x->d = bc->head_dim;
  x->S = rkv_blockmgr_streams_per_seq(m);
  x->bs = bc->block_size;
  x->bs_shift = -1;
  for (int32_t k = 0; k < 31; k++)
    if (x->bs == (1u << k)) x->bs_shift = k;
  x->scale = cfg->scale;
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(m);
  x->block_bytes = rkv_kv_block_bytes(&lay);
  x->nidx = bc->max_seqs ? bc->max_seqs : 4096;
  /* The first row capacity; begin doubles it when a longer stream shows up. Streams of one
   * sequence grow in lockstep and hold distinct blocks, so none ever holds more than the
   * pool's blocks / streams. */
  const uint64_t most = (bc->num_blocks + x->S - 1) / x->S;
  uint64_t stride = cfg->max_stream_tokens
                        ? (cfg->max_stream_tokens + x->bs - 1) / x->bs
                        : (uint64_t)(cfg->evict.budget + cfg->evict.buffer) / x->bs + 1;
  if (stride > most) stride = most;
  if (stride == 0) stride = 1;
  x->stride = (uint32_t)stride;
  const uint64_t mirror = (uint64_t)x->nidx * x->S * stride;
  const size_t ms = cfg->max_seqs;
  rkv_status ret = RKV_ERR_NO_MEMORY;
  if (mirror > ((uint64_t)1 << 32)) {
    ret = rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG,
                     "rkv_exec_create: table mirror of %llu entries (max_seqs x streams x "
                     "blocks per stream): lower max_stream_tokens",
                     (unsigned long long)mirror);
    goto fail;
  }
  x->rows = rkvi_alloc(x->al, (size_t)mirror * sizeof(int32_t), 64);
  x->lens = rkvi_calloc(x->al, (size_t)x->nidx * x->S * sizeof(int32_t), 64);
  x->owner = rkvi_alloc(x->al, x->nidx * sizeof(int64_t), 16);
  x->stale = rkvi_calloc(x->al, x->nidx, 16);
  x->uniform = rkvi_calloc(x->al, x->nidx, 16);
  x->xlen = rkvi_calloc(x->al, x->nidx * sizeof(int32_t), 16);
  x->blen = rkvi_alloc(x->al, ms * sizeof(int32_t), 16);
  x->all_indptr = rkvi_alloc(x->al, (ms + 1) * sizeof(int32_t), 16);
  x->layer_done = rkvi_calloc(x->al, x->L, 16);
  x->seq_row = rkvi_alloc(x->al, ms * sizeof(int32_t), 16);
  x->ids = rkvi_alloc(x->al, ms * sizeof(int64_t), 16);
  x->q_indptr = rkvi_alloc(x->al, (ms + 1) * sizeof(int32_t), 16);
  const bool host = pool && cfg->host_blocks; /* bookkeeping moves no bytes */
  if (host) x->host = host_pool(x, pool, (size_t)cfg->host_blocks * x->block_bytes);
  if (host)
    x->host_scores = rkvi_calloc(x->al, (size_t)cfg->host_blocks * x->bs * sizeof(float), 64);
  if (!x->rows || !x->lens || !x->owner || !x->stale || !x->uniform || !x->xlen || !x->blen ||
      !x->all_indptr || !x->layer_done || !x->seq_row || !x->ids || !x->q_indptr ||
      (host && (!x->host || !x->host_scores))) {
    rkvi_failn(err, err_len, ret,
               "rkv_exec_create: out of memory for the table mirror / swap pool");
    goto fail;
  }
  for (uint32_t i = 0; i < x->nidx; i++) x->owner[i] = -1;
  if (pool && rkvi_needs_queries(cfg->evict.policy) &&
      (ret = make_window(x, err, err_len)) != RKV_OK)
    goto fail;
  if (rkvi_xdev_wanted(pool) && (ret = make_device(x, err, err_len)) != RKV_OK) goto fail;
  if (pool && (ret = make_evictor(x, err, err_len)) != RKV_OK) goto fail;
  x->bytes = (size_t)mirror * 4 + (size_t)x->nidx * (x->S * 4 + 9) +
             (host ? (size_t)cfg->host_blocks * x->block_bytes : 0) +
             (x->host_scores ? (size_t)cfg->host_blocks * x->bs * sizeof(float) : 0) + ms * 16;
  *out = x;
  return RKV_OK;
fail:
  rkv_exec_destroy(x);
  return ret;
}

const char *rkv_exec_last_error(const rkv_exec *x) {
  return x ? x->err : "NULL executor";
}

size_t rkv_exec_qwindow_bytes_per_seq(const rkv_exec *x) {
  if (!x || !x->qw) return 0;
  return (size_t)x->L * x->Hq * (size_t)x->cfg.evict.window * x->d * sizeof(float);
}

size_t rkv_exec_memory_bytes(const rkv_exec *x) {
  return x ? x->bytes + x->ws_cap + rkv_evictor_memory_bytes(x->evr) +
                 rkvi_xdev_memory_bytes(x->dev)
           : 0;
}

/* ---- begin ------------------------------------------------------------------------------- */

/* Forgets the mirror entry of an id whose KV left the block manager (finished, preempted,
 * swapped out): the next sequence at that index, even with the same id, syncs in full.
 * O(index range); runs once per departure. */
static void forget(rkv_exec *x, int64_t id) {
  for (uint32_t i = 0; i < x->nidx; i++)
    if (x->owner[i] == id) x->owner[i] = -1;
}

/* The row capacity (blocks per stream) that fits `blocks`: the current one, doubled as often as
 * needed. RKV_ERR_CAPACITY when the mirror would outgrow 2^32 entries. */
static rkv_status rows_stride(rkv_exec *x, int64_t blocks, uint32_t *out) {
  uint64_t stride = x->stride;
  while ((int64_t)stride < blocks) stride *= 2;
  const uint64_t entries = (uint64_t)x->nidx * x->S * stride;
  if (entries > ((uint64_t)1 << 32))
    return rkvi_fail(x->err, RKV_ERR_CAPACITY,
                     "begin: a stream of %lld blocks needs a table mirror of %llu entries",
                     (long long)blocks, (unsigned long long)entries);
  *out = (uint32_t)stride;
  return RKV_OK;
}

/* Grows the mirror's row capacity to `stride` (rare: a stream longer than any before). Every
 * entry is re-synced in full afterwards. Allocates before it changes anything. */
static rkv_status grow_rows(rkv_exec *x, uint32_t stride) {
  if (stride <= x->stride) return RKV_OK;
  const uint64_t entries = (uint64_t)x->nidx * x->S * stride;
  int32_t *rows = rkvi_alloc(x->al, (size_t)entries * sizeof(int32_t), 64);
  if (!rows)
    return rkvi_fail(x->err, RKV_ERR_NO_MEMORY, "begin: table mirror of %llu entries",
                     (unsigned long long)entries);
  rkvi_free(x->al, x->rows, (size_t)x->nidx * x->S * x->stride * sizeof(int32_t));
  x->rows = rows;
  x->stride = stride;
  for (uint32_t i = 0; i < x->nidx; i++) x->owner[i] = -1;
  return RKV_OK;
}

static bool has_window(const rkv_exec *x) {
  return x->qw != NULL;
}

/* Whether id has a query window now. O(1). */
static bool window_now(const rkv_exec *x, int64_t id) {
  return x->qw && rkvi_qwindow_has(x->qw, id);
}

/* ---- plan validation ---------------------------------------------------------------------- */

/* What the plan does with an id: validate_plan's table, an open-addressing set in the step
 * scratch sized for the plan's lists. */
enum {
  PID_SEQ = 1u,         /* in seqs (at = its index) */
  PID_STARTED = 2u,     /* in started */
  PID_DROPPED = 4u,     /* in dropped */
  PID_CHILD = 8u,       /* a fork child of this plan: holds a window after the forks */
  PID_SWAPPED_IN = 16u, /* in swapped_in */
  PID_SWAPPED_OUT = 32u,
  PID_COUNTED = 64u /* a dropped id whose window was counted as freed */
};

typedef struct plan_id {
  int64_t id; /* -1 = empty */
  uint32_t flags;
  uint32_t at;
} plan_id;

typedef struct plan_ids {
  plan_id *t;
  uint32_t mask;
} plan_ids;

/* The entry of id (>= 0), added empty when new; the table has room for every id of the plan. */
static plan_id *pid(const plan_ids *s, int64_t id) {
  uint64_t z = (uint64_t)id * 0x9E3779B97F4A7C15ull;
  uint32_t h = (uint32_t)(z >> 32) & s->mask;
  while (s->t[h].id >= 0 && s->t[h].id != id) h = (h + 1) & s->mask;
  if (s->t[h].id < 0) {
    s->t[h].id = id;
    s->t[h].flags = 0;
    s->t[h].at = 0;
  }
  return &s->t[h];
}

/* Blocks that hold `tokens` (>= 0, < 2^31 + 2^31) tokens: a shift for the usual block sizes
 * (this runs for every scheduled sequence of every plan). */
static int32_t blocks_of(const rkv_exec *x, int64_t tokens) {
  if (x->bs_shift >= 0) return (int32_t)((tokens + x->bs - 1) >> x->bs_shift);
  return (int32_t)((tokens + x->bs - 1) / x->bs);
}

#define BAD(...) rkvi_fail(x->err, RKV_ERR_INVALID_ARG, "begin: " __VA_ARGS__)

/* Arrays with a count must be there. */
static rkv_status check_arrays(rkv_exec *x, const rkv_sched_plan *p) {
  const struct {
    const char *name;
    uint32_t n;
    const void *a;
  } arr[] = {{"seqs", p->n_seqs, p->seqs},
             {"copies", p->n_copies, p->copies},
             {"swap_out", p->n_swap_out, p->swap_out},
             {"swap_in", p->n_swap_in, p->swap_in},
             {"swapped_out", p->n_swapped_out, p->swapped_out},
             {"swapped_in", p->n_swapped_in, p->swapped_in},
             {"forks", p->n_forks, p->forks},
             {"started", p->n_started, p->started},
             {"dropped", p->n_dropped, p->dropped}};
  for (size_t i = 0; i < sizeof arr / sizeof arr[0]; i++)
    if (arr[i].n && !arr[i].a) return BAD("plan.%s is NULL with %u entries", arr[i].name, arr[i].n);
  return RKV_OK;
}

/* seqs: each sequence on its own, its group, and the token counts. */
static rkv_status check_seqs(rkv_exec *x, const rkv_sched_plan *p, const plan_ids *ids) {
  if (p->n_decode > p->n_seqs) return BAD("n_decode %u > n_seqs %u", p->n_decode, p->n_seqs);
  uint64_t tokens = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    const bool decode = i < p->n_decode;
    const int32_t idx = q->id >= 0 ? rkv_blockmgr_seq_index(x->bm, q->id) : -1;
    if (idx < 0 || (uint32_t)idx >= x->nidx)
      return BAD("seqs[%u].id %lld is not a sequence of the block manager", i, (long long)q->id);
    x->seq_row[i] = idx; /* for check_mirror and sync_seq (which makes it the row) */
    plan_id *e = pid(ids, q->id);
    if (e->flags & PID_SEQ)
      return BAD("seqs[%u].id %lld is also seqs[%u].id", i, (long long)q->id, e->at);
    e->flags |= PID_SEQ;
    e->at = i;
    if (q->kind != (decode ? RKV_SCHED_DECODE : RKV_SCHED_PREFILL))
      return BAD("seqs[%u] (%lld): kind %d in the %s group (n_decode %u)", i, (long long)q->id,
                 (int)q->kind, decode ? "decode" : "prefill", p->n_decode);
    if (q->n_tokens == 0 || (decode && q->n_tokens != 1))
      return BAD("seqs[%u] (%lld): n_tokens %u in the %s group", i, (long long)q->id, q->n_tokens,
                 decode ? "decode" : "prefill");
    if ((int64_t)q->kv_len < (int64_t)q->n_tokens)
      return BAD("seqs[%u] (%lld): kv_len %d < n_tokens %u", i, (long long)q->id, q->kv_len,
                 q->n_tokens);
    if (q->pos < 0 || q->pos < (int64_t)q->kv_len - q->n_tokens)
      return BAD("seqs[%u] (%lld): pos %lld before its cache position %lld", i, (long long)q->id,
                 (long long)q->pos, (long long)q->kv_len - q->n_tokens);
    if (q->evict) {
      if ((unsigned)q->evict->policy >= RKV_EVICT_POLICY_COUNT_)
        return BAD("seqs[%u] (%lld): evict->policy %d is not a policy", i, (long long)q->id,
                   (int)q->evict->policy);
      char e2[RKV_ERRBUF] = "";
      if (q->compress && rkv_evict_params_validate(q->evict, e2, sizeof e2) != RKV_OK)
        return BAD("seqs[%u] (%lld): evict: %s", i, (long long)q->id, e2);
      if (x->pool && rkvi_needs_queries(q->evict->policy) &&
          (!has_window(x) || q->evict->window != x->cfg.evict.window))
        return BAD("sequence %lld uses %s with window %d; the executor keeps %s", (long long)q->id,
                   rkv_evict_policy_name(q->evict->policy), q->evict->window,
                   has_window(x) ? "another window" : "no query window");
    }
    tokens += q->n_tokens;
  }
  if (tokens != p->n_batched_tokens)
    return BAD("n_batched_tokens %u, but the sequences' n_tokens sum to %llu", p->n_batched_tokens,
               (unsigned long long)tokens);
  if (tokens > INT32_MAX) return BAD("n_batched_tokens %llu > 2^31", (unsigned long long)tokens);
  if (p->slots && tokens && p->slot_layer_stride < tokens * x->Hkv)
    return BAD("slot_layer_stride %llu < n_batched_tokens %llu x %u kv heads",
               (unsigned long long)p->slot_layer_stride, (unsigned long long)tokens, x->Hkv);
  return RKV_OK;
}

/* started, swapped_in, swapped_out, dropped, forks: the id lists against seqs, the block
 * manager and (when the executor keeps them) the query windows: a fork's parent has one and
 * its child none, a started id has none once the drops ran, every scheduled sequence has one
 * afterwards. *peak = most windows live at once during the begin (forks come before drops). */
static rkv_status check_ids(rkv_exec *x, const rkv_sched_plan *p, const plan_ids *ids,
                            uint32_t *peak) {
  for (uint32_t i = 0; i < p->n_started; i++) {
    const int64_t id = p->started[i];
    plan_id *e = id >= 0 ? pid(ids, id) : NULL;
    if (!e || !(e->flags & PID_SEQ))
      return BAD("started[%u] %lld is not a scheduled sequence", i, (long long)id);
    if (e->flags & PID_STARTED) return BAD("started[%u] %lld is listed twice", i, (long long)id);
    e->flags |= PID_STARTED;
    /* its KV starts in this plan: nothing evicted yet, the chunk ends the cache */
    const rkv_sched_seq *q = &p->seqs[e->at];
    if (q->pos + q->n_tokens != q->kv_len)
      return BAD("started[%u] %lld: pos %lld + n_tokens %u != kv_len %d", i, (long long)id,
                 (long long)q->pos, q->n_tokens, q->kv_len);
  }
  for (uint32_t i = 0; i < p->n_swapped_in; i++) {
    const int64_t id = p->swapped_in[i];
    plan_id *e = id >= 0 ? pid(ids, id) : NULL;
    if (!e || !(e->flags & PID_SEQ))
      return BAD("swapped_in[%u] %lld is not a scheduled sequence", i, (long long)id);
    if (e->flags & (PID_SWAPPED_IN | PID_STARTED))
      return BAD("swapped_in[%u] %lld is listed twice or also started", i, (long long)id);
    e->flags |= PID_SWAPPED_IN;
  }
  for (uint32_t i = 0; i < p->n_swapped_out; i++) {
    if (p->swapped_out[i] < 0)
      return BAD("swapped_out[%u] %lld < 0", i, (long long)p->swapped_out[i]);
    pid(ids, p->swapped_out[i])->flags |= PID_SWAPPED_OUT;
  }
  for (uint32_t i = 0; i < p->n_dropped; i++) {
    const int64_t id = p->dropped[i];
    if (id < 0) return BAD("dropped[%u] %lld < 0", i, (long long)id);
    plan_id *e = pid(ids, id);
    e->flags |= PID_DROPPED;
    /* dropping a live sequence's state would leave it without a window or mirror */
    if (rkv_blockmgr_seq_index(x->bm, id) >= 0 && !(e->flags & PID_STARTED))
      return BAD("dropped[%u] %lld is a live sequence of the block manager (and not started again)",
                 i, (long long)id);
  }
  const bool win = has_window(x);
  uint32_t live = win ? rkvi_qwindow_live(x->qw) : 0;
  for (uint32_t i = 0; i < p->n_forks; i++) {
    const int64_t par = p->forks[i].parent, child = p->forks[i].child;
    if (par < 0 || child < 0 || par == child)
      return BAD("forks[%u]: %lld -> %lld", i, (long long)par, (long long)child);
    if (!win) continue;
    const plan_id *pe = pid(ids, par);
    if (!(pe->flags & PID_CHILD) && !window_now(x, par))
      return BAD("forks[%u]: parent %lld has no query window", i, (long long)par);
    plan_id *ce = pid(ids, child);
    if ((ce->flags & PID_CHILD) || window_now(x, child))
      return BAD("forks[%u]: child %lld already has a query window", i, (long long)child);
    ce->flags |= PID_CHILD;
    live++;
  }
  *peak = live;
  if (!win) return RKV_OK;
  for (uint32_t i = 0; i < p->n_dropped; i++) {
    plan_id *e = pid(ids, p->dropped[i]);
    if (e->flags & PID_COUNTED) continue;
    e->flags |= PID_COUNTED;
    if ((e->flags & PID_CHILD) || window_now(x, e->id)) live--;
  }
  for (uint32_t i = 0; i < p->n_started; i++) {
    const plan_id *e = pid(ids, p->started[i]);
    if (((e->flags & PID_CHILD) || window_now(x, e->id)) && !(e->flags & PID_DROPPED))
      return BAD("started[%u] %lld already has a query window (and is not dropped first)", i,
                 (long long)e->id);
    live++;
  }
  if (live > *peak) *peak = live;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const plan_id *e = pid(ids, p->seqs[i].id);
    if (!(e->flags & PID_STARTED) && !(e->flags & PID_CHILD) && !window_now(x, e->id))
      return BAD("seqs[%u] (%lld) has no query window (neither started nor forked)", i,
                 (long long)e->id);
  }
  return RKV_OK;
}

/* copies and swaps: block ids inside the block manager's pool and the host pool; no host block
 * written twice by one swap-out. `hostmap` has host_blocks bits, cleared. */
static rkv_status check_moves(rkv_exec *x, const rkv_sched_plan *p, uint64_t *hostmap) {
  const int64_t nb = rkv_blockmgr_get_config(x->bm)->num_blocks;
  for (uint32_t i = 0; i < p->n_copies; i++) {
    const rkv_block_copy *c = &p->copies[i];
    if (c->src < 0 || c->src >= nb || c->dst < 0 || c->dst >= nb || c->src == c->dst)
      return BAD("copies[%u]: block %d -> %d (the pool has %lld)", i, (int)c->src, (int)c->dst,
                 (long long)nb);
  }
  if (!x->pool) return RKV_OK; /* bookkeeping moves no bytes */
  if (p->n_swap_out + p->n_swap_in && !x->host) return BAD("plan swaps but host_blocks is 0");
  const uint32_t hb = x->cfg.host_blocks;
  for (uint32_t i = 0; i < p->n_swap_out; i++) {
    const rkv_sched_swap *w = &p->swap_out[i];
    if (w->host < 0 || (uint32_t)w->host >= hb)
      return BAD("swap-out to host block %d of %u", w->host, hb);
    if (w->device < 0 || w->device >= nb)
      return BAD("swap_out[%u]: device block %d (the pool has %lld)", i, w->device, (long long)nb);
    uint64_t *word = &hostmap[(uint32_t)w->host / 64], bit = 1ull << ((uint32_t)w->host % 64);
    if (*word & bit) return BAD("swap_out[%u]: host block %d is written twice", i, w->host);
    *word |= bit;
  }
  for (uint32_t i = 0; i < p->n_swap_in; i++) {
    const rkv_sched_swap *w = &p->swap_in[i];
    if (w->host < 0 || (uint32_t)w->host >= hb)
      return BAD("swap-in from host block %d of %u", w->host, hb);
    if (w->device < 0 || w->device >= nb)
      return BAD("swap_in[%u]: device block %d (the pool has %lld)", i, w->device, (long long)nb);
  }
  return RKV_OK;
}

/* Every scheduled sequence against the block manager and the mirror entry that sync_seq will
 * bring up to date. The lengths the entry holds are those of the block manager before the
 * step's append whenever the entry is this sequence's (after a compression too: finish
 * re-reads them, see refresh_lens); then the sequence must grow from exactly those by
 * n_tokens (kv_len - n_tokens tokens before the step), and with rows_changed 0 no stream may
 * take a block. A sequence new to its entry must hold kv_len tokens in the block manager.
 * *blocks = the longest row a sync will write, *tokens = the longest kv_len. O(1) per
 * sequence, O(streams) for a non-lockstep entry, O(streams) lookups for one new to its entry. */
static rkv_status check_mirror(rkv_exec *x, const rkv_sched_plan *p, const plan_ids *ids,
                               int64_t *blocks, int64_t *tokens) {
  /* the flags that change how an entry syncs come from these lists only */
  const bool lists = p->n_dropped || p->n_swapped_out || p->n_swapped_in;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    const int32_t idx = x->seq_row[i]; /* check_seqs */
    const uint32_t f = lists ? pid(ids, q->id)->flags : 0;
    /* as window_lifecycle and begin leave the entry for sync_seq */
    const bool full = x->owner[idx] != q->id || (f & (PID_DROPPED | PID_SWAPPED_OUT));
    const bool stale = x->stale[idx] || (f & PID_SWAPPED_IN);
    const bool resync = full || stale || !p->rows_changed || p->rows_changed[i];
    const int32_t before = q->kv_len - (int32_t)q->n_tokens;
    if (q->kv_len > *tokens) *tokens = q->kv_len;
    if (!full && !(f & PID_SWAPPED_IN)) {
      const bool uni = x->uniform[idx];
      const int32_t *lens = x->lens + (size_t)idx * x->S;
      const int32_t had = uni ? x->xlen[idx] : lens[0];
      if (had != before)
        return BAD(
            "seqs[%u] (%lld): kv_len %d - n_tokens %u = %d tokens before the step, the "
            "block manager's streams held %d",
            i, (long long)q->id, q->kv_len, q->n_tokens, before, had);
      int64_t most = 0;
      for (uint32_t s = 0; s < (uni ? 1u : x->S); s++) {
        const int32_t was = uni ? had : lens[s];
        const int32_t nb = blocks_of(x, was + (int64_t)q->n_tokens);
        if (!resync && nb != blocks_of(x, was))
          return BAD(
              "seqs[%u] (%lld): stream %u grows from %d to %lld tokens, a new block, but "
              "rows_changed is 0",
              i, (long long)q->id, s, was, (long long)was + q->n_tokens);
        if (nb > most) most = nb;
      }
      if (most > *blocks) *blocks = most;
      if (!resync) continue;
    }
    int32_t len = -1;
    (void)rkv_blockmgr_stream_len(x->bm, q->id, 0, 0, &len);
    if (len != q->kv_len)
      return BAD("seqs[%u] (%lld): kv_len %d, the block manager's streams hold %d", i,
                 (long long)q->id, q->kv_len, len);
    if (!full && !(f & PID_SWAPPED_IN)) continue; /* rows bounded above */
    int64_t most = blocks_of(x, q->kv_len);
    for (uint32_t s = 0; s < x->S; s++) {
      const int32_t *b = NULL;
      int32_t nb = 0;
      (void)rkv_blockmgr_stream_blocks(x->bm, q->id, s / x->Hkv, s % x->Hkv, &b, &nb);
      if (nb > most) most = nb;
    }
    if (most > *blocks) *blocks = most;
  }
  return RKV_OK;
}

/* Everything begin could refuse or fail on, checked before it changes anything, and every
 * allocation it needs (the id table, query windows, the device's buffers, the mirror). A plan
 * that passes cannot make a later stage of begin fail (on a device, a failed transfer of the
 * backend still can: RKV_ERR_CUDA). O(plan lists + scheduled sequences, and streams for each
 * sequence whose rows re-sync in full). */
static rkv_status validate_plan(rkv_exec *x, const rkv_sched_plan *p) {
  if (x->open)
    return rkvi_fail(x->err, RKV_ERR_STATE, "begin: step %llu is still open (finish it)",
                     (unsigned long long)x->plan->step);
  if (p->n_seqs > x->cfg.max_seqs)
    return rkvi_fail(x->err, RKV_ERR_CAPACITY, "begin: plan has %u sequences, max_seqs is %u",
                     p->n_seqs, x->cfg.max_seqs);
  RKV_TRY(check_arrays(x, p));
  /* the id table (load <= 1/2) and the swap-out bitmap, in the step scratch */
  const uint64_t n_ids = (uint64_t)p->n_seqs + p->n_started + p->n_dropped + 2ull * p->n_forks +
                         p->n_swapped_in + p->n_swapped_out;
  if (n_ids > ((uint64_t)1 << 26)) return BAD("plan lists of %llu ids", (unsigned long long)n_ids);
  uint32_t cap = 16;
  while (cap < 2 * n_ids) cap *= 2;
  const size_t words = x->pool && p->n_swap_out ? (x->cfg.host_blocks + 63u) / 64u : 0;
  RKV_TRY(grow(x, &x->ws, &x->ws_cap, (size_t)cap * sizeof(plan_id) + words * 8, "plan scratch"));
  plan_ids ids = {(plan_id *)x->ws, cap - 1};
  for (uint32_t i = 0; i < cap; i++) ids.t[i].id = -1;
  uint64_t *hostmap = (uint64_t *)(ids.t + cap);
  memset(hostmap, 0, words * 8);
  uint32_t peak = 0;
  int64_t blocks = 0, tokens = 0;
  RKV_TRY(check_seqs(x, p, &ids));
  RKV_TRY(check_ids(x, p, &ids, &peak));
  RKV_TRY(check_moves(x, p, hostmap));
  RKV_TRY(check_mirror(x, p, &ids, &blocks, &tokens));
  uint32_t stride = x->stride;
  RKV_TRY(rows_stride(x, blocks, &stride));
  /* the window holds nidx sequences (running and swapped out) */
  if (x->qw && peak > x->nidx)
    return rkvi_fail(x->err, RKV_ERR_CAPACITY,
                     "begin: the plan needs %u query windows at once, the executor keeps %u "
                     "(the block manager's max_seqs)",
                     peak, x->nidx);
  /* forks register before drops free entries, starts after: n_forks + n_started fresh
   * entries at most (rkv_qwindow_reserve) */
  if (x->qw) {
    const rkv_status st = rkv_qwindow_reserve(x->qw, p->n_forks + p->n_started);
    if (st != RKV_OK)
      return rkvi_fail(x->err, st, "begin: query windows: %s", rkv_qwindow_last_error(x->qw));
  }
  if (x->dev) {
    const rkv_status st = rkvi_xdev_prepare(x->dev, p, stride, tokens);
    if (st != RKV_OK) return rkvi_fail(x->err, st, "%s", rkvi_xdev_last_error(x->dev));
  }
  return grow_rows(x, stride);
}

#undef BAD

/* One direction of a plan's swaps. Entries whose host blocks are consecutive, ascending or
 * descending, move as one pool transfer of up to SWAP_RUN blocks: a CUDA pool then syncs once
 * per run, not once per block, and a CPU pool's run of 8 KB blocks is large enough (32 MiB)
 * for its streaming copy. Runs are the common case: a swap-out takes host blocks off the
 * scheduler's free stack in order, and a swap-in pushes them back in that order, so the next
 * swap-out takes them in reverse. Within one direction the entries touch distinct blocks on
 * both sides (host blocks checked by check_moves, device blocks fresh or owned), so a run may
 * move them in either order. */
enum { SWAP_RUN = 4096 };

static uint32_t swap_run(const rkv_sched_swap *w, uint32_t n, int32_t ids[SWAP_RUN],
                         int32_t *host0) {
  const int32_t h = w[0].host, dir = n > 1 && w[1].host == h - 1 ? -1 : 1;
  uint32_t k = 1;
  while (k < n && k < SWAP_RUN && w[k].host == h + dir * (int32_t)k) k++;
  for (uint32_t j = 0; j < k; j++) ids[dir > 0 ? j : k - 1 - j] = w[j].device;
  *host0 = dir > 0 ? h : h - (int32_t)(k - 1);
  return k;
}

static rkv_status swap_dir(rkv_exec *x, const rkv_sched_swap *w, uint32_t n, bool out) {
  int32_t ids[SWAP_RUN];
  for (uint32_t i = 0; i < n;) {
    int32_t h0 = 0;
    const uint32_t k = swap_run(w + i, n - i, ids, &h0);
    unsigned char *kv = x->host + (size_t)h0 * x->block_bytes;
    float *mass = x->host_scores + (size_t)h0 * x->bs;
    if (out) {
      RKV_TRY(rkv_kv_pool_read_blocks(x->pool, ids, k, kv));
      RKV_TRY(rkv_kv_pool_read_scores(x->pool, ids, k, mass));
    } else {
      RKV_TRY(rkv_kv_pool_write_blocks(x->pool, ids, k, kv));
      RKV_TRY(rkv_kv_pool_write_scores(x->pool, ids, k, mass));
    }
    i += k;
  }
  return RKV_OK;
}

/* Swap and copy-on-write traffic: device blocks to the host pool and back, then copies. */
static rkv_status move_blocks(rkv_exec *x, const rkv_sched_plan *p) {
  RKV_TRY(swap_dir(x, p->swap_out, p->n_swap_out, true));
  RKV_TRY(swap_dir(x, p->swap_in, p->n_swap_in, false));
  if (p->n_copies) RKV_TRY(rkv_kv_pool_copy_blocks(x->pool, p->copies, p->n_copies));
  return RKV_OK;
}

/* Query windows follow the KV: forked with it, dropped with it, kept across a swap, started
 * empty. Unknown ids on removal are fine (a sequence dropped before it ever ran). */
static rkv_status window_lifecycle(rkv_exec *x, const rkv_sched_plan *p) {
  /* validate_plan checked the windows and reserved their memory: only a device's failed
   * transfer (a fork's copy, a start's clear) fails here */
  for (uint32_t i = 0; x->qw && i < p->n_forks; i++) {
    rkv_status st = rkv_qwindow_seq_fork(x->qw, p->forks[i].parent, p->forks[i].child);
    if (st != RKV_OK)
      return rkvi_fail(x->err, st == RKV_ERR_CUDA ? st : RKV_ERR_INTERNAL,
                       "begin: query window fork %lld -> %lld: %s", (long long)p->forks[i].parent,
                       (long long)p->forks[i].child, rkv_qwindow_last_error(x->qw));
  }
  for (uint32_t i = 0; i < p->n_dropped; i++) {
    if (x->qw) (void)rkv_qwindow_seq_remove(x->qw, p->dropped[i]); /* may never have run */
    forget(x, p->dropped[i]);
  }
  for (uint32_t i = 0; i < p->n_swapped_out; i++) forget(x, p->swapped_out[i]);
  for (uint32_t i = 0; x->qw && i < p->n_started; i++) {
    rkv_status st = rkv_qwindow_seq_add(x->qw, p->started[i]);
    if (st != RKV_OK)
      return rkvi_fail(x->err, st == RKV_ERR_CUDA ? st : RKV_ERR_INTERNAL,
                       "begin: query window of %lld: %s", (long long)p->started[i],
                       rkv_qwindow_last_error(x->qw));
  }
  return RKV_OK;
}

/* Brings seq i's mirror entry up to date: a full sync for an entry last synced for someone
 * else, a delta sync when its rows changed, else only the lengths grow. validate_plan left
 * the entry's index in seq_row[i] and checked that nothing here can fail. */
static rkv_status sync_seq(rkv_exec *x, const rkv_sched_plan *p, uint32_t i) {
  const rkv_sched_seq *q = &p->seqs[i];
  const int32_t idx = x->seq_row[i];
  int32_t *lens = x->lens + (size_t)idx * x->S;
  const bool full = x->owner[idx] != q->id;
  const bool resync = full || x->stale[idx] || !p->rows_changed || p->rows_changed[i];
  /* a lockstep sequence whose rows an append changed (boundary, copy-on-write) stays in
   * lockstep: only the new row entries go over, its one length grows below */
  const bool lockstep = resync && !full && !x->stale[idx] && x->uniform[idx] && p->rows_changed;
  if (resync) {
    uint32_t written = 0;
    rkv_status st =
        rkv_blockmgr_sync_rows(x->bm, q->id, full, x->rows + (size_t)idx * x->S * x->stride,
                               x->stride, lockstep ? NULL : lens, &written);
    if (st != RKV_OK)
      return rkvi_fail(x->err, st, "begin: table rows of %lld: %s", (long long)q->id,
                       rkv_blockmgr_last_error(x->bm));
    if (x->dev && (full || written)) rkvi_xdev_mark(x->dev, idx); /* rows go up by deltas */
  }
  if (resync && !lockstep) {
    x->owner[idx] = q->id;
    x->stale[idx] = 0;
    uint8_t same = 1;
    for (uint32_t s = 1; s < x->S; s++) same &= lens[s] == lens[0];
    x->uniform[idx] = same;
    x->xlen[idx] = lens[0];
  } else if (x->uniform[idx]) {
    x->xlen[idx] += (int32_t)q->n_tokens;
  } else {
    for (uint32_t s = 0; s < x->S; s++) lens[s] += (int32_t)q->n_tokens;
  }
  x->seq_row[i] = idx * (int32_t)x->S;
  x->ids[i] = q->id;
  x->blen[i] = x->xlen[idx];
  x->all_uniform &= x->uniform[idx];
  return RKV_OK;
}

/* A batch mixing lockstep and non-lockstep sequences reads per-stream lengths: bring the
 * lockstep ones' lens[] up to date for this step (rare: only non-uniform compactions make
 * such sequences). */
static void materialize_lens(rkv_exec *x, const rkv_sched_plan *p) {
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const int32_t idx = x->seq_row[i] / (int32_t)x->S;
    if (!x->uniform[idx]) continue;
    int32_t *lens = x->lens + (size_t)idx * x->S;
    for (uint32_t s = 0; s < x->S; s++) lens[s] = x->xlen[idx];
  }
}

/* The step's uploads on a device: the rows sync_seq marked, lengths, metadata. */
static rkv_status device_begin(rkv_exec *x, const rkv_sched_plan *p) {
  rkvi_xdev_step st;
  memset(&st, 0, sizeof st);
  st.plan = p;
  st.rows = x->rows;
  st.lens = x->lens;
  st.stride = x->stride;
  st.seq_row = x->seq_row;
  st.ids = x->ids;
  st.blen = x->all_uniform ? x->blen : NULL;
  st.all_indptr = x->all_indptr;
  st.q_indptr = x->q_indptr;
  st.h2o = x->h2o;
  rkv_status s = rkvi_xdev_begin(x->dev, &st);
  return s == RKV_OK ? RKV_OK : rkvi_fail(x->err, s, "%s", rkvi_xdev_last_error(x->dev));
}

rkv_status rkv_exec_begin(rkv_exec *x, const rkv_sched_plan *p) {
  if (!x) return RKV_ERR_INVALID_ARG;
  if (!p) return rkvi_fail(x->err, RKV_ERR_INVALID_ARG, "begin: plan is NULL");
  RKV_TRY(validate_plan(x, p));
  RKV_TRY(window_lifecycle(x, p));
  rkv_status st = x->pool ? move_blocks(x, p) : RKV_OK;
  if (st != RKV_OK)
    return rkvi_fail(x->err, st, "begin: swap / copy: %s",
                     rkv_backend_last_error(rkv_kv_pool_backend(x->pool)));
  /* a sequence restored from the host has its lengths re-read (it may share a mirror entry
   * with its past self) */
  for (uint32_t i = 0; i < p->n_swapped_in; i++) {
    const int32_t idx = rkv_blockmgr_seq_index(x->bm, p->swapped_in[i]);
    if (idx >= 0 && (uint32_t)idx < x->nidx) x->stale[idx] = 1;
  }
  x->h2o = false;
  x->all_uniform = true;
  uint32_t rows = 0, np = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    RKV_TRY(sync_seq(x, p, i));
    const rkv_sched_seq *q = &p->seqs[i];
    x->h2o |= q->evict && (unsigned)q->evict->policy < RKV_EVICT_POLICY_COUNT_ &&
              x->mass[q->evict->policy];
    if (i >= p->n_decode) {
      x->q_indptr[np] = (int32_t)(rows - p->n_decode);
      np++;
    }
    x->all_indptr[i] = (int32_t)rows;
    rows += q->n_tokens;
  }
  x->q_indptr[np] = (int32_t)(rows - p->n_decode);
  x->all_indptr[p->n_seqs] = (int32_t)rows;
  if (!x->all_uniform) materialize_lens(x, p);
  if (x->qw && !x->dev) { /* a device's plan rides in its step upload (device_begin) */
    /* every sequence has a window (validate_plan) and the arrays exist (make_window) */
    st = rkv_qwindow_plan(x->qw, x->ids, x->all_indptr, p->n_seqs);
    if (st != RKV_OK)
      return rkvi_fail(x->err, st, "begin: query-window plan: %s", rkv_qwindow_last_error(x->qw));
  }
  if (x->dev) RKV_TRY(device_begin(x, p));
  x->slots = p->slots;
  x->slot_layer_stride = p->slot_layer_stride;
  x->plan = p;
  memset(x->layer_done, 0, x->L);
  x->open = true;
  return RKV_OK;
}

/* ---- layers ------------------------------------------------------------------------------ */

/* One attention group of the open step (decodes, or prefill chunks) for a layer. */
typedef struct attn_group {
  rkv_block_rows br;
  rkv_attn_params ap;
  bool prefill;
} attn_group;

static void attn_group_init(rkv_exec *x, attn_group *g, uint32_t layer, const float *q, float *out,
                            bool prefill) {
  const rkv_sched_plan *p = x->plan;
  const uint32_t first = prefill ? p->n_decode : 0;
  const size_t row0 = prefill ? p->n_decode : 0;
  const rkv_block_rows br = {x->rows,   x->lens,        x->seq_row + first,
                             x->stride, layer * x->Hkv, x->all_uniform ? x->blen + first : NULL};
  g->br = br;
  g->prefill = prefill;
  rkv_attn_params ap = RKV_ATTN_PARAMS_INIT;
  ap.num_seqs = prefill ? p->n_seqs - p->n_decode : p->n_decode;
  ap.num_q_heads = x->Hq;
  ap.num_kv_heads = x->Hkv;
  ap.head_dim = x->d;
  ap.scale = x->scale;
  /* a group with no rows may come with no arrays (nothing to offset) */
  ap.q = q ? q + row0 * x->Hq * x->d : NULL;
  ap.out = out ? out + row0 * x->Hq * x->d : NULL;
  ap.rows = &g->br;
  ap.q_indptr = prefill ? x->q_indptr : NULL;
  ap.accumulate_scores = x->h2o;
  ap.seq_ids = x->ids + first;
  ap.layer = layer;
  g->ap = ap;
}

static rkv_status attend(rkv_exec *x, const attn_group *g) {
  if (!g->ap.num_seqs) return RKV_OK;
  const rkv_status st = g->prefill ? rkv_attn_prefill(x->pool, &g->ap, x->ws, x->ws_cap)
                                   : rkv_attn_decode(x->pool, &g->ap, x->ws, x->ws_cap);
  if (st != RKV_OK)
    return rkvi_fail(x->err, st, "layer %u %s attention: %s", g->ap.layer,
                     g->prefill ? "prefill" : "decode",
                     rkv_backend_last_error(rkv_kv_pool_backend(x->pool)));
  return RKV_OK;
}

/* Grows the workspace for both groups before the layer writes anything: a failed growth
 * after the K/V write or the decode group's query-window push could not be retried. */
static rkv_status attn_workspace(rkv_exec *x, const attn_group *g) {
  size_t need = 0;
  for (int i = 0; i < 2; i++) {
    size_t n = 0;
    if (!g[i].ap.num_seqs) continue;
    const rkv_status st = rkv_attn_workspace_size(x->pool, &g[i].ap, &n);
    if (st != RKV_OK)
      return rkvi_fail(x->err, st, "layer %u attention workspace: %s", g[i].ap.layer,
                       rkv_backend_last_error(rkv_kv_pool_backend(x->pool)));
    if (n > need) need = n;
  }
  return grow(x, &x->ws, &x->ws_cap, need + 64, "attention workspace");
}

/* The layer's query rows into the query window (one batched push on every backend), which
 * ends the layer. */
static rkv_status push_window(rkv_exec *x, uint32_t layer, const float *q) {
  if (x->qw) {
    const rkv_status st = rkv_qwindow_push_planned(x->qw, layer, q);
    if (st != RKV_OK)
      return rkvi_fail(x->err, st, "layer %u query-window push: %s", layer,
                       rkv_qwindow_last_error(x->qw));
  }
  x->layer_done[layer] = 1;
  return RKV_OK;
}

rkv_status rkv_exec_layer(rkv_exec *x, uint32_t layer, const float *q, const float *k,
                          const float *v, float *out) {
  if (!x) return RKV_ERR_INVALID_ARG;
  if (!x->open) return rkvi_fail(x->err, RKV_ERR_STATE, "layer: no step is open (begin first)");
  if (layer >= x->L) return rkvi_fail(x->err, RKV_ERR_INVALID_ARG, "layer %u >= %u", layer, x->L);
  if (x->layer_done[layer])
    return rkvi_fail(x->err, RKV_ERR_STATE, "layer %u already ran in this step", layer);
  if (!x->pool)
    return rkvi_fail(x->err, RKV_ERR_STATE,
                     "layer: a bookkeeping executor (no pool) runs no layers");
  if (x->plan->n_batched_tokens && (!q || !k || !v || !out))
    return rkvi_fail(x->err, RKV_ERR_INVALID_ARG, "layer %u: q, k, v and out are required", layer);
  rkv_status st;
  if (x->dev) { /* the device half has its own workspace in device memory */
    st = rkvi_xdev_layer(x->dev, layer, q, k, v, out);
    if (st != RKV_OK) return rkvi_fail(x->err, st, "%s", rkvi_xdev_last_error(x->dev));
    return push_window(x, layer, q);
  }
  const rkv_sched_plan *p = x->plan;
  const size_t n = (size_t)p->n_batched_tokens * x->Hkv;
  attn_group g[2];
  attn_group_init(x, &g[0], layer, q, out, false);
  attn_group_init(x, &g[1], layer, q, out, true);
  RKV_TRY(attn_workspace(x, g));
  if (x->slots) {
    st = rkv_attn_write_kv(x->pool, k, v, x->slots + layer * x->slot_layer_stride, (uint32_t)n);
  } else {
    const rkv_block_rows br = {x->rows,   x->lens,        x->seq_row,
                               x->stride, layer * x->Hkv, x->all_uniform ? x->blen : NULL};
    st = rkv_attn_write_kv_rows(x->pool, k, v, p->n_seqs, x->Hkv, x->all_indptr, &br);
  }
  if (st != RKV_OK)
    return rkvi_fail(x->err, st, "layer %u K/V write: %s", layer,
                     rkv_backend_last_error(rkv_kv_pool_backend(x->pool)));
  RKV_TRY(attend(x, &g[0]));
  RKV_TRY(attend(x, &g[1]));
  return push_window(x, layer, q);
}

/* ---- finish ------------------------------------------------------------------------------ */

/* Tokens every stream of a sequence holds after its compression: the protected prefix (never
 * compressed) plus the budget. */
static int32_t compress_keep(const rkv_exec *x, int64_t id, const rkv_evict_params *ev) {
  return rkv_blockmgr_seq_protected(x->bm, id) + ev->budget;
}

/* Bookkeeping mode: every stream of a flagged sequence is cut to `keep` on the host, as a
 * device engine's first step does (which tokens survive changes no block count). */
static rkv_status cut_streams(rkv_exec *x, const rkv_sched_seq *q, int32_t keep,
                              rkv_sched_output *o) {
  uint64_t cut = 0;
  const rkv_status st = rkv_blockmgr_truncate(x->bm, q->id, -1, keep, &cut);
  if (st != RKV_OK)
    return rkvi_fail(x->err, st, "compress %lld: %s", (long long)q->id,
                     rkv_blockmgr_last_error(x->bm));
  o->tokens_evicted += cut;
  return RKV_OK;
}

/* After a compaction the entry's rows re-sync at the next begin (stale stays set), but its
 * lengths become the block manager's now, so that begin can hold the next plan's kv_len and
 * n_tokens against them and bound its rows without a lookup per stream (check_mirror). */
static void set_uniform(rkv_exec *x, int32_t idx) {
  const int32_t *lens = x->lens + (size_t)idx * x->S;
  uint8_t same = 1;
  for (uint32_t s = 1; s < x->S; s++) same &= lens[s] == lens[0];
  x->uniform[idx] = same;
  x->xlen[idx] = lens[0];
}

/* Re-read from the block manager: O(streams) lookups (after a scored compaction, which costs
 * far more). */
static void refresh_lens(rkv_exec *x, int32_t idx, int64_t id) {
  int32_t *lens = x->lens + (size_t)idx * x->S;
  for (uint32_t s = 0; s < x->S; s++)
    (void)rkv_blockmgr_stream_len(x->bm, id, s / x->Hkv, s % x->Hkv, &lens[s]);
  set_uniform(x, idx);
}

/* After a uniform cut to `keep` tokens (rkv_blockmgr_truncate, _compact_uniform) of an entry
 * that was current: every stream holds min(its length, keep). O(1) for a lockstep entry. */
static void cut_lens(rkv_exec *x, int32_t idx, int32_t keep) {
  if (x->uniform[idx]) {
    if (x->xlen[idx] > keep) x->xlen[idx] = keep;
    return;
  }
  int32_t *lens = x->lens + (size_t)idx * x->S;
  for (uint32_t s = 0; s < x->S; s++)
    if (lens[s] > keep) lens[s] = keep;
  set_uniform(x, idx);
}

/* Bookkeeping mode: one flagged compression cuts the streams; the mirror entry re-syncs at
 * the next begin. */
static rkv_status compress_seq(rkv_exec *x, const rkv_sched_seq *q, rkv_sched_output *o) {
  const rkv_evict_params *ev = q->evict ? q->evict : &x->cfg.evict;
  if (!rkvi_policy_info(ev->policy).evicts) return RKV_OK;
  const uint32_t free0 = rkv_blockmgr_free_blocks(x->bm);
  const int32_t keep = compress_keep(x, q->id, ev);
  RKV_TRY(cut_streams(x, q, keep, o));
  o->blocks_freed = rkv_blockmgr_free_blocks(x->bm) - free0;
  o->compressed = true;
  const int32_t idx = rkv_blockmgr_seq_index(x->bm, q->id);
  if (idx >= 0) {
    x->stale[idx] = 1;
    cut_lens(x, idx, keep);
  }
  return RKV_OK;
}

/* Queues the step's flagged compressions (not ending now, an evicting policy) on the evictor,
 * in plan order. A refusal leaves that sequence as it is and is the step's status. */
static rkv_status queue_compressions(rkv_exec *x, const rkv_sched_plan *p,
                                     const rkv_sched_output *outs) {
  rkv_status ret = RKV_OK;
  uint32_t n = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    const rkv_evict_params *ev = q->evict ? q->evict : &x->cfg.evict;
    /* a sequence that ends now frees its blocks at the report: compressing it is wasted */
    if (!q->compress || outs[i].eos || !rkvi_policy_info(ev->policy).evicts) continue;
    /* the evictor reads each sequence's window from the executor's query window */
    const rkv_status st = rkv_evictor_add(x->evr, q->id, RKV_EVICTOR_ALL_LAYERS, ev, NULL);
    if (st != RKV_OK) rkvi_fail(x->err, st, "%s", rkv_evictor_last_error(x->evr));
    if (st == RKV_OK)
      x->eidx[n++] = i;
    else if (ret == RKV_OK)
      ret = st;
  }
  return ret;
}

/* After a run: each queued sequence's outcome into its output and its mirror entry (a device
 * compression is the uniform cut to its protected prefix + budget; a host one is re-read). */
static void apply_results(rkv_exec *x, const rkv_sched_plan *p, rkv_sched_output *outs, uint32_t n,
                          bool broken) {
  for (uint32_t k = 0; k < n; k++) {
    const uint32_t i = x->eidx[k];
    const rkv_evictor_result *r = &x->eres[k];
    const rkv_sched_seq *q = &p->seqs[i];
    outs[i].compressed = r->compressed;
    outs[i].tokens_evicted = r->tokens_evicted;
    outs[i].blocks_freed = r->blocks_freed;
    const int32_t idx = rkv_blockmgr_seq_index(x->bm, q->id);
    if (idx < 0 || (!r->compressed && !broken)) continue;
    x->stale[idx] = 1;
    const rkv_evict_params *ev = q->evict ? q->evict : &x->cfg.evict;
    if (x->dev && r->compressed && !broken)
      cut_lens(x, idx, compress_keep(x, q->id, ev));
    else
      refresh_lens(x, idx, q->id);
  }
}

/* The step's compressions through the evictor: queued, run, applied. A run that could not
 * allocate changes nothing and leaves the step open (*ran false). */
static rkv_status run_compressions(rkv_exec *x, const rkv_sched_plan *p, rkv_sched_output *outs,
                                   bool *ran) {
  *ran = false;
  rkv_status ret = queue_compressions(x, p, outs);
  const uint32_t queued = rkv_evictor_queued(x->evr);
  uint32_t n = 0;
  rkv_status st = RKV_OK;
  if (queued) st = rkv_evictor_run(x->evr, x->eres, x->cfg.max_seqs, &n);
  if (st != RKV_OK && rkv_evictor_queued(x->evr)) { /* refused before any change */
    rkv_evictor_clear(x->evr);
    return rkvi_fail(x->err, st, "finish: %s", rkv_evictor_last_error(x->evr));
  }
  *ran = true;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const bool eos = outs[i].eos;
    memset(&outs[i], 0, sizeof outs[i]);
    outs[i].id = p->seqs[i].id;
    outs[i].eos = eos;
  }
  /* rkv/evictor.h: only these mean that a run broke after a cut */
  const bool broken = st == RKV_ERR_INTERNAL || st == RKV_ERR_CUDA;
  apply_results(x, p, outs, n, broken);
  if (st != RKV_OK && (ret == RKV_OK || broken)) {
    ret = st;
    rkvi_fail(x->err, st, "%s", rkv_evictor_last_error(x->evr));
  }
  return ret;
}

rkv_status rkv_exec_finish(rkv_exec *x, rkv_sched_output *outs, uint32_t n) {
  if (!x) return RKV_ERR_INVALID_ARG;
  if (!x->open) return rkvi_fail(x->err, RKV_ERR_STATE, "finish: no step is open");
  const rkv_sched_plan *p = x->plan;
  if (n != p->n_seqs || (n && !outs))
    return rkvi_fail(x->err, RKV_ERR_INVALID_ARG, "finish: %u outputs for %u scheduled", n,
                     p->n_seqs);
  if (p->n_batched_tokens && x->pool)
    for (uint32_t l = 0; l < x->L; l++)
      if (!x->layer_done[l])
        return rkvi_fail(x->err, RKV_ERR_STATE, "finish: layer %u did not run", l);
  rkv_status ret = RKV_OK;
  if (x->evr) {
    bool ran = false;
    ret = run_compressions(x, p, outs, &ran);
    if (!ran) return ret;
  } else {
    for (uint32_t i = 0; i < n; i++) {
      const bool eos = outs[i].eos;
      memset(&outs[i], 0, sizeof outs[i]);
      outs[i].id = p->seqs[i].id;
      outs[i].eos = eos;
    }
    for (uint32_t i = 0; i < n; i++) {
      /* a sequence that ends now frees its blocks at the report: compressing it is wasted */
      if (!p->seqs[i].compress || outs[i].eos) continue;
      const rkv_status st = compress_seq(x, &p->seqs[i], &outs[i]);
      if (st != RKV_OK && ret == RKV_OK) ret = st;
    }
  }
  if (x->dev) {
    /* the step's one sync: the arenas are free again and every kernel's fault surfaces */
    const rkv_status st = rkvi_xdev_finish(x->dev);
    if (st != RKV_OK) ret = rkvi_fail(x->err, st, "%s", rkvi_xdev_last_error(x->dev));
  }
  x->open = false;
  return ret;
}

/* ---- check ------------------------------------------------------------------------------- */

rkv_status rkv_exec_check(const rkv_exec *xc) {
  if (!xc) return RKV_ERR_INVALID_ARG;
  rkv_exec *x = (rkv_exec *)xc; /* only the error text changes */
  for (uint32_t i = 0; i < x->nidx; i++) {
    const int64_t id = x->owner[i];
    if (id < 0 || x->stale[i]) continue;
    const int32_t at = rkv_blockmgr_seq_index(x->bm, id);
    if (at < 0) continue; /* left the block manager: forgotten at the next begin */
    if (at != (int32_t)i)
      return rkvi_fail(x->err, RKV_ERR_CORRUPT,
                       "check: mirror entry %u was synced for %lld, which is not live there", i,
                       (long long)id);
    for (uint32_t s = 0; s < x->S; s++) {
      const int32_t *ids = NULL;
      int32_t nb = 0, len = 0;
      (void)rkv_blockmgr_stream_len(x->bm, id, s / x->Hkv, s % x->Hkv, &len);
      (void)rkv_blockmgr_stream_blocks(x->bm, id, s / x->Hkv, s % x->Hkv, &ids, &nb);
      const int32_t *row = x->rows + ((size_t)i * x->S + s) * x->stride;
      const int32_t mine = x->uniform[i] ? x->xlen[i] : x->lens[(size_t)i * x->S + s];
      if (mine != len || (nb && memcmp(row, ids, (size_t)nb * sizeof(int32_t)) != 0))
        return rkvi_fail(x->err, RKV_ERR_CORRUPT,
                         "check: mirror of %lld stream %u differs from the block manager "
                         "(len %d vs %d)",
                         (long long)id, s, mine, len);
    }
  }
  if (x->dev && rkvi_xdev_check(x->dev, x->rows, x->stride, x->owner, x->stale) != RKV_OK)
    return rkvi_fail(x->err, RKV_ERR_CORRUPT, "%s", rkvi_xdev_last_error(x->dev));
  if (x->qw && rkv_qwindow_check(x->qw) != RKV_OK)
    return rkvi_fail(x->err, RKV_ERR_CORRUPT, "check: query window: %s",
                     rkv_qwindow_last_error(x->qw));
  return RKV_OK;
}
