/* Block manager core: handle creation and configuration checks, the sequence id map, sequence
 * lifecycle (create, free, fork, restore), the append hot path with copy-on-write, stream
 * queries, CSR export and accounting. Compaction lives in compact.c, the invariant walker in
 * check.c. Design: docs/ARCHITECTURE.md (plain arrays, LIFO free stack, one [streams][cap]
 * table matrix per sequence, amortised doubling). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "blockmgr_impl.h"

#define BM_DEFAULT_MAX_SEQS 4096u
#define BM_MAX_MAX_SEQS (1u << 24)
#define BM_MAX_STREAMS 65536u

rkv_status bm_fail(const rkv_blockmgr *m, rkv_status s, const char *fmt, ...) {
  if (!m) return s;
  /* The handle was allocated non-const; only its error buffer changes here. */
  char *buf = ((rkv_blockmgr *)m)->err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, RKV_ERRBUF, fmt, ap);
  va_end(ap);
  return s;
}

/* ---- Id map: open addressing, linear probing, backward-shift deletion -------------------- */

static uint32_t bm_hash(int64_t id) {
  uint64_t z = (uint64_t)id + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (uint32_t)(z ^ (z >> 31));
}

int32_t bm_find(const rkv_blockmgr *m, int64_t id) {
  uint32_t i = bm_hash(id) & m->hmask;
  for (;;) {
    int32_t s = m->hmap[i];
    if (s < 0) return -1;
    if (m->seqs[s].id == id) return s;
    i = (i + 1) & m->hmask;
  }
}

static void bm_map_insert(rkv_blockmgr *m, int64_t id, int32_t slot) {
  uint32_t i = bm_hash(id) & m->hmask;
  while (m->hmap[i] >= 0) i = (i + 1) & m->hmask;
  m->hmap[i] = slot;
}

/* Removes id (present). Later entries of the probe run shift back into the hole when their
 * home position does not lie cyclically in (hole, k], so no tombstones are needed. */
static void bm_map_erase(rkv_blockmgr *m, int64_t id) {
  uint32_t j = bm_hash(id) & m->hmask;
  while (m->seqs[m->hmap[j]].id != id) j = (j + 1) & m->hmask;
  m->hmap[j] = -1;
  uint32_t k = j;
  for (;;) {
    k = (k + 1) & m->hmask;
    int32_t s = m->hmap[k];
    if (s < 0) return;
    uint32_t home = bm_hash(m->seqs[s].id) & m->hmask;
    if (((k - home) & m->hmask) >= ((k - j) & m->hmask)) {
      m->hmap[j] = s;
      m->hmap[k] = -1;
      j = k;
    }
  }
}

rkv_status bm_get_seq_raw(const rkv_blockmgr *m, int64_t id, bm_seq **out) {
  int32_t s = id >= 0 ? bm_find(m, id) : -1;
  if (s < 0) return bm_fail(m, RKV_ERR_NOT_FOUND, "sequence %lld not found", (long long)id);
  *out = &m->seqs[s];
  return RKV_OK;
}

rkv_status bm_get_seq(const rkv_blockmgr *m, int64_t id, bm_seq **out) {
  RKV_TRY(bm_get_seq_raw(m, id, out));
  bm_settle(m, *out);
  return RKV_OK;
}

void bm_update_room(const rkv_blockmgr *m, bm_seq *q) {
  int64_t room = INT32_MAX;
  for (uint32_t s = 0; s < m->streams; s++) {
    int64_t r = (int64_t)q->nblk[s] * m->bs - q->len[s];
    if (r < room) room = r;
  }
  q->room = (int32_t)room;
}

rkv_status bm_after_op(rkv_blockmgr *m) {
  m->pc_seg = -1; /* the operation's parked segment ends (prefix.c) */
  if (!m->cfg.check_every_op && RKV_DEBUG < 3) return RKV_OK;
  rkv_status st = rkv_blockmgr_check(m);
  if (st == RKV_ERR_NO_MEMORY) {
    /* The mutation itself succeeded; failing it now would break all-or-nothing. */
    rkvi_log(m->cfg.logger, RKV_LOG_WARN, "blockmgr: invariant walk skipped: no memory");
    return RKV_OK;
  }
  /* CORRUPT here is a librkv bug (caller input cannot break the invariants). */
  if (st == RKV_ERR_CORRUPT) rkvi_log(m->cfg.logger, RKV_LOG_ERROR, "%s", m->err);
  return st;
}

/* ---- Creation -------------------------------------------------------------------------- */

