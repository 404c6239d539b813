/* The query window: per (sequence, layer) a ring of the last `window` query rows of every
 * query head, which R-KV and SnapKV score importance with. Sequences are found through an
 * open-addressing table (linear probing, tombstone-free backward-shift deletion) sized for
 * max_seqs; each sequence's rings are one allocation made when it is added, so pushes (once
 * per layer per step) never allocate. */
#include <string.h>

#include "qwindow_internal.h"
#include "rkv_internal.h"

typedef struct qw_seq {
  int64_t id;
  float *data;     /* [layers][window][q_heads][d]: ring rows, token-major like push */
  uint32_t *head;  /* [layers] next row to write */
  uint32_t *count; /* [layers] rows filled (<= window) */
} qw_seq;

struct rkv_qwindow {
  rkv_qwindow_config cfg;
  rkv_allocator alloc;
  bool has_alloc;
  size_t row_floats; /* q_heads * d */
  size_t seq_floats; /* layers * window * row_floats */
  uint32_t cap;      /* hash slots: a power of two >= 2 * max_seqs */
  uint32_t live;
  int32_t *slot;     /* [cap] index into seqs or -1 */
  qw_seq *seqs;      /* [max_seqs] */
  int32_t *free_ids; /* [max_seqs] stack of unused seqs entries */
  uint32_t n_free;
  char err[RKV_ERRBUF];
};

static const rkv_allocator *qw_alloc(const rkv_qwindow *w) {
  return w->has_alloc ? &w->alloc : NULL;
}

const rkv_qwindow_config *rkvi_qwindow_config(const rkv_qwindow *w) {
  return &w->cfg;
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
    if (w->seqs[w->slot[h]].id == id) return h;
  }
  return -1;
}

bool rkvi_qwindow_has(const rkv_qwindow *w, int64_t seq) {
  return find_slot(w, seq) >= 0;
}

uint32_t rkvi_qwindow_live(const rkv_qwindow *w) {
  return w->live;
}

static qw_seq *find_seq(const rkv_qwindow *w, int64_t id) {
  int64_t h = find_slot(w, id);
  return h < 0 ? NULL : &w->seqs[w->slot[h]];
}

void rkv_qwindow_destroy(rkv_qwindow *w) {
  if (!w) return;
  const rkv_allocator *a = qw_alloc(w);
  uint32_t L = w->cfg.num_layers, ms = w->cfg.max_seqs;
  if (w->seqs) {
    for (uint32_t i = 0; i < ms; i++) {
      qw_seq *s = &w->seqs[i];
      rkvi_free(a, s->data, w->seq_floats * sizeof(float));
      rkvi_free(a, s->head, L * sizeof(uint32_t));
      rkvi_free(a, s->count, L * sizeof(uint32_t));
    }
  }
  rkvi_free(a, w->slot, (size_t)w->cap * sizeof(int32_t));
  rkvi_free(a, w->seqs, (size_t)ms * sizeof(qw_seq));
  rkvi_free(a, w->free_ids, (size_t)ms * sizeof(int32_t));
  rkv_allocator copy = w->alloc;
  bool has = w->has_alloc;
  rkvi_free(has ? &copy : NULL, w, sizeof *w);
}

