/* The query window: per (sequence, layer) a ring of the last `window` query rows of every
 * query head, which R-KV and SnapKV score importance with. Sequences are found through an
 * open-addressing table (linear probing, tombstone-free backward-shift deletion) sized for
 * max_seqs, and own an entry: a slot of one array [entries][layers][q_heads][window][d] in the
 * memory of the window's backend (qwindow_store.c), query row t of a ring at row t % window.
 * The host keeps, per (entry, layer), how many rows were pushed, so pushes never allocate and
 * a device needs no bookkeeping of its own. The batched push is qwindow_batch.c. */
#include <string.h>

#include "qwindow_impl.h"

const rkv_qwindow_config *rkvi_qwindow_config(const rkv_qwindow *w) {
  return &w->cfg;
}

rkv_backend *rkvi_qwindow_backend(const rkv_qwindow *w) {
  return w->be;
}

bool rkvi_qwindow_host(const rkv_qwindow *w) {
  return w->host;
}

static uint32_t hash_id(int64_t id) {
  uint64_t z = (uint64_t)id * 0x9E3779B97F4A7C15ull;
  return (uint32_t)(z >> 32);
}

/* Hash slot holding id, or -1. */
static int64_t find_slot(const rkv_qwindow *w, int64_t id) {
  uint32_t mask = w->cap - 1;
  for (uint32_t h = hash_id(id) & mask, probes = 0; probes < w->cap; h = (h + 1) & mask, probes++) {
    if (w->slot[h] < 0) return -1;
    if (w->ids[w->slot[h]] == id) return h;
  }
  return -1;
}

int32_t rkvi_qw_entry(const rkv_qwindow *w, int64_t id) {
  int64_t h = find_slot(w, id);
  return h < 0 ? -1 : w->slot[h];
}

bool rkvi_qwindow_has(const rkv_qwindow *w, int64_t seq) {
  return find_slot(w, seq) >= 0;
}

uint32_t rkvi_qwindow_live(const rkv_qwindow *w) {
  return w->live;
}

void rkv_qwindow_destroy(rkv_qwindow *w) {
  if (!w) return;
  const rkv_allocator *a = rkvi_qw_alloc(w);
  const size_t ms = w->cfg.max_seqs, L = w->cfg.num_layers;
  rkvi_qw_store_free(w);
  rkvi_qw_plan_free(w);
  rkvi_free(a, w->slot, (size_t)w->cap * sizeof(int32_t));
  rkvi_free(a, w->ids, ms * sizeof(int64_t));
  rkvi_free(a, w->next, ms * L * sizeof(int64_t));
  rkvi_free(a, w->free_ids, ms * sizeof(int32_t));
  rkv_allocator copy = w->alloc;
  bool has = w->has_alloc;
  rkvi_free(has ? &copy : NULL, w, sizeof *w);
}

static rkv_status check_config(const rkv_qwindow_config *cfg) {
  if (cfg->struct_size != sizeof(rkv_qwindow_config) &&
      cfg->struct_size != RKV_QWINDOW_CONFIG_V1_SIZE)
    return RKV_ERR_INVALID_ARG;
  if (cfg->num_layers < 1 || cfg->num_q_heads < 1 || cfg->head_dim < 1 || cfg->window < 1 ||
      cfg->num_layers > 4096 || cfg->num_q_heads > 4096 || cfg->head_dim > 4096 ||
      cfg->window > 65536 || cfg->max_seqs > (1u << 24))
    return RKV_ERR_INVALID_ARG;
  size_t entry;
  if (rkvi_mul_size((size_t)cfg->num_q_heads * cfg->head_dim, (size_t)cfg->window * cfg->num_layers,
                    &entry) ||
      entry > SIZE_MAX / sizeof(float) / (cfg->max_seqs ? cfg->max_seqs : 4096))
    return RKV_ERR_INVALID_ARG;
  return RKV_OK;
}