static rkv_status bm_validate(const rkv_blockmgr_config *in, rkv_blockmgr_config *c, char *err,
                              size_t err_cap) {
#define BM_BAD(...)                                          \
  do {                                                       \
    if (err && err_cap) snprintf(err, err_cap, __VA_ARGS__); \
    return RKV_ERR_INVALID_ARG;                              \
  } while (0)
  if (!in) BM_BAD("config is NULL");
  if (in->struct_size < 8 || in->struct_size > sizeof(rkv_blockmgr_config))
    BM_BAD("config struct_size %u outside [8, %zu]", in->struct_size, sizeof(rkv_blockmgr_config));
  rkv_blockmgr_config d = RKV_BLOCKMGR_CONFIG_INIT;
  memcpy(&d, in, in->struct_size);
  d.struct_size = sizeof(rkv_blockmgr_config);
  if (d.num_blocks < 1) BM_BAD("num_blocks must be >= 1");
  if (d.block_size < 1 || d.block_size > 1024)
    BM_BAD("block_size %u outside 1..1024", d.block_size);
  if ((uint64_t)d.num_blocks * d.block_size >= (1ull << 31))
    BM_BAD("num_blocks * block_size = %llu must be < 2^31",
           (unsigned long long)d.num_blocks * d.block_size);
  if (d.num_layers < 1 || d.num_kv_heads < 1) BM_BAD("num_layers and num_kv_heads must be >= 1");
  if ((uint64_t)d.num_layers * d.num_kv_heads > BM_MAX_STREAMS)
    BM_BAD("num_layers * num_kv_heads = %llu exceeds %u streams per sequence",
           (unsigned long long)d.num_layers * d.num_kv_heads, BM_MAX_STREAMS);
  if (d.head_dim < 1 || d.head_dim > 4096) BM_BAD("head_dim %u outside 1..4096", d.head_dim);
  if ((int)d.dtype < 0 || d.dtype >= RKV_DTYPE_COUNT_) BM_BAD("invalid dtype %d", (int)d.dtype);
  if (d.max_seqs == 0) d.max_seqs = BM_DEFAULT_MAX_SEQS;
  if (d.max_seqs > BM_MAX_MAX_SEQS) BM_BAD("max_seqs %u exceeds %u", d.max_seqs, BM_MAX_MAX_SEQS);
  if (!(d.watermark >= 0.0f && d.watermark <= 1.0f))
    BM_BAD("watermark %g outside [0, 1]", (double)d.watermark);
#undef BM_BAD
  *c = d;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_validate_config(const rkv_blockmgr_config *cfg, char *err,
                                                size_t err_cap) {
  rkv_blockmgr_config c;
  if (err && err_cap) err[0] = '\0';
  return bm_validate(cfg, &c, err, err_cap);
}

RKV_API rkv_status rkv_blockmgr_create(const rkv_blockmgr_config *cfg, rkv_blockmgr **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  rkv_blockmgr_config c;
  char err[RKV_ERRBUF];
  rkv_status st = bm_validate(cfg, &c, err, sizeof err);
  if (st != RKV_OK) {
    /* No handle exists to carry the text: the logger gets it (and validate_config returns it). */
    if (cfg && cfg->struct_size >= offsetof(rkv_blockmgr_config, logger) + sizeof(void *))
      rkvi_log(cfg->logger, RKV_LOG_ERROR, "rkv_blockmgr_create: %s", err);
    return st;
  }
  const rkv_allocator *al = c.allocator;
  rkv_blockmgr *m = rkvi_calloc(al, sizeof *m, 64);
  if (!m) return RKV_ERR_NO_MEMORY;
  m->cfg = c;
  if (al) {
    m->alloc_copy = *al;
    m->al = &m->alloc_copy;
    m->cfg.allocator = m->al;
  }
  if (c.logger) {
    m->log_copy = *c.logger;
    m->cfg.logger = &m->log_copy;
  }
  m->streams = c.num_layers * c.num_kv_heads;
  m->bs = (int32_t)c.block_size;
  m->bs_shift = -1;
  for (int32_t k = 0; k < 11; k++)
    if (m->bs == (1 << k)) m->bs_shift = k;
  m->nblocks = (int32_t)c.num_blocks;
  m->max_seqs = c.max_seqs;
  uint32_t hcap = 1;
  while (hcap < 2 * c.max_seqs) hcap <<= 1;
  m->hmask = hcap - 1;
  size_t nb = c.num_blocks;
  m->free_ids = rkvi_alloc(m->al, nb * sizeof(int32_t), 64);
  m->ref = rkvi_calloc(m->al, nb * sizeof(uint32_t), 64);
  m->fill = rkvi_alloc(m->al, nb * sizeof(uint16_t), 64);
  m->seqs = rkvi_calloc(m->al, c.max_seqs * sizeof(bm_seq), 64);
  m->free_slots = rkvi_alloc(m->al, c.max_seqs * sizeof(int32_t), 64);
  m->hmap = rkvi_alloc(m->al, (size_t)hcap * sizeof(int32_t), 64);
  m->mark = rkvi_calloc(m->al, m->streams * sizeof(uint32_t), 64);
  if (!m->free_ids || !m->ref || !m->fill || !m->seqs || !m->free_slots || !m->hmap || !m->mark) {
    rkv_blockmgr_destroy(m);
    return RKV_ERR_NO_MEMORY;
  }
  /* Stack top is the end: the first pops return 0, 1, 2, ... */
  for (int32_t i = 0; i < m->nblocks; i++) m->free_ids[i] = m->nblocks - 1 - i;
  m->free_top = m->nblocks;
  for (uint32_t i = 0; i < c.max_seqs; i++) {
    m->seqs[i].id = -1;
    m->free_slots[i] = (int32_t)(c.max_seqs - 1 - i);
  }
  m->free_slot_top = c.max_seqs;
  for (uint32_t i = 0; i < hcap; i++) m->hmap[i] = -1;
  if (c.prefix_cache && bm_pc_create(m) != RKV_OK) {
    rkv_blockmgr_destroy(m);
    return RKV_ERR_NO_MEMORY;
  }
  rkvi_log(m->cfg.logger, RKV_LOG_DEBUG,
           "blockmgr: %u blocks x %u slots, %u layers x %u kv heads, max_seqs %u", c.num_blocks,
           c.block_size, c.num_layers, c.num_kv_heads, c.max_seqs);
  *out = m;
  return RKV_OK;
}

static size_t bm_tab_bytes(const rkv_blockmgr *m, int32_t cap) {
  return (size_t)m->streams * (size_t)cap * sizeof(int32_t);
}

RKV_API void rkv_blockmgr_destroy(rkv_blockmgr *m) {
  if (!m) return;
  const rkv_allocator *al = m->al;
  size_t nb = (size_t)m->nblocks;
  if (m->seqs) {
    for (uint32_t i = 0; i < m->max_seqs; i++) {
      bm_seq *q = &m->seqs[i];
      rkvi_free(al, q->tab, bm_tab_bytes(m, q->cap));
      rkvi_free(al, q->nblk, BM_META_ARRAYS * (size_t)m->streams * sizeof(int32_t));
    }
  }
  rkvi_free(al, m->free_ids, nb * sizeof(int32_t));
  rkvi_free(al, m->ref, nb * sizeof(uint32_t));
  rkvi_free(al, m->fill, nb * sizeof(uint16_t));
  rkvi_free(al, m->seqs, m->max_seqs * sizeof(bm_seq));
  rkvi_free(al, m->free_slots, m->max_seqs * sizeof(int32_t));
  rkvi_free(al, m->hmap, ((size_t)m->hmask + 1) * sizeof(int32_t));
  rkvi_free(al, m->mark, m->streams * sizeof(uint32_t));
  bm_pc_destroy(m);
  rkvi_free(al, m, sizeof *m);
}

RKV_API const char *rkv_blockmgr_last_error(const rkv_blockmgr *m) {
  return m ? m->err : "NULL block manager";
}

RKV_API const rkv_blockmgr_config *rkv_blockmgr_get_config(const rkv_blockmgr *m) {
  return m ? &m->cfg : NULL;
}

RKV_API uint32_t rkv_blockmgr_streams_per_seq(const rkv_blockmgr *m) {
  return m ? m->streams : 0;
}

RKV_API rkv_kv_layout rkv_blockmgr_kv_layout(const rkv_blockmgr *m) {
  rkv_kv_layout l = {RKV_DTYPE_BF16, 0, 0};
  if (m) {
    l.dtype = m->cfg.dtype;
    l.block_size = m->cfg.block_size;
    l.head_dim = m->cfg.head_dim;
  }
  return l;
}

/* ---- Sequences ------------------------------------------------------------------------- */

/* Gives a dead slot its per-stream arrays (kept across seq_free) and a row capacity of at
 * least `blocks` (a live sequence always has a table, so row pointers are never computed from
 * NULL). Capacity only: nothing observable changes, whether it succeeds or not. */
static rkv_status bm_prepare_slot(rkv_blockmgr *m, bm_seq *q, int32_t blocks) {
  if (!q->nblk) {
    int32_t *meta = rkvi_alloc(m->al, BM_META_ARRAYS * (size_t)m->streams * sizeof(int32_t), 64);
    if (!meta) return bm_fail(m, RKV_ERR_NO_MEMORY, "out of memory for sequence metadata");
    q->nblk = meta;
    q->len = meta + m->streams;
    q->tbase = meta + 2 * (size_t)m->streams;
    q->dirty = meta + 3 * (size_t)m->streams;
  }
  if (blocks < 1) blocks = 1;
  if (blocks > m->nblocks) blocks = m->nblocks; /* no row can hold more distinct blocks */
  return bm_grow(m, q, blocks);
}

/* Takes a free slot for a new id, making sure its per-stream arrays exist. Nothing changes on
 * failure. The slot is not yet live (no id, not in the map). */
rkv_status bm_reserve_slot(rkv_blockmgr *m, int64_t id, int32_t *slot) {
  if (id < 0) return bm_fail(m, RKV_ERR_INVALID_ARG, "sequence id %lld < 0", (long long)id);
  if (bm_find(m, id) >= 0)
    return bm_fail(m, RKV_ERR_EXISTS, "sequence %lld already exists", (long long)id);
  if (m->free_slot_top == 0)
    return bm_fail(m, RKV_ERR_CAPACITY, "max_seqs (%u) sequences already live", m->max_seqs);
  int32_t s = m->free_slots[m->free_slot_top - 1];
  RKV_TRY(bm_prepare_slot(m, &m->seqs[s], 1));
  *slot = s;
  return RKV_OK;
}

/* Makes a reserved slot live under id. */
bm_seq *bm_commit_slot(rkv_blockmgr *m, int64_t id, int32_t slot) {
  m->free_slot_top--;
  bm_seq *q = &m->seqs[slot];
  q->id = id;
  q->room = 0;
  q->pend = 0;
  q->maybe_shared_tail = false;
  q->protect = 0;
  bm_map_insert(m, id, slot);
  m->num_seqs++;
  return q;
}

/* Grows q's row capacity to at least need blocks (one allocation, rows copied). */
rkv_status bm_grow(rkv_blockmgr *m, bm_seq *q, int32_t need) {
  if (need <= q->cap) return RKV_OK;
  int64_t cap = (int64_t)q->cap * 2;
  if (cap < 4) cap = 4;
  if (cap > m->nblocks) cap = m->nblocks;
  if (cap < need) cap = need;
  size_t bytes;
  if (rkvi_mul_size((size_t)m->streams * sizeof(int32_t), (size_t)cap, &bytes))
    return bm_fail(m, RKV_ERR_NO_MEMORY, "block table size overflows");
  int32_t *t = rkvi_alloc(m->al, bytes, 64);
  if (!t)
    return bm_fail(m, RKV_ERR_NO_MEMORY, "out of memory growing a block table to %lld blocks",
                   (long long)cap);
  if (q->tab && q->id >= 0) { /* live: keep its rows */
    for (uint32_t s = 0; s < m->streams; s++)
      memcpy(t + (size_t)s * (size_t)cap, q->tab + (size_t)s * (size_t)q->cap,
             (size_t)q->nblk[s] * sizeof(int32_t));
  }
  rkvi_free(m->al, q->tab, bm_tab_bytes(m, q->cap));
  q->tab = t;
  q->cap = (int32_t)cap;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_seq_create(rkv_blockmgr *m, int64_t seq) {
  if (!m) return RKV_ERR_INVALID_ARG;
  int32_t slot = -1;
  RKV_TRY(bm_reserve_slot(m, seq, &slot));
  bm_seq *q = bm_commit_slot(m, seq, slot);
  memset(q->nblk, 0, BM_META_ARRAYS * (size_t)m->streams * sizeof(int32_t));
  return bm_after_op(m);
}

RKV_API rkv_status rkv_blockmgr_reserve_seq(rkv_blockmgr *m, uint32_t i, int32_t blocks) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (i >= m->free_slot_top)
    return bm_fail(m, RKV_ERR_CAPACITY, "reserve_seq: creation %u ahead, %u slots free", i,
                   m->free_slot_top);
  return bm_prepare_slot(m, &m->seqs[m->free_slots[m->free_slot_top - 1 - i]], blocks);
}

RKV_API rkv_status rkv_blockmgr_seq_free(rkv_blockmgr *m, int64_t seq) {
  if (!m) return RKV_ERR_INVALID_ARG;
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq(m, seq, &q));
  for (uint32_t s = 0; s < m->streams; s++) {
    const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    for (int32_t j = 0; j < q->nblk[s]; j++) bm_unref(m, row[j]);
    m->tokens -= (uint64_t)q->len[s];
    q->nblk[s] = 0;
    q->len[s] = 0;
    q->tbase[s] = 0;
  }
  bm_map_erase(m, seq);
  q->id = -1;
  q->room = 0;
  q->maybe_shared_tail = false;
  m->free_slots[m->free_slot_top++] = (int32_t)(q - m->seqs);
  m->num_seqs--;
  return bm_after_op(m);
}