rkv_status rkv_qwindow_create(const rkv_qwindow_config *cfg, rkv_qwindow **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  rkv_qwindow_config def = RKV_QWINDOW_CONFIG_INIT;
  if (!cfg) cfg = &def;
  if (cfg->struct_size != sizeof(rkv_qwindow_config)) return RKV_ERR_INVALID_ARG;
  if (cfg->num_layers < 1 || cfg->num_q_heads < 1 || cfg->head_dim < 1 || cfg->window < 1 ||
      cfg->num_layers > 4096 || cfg->num_q_heads > 4096 || cfg->head_dim > 4096 ||
      cfg->window > 65536 || cfg->max_seqs > (1u << 24))
    return RKV_ERR_INVALID_ARG;
  size_t row = (size_t)cfg->num_q_heads * cfg->head_dim, seqf;
  if (rkvi_mul_size(row, (size_t)cfg->window * cfg->num_layers, &seqf) ||
      seqf > SIZE_MAX / sizeof(float))
    return RKV_ERR_INVALID_ARG;
  rkv_qwindow *w = rkvi_calloc(cfg->allocator, sizeof *w, 0);
  if (!w) return RKV_ERR_NO_MEMORY;
  w->cfg = *cfg;
  if (w->cfg.max_seqs == 0) w->cfg.max_seqs = 4096;
  if (cfg->allocator) {
    w->alloc = *cfg->allocator;
    w->has_alloc = true;
  }
  w->cfg.allocator = NULL; /* the copy above is what we use; the caller's may go away */
  w->row_floats = row;
  w->seq_floats = seqf;
  w->cap = 2;
  while (w->cap < 2 * w->cfg.max_seqs) w->cap *= 2;
  const rkv_allocator *a = qw_alloc(w);
  uint32_t ms = w->cfg.max_seqs;
  w->slot = rkvi_alloc(a, (size_t)w->cap * sizeof(int32_t), 0);
  w->seqs = rkvi_calloc(a, (size_t)ms * sizeof(qw_seq), 0);
  w->free_ids = rkvi_alloc(a, (size_t)ms * sizeof(int32_t), 0);
  if (!w->slot || !w->seqs || !w->free_ids) {
    rkv_qwindow_destroy(w);
    return RKV_ERR_NO_MEMORY;
  }
  for (uint32_t i = 0; i < w->cap; i++) w->slot[i] = -1;
  for (uint32_t i = 0; i < ms; i++) w->free_ids[i] = (int32_t)(ms - 1 - i);
  w->n_free = ms;
  *out = w;
  return RKV_OK;
}

const char *rkv_qwindow_last_error(const rkv_qwindow *w) {
  return w ? w->err : "";
}

/* Allocates a free entry's rings on its first use; they are kept after seq_remove, so a
 * churning workload allocates once per entry. */
static rkv_status prepare(rkv_qwindow *w, qw_seq *s) {
  if (s->data) return RKV_OK;
  const rkv_allocator *a = qw_alloc(w);
  const uint32_t L = w->cfg.num_layers;
  s->data = rkvi_alloc(a, w->seq_floats * sizeof(float), 64);
  s->head = rkvi_alloc(a, L * sizeof(uint32_t), 0);
  s->count = rkvi_alloc(a, L * sizeof(uint32_t), 0);
  if (s->data && s->head && s->count) return RKV_OK;
  rkvi_free(a, s->data, w->seq_floats * sizeof(float));
  rkvi_free(a, s->head, L * sizeof(uint32_t));
  rkvi_free(a, s->count, L * sizeof(uint32_t));
  s->data = NULL, s->head = NULL, s->count = NULL;
  return rkvi_fail(w->err, RKV_ERR_NO_MEMORY, "no memory for a query window of %zu floats",
                   w->seq_floats);
}

rkv_status rkv_qwindow_reserve(rkv_qwindow *w, uint32_t n) {
  if (!w) return RKV_ERR_INVALID_ARG;
  for (uint32_t i = 0; i < n && i < w->n_free; i++)
    RKV_TRY(prepare(w, &w->seqs[w->free_ids[w->n_free - 1 - i]]));
  return RKV_OK;
}

/* Takes a free entry, allocates its rings (first use) and links it into the table. */
static rkv_status insert(rkv_qwindow *w, int64_t id, qw_seq **out) {
  if (id < 0) return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "sequence id %lld < 0", (long long)id);
  if (find_slot(w, id) >= 0)
    return rkvi_fail(w->err, RKV_ERR_EXISTS, "sequence %lld already has a query window",
                     (long long)id);
  if (w->n_free == 0)
    return rkvi_fail(w->err, RKV_ERR_CAPACITY, "query window full: %u sequences live",
                     w->cfg.max_seqs);
  int32_t e = w->free_ids[w->n_free - 1];
  qw_seq *s = &w->seqs[e];
  uint32_t L = w->cfg.num_layers;
  RKV_TRY(prepare(w, s));
  w->n_free--;
  s->id = id;
  memset(s->head, 0, L * sizeof(uint32_t));
  memset(s->count, 0, L * sizeof(uint32_t));
  uint32_t mask = w->cap - 1, h = hash_id(id) & mask;
  while (w->slot[h] >= 0) h = (h + 1) & mask;
  w->slot[h] = e;
  w->live++;
  *out = s;
  return RKV_OK;
}

rkv_status rkv_qwindow_seq_add(rkv_qwindow *w, int64_t seq) {
  if (!w) return RKV_ERR_INVALID_ARG;
  qw_seq *s;
  return insert(w, seq, &s);
}

