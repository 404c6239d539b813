/* Prefix caching (blockmgr.h, "Prefix caching and protected prefixes"): a table from chained
 * content hashes to groups (one block per stream at one logical index), an LRU list of the
 * cached blocks no sequence holds, and protected prefixes.
 *
 * Everything is allocated at create: at most num_blocks / streams groups can exist (a block is
 * in at most one group, a group has one block per stream), so inserts never allocate and
 * lookups never fail for memory. The table is open addressing with linear probing and
 * backward-shift deletion (no tombstones: groups come and go all the time). */
#include <string.h>

#include "blockmgr_impl.h"

struct bm_prefix {
  uint32_t cap;       /* groups that can exist at once */
  uint64_t *hash;     /* [cap] */
  int32_t *blocks;    /* [cap][streams] */
  int32_t *free_grp;  /* [cap] stack of unused group indices */
  uint32_t free_top;  /* free_grp[0 .. free_top) */
  int32_t *slot;      /* [tmask + 1] group index or -1 */
  uint32_t tmask;     /* table capacity - 1 (a power of two >= 2 * cap) */
  int32_t *prev;      /* [nblocks] LRU links of parked blocks (-1 = none) */
  int32_t *next;      /* [nblocks] */
  int32_t head, tail; /* oldest and newest parked block, -1 when none */
  uint32_t entries;
  uint64_t lookups, hit_groups, inserted, invalidated, reclaimed;
};

static uint64_t pc_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

RKV_API uint32_t rkv_prefix_hash_blocks(const int32_t *tokens, uint32_t n, uint32_t block_size,
                                        uint64_t salt, uint64_t *out, uint32_t cap) {
  if (!block_size) return 0;
  const uint32_t full = n / block_size;
  if (!tokens || !out) return full;
  uint64_t h = pc_mix(salt ^ 0x6A09E667F3BCC908ull);
  for (uint32_t b = 0; b < full && b < cap; b++) {
    /* the block size is part of the key: equal tokens cut differently are different groups */
    h = pc_mix(h + 0x9E3779B97F4A7C15ull * (block_size + 1));
    const int32_t *t = tokens + (size_t)b * block_size;
    for (uint32_t i = 0; i < block_size; i++)
      h = pc_mix(h ^ ((uint64_t)(uint32_t)t[i] + 0x9E3779B97F4A7C15ull * (i + 1)));
    out[b] = h;
  }
  return full;
}

/* ---- table ----------------------------------------------------------------------------- */

static int32_t pc_find(const bm_prefix *p, uint64_t h) {
  for (uint32_t i = (uint32_t)pc_mix(h) & p->tmask;; i = (i + 1) & p->tmask) {
    int32_t g = p->slot[i];
    if (g < 0) return -1;
    if (p->hash[g] == h) return g;
  }
}

static void pc_table_insert(bm_prefix *p, int32_t g) {
  uint32_t i = (uint32_t)pc_mix(p->hash[g]) & p->tmask;
  while (p->slot[i] >= 0) i = (i + 1) & p->tmask;
  p->slot[i] = g;
}

/* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
static void pc_table_erase(bm_prefix *p, int32_t g) {
  uint32_t i = (uint32_t)pc_mix(p->hash[g]) & p->tmask;
  while (p->slot[i] != g) i = (i + 1) & p->tmask;
  for (uint32_t j = (i + 1) & p->tmask;; j = (j + 1) & p->tmask) {
    int32_t x = p->slot[j];
    if (x < 0) break;
    uint32_t home = (uint32_t)pc_mix(p->hash[x]) & p->tmask;
    /* x may move to the hole at i iff i lies cyclically in [home, j) */
    if (((j - home) & p->tmask) >= ((j - i) & p->tmask)) {
      p->slot[i] = x;
      i = j;
    }
  }
  p->slot[i] = -1;
}

/* ---- LRU of parked blocks -------------------------------------------------------------- */