RKV_API rkv_status rkv_blockmgr_seq_fork(rkv_blockmgr *m, int64_t parent, int64_t child) {
  if (!m) return RKV_ERR_INVALID_ARG;
  bm_seq *p = NULL;
  RKV_TRY(bm_get_seq(m, parent, &p));
  int32_t slot = -1;
  RKV_TRY(bm_reserve_slot(m, child, &slot));
  bm_seq *c = &m->seqs[slot];
  int32_t maxnb = 0;
  for (uint32_t s = 0; s < m->streams; s++)
    if (p->nblk[s] > maxnb) maxnb = p->nblk[s];
  RKV_TRY(bm_grow(m, c, maxnb));
  c = bm_commit_slot(m, child, slot);
  for (uint32_t s = 0; s < m->streams; s++) {
    const int32_t *src = p->tab + (size_t)s * (size_t)p->cap;
    int32_t *dst = c->tab + (size_t)s * (size_t)c->cap;
    for (int32_t j = 0; j < p->nblk[s]; j++) {
      dst[j] = src[j];
      bm_addref(m, src[j]);
    }
    c->nblk[s] = p->nblk[s];
    c->len[s] = p->len[s];
    c->tbase[s] = p->tbase[s];
    c->dirty[s] = 0;
    m->tokens += (uint64_t)p->len[s];
  }
  c->room = p->room;
  c->protect = p->protect;
  c->maybe_shared_tail = true;
  p->maybe_shared_tail = true;
  return bm_after_op(m);
}

