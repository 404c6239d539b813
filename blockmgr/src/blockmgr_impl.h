/* Private layout of the block manager shared by its source files (blockmgr.c: handles,
 * sequences, append, export, stats; compact.c: the two compactions; check.c: the invariant
 * walker). Everything is plain arrays (docs/ARCHITECTURE.md, "Memory: who owns what"): no
 * per-block objects, no per-token allocation. */
#ifndef RKV_BLOCKMGR_IMPL_H
#define RKV_BLOCKMGR_IMPL_H

#include <rkv/blockmgr.h>

#include "rkv_internal.h"

/* One live sequence (or a dead slot when id < 0). The table is one matrix for all streams so a
 * row-capacity doubling is one allocation: row s = tab + s * cap. Every row keeps its tokens
 * packed from position 0, so all blocks but the last of a row are full. */
typedef struct bm_seq {
  int64_t id;             /* caller id, -1 for a dead slot */
  int32_t cap;            /* row capacity in blocks (shared by all streams) */
  int32_t room;           /* min over streams of nblk * block_size - len: fast-path append budget */
  bool maybe_shared_tail; /* some stream's partial last block may have ref > 1 */
  int32_t *tab;           /* [streams][cap] block ids; kept across seq_free for reuse */
  int32_t *nblk;          /* [streams] blocks in each row */
  int32_t *len;           /* [streams] tokens in each stream */
  /* [streams] (last block - (nblk - 1)) * block_size, 0 for an empty row: the slot of position
   * p in the last block is tbase + p. Lets the fast path write slots without touching the
   * table (one cache line per stream) or dividing. Fits int32: nblocks * block_size < 2^31. */
  int32_t *tbase;
  /* [streams] lowest row position whose block id changed since the last
   * rkv_blockmgr_sync_rows of this sequence (INT32_MAX = unchanged): lets the caller's
   * device-side table mirror be updated by deltas instead of re-exported every step. */
  int32_t *dirty;
  /* Tokens appended to every stream that len[] does not show yet: the decode step without a
   * slot mapping only bumps this (streams grow in lockstep), and the first call that reads
   * len[] settles it (bm_settle). */
  int32_t pend;
  int32_t protect; /* positions [0, protect) of every stream are immutable (seq_protect) */
} bm_seq;

typedef struct bm_prefix bm_prefix; /* prefix.c */

/* Per-stream metadata arrays of a sequence (nblk, len, tbase, dirty), one allocation. */
#define BM_META_ARRAYS 4

struct rkv_blockmgr {
  rkv_blockmgr_config cfg; /* in force; allocator/logger point at the copies below */
  rkv_allocator alloc_copy;
  rkv_logger log_copy;
  const rkv_allocator *al; /* NULL or &alloc_copy */
  uint32_t streams;        /* num_layers * num_kv_heads */
  int32_t bs;              /* block size */
  int32_t bs_shift;        /* log2(bs) when bs is a power of two, else -1 */
  int32_t nblocks;         /* total blocks */

  /* Blocks: a LIFO free stack and reference counts. */
  int32_t *free_ids; /* [nblocks]; free_ids[0 .. free_top) are free */
  int32_t free_top;
  uint32_t *ref;         /* [nblocks] */
  uint32_t shared_count; /* blocks with ref > 1 */
  uint32_t peak_used;
  uint64_t tokens; /* sum of every live stream's length */

  /* Sequences: fixed slots, a free-slot stack, an open-addressing id -> slot map. */
  uint32_t max_seqs;
  uint32_t num_seqs;
  bm_seq *seqs;        /* [max_seqs] */
  int32_t *free_slots; /* [max_seqs]; free_slots[0 .. free_slot_top) */
  uint32_t free_slot_top;
  int32_t *hmap;  /* [hcap] slot index or -1 */
  uint32_t hmask; /* hcap - 1, hcap a power of two >= 2 * max_seqs */

  /* Prefix cache (prefix.c; NULL without config.prefix_cache). pc_group [nblocks] is the
   * cached group of each block or -1, and pc_parked the blocks no sequence holds that stay
   * cached (on its LRU list): both read by the inline hooks below. */
  bm_prefix *pc;
  int32_t *pc_group;
  int32_t pc_parked;
  /* the block the current operation parked last (prefix.c, bm_pc_park), -1 before it parks
   * any: bm_after_op ends every operation with a plain store */
  int32_t pc_seg;

  /* Scratch owned by the handle so non-hot calls need no allocation. */
  uint16_t *fill; /* [nblocks] get_stats: occupied slots per block */
  uint32_t *mark; /* [streams] compact: "stream already listed" stamps */
  uint32_t mark_epoch;

  char err[RKV_ERRBUF];
};

/* Sets the handle's last error (through a const handle: the error buffer is the only state a
 * query call mutates; handles are used by one thread at a time) and returns s. */