rkv_status rkv_qwindow_create(const rkv_qwindow_config *cfg, rkv_qwindow **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  rkv_qwindow_config def = RKV_QWINDOW_CONFIG_INIT;
  if (!cfg) cfg = &def;
  if (check_config(cfg) != RKV_OK) return RKV_ERR_INVALID_ARG;
  rkv_qwindow *w = rkvi_calloc(cfg->allocator, sizeof *w, 0);
  if (!w) return RKV_ERR_NO_MEMORY;
  memcpy(&w->cfg, cfg, cfg->struct_size); /* a version-1 struct leaves backend NULL */
  w->cfg.struct_size = sizeof(rkv_qwindow_config);
  if (w->cfg.max_seqs == 0) w->cfg.max_seqs = 4096;
  if (cfg->allocator) {
    w->alloc = *cfg->allocator;
    w->has_alloc = true;
  }
  w->cfg.allocator = NULL; /* the copy above is what we use; the caller's may go away */
  w->be = w->cfg.backend;
  w->host = !w->be || rkv_backend_device_is_host(w->be);
  w->row_floats = (size_t)cfg->num_q_heads * cfg->head_dim;
  w->ring_floats = w->row_floats * cfg->window;
  w->entry_floats = w->ring_floats * cfg->num_layers;
  w->cap = 2;
  while (w->cap < 2 * w->cfg.max_seqs) w->cap *= 2;
  const rkv_allocator *a = rkvi_qw_alloc(w);
  const size_t ms = w->cfg.max_seqs, L = cfg->num_layers;
  w->slot = rkvi_alloc(a, (size_t)w->cap * sizeof(int32_t), 0);
  w->ids = rkvi_alloc(a, ms * sizeof(int64_t), 0);
  w->next = rkvi_alloc(a, ms * L * sizeof(int64_t), 0);
  w->free_ids = rkvi_alloc(a, ms * sizeof(int32_t), 0);
  if (!w->slot || !w->ids || !w->next || !w->free_ids || rkvi_qw_store_init(w) != RKV_OK) {
    rkv_qwindow_destroy(w);
    return RKV_ERR_NO_MEMORY;
  }
  for (uint32_t i = 0; i < w->cap; i++) w->slot[i] = -1;
  for (size_t i = 0; i < ms; i++) {
    w->ids[i] = -1;
    w->free_ids[i] = (int32_t)(ms - 1 - i); /* entries are taken lowest first */
  }
  w->n_free = (uint32_t)ms;
  *out = w;
  return RKV_OK;
}

const char *rkv_qwindow_last_error(const rkv_qwindow *w) {
  return w ? w->err : "";
}

rkv_status rkv_qwindow_reserve(rkv_qwindow *w, uint32_t n) {
  if (!w) return RKV_ERR_INVALID_ARG;
  int32_t top = -1;
  for (uint32_t i = 0; i < n && i < w->n_free; i++) {
    const int32_t e = w->free_ids[w->n_free - 1 - i];
    if (e > top) top = e;
  }
  return top < 0 ? RKV_OK : rkvi_qw_store_grow(w, (uint32_t)top + 1);
}

/* Takes a free entry, makes sure the storage holds it, links it into the table and empties
 * its rings. */
static rkv_status insert(rkv_qwindow *w, int64_t id, int32_t *out) {
  if (id < 0) return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "sequence id %lld < 0", (long long)id);
  if (find_slot(w, id) >= 0)
    return rkvi_fail(w->err, RKV_ERR_EXISTS, "sequence %lld already has a query window",
                     (long long)id);
  if (w->n_free == 0)
    return rkvi_fail(w->err, RKV_ERR_CAPACITY, "query window full: %u sequences live",
                     w->cfg.max_seqs);
  const int32_t e = w->free_ids[w->n_free - 1];
  RKV_TRY(rkvi_qw_store_grow(w, (uint32_t)e + 1));
  w->n_free--;
  w->ids[e] = id;
  memset(w->next + (size_t)e * w->cfg.num_layers, 0, w->cfg.num_layers * sizeof(int64_t));
  uint32_t mask = w->cap - 1, h = hash_id(id) & mask;
  while (w->slot[h] >= 0) h = (h + 1) & mask;
  w->slot[h] = e;
  w->live++;
  w->planned = false;
  *out = e;
  return RKV_OK;
}