rkv_status rkv_qwindow_seq_remove(rkv_qwindow *w, int64_t seq) {
  if (!w) return RKV_ERR_INVALID_ARG;
  int64_t hs = find_slot(w, seq);
  if (hs < 0)
    return rkvi_fail(w->err, RKV_ERR_NOT_FOUND, "sequence %lld has no query window",
                     (long long)seq);
  uint32_t mask = w->cap - 1, h = (uint32_t)hs;
  int32_t e = w->slot[h];
  w->seqs[e].id = -1;
  w->free_ids[w->n_free++] = e;
  w->live--;
  /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
  w->slot[h] = -1;
  for (uint32_t j = (h + 1) & mask; w->slot[j] >= 0; j = (j + 1) & mask) {
    uint32_t home = hash_id(w->seqs[w->slot[j]].id) & mask;
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
  qw_seq *p = find_seq(w, parent);
  if (!p)
    return rkvi_fail(w->err, RKV_ERR_NOT_FOUND, "parent sequence %lld has no query window",
                     (long long)parent);
  int64_t pid = p->id;
  qw_seq *c = NULL;
  RKV_TRY(insert(w, child, &c));
  p = find_seq(w, pid); /* insert does not move entries, but stay obviously correct */
  uint32_t L = w->cfg.num_layers;
  memcpy(c->data, p->data, w->seq_floats * sizeof(float));
  memcpy(c->head, p->head, L * sizeof(uint32_t));
  memcpy(c->count, p->count, L * sizeof(uint32_t));
  return RKV_OK;
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
  qw_seq *s = find_seq(w, seq);
  if (!s)
    return rkvi_fail(w->err, RKV_ERR_NOT_FOUND, "sequence %lld has no query window",
                     (long long)seq);
  const uint32_t W = w->cfg.window;
  const size_t row = w->row_floats;
  float *ring = s->data + (size_t)layer * W * row;
  /* Rows older than the last W would be overwritten anyway: skip them. */
  uint32_t first = n > W ? n - W : 0;
  uint32_t h = (uint32_t)((s->head[layer] + (uint64_t)first) % W);
  for (uint32_t t = first; t < n; t++) {
    memcpy(ring + (size_t)h * row, q + (size_t)t * row, row * sizeof(float));
    h = h + 1 == W ? 0 : h + 1;
  }
  s->head[layer] = (uint32_t)((s->head[layer] + (uint64_t)n) % W);
  uint64_t c = (uint64_t)s->count[layer] + n;
  s->count[layer] = c > W ? W : (uint32_t)c;
  return RKV_OK;
}

rkv_status rkv_qwindow_get(const rkv_qwindow *w, int64_t seq, uint32_t layer, float *out,
                           uint32_t *count) {
  if (!w || !out || !count) return RKV_ERR_INVALID_ARG;
  if (layer >= w->cfg.num_layers) return RKV_ERR_INVALID_ARG;
  const qw_seq *s = find_seq(w, seq);
  if (!s) return RKV_ERR_NOT_FOUND;
  const uint32_t W = w->cfg.window, H = w->cfg.num_q_heads, D = w->cfg.head_dim;
  const size_t row = w->row_floats;
  const float *ring = s->data + (size_t)layer * W * row;
  uint32_t c = s->count[layer];
  uint32_t oldest = (s->head[layer] + W - c) % W;
  for (uint32_t r = 0; r < c; r++) {
    const float *src = ring + (size_t)((oldest + r) % W) * row;
    for (uint32_t h = 0; h < H; h++)
      memcpy(out + ((size_t)h * W + r) * D, src + (size_t)h * D, D * sizeof(float));
  }
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
    const qw_seq *s = &w->seqs[e];
    if (s->id < 0 || !s->data)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "hash slot %u points at a dead entry %d", h, e);
    if (find_slot(w, s->id) != (int64_t)h)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "sequence %lld not reachable from its home",
                       (long long)s->id);
    for (uint32_t l = 0; l < w->cfg.num_layers; l++)
      if (s->count[l] > w->cfg.window || s->head[l] >= w->cfg.window)
        return rkvi_fail(err, RKV_ERR_CORRUPT, "sequence %lld layer %u: count %u head %u",
                         (long long)s->id, l, s->count[l], s->head[l]);
    seen++;
  }
  if (seen != w->live || w->live + w->n_free != ms)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "%u reachable, %u live, %u free of %u", seen, w->live,
                     w->n_free, ms);
  return RKV_OK;
}