/* Within one operation each block parks as older than those it parked before: the operation's
 * blocks form one segment at the tail of the list, in the reverse of the order they parked.
 * Every operation walks each stream's blocks in increasing logical index (seq_free, the
 * compactions' originals and then their tails), so when the streams are of one length (they
 * grow in lockstep) the prompt's last groups are reclaimed first and its first ones last; with
 * streams of different lengths the last stream walked decides the order within its part.
 * Reclaim drops whole groups and a lookup stops at the first group missing, so front-first
 * reclaim would leave the rest of the prompt cached but out of reach; end-first keeps the
 * longest prefix that memory allows findable. Sorting a whole operation's blocks by index
 * would make that exact for ragged streams too, at a cost on every free. */
void bm_pc_park(rkv_blockmgr *m, int32_t b) {
  bm_prefix *p = m->pc;
  const int32_t at = m->pc_seg; /* b goes before it, or last when the operation parked none */
  p->next[b] = at;
  p->prev[b] = at >= 0 ? p->prev[at] : p->tail;
  if (p->prev[b] >= 0)
    p->next[p->prev[b]] = b;
  else
    p->head = b;
  if (at >= 0)
    p->prev[at] = b;
  else
    p->tail = b;
  m->pc_seg = b;
  m->pc_parked++;
}

static void pc_unpark(rkv_blockmgr *m, int32_t b) {
  bm_prefix *p = m->pc;
  if (m->pc_seg == b) m->pc_seg = p->next[b]; /* the rest of the segment, or none */
  if (p->prev[b] >= 0)
    p->next[p->prev[b]] = p->next[b];
  else
    p->head = p->next[b];
  if (p->next[b] >= 0)
    p->prev[p->next[b]] = p->prev[b];
  else
    p->tail = p->prev[b];
  p->prev[b] = p->next[b] = -1;
  m->pc_parked--;
}

/* Removes group g from the table; its parked blocks go to the free list, its held ones simply
 * stop being cached. */
static void pc_drop(rkv_blockmgr *m, int32_t g) {
  bm_prefix *p = m->pc;
  pc_table_erase(p, g);
  const int32_t *blk = p->blocks + (size_t)g * m->streams;
  for (uint32_t s = 0; s < m->streams; s++) {
    int32_t b = blk[s];
    m->pc_group[b] = -1;
    if (m->ref[b] == 0) {
      pc_unpark(m, b);
      m->free_ids[m->free_top++] = b;
    }
  }
  p->free_grp[p->free_top++] = g;
  p->entries--;
}

void bm_pc_forget(rkv_blockmgr *m, int32_t b) {
  pc_drop(m, m->pc_group[b]);
  m->pc->invalidated++;
}

void bm_pc_refill(rkv_blockmgr *m, int32_t need) {
  while (m->free_top < need && m->pc->head >= 0) {
    pc_drop(m, m->pc_group[m->pc->head]);
    m->pc->reclaimed++;
  }
}

/* ---- life cycle ------------------------------------------------------------------------ */

rkv_status bm_pc_create(rkv_blockmgr *m) {
  const size_t nb = (size_t)m->nblocks;
  uint32_t cap = (uint32_t)(nb / m->streams);
  if (cap == 0) cap = 1;
  uint32_t tcap = 2;
  while (tcap < 2 * cap) tcap <<= 1;
  bm_prefix *p = rkvi_calloc(m->al, sizeof *p, 64);
  if (!p) return RKV_ERR_NO_MEMORY;
  m->pc = p;
  p->cap = cap;
  p->tmask = tcap - 1;
  p->head = p->tail = m->pc_seg = -1;
  p->hash = rkvi_alloc(m->al, cap * sizeof(uint64_t), 64);
  p->blocks = rkvi_alloc(m->al, (size_t)cap * m->streams * sizeof(int32_t), 64);
  p->free_grp = rkvi_alloc(m->al, cap * sizeof(int32_t), 64);
  p->slot = rkvi_alloc(m->al, tcap * sizeof(int32_t), 64);
  p->prev = rkvi_alloc(m->al, nb * sizeof(int32_t), 64);
  p->next = rkvi_alloc(m->al, nb * sizeof(int32_t), 64);
  m->pc_group = rkvi_alloc(m->al, nb * sizeof(int32_t), 64);
  if (!p->hash || !p->blocks || !p->free_grp || !p->slot || !p->prev || !p->next || !m->pc_group)
    return RKV_ERR_NO_MEMORY; /* the caller destroys the handle, which frees what exists */
  for (uint32_t g = 0; g < cap; g++) p->free_grp[g] = (int32_t)(cap - 1 - g);
  p->free_top = cap;
  memset(p->slot, 0xFF, tcap * sizeof(int32_t));
  memset(p->prev, 0xFF, nb * sizeof(int32_t));
  memset(p->next, 0xFF, nb * sizeof(int32_t));
  memset(m->pc_group, 0xFF, nb * sizeof(int32_t));
  return RKV_OK;
}