rkv_status rkv_qwindow_seq_add(rkv_qwindow *w, int64_t seq) {
  if (!w) return RKV_ERR_INVALID_ARG;
  int32_t e = -1;
  RKV_TRY(insert(w, seq, &e));
  /* a device kernel reads all `window` rows of a ring: never leave it stale bytes */
  rkv_status st = rkvi_qw_store_clear(w, e);
  if (st != RKV_OK) (void)rkv_qwindow_seq_remove(w, seq);
  return st;
}

rkv_status rkv_qwindow_seq_remove(rkv_qwindow *w, int64_t seq) {
  if (!w) return RKV_ERR_INVALID_ARG;
  int64_t hs = find_slot(w, seq);
  if (hs < 0)
    return rkvi_fail(w->err, RKV_ERR_NOT_FOUND, "sequence %lld has no query window",
                     (long long)seq);
  uint32_t mask = w->cap - 1, h = (uint32_t)hs;
  int32_t e = w->slot[h];
  w->ids[e] = -1;
  w->free_ids[w->n_free++] = e;
  w->live--;
  w->planned = false;
  /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
  w->slot[h] = -1;
  for (uint32_t j = (h + 1) & mask; w->slot[j] >= 0; j = (j + 1) & mask) {
    uint32_t home = hash_id(w->ids[w->slot[j]]) & mask;
    /* Entry j may move to the hole h iff its home is not cyclically in (h, j]. */
    bool stays = (h < j) ? (home > h && home <= j) : (home > h || home <= j);
    if (!stays) {
      w->slot[h] = w->slot[j];
      w->slot[j] = -1;
      h = j;
    }
  }
  return RKV_OK;
}

rkv_status rkv_qwindow_seq_fork(rkv_qwindow *w, int64_t parent, int64_t child) {
  if (!w) return RKV_ERR_INVALID_ARG;
  const int32_t p = rkvi_qw_entry(w, parent);
  if (p < 0)
    return rkvi_fail(w->err, RKV_ERR_NOT_FOUND, "parent sequence %lld has no query window",
                     (long long)parent);
  int32_t c = -1;
  RKV_TRY(insert(w, child, &c));
  rkv_status st = rkvi_qw_store_copy(w, c, p);
  if (st != RKV_OK) {
    (void)rkv_qwindow_seq_remove(w, child);
    return st;
  }
  const size_t L = w->cfg.num_layers;
  memcpy(w->next + (size_t)c * L, w->next + (size_t)p * L, L * sizeof(int64_t));
  return RKV_OK;
}

/* Copies n rows of q (token-major) into ring `ring` ([q_heads][window][d]) from ring row
 * (pos % window) on: the head-major layout the evictor's kernels read. */
void rkvi_qw_copy_rows(const rkv_qwindow *w, float *ring, int64_t pos, const float *q, uint32_t n) {
  const uint32_t W = w->cfg.window, H = w->cfg.num_q_heads, D = w->cfg.head_dim;
  /* Rows older than the last W would be overwritten anyway: skip them. */
  const uint32_t first = n > W ? n - W : 0;
  for (uint32_t t = first; t < n; t++) {
    const size_t row = (size_t)((pos + t) % W);
    for (uint32_t h = 0; h < H; h++)
      memcpy(ring + ((size_t)h * W + row) * D, q + ((size_t)t * H + h) * D, D * sizeof(float));
  }
}

rkv_status rkv_qwindow_push(rkv_qwindow *w, int64_t seq, uint32_t layer, const float *q,
                            uint32_t n) {
  if (!w) return RKV_ERR_INVALID_ARG;
  if (!q || n == 0)
    return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "push needs rows (q %p, n %u)", (const void *)q,
                     n);
  if (layer >= w->cfg.num_layers)
    return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "layer %u >= num_layers %u", layer,
                     w->cfg.num_layers);
  if (!w->host)
    return rkvi_fail(w->err, RKV_ERR_UNSUPPORTED,
                     "push: the window lives in device memory (rkv_qwindow_plan and "
                     "rkv_qwindow_push_planned push on every backend)");
  const int32_t e = rkvi_qw_entry(w, seq);
  if (e < 0)
    return rkvi_fail(w->err, RKV_ERR_NOT_FOUND, "sequence %lld has no query window",
                     (long long)seq);
  int64_t *next = &w->next[(size_t)e * w->cfg.num_layers + layer];
  rkvi_qw_copy_rows(w, rkvi_qw_ring(w, e, layer), *next, q, n);
  *next += n;
  return RKV_OK;
}