RKV_API rkv_status rkv_blockmgr_seq_restore(rkv_blockmgr *m, int64_t seq, const int32_t *lens) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!lens) return bm_fail(m, RKV_ERR_INVALID_ARG, "seq_restore: lens is NULL");
  int64_t total = 0;
  int32_t maxnb = 0;
  for (uint32_t s = 0; s < m->streams; s++) {
    if (lens[s] < 0)
      return bm_fail(m, RKV_ERR_INVALID_ARG, "seq_restore: lens[%u] = %d < 0", s, lens[s]);
    int32_t nb = bm_div_up(lens[s], m->bs);
    total += nb;
    if (nb > maxnb) maxnb = nb;
  }
  int32_t slot = -1;
  RKV_TRY(bm_reserve_slot(m, seq, &slot));
  if (total > bm_avail(m))
    return bm_fail(m, RKV_ERR_NO_BLOCKS, "seq_restore: needs %lld blocks, %d free",
                   (long long)total, bm_avail(m));
  bm_seq *q = &m->seqs[slot];
  RKV_TRY(bm_grow(m, q, maxnb));
  bm_reserve_free(m, (int32_t)total);
  q = bm_commit_slot(m, seq, slot);
  for (uint32_t s = 0; s < m->streams; s++) {
    int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    int32_t nb = bm_div_up(lens[s], m->bs);
    for (int32_t j = 0; j < nb; j++) row[j] = bm_pop(m);
    q->nblk[s] = nb;
    q->len[s] = lens[s];
    q->dirty[s] = 0;
    bm_set_tbase(m, q, s);
    m->tokens += (uint64_t)lens[s];
  }
  bm_update_room(m, q);
  return bm_after_op(m);
}

RKV_API bool rkv_blockmgr_seq_exists(const rkv_blockmgr *m, int64_t seq) {
  return m && seq >= 0 && bm_find(m, seq) >= 0;
}

RKV_API int32_t rkv_blockmgr_seq_index(const rkv_blockmgr *m, int64_t seq) {
  return m && seq >= 0 ? bm_find(m, seq) : -1;
}

RKV_API uint32_t rkv_blockmgr_num_seqs(const rkv_blockmgr *m) {
  return m ? m->num_seqs : 0;
}

RKV_API uint32_t rkv_blockmgr_list_seqs(const rkv_blockmgr *m, int64_t *ids, uint32_t cap) {
  if (!m) return 0;
  uint32_t n = 0;
  for (uint32_t i = 0; i < m->max_seqs && n < m->num_seqs; i++) {
    if (m->seqs[i].id < 0) continue;
    if (ids && n < cap) ids[n] = m->seqs[i].id;
    n++;
  }
  return n;
}

/* ---- Append ---------------------------------------------------------------------------- */

/* What a one-token append into a sequence without shared tails takes: the streams whose last
 * block is full (each takes one block), the row length needed and the longest stream. One
 * branch-free pass over settled lengths, for the planner and the boundary append. */
static int32_t bm_full_streams(const rkv_blockmgr *m, const bm_seq *q, int32_t *maxnb,
                               int32_t *maxlen) {
  const uint32_t S = m->streams;
  const int32_t bs = m->bs;
  const int32_t *restrict len = q->len, *restrict nblk = q->nblk;
  int32_t need = 0, mnb = 0, mlen = 0;
  for (uint32_t s = 0; s < S; s++) {
    const int32_t full = len[s] == nblk[s] * bs;
    need += full;
    const int32_t nb = nblk[s] + full;
    mnb = nb > mnb ? nb : mnb;
    mlen = len[s] > mlen ? len[s] : mlen;
  }
  *maxnb = mnb;
  *maxlen = mlen;
  return need;
}

/* Planning pass shared by append, blocks_needed and can_append: blocks to pop (new + CoW),
 * CoW copies, and the largest row afterwards. INVALID_ARG on length overflow. */
static rkv_status bm_plan_append(const rkv_blockmgr *m, const bm_seq *q, uint32_t n,
                                 int64_t *blocks, int64_t *cows, int32_t *maxnb) {
  if (n == 1 && !q->maybe_shared_tail) { /* the decode step: one branch-free pass */
    int32_t maxlen;
    const int32_t full = bm_full_streams(m, q, maxnb, &maxlen);
    if (maxlen < INT32_MAX) {
      *blocks = full;
      *cows = 0;
      return RKV_OK;
    }
  }
  int64_t total = 0, ncow = 0;
  int32_t mx = 0;
  for (uint32_t s = 0; s < m->streams; s++) {
    int64_t newlen = (int64_t)q->len[s] + n;
    if (newlen > INT32_MAX)
      return bm_fail(m, RKV_ERR_INVALID_ARG, "append: stream %u would exceed 2^31 tokens", s);
    int32_t nb = bm_nblocks(m, newlen);
    if (nb > q->nblk[s]) total += nb - q->nblk[s];
    if (nb > mx) mx = nb;
    if (q->maybe_shared_tail && bm_off(m, q->len[s]) != 0 &&
        m->ref[q->tab[(size_t)s * (size_t)q->cap + (size_t)q->nblk[s] - 1]] > 1)
      ncow++;
  }
  *blocks = total + ncow;
  *cows = ncow;
  *maxnb = mx;
  return RKV_OK;
}