void bm_pc_destroy(rkv_blockmgr *m) {
  bm_prefix *p = m->pc;
  const size_t nb = (size_t)m->nblocks;
  rkvi_free(m->al, m->pc_group, nb * sizeof(int32_t));
  m->pc_group = NULL;
  if (!p) return;
  rkvi_free(m->al, p->hash, p->cap * sizeof(uint64_t));
  rkvi_free(m->al, p->blocks, (size_t)p->cap * m->streams * sizeof(int32_t));
  rkvi_free(m->al, p->free_grp, p->cap * sizeof(int32_t));
  rkvi_free(m->al, p->slot, ((size_t)p->tmask + 1) * sizeof(int32_t));
  rkvi_free(m->al, p->prev, nb * sizeof(int32_t));
  rkvi_free(m->al, p->next, nb * sizeof(int32_t));
  rkvi_free(m->al, p, sizeof *p);
  m->pc = NULL;
}

/* ---- public calls ---------------------------------------------------------------------- */

RKV_API rkv_status rkv_blockmgr_prefix_match(const rkv_blockmgr *m, const uint64_t *hashes,
                                             uint32_t n, uint32_t *hit) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!hit) return bm_fail(m, RKV_ERR_INVALID_ARG, "prefix_match: hit is NULL");
  *hit = 0;
  if (n && !hashes) return bm_fail(m, RKV_ERR_INVALID_ARG, "prefix_match: hashes is NULL");
  if (!m->pc) return RKV_OK;
  uint32_t i = 0;
  while (i < n && pc_find(m->pc, hashes[i]) >= 0) i++;
  *hit = i;
  return RKV_OK;
}

/* Group indices of hashes[0, hit) into g (NOT_FOUND naming the first missing one). */
static rkv_status pc_groups(const rkv_blockmgr *m, const char *what, const uint64_t *hashes,
                            uint32_t hit, int32_t *g) {
  if (hit && !hashes) return bm_fail(m, RKV_ERR_INVALID_ARG, "%s: hashes is NULL", what);
  if (hit && !m->pc)
    return bm_fail(m, RKV_ERR_NOT_FOUND, "%s: %u groups asked of a manager without prefix_cache",
                   what, hit);
  for (uint32_t i = 0; i < hit; i++) {
    int32_t x = pc_find(m->pc, hashes[i]);
    if (x < 0) return bm_fail(m, RKV_ERR_NOT_FOUND, "%s: hashes[%u] is not cached", what, i);
    if (g) g[i] = x;
  }
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_prefix_cost(const rkv_blockmgr *m, const uint64_t *hashes,
                                            uint32_t hit, uint32_t *blocks) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!blocks) return bm_fail(m, RKV_ERR_INVALID_ARG, "prefix_cost: blocks is NULL");
  *blocks = 0;
  RKV_TRY(pc_groups(m, "prefix_cost", hashes, hit, NULL));
  uint32_t n = 0;
  for (uint32_t i = 0; i < hit; i++) {
    const int32_t *blk = m->pc->blocks + (size_t)pc_find(m->pc, hashes[i]) * m->streams;
    for (uint32_t s = 0; s < m->streams; s++) n += m->ref[blk[s]] == 0;
  }
  *blocks = n;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_seq_create_cached(rkv_blockmgr *m, int64_t seq,
                                                  const uint64_t *hashes, uint32_t hit) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if ((uint64_t)hit * (uint64_t)m->bs >= (1ull << 31))
    return bm_fail(m, RKV_ERR_INVALID_ARG, "seq_create_cached: %u groups overflow a stream", hit);
  RKV_TRY(pc_groups(m, "seq_create_cached", hashes, hit, NULL));
  int32_t slot = -1;
  RKV_TRY(bm_reserve_slot(m, seq, &slot));
  RKV_TRY(bm_grow(m, &m->seqs[slot], (int32_t)hit));
  bm_seq *q = bm_commit_slot(m, seq, slot);
  memset(q->nblk, 0, BM_META_ARRAYS * (size_t)m->streams * sizeof(int32_t));
  for (uint32_t i = 0; i < hit; i++) {
    const int32_t *blk = m->pc->blocks + (size_t)pc_find(m->pc, hashes[i]) * m->streams;
    for (uint32_t s = 0; s < m->streams; s++) {
      const int32_t b = blk[s];
      if (m->ref[b] == 0) {
        pc_unpark(m, b);
        m->ref[b] = 1;
      } else {
        bm_addref(m, b);
      }
      q->tab[(size_t)s * (size_t)q->cap + i] = b;
    }
  }
  if (m->pc) {
    m->pc->lookups++;
    m->pc->hit_groups += hit;
  }
  const int32_t len = (int32_t)hit * m->bs;
  for (uint32_t s = 0; s < m->streams; s++) {
    q->nblk[s] = (int32_t)hit;
    q->len[s] = len;
    bm_set_tbase(m, q, s);
  }
  m->tokens += (uint64_t)len * m->streams;
  const uint32_t used = bm_used(m);
  if (used > m->peak_used) m->peak_used = used;
  bm_update_room(m, q);
  return bm_after_op(m);
}