bool rkvi_qwindow_rows(const rkv_qwindow *w, int64_t seq, const float **rows, int32_t *oldest,
                       int64_t *pushed) {
  const int32_t e = rkvi_qw_entry(w, seq);
  if (e < 0) return false;
  const int64_t *next = w->next + (size_t)e * w->cfg.num_layers;
  *rows = rkvi_qw_ring(w, e, 0);
  *oldest = (int32_t)(next[0] % w->cfg.window);
  int64_t least = next[0];
  for (uint32_t l = 1; l < w->cfg.num_layers; l++) least = next[l] < least ? next[l] : least;
  *pushed = least;
  return true;
}

rkv_status rkv_qwindow_get(const rkv_qwindow *w, int64_t seq, uint32_t layer, float *out,
                           uint32_t *count) {
  if (!w || !out || !count) return RKV_ERR_INVALID_ARG;
  if (layer >= w->cfg.num_layers) return RKV_ERR_INVALID_ARG;
  const int32_t e = rkvi_qw_entry(w, seq);
  if (e < 0) return RKV_ERR_NOT_FOUND;
  const uint32_t W = w->cfg.window, H = w->cfg.num_q_heads, D = w->cfg.head_dim;
  const int64_t next = w->next[(size_t)e * w->cfg.num_layers + layer];
  const uint32_t c = next < W ? (uint32_t)next : W;
  const float *ring = NULL;
  float *tmp = NULL;
  if (w->host) {
    ring = rkvi_qw_ring(w, e, layer);
  } else {
    RKV_TRY(rkvi_qw_store_read((rkv_qwindow *)w, e, layer, &tmp));
    ring = tmp;
  }
  const uint32_t oldest = (uint32_t)((next - c) % W);
  for (uint32_t h = 0; h < H; h++)
    for (uint32_t r = 0; r < c; r++)
      memcpy(out + ((size_t)h * W + r) * D, ring + ((size_t)h * W + (oldest + r) % W) * D,
             D * sizeof(float));
  if (tmp) rkvi_free(rkvi_qw_alloc(w), tmp, w->ring_floats * sizeof(float));
  *count = c;
  return RKV_OK;
}

rkv_status rkv_qwindow_check(const rkv_qwindow *w) {
  if (!w) return RKV_ERR_INVALID_ARG;
  char *err = ((rkv_qwindow *)w)->err; /* the last-error text is not logical state */
  uint32_t seen = 0, ms = w->cfg.max_seqs;
  for (uint32_t h = 0; h < w->cap; h++) {
    int32_t e = w->slot[h];
    if (e < 0) continue;
    if ((uint32_t)e >= ms)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "hash slot %u points at entry %d", h, e);
    if (w->ids[e] < 0)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "hash slot %u points at a dead entry %d", h, e);
    if ((uint32_t)e >= w->entries)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "entry %d of sequence %lld beyond the storage (%u)", e,
                       (long long)w->ids[e], w->entries);
    if (find_slot(w, w->ids[e]) != (int64_t)h)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "sequence %lld not reachable from its home",
                       (long long)w->ids[e]);
    for (uint32_t l = 0; l < w->cfg.num_layers; l++)
      if (w->next[(size_t)e * w->cfg.num_layers + l] < 0)
        return rkvi_fail(err, RKV_ERR_CORRUPT, "sequence %lld layer %u: %lld rows pushed",
                         (long long)w->ids[e], l,
                         (long long)w->next[(size_t)e * w->cfg.num_layers + l]);
    seen++;
  }
  if (seen != w->live || w->live + w->n_free != ms)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "%u reachable, %u live, %u free of %u", seen, w->live,
                     w->n_free, ms);
  return rkvi_qw_plan_check(w);
}