/* Where the slot of token t of stream s goes: base[s * n + t] for stream-major output, or
 * base[layer * layer_stride + t * token_stride + head] for a batch's layer-major mapping
 * (bm_slot_ptr gives the t = 0 entry; tokens follow at token_stride, 1 when stream-major). */
typedef struct bm_slot_out {
  int64_t *base;
  size_t layer_stride, token_stride; /* head stride 1 (batch layout) */
  bool batch;                        /* false: base + s * n + t */
} bm_slot_out;

static inline int64_t *bm_slot_ptr(const rkv_blockmgr *m, const bm_slot_out *o, uint32_t s,
                                   uint32_t n) {
  if (!o->batch) return o->base + (size_t)s * n;
  const uint32_t H = m->cfg.num_kv_heads;
  return o->base + (size_t)(s / H) * o->layer_stride + s % H;
}

/* The decode step's slots, layer-major: the token goes to position len + pend of every stream
 * (pend: the sequence's tokens not yet settled into len). len is only read: the caller counts
 * the token in pend, so the step writes no length (the lengths settle on first read).
 * restrict-qualified parameters so the compiler may vectorise (the arrays never alias). */
static inline __attribute__((always_inline)) void bm_decode_slots_h(
    int64_t *restrict out, size_t layer_stride, const int32_t *restrict tb,
    const int32_t *restrict len, int32_t pend, uint32_t L, uint32_t H) {
  for (uint32_t l = 0; l < L; l++, out += layer_stride, tb += H, len += H)
    for (uint32_t h = 0; h < H; h++)
      /* tb + len + pend is the slot itself, in [0, num_blocks * block_size) < 2^31: summed in
       * 32 bits and widened as unsigned, it costs an unpack with zero, not a sign extension */
      out[h] = (uint32_t)(tb[h] + len[h] + pend);
}

/* The decode step's slots for output o (stream-major output is the batch layout with a layer
 * stride of num_kv_heads). A constant H unrolls each layer's row into whole vectors; a run-time
 * H left the compiler a vector loop with its checks and remainder per layer. */
static void bm_decode_slots(const rkv_blockmgr *m, const bm_slot_out *o, const int32_t *tb,
                            const int32_t *len, int32_t pend) {
  const uint32_t H = m->cfg.num_kv_heads, L = m->cfg.num_layers;
  const size_t ls = o->batch ? o->layer_stride : H;
#define BM_SLOTS_CASE(k)                                 \
  case k:                                                \
    bm_decode_slots_h(o->base, ls, tb, len, pend, L, k); \
    return;
  switch (H) {
    BM_SLOTS_CASE(1)
    BM_SLOTS_CASE(2)
    BM_SLOTS_CASE(4)
    BM_SLOTS_CASE(8)
    BM_SLOTS_CASE(16)
    default:
      bm_decode_slots_h(o->base, ls, tb, len, pend, L, H);
  }
#undef BM_SLOTS_CASE
}

/* The decode step that crosses a block boundary (one token, no shared tail): every stream
 * whose last block is full takes a fresh block. Passes: count, pop, slots. Under lockstep
 * growth all streams of a sequence cross together (one step in block_size), and the pop pass
 * has a branch-free form for that. */
static rkv_status bm_append_boundary(rkv_blockmgr *m, bm_seq *q, const bm_slot_out *o) {
  const uint32_t S = m->streams;
  const int32_t bs = m->bs;
  const int32_t *restrict len = q->len;
  int32_t *restrict nblk = q->nblk;
  int32_t maxnb, maxlen;
  const int32_t need = bm_full_streams(m, q, &maxnb, &maxlen);
  if (maxlen > INT32_MAX - 1)
    return bm_fail(m, RKV_ERR_INVALID_ARG, "append: a stream would exceed 2^31 tokens");
  if (need > bm_avail(m))
    return bm_fail(m, RKV_ERR_NO_BLOCKS, "append: needs %d blocks, %d free", need, bm_avail(m));
  RKV_TRY(bm_grow(m, q, maxnb));
  bm_reserve_free(m, need);
  int64_t room = INT32_MAX;
  /* Each popped block's reference count and each stream's row entry sit on their own cache
   * line (rows are [stream][block], ids come off the free stack in any order): fetch them a
   * few streams ahead so the misses overlap instead of stalling the loop one by one. */
  enum { AHEAD = 8 };
  int32_t *restrict tab = q->tab, *restrict dirty = q->dirty, *restrict tbase = q->tbase;
  uint32_t *restrict ref = m->ref;
  const int32_t *restrict fids = m->free_ids;
  const size_t cap = (size_t)q->cap;
  int32_t top = m->free_top;
  if (need == (int32_t)S) {
    /* Lockstep, the common case: every stream is full and takes the next id off the free
     * stack, without a branch, and is left with bs - 1 free slots. */
    const int32_t *restrict ids = fids + top - 1; /* stream s takes ids[-s] */
    for (uint32_t s = 0; s < S; s++) {
      if (s + AHEAD < S) {
        __builtin_prefetch(&tab[(size_t)(s + AHEAD) * cap + (size_t)nblk[s + AHEAD]], 1);
        __builtin_prefetch(&ref[ids[-(ptrdiff_t)(s + AHEAD)]], 1);
      }
      const int32_t nb = nblk[s], id = ids[-(ptrdiff_t)s];
      ref[id] = 1;
      tab[(size_t)s * cap + (size_t)nb] = id;
      dirty[s] = nb < dirty[s] ? nb : dirty[s];
      tbase[s] = (id - nb) * bs;
      nblk[s] = nb + 1;
    }
    top -= (int32_t)S;
    room = bs - 1;
  } else {
    for (uint32_t s = 0; s < S; s++) {
      if (s + AHEAD < S) {
        __builtin_prefetch(&tab[(size_t)(s + AHEAD) * cap + (size_t)nblk[s + AHEAD]], 1);
        if (top > AHEAD) __builtin_prefetch(&ref[fids[top - 1 - AHEAD]], 1);
      }
      int32_t nb = nblk[s];
      if (len[s] == nb * bs) {
        const int32_t id = fids[--top];
        ref[id] = 1;
        tab[(size_t)s * cap + (size_t)nb] = id;
        if (nb < dirty[s]) dirty[s] = nb;
        tbase[s] = (id - nb) * bs;
        nblk[s] = ++nb;
      }
      const int64_t r = (int64_t)nb * bs - (len[s] + 1);
      room = r < room ? r : room;
    }
  }
  /* The slots in a second pass over the (now cached) rows: written inside the loop above, a
   * batch's slot address cost a division per stream. The token is counted in pend (settled
   * on entry, so 0 before): no length is written. */
  if (o) bm_decode_slots(m, o, tbase, len, 0);
  q->pend = 1;
  m->free_top = top;
  const uint32_t used = bm_used(m);
  if (used > m->peak_used) m->peak_used = used;
  q->room = (int32_t)room;
  m->tokens += S;
  return bm_after_op(m);
}