RKV_API rkv_status rkv_blockmgr_prefix_insert(rkv_blockmgr *m, int64_t seq, const uint64_t *hashes,
                                              uint32_t n, uint32_t *inserted) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (inserted) *inserted = 0;
  if (!m->pc) return bm_fail(m, RKV_ERR_STATE, "prefix_insert: the manager has no prefix_cache");
  if (n && !hashes) return bm_fail(m, RKV_ERR_INVALID_ARG, "prefix_insert: hashes is NULL");
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq(m, seq, &q));
  bm_prefix *p = m->pc;
  uint32_t added = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (pc_find(p, hashes[i]) >= 0) continue;
    bool ok = p->free_top > 0;
    for (uint32_t s = 0; ok && s < m->streams; s++) {
      ok = q->nblk[s] > (int32_t)i && q->len[s] >= ((int32_t)i + 1) * m->bs &&
           m->pc_group[q->tab[(size_t)s * (size_t)q->cap + i]] < 0;
    }
    if (!ok) continue;
    const int32_t g = p->free_grp[--p->free_top];
    p->hash[g] = hashes[i];
    int32_t *blk = p->blocks + (size_t)g * m->streams;
    for (uint32_t s = 0; s < m->streams; s++) {
      blk[s] = q->tab[(size_t)s * (size_t)q->cap + i];
      m->pc_group[blk[s]] = g;
    }
    pc_table_insert(p, g);
    p->entries++;
    added++;
  }
  p->inserted += added;
  if (inserted) *inserted = added;
  return bm_after_op(m);
}

RKV_API void rkv_blockmgr_prefix_clear(rkv_blockmgr *m) {
  if (!m || !m->pc) return;
  for (uint32_t i = 0; i <= m->pc->tmask; i++) {
    while (m->pc->slot[i] >= 0) pc_drop(m, m->pc->slot[i]); /* a shift may refill slot i */
  }
}

RKV_API rkv_status rkv_blockmgr_seq_protect(rkv_blockmgr *m, int64_t seq, int32_t n) {
  if (!m) return RKV_ERR_INVALID_ARG;
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq(m, seq, &q));
  int32_t shortest = INT32_MAX;
  for (uint32_t s = 0; s < m->streams; s++)
    if (q->len[s] < shortest) shortest = q->len[s];
  if (n < 0 || n > shortest)
    return bm_fail(m, RKV_ERR_INVALID_ARG,
                   "seq_protect: %d tokens of sequence %lld, whose shortest stream holds %d", n,
                   (long long)seq, shortest);
  q->protect = n;
  return RKV_OK;
}

RKV_API int32_t rkv_blockmgr_seq_protected(const rkv_blockmgr *m, int64_t seq) {
  const int32_t s = m && seq >= 0 ? bm_find(m, seq) : -1;
  return s < 0 ? 0 : m->seqs[s].protect;
}