rkv_status bm_fail(const rkv_blockmgr *m, rkv_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Slot of a live sequence or -1. */
int32_t bm_find(const rkv_blockmgr *m, int64_t id);
/* Looks up a sequence for a call; sets NOT_FOUND / INVALID_ARG text. */
rkv_status bm_get_seq(const rkv_blockmgr *m, int64_t id, bm_seq **out);
/* Folds the lockstep tokens of the fast append into every stream's length. O(streams) once per
 * pending run; lengths are logically unchanged, so const handles may call it. */
static inline void bm_settle(const rkv_blockmgr *m, bm_seq *q) {
  if (!q->pend) return;
  const int32_t n = q->pend;
  int32_t *len = q->len;
  for (uint32_t s = 0; s < m->streams; s++) len[s] += n;
  q->pend = 0;
}
/* Looks a sequence up without settling its lengths (the append fast path). */
rkv_status bm_get_seq_raw(const rkv_blockmgr *m, int64_t id, bm_seq **out);
/* Blocks a call may take: the free list plus parked cached blocks (reclaimed on demand). */
static inline int32_t bm_avail(const rkv_blockmgr *m) {
  return m->free_top + m->pc_parked;
}
/* Blocks held by sequences. */
static inline uint32_t bm_used(const rkv_blockmgr *m) {
  return (uint32_t)(m->nblocks - bm_avail(m));
}
/* Moves parked cached groups, oldest first, to the free list until it holds `need` blocks
 * (prefix.c; the caller checked need <= bm_avail). */
void bm_pc_refill(rkv_blockmgr *m, int32_t need);
/* Makes the next `need` pops plain free-list pops: every call that pops blocks calls it once,
 * after its capacity check and before its first mutation. */
static inline void bm_reserve_free(rkv_blockmgr *m, int32_t need) {
  if (need > m->free_top && m->pc_parked) bm_pc_refill(m, need);
}
/* Pops a free block with ref 1 (caller ran bm_reserve_free). */
static inline int32_t bm_pop(rkv_blockmgr *m) {
  int32_t b = m->free_ids[--m->free_top];
  m->ref[b] = 1;
  uint32_t used = bm_used(m);
  if (used > m->peak_used) m->peak_used = used;
  return b;
}
/* Parks a cached block whose last reference dropped (prefix.c). */
void bm_pc_park(rkv_blockmgr *m, int32_t b);
/* Drops the cached group of block b (its content is about to change; prefix.c). */
void bm_pc_forget(rkv_blockmgr *m, int32_t b);
/* Drops one reference; a block reaching 0 goes back to the free stack, or is parked while a
 * cached group holds it. */
static inline void bm_unref(rkv_blockmgr *m, int32_t b) {
  uint32_t r = --m->ref[b];
  if (r == 1) {
    m->shared_count--;
  } else if (r == 0) {
    if (m->pc_group && m->pc_group[b] >= 0)
      bm_pc_park(m, b);
    else
      m->free_ids[m->free_top++] = b;
  }
}
/* Block b (ref 1, about to be rewritten in place) stops being findable by content. */
static inline void bm_content_changes(rkv_blockmgr *m, int32_t b) {
  if (m->pc_group && m->pc_group[b] >= 0) bm_pc_forget(m, b);
}
/* prefix.c: cache state for create/destroy and the invariant walk. owner[b] is BM_FREE_MARK
 * for free-listed blocks (check.c); parked blocks must be exactly the cached ones with ref 0. */
rkv_status bm_pc_create(rkv_blockmgr *m);
void bm_pc_destroy(rkv_blockmgr *m);
rkv_status bm_pc_check(const rkv_blockmgr *m, const uint8_t *free_listed);
static inline void bm_addref(rkv_blockmgr *m, int32_t b) {
  if (++m->ref[b] == 2) m->shared_count++;
}
static inline int32_t bm_div_up(int64_t a, int32_t b) {
  return (int32_t)((a + b - 1) / b);
}
/* Blocks for `tokens` tokens, and the block index / offset of a position: shifts for the usual
 * power-of-two block sizes (the append slow path runs these once per stream). */
static inline int32_t bm_nblocks(const rkv_blockmgr *m, int64_t tokens) {
  return m->bs_shift >= 0 ? (int32_t)((tokens + m->bs - 1) >> m->bs_shift)
                          : (int32_t)((tokens + m->bs - 1) / m->bs);
}
static inline int32_t bm_blk(const rkv_blockmgr *m, int32_t pos) {
  return m->bs_shift >= 0 ? pos >> m->bs_shift : pos / m->bs;
}
static inline int32_t bm_off(const rkv_blockmgr *m, int32_t pos) {
  return m->bs_shift >= 0 ? pos & (m->bs - 1) : pos % m->bs;
}
/* Refreshes tbase[s] after stream s's row or block count changed. */
static inline void bm_set_tbase(const rkv_blockmgr *m, bm_seq *q, uint32_t s) {
  int32_t nb = q->nblk[s];
  q->tbase[s] = nb ? (q->tab[(size_t)s * (size_t)q->cap + (size_t)nb - 1] - (nb - 1)) * m->bs : 0;
}
/* Records that stream s's row changed from position pos on (for sync_rows). */
static inline void bm_mark_dirty(bm_seq *q, uint32_t s, int32_t pos) {
  if (pos < q->dirty[s]) q->dirty[s] = pos;
}
/* Recomputes a sequence's fast-path room. */
void bm_update_room(const rkv_blockmgr *m, bm_seq *q);
/* Sequence slots (blockmgr.c): reserve a free slot for a new id (nothing changes on
 * failure), grow a row capacity, make a reserved slot live. */
rkv_status bm_reserve_slot(rkv_blockmgr *m, int64_t id, int32_t *slot);
rkv_status bm_grow(rkv_blockmgr *m, bm_seq *q, int32_t need);
bm_seq *bm_commit_slot(rkv_blockmgr *m, int64_t id, int32_t slot);
/* Runs check() after a successful mutation when configured (check_every_op or RKV_DEBUG>=3). */
rkv_status bm_after_op(rkv_blockmgr *m);

#endif /* RKV_BLOCKMGR_IMPL_H */