static rkv_status bm_append(rkv_blockmgr *m, int64_t seq, uint32_t n, const bm_slot_out *o,
                            rkv_block_copy *copies, uint32_t *n_copies) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (n_copies) *n_copies = 0;
  if (n == 0) return bm_fail(m, RKV_ERR_INVALID_ARG, "append: n == 0");
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq_raw(m, seq, &q));
  const uint32_t S = m->streams;
  const int32_t bs = m->bs;
  const size_t tstride = o && o->batch ? o->token_stride : 1;
  if (!q->maybe_shared_tail && n <= (uint32_t)q->room && (!o || n == 1)) {
    /* Lockstep growth inside every stream's last block, which it owns alone: the tokens are
     * counted in pend (the lengths settle on first read), so without slots this is O(1); a
     * decode step's slots take one pass. */
    if (o) bm_decode_slots(m, o, q->tbase, q->len, q->pend);
    q->pend += (int32_t)n;
    q->room -= (int32_t)n;
    m->tokens += (uint64_t)n * S;
    return bm_after_op(m);
  }
  bm_settle(m, q);
  if (!q->maybe_shared_tail && n <= (uint32_t)q->room) {
    /* Several tokens with slots, every stream with n free slots in its last block, which it
     * owns alone (without slots, or for one token, the path above took it). */
    int32_t *restrict len = q->len;
    const int32_t *restrict tb = q->tbase;
    for (uint32_t s = 0; s < S; s++) {
      int64_t *out = bm_slot_ptr(m, o, s, n);
      int64_t base = (int64_t)tb[s] + len[s];
      for (uint32_t t = 0; t < n; t++) out[t * tstride] = base + t;
      len[s] += (int32_t)n;
    }
    q->room -= (int32_t)n;
    m->tokens += (uint64_t)n * S;
    return bm_after_op(m);
  }
  if (!q->maybe_shared_tail && n == 1) return bm_append_boundary(m, q, o);
  int64_t need, ncow;
  int32_t maxnb;
  RKV_TRY(bm_plan_append(m, q, n, &need, &ncow, &maxnb));
  if (ncow && !copies)
    return bm_fail(m, RKV_ERR_INVALID_ARG,
                   "append: sequence %lld shares %lld partial blocks but copies is NULL",
                   (long long)seq, (long long)ncow);
  if (need > bm_avail(m))
    return bm_fail(m, RKV_ERR_NO_BLOCKS, "append: needs %lld blocks, %d free", (long long)need,
                   bm_avail(m));
  RKV_TRY(bm_grow(m, q, maxnb));
  bm_reserve_free(m, (int32_t)need);
  uint32_t nc = 0;
  int64_t room = INT32_MAX;
  for (uint32_t s = 0; s < S; s++) {
    int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    int32_t len = q->len[s], nb = q->nblk[s];
    if (q->maybe_shared_tail && bm_off(m, len) != 0 && m->ref[row[nb - 1]] > 1) {
      int32_t old = row[nb - 1], fresh = bm_pop(m);
      copies[nc].src = old;
      copies[nc].dst = fresh;
      nc++;
      row[nb - 1] = fresh;
      bm_unref(m, old);
      bm_mark_dirty(q, s, nb - 1);
    } else if (q->maybe_shared_tail && bm_off(m, len) != 0) {
      /* A tail left partly filled while shared can have been registered since by the
       * sequence that held it full; the sharer that writes into it now changes its content. */
      bm_content_changes(m, row[nb - 1]);
    }
    int32_t newlen = len + (int32_t)n;
    int32_t newnb = bm_nblocks(m, newlen);
    if (newnb > nb) {
      for (int32_t j = nb; j < newnb; j++) row[j] = bm_pop(m);
      bm_mark_dirty(q, s, nb);
    }
    if (o) {
      int64_t *out = bm_slot_ptr(m, o, s, n);
      int32_t pos = len;
      for (uint32_t t = 0; t < n; t++, pos++)
        out[t * tstride] = (int64_t)row[bm_blk(m, pos)] * bs + bm_off(m, pos);
    }
    q->nblk[s] = newnb > nb ? newnb : nb;
    q->len[s] = newlen;
    bm_set_tbase(m, q, s);
    int64_t r = (int64_t)q->nblk[s] * bs - newlen;
    if (r < room) room = r;
  }
  q->room = (int32_t)room;
  /* Every tail is now private: a fresh block, a CoW copy, or a block that already had ref 1. */
  q->maybe_shared_tail = false;
  m->tokens += (uint64_t)n * S;
  if (n_copies) *n_copies = nc;
  return bm_after_op(m);
}

RKV_API rkv_status rkv_blockmgr_append(rkv_blockmgr *m, int64_t seq, uint32_t n, int64_t *slots,
                                       rkv_block_copy *copies, uint32_t *n_copies) {
  const bm_slot_out o = {slots, 0, 0, false};
  return bm_append(m, seq, n, slots ? &o : NULL, copies, n_copies);
}

RKV_API rkv_status rkv_blockmgr_append_batch(rkv_blockmgr *m, int64_t seq, uint32_t n,
                                             int64_t *slots, size_t layer_stride,
                                             rkv_block_copy *copies, uint32_t *n_copies) {
  if (m && slots && layer_stride < (size_t)n * m->cfg.num_kv_heads)
    return bm_fail(m, RKV_ERR_INVALID_ARG,
                   "append_batch: layer_stride %zu < %u tokens x %u kv heads", layer_stride, n,
                   m->cfg.num_kv_heads);
  const bm_slot_out o = {slots, layer_stride, m ? m->cfg.num_kv_heads : 0, true};
  return bm_append(m, seq, n, slots ? &o : NULL, copies, n_copies);
}