RKV_API rkv_status rkv_blockmgr_prefix_stats(const rkv_blockmgr *m, rkv_prefix_stats *out) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!out || out->struct_size < sizeof(uint32_t) || out->struct_size > sizeof(rkv_prefix_stats))
    return bm_fail(m, RKV_ERR_INVALID_ARG, "prefix_stats: out is NULL or has a bad struct_size");
  rkv_prefix_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = out->struct_size;
  const bm_prefix *p = m->pc;
  if (p) {
    st.entries = p->entries;
    st.cached_blocks = p->entries * m->streams;
    st.reclaimable_blocks = (uint32_t)m->pc_parked;
    st.lookups = p->lookups;
    st.hit_groups = p->hit_groups;
    st.inserted = p->inserted;
    st.invalidated = p->invalidated;
    st.reclaimed = p->reclaimed;
  }
  memcpy(out, &st, out->struct_size);
  return RKV_OK;
}

/* ---- invariants ------------------------------------------------------------------------ */

#define PC_CORRUPT(...) return bm_fail(m, RKV_ERR_CORRUPT, "check: prefix cache: " __VA_ARGS__)

/* Groups: each table slot's group is in use, found from its own hash, with distinct blocks
 * that name it; every block naming a group is in it. Parked blocks: exactly the cached blocks
 * with ref 0, linked both ways, none also on the free list. */
rkv_status bm_pc_check(const rkv_blockmgr *m, const uint8_t *free_listed) {
  const bm_prefix *p = m->pc;
  const int32_t nb = m->nblocks;
  if (!p) {
    if (m->pc_parked) PC_CORRUPT("%d parked blocks without a cache", m->pc_parked);
    return RKV_OK;
  }
  uint32_t found = 0, members = 0;
  for (uint32_t i = 0; i <= p->tmask; i++) {
    const int32_t g = p->slot[i];
    if (g < 0) continue;
    if ((uint32_t)g >= p->cap) PC_CORRUPT("slot %u holds group %d of %u", i, g, p->cap);
    if (pc_find(p, p->hash[g]) != g) PC_CORRUPT("group %d is not found from its hash", g);
    found++;
    const int32_t *blk = p->blocks + (size_t)g * m->streams;
    for (uint32_t s = 0; s < m->streams; s++) {
      if (blk[s] < 0 || blk[s] >= nb) PC_CORRUPT("group %d block %d out of range", g, blk[s]);
      if (m->pc_group[blk[s]] != g)
        PC_CORRUPT("group %d holds block %d, which names group %d", g, blk[s], m->pc_group[blk[s]]);
    }
  }
  if (found != p->entries) PC_CORRUPT("%u groups in the table, %u counted", found, p->entries);
  if (found + p->free_top != p->cap)
    PC_CORRUPT("%u groups + %u unused != %u", found, p->free_top, p->cap);
  int32_t parked = 0;
  for (int32_t b = 0; b < nb; b++) {
    const int32_t g = m->pc_group[b];
    if (g < 0) continue;
    members++;
    if (m->ref[b] == 0) parked++;
    if (free_listed[b]) PC_CORRUPT("cached block %d is on the free list", b);
  }
  if (members != found * m->streams)
    PC_CORRUPT("%u blocks name a group, %u groups x %u streams", members, found, m->streams);
  /* every operation ends in bm_after_op, which closes its segment */
  if (m->pc_seg != -1)
    PC_CORRUPT("LRU: an operation's parked segment (block %d) left open", m->pc_seg);
  int32_t walked = 0, prev = -1;
  for (int32_t b = p->head; b >= 0; prev = b, b = p->next[b]) {
    if (++walked > nb) PC_CORRUPT("the LRU list loops");
    if (p->prev[b] != prev)
      PC_CORRUPT("LRU block %d: back link %d, expected %d", b, p->prev[b], prev);
    if (m->pc_group[b] < 0 || m->ref[b] != 0)
      PC_CORRUPT("LRU block %d: group %d, ref %u", b, m->pc_group[b], m->ref[b]);
  }
  if (prev != p->tail) PC_CORRUPT("LRU tail %d, walk ended at %d", p->tail, prev);
  if (walked != parked || walked != m->pc_parked)
    PC_CORRUPT("%d blocks on the LRU list, %d cached with ref 0, %d counted", walked, parked,
               m->pc_parked);
  return RKV_OK;
}