RKV_API rkv_status rkv_blockmgr_blocks_needed(const rkv_blockmgr *m, int64_t seq, uint32_t n,
                                              uint32_t *out) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!out) return bm_fail(m, RKV_ERR_INVALID_ARG, "blocks_needed: out is NULL");
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq_raw(m, seq, &q));
  int64_t need, ncow;
  int32_t maxnb;
  if (n == 0 || (!q->maybe_shared_tail && n <= (uint32_t)q->room)) {
    *out = 0;
    return RKV_OK;
  }
  bm_settle(m, q);
  RKV_TRY(bm_plan_append(m, q, n, &need, &ncow, &maxnb));
  *out = need > UINT32_MAX ? UINT32_MAX : (uint32_t)need;
  return RKV_OK;
}

RKV_API bool rkv_blockmgr_can_append(const rkv_blockmgr *m, int64_t seq, uint32_t n) {
  if (!m || seq < 0) return false;
  int32_t s = bm_find(m, seq);
  if (s < 0) return false;
  bm_seq *q = &m->seqs[s];
  if (n == 0 || (!q->maybe_shared_tail && n <= (uint32_t)q->room)) return true;
  bm_settle(m, q);
  int64_t need, ncow;
  int32_t maxnb;
  if (bm_plan_append(m, q, n, &need, &ncow, &maxnb) != RKV_OK) return false;
  return need <= bm_avail(m);
}

RKV_API rkv_status rkv_blockmgr_reserve_append(rkv_blockmgr *m, int64_t seq, uint32_t n) {
  if (!m) return RKV_ERR_INVALID_ARG;
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq_raw(m, seq, &q));
  /* within room no stream takes a block: the rows keep their length (a copy-on-write replaces
   * a block in place) */
  if (n <= (uint32_t)q->room) return RKV_OK;
  bm_settle(m, q);
  int64_t longest = 0;
  for (uint32_t s = 0; s < m->streams; s++)
    if (q->len[s] > longest) longest = q->len[s];
  const int64_t blocks = (longest + n + m->bs - 1) / m->bs;
  return bm_grow(m, q, blocks < m->nblocks ? (int32_t)blocks : m->nblocks);
}

/* ---- Streams --------------------------------------------------------------------------- */

static rkv_status bm_stream(const rkv_blockmgr *m, int64_t seq, uint32_t layer, uint32_t head,
                            bm_seq **q, uint32_t *s) {
  if (layer >= m->cfg.num_layers || head >= m->cfg.num_kv_heads)
    return bm_fail(m, RKV_ERR_INVALID_ARG, "layer %u / head %u out of range (%u x %u)", layer, head,
                   m->cfg.num_layers, m->cfg.num_kv_heads);
  RKV_TRY(bm_get_seq(m, seq, q));
  *s = layer * m->cfg.num_kv_heads + head;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_stream_len(const rkv_blockmgr *m, int64_t seq, uint32_t layer,
                                           uint32_t head, int32_t *len) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!len) return bm_fail(m, RKV_ERR_INVALID_ARG, "stream_len: len is NULL");
  bm_seq *q = NULL;
  uint32_t s = 0;
  RKV_TRY(bm_stream(m, seq, layer, head, &q, &s));
  *len = q->len[s];
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_stream_blocks(const rkv_blockmgr *m, int64_t seq, uint32_t layer,
                                              uint32_t head, const int32_t **ids,
                                              int32_t *n_blocks) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!ids || !n_blocks) return bm_fail(m, RKV_ERR_INVALID_ARG, "stream_blocks: NULL output");
  bm_seq *q = NULL;
  uint32_t s = 0;
  RKV_TRY(bm_stream(m, seq, layer, head, &q, &s));
  *ids = q->tab + (size_t)s * (size_t)q->cap;
  *n_blocks = q->nblk[s];
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_stream_slot(const rkv_blockmgr *m, int64_t seq, uint32_t layer,
                                            uint32_t head, int32_t pos, int64_t *slot) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!slot) return bm_fail(m, RKV_ERR_INVALID_ARG, "stream_slot: slot is NULL");
  bm_seq *q = NULL;
  uint32_t s = 0;
  RKV_TRY(bm_stream(m, seq, layer, head, &q, &s));
  if (pos < 0 || pos >= q->len[s])
    return bm_fail(m, RKV_ERR_INVALID_ARG, "stream_slot: pos %d outside [0, %d)", pos, q->len[s]);
  *slot = (int64_t)q->tab[(size_t)s * (size_t)q->cap + (size_t)(pos / m->bs)] * m->bs + pos % m->bs;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_block_ref(const rkv_blockmgr *m, int32_t block, uint32_t *ref) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!ref) return bm_fail(m, RKV_ERR_INVALID_ARG, "block_ref: ref is NULL");
  if (block < 0 || block >= m->nblocks)
    return bm_fail(m, RKV_ERR_INVALID_ARG, "block id %d outside [0, %d)", block, m->nblocks);
  *ref = m->ref[block];
  return RKV_OK;
}

/* ---- Export ---------------------------------------------------------------------------- */

static rkv_status bm_export_count(const rkv_blockmgr *m, uint32_t layer, const int64_t *seqs,
                                  uint32_t n_seqs, uint64_t *nnz) {
  if (layer >= m->cfg.num_layers)
    return bm_fail(m, RKV_ERR_INVALID_ARG, "export: layer %u >= %u", layer, m->cfg.num_layers);
  if (n_seqs && !seqs) return bm_fail(m, RKV_ERR_INVALID_ARG, "export: seqs is NULL");
  const uint32_t H = m->cfg.num_kv_heads;
  uint64_t total = 0;
  for (uint32_t b = 0; b < n_seqs; b++) {
    bm_seq *q = NULL;
    RKV_TRY(bm_get_seq(m, seqs[b], &q));
    for (uint32_t h = 0; h < H; h++) total += (uint64_t)q->nblk[layer * H + h];
  }
  if (total > INT32_MAX || (uint64_t)n_seqs * H >= INT32_MAX)
    return bm_fail(m, RKV_ERR_CAPACITY, "export: table exceeds int32 indexing");
  *nnz = total;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_export_size(const rkv_blockmgr *m, uint32_t layer,
                                            const int64_t *seqs, uint32_t n_seqs, uint32_t *nnz) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!nnz) return bm_fail(m, RKV_ERR_INVALID_ARG, "export_size: nnz is NULL");
  uint64_t total;
  RKV_TRY(bm_export_count(m, layer, seqs, n_seqs, &total));
  *nnz = (uint32_t)total;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_export_csr(const rkv_blockmgr *m, uint32_t layer,
                                           const int64_t *seqs, uint32_t n_seqs, int32_t *indptr,
                                           int32_t *indices, uint32_t indices_cap,
                                           int32_t *last_len, uint32_t *nnz,
                                           rkv_block_table *table) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!indptr || !last_len || !nnz || (indices_cap && !indices))
    return bm_fail(m, RKV_ERR_INVALID_ARG, "export_csr: NULL output array");
  uint64_t total;
  RKV_TRY(bm_export_count(m, layer, seqs, n_seqs, &total));
  *nnz = (uint32_t)total;
  if (total > indices_cap)
    return bm_fail(m, RKV_ERR_CAPACITY, "export_csr: %llu indices needed, capacity %u",
                   (unsigned long long)total, indices_cap);
  const uint32_t H = m->cfg.num_kv_heads;
  const int32_t bs = m->bs;
  int32_t k = 0;
  indptr[0] = 0;
  for (uint32_t b = 0; b < n_seqs; b++) {
    const bm_seq *q = &m->seqs[bm_find(m, seqs[b])];
    for (uint32_t h = 0; h < H; h++) {
      uint32_t s = layer * H + h;
      const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
      int32_t nb = q->nblk[s];
      memcpy(indices + k, row, (size_t)nb * sizeof(int32_t));
      k += nb;
      indptr[b * H + h + 1] = k;
      last_len[b * H + h] = nb ? q->len[s] - (nb - 1) * bs : 0;
    }
  }
  if (table) {
    table->num_streams = (int32_t)(n_seqs * H);
    table->block_size = bs;
    table->indptr = indptr;
    table->indices = indices;
    table->last_len = last_len;
  }
  return RKV_OK;
}

/* ---- Accounting ------------------------------------------------------------------------ */

/* Not a hot path. O(1) while no block is shared (token_slots is then the sum of lengths, kept
 * incrementally); otherwise O(num_blocks + table entries): a shared block's occupied slots are
 * the most any referencing stream fills, and only a walk finds them. */
/* Occupied slots when blocks are shared, without a walk over every block: every block but a
 * row's last is full, so used blocks x block_size, less the empty slots of partial last blocks
 * held by one row, is exact. False (walk instead) when a partial last block is shared: another
 * row may hold it as a full inner block (a fork compacted in place, its parent grew on).
 * O(live sequences x streams); prefix sharing shares full blocks only. */
static bool bm_partial_slots(const rkv_blockmgr *m, uint64_t *tok) {
  uint64_t empty = 0;
  for (uint32_t i = 0; i < m->max_seqs; i++) {
    bm_seq *q = &m->seqs[i];
    if (q->id < 0) continue;
    bm_settle(m, q);
    for (uint32_t s = 0; s < m->streams; s++) {
      const int32_t nb = q->nblk[s], f = q->len[s] - (nb - 1) * m->bs;
      if (!nb || f == m->bs) continue;
      if (m->ref[q->tab[(size_t)s * (size_t)q->cap + (size_t)nb - 1]] > 1) return false;
      empty += (uint64_t)(m->bs - f);
    }
  }
  *tok = (uint64_t)bm_used(m) * (uint64_t)m->bs - empty;
  return true;
}

RKV_API void rkv_blockmgr_get_stats(const rkv_blockmgr *m, rkv_blockmgr_stats *out) {
  if (!m || !out) return;
  memset(out, 0, sizeof *out);
  out->total_blocks = (uint32_t)m->nblocks;
  out->free_blocks = (uint32_t)bm_avail(m);
  out->used_blocks = bm_used(m);
  /* The float watermark carries ~1e-7 relative error (0.1f * 10 = 1.0000000149): strip it so
   * exact products do not round up a whole block. */
  double wm = (double)m->cfg.watermark * m->nblocks;
  out->watermark_blocks = (uint32_t)ceil(wm - wm * 1e-6);
  out->shared_blocks = m->shared_count;
  out->num_seqs = m->num_seqs;
  out->allocated_slots = (uint64_t)out->used_blocks * (uint64_t)m->bs;
  out->peak_used_blocks = m->peak_used;
  uint64_t tok = m->tokens;
  if (m->shared_count && !bm_partial_slots(m, &tok)) {
    uint16_t *fill = m->fill; /* handle-owned scratch */
    memset(fill, 0, (size_t)m->nblocks * sizeof(uint16_t));
    for (uint32_t i = 0; i < m->max_seqs; i++) {
      bm_seq *q = &m->seqs[i];
      if (q->id < 0) continue;
      bm_settle(m, q);
      for (uint32_t s = 0; s < m->streams; s++) {
        const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
        int32_t nb = q->nblk[s];
        for (int32_t j = 0; j < nb; j++) {
          int32_t f = j + 1 < nb ? m->bs : q->len[s] - j * m->bs;
          if (f > fill[row[j]]) fill[row[j]] = (uint16_t)f;
        }
      }
    }
    tok = 0;
    for (int32_t b = 0; b < m->nblocks; b++) tok += fill[b];
  }
  out->token_slots = tok;
  out->fragmentation_slots = out->allocated_slots - tok;
}

RKV_API rkv_status rkv_blockmgr_seq_footprint(const rkv_blockmgr *m, int64_t seq, uint32_t *total,
                                              uint32_t *exclusive) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!total || !exclusive) return bm_fail(m, RKV_ERR_INVALID_ARG, "seq_footprint: NULL output");
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq(m, seq, &q));
  uint32_t t = 0, x = 0;
  for (uint32_t s = 0; s < m->streams; s++) {
    const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    t += (uint32_t)q->nblk[s];
    for (int32_t j = 0; j < q->nblk[s]; j++) x += m->ref[row[j]] == 1;
  }
  *total = t;
  *exclusive = x;
  return RKV_OK;
}

RKV_API uint64_t rkv_blockmgr_blocks_for_tokens(const rkv_blockmgr *m, uint64_t tokens) {
  if (!m) return 0;
  return (uint64_t)m->streams * ((tokens + (uint64_t)m->bs - 1) / (uint64_t)m->bs);
}
